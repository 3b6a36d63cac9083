//! The built-in scenarios (`--scenario NAME`): the registry and the per-scenario host
//! interface.
//!
//! **Adding a scenario** is one guest file and at most one host file; nothing else names it:
//!
//! * `guest/kernel/src/scenarios/NAME.rs` (required): `pub const DESCRIPTION: &str` (one line
//!   for `memvisor scenarios`) and `pub fn run() -> u32` (the kernel entry at CPL 0, usually
//!   `crate::user::run(..)` into ring 3; its result is the exit code). The scenario's name is
//!   the file stem with `_` as `-` (`fault_matrix.rs` is `fault-matrix`); the host names it to
//!   the guest by [`memvisor_abi::scenario::id`] in the boot info. The guest kernel's
//!   `build.rs` generates its dispatch table from these files.
//! * `src/scenarios/NAME.rs` (optional): `pub fn new() -> Box<dyn Scenario>`, the host side
//!   of the scenario ([`Scenario`]: options, state the VMM keeps for it, control hypercalls,
//!   a report section). Without it the scenario gets [`DefaultHooks`].
//!
//! The root `build.rs` reads both directories into [`REGISTRY`] (`memvisor scenarios`,
//! `--scenario help`, [`crate::api::VmBuilder::scenario`], [`crate::vmm::run`]).

use crate::layout::PhysLayout;
use crate::report::Report;
use crate::space::{AddressSpace, SpaceError};
use memvisor_abi::{Hypercall, Status};
use std::time::Duration;

/// One built-in scenario of the registry.
#[derive(Debug)]
pub struct Entry {
    /// Its name (`--scenario NAME`).
    pub name: &'static str,
    /// One line (the guest file's `DESCRIPTION`).
    pub description: &'static str,
    /// A fresh host side for one run.
    pub new: fn() -> Box<dyn Scenario>,
    /// Whether `src/scenarios/NAME.rs` exists (else [`DefaultHooks`]).
    pub host_file: bool,
}

impl Entry {
    /// A fresh host side for one run.
    pub fn hooks(&self) -> Box<dyn Scenario> {
        (self.new)()
    }
}

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

include!(concat!(env!("OUT_DIR"), "/scenario_registry.rs"));

/// A scenario by name, listed or not.
pub fn find(name: &str) -> Option<&'static Entry> {
    REGISTRY.iter().find(|e| e.name == name)
}

/// A listed scenario by name (what `--scenario` and [`crate::api::VmBuilder::scenario`]
/// accept).
pub fn by_name(name: &str) -> Option<&'static Entry> {
    find(name).filter(|e| e.hooks().listed())
}

/// The listed scenarios, sorted by name.
pub fn listed() -> impl Iterator<Item = &'static Entry> {
    REGISTRY.iter().filter(|e| e.hooks().listed())
}

/// Listed names, comma-separated (for error messages).
pub fn names() -> String {
    listed().map(|e| e.name).collect::<Vec<_>>().join(", ")
}

/// The listed scenarios with their descriptions, one per line (`memvisor --help`, `memvisor
/// scenarios`).
pub fn help_text() -> String {
    let width = listed().map(|e| e.name.len()).max().unwrap_or(0);
    let mut o = String::from("Scenarios (--scenario NAME):\n");
    for e in listed() {
        o += &format!("  {:<width$}  {}\n", e.name, e.description);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn stems(dir: &str) -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "rs"))
                    .filter_map(|p| p.file_stem()?.to_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn the_registry_holds_every_guest_file_and_each_host_file() {
        let guest = stems("guest/kernel/src/scenarios");
        let names: Vec<String> = REGISTRY.iter().map(|e| e.name.replace('-', "_")).collect();
        assert_eq!(names, guest);
        for h in stems("src/scenarios") {
            let e = find(&h.replace('_', "-")).expect("host file with a guest half");
            assert!(e.host_file, "{h}");
        }
        assert!(REGISTRY.iter().all(|e| !e.description.is_empty()));
    }

    #[test]
    fn ids_are_distinct_and_not_the_sdks() {
        let mut ids: Vec<u32> = REGISTRY
            .iter()
            .map(|e| memvisor_abi::scenario::id(e.name))
            .collect();
        ids.push(memvisor_abi::scenario::SDK);
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }

    #[test]
    fn a_vm_stays_send() {
        fn send<T: Send>() {}
        send::<crate::Vm>();
    }

    #[test]
    fn unlisted_scenarios_are_not_selectable() {
        assert!(by_name("demo").is_some());
        assert!(find("replay").is_some());
        assert!(by_name("replay").is_none());
        assert!(!help_text().contains("replay "));
    }
}
