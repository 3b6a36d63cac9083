//! The built-in scenarios (`--scenario NAME`) and their registry.
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
//!   a report section). Without it the scenario gets [`memvisor::scenario::DefaultHooks`].
//!
//! The root `build.rs` reads both directories into [`REGISTRY`] (`memvisor scenarios`,
//! `--scenario help`, [`crate::api::VmBuilder::scenario`], [`run`]). This module and the host
//! files are the tools' side: the VMM itself knows only the [`Scenario`] interface.

use memvisor::report::Report;
use memvisor::scenario::{default_hooks, Scenario};
use memvisor::vmm::{VmConfig, VmmError};

/// One built-in scenario of the registry.
#[derive(Debug)]
pub struct Entry {
    /// Its name (`--scenario NAME`).
    pub name: &'static str,
    /// One line (the guest file's `DESCRIPTION`).
    pub description: &'static str,
    /// A fresh host side for one run.
    pub new: fn() -> Box<dyn Scenario>,
    /// Whether `src/scenarios/NAME.rs` exists (else [`memvisor::scenario::DefaultHooks`]).
    pub host_file: bool,
}

impl Entry {
    /// A fresh host side for one run.
    pub fn hooks(&self) -> Box<dyn Scenario> {
        (self.new)()
    }
}

/// Boot and run `cfg.scenario` with its host side from the registry (the default one for a
/// name it lacks, e.g. `"sdk"` or another kernel's own scenario); returns the report (also
/// for guest failures: see [`Report::outcome`]).
///
/// # Errors
/// [`VmmError`] when the VM cannot be created or the guest cannot be built.
pub fn run(cfg: &VmConfig) -> Result<Report, VmmError> {
    memvisor::vmm::run_scenario(cfg, hooks_for(&cfg.scenario))
}

/// A fresh host side for the scenario `name`: its registry entry's, or
/// [`memvisor::scenario::DefaultHooks`] for a name the registry lacks (also what
/// [`memvisor::vm::RestoreOptions::hooks`] takes).
pub fn hooks_for(name: &str) -> Box<dyn Scenario> {
    match find(name) {
        Some(e) => e.hooks(),
        None => default_hooks(),
    }
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
    fn unlisted_scenarios_are_not_selectable() {
        assert!(by_name("demo").is_some());
        assert!(find("replay").is_some());
        assert!(by_name("replay").is_none());
        assert!(!help_text().contains("replay "));
    }
}
