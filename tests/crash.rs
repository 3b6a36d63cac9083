//! Crash paths under KVM: each ends with a non-zero outcome and a report naming what
//! happened — never a hang, never a VMM panic.

mod common;

use memvisor_cli::report_text::ReportText as _;
use std::time::{Duration, Instant};

#[test]
fn runaway_guest_is_stopped_by_the_timeout() {
    if !common::kvm_or_skip("runaway_guest_is_stopped_by_the_timeout") {
        return;
    }
    let mut cfg = common::config("runaway", 64 << 20);
    cfg.timeout = Duration::from_millis(300);
    let t0 = Instant::now();
    let r = common::run(&cfg);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(r.outcome, "timeout");
    assert_eq!(r.guest_exit_code, None);
    assert!(r.message.as_deref().unwrap_or("").contains("timeout"));
    let regs = r.registers.expect("registers at timeout");
    assert!(
        regs.rip >= memvisor::layout::KERNEL_VIRT_OFFSET,
        "rip {:#x}",
        regs.rip
    );
}

#[test]
fn guest_panic_is_reported_with_its_message() {
    if !common::kvm_or_skip("guest_panic_is_reported_with_its_message") {
        return;
    }
    let r = common::run(&common::config("guest-panic", 64 << 20));
    assert_eq!(r.outcome, "panic");
    let msg = r.message.unwrap_or_default();
    assert!(msg.contains("deliberate panic with code 42"), "{msg}");
}

#[test]
fn triple_fault_is_a_shutdown_exit_with_registers() {
    if !common::kvm_or_skip("triple_fault_is_a_shutdown_exit_with_registers") {
        return;
    }
    let r = common::run(&common::config("triple-fault", 64 << 20));
    assert_eq!(r.outcome, "triple_fault", "{}", r.to_text());
    assert_eq!(r.exits.get("shutdown"), Some(&1));
    assert!(r.registers.is_some());
    assert!(r.to_text().contains("registers: rip="));
}

#[test]
fn double_fault_runs_on_its_ist_stack_and_reports() {
    if !common::kvm_or_skip("double_fault_runs_on_its_ist_stack_and_reports") {
        return;
    }
    let r = common::run(&common::config("double-fault", 64 << 20));
    assert_eq!(r.outcome, "panic", "{}", r.to_text());
    assert!(r.message.unwrap_or_default().contains("double fault"));
    let df = r
        .faults
        .iter()
        .find(|f| f.vector == 8)
        .expect("#DF in the fault log");
    assert_eq!(df.error_code, 0, "#DF pushes error code 0");
    assert!(!df.resolved);
}
