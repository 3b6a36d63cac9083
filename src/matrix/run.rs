//! The run: [`setup`] builds the tables, buffers and plan; [`MatrixRun::sync`] serves the
//! guest's `MatrixSync` between passes (leaf snapshots, A/D reset, shadow flush); after the
//! last pass every record is judged against the oracle.

use super::oracle::{self, Access, Mode};
use super::passes::{base_passes, variants, PassSpec, SkippedSet, SkippedVa};
use super::results::{CaseResult, CaseStatus, MatrixData, MatrixSummary, PassTime};
use super::tables::{self, TestVa};
use memvisor::space::{AddressSpace, SpaceError};
use memvisor_abi::matrix::{self as abi, Pass, Plan, NOT_FAULTED, RECORD_BYTES};
use memvisor_abi::Status;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

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
    let f = space.features();
    let vas = tables::test_vas(phys_bits);
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
        // MAXPHYADDR 52: no address bit is reserved. The four reserved-bit VAs still run (as
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

pub(super) fn mode_bits(m: Mode) -> u32 {
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
        let mem = &space.ram().mem;
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
        space.owe_shadow_flush(memvisor::paging::ShadowFlush::needed());
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
                .ram()
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
                    record_ok: readable && va == t.va,
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
            leaf_raw: self.built.leaf_raw.clone(),
            passes: self.passes.clone(),
            results,
            skipped_sets: self.skipped.clone(),
            summary: MatrixSummary {
                cases: pass + fail + skipped,
                pass,
                fail,
                skipped,
                deviation: 0,
                deviation_by: BTreeMap::new(),
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
pub(super) fn judge(
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
