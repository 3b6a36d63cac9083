//! What the matrix produced: each case's status and observations, the case table
//! (`--cases-out` TSV), the summary and the report's `matrix` part.

use super::passes::{PassSpec, SkippedSet};
use super::run::MatrixRun;
use super::tables::{self, TestVa};
use memvisor_abi::matrix::NOT_FAULTED;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

/// A case's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    /// Matches the oracle.
    Pass,
    /// Does not.
    Fail,
    /// Not run (feature missing or not implemented).
    Skipped,
    /// Differs from the oracle exactly as a known deviation the run named
    /// ([`super::KnownDeviation`]).
    Deviation,
}

impl CaseStatus {
    fn name(self) -> &'static str {
        match self {
            CaseStatus::Pass => "pass",
            CaseStatus::Fail => "fail",
            CaseStatus::Skipped => "skipped",
            CaseStatus::Deviation => "deviation",
        }
    }
}

/// One run case's observations.
#[derive(Debug, Clone, Copy)]
pub struct CaseResult {
    /// CR2 (meaningful if faulted).
    pub cr2: u64,
    /// Error code or `NOT_FAULTED`.
    pub err: u64,
    /// The leaf after the pass.
    pub pte_after: u64,
    /// The record was readable and named the case's VA.
    pub record_ok: bool,
    /// Status.
    pub status: CaseStatus,
}

/// Totals and the first failures (the `matrix` key of the JSON report).
#[derive(Debug, Clone, Serialize)]
pub struct MatrixSummary {
    /// All cases (pass + fail + skipped + deviation).
    pub cases: u64,
    /// Cases that match the oracle.
    pub pass: u64,
    /// Cases that do not.
    pub fail: u64,
    /// Cases not run.
    pub skipped: u64,
    /// Cases that differ from the oracle exactly as a named known deviation (0 unless
    /// `--known-deviation` was given).
    pub deviation: u64,
    /// Deviating cases by deviation.
    pub deviation_by: BTreeMap<String, u64>,
    /// Skipped cases by `feature: reason`.
    pub skipped_by: BTreeMap<String, u64>,
    /// Passes the guest ran.
    pub passes_run: u64,
    /// Test VAs per pass.
    pub vas: u64,
    /// MAXPHYADDR used for the reserved bits.
    pub phys_bits: u8,
    /// Host time to build the tables and buffers.
    pub setup_seconds: f64,
    /// From the first `MatrixSync` to the last (the guest's passes).
    pub passes_seconds: f64,
    /// From the start of setup to the verdicts.
    pub wall_seconds: f64,
    /// Guest time per pass (between its `MatrixSync` calls, the host's A/D reset and shadow
    /// flush included).
    pub pass_seconds: Vec<PassTime>,
    /// First failing rows (TSV lines, at most 20).
    pub failures: Vec<String>,
}

/// Time of one pass.
#[derive(Debug, Clone, Serialize)]
pub struct PassTime {
    /// `r`, `w` or `x`.
    pub access: char,
    /// 0 or 3.
    pub cpl: u8,
    /// CR0.WP.
    pub wp: bool,
    /// EFER.NXE.
    pub nxe: bool,
    /// Seconds.
    pub seconds: f64,
}

/// Everything the matrix produced: the summary and the data for `--cases-out`.
#[derive(Debug, Clone)]
pub struct MatrixData {
    pub(super) vas: Vec<TestVa>,
    /// Each leaf as built, in `vas` order.
    pub(super) leaf_raw: Vec<u64>,
    pub(super) passes: Vec<PassSpec>,
    /// The VAs (indices into `vas`) each pass probed.
    pub(super) pass_vas: Vec<std::ops::Range<usize>>,
    /// One per probed case: pass after pass, each over its VAs.
    pub(super) results: Vec<CaseResult>,
    pub(super) skipped_sets: Vec<SkippedSet>,
    /// Totals.
    pub summary: MatrixSummary,
}

/// The `--cases-out` header. `mode`: the pass's mode bits beyond WP and NXE (`-`, or
/// `smep`, `smap`, `ac`, `pke`, `pkru=0x..` joined by `+`). `pml5e`: the PML5E's flag bits
/// for a 5-level walk (the LA57 variant, CR4.LA57 = 1), `-` for a 4-level walk; the last
/// column, so the others keep their positions.
pub const TSV_HEADER: &str = "pml4e\tpdpte\tpde\tpte\trsvd_level\taccess\tcpl\twp\tnxe\tva\tfaulted\terror_code\tcr2\tpte_after\tstatus\tmode\tpml5e";

/// One row of the case table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Entry flag bits, PML4E first (`None`: no such level).
    pub entries: [Option<u64>; 4],
    /// PML5E flag bits of a 5-level walk (`None`: a 4-level walk).
    pub pml5e: Option<u64>,
    /// Level with the reserved bit (bit MAXPHYADDR), if any.
    pub rsvd_level: Option<u8>,
    /// The pass.
    pub pass: PassSpec,
    /// The VA.
    pub va: u64,
    /// `None` for skipped cases.
    pub result: Option<CaseResult>,
    /// Status.
    pub status: CaseStatus,
}

impl Row {
    /// The row as a TSV line (no newline).
    pub fn to_tsv(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(160);
        for e in self.entries {
            match e {
                Some(v) => {
                    let _ = write!(s, "{v:#x}\t");
                }
                None => s.push_str("-\t"),
            }
        }
        s.push_str(match self.rsvd_level {
            None => "-",
            Some(4) => "pml4e",
            Some(3) => "pdpte",
            Some(2) => "pde",
            _ => "pte",
        });
        let p = self.pass;
        let _ = write!(
            s,
            "\t{}\t{}\t{}\t{}\t{:#x}\t",
            p.access.letter(),
            p.cpl,
            u8::from(p.mode.wp),
            u8::from(p.mode.nxe),
            self.va
        );
        match self.result {
            Some(r) if r.err != NOT_FAULTED => {
                let _ = write!(s, "1\t{:#x}\t{:#x}\t{:#x}\t", r.err, r.cr2, r.pte_after);
            }
            Some(r) => {
                let _ = write!(s, "0\t-\t-\t{:#x}\t", r.pte_after);
            }
            None => s.push_str("-\t-\t-\t-\t"),
        }
        s.push_str(self.status.name());
        s.push('\t');
        let m = p.mode;
        let mut parts: Vec<String> = [
            (m.smep, "smep"),
            (m.smap, "smap"),
            (m.ac, "ac"),
            (m.pke, "pke"),
        ]
        .into_iter()
        .filter(|&(on, _)| on)
        .map(|(_, n)| n.to_string())
        .collect();
        if m.pke {
            parts.push(format!("pkru={:#x}", m.pkru));
        }
        if parts.is_empty() {
            s.push('-');
        } else {
            s.push_str(&parts.join("+"));
        }
        match self.pml5e {
            Some(v) => {
                let _ = write!(s, "\t{v:#x}");
            }
            None => s.push_str("\t-"),
        }
        s
    }
}

impl MatrixData {
    /// The run cases in `results` order: (pass index, VA index).
    pub(super) fn cases(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.pass_vas
            .iter()
            .enumerate()
            .flat_map(|(p, r)| r.clone().map(move |k| (p, k)))
    }

    /// Every case: the run passes (pass order, VA order), then the skipped sets.
    pub fn rows(&self) -> impl Iterator<Item = Row> + '_ {
        let run = self
            .results
            .iter()
            .zip(self.cases())
            .map(move |(r, (p, k))| {
                let t = &self.vas[k];
                Row {
                    entries: super::passes::SkippedVa::of(t)
                        .entries
                        .map(|e| e.map(|e| e & !tables::ADDR_BITS)),
                    pml5e: t.pml5e,
                    rsvd_level: t.rsvd_level,
                    pass: self.passes[p],
                    va: t.va,
                    result: Some(*r),
                    status: r.status,
                }
            });
        let skipped = self.skipped_sets.iter().flat_map(|s| {
            s.passes.iter().flat_map(move |p| {
                s.vas.iter().map(move |v| Row {
                    entries: v.entries,
                    pml5e: v.pml5e,
                    rsvd_level: None,
                    pass: *p,
                    va: v.va,
                    result: None,
                    status: CaseStatus::Skipped,
                })
            })
        });
        run.chain(skipped)
    }

    /// Write the case table to `path`: a header line, then one tab-separated line per case.
    /// Written to a temporary file in the same directory and renamed, so `path` is either
    /// the whole table or untouched.
    ///
    /// # Errors
    /// Any I/O error (the temporary file is removed).
    pub fn write_tsv(&self, path: &Path) -> std::io::Result<()> {
        let tmp = temp_path(path);
        let res = (|| {
            let f = std::fs::File::create(&tmp)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            writeln!(w, "{TSV_HEADER}")?;
            for r in self.rows() {
                writeln!(w, "{}", r.to_tsv())?;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }
}

/// The temporary file `write_tsv` writes before renaming: `.NAME.tmp` beside `path`.
pub fn temp_path(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cases".into());
    path.with_file_name(format!(".{name}.tmp"))
}

/// The `matrix` part of the report: the summary (serialized) and the data behind it.
#[derive(Debug, Clone, Serialize)]
pub struct MatrixReport {
    /// Totals.
    #[serde(flatten)]
    pub summary: MatrixSummary,
    /// The cases, for `--cases-out`.
    #[serde(skip)]
    pub data: Arc<MatrixData>,
}

impl MatrixReport {
    /// From a finished run (`None` if the guest did not finish the matrix).
    pub fn from_run(run: &MatrixRun) -> Option<MatrixReport> {
        let data = run.outcome.clone()?;
        Some(MatrixReport {
            summary: data.summary.clone(),
            data,
        })
    }

    /// Text report lines.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let s = &self.summary;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "-- fault matrix: {} cases: {} pass, {} fail, {} deviation, {} skipped; {} passes ({} VAs in a base pass); \
             wall {:.1} s (setup {:.2} s, passes {:.1} s); MAXPHYADDR {}",
            s.cases,
            s.pass,
            s.fail,
            s.deviation,
            s.skipped,
            s.passes_run,
            s.vas,
            s.wall_seconds,
            s.setup_seconds,
            s.passes_seconds,
            s.phys_bits
        );
        for (k, v) in &s.deviation_by {
            let _ = writeln!(o, "   deviation {v:>7}  {k}");
        }
        for (k, v) in &s.skipped_by {
            let _ = writeln!(o, "   skipped {v:>7}  {k}");
        }
        if !s.failures.is_empty() {
            let _ = writeln!(o, "   first failures ({TSV_HEADER}):");
            for f in &s.failures {
                let _ = writeln!(o, "   {f}");
            }
        }
        o
    }
}
