//! A 2 MiB mapping and the dirty log: after the guest writes 4 KiB pages 1, 4, 9 and 15 of it,
//! the log holds exactly those GPAs of the 2 MiB page; every other logged page is a
//! page-table frame (A/D bits the MMU set) or the guest runtime's own stack and hypercall
//! block (see `Vm::dirty_log`).
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
memvisor_guest_sdk::guest_main! {
    use memvisor_guest_sdk::{boot, sync};
    for page in [1u64, 4, 9, 15] {
        // SAFETY: inside the host's 2 MiB populated region.
        unsafe { ((boot().arg[0] + page * 4096) as *mut u64).write_volatile(page) };
    }
    sync!();
}

mod common;

#[test]
fn dirty_log_of_a_2mib_page_holds_exactly_the_written_4k_pages() {
    use memvisor::paging::PageSize;
    use memvisor_abi::{MapFlags, Prot, Zone};
    let mut vm = common::vm_or_skip!("dirty_huge");
    let huge = MapFlags::POPULATE | MapFlags::HUGE;
    let gva = vm.mmap(2 << 20, Prot::USER_RW, Zone::ANY, huge).unwrap();
    let t = vm.translate(gva).unwrap();
    assert_eq!(t.page_size, PageSize::Size2M);
    vm.set_args([gva, 0, 0, 0]).unwrap();
    vm.start_dirty_log().unwrap();
    common::sync(&mut vm);
    let (base, log) = (t.gpa.raw(), vm.dirty_log().unwrap().kvm);
    let (inside, outside): (Vec<u64>, _) = log.into_iter().partition(|g| g >> 21 == base >> 21);
    assert_eq!(inside, [1u64, 4, 9, 15].map(|p| base + p * 4096));
    let explained = |g: &u64| vm.is_page_table_frame(*g) || vm.is_guest_runtime_frame(*g);
    assert!(outside.iter().all(explained), "unexplained: {outside:x?}");
    common::done(&mut vm);
}
