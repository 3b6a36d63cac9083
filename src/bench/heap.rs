//! The guest heap rows of `memvisor bench` (issues 4 and 13): alloc + free pairs and batches
//! on every heap of the `heap-bench` guest, and each sample trace replayed on the memvisor
//! heap beside talc, rlsf and dlmalloc.

use super::{fig, rec, BenchError, Figure, Target};

/// Guest heap figures (issue 4), from the `heap-bench` guest (see `crate::replay::bench_report`):
/// page families vs talc on alloc+free pairs of ≤ 256-byte objects (and the other sizes,
/// for scale), and the memvisor heap vs talc replaying each sample trace (throughput and
/// efficiency).
pub(super) fn heap_figures(quick: bool) -> Result<Vec<Figure>, BenchError> {
    let r = crate::replay::bench_report(quick).map_err(BenchError::Guest)?;
    let khz = r.tsc_khz;
    let raw = |n: &str| {
        r.records
            .get(&format!("bench.{n}"))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let mut f = Vec::new();
    for size in [16, 64, 256, 1024, 4096, 16384] {
        let target = if size <= 256 {
            Target::RatioMax(1.0)
        } else {
            Target::Scale
        };
        for kind in ["pair", "batch"] {
            let ns = |h: &str| rec(&r, &format!("heap_{kind}_{h}_{size}"), khz);
            f.push(fig(
                &format!("heap_{kind}_page_family_{size}B"),
                ns("page-family"),
                "ns",
                "talc",
                ns("talc"),
                target,
            ));
        }
        // The memvisor heap's mid-size path (issue 13): pair and batch at 1, 4 and 16 KiB
        // against talc, and the pair against the stronger peers.
        let mid = if size >= 1024 {
            Target::RatioMax(1.0)
        } else {
            Target::Scale
        };
        for kind in ["pair", "batch"] {
            let ns = |h: &str| rec(&r, &format!("heap_{kind}_{h}_{size}"), khz);
            if kind == "batch" && size < 1024 {
                continue;
            }
            f.push(fig(
                &format!("heap_{kind}_memvisor_{size}B"),
                ns("memvisor"),
                "ns",
                "talc",
                ns("talc"),
                mid,
            ));
        }
        if size >= 1024 {
            for peer in ["rlsf", "dlmalloc"] {
                let ns = |h: &str| rec(&r, &format!("heap_pair_{h}_{size}"), khz);
                f.push(fig(
                    &format!("heap_pair_memvisor_{size}B_vs_{peer}"),
                    ns("memvisor"),
                    "ns",
                    peer,
                    ns(peer),
                    Target::Scale,
                ));
            }
        }
    }
    for p in crate::replay::sample_traces() {
        let Some(t) = p.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        let ops = |h: &str| raw(&format!("heap_replay_{t}_{h}_ops"));
        let eff = |h: &str| raw(&format!("heap_replay_{t}_{h}_eff_bp")) / 100.0;
        f.push(fig(
            &format!("heap_replay_{t}_memvisor"),
            ops("memvisor"),
            "ops/s",
            "talc",
            ops("talc"),
            Target::RatioMin(1.0),
        ));
        for peer in ["rlsf", "dlmalloc"] {
            f.push(fig(
                &format!("heap_replay_{t}_memvisor_vs_{peer}"),
                ops("memvisor"),
                "ops/s",
                peer,
                ops(peer),
                Target::RatioMin(1.0),
            ));
        }
        f.push(fig(
            &format!("heap_replay_{t}_memvisor_efficiency"),
            eff("memvisor"),
            "%",
            "talc",
            eff("talc"),
            Target::ValueMin(90.0),
        ));
    }
    Ok(f)
}
