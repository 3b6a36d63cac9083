//! Bad request blocks: the doorbell rung with GPAs of no block at all, headers planted where
//! a block would run past RAM or into the page-table pool, and (during the random phase) our
//! own block under a bad count or at a random bad GPA. Every one must be refused whole.

use super::ctx::Ctx;
use super::doorbell::{block_gpa, peek, plant, ring, text_gva, BLOCK, NOP};
use super::{FLUSH_SLOT_GPA, HUGE, PAGE};
use crate::{boot, println};
use memvisor_abi::{
    Batch, Call, Status, DOORBELL_GPA, DOORBELL_GVA, KERNEL_VIRT_OFFSET, MAX_BATCH,
};

/// Ring the doorbell with GPAs that are no valid block, and with bad headers planted where a
/// block would cross the end of RAM or run into the page tables.
pub(super) fn bad_blocks(c: &mut Ctx) {
    let info = *boot();
    let dm = info.direct_map_base;
    let text_gpa = text_gva().wrapping_sub(KERNEL_VIRT_OFFSET);
    let mut ram_end = 0;
    for e in &info.e820[..info.e820_count as usize] {
        if e.kind == memvisor_abi::E820_RAM {
            ram_end = ram_end.max(e.addr + e.size);
        }
    }
    let blk = block_gpa();
    // Put a valid-looking one-request header into our real block: rings elsewhere must not
    // touch it.
    let p = BLOCK.as_ptr();
    // SAFETY: BLOCK is this scenario's main code's alone.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*p).reqs[0]), NOP);
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*p).head),
            Batch {
                count: 1,
                completed: 0,
            },
        );
    }
    let rings = [
        blk + 1,
        blk + 4,
        blk + 7,
        0,
        ram_end,
        ram_end - 8,
        ram_end + PAGE,
        0xc000_0000,
        DOORBELL_GPA,
        FLUSH_SLOT_GPA,
        info.pml4_gpa,
        text_gpa,
        1 << 40,
        1 << 52,
        0x8000_0000_0000_0000,
        u64::MAX,
        u64::MAX - 7,
    ];
    for g in rings {
        ring(g);
        c.t.bad_rings += 1;
    }
    // SAFETY: as above.
    let head = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*p).head)) };
    if head.completed != 0 {
        c.t.mismatches += 1;
        println!("hostile: MISMATCH a ring at another GPA ran our block");
    }
    // Headers planted in free frames through the direct map: every block below is refused.
    let mut plants: [(u64, u32); 8] = [(0, 0); 8];
    let mut np = 0;
    for e in &info.e820[..info.e820_count as usize] {
        if e.kind == memvisor_abi::E820_RAM && np + 2 <= plants.len() {
            let end = e.addr + e.size;
            plants[np] = (end - 8, 1); // header at the very end: requests past RAM
            plants[np + 1] = (end - 128, 2); // straddles the end of this RAM range
            np += 2;
        }
    }
    let chunk = info.pml4_gpa & !(HUGE - 1);
    if chunk >= 0x40_0000 && np < plants.len() {
        plants[np] = (chunk - 64, 2); // runs into the page-table pool
        np += 1;
    }
    if np + 2 <= plants.len() {
        plants[np] = (ram_end - 3 * PAGE, MAX_BATCH + 1);
        plants[np + 1] = (ram_end - 3 * PAGE + 64, u32::MAX);
        np += 2;
    }
    for &(gpa, count) in &plants[..np] {
        let at = dm + gpa;
        let saved = peek(at);
        if saved.is_none() || !plant(at, count as u64) {
            continue;
        }
        ring(gpa);
        c.t.bad_rings += 1;
        match peek(at) {
            Some(v) if v == count as u64 => c.t.refused_ok += 1,
            other => {
                c.t.mismatches += 1;
                println!(
                    "hostile: MISMATCH planted block at GPA {:#x} (count {}) came back as {:?}",
                    gpa, count, other
                );
            }
        }
        let _ = plant(at, saved.unwrap_or(0));
    }
    // Doorbell writes of the wrong size or at another offset, and a read: plain MMIO exits.
    // SAFETY: writes/reads of the doorbell page (MMIO, no RAM): the VMM logs them and resumes.
    unsafe {
        core::ptr::write_volatile(DOORBELL_GVA as *mut u32, blk as u32);
        core::ptr::write_volatile((DOORBELL_GVA + 8) as *mut u64, blk);
        let _ = core::ptr::read_volatile(DOORBELL_GVA as *const u64);
    }
    // A valid block still works afterwards.
    c.expect(Call::Nop, [0; 5], Status::Ok);
}

/// Ring with a random GPA that cannot be a valid block (unaligned, or past RAM), or with our
/// block under a random header count of 0 or more than 512: the host must refuse it whole
/// (our block comes back with `completed == 0`). Random GPAs inside RAM are always made
/// unaligned: an aligned one could hit memory that parses as a block (a stack, .data) and
/// the host would run it, which is the guest attacking itself, not the host.
pub(super) fn random_bad_ring(c: &mut Ctx) {
    let ram_end = boot().ram_bytes.max(memvisor_abi::KERNEL_PHYS_BASE) + (1 << 30);
    let p = BLOCK.as_ptr();
    let count = match c.rng.below(4) {
        0 => 0,
        1 => MAX_BATCH + 1 + c.rng.below(1000) as u32,
        _ => (c.rng.next() as u32) | 0x8000_0000,
    };
    // SAFETY: BLOCK is this scenario's main code's alone.
    unsafe {
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*p).head),
            Batch {
                count,
                completed: 0,
            },
        );
    }
    let gpa = if c.rng.chance(2) {
        block_gpa()
    } else {
        let g = c.rng.next();
        if g < ram_end && g.is_multiple_of(8) {
            g | (1 + c.rng.below(7))
        } else {
            g
        }
    };
    ring(gpa);
    c.t.bad_rings += 1;
    // SAFETY: as above.
    let head = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*p).head)) };
    if head.completed != 0 || head.count != count {
        c.t.mismatches += 1;
        println!(
            "hostile: MISMATCH ring at {:#x} with our block's count {}: the host ran it",
            gpa, count
        );
    }
}
