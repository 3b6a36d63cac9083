//! Helpers shared by the KVM integration tests.
#![allow(dead_code)]

use memvisor::frames::ZonePreset;
use memvisor::report::Report;
use memvisor::vmm::{self, VmConfig};
use std::time::Duration;

/// True if /dev/kvm can be opened. Without it a test is skipped with a message — except
/// under CI=true, where a missing /dev/kvm fails the test (CI machines have KVM).
pub fn kvm_or_skip(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{test}: /dev/kvm is required under CI=true but cannot be opened: {e}");
            }
            eprintln!("skipped {test}: /dev/kvm unavailable ({e})");
            false
        }
    }
}

/// A config for `scenario` with `mem_bytes` of RAM and the embedded guest.
pub fn config(scenario: &str, mem_bytes: u64) -> VmConfig {
    VmConfig {
        mem_bytes,
        kernel: memvisor::guest_image::GUEST_ELF.to_vec(),
        scenario: memvisor::scenario::by_name(scenario).expect("known scenario"),
        scenario_name: scenario.to_string(),
        flags: memvisor_abi::flags::QUICK,
        arg: [0; 4],
        timeout: Duration::from_secs_f64(60.0 * memvisor::backend::time_scale()),
        zone_preset: ZonePreset::X86_64,
        echo_console: false,
        check_invariants: true,
    }
}

/// Boot and run; panics with the VMM error.
pub fn run(cfg: &VmConfig) -> Report {
    match vmm::run(cfg) {
        Ok(r) => r,
        Err(e) => panic!("VMM failed: {e}"),
    }
}
