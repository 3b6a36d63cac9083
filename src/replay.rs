//! `memvisor replay TRACE --heap NAME`: replay a real allocation trace inside the guest.
//!
//! The host parses and validates the trace ([`parse`]: format in
//! `tests/data/traces/README.md`), encodes it compactly ([`Trace::encode`]: 8 bytes an
//! event), and maps the blob read-only (US, NX) at [`BLOB_GVA`] before the guest starts
//! ([`memvisor::space::AddressSpace::map_blob`]); `BootInfo.arg` = `[BLOB_GVA, length, heap id, 0]`. The guest
//! (`guest/kernel/src/heap/replay.rs`) replays it twice on fresh heaps (checked, then timed)
//! and sends `replay.KEY=VALUE` records, which [`ReplayResult::from_report`] reads back.
//!
//! The blob reaches the address space through the scenario's host side
//! ([`crate::registry::replay::with_blob`], mapped in its `prepare`).

use memvisor::layout::BLOB_GVA;
use memvisor::report::Report;
use memvisor::vmm::{self, VmConfig, VmmError};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Heap names accepted by `--heap`, by id (one list for host and guest, in the ABI crate).
pub use memvisor_abi::HEAPS;

/// Blob magic (`"MVTRACE1"`).
pub const MAGIC: u64 = u64::from_le_bytes(*b"MVTRACE1");
/// Largest id the encoding holds (ids are 30 bits).
pub const MAX_ID: u64 = (1 << 30) - 1;

/// A malformed trace: the 1-based line number and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct TraceError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

/// A parsed, validated trace.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Name (file stem).
    pub name: String,
    /// Encoded events (see the guest's `replay.rs`): kind << 62 | id << 32 | size.
    pub events: Vec<u64>,
    /// 1-based line number of each event.
    pub lines: Vec<u32>,
    /// Largest id + 1.
    pub ids: u64,
    /// Most requested bytes live at once.
    pub peak_live_bytes: u64,
    /// Blocks still live at the end.
    pub live_at_end: u64,
}

const KIND_ALLOC: u64 = 0;
const KIND_FREE: u64 = 1;
const KIND_REALLOC: u64 = 2;

/// Parse a trace: `a ID SIZE`, `f ID`, `r ID NEWSIZE`, `#` comments. Rejects (with the line
/// number) malformed lines, sizes above 4 GiB − 1, ids above 2^30 − 1, an id allocated twice,
/// and a free or realloc of an unknown or already freed id.
///
/// # Errors
/// The first [`TraceError`].
pub fn parse(name: &str, text: &str) -> Result<Trace, TraceError> {
    let mut t = Trace {
        name: name.to_string(),
        ..Trace::default()
    };
    // id -> live size; ids ever allocated (never reused).
    let mut live: HashMap<u64, u64> = HashMap::new();
    let mut seen: HashMap<u64, ()> = HashMap::new();
    let (mut cur, mut peak) = (0u64, 0u64);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |what: String| TraceError { line, what };
        let l = raw.trim();
        if l.starts_with('#') {
            continue;
        }
        let tok: Vec<&str> = l.split_ascii_whitespace().collect();
        let num = |s: &str, what: &str| -> Result<u64, TraceError> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(format!("{what} '{s}' is not a decimal number")));
            }
            s.parse::<u64>()
                .map_err(|_| err(format!("{what} '{s}' is too large")))
        };
        let (kind, id, size) = match tok.as_slice() {
            ["a", id, size] => (KIND_ALLOC, num(id, "id")?, num(size, "size")?),
            ["f", id] => (KIND_FREE, num(id, "id")?, 0),
            ["r", id, size] => (KIND_REALLOC, num(id, "id")?, num(size, "size")?),
            [] => return Err(err("empty line".into())),
            _ => {
                return Err(err(format!(
                    "malformed event '{}' (expected 'a ID SIZE', 'f ID' or 'r ID NEWSIZE')",
                    l.chars().take(60).collect::<String>()
                )))
            }
        };
        if id > MAX_ID {
            return Err(err(format!("id {id} is above the limit of {MAX_ID}")));
        }
        if size > u32::MAX as u64 {
            return Err(err(format!(
                "size {size} is above the limit of {}",
                u32::MAX
            )));
        }
        match kind {
            KIND_ALLOC => {
                if seen.insert(id, ()).is_some() {
                    return Err(err(format!("id {id} is allocated twice")));
                }
                live.insert(id, size);
                cur += size;
                t.ids = t.ids.max(id + 1);
            }
            _ => {
                let Some(old) = live.get(&id).copied() else {
                    let what = if seen.contains_key(&id) {
                        "already freed"
                    } else {
                        "unknown"
                    };
                    let op = if kind == KIND_FREE { "free" } else { "realloc" };
                    return Err(err(format!("{op} of {what} id {id}")));
                };
                cur -= old;
                if kind == KIND_FREE {
                    live.remove(&id);
                } else {
                    live.insert(id, size);
                    cur += size;
                }
            }
        }
        peak = peak.max(cur);
        t.events.push(kind << 62 | id << 32 | size);
        t.lines.push(line as u32);
    }
    t.peak_live_bytes = peak;
    t.live_at_end = live.len() as u64;
    Ok(t)
}

/// Read and parse a trace file; the error is one line naming the file.
///
/// # Errors
/// Unreadable file or [`TraceError`], as text.
pub fn load(path: &Path) -> Result<Trace, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path
        .file_stem()
        .map_or_else(|| "trace".into(), |s| s.to_string_lossy().into_owned());
    parse(&name, &text).map_err(|e| format!("{}:{}: {}", path.display(), e.line, e.what))
}

impl Trace {
    /// The blob record of this trace (header, name padded to 8 bytes, events).
    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let name = &name[..name.len().min(256)];
        let mut b = Vec::with_capacity(32 + name.len() + 8 + self.events.len() * 8);
        for w in [MAGIC, self.events.len() as u64, self.ids, name.len() as u64] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(name);
        b.resize(b.len().div_ceil(8) * 8, 0);
        for e in &self.events {
            b.extend_from_slice(&e.to_le_bytes());
        }
        b
    }

    /// Line number of event `i` (`None` past the end).
    pub fn line_of(&self, i: usize) -> Option<u32> {
        self.lines.get(i).copied()
    }
}

/// The memvisor heap's page-return policy over the checked pass (guest
/// `guest/heaps/src/memvisor/keep.rs`): freed MeMS runs kept for reuse up to a bound and
/// returned in batches.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct KeepFigures {
    /// Most pages the policy may keep.
    pub bound_pages: u64,
    /// Most pages kept at once.
    pub peak_kept_pages: u64,
    /// Pages kept when the trace ended.
    pub kept_pages_at_end: u64,
    /// Runs taken in.
    pub kept_runs: u64,
    /// Requests served from a kept run (no host exit).
    pub reused_runs: u64,
    /// Pages returned to the page source.
    pub returned_pages: u64,
    /// Batches the returns went in.
    pub return_batches: u64,
    /// Free tails of mid-size regions given back at the high-water mark (the regions stay
    /// smaller).
    pub tail_returns: u64,
    /// Pages of those tails.
    pub tail_returned_pages: u64,
    /// Most freed solo MeMS blocks parked at once (guest `memvisor/park.rs`).
    pub parked_bound_blocks: u64,
    /// Freed solo MeMS blocks parked for reuse.
    pub parked_blocks: u64,
    /// Requests served from a parked block (no MeMS work, no page mapped).
    pub unparked_blocks: u64,
    /// Most pages (4 KiB) parked at once.
    pub peak_parked_pages: u64,
    /// Pages parked when the trace ended.
    pub parked_pages_at_end: u64,
}

/// The memvisor heap's spare slab pages over the checked pass (guest
/// `guest/heaps/src/memvisor/slab_pages.rs`): emptied slab pages kept for the next slab up to
/// a bound and returned in batches.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SlabSpareFigures {
    /// Most spare pages kept.
    pub bound_pages: u64,
    /// Most spare pages kept at once.
    pub peak_spare_pages: u64,
    /// Spare pages kept when the trace ended.
    pub spare_pages_at_end: u64,
    /// Slabs made on a spare page (no map, no unmap).
    pub reused_pages: u64,
    /// Slab pages returned to the page source.
    pub returned_pages: u64,
    /// Batches the returns went in.
    pub return_batches: u64,
}

/// What `memvisor replay` prints (`--json` keys).
#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    /// Trace name.
    pub trace: String,
    /// Heap name.
    pub heap: String,
    /// Events replayed.
    pub events: u64,
    /// Events per second of the timed pass (in-guest rdtsc).
    pub ops_per_sec: u64,
    /// Most requested bytes live at once.
    pub peak_live_bytes: u64,
    /// Most bytes the heap held from the page source at once (data and metadata).
    pub peak_mapped_bytes: u64,
    /// peak_live_bytes / peak_mapped_bytes.
    pub efficiency: f64,
    /// Pattern mismatches, failed allocations and bad events.
    pub errors: u64,
    /// The first error, with its line number.
    pub first_error: Option<String>,
    /// Most bytes the page source held from the host at once (heap + source caches).
    pub peak_source_bytes: u64,
    /// Frees the heap itself refused.
    pub refused_frees: u64,
    /// Page-source exits (hypercall batches) during the timed pass.
    pub source_exits: u64,
    /// TSC cycles of the timed pass.
    pub cycles: u64,
    /// Times the VMM flushed KVM's shadow page tables (after unmaps), all passes (of a
    /// several-traces run: the whole run's, every trace and heap).
    pub shadow_flushes: u64,
    /// Timed passes (`ops_per_sec`, `cycles` and `source_exits` are of the fastest of a
    /// single replay's passes, of the median pass of a several-traces run).
    pub runs: u64,
    /// Page-source exits per 1,000 events of that timed pass.
    pub exits_per_1k_ops: f64,
    /// The memvisor heap's page-return policy (checked pass; `None` for the other heaps).
    pub keep: Option<KeepFigures>,
    /// The memvisor heap's spare slab pages (other heaps: absent).
    pub slab_spares: Option<SlabSpareFigures>,
    /// Every `replay.*` record the guest sent (diagnostics: page-source calls, ...).
    pub records: std::collections::BTreeMap<String, String>,
    /// Guest exit code.
    pub guest_exit_code: Option<u32>,
    /// `exit`, `panic`, `timeout`, ...
    pub outcome: String,
}

impl ReplayResult {
    /// Read the guest's `replay.*` records.
    pub fn from_report(t: &Trace, heap: &str, r: &Report) -> ReplayResult {
        Self::from_records(t, heap, r, "replay.")
    }

    /// Read the records `PREFIX KEY` of one replay (`replay.` for a single replay,
    /// `replay.I.HEAP.` for trace `I` on `HEAP` of a several-traces run).
    pub fn from_records(t: &Trace, heap: &str, r: &Report, prefix: &str) -> ReplayResult {
        let get = |k: &str| r.records.get(&format!("{prefix}{k}"));
        let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let first_error = get("first_error").map(|v| {
            let (i, what) = v.split_once(' ').unwrap_or((v.as_str(), ""));
            match i.parse::<usize>().ok().and_then(|i| t.line_of(i)) {
                Some(line) => format!("line {line}: {what}"),
                None => format!("end of trace: {what}"),
            }
        });
        ReplayResult {
            trace: t.name.clone(),
            heap: heap.to_string(),
            events: num("events"),
            ops_per_sec: num("ops_per_sec"),
            peak_live_bytes: num("peak_live_bytes"),
            peak_mapped_bytes: num("peak_mapped_bytes"),
            efficiency: get("efficiency")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
            errors: num("errors"),
            first_error,
            peak_source_bytes: num("peak_source_bytes"),
            refused_frees: num("refused_frees"),
            source_exits: num("source_exits"),
            cycles: num("cycles"),
            shadow_flushes: r.shadow_flushes,
            runs: num("runs").max(1),
            keep: get("keep_bound_pages").map(|_| KeepFigures {
                bound_pages: num("keep_bound_pages"),
                peak_kept_pages: num("keep_peak_pages"),
                kept_pages_at_end: num("keep_pages_at_end"),
                kept_runs: num("keep_kept_runs"),
                reused_runs: num("keep_reused_runs"),
                returned_pages: num("keep_returned_pages"),
                return_batches: num("keep_return_batches"),
                tail_returns: num("keep_tail_returns"),
                tail_returned_pages: num("keep_tail_returned_pages"),
                parked_bound_blocks: num("keep_parked_bound_blocks"),
                parked_blocks: num("keep_parked_blocks"),
                unparked_blocks: num("keep_unparked_blocks"),
                peak_parked_pages: num("keep_parked_peak_pages"),
                parked_pages_at_end: num("keep_parked_pages_at_end"),
            }),
            slab_spares: get("slab_spare_bound_pages").map(|_| SlabSpareFigures {
                bound_pages: num("slab_spare_bound_pages"),
                peak_spare_pages: num("slab_spare_peak_pages"),
                spare_pages_at_end: num("slab_spare_pages_at_end"),
                reused_pages: num("slab_spare_reused_pages"),
                returned_pages: num("slab_spare_returned_pages"),
                return_batches: num("slab_spare_return_batches"),
            }),
            exits_per_1k_ops: num("source_exits") as f64 * 1000.0 / num("events").max(1) as f64,
            records: r
                .records
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            guest_exit_code: r.guest_exit_code,
            outcome: r.outcome.to_string(),
        }
    }

    /// Success: the guest exited 0 and reported every event with no error.
    pub fn ok(&self) -> bool {
        self.guest_exit_code == Some(0) && self.errors == 0 && self.outcome == "exit"
    }

    /// The text output: one `key: value` line each.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "trace: {}", self.trace);
        let _ = writeln!(o, "heap: {}", self.heap);
        let _ = writeln!(o, "events: {}", self.events);
        let _ = writeln!(o, "ops_per_sec: {}", self.ops_per_sec);
        let _ = writeln!(o, "peak_live_bytes: {}", self.peak_live_bytes);
        let _ = writeln!(o, "peak_mapped_bytes: {}", self.peak_mapped_bytes);
        let _ = writeln!(o, "efficiency: {:.4}", self.efficiency);
        let _ = writeln!(o, "errors: {}", self.errors);
        if let Some(e) = &self.first_error {
            let _ = writeln!(o, "first_error: {e}");
        }
        let _ = writeln!(o, "peak_source_bytes: {}", self.peak_source_bytes);
        let _ = writeln!(o, "source_exits: {}", self.source_exits);
        let _ = writeln!(o, "shadow_flushes: {}", self.shadow_flushes);
        let _ = writeln!(o, "exits_per_1k_ops: {:.2}", self.exits_per_1k_ops);
        if let Some(k) = &self.keep {
            let _ = writeln!(
                o,
                "keep: bound {} pages, peak {} kept, {} runs kept, {} reused, {} pages returned in {} batches, {} region tails ({} pages) returned",
                k.bound_pages,
                k.peak_kept_pages,
                k.kept_runs,
                k.reused_runs,
                k.returned_pages,
                k.return_batches,
                k.tail_returns,
                k.tail_returned_pages
            );
            let _ = writeln!(
                o,
                "parked: bound {} blocks, {} parked, {} reused, peak {} pages",
                k.parked_bound_blocks, k.parked_blocks, k.unparked_blocks, k.peak_parked_pages
            );
        }
        if let Some(s) = &self.slab_spares {
            let _ = writeln!(
                o,
                "slab spares: bound {} pages, peak {} kept, {} reused, {} pages returned in {} batches",
                s.bound_pages, s.peak_spare_pages, s.reused_pages, s.returned_pages, s.return_batches
            );
        }
        o
    }
}

/// Id of a heap name.
pub fn heap_id(name: &str) -> Option<usize> {
    HEAPS.iter().position(|h| *h == name)
}

/// Boot a guest that replays `t` on `heap`; returns the guest's report.
///
/// # Errors
/// [`VmmError`] when the VM cannot run.
pub fn run(t: &Trace, heap: usize, mem_bytes: u64, timeout: Duration) -> Result<Report, VmmError> {
    let blob = t.encode();
    let cfg = config(
        "replay",
        [BLOB_GVA, blob.len() as u64, heap as u64, 0],
        mem_bytes,
        timeout,
        0,
    );
    vmm::run_scenario(&cfg, crate::registry::replay::with_blob(blob))
}

/// A config for the heap scenarios.
pub fn config(
    name: &str,
    arg: [u64; 4],
    mem_bytes: u64,
    timeout: Duration,
    flags: u32,
) -> VmConfig {
    // The library's defaults for everything else, so fields added to `VmConfig` keep theirs.
    VmConfig {
        mem_bytes,
        scenario: name.to_string(),
        flags,
        arg,
        timeout,
        ..VmConfig::default()
    }
}

/// The sample traces shipped with the repository (`tests/data/traces/*.trace`), sorted.
pub fn sample_traces() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/traces");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "trace"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// In-guest heap figures for `memvisor bench` (scenario `heap-bench`, records
/// `bench.heap_*`): alloc+free pairs of 16–4096-byte objects on every heap, and every sample
/// trace replayed on every heap. Returns the guest's report.
///
/// # Errors
/// [`VmmError`], or a message when the sample traces cannot be read.
pub fn bench_report(quick: bool) -> Result<Report, String> {
    let mut blob = Vec::new();
    for p in sample_traces() {
        blob.extend(load(&p)?.encode());
    }
    let cfg = config(
        "heap-bench",
        [BLOB_GVA, blob.len() as u64, 0, 0],
        512 << 20,
        Duration::from_secs(600),
        if quick { memvisor_abi::flags::QUICK } else { 0 },
    );
    let r = vmm::run_scenario(&cfg, crate::registry::heap_bench::new_with_blob(blob))
        .map_err(|e| e.to_string())?;
    if !r.success() {
        return Err(format!(
            "the heap-bench scenario failed: {}",
            r.message.clone().unwrap_or_else(|| r.outcome.to_string())
        ));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_encodes() {
        let t = parse("t", "# c\na 0 10\na 1 0\nr 0 20\nf 1\n").expect("valid");
        assert_eq!(t.events.len(), 4);
        assert_eq!(t.lines, vec![2, 3, 4, 5]);
        assert_eq!(t.ids, 2);
        assert_eq!(t.peak_live_bytes, 20);
        assert_eq!(t.events[2], 2 << 62 | 20);
        assert_eq!(t.events[3], 1 << 62 | 1 << 32);
        let b = t.encode();
        assert_eq!(&b[..8], b"MVTRACE1");
        assert_eq!(b.len(), 32 + 8 + 4 * 8);
    }

    #[test]
    fn rejects_with_line_numbers() {
        let bad = [
            ("a 0 1\na 0 2\n", 2, "allocated twice"),
            ("a 0 1\nf 0\na 0 2\n", 3, "allocated twice"),
            ("f 3\n", 1, "free of unknown id 3"),
            ("a 0 1\nf 0\nf 0\n", 3, "free of already freed id 0"),
            ("a 0 1\nf 0\nr 0 5\n", 3, "realloc of already freed id 0"),
            ("# x\nb 0 1\n", 2, "malformed"),
            ("a 0\n", 1, "malformed"),
            ("a x 1\n", 1, "not a decimal"),
            ("a 0 -1\n", 1, "not a decimal"),
            ("f 0 1\n", 1, "malformed"),
            ("a 0 1\n\nf 0\n", 2, "empty line"),
            ("a 0 4294967296\n", 1, "above the limit"),
            ("a 1073741824 1\n", 1, "above the limit"),
            ("a 0 99999999999999999999\n", 1, "too large"),
        ];
        for (text, line, what) in bad {
            let e = parse("t", text).expect_err(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.what.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn heap_names_round_trip() {
        for (i, h) in HEAPS.iter().enumerate() {
            assert_eq!(heap_id(h), Some(i));
        }
        assert_eq!(heap_id("glibc"), None);
    }
}
