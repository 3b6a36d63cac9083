//! A write to a page made read-only faults with error code 0x7 (P | W | U, Intel SDM Vol. 3A
//! §4.7) at exactly the address the test chose, from inside the guest's store function.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
memvisor_guest_sdk::guest_main! {
    use memvisor_guest_sdk::{boot, expect_fault, sync};
    #[no_mangle]
    #[inline(never)]
    extern "C" fn ro_write_store(p: *mut u8) {
        // SAFETY: the host mapped this page (read-only): the store faults.
        unsafe { p.write_volatile(1) }
    }
    let f = expect_fault(|| ro_write_store(boot().arg[0] as *mut u8));
    sync!(f.vector, f.error_code, f.cr2, f.rip);
}

mod common;

#[test]
fn write_to_read_only_page_faults_with_0x7_at_the_chosen_address() {
    use memvisor::layout::MMAP_WINDOW_START;
    use memvisor_abi::{MapFlags, Prot, Zone};
    let mut vm = common::vm_or_skip!("ro_write");
    let at = MMAP_WINDOW_START + (1 << 40); // a GVA the test chose
    let region = vm.mmap_at(at, 4 << 12, Prot::USER_RW, Zone::ANY, MapFlags::POPULATE);
    assert_eq!(region.unwrap(), at);
    let target = at + 2 * 4096 + 0x123;
    vm.mprotect(at + 2 * 4096, 4096, Prot::USER_RO).unwrap();
    vm.set_args([target, 0, 0, 0]).unwrap();
    let [vector, error_code, cr2, rip] = common::sync_n(&mut vm);
    assert_eq!((vector, error_code, cr2), (14, 0x7, target));
    common::assert_rip_in(&vm, "ro_write_store", rip);
    common::done(&mut vm);
}
