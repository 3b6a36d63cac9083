//! Accesses to a GPA with no memslot exit as MMIO with exact GPA, size, direction and data;
//! a read returns the value the host supplies, which the guest asserts.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
mod guest {
    use core::ptr::{read_volatile as rd, write_volatile as wr};
    use memvisor_guest_sdk::{boot, entry, guest_assert_eq, ucall::done};
    entry!(main);

    fn main() -> u32 {
        let p = boot().arg[0];
        // SAFETY: the host mapped p to a GPA with no memslot: every access exits to it.
        unsafe {
            wr(p as *mut u8, 0x11);
            guest_assert_eq!(rd(p as *const u8), 0x88);
            wr((p + 8) as *mut u16, 0x2222);
            guest_assert_eq!(rd((p + 8) as *const u16), 0x7788);
            wr((p + 16) as *mut u32, 0x3333_3333);
            guest_assert_eq!(rd((p + 16) as *const u32), 0x5566_7788);
            wr((p + 24) as *mut u64, 0x4444_4444_4444_4444);
            guest_assert_eq!(rd((p + 24) as *const u64), 0x1122_3344_5566_7788);
        }
        done()
    }
}

#[cfg(not(memvisor_guest))]
mod common;
#[cfg(not(memvisor_guest))]
use memvisor::paging::{PageSize, PteFlags};

#[cfg(not(memvisor_guest))]
#[test]
fn unbacked_gpa_accesses_exit_as_mmio_with_exact_size_direction_and_data() {
    let mut vm = common::vm_or_skip!("mmio");
    let (gva, gpa) = (0x4000_0000_0000, 1u64 << (vm.phys_bits() - 1));
    let flags = PteFlags::WRITABLE | PteFlags::USER | PteFlags::NO_EXECUTE;
    vm.map_gpa(gva, gpa, 4096, PageSize::Size4K, flags).unwrap();
    vm.set_args([gva, 0, 0, 0]).unwrap();
    vm.set_mmio_read(0x1122_3344_5566_7788);
    for i in 0..4u64 {
        let (at, size) = (gpa + 8 * i, 1 << i);
        let data = [0x11, 0x2222, 0x3333_3333, 0x4444_4444_4444_4444][i as usize];
        assert_eq!(common::step(&mut vm), common::mmio(at, size, true, data));
        assert_eq!(common::step(&mut vm), common::mmio(at, size, false, 0));
    }
    common::done(&mut vm);
}
