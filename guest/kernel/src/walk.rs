//! A software page-table walk from inside the guest: reads the tables the host built through
//! the (read-only for table frames) direct map. SDM Vol. 3A §4.5.
//!
//! The walk starts at the PML4 (`BootInfo.pml4_gpa`) under 4-level and 5-level paging alike:
//! in a 5-level boot the host's PML5 entries 0 and 511 point to that PML4, so a 48-bit
//! canonical GVA translates through it exactly. An address that needs the PML5 (bits 56:48
//! not a sign extension of bit 47) is refused (`None`), never truncated to 48 bits.

use crate::boot;

/// Translate a 48-bit canonical `gva` by walking the PML4's tables: `Some((gpa, page_size_bytes))` or `None` if not
/// present at some level.
pub fn translate(gva: u64) -> Option<(u64, u64)> {
    // Bits 63:47 all equal (48-bit canonical); anything else would need the PML5 walk.
    let top = gva >> 47;
    if top != 0 && top != 0x1_ffff {
        return None;
    }
    let info = boot();
    // The PML4's GPA from the boot info (reading CR3 is privileged; this runs in ring 3).
    let mut table = info.pml4_gpa;
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    for level in (1..=4u32).rev() {
        let idx = (gva >> (12 + 9 * (level - 1))) & 0x1ff;
        let ptr = (info.direct_map_base + table + idx * 8) as *const u64;
        // SAFETY: `table` is a page-table frame inside guest RAM, which the direct map covers
        // (read-only for table frames); reading an 8-byte aligned entry is sound.
        let e = unsafe { core::ptr::read_volatile(ptr) };
        if e & 1 == 0 {
            return None;
        }
        let size = 1u64 << (12 + 9 * (level - 1));
        if level == 1 || (level <= 3 && e & 0x80 != 0) {
            let base = e & ADDR & !(size - 1);
            return Some((base + (gva & (size - 1)), size));
        }
        table = e & ADDR;
    }
    None
}
