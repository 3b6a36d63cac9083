//! Helpers shared by the KVM integration tests. Empty in a test file's guest build
//! (`--cfg memvisor_guest`), so a test declares `mod common;` without a cfg of its own.
#![cfg(not(memvisor_guest))]
#![allow(dead_code)]

use memvisor::report::Report;
use memvisor::vmm::VmConfig;
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

/// True if /dev/kvm can be opened and this host has userfaultfd. Without userfaultfd the
/// test is reported "skipped ...: unsupported by host" — except under CI=true, where it
/// fails (as for /dev/kvm).
pub fn uffd_or_skip(test: &str) -> bool {
    if !kvm_or_skip(test) {
        return false;
    }
    // SAFETY: probe only; the descriptor is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{test}: userfaultfd is required under CI=true: {e}");
        }
        eprintln!("skipped {test}: unsupported by host (userfaultfd: {e})");
        return false;
    }
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd as i32) };
    true
}

/// A config for `scenario` with `mem_bytes` of RAM and the embedded guest.
pub fn config(scenario: &str, mem_bytes: u64) -> VmConfig {
    assert!(
        memvisor_cli::registry::find(scenario).is_some(),
        "unknown scenario {scenario}"
    );
    VmConfig {
        mem_bytes,
        scenario: scenario.to_string(),
        flags: memvisor_abi::flags::QUICK,
        timeout: Duration::from_secs_f64(60.0 * memvisor::backend::time_scale()),
        check_invariants: true,
        ..VmConfig::default()
    }
}

/// Boot and run; panics with the VMM error.
pub fn run(cfg: &VmConfig) -> Report {
    match memvisor_cli::registry::run(cfg) {
        Ok(r) => r,
        Err(e) => panic!("VMM failed: {e}"),
    }
}

/// The ELF of guest binary `bin` of `tests/guests` (the guest half of test file
/// `tests/<bin>.rs`), built for x86_64-unknown-none on first use.
pub fn guest_elf(bin: &str) -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-guests");
    match memvisor::guest_build::build(&root.join("tests/guests/Cargo.toml"), bin, &target) {
        Ok(elf) => elf,
        Err(e) => panic!("{e}"),
    }
}

/// A [`memvisor::Vm`] (64 MiB, invariants checked after every batch, 20 s per run) for the
/// guest half of `tests/<bin>.rs`; `None` (skipped) without /dev/kvm outside CI.
pub fn guest_vm(bin: &str) -> Option<memvisor::Vm> {
    if !kvm_or_skip(bin) {
        return None;
    }
    let opts = memvisor::VmOptions {
        mem_bytes: 64 << 20,
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    match memvisor::Vm::new(guest_elf(bin), opts) {
        Ok(vm) => Some(vm),
        Err(e) => panic!("VM for {bin}: {e}"),
    }
}

/// Run to the next exit; panics on a VMM error.
pub fn step(vm: &mut memvisor::Vm) -> memvisor::Exit {
    match vm.run() {
        Ok(e) => e,
        Err(e) => panic!("VMM failed: {e}"),
    }
}

/// The values of a `sync!`, or a panic naming the exit (with the guest console).
pub fn sync(vm: &mut memvisor::Vm) -> Vec<u64> {
    match step(vm) {
        memvisor::Exit::Ucall(memvisor::Ucall::Sync(v)) => v,
        other => panic!("expected a sync, got {other:?}\nconsole:\n{}", vm.console()),
    }
}

/// The `N` values of a `sync!` (a panic naming the exit if it is not a sync of `N` values).
pub fn sync_n<const N: usize>(vm: &mut memvisor::Vm) -> [u64; N] {
    let v = sync(vm);
    match <[u64; N]>::try_from(v.as_slice()) {
        Ok(a) => a,
        Err(_) => panic!("expected a sync of {N} values, got {v:x?}"),
    }
}

/// `rip` lies inside the guest function `symbol` (by the guest ELF's symbol table).
pub fn assert_rip_in(vm: &memvisor::Vm, symbol: &str, rip: u64) {
    let range = vm.symbol(symbol);
    assert!(
        range.as_ref().is_some_and(|r| r.contains(&rip)),
        "rip {rip:#x} not in {symbol} {range:x?}"
    );
}

/// The CR2 of every demand (`lazy`) fault served so far, in order.
pub fn lazy_cr2s(vm: &memvisor::Vm) -> Vec<u64> {
    let lazy = vm.faults().iter().filter(|f| f.kind == "lazy");
    lazy.map(|f| f.cr2).collect()
}

/// Expect `Ucall(Done)`, then check the host invariants.
pub fn done(vm: &mut memvisor::Vm) {
    match step(vm) {
        memvisor::Exit::Ucall(memvisor::Ucall::Done) => {}
        other => panic!("expected done, got {other:?}\nconsole:\n{}", vm.console()),
    }
    invariants(vm);
}

/// Every host invariant holds.
pub fn invariants(vm: &memvisor::Vm) {
    if let Err(v) = vm.check_invariants() {
        panic!("invariants violated: {v:?}");
    }
}

/// `let mut vm = vm_or_skip!("name");`: [`guest_vm`], or return from the test (skipped).
#[allow(unused_macros)]
macro_rules! vm_or_skip {
    ($bin:expr) => {
        match common::guest_vm($bin) {
            Some(vm) => vm,
            None => return,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use vm_or_skip;

/// `Exit::Mmio { gpa, size, write, data }`.
pub fn mmio(gpa: u64, size: u32, write: bool, data: u64) -> memvisor::Exit {
    memvisor::Exit::Mmio {
        gpa,
        size,
        write,
        data,
    }
}

/// Run this build's `memvisor` binary with `args` and collect its output.
pub fn memvisor_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(args)
        .output()
        .expect("run memvisor")
}

/// Run `memvisor args` and require bad-input behaviour: exit 2 and exactly one non-empty
/// stderr line, which contains `needle`. Returns that line and the whole output.
pub fn assert_bad_input(args: &[&str], needle: &str) -> (String, std::process::Output) {
    let out = memvisor_cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: stderr {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got {stderr:?}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
    (lines[0].to_string(), out)
}
