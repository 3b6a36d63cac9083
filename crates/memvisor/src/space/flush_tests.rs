//! KVM-free tests of the owed shadow flush: edits that KVM may have shadowed owe exactly one
//! flush, taken once; edits it cannot have shadowed owe none.

use super::AddressSpace;
use crate::addr::Gpa;
use crate::paging::{PteFlags, ToGuestAddress};
use memvisor_abi::prot;
use vm_memory::Bytes;

use crate::invariants::tests::space;

/// Set the Accessed bit of the leaf mapping `gva`, as the CPU's walk would.
fn touch(sp: &AddressSpace, gva: u64) {
    let t = sp.pt.translate_raw(&sp.ram.mem, gva).expect("mapped");
    let leaf = t.walk.iter().flatten().last().expect("a leaf entry");
    let table = leaf.table.gpa().expect("table gpa").raw();
    let at = Gpa::new(table + u64::from(leaf.index) * 8).to_guest_address();
    let v: u64 = sp.ram.mem.read_obj(at).expect("read leaf");
    sp.ram
        .mem
        .write_obj(v | PteFlags::ACCESSED.bits(), at)
        .expect("write leaf");
}

#[test]
fn owed_flush_is_taken_once() {
    let mut sp = space();
    sp.take_shadow_flush().discard();
    // Taken: nothing is owed any more.
    assert!(!sp.take_shadow_flush().take_needed());
    let rw = prot::READ | prot::WRITE;
    let gva = sp
        .mmap(
            0x2000,
            memvisor_abi::Prot::from_bits_retain(rw),
            memvisor_abi::Zone::ANY,
            memvisor_abi::MapFlags::default(),
            0,
        )
        .expect("mmap");
    // Growing the table pool makes frames read-only in the direct map: owed, whatever else.
    sp.take_shadow_flush().discard();
    // Unmapping a never-accessed page owes nothing (KVM shadows only accessed entries).
    sp.munmap(gva + 0x1000, 0x1000).expect("munmap");
    assert!(!sp.take_shadow_flush().take_needed());
    // Unmapping an accessed one owes exactly one flush.
    touch(&sp, gva);
    sp.munmap(gva, 0x1000).expect("munmap");
    assert!(sp.take_shadow_flush().take_needed());
    assert!(!sp.take_shadow_flush().take_needed());
}
