//! The run: [`setup`] builds the tables, buffers and plan; [`MatrixRun::sync`] serves the
//! guest's `MatrixSync` between passes (leaf snapshots, A/D reset, shadow flush); after the
//! last pass every record is judged against the oracle.

use super::oracle::{self, Access, Mode};
use super::passes::{base_passes, variants, Offer, PassSpec, SkippedSet, SkippedVa};
use super::results::{CaseResult, CaseStatus, MatrixData, MatrixSummary, PassTime};
use super::tables::{self, TestVa};
use memvisor::paging::ShadowFlush;
use memvisor::space::{AddressSpace, SpaceError};
use memvisor_abi::matrix::{self as abi, Pass, Plan, NOT_FAULTED, RECORD_BYTES};
use memvisor_abi::Status;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

/// The run's state, kept by the VMM between `MatrixSync` calls.
#[derive(Debug)]
pub struct MatrixRun {
    /// Every test VA built: the base VAs, then the running variants'.
    vas: Vec<TestVa>,
    passes: Vec<PassSpec>,
    /// The VAs (indices into `vas`) each pass probes.
    pass_vas: Vec<Range<usize>>,
    built: tables::Built,
    phys_bits: u8,
    skipped: Vec<SkippedSet>,
    /// Leaf values after each pass (pass × its VAs).
    after: Vec<Vec<u64>>,
    /// GPAs of the 1 GiB test leaves (they map GPA 0–1 GiB; cleared after the last pass).
    one_g_leaves: Vec<u64>,
    /// The aliases mapped for CR4.SMEP / SMAP passes (unmapped after the last pass): GVA
    /// and length of each.
    aliases: Vec<(u64, u64)>,
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
    let data_gpa = tables::data_frame(space)?;
    let tramp_syms = space.kernel().matrix_tramp;
    let offer = Offer {
        features: f,
        data_gpa,
        tramp: tramp_syms.is_some(),
        la57_boot: space.la57(),
    };
    let mut vas = tables::test_vas(phys_bits);
    let mut groups = vec![(0..vas.len(), base_passes(Mode::default()))];
    let mut skipped = Vec::new();
    let mut needs_tramp = false;
    for v in variants(&offer) {
        if let Some(s) = v.skipped() {
            skipped.push(s);
            continue;
        }
        needs_tramp |= v.needs_tramp;
        let start = vas.len();
        vas.extend(v.vas);
        groups.push((start..vas.len(), v.passes));
    }
    let (mut passes, mut pass_vas) = (Vec::new(), Vec::new());
    for (range, group) in groups {
        let (run, skip): (Vec<_>, Vec<_>) = group.into_iter().partition(|p| f.nx || !p.mode.nxe);
        if !skip.is_empty() {
            skipped.push(SkippedSet {
                feature: "nx",
                reason: "unsupported by host".into(),
                vas: vas[range.clone()].iter().map(SkippedVa::of).collect(),
                passes: skip,
            });
        }
        for p in run {
            passes.push(p);
            pass_vas.push(range.clone());
        }
    }
    let records: Vec<&[TestVa]> = pass_vas.iter().map(|r| &vas[r.clone()]).collect();
    let mut image = tables::records_image(&records);
    let mut plan = Plan {
        magic: abi::PLAN_MAGIC,
        passes: passes.len() as u64,
        pass: [Pass::default(); abi::MAX_PASSES],
    };
    let mut offset = tables::BUF_GVA + tables::PLAN_BYTES;
    for ((p, r), slot) in passes.iter().zip(&pass_vas).zip(plan.pass.iter_mut()) {
        *slot = Pass {
            access: match p.access {
                Access::Read => abi::ACCESS_READ,
                Access::Write => abi::ACCESS_WRITE,
                Access::Exec => abi::ACCESS_EXEC,
                Access::Desc => abi::ACCESS_DESC,
            },
            cpl: u32::from(p.cpl),
            mode: mode_bits(p.mode),
            pkru: p.mode.pkru,
            // CPL 0 under CR4.SMAP reads and writes the records through their US=0 alias.
            records: if p.mode.smap && p.cpl == 0 {
                offset - tables::BUF_GVA + memvisor::layout::MATRIX_BUF_ALIAS_GVA
            } else {
                offset
            },
            count: r.len() as u64,
        };
        offset += r.len() as u64 * RECORD_BYTES;
    }
    image[..std::mem::size_of::<Plan>()].copy_from_slice(vm_memory::ByteValued::as_slice(&plan));
    let built = tables::build(space, &vas, &image, phys_bits, data_gpa)?;
    if !built.rsvd_built {
        // MAXPHYADDR 52: no address bit is reserved. The four reserved-bit VAs still run (as
        // permissive paths), but their rows are reported as skipped.
        log::warn!("fault matrix: MAXPHYADDR is 52, reserved-bit cases skipped");
    }
    let one_g_leaves = vas
        .iter()
        .zip(&built.leaf_gpas)
        .filter(|(t, _)| t.leaf_level == 3)
        .map(|(_, &g)| g)
        .collect();
    let aliases = match (needs_tramp, tramp_syms) {
        (true, Some(code)) => tables::map_aliases(space, code, &built)?,
        _ => Vec::new(),
    };
    let run = MatrixRun {
        after: Vec::with_capacity(passes.len()),
        vas,
        passes,
        pass_vas,
        built,
        phys_bits,
        skipped,
        one_g_leaves,
        aliases,
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

pub(super) fn mode_bits(m: Mode) -> u32 {
    let mut b = 0;
    for (on, bit) in [
        (m.wp, abi::MODE_WP),
        (m.nxe, abi::MODE_NXE),
        (m.smep, abi::MODE_SMEP),
        (m.smap, abi::MODE_SMAP),
        (m.pke, abi::MODE_PKE),
        (m.ac, abi::MODE_AC),
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
            let range = self.pass_vas[ended as usize].clone();
            let mut snap = Vec::with_capacity(range.len());
            for &g in &self.built.leaf_gpas[range] {
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
            self.tear_down(space)?;
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
        space.owe_shadow_flush(ShadowFlush::needed());
        Ok(0)
    }

    /// Take the 1 GiB leaves (which map GPA 0–1 GiB, the guest's tables included), the LA57
    /// PML5Es (each an alias of the whole PML4) and their leaves, and the aliases away after
    /// the last pass.
    fn tear_down(&mut self, space: &mut AddressSpace) -> Result<(), Status> {
        let mem = &space.ram().mem;
        for &g in &self.one_g_leaves {
            mem.write_obj::<u64>(0x80, GuestAddress(g))
                .map_err(|_| Status::Fault)?;
        }
        let tb = space.host_tables();
        for &i in &self.built.pml5es {
            tb.pt.set_pml5e(tb.mem, i, 0).map_err(|_| Status::Fault)?;
        }
        // The aliases and the LA57 paths' leaves (their 4-level host VAs in slot 114).
        let mut gone = std::mem::take(&mut self.aliases);
        gone.extend(
            self.vas
                .iter()
                .filter(|t| t.pml5e.is_some())
                .map(|t| (t.host_va(), memvisor::addr::PAGE_SIZE)),
        );
        let flush = tables::unmap_aliases(space, &gone).map_err(|_| Status::Fault)?;
        let removed = !self.one_g_leaves.is_empty() || !self.built.pml5es.is_empty();
        space.owe_shadow_flush(flush.merge(ShadowFlush::when(removed)));
        Ok(())
    }

    /// Compare every record with the oracle.
    fn finish(&self, space: &AddressSpace) -> MatrixData {
        let mut results = Vec::with_capacity(self.pass_vas.iter().map(Range::len).sum());
        let (mut pass, mut fail) = (0u64, 0u64);
        let mut rsvd_skipped = 0u64;
        let mut gpa = self.built.buf_gpa + tables::PLAN_BYTES;
        for (p, spec) in self.passes.iter().enumerate() {
            let range = self.pass_vas[p].clone();
            let mut raw = vec![0u8; range.len() * RECORD_BYTES as usize];
            let readable = space
                .ram()
                .mem
                .read_slice(&mut raw, GuestAddress(gpa))
                .is_ok();
            gpa += raw.len() as u64;
            let after = self.after.get(p);
            for (j, k) in range.enumerate() {
                let t = &self.vas[k];
                let word = |i: usize| {
                    let o = j * RECORD_BYTES as usize + i * 8;
                    raw.get(o..o + 8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(NOT_FAULTED, u64::from_le_bytes)
                };
                let (va, cr2, err) = (word(0), word(1), word(2));
                let pte_after = after.and_then(|a| a.get(j)).copied();
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
            pass_vas: self.pass_vas.clone(),
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
                vas: self.pass_vas.first().map_or(0, |r| r.len() as u64),
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
    let (w, n) = t.walk();
    let exp = oracle::expect_walk(
        &w[..n],
        n as u8,
        spec.access,
        spec.cpl,
        spec.mode,
        phys_bits,
    );
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
