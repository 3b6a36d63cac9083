//! A lazy mapping is backed on first touch: exactly one demand fault per touched page, each
//! with the exact CR2 the guest touched; untouched pages stay unbacked.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
memvisor_guest_sdk::guest_main! {
    use memvisor_guest_sdk::boot;
    for page in [0u64, 3, 7, 3, 0] {
        let p = (boot().arg[0] + page * 4096 + 0x10 * page) as *mut u64;
        // SAFETY: inside the host's lazy region (16 pages).
        unsafe { p.write_volatile(page) };
    }
}

mod common;

#[test]
fn exactly_one_demand_fault_per_touched_page_with_its_cr2() {
    use memvisor_abi::{MapFlags, Prot, Zone};
    let mut vm = common::vm_or_skip!("demand_faults");
    let base = vm.mmap(16 << 12, Prot::USER_RW, Zone::ANY, MapFlags::LAZY);
    let base = base.unwrap();
    vm.set_args([base, 0, 0, 0]).unwrap();
    common::done(&mut vm);
    let want = [0u64, 3, 7].map(|p| base + p * 4096 + 0x10 * p);
    assert_eq!(common::lazy_cr2s(&vm), want);
    assert!(vm
        .faults()
        .iter()
        .all(|f| f.resolved && f.error_code & 1 == 0));
    assert!(vm.translate(base + 3 * 4096).is_ok() && vm.translate(base + 4096).is_err());
}
