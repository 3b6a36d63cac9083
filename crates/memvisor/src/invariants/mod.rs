//! The host's invariants over the guest's memory (issue 7 §1), checked after every hypercall
//! batch in checked runs ([`crate::vmm::VmConfig::check_invariants`]) and at the end of every
//! run.
//!
//! [`check`] verifies, from the host's own records and a walk of every leaf PTE:
//!
//! * **Frames**: every RAM frame is in exactly one state — free, boot-reserved (page 0 and the
//!   boot-info frame), kernel image, page-table pool (a 2 MiB chunk), boot stack, or mapped
//!   for exactly one mmap region (its owner). Each claimed frame has the matching allocator
//!   state (reserved or allocated), no frame has two owners, no allocated frame is without an
//!   owner (a leak), and per zone `present = reserved + managed`, `managed = free +
//!   allocated` with `allocated` and `reserved` equal to the frames the owners claim.
//! * **Page tables**: every table frame lies in the pool; no leaf maps a pool frame writable,
//!   and only the direct map maps one at all (read-only, by design: see the README).
//! * **W^X**: no leaf is writable and executable; the kernel image's leaves carry exactly
//!   their segment's rights and no leaf anywhere maps a kernel frame writable unless its
//!   segment is writable (no writable alias of text or rodata).
//! * **Guards**: the page below each stack and the page after each mmap region are unmapped.
//! * **Leaves**: every leaf lies in a known area (direct map at its identity offset, kernel
//!   image, stacks, an mmap region with that region's protection) and inside guest RAM, except
//!   the documented doorbell page ([`memvisor_abi::DOORBELL_GPA`]) and the pages of the
//!   stage-2 test layout and a test's extra read-only and lazy ranges
//!   ([`AddressSpace::stage2_ranges`], identity-offset GPAs outside RAM).
//! * **Regions and the mmap window**: regions are page aligned, disjoint with their guard
//!   pages, inside the window; populated regions are fully mapped; the window's free extents
//!   and the regions (with guards) partition the window exactly (no GVA leak).
//!
//! A [`Violation`] names the frame, the GVA and the leaf PTE (value and location) concerned.
//! The [`InvariantReport`] counts frames by state and lists the frames still mapped at the
//! time of the check with their owner region (the leak report at exit). [`teardown_check`]
//! unmaps every region and checks that every data frame, and then every frame but the boot
//! structures', is free.
//!
//! # Layout
//! [`check`] runs, in order: the leaf walk (`leaves`), guard pages, regions and the mmap
//! window (`regions`), page-table frames, frame ownership and zone counts (`frames`); the
//! violations are collected by `checker`. The report types are in `summary`, and the teardown
//! check in `teardown`. The KVM-free hypercall harness on these checks is a tool
//! (`memvisor_cli::harness`).

mod checker;
mod frames;
mod leaves;
mod regions;
mod summary;
mod teardown;
#[cfg(test)]
pub(crate) mod tests;

pub use summary::{
    FrameCounts, FrameState, InvariantReport, InvariantSummary, LeafCounts, Leak, TeardownReport,
    Violation, ZoneCount,
};
pub use teardown::teardown_check;

use crate::space::AddressSpace;
use checker::Checker;

/// Most violations one check reports (the rest are counted in the last one's detail).
pub const MAX_VIOLATIONS: usize = 64;
/// Most frames listed per region in the leak report.
pub const LEAK_FRAMES_LISTED: usize = 16;

/// Check every invariant of issue 7 §1 on `space`.
///
/// # Errors
/// The violations found (at most [`MAX_VIOLATIONS`]).
pub fn check(space: &AddressSpace) -> Result<InvariantReport, Vec<Violation>> {
    let mut c = Checker {
        space,
        out: Vec::new(),
        dropped: 0,
    };
    let report = run_checks(&mut c);
    if c.dropped > 0 {
        let n = c.dropped;
        if let Some(last) = c.out.last_mut() {
            last.detail += &format!(" (and {n} more violations not listed)");
        }
    }
    if c.out.is_empty() {
        Ok(report)
    } else {
        Err(c.out)
    }
}

/// The checks in order (the order of the violations reported): leaves, guards and regions,
/// page-table frames, frame ownership and zone counts.
fn run_checks(c: &mut Checker<'_>) -> InvariantReport {
    let scan = leaves::check_leaves(c);
    let leaks = regions::check_regions(c, scan.mapped_in_region);
    let tables = frames::check_tables(c);
    let (frames, zones) = frames::check_frames(c, scan.claims, tables);
    InvariantReport {
        frames,
        zones,
        leaves: scan.counts,
        regions: c.space.regions.len() as u64,
        leaks,
    }
}

/// Fill in the report's invariant summary at the end of a run: the check at exit (with the
/// leak report) and the teardown check. In a checked run a violation fails the run.
pub fn finish(
    report: &mut crate::report::Report,
    space: &mut AddressSpace,
    checked: bool,
    checks: u64,
) {
    let mut sum = report.invariants.take().unwrap_or_default();
    sum.checked_every_batch = checked;
    sum.checks = checks + 1;
    match check(space) {
        Ok(r) => sum.at_exit = Some(r),
        Err(v) => sum.violations.extend(v),
    }
    match teardown_check(space) {
        Ok(t) => sum.teardown = Some(t),
        Err(v) => sum.violations.extend(v),
    }
    if checked && !sum.violations.is_empty() && report.outcome != "invariant_violation" {
        report.outcome = "invariant_violation";
        report.guest_exit_code = None;
        report.message = Some(format!(
            "host invariant violated at exit: {} ({} violation(s))",
            sum.violations[0],
            sum.violations.len()
        ));
    }
    report.invariants = Some(sum);
}

/// The VMM's per-batch hook: when `enabled`, count and run [`check`].
///
/// # Errors
/// The violations [`check`] found.
pub fn after_batch(
    enabled: bool,
    space: &AddressSpace,
    checks: &mut u64,
) -> Result<(), Vec<Violation>> {
    if !enabled {
        return Ok(());
    }
    *checks += 1;
    check(space).map(|_| ())
}
