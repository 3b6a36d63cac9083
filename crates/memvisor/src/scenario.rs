//! The per-scenario host interface: [`Scenario`], what the VMM calls for a built-in
//! scenario beyond the common vCPU loop (state it keeps for the scenario, its control
//! hypercalls, its report section). The built-in scenarios and their registry are
//! `memvisor_cli::registry` (the tools crate) (README "Adding a built-in scenario").

use crate::layout::PhysLayout;
use crate::report::Report;
use crate::space::{AddressSpace, SpaceError};
use memvisor_abi::{Hypercall, Status};
use std::time::Duration;

/// What a scenario's [`Scenario::prepare`] may shape before the guest runs.
pub struct Prepare<'a> {
    /// The guest's address space, built (kernel, direct map, stacks) but not yet running.
    pub space: &'a mut AddressSpace,
    /// The guest-physical layout for the guest's MAXPHYADDR.
    pub phys: &'a PhysLayout,
    /// The guest's MAXPHYADDR (CPUID 0x8000_0008).
    pub phys_bits: u8,
    /// The boot info's `arg` words (what the guest reads as `boot().arg`).
    pub boot_arg: &'a mut [u64; 4],
}

/// The host side of a scenario: what the VMM does for it beyond the common vCPU loop. Every
/// method has a default (nothing); a scenario overrides what it needs.
pub trait Scenario: Send {
    /// Listed by `memvisor scenarios` and selectable with `--scenario` (default true; `false`
    /// for scenarios only a subcommand runs, e.g. `replay`, which needs its trace).
    fn listed(&self) -> bool {
        true
    }
    /// Default wall-clock limit before `MEMVISOR_TIME_SCALE` (default 30 s).
    fn default_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
    /// Check the host invariants after every hypercall batch when run from the CLI.
    fn check_invariants(&self) -> bool {
        false
    }
    /// The CLI options (long names) only this scenario accepts, e.g. `cases-out`.
    fn options(&self) -> &'static [&'static str] {
        &[]
    }
    /// Map the kernel's own pages without NX (a W^X relaxation; see
    /// [`crate::space::BuildOptions::no_nx`]).
    fn no_nx(&self) -> bool {
        false
    }
    /// Boot the guest with 5-level paging (CR4.LA57 = 1, CR3 a PML5 whose entries 0 and 511
    /// point to the PML4; [`crate::space::AddressSpace::enable_la57`]) where the guest CPUID
    /// has LA57 and the backend runs it (default false: 4-level).
    fn five_level(&self) -> bool {
        false
    }
    /// Set up the stage-2 test layout ([`memvisor_abi::stage2`], [`crate::stage2::Stage2`]).
    fn stage2_layout(&self) -> bool {
        false
    }
    /// Before the guest runs: map host data, set boot arguments.
    ///
    /// # Errors
    /// A [`SpaceError`] stops the VM before it starts.
    fn prepare(&mut self, ctx: Prepare<'_>) -> Result<(), SpaceError> {
        let _ = ctx;
        Ok(())
    }
    /// A control hypercall the common dispatch does not serve (e.g. `MatrixSync`); the
    /// arguments are the guest's, hostile. Default: `NoSys`.
    ///
    /// # Errors
    /// The status the guest gets.
    fn control(&mut self, space: &mut AddressSpace, call: &Hypercall) -> Result<u64, Status> {
        let _ = (space, call);
        Err(Status::NoSys)
    }
    /// After the run: add this scenario's section to the report.
    fn finish(&mut self, report: &mut Report) {
        let _ = report;
    }
    /// Whether `Vm::snapshot` may save the run mid-way: the host side keeps no state
    /// beyond what [`Self::prepare`] put into guest memory and the address space (default
    /// true). A scenario whose host side accumulates state during the run (the fault
    /// matrix's pass tables) returns false, and a snapshot is refused as unsupported.
    fn snapshot_safe(&self) -> bool {
        true
    }
}

/// The host side of a scenario without a host file (and of a user's own guest): nothing
/// beyond the common loop.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultHooks;
impl Scenario for DefaultHooks {}

/// [`DefaultHooks`], boxed (the registry's constructor for scenarios without a host file).
pub fn default_hooks() -> Box<dyn Scenario> {
    Box::new(DefaultHooks)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_vm_stays_send() {
        fn send<T: Send>() {}
        send::<crate::Vm>();
    }
}
