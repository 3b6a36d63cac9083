//! Lazy restore (`Vm::restore`): only the memslots of the RAM chunks holding a page of the
//! snapshot are registered before the first `KVM_RUN`; the rest follow on a thread. Here the
//! thread is held back (`RestoreOptions::defer_delay`) and the chunk is small
//! (`eager_chunk` 2 MiB), so the restored guest writes (restored at sync 1) or reads
//! (restored at sync 2) RAM whose memslot is not registered yet before its first exit: the
//! VMM completes that access against guest RAM (`restore_stats().deferred_accesses`), and
//! the guest finishes with the same output, fault log, zone and address-space counters as
//! an uninterrupted run; a snapshot of such a restored VM restores again.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
memvisor_guest_sdk::guest_main! {
    use memvisor_guest_sdk::{boot, guest_assert_eq, sync};
    let (a, b, pages) = (boot().arg[0], boot().arg[1], boot().arg[2]);
    let word = |base: u64, i: u64| (base + i * 4096 + 8 * (i % 512)) as *mut u64;
    sync!(1);
    // Region A, never written before: write first, then read back.
    for i in 0..pages {
        // SAFETY: inside the host's populated region A of `pages` pages.
        unsafe { word(a, i).write_volatile(i * 3 + 7) };
    }
    let mut sum_a = 0u64;
    for i in 0..pages {
        // SAFETY: as above.
        sum_a = sum_a.wrapping_add(unsafe { word(a, i).read_volatile() });
    }
    sync!(2, sum_a);
    // Region B, never written before: read first (zero), then write.
    let mut zero_b = 0u64;
    for i in 0..pages {
        // SAFETY: inside the host's populated region B of `pages` pages.
        zero_b = zero_b.wrapping_add(unsafe { word(b, i).read_volatile() });
    }
    for i in 0..pages {
        // SAFETY: as above.
        unsafe { word(b, i).write_volatile(i ^ 0x5a5a) };
    }
    sync!(3, zero_b);
    for i in 0..pages {
        // SAFETY: both regions as above.
        guest_assert_eq!(unsafe { word(a, i).read_volatile() }, i * 3 + 7);
        // SAFETY: as above.
        guest_assert_eq!(unsafe { word(b, i).read_volatile() }, i ^ 0x5a5a);
    }
    memvisor_guest_sdk::println!("lazy_restore: 2 x {} pages checked", pages);
}

mod common;

#[cfg(test)]
use memvisor_abi::{MapFlags, Prot, Zone};

/// Pages of each region: 8 MiB, several 2 MiB chunks with no page in a snapshot.
#[cfg(test)]
const PAGES: u64 = 2048;

/// The guest with its regions A and B mapped (`POPULATE`: frames zeroed, never written) and
/// passed as arguments; `None` where the test skips.
#[cfg(test)]
fn guest_with_regions() -> Option<memvisor::Vm> {
    let mut vm = common::guest_vm("lazy_restore")?;
    let mut region = || {
        vm.mmap(PAGES << 12, Prot::USER_RW, Zone::ANY, MapFlags::POPULATE)
            .expect("mmap")
    };
    let (a, b) = (region(), region());
    vm.set_args([a, b, PAGES, 0]).expect("args");
    Some(vm)
}

#[test]
fn guest_touches_ram_before_its_memslot_is_registered() {
    use memvisor::vm::RestoreOptions;
    use std::time::Duration;
    if !common::uffd_or_skip("lazy_restore") {
        return;
    }
    // What an uninterrupted and a restored run must agree on at the end.
    let outcome = |vm: &memvisor::Vm| {
        (
            vm.console().to_string(),
            format!("{:?}", vm.faults()),
            format!("{:?}", vm.space().counters()),
            vm.space().zones().total_free(),
        )
    };
    let Some(mut vm) = guest_with_regions() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = |n: &str| dir.path().join(n);
    assert_eq!(common::sync(&mut vm), [1]);
    vm.snapshot(&snap("1.snap")).expect("snapshot at sync 1");
    let sum_a: u64 = (0..PAGES).map(|i| i * 3 + 7).sum();
    assert_eq!(common::sync(&mut vm), [2, sum_a]);
    vm.snapshot(&snap("2.snap")).expect("snapshot at sync 2");
    assert_eq!(common::sync(&mut vm), [3, 0]);
    common::done(&mut vm);
    let whole = outcome(&vm);

    let elf = common::guest_elf("lazy_restore");
    let opts = || RestoreOptions {
        eager_chunk: 2 << 20,
        defer_delay: Duration::from_millis(300),
        ..RestoreOptions::default()
    };
    let restore =
        |n: &str| memvisor::Vm::restore(&snap(n), None, elf.clone(), opts()).expect("restore");
    let deferred = |r: &memvisor::Vm| r.restore_stats().expect("restored").deferred_accesses;
    // Restored at sync 1: the first access to region A is a write.
    let mut r = restore("1.snap");
    assert_eq!(common::sync(&mut r), [2, sum_a]);
    assert!(deferred(&r) > 0, "no write met a deferred chunk");
    // A snapshot of the restored VM (every memslot is registered by now) restores again.
    r.snapshot(&snap("1-2.snap"))
        .expect("snapshot of a lazily restored VM");
    assert_eq!(common::sync(&mut r), [3, 0]);
    common::done(&mut r);
    assert_eq!(outcome(&r), whole);
    // Restored at sync 2: the first access to region B is a read (zero).
    for n in ["2.snap", "1-2.snap"] {
        let mut r = restore(n);
        assert_eq!(common::sync(&mut r), [3, 0], "{n}");
        assert!(deferred(&r) > 0, "{n}: no read met a deferred chunk");
        common::done(&mut r);
        assert_eq!(outcome(&r), whole, "{n}");
    }
}

/// A `Vm::mmap` between runs of a lazily restored VM hands out frames that may lie in a
/// deferred chunk: the vCPU loop waits for the deferred memslots before the next `KVM_RUN`
/// (`restore_stats().frame_waits`), so the guest then meets no unregistered RAM.
#[test]
fn host_mmap_after_restore_waits_for_deferred_memslots() {
    use memvisor::vm::RestoreOptions;
    use std::time::Duration;
    if !common::uffd_or_skip("lazy_restore") {
        return;
    }
    let Some(mut vm) = guest_with_regions() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("1.snap");
    assert_eq!(common::sync(&mut vm), [1]);
    vm.snapshot(&snap).expect("snapshot at sync 1");
    drop(vm);
    let opts = RestoreOptions {
        eager_chunk: 2 << 20,
        defer_delay: Duration::from_millis(300),
        ..RestoreOptions::default()
    };
    let elf = common::guest_elf("lazy_restore");
    let mut r = memvisor::Vm::restore(&snap, None, elf, opts).expect("restore");
    let stats = |r: &memvisor::Vm| r.restore_stats().expect("restored");
    assert_eq!(stats(&r).frame_waits, 0);
    // Fresh frames (the zones' lowest free ones) handed out by the host between runs.
    let c = r
        .mmap(PAGES << 12, Prot::USER_RW, Zone::ANY, MapFlags::POPULATE)
        .expect("mmap after restore");
    assert_ne!(c, 0);
    let sum_a: u64 = (0..PAGES).map(|i| i * 3 + 7).sum();
    assert_eq!(common::sync(&mut r), [2, sum_a]);
    let s = stats(&r);
    assert_eq!(s.frame_waits, 1, "{s:?}");
    // Every memslot was registered before the guest's first write to region A.
    assert_eq!(s.deferred_accesses, 0, "{s:?}");
    assert_eq!(common::sync(&mut r), [3, 0]);
    common::done(&mut r);
}
