//! Issue 7 §2 under KVM: `memvisor run --scenario hostile`. The guest sends random and crafted
//! hypercalls and bad request blocks from ring 3, runs the host out of frames and frees it
//! all; the VMM checks its invariants after every batch. Asserted: exit 0, no invariant
//! violation, counts by result, nothing leaked.

mod common;

use memvisor::report::Report;
use memvisor_cli::report_text::ReportText as _;
use std::time::Instant;

fn record(r: &Report, key: &str) -> u64 {
    r.records
        .get(&format!("hostile.{key}"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no record hostile.{key} in {:?}", r.records))
}

fn assert_hostile_run(r: &Report, min_calls: u64) {
    assert_eq!(r.outcome, "exit", "{}", r.to_text());
    assert_eq!(r.guest_exit_code, Some(0), "console:\n{}", r.console);

    // Every call got the status the guest's model of the ABI prescribes; nothing on the
    // kernel, stacks, guards or page tables succeeded.
    assert_eq!(record(r, "mismatches"), 0, "console:\n{}", r.console);
    assert_eq!(record(r, "self_hits"), 0);
    assert_eq!(record(r, "status.unknown"), 0);
    let calls = record(r, "calls");
    assert!(calls >= min_calls, "{calls} calls");
    // The host saw them too (the guest's count excludes its own console/record/exit calls).
    let host_calls: u64 = r.hypercall_status.values().sum();
    assert!(
        host_calls >= calls,
        "host counted {host_calls}, guest {calls}"
    );
    // Counts by result: every kind of error shows up.
    for status in [
        "ok",
        "inval",
        "nomem",
        "fault",
        "perm",
        "not_mapped",
        "no_zone",
        "nosys",
    ] {
        let n = r.hypercall_status.get(status).copied().unwrap_or(0);
        assert!(n > 0, "no {status} results: {:?}", r.hypercall_status);
        assert_eq!(
            n,
            record(r, &format!("status.{status}"))
                + if status == "ok" {
                    host_calls - calls
                } else {
                    0
                },
            "{status}: host and guest disagree: {:?}",
            r.hypercall_status
        );
    }
    for call in [
        "mmap",
        "munmap",
        "mprotect",
        "lazy_fault",
        "translate",
        "stats",
        "unknown",
    ] {
        assert!(
            r.hypercalls.get(call).is_some_and(|c| c.count > 1000),
            "{call}: {:?}",
            r.hypercalls.get(call)
        );
    }
    // Bad request blocks were refused whole (the planted ones came back untouched).
    assert!(
        r.bad_blocks >= record(r, "bad_rings"),
        "{} bad blocks",
        r.bad_blocks
    );
    assert!(record(r, "planted_refused") >= 4);
    // Ran out of frames, then gave everything back.
    assert!(record(r, "nomem_regions") > 1000);
    assert!(record(r, "nomem_lazy_pages") > 10_000);
    assert_eq!(r.regions_live, 0);
    assert_eq!(r.mapped_frames, 0);

    // The host's invariants held after every batch, at exit and through teardown.
    let inv = r.invariants.as_ref().expect("invariant summary");
    assert!(inv.checked_every_batch);
    assert!(inv.violations.is_empty(), "{:?}", inv.violations);
    assert!(inv.checks >= record(r, "batches"), "{} checks", inv.checks);
    let at_exit = inv.at_exit.as_ref().expect("check at exit");
    assert!(at_exit.leaks.is_empty(), "leaks: {:?}", at_exit.leaks);
    assert_eq!(at_exit.frames.mapped, 0);
    let f = &at_exit.frames;
    assert_eq!(
        f.free + f.boot_reserved + f.kernel + f.table_pool + f.stacks + f.host_data,
        f.ram
    );
    let teardown = inv.teardown.expect("teardown check");
    assert_eq!(teardown.free_frames, teardown.managed_frames);
}

#[test]
fn hostile_guest_quick() {
    if !common::kvm_or_skip("hostile_guest_quick") {
        return;
    }
    let t0 = Instant::now();
    let r = common::run(&common::config("hostile", 256 << 20));
    eprintln!("hostile (QUICK): {:?}", t0.elapsed());
    assert_hostile_run(&r, 100_000);
    assert_eq!(record(&r, "quick"), 1);
}

/// The full run: 10^6 hypercalls (about 5 s in a release build, 10–20 s in the test
/// profile on the PVM host this was measured on).
#[test]
fn hostile_guest_full_million() {
    if !common::kvm_or_skip("hostile_guest_full_million") {
        return;
    }
    let mut cfg = common::config("hostile", 256 << 20);
    cfg.flags &= !memvisor_abi::flags::QUICK;
    cfg.arg[0] = 0x5eed_0000_0000_0007;
    let t0 = Instant::now();
    let r = common::run(&cfg);
    eprintln!("hostile (full): {:?}", t0.elapsed());
    assert_hostile_run(&r, 1_000_000);
    assert_eq!(record(&r, "quick"), 0);
}

#[test]
fn hostile_cli_exits_0_and_reports_the_invariants() {
    if !common::kvm_or_skip("hostile_cli_exits_0_and_reports_the_invariants") {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["run", "--scenario", "hostile", "--quick", "--json"])
        .output()
        .expect("run memvisor");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["invariants"]["checked_every_batch"], true);
    assert_eq!(
        v["invariants"]["violations"].as_array().map(Vec::len),
        Some(0)
    );
    assert!(v["invariants"]["checks"].as_u64().unwrap_or(0) > 100);
    assert_eq!(v["records"]["hostile.mismatches"], "0");
    assert!(v["hypercall_status"]["perm"].as_u64().unwrap_or(0) > 0);
}
