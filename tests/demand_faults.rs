//! A lazy mapping is backed on first touch: exactly one demand fault per touched page, each
//! with the exact CR2 the guest touched; untouched pages stay unbacked.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
mod guest {
    use memvisor_guest_sdk::{boot, entry, ucall::done};
    entry!(main);

    fn main() -> u32 {
        for page in [0u64, 3, 7, 3, 0] {
            let p = (boot().arg[0] + page * 4096 + 0x10 * page) as *mut u64;
            // SAFETY: inside the host's lazy region (16 pages).
            unsafe { p.write_volatile(page) };
        }
        done()
    }
}

#[cfg(not(memvisor_guest))]
mod common;
#[cfg(not(memvisor_guest))]
use memvisor_abi::{MapFlags, Prot, Zone};

#[cfg(not(memvisor_guest))]
#[test]
fn exactly_one_demand_fault_per_touched_page_with_its_cr2() {
    let mut vm = common::vm_or_skip!("demand_faults");
    let base = vm
        .mmap(16 << 12, Prot::USER_RW, Zone::ANY, MapFlags::LAZY)
        .unwrap();
    vm.set_args([base, 0, 0, 0]).unwrap();
    common::done(&mut vm);
    let lazy: Vec<u64> = vm
        .faults()
        .iter()
        .filter(|f| f.kind == "lazy")
        .map(|f| f.cr2)
        .collect();
    assert_eq!(lazy, [0u64, 3, 7].map(|p| base + p * 4096 + 0x10 * p));
    assert!(vm
        .faults()
        .iter()
        .all(|f| f.resolved && f.error_code & 1 == 0));
    assert!(vm.translate(base + 3 * 4096).is_ok() && vm.translate(base + 4096).is_err());
}
