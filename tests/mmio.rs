//! Accesses to a GPA with no memslot exit as MMIO with exact GPA, size, direction and data;
//! a read returns the value the host supplies, which the guest asserts.
#![cfg_attr(memvisor_guest, no_std, no_main)]

/// The GVA the test maps to an unbacked GPA (shared by both halves).
const P: u64 = 0x4000_0000_0000;

#[cfg(memvisor_guest)]
memvisor_guest_sdk::guest_main! {
    use core::ptr::{read_volatile as rd, write_volatile as wr};
    use memvisor_guest_sdk::guest_assert_eq;
    // SAFETY: the host mapped P to a GPA with no memslot: every access exits to it.
    unsafe {
        wr(P as *mut u8, 0x11);
        guest_assert_eq!(rd(P as *const u8), 0x88);
        wr((P + 8) as *mut u16, 0x2222);
        guest_assert_eq!(rd((P + 8) as *const u16), 0x7788);
        wr((P + 16) as *mut u32, 0x3333_3333);
        guest_assert_eq!(rd((P + 16) as *const u32), 0x5566_7788);
        wr((P + 24) as *mut u64, 0x4444_4444_4444_4444);
        guest_assert_eq!(rd((P + 24) as *const u64), 0x1122_3344_5566_7788);
    }
}

mod common;

#[test]
fn unbacked_gpa_accesses_exit_as_mmio_with_exact_size_direction_and_data() {
    use memvisor::paging::{PageSize, PteFlags};
    let mut vm = common::vm_or_skip!("mmio");
    let gpa = 1u64 << (vm.phys_bits() - 1); // above RAM, below MAXPHYADDR: no memslot
    let user_rw = PteFlags::WRITABLE | PteFlags::USER | PteFlags::NO_EXECUTE;
    vm.map_gpa(P, gpa, 4096, PageSize::Size4K, user_rw).unwrap();
    vm.set_mmio_read(0x1122_3344_5566_7788);
    for (i, data) in (0..4u64).zip([0x11, 0x2222, 0x3333_3333, 0x4444_4444_4444_4444]) {
        let (at, size) = (gpa + 8 * i, 1 << i);
        assert_eq!(common::step(&mut vm), common::mmio(at, size, true, data));
        assert_eq!(common::step(&mut vm), common::mmio(at, size, false, 0));
    }
    common::done(&mut vm);
}
