//! A write to a page made read-only faults with error code 0x7 (P | W | U, Intel SDM Vol. 3A
//! §4.7) at exactly the address the test chose, from inside the guest's store function.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
mod guest {
    use memvisor_guest_sdk::{boot, entry, expect_fault, sync, ucall::done};
    entry!(main);

    #[no_mangle]
    #[inline(never)]
    extern "C" fn ro_write_store(p: *mut u8) {
        // SAFETY: the host mapped this page (read-only): the store faults.
        unsafe { p.write_volatile(1) }
    }

    fn main() -> u32 {
        let f = expect_fault(|| ro_write_store(boot().arg[0] as *mut u8));
        sync!(f.vector, f.error_code, f.cr2, f.rip);
        done()
    }
}

#[cfg(not(memvisor_guest))]
mod common;
#[cfg(not(memvisor_guest))]
use memvisor_abi::{MapFlags, Prot, Zone};

#[cfg(not(memvisor_guest))]
#[test]
fn write_to_read_only_page_faults_with_0x7_at_the_chosen_address() {
    let mut vm = common::vm_or_skip!("ro_write");
    let region = vm
        .mmap(4 << 12, Prot::USER_RW, Zone::ANY, MapFlags::POPULATE)
        .unwrap();
    let target = region + 2 * 4096 + 0x123;
    vm.mprotect(region + 2 * 4096, 4096, Prot::USER_RO).unwrap();
    vm.set_args([target, 0, 0, 0]).unwrap();
    let [vector, error_code, cr2, rip] = common::sync(&mut vm)[..] else {
        panic!()
    };
    assert_eq!((vector, error_code, cr2), (14, 0x7, target));
    assert!(
        vm.symbol("ro_write_store").unwrap().contains(&rip),
        "rip {rip:#x}"
    );
    common::done(&mut vm);
}
