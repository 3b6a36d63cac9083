//! `memvisor replay T1 T2 … --heap H1,H2,…`: several traces on several heaps in one guest run
//! (issue 13), so that no comparison spans two processes.
//!
//! The host validates every trace ([`crate::replay::parse`]), maps them back to back as one
//! blob, and boots one guest (`guest/kernel/src/heap/replay_many.rs`) with `BootInfo.arg` =
//! `[BLOB_GVA, length, heap mask, MANY | runs << 8]`. For each trace, every heap gets the
//! checked pass, then `runs` timed passes each, interleaved; the median pass counts. The
//! result is one [`ReplayResult`] per (trace, heap), printed as one table ([`table`]) or as
//! JSON.

use crate::replay::{self, ReplayResult, Trace};
use memvisor::layout::BLOB_GVA;
use memvisor::report::Report;
use memvisor::vmm::{self, VmmError};
use std::fmt::Write as _;
use std::time::Duration;

/// `arg[3]` bit of the several-traces mode (the guest's `replay_many::MANY`).
pub const MANY: u64 = 1;
/// Most timed passes per (trace, heap) (the guest's `MAX_RUNS`).
pub const MAX_RUNS: u32 = 31;

/// Errors of a several-traces replay.
#[derive(Debug, thiserror::Error)]
pub enum ManyError {
    /// An unknown heap name in the `--heap` list.
    #[error("unknown heap '{name}' (known: {known})")]
    UnknownHeap {
        /// The name given.
        name: String,
        /// The known names.
        known: String,
    },
    /// A heap named twice, or no heap.
    #[error("bad heap list '{list}': {what}")]
    HeapList {
        /// The list given.
        list: String,
        /// What is wrong.
        what: &'static str,
    },
    /// `runs` outside 1 ..= [`MAX_RUNS`].
    #[error("runs must be between 1 and {max}, not {runs}")]
    Runs {
        /// The count given.
        runs: u32,
        /// [`MAX_RUNS`].
        max: u32,
    },
    /// The VMM could not run the guest.
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

/// Heap ids of a comma-separated list of heap names (`memvisor,talc,rlsf`), in list order.
///
/// # Errors
/// [`ManyError::UnknownHeap`] or [`ManyError::HeapList`] (empty, or a name twice).
pub fn heap_list(list: &str) -> Result<Vec<usize>, ManyError> {
    let mut ids = Vec::new();
    for name in list.split(',').map(str::trim) {
        let id = replay::heap_id(name).ok_or_else(|| ManyError::UnknownHeap {
            name: name.to_string(),
            known: replay::HEAPS.join(", "),
        })?;
        if ids.contains(&id) {
            return Err(ManyError::HeapList {
                list: list.to_string(),
                what: "a heap is named twice",
            });
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Boot one guest that replays every trace on every heap of `heaps`, `runs` timed passes
/// each; returns the guest's report.
///
/// # Errors
/// [`ManyError::Runs`], [`ManyError::HeapList`] (no heap), or [`ManyError::Vmm`].
pub fn run(
    traces: &[Trace],
    heaps: &[usize],
    runs: u32,
    mem_bytes: u64,
    timeout: Duration,
) -> Result<Report, ManyError> {
    if !(1..=MAX_RUNS).contains(&runs) {
        return Err(ManyError::Runs {
            runs,
            max: MAX_RUNS,
        });
    }
    if heaps.is_empty() {
        return Err(ManyError::HeapList {
            list: String::new(),
            what: "no heap",
        });
    }
    let mask = heaps
        .iter()
        .filter(|&&h| h < replay::HEAPS.len())
        .fold(0u64, |m, &h| m | 1 << h);
    let mut blob = Vec::new();
    for t in traces {
        blob.extend(t.encode());
    }
    let cfg = replay::config(
        "replay",
        [
            BLOB_GVA,
            blob.len() as u64,
            mask,
            MANY | u64::from(runs) << 8,
        ],
        mem_bytes,
        timeout,
        0,
    );
    Ok(vmm::run_scenario(
        &cfg,
        crate::registry::replay::with_blob(blob),
    )?)
}

/// One result per (trace, heap), traces in order, heaps in `heaps` order.
pub fn results(traces: &[Trace], heaps: &[usize], r: &Report) -> Vec<ReplayResult> {
    let mut out = Vec::new();
    for (i, t) in traces.iter().enumerate() {
        for &h in heaps {
            let Some(name) = replay::HEAPS.get(h) else {
                continue;
            };
            let mut res = ReplayResult::from_records(t, name, r, &format!("replay.{i}.{name}."));
            // The guest's records cover this trace only if it reached it.
            if !r
                .records
                .contains_key(&format!("replay.{i}.{name}.ops_per_sec"))
            {
                res.errors = res.errors.max(1);
                res.first_error
                    .get_or_insert_with(|| "the guest did not report this replay".into());
            }
            out.push(res);
        }
    }
    out
}

/// The table of a several-traces run: one row per (trace, heap); `vs best` is the heap's
/// ops/s over the fastest heap's on that trace, `vs best peer` (memvisor rows) over the
/// fastest of talc, rlsf and dlmalloc when any of them ran.
pub fn table(results: &[ReplayResult]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<14} {:<12} {:>11} {:>7} {:>9} {:>10} {:>11} {:>11} {:>6} {:>8} {:>6}",
        "trace",
        "heap",
        "ops/s",
        "vs best",
        "vs peer",
        "efficiency",
        "peak live",
        "peak mapped",
        "exits",
        "exits/1k",
        "errors"
    );
    for r in results {
        let same: Vec<&ReplayResult> = results.iter().filter(|x| x.trace == r.trace).collect();
        let best = same.iter().map(|x| x.ops_per_sec).max().unwrap_or(0);
        let peer = same
            .iter()
            .filter(|x| matches!(x.heap.as_str(), "talc" | "rlsf" | "dlmalloc"))
            .map(|x| x.ops_per_sec)
            .max();
        let ratio = |a: u64, b: u64| {
            if b == 0 {
                "-".to_string()
            } else {
                format!("{:.2}", a as f64 / b as f64)
            }
        };
        let vs_peer = match peer {
            Some(p) if r.heap == "memvisor" => ratio(r.ops_per_sec, p),
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "{:<14} {:<12} {:>11} {:>7} {:>9} {:>9.1}% {:>11} {:>11} {:>6} {:>8.2} {:>6}",
            r.trace,
            r.heap,
            r.ops_per_sec,
            ratio(r.ops_per_sec, best),
            vs_peer,
            r.efficiency * 100.0,
            r.peak_live_bytes,
            r.peak_mapped_bytes,
            r.source_exits,
            r.exits_per_1k_ops,
            r.errors
        );
    }
    for r in results.iter().filter(|r| r.first_error.is_some()) {
        let _ = writeln!(
            o,
            "{} on {}: {}",
            r.trace,
            r.heap,
            r.first_error.as_deref().unwrap_or("")
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_lists() {
        assert_eq!(
            heap_list("memvisor,talc,rlsf").expect("valid"),
            vec![2, 3, 6]
        );
        assert_eq!(heap_list(" dlmalloc ").expect("valid"), vec![7]);
        assert!(matches!(
            heap_list("memvisor,glibc"),
            Err(ManyError::UnknownHeap { .. })
        ));
        assert!(matches!(
            heap_list("talc,talc"),
            Err(ManyError::HeapList { .. })
        ));
        assert!(matches!(heap_list(""), Err(ManyError::UnknownHeap { .. })));
    }
}
