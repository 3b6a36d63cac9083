//! The SDK's exception tools: `expect_fault` at CPL 0 (through `in_ring0`) and CPL 3, a fetch
//! probe on a no-execute page, a handler installed for #UD, and `try_fault` without a fault.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use memvisor_guest_sdk::{
        boot, entry, expect_fault, fault, idt::TrapFrame, probe, sync, try_fault, ucall::done, user,
    };
    entry!(main);
    static UD: AtomicU64 = AtomicU64::new(0);

    fn skip_ud2(f: &mut TrapFrame) -> bool {
        f.rip += 2;
        UD.fetch_add(1, SeqCst) < 8
    }

    fn main() -> u32 {
        let data = boot().arg[0];
        // SAFETY: `data` is the host's unmapped (fault) and no-execute (fetch) test page.
        let read = || unsafe { ((data + 0x40) as *const u8).read_volatile() };
        let r0 = fault::in_ring0(|| {
            (
                user::cpl(),
                expect_fault(|| {
                    read();
                })
                .error_code,
            )
        });
        let r3 = expect_fault(|| {
            read();
        });
        // SAFETY: arg[1] is a fresh zeroed data page the host mapped without execute
        // permission (NX): the fetch faults and the fault is caught; nothing runs.
        let fetch = unsafe { probe::fetch(boot().arg[1]) };
        fault::install(6, Some(skip_ud2));
        // SAFETY: each #UD is handled by `skip_ud2`, which resumes after that `ud2`.
        unsafe { core::arch::asm!("ud2", "ud2") };
        sync!(
            r0.0,
            r0.1,
            r3.error_code,
            r3.cr2,
            matches!(
                fetch,
                probe::Probe::Fault {
                    error_code: 0x15,
                    ..
                }
            ),
            UD.load(SeqCst)
        );
        sync!(try_fault(|| {
            user::cpl();
        })
        .is_none());
        done()
    }
}

#[cfg(not(memvisor_guest))]
mod common;
#[cfg(not(memvisor_guest))]
use memvisor_abi::{MapFlags, Prot, Zone};

#[cfg(not(memvisor_guest))]
#[test]
fn expect_fault_in_both_rings_fetch_probe_installed_handler() {
    let mut vm = common::vm_or_skip!("sdk_faults");
    let nx = vm
        .mmap(4096, Prot::USER_RW, Zone::ANY, MapFlags::POPULATE)
        .unwrap();
    let gone = vm
        .mmap(4096, Prot::USER_RW, Zone::ANY, MapFlags::POPULATE)
        .unwrap();
    vm.munmap(gone, 4096).unwrap();
    vm.set_args([gone, nx, 0, 0]).unwrap();
    assert_eq!(common::sync(&mut vm), [0, 0x0, 0x4, gone + 0x40, 1, 2]);
    assert_eq!(common::sync(&mut vm), [1]);
    common::done(&mut vm);
}

#[cfg(not(memvisor_guest))]
#[test]
fn mmap_at_takes_exactly_the_chosen_gva_and_refuses_what_is_taken() {
    use memvisor::layout::{MMAP_WINDOW_END, MMAP_WINDOW_START};
    use memvisor::vm::VmOpError;
    use memvisor_abi::Status;
    let mut vm = common::vm_or_skip!("sdk_faults");
    let (rw, z, pop) = (Prot::USER_RW, Zone::ANY, MapFlags::POPULATE);
    let status = |r: Result<u64, VmOpError>| match r {
        Err(VmOpError::Status { status }) => status,
        other => panic!("expected a status, got {other:?}"),
    };
    let at = MMAP_WINDOW_START + (3 << 30);
    assert_eq!(vm.mmap_at(at, 2 << 12, rw, z, pop).unwrap(), at);
    assert!(vm.translate(at + 4096).is_ok());
    for (gva, len, flags, want) in [
        (at + 4096, 4096, pop, Status::Exists),     // over the region
        (at + 2 * 4096, 4096, pop, Status::Exists), // over its guard page
        (at - 4096, 4096, pop, Status::Exists),     // its guard over the region
        (at + 0x800, 4096, pop, Status::Inval),     // misaligned
        (
            at + 4096 * 513,
            2 << 20,
            pop | MapFlags::HUGE,
            Status::Inval,
        ), // not 2 MiB aligned
        (MMAP_WINDOW_END - 4096, 4096, pop, Status::Perm), // guard outside the window
        (0x1000, 4096, pop, Status::Perm),          // below the window
        (!0xfff, 4096, pop, Status::Inval),         // overflows
    ] {
        assert_eq!(
            status(vm.mmap_at(gva, len, rw, z, flags)),
            want,
            "at {gva:#x}"
        );
    }
    let next = at + 3 * 4096;
    assert_eq!(vm.mmap_at(next, 4096, rw, z, MapFlags::LAZY).unwrap(), next);
    vm.munmap(at, 2 << 12).unwrap();
    assert_eq!(vm.mmap_at(at, 2 << 12, rw, z, pop).unwrap(), at);
    common::invariants(&vm);
}
