//! The #PF permission matrix (`memvisor run --scenario fault-matrix`), host side.
//!
//! For every combination of P, RW, US and NX in the PML4E, PDPTE, PDE and PTE of a test page
//! (16^4 = 65,536 paths, each with its own tables, see [`tables`]) plus four reserved-bit
//! paths (bit MAXPHYADDR, reserved, set at one level), × access (read, write, fetch) × CPL (0, 3) × CR0.WP
//! (0, 1) × EFER.NXE (0, 1) (plus the feature variants below), the guest performs the access and records whether it faulted,
//! the error code and CR2; the host reads the leaf PTE after each pass. Each case is compared
//! with the SDM oracle in [`oracle`].
//!
//! # How it runs
//! [`setup`] builds the tables and a plan of passes (one pass = one access at one CPL in one
//! mode, over all 65,540 VAs); the guest runs them in order (`guest/kernel/src/scenarios/fault_matrix.rs`),
//! taking one `MatrixSync` hypercall per pass: the host ([`MatrixRun::sync`]) snapshots the
//! leaves of the pass that ended, clears A/D in every test entry and, with shadow paging, asks
//! the VMM to flush KVM's shadow pages (which would otherwise keep stale rights and A/D state;
//! with EPT / NPT the guest's TLB flush after the sync suffices). After the last pass it
//! compares everything with the oracle (`MatrixRun::finish`).
//!
//! On a PVM host CPL 0 code is emulated instruction by instruction, so the CPL 0 cases are
//! checked by KVM's emulator page walk, and the CPL 3 cases by the real MMU through KVM's
//! shadow pages. On VMX+EPT / SVM+NPT hosts both run on the (emulated) CPU's own walk.
//!
//! # Known deviations
//! An emulated CPU that departs from the SDM in a documented way can be named
//! (`--known-deviation`, [`KnownDeviation`]): exactly the cases that differ that way are
//! counted as `deviation`, apart from pass, fail and skipped.
//!
//! # Feature variants
//! CR4.SMEP, CR4.SMAP (RFLAGS.AC both ways, CPL 0 and 3), implicit supervisor reads
//! (`smap-implicit`: segment loads from an LDT on the test page), protection keys and 1 GiB
//! leaves run on their own VAs and passes where the guest CPUID has the feature
//! ([`variants`]); the host maps supervisor-only aliases of the guest's probe code, kernel
//! data and records for the SMEP / SMAP passes ([`tables::map_aliases`]). LA57 runs where the
//! guest booted 5-level (a PML5 above the PML4; the VMM boots the fault matrix so where KVM
//! accepts CR4.LA57): each of its VAs walks a PML5E with its own flag combination
//! ([`tables::TestVa::pml5e`]). Variants the CPUID (or KVM) lacks are reported as skipped
//! cases (never passes).
//!
//! # Layout
//! `passes` says which passes run and which case sets are skipped ([`variants`]), `run`
//! builds the run and serves `MatrixSync` ([`setup`], [`MatrixRun`]), `results` holds what it
//! produced (the case table, the summary, the report's part: [`MatrixData`],
//! [`MatrixReport`]); [`tables`] builds the page tables and [`oracle`] is the SDM's answer for
//! each case.

mod deviation;
pub mod oracle;
mod passes;
mod results;
mod run;
pub mod tables;
#[cfg(test)]
mod tests;

pub use deviation::{DeviationError, KnownDeviation};
pub use passes::{variants, Offer, PassSpec, SkippedSet, SkippedVa, Variant};
pub use results::{
    temp_path, CaseResult, CaseStatus, MatrixData, MatrixReport, MatrixSummary, PassTime, Row,
    TSV_HEADER,
};
pub use run::{setup, MatrixRun};
