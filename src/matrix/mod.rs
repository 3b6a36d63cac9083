//! The #PF permission matrix (`memvisor run --scenario fault-matrix`), host side.
//!
//! For every combination of P, RW, US and NX in the PML4E, PDPTE, PDE and PTE of a test page
//! (16^4 = 65,536 paths, each with its own tables, see [`tables`]) plus four reserved-bit
//! paths (bit 51 set at one level), × access (read, write, fetch) × CPL (0, 3) × CR0.WP
//! (0, 1) × EFER.NXE (0, 1), the guest performs the access and records whether it faulted,
//! the error code and CR2; the host reads the leaf PTE after each pass. Each case is compared
//! with the SDM oracle in [`oracle`].
//!
//! # How it runs
//! [`setup`] builds the tables and a plan of passes (one pass = one access at one CPL in one
//! mode, over all 65,540 VAs); the guest runs them in order (`guest/kernel/src/matrix.rs`),
//! taking one `MatrixSync` hypercall per pass: the host ([`MatrixRun::sync`]) snapshots the
//! leaves of the pass that ended, clears A/D in every test entry and asks the VMM to flush
//! KVM's shadow pages (which would otherwise keep stale rights and A/D state). After the last
//! pass it compares everything with the oracle ([`MatrixRun::finish`]).
//!
//! On a PVM host CPL 0 code is emulated instruction by instruction, so the CPL 0 cases are
//! checked by KVM's emulator page walk, and the CPL 3 cases by the real MMU through KVM's
//! shadow pages.
//!
//! # Skipped cases
//! Paging features a case set needs and the host CPUID lacks are reported as skipped cases
//! (never passes); see [`variants`]. Feature variants use their own VAs, so rows differ.

pub mod oracle;
pub mod tables;

use crate::space::{AddressSpace, SpaceError};
use memvisor_abi::matrix::{self as abi, Pass, Plan, NOT_FAULTED, RECORD_BYTES};
use memvisor_abi::Status;
use oracle::{Access, Mode};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tables::TestVa;
use vm_memory::{Bytes, GuestAddress};

/// One pass: an access at a CPL in a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassSpec {
    /// The access.
    pub access: Access,
    /// 0 or 3.
    pub cpl: u8,
    /// The mode.
    pub mode: Mode,
}

/// The 24 base passes (WP × NXE × CPL × access), mode outermost, `extra` mode bits on top.
fn base_passes(extra: Mode) -> Vec<PassSpec> {
    let mut v = Vec::with_capacity(24);
    for wp in [false, true] {
        for nxe in [false, true] {
            for cpl in [0u8, 3] {
                for access in Access::ALL {
                    v.push(PassSpec {
                        access,
                        cpl,
                        mode: Mode { wp, nxe, ..extra },
                    });
                }
            }
        }
    }
    v
}

/// A set of cases that cannot run here: its VAs × its passes.
#[derive(Debug, Clone)]
pub struct SkippedSet {
    /// Feature name (`smep`, `smap`, `pku`, `1g`, `la57`, `nx`, `rsvd`).
    pub feature: &'static str,
    /// Why (`unsupported by host`, or what is missing).
    pub reason: String,
    /// The VAs (entries: flag bits per level; a 1 GiB path has two levels).
    pub vas: Vec<SkippedVa>,
    /// The passes.
    pub passes: Vec<PassSpec>,
}

/// A VA of a skipped set.
#[derive(Debug, Clone, Copy)]
pub struct SkippedVa {
    /// The VA.
    pub va: u64,
    /// PML4E, PDPTE, PDE, PTE flag bits (`None`: no such level, e.g. below a 1 GiB leaf).
    pub entries: [Option<u64>; 4],
}

const T: u64 = 0x7;

/// 256 VAs in PML4 slot `slot`: PML4E = PDPTE = P|RW|US, the 16 × 16 PDE × PTE flag
/// combinations, the PTE with `leaf_extra` bits (e.g. a protection key).
fn pde_pte_vas(slot: u64, leaf_extra: u64) -> Vec<SkippedVa> {
    (0..256u64)
        .map(|k| {
            let (i2, i1) = (k >> 4, k & 15);
            SkippedVa {
                va: (slot << 39) | (i2 << 21) | (i1 << 12),
                entries: [
                    Some(T),
                    Some(T),
                    Some(tables::combo_flags(i2)),
                    Some(tables::combo_flags(i1) | leaf_extra),
                ],
            }
        })
        .collect()
}

/// The feature variants the matrix has beyond WP and NXE, each skipped here: on this host
/// because the CPUID lacks the feature, on a host that has it because the guest side is not
/// implemented yet (named in the reason; never counted as a pass).
///
/// * `smep`: CR4.SMEP = 1, PML4 slot 84, 256 PDE × PTE combinations × the 24 base passes.
/// * `smap`: CR4.SMAP = 1 (RFLAGS.AC = 0), slot 85, the same.
/// * `pku`: CR4.PKE = 1, leaves with protection key 1, PKRU.AD1 = 1 (slot 86) and
///   PKRU.WD1 = 1 (slot 87), 256 VAs each × 24 passes.
/// * `1g`: 1 GiB leaves: 16 PML4E × 16 PDPTE (PS = 1) combinations, slots 88–103, × 24.
/// * `la57`: 5-level paging: 16 PML5E combinations over a `P|RW|US` path × 24 (VAs above
///   2^48; the PML5E is not a column).
pub fn variants(f: &crate::boot::cpuid::Features) -> Vec<SkippedSet> {
    let reason = |supported: bool, missing: &str| {
        if supported {
            format!("not implemented: {missing}")
        } else {
            "unsupported by host".to_string()
        }
    };
    let kernel_user = "the guest kernel runs from user (US=1) pages for PVM's ring 3, \
                       so CR4.SMEP/SMAP would fault the kernel itself";
    let mut v = vec![
        SkippedSet {
            feature: "smep",
            reason: reason(f.smep, kernel_user),
            vas: pde_pte_vas(84, 0),
            passes: base_passes(Mode {
                smep: true,
                ..Mode::default()
            }),
        },
        SkippedSet {
            feature: "smap",
            reason: reason(f.smap, kernel_user),
            vas: pde_pte_vas(85, 0),
            passes: base_passes(Mode {
                smap: true,
                ..Mode::default()
            }),
        },
    ];
    for (slot, pkru) in [(86u64, 1u32 << 2), (87, 1 << 3)] {
        v.push(SkippedSet {
            feature: "pku",
            reason: reason(f.pku, "protection-key leaves are not built"),
            vas: pde_pte_vas(slot, 1 << 59),
            passes: base_passes(Mode {
                pke: true,
                pkru,
                ..Mode::default()
            }),
        });
    }
    let one_g = (0..256u64)
        .map(|k| {
            let (i4, i3) = (k >> 4, k & 15);
            SkippedVa {
                va: ((88 + i4) << 39) | (i3 << 30),
                entries: [
                    Some(tables::combo_flags(i4)),
                    Some(tables::combo_flags(i3) | 0x80),
                    None,
                    None,
                ],
            }
        })
        .collect();
    v.push(SkippedSet {
        feature: "1g",
        reason: reason(f.page_1g, "1 GiB test leaves are not built"),
        vas: one_g,
        passes: base_passes(Mode::default()),
    });
    let la57 = (0..16u64)
        .map(|i5| SkippedVa {
            va: ((i5 + 1) << 48) | (64 << 39),
            entries: [Some(T); 4],
        })
        .collect();
    v.push(SkippedSet {
        feature: "la57",
        reason: reason(f.la57, "5-level paging needs a 5-level boot"),
        vas: la57,
        passes: base_passes(Mode::default()),
    });
    v
}

/// MAXPHYADDR from CPUID 0x8000_0008 EAX[7:0] (36 if absent, SDM Vol. 2A CPUID).
pub fn phys_bits(cpuid: &kvm_bindings::CpuId) -> u8 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008 && e.index == 0)
        .map_or(36, |e| (e.eax & 0xff) as u8)
}

/// The run's state, kept by the VMM between `MatrixSync` calls.
#[derive(Debug)]
pub struct MatrixRun {
    vas: Vec<TestVa>,
    passes: Vec<PassSpec>,
    built: tables::Built,
    phys_bits: u8,
    skipped: Vec<SkippedSet>,
    /// Leaf values after each pass (pass × VA).
    after: Vec<Vec<u64>>,
    t_setup: Instant,
    t_first_sync: Option<Instant>,
    /// The pass the guest is running.
    running: Option<u64>,
    t_last_sync: Option<Instant>,
    pass_seconds: Vec<f64>,
    setup_seconds: f64,
    /// Set by the last sync.
    pub outcome: Option<Arc<MatrixData>>,
}

/// Build the matrix into `space`: tables, data frame, records buffer and plan. Returns the
/// run state and the plan's GVA (for `BootInfo.arg[0]`).
///
/// # Errors
/// [`SpaceError`] if frames or tables run out.
pub fn setup(space: &mut AddressSpace, phys_bits: u8) -> Result<(Box<MatrixRun>, u64), SpaceError> {
    let t0 = Instant::now();
    let f = space.features;
    let vas = tables::test_vas();
    let mut passes = base_passes(Mode::default());
    let mut skipped = variants(&f);
    if !f.nx {
        let (run, skip): (Vec<_>, Vec<_>) = passes.into_iter().partition(|p| !p.mode.nxe);
        passes = run;
        skipped.push(SkippedSet {
            feature: "nx",
            reason: "unsupported by host".into(),
            vas: vas.iter().map(skipped_va).collect(),
            passes: skip,
        });
    }
    let mut image = tables::records_image(&vas, passes.len());
    let mut plan = Plan {
        magic: abi::PLAN_MAGIC,
        passes: passes.len() as u64,
        pass: [Pass::default(); abi::MAX_PASSES],
    };
    let per_pass = vas.len() as u64 * RECORD_BYTES;
    for (i, (p, slot)) in passes.iter().zip(plan.pass.iter_mut()).enumerate() {
        *slot = Pass {
            access: match p.access {
                Access::Read => abi::ACCESS_READ,
                Access::Write => abi::ACCESS_WRITE,
                Access::Exec => abi::ACCESS_EXEC,
            },
            cpl: u32::from(p.cpl),
            mode: mode_bits(p.mode),
            pkru: p.mode.pkru,
            records: tables::BUF_GVA + tables::PLAN_BYTES + i as u64 * per_pass,
            count: vas.len() as u64,
        };
    }
    image[..std::mem::size_of::<Plan>()].copy_from_slice(vm_memory::ByteValued::as_slice(&plan));
    let built = tables::build(space, &vas, &image, phys_bits)?;
    if !built.rsvd_built {
        // MAXPHYADDR 52: bit 51 is an address bit. The four reserved-bit VAs still run (as
        // permissive paths), but their rows are reported as skipped.
        log::warn!("fault matrix: MAXPHYADDR is 52, reserved-bit cases skipped");
    }
    let run = MatrixRun {
        after: Vec::with_capacity(passes.len()),
        vas,
        passes,
        built,
        phys_bits,
        skipped,
        t_setup: t0,
        t_first_sync: None,
        running: None,
        t_last_sync: None,
        pass_seconds: Vec::new(),
        setup_seconds: t0.elapsed().as_secs_f64(),
        outcome: None,
    };
    log::debug!("fault matrix: setup in {:?}", t0.elapsed());
    Ok((Box::new(run), tables::BUF_GVA))
}

fn skipped_va(t: &TestVa) -> SkippedVa {
    SkippedVa {
        va: t.va,
        entries: t.entries.map(Some),
    }
}

fn mode_bits(m: Mode) -> u32 {
    let mut b = 0;
    for (on, bit) in [
        (m.wp, abi::MODE_WP),
        (m.nxe, abi::MODE_NXE),
        (m.smep, abi::MODE_SMEP),
        (m.smap, abi::MODE_SMAP),
        (m.pke, abi::MODE_PKE),
    ] {
        if on {
            b |= bit;
        }
    }
    b
}

impl MatrixRun {
    /// `MatrixSync(ended, next)`: snapshot the leaves for pass `ended`, clear A/D in every test
    /// entry and mark the shadow stale; after the last pass, compare everything with the
    /// oracle. Passes must come in order.
    ///
    /// # Errors
    /// `Inval` for out-of-order or unknown pass numbers; `Fault` if guest memory fails.
    pub fn sync(&mut self, space: &mut AddressSpace, ended: u64, next: u64) -> Result<u64, Status> {
        let n = self.passes.len() as u64;
        let valid = self.outcome.is_none()
            && match self.running {
                None => {
                    ended == abi::NO_PASS
                        && self.t_first_sync.is_none()
                        && (if n > 0 {
                            next == 0
                        } else {
                            next == abi::NO_PASS
                        })
                }
                Some(r) => {
                    ended == r
                        && (if r + 1 < n {
                            next == r + 1
                        } else {
                            next == abi::NO_PASS
                        })
                }
            };
        if !valid {
            log::warn!("MatrixSync({ended}, {next}) out of order");
            return Err(Status::Inval);
        }
        self.running = (next != abi::NO_PASS).then_some(next);
        let now = Instant::now();
        if let Some(t) = self.t_last_sync.replace(now) {
            self.pass_seconds.push(now.duration_since(t).as_secs_f64());
        }
        let mem = &space.ram.mem;
        if ended != abi::NO_PASS {
            let mut snap = Vec::with_capacity(self.built.leaf_gpas.len());
            for &g in &self.built.leaf_gpas {
                snap.push(
                    mem.read_obj::<u64>(GuestAddress(g))
                        .map_err(|_| Status::Fault)?,
                );
            }
            self.after.push(snap);
        } else {
            self.t_first_sync = Some(Instant::now());
        }
        if next == abi::NO_PASS {
            self.outcome = Some(Arc::new(self.finish(space)));
            return Ok(0);
        }
        const AD: u64 = 0x60;
        for &g in &self.built.entry_gpas {
            let v = mem
                .read_obj::<u64>(GuestAddress(g))
                .map_err(|_| Status::Fault)?;
            if v & AD != 0 {
                mem.write_obj::<u64>(v & !AD, GuestAddress(g))
                    .map_err(|_| Status::Fault)?;
            }
        }
        space.shadow_stale = true;
        Ok(0)
    }

    /// Compare every record with the oracle.
    fn finish(&self, space: &AddressSpace) -> MatrixData {
        let n = self.vas.len();
        let mut results = Vec::with_capacity(self.passes.len() * n);
        let per_pass = n as u64 * RECORD_BYTES;
        let mut raw = vec![0u8; per_pass as usize];
        let (mut pass, mut fail) = (0u64, 0u64);
        let mut rsvd_skipped = 0u64;
        for (p, spec) in self.passes.iter().enumerate() {
            let gpa = self.built.buf_gpa + tables::PLAN_BYTES + p as u64 * per_pass;
            let readable = space
                .ram
                .mem
                .read_slice(&mut raw, GuestAddress(gpa))
                .is_ok();
            let after = self.after.get(p);
            for (k, t) in self.vas.iter().enumerate() {
                let word = |i: usize| {
                    let o = k * RECORD_BYTES as usize + i * 8;
                    raw.get(o..o + 8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(NOT_FAULTED, u64::from_le_bytes)
                };
                let (va, cr2, err) = (word(0), word(1), word(2));
                let pte_after = after.and_then(|a| a.get(k)).copied();
                let r = judge(
                    t,
                    spec,
                    self.built.leaf_raw[k],
                    readable && va == t.va,
                    cr2,
                    err,
                    pte_after,
                    self.phys_bits,
                );
                let skip = t.rsvd_level.is_some() && !self.built.rsvd_built;
                let status = if skip {
                    rsvd_skipped += 1;
                    CaseStatus::Skipped
                } else if r {
                    pass += 1;
                    CaseStatus::Pass
                } else {
                    fail += 1;
                    CaseStatus::Fail
                };
                results.push(CaseResult {
                    cr2,
                    err,
                    pte_after: pte_after.unwrap_or(0),
                    status,
                });
            }
        }
        let mut skipped_by: BTreeMap<String, u64> = BTreeMap::new();
        let mut skipped = rsvd_skipped;
        if rsvd_skipped > 0 {
            skipped_by.insert("rsvd: MAXPHYADDR is 52".into(), rsvd_skipped);
        }
        for s in &self.skipped {
            let c = (s.vas.len() * s.passes.len()) as u64;
            skipped += c;
            *skipped_by
                .entry(format!("{}: {}", s.feature, s.reason))
                .or_default() += c;
        }
        let passes_seconds = self.t_first_sync.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let data = MatrixData {
            vas: self.vas.clone(),
            passes: self.passes.clone(),
            results,
            skipped_sets: self.skipped.clone(),
            summary: MatrixSummary {
                cases: pass + fail + skipped,
                pass,
                fail,
                skipped,
                skipped_by,
                passes_run: self.passes.len() as u64,
                vas: self.vas.len() as u64,
                phys_bits: self.phys_bits,
                setup_seconds: self.setup_seconds,
                passes_seconds,
                wall_seconds: self.t_setup.elapsed().as_secs_f64(),
                pass_seconds: self
                    .passes
                    .iter()
                    .zip(&self.pass_seconds)
                    .map(|(p, &t)| PassTime {
                        access: p.access.letter(),
                        cpl: p.cpl,
                        wp: p.mode.wp,
                        nxe: p.mode.nxe,
                        seconds: t,
                    })
                    .collect(),
                failures: Vec::new(),
            },
        };
        let failures = data
            .rows()
            .filter(|r| r.status == CaseStatus::Fail)
            .take(20)
            .map(|r| r.to_tsv())
            .collect();
        MatrixData {
            summary: MatrixSummary {
                failures,
                ..data.summary.clone()
            },
            ..data
        }
    }
}

/// True if a record matches the oracle.
#[allow(clippy::too_many_arguments)]
fn judge(
    t: &TestVa,
    spec: &PassSpec,
    leaf_raw: u64,
    record_ok: bool,
    cr2: u64,
    err: u64,
    pte_after: Option<u64>,
    phys_bits: u8,
) -> bool {
    let exp = oracle::expect(&t.entries, spec.access, spec.cpl, spec.mode, phys_bits);
    let Some(after) = pte_after else {
        return false;
    };
    if !record_ok {
        return false;
    }
    let expected_after = leaf_raw | (exp.leaf_after & 0x60);
    if after != expected_after {
        return false;
    }
    match exp.fault {
        None => err == NOT_FAULTED,
        Some(e) => err == e && cr2 == t.va,
    }
}

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
}

impl CaseStatus {
    fn name(self) -> &'static str {
        match self {
            CaseStatus::Pass => "pass",
            CaseStatus::Fail => "fail",
            CaseStatus::Skipped => "skipped",
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
    /// Status.
    pub status: CaseStatus,
}

/// Totals and the first failures (the `matrix` key of the JSON report).
#[derive(Debug, Clone, Serialize)]
pub struct MatrixSummary {
    /// All cases (pass + fail + skipped).
    pub cases: u64,
    /// Cases that match the oracle.
    pub pass: u64,
    /// Cases that do not.
    pub fail: u64,
    /// Cases not run.
    pub skipped: u64,
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
#[derive(Debug)]
pub struct MatrixData {
    vas: Vec<TestVa>,
    passes: Vec<PassSpec>,
    results: Vec<CaseResult>,
    skipped_sets: Vec<SkippedSet>,
    /// Totals.
    pub summary: MatrixSummary,
}

/// The `--cases-out` header.
pub const TSV_HEADER: &str = "pml4e\tpdpte\tpde\tpte\trsvd_level\taccess\tcpl\twp\tnxe\tva\tfaulted\terror_code\tcr2\tpte_after\tstatus";

/// One row of the case table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Entry flag bits, PML4E first (`None`: no such level).
    pub entries: [Option<u64>; 4],
    /// Level with bit 51, if any.
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
        s
    }
}

impl MatrixData {
    /// Every case: the run passes (pass order, VA order), then the skipped sets.
    pub fn rows(&self) -> impl Iterator<Item = Row> + '_ {
        let n = self.vas.len();
        let run = self.results.iter().enumerate().map(move |(i, r)| {
            let t = &self.vas[i % n];
            Row {
                entries: t.entries.map(|e| Some(e & !tables::RSVD_BIT)),
                rsvd_level: t.rsvd_level,
                pass: self.passes[i / n],
                va: t.va,
                result: Some(*r),
                status: r.status,
            }
        });
        let skipped = self.skipped_sets.iter().flat_map(|s| {
            s.passes.iter().flat_map(move |p| {
                s.vas.iter().map(move |v| Row {
                    entries: v.entries,
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
            "-- fault matrix: {} cases: {} pass, {} fail, {} skipped; {} passes x {} VAs; \
             wall {:.1} s (setup {:.2} s, passes {:.1} s); MAXPHYADDR {}",
            s.cases,
            s.pass,
            s.fail,
            s.skipped,
            s.passes_run,
            s.vas,
            s.wall_seconds,
            s.setup_seconds,
            s.passes_seconds,
            s.phys_bits
        );
        let _ = writeln!(
            o,
            "   CPL 3 cases ran natively on the MMU (KVM shadow pages); CPL 0 cases were \
             checked by KVM's emulator walk (PVM emulates CPL 0)"
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(access: Access, cpl: u8, wp: bool) -> PassSpec {
        PassSpec {
            access,
            cpl,
            mode: Mode {
                wp,
                nxe: true,
                ..Mode::default()
            },
        }
    }

    #[test]
    fn judge_needs_every_observation_to_match() {
        // Read-only user page (PTE P|US), supervisor write.
        let t = TestVa {
            va: 0x2000_0000_5000,
            entries: [7, 7, 7, 5],
            rsvd_level: None,
        };
        let leaf = 0x0131_4000 | 5;
        let wp0 = spec(Access::Write, 0, false);
        let wp1 = spec(Access::Write, 0, true);
        // WP=0: no fault, A and D set.
        assert!(judge(
            &t,
            &wp0,
            leaf,
            true,
            NOT_FAULTED,
            NOT_FAULTED,
            Some(leaf | 0x60),
            48
        ));
        assert!(!judge(
            &t,
            &wp0,
            leaf,
            true,
            NOT_FAULTED,
            NOT_FAULTED,
            Some(leaf | 0x20),
            48
        ));
        assert!(!judge(&t, &wp0, leaf, true, t.va, 3, Some(leaf), 48));
        assert!(!judge(
            &t,
            &wp0,
            leaf,
            true,
            NOT_FAULTED,
            NOT_FAULTED,
            None,
            48
        ));
        assert!(!judge(
            &t,
            &wp0,
            leaf,
            false,
            NOT_FAULTED,
            NOT_FAULTED,
            Some(leaf | 0x60),
            48
        ));
        // WP=1: #PF 0x3 at CR2 = VA, leaf untouched.
        assert!(judge(&t, &wp1, leaf, true, t.va, 3, Some(leaf), 48));
        assert!(!judge(&t, &wp1, leaf, true, t.va + 1, 3, Some(leaf), 48));
        assert!(!judge(&t, &wp1, leaf, true, t.va, 7, Some(leaf), 48));
        assert!(!judge(&t, &wp1, leaf, true, t.va, 3, Some(leaf | 0x20), 48));
        assert!(!judge(
            &t,
            &wp1,
            leaf,
            true,
            NOT_FAULTED,
            NOT_FAULTED,
            Some(leaf | 0x60),
            48
        ));
    }

    #[test]
    fn rows_as_tsv() {
        let row = Row {
            entries: [Some(7), Some(7), Some(7), Some(0x8000_0000_0000_0007)],
            rsvd_level: None,
            pass: spec(Access::Exec, 0, true),
            va: 0x2000_0000_f000,
            result: Some(CaseResult {
                cr2: 0x2000_0000_f000,
                err: 0x11,
                pte_after: 0x8000_0000_0131_4007,
                status: CaseStatus::Pass,
            }),
            status: CaseStatus::Pass,
        };
        assert_eq!(
            row.to_tsv(),
            "0x7\t0x7\t0x7\t0x8000000000000007\t-\tx\t0\t1\t1\t0x20000000f000\t1\t0x11\t\
             0x20000000f000\t0x8000000001314007\tpass"
        );
        assert_eq!(TSV_HEADER.split('\t').count(), 15);
        assert_eq!(row.to_tsv().split('\t').count(), 15);
        let skipped = Row {
            entries: [Some(7), Some(0x87), None, None],
            rsvd_level: Some(3),
            result: None,
            status: CaseStatus::Skipped,
            ..row
        };
        assert_eq!(
            skipped.to_tsv(),
            "0x7\t0x87\t-\t-\tpdpte\tx\t0\t1\t1\t0x20000000f000\t-\t-\t-\t-\tskipped"
        );
    }

    #[test]
    fn variants_and_passes() {
        let none = crate::boot::cpuid::Features::default();
        let v = variants(&none);
        let total: usize = v.iter().map(|s| s.vas.len() * s.passes.len()).sum();
        assert_eq!(total, 31_104);
        assert!(v.iter().all(|s| s.reason == "unsupported by host"));
        let all = crate::boot::cpuid::Features {
            smep: true,
            smap: true,
            pku: true,
            page_1g: true,
            la57: true,
            ..none
        };
        assert!(variants(&all)
            .iter()
            .all(|s| s.reason.starts_with("not implemented")));
        let p = base_passes(Mode::default());
        assert_eq!(p.len(), 24);
        assert_eq!(mode_bits(p[23].mode), abi::MODE_WP | abi::MODE_NXE);
        assert_eq!((p[3].cpl, p[3].access), (3, Access::Read));
    }
}
