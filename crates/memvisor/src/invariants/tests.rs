//! KVM-free tests of the leaf classification: memory the VMM maps outside RAM is legal only
//! where the address space records it (`AddressSpace::stage2_ranges`).

use super::check;
use crate::addr::{Gpa, Gva};
use crate::boot::cpuid::Features;
use crate::frames::ZonePreset;
use crate::paging::{PageSize, Protection};
use crate::space::AddressSpace;
use memvisor_abi::stage2 as s2;

/// A 128 MiB address space with the embedded guest kernel, NX and PSE (KVM-free; also
/// `space::flush_tests`).
pub(crate) fn space() -> AddressSpace {
    let kernel = crate::guest_image::GUEST_ELF.to_vec();
    let features = Features {
        nx: true,
        pse: true,
        ..Default::default()
    };
    match AddressSpace::build(128 << 20, &kernel, ZonePreset::X86_64, features) {
        Ok(s) => s,
        Err(e) => panic!("build: {e}"),
    }
}

/// Map `len` bytes at the stage-2 window's identity offset of `gpa`, as `Stage2::setup` does.
fn map_stage2(space: &mut AddressSpace, gpa: u64, len: u64) {
    let flags = Protection::USER_DATA.to_pte_flags(space.features.nx);
    assert!(space.ensure_pool(8).is_ok());
    let res = space.pt.edit(&space.ram.mem, &mut space.pool).map_range(
        Gva::new(s2::GVA_BASE + (gpa - s2::GPA_BASE)),
        Gpa::new(gpa),
        len,
        PageSize::Size4K,
        flags,
    );
    assert!(res.is_ok(), "{res:?}");
}

#[test]
fn recorded_stage2_ranges_are_legal_and_others_are_not() {
    let mut sp = space();
    // The case: an extra lazy range 9 MiB into the stage-2 window.
    let gpa = s2::GPA_BASE + (9 << 20);
    map_stage2(&mut sp, gpa, 0x4000);
    let v = check(&sp).expect_err("an unrecorded mapping outside RAM is a violation");
    assert!(v.iter().all(|v| v.kind == "leaf_outside_ram"), "{v:?}");
    assert_eq!(v.len(), 4, "{v:?}");
    sp.stage2_ranges.push((gpa, 0x4000));
    let r = match check(&sp) {
        Ok(r) => r,
        Err(v) => panic!("a recorded stage-2 range is legal: {v:?}"),
    };
    assert_eq!(r.leaves.stage2_test, 4);
    // A recorded range covers only itself: one page more is still a violation.
    map_stage2(&mut sp, gpa + 0x4000, 0x1000);
    let v = check(&sp).expect_err("one page past the recorded range");
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].gva, Some(s2::GVA_BASE + (9 << 20) + 0x4000));
}
