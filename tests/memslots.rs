//! Extra memslots at GPAs derived from MAXPHYADDR: a dirty-logged slot logs exactly the
//! pages the guest wrote, a read-only slot reads its contents and turns a write into an MMIO
//! exit, a removed slot's GPAs exit as MMIO; 1 GiB pages only where CPUID has them.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
mod guest {
    use memvisor_guest_sdk::{boot, entry, guest_assert_eq, sync, ucall::done};
    entry!(main);

    fn main() -> u32 {
        let [dirty, ro, _, _] = boot().arg;
        // SAFETY: the host mapped both windows (16 KiB each) to its memslots.
        unsafe {
            ((dirty + 4096) as *mut u64).write_volatile(7);
            ((dirty + 3 * 4096) as *mut u64).write_volatile(9);
            guest_assert_eq!((ro as *const u64).read_volatile(), 0x0706_0504_0302_0100);
            (ro as *mut u32).write_volatile(0xabcd);
            sync!();
            guest_assert_eq!(((dirty + 4096) as *const u64).read_volatile(), u64::MAX);
        }
        done()
    }
}

#[cfg(not(memvisor_guest))]
mod common;
#[cfg(not(memvisor_guest))]
use memvisor::{paging::PageSize, paging::PteFlags, vm::MemslotKind, vm::VmOpError, Exit};

#[cfg(not(memvisor_guest))]
#[test]
fn dirty_logged_read_only_and_removed_memslots() {
    let mut vm = common::vm_or_skip!("memslots");
    let base = 1u64 << (vm.phys_bits() - 2);
    let (dirty_gva, ro_gva, flags) = (
        0x5000_0000_0000u64,
        0x5000_0001_0000u64,
        PteFlags::WRITABLE | PteFlags::USER | PteFlags::NO_EXECUTE,
    );
    let dslot = vm
        .add_memslot(base, 4 << 12, MemslotKind::DirtyLogged)
        .unwrap();
    vm.map_gpa(dirty_gva, base, 4 << 12, PageSize::Size4K, flags)
        .unwrap();
    let wx = vm.map_gpa(
        0x5000_0002_0000,
        base,
        4096,
        PageSize::Size4K,
        flags - PteFlags::NO_EXECUTE,
    );
    assert_eq!(
        matches!(wx, Err(VmOpError::Status { .. })),
        vm.features().nx,
        "W+X leaf: {wx:?}"
    );
    let one_g = vm.map_gpa(1 << 46, 1 << 40, 1 << 30, PageSize::Size1G, flags);
    assert_eq!(
        matches!(one_g, Err(VmOpError::Unsupported(_))),
        !vm.features().page_1g
    );
    let ro = match vm.add_memslot(base + (1 << 20), 4 << 12, MemslotKind::ReadOnly) {
        Ok(slot) => Some(slot),
        Err(VmOpError::Unsupported(what)) => {
            eprintln!("skipped read-only slot: unsupported by host ({what})");
            None
        }
        Err(e) => panic!("{e}"),
    };
    let Some(ro) = ro else { return };
    vm.map_gpa(ro_gva, base + (1 << 20), 4 << 12, PageSize::Size4K, flags)
        .unwrap();
    vm.set_args([dirty_gva, ro_gva, 0, 0]).unwrap();
    vm.memslot_bytes_mut(ro).unwrap()[..8].copy_from_slice(&[0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(
        common::step(&mut vm),
        Exit::Mmio {
            gpa: base + (1 << 20),
            size: 4,
            write: true,
            data: 0xabcd
        }
    );
    common::sync(&mut vm);
    assert_eq!(
        vm.memslot_dirty_log(dslot).unwrap(),
        [base + 4096, base + 3 * 4096]
    );
    vm.remove_memslot(dslot).unwrap();
    assert_eq!(
        common::step(&mut vm),
        Exit::Mmio {
            gpa: base + 4096,
            size: 8,
            write: false,
            data: 0
        }
    );
    common::done(&mut vm);
}
