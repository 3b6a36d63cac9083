//! Block and VM-page layout: header magic bits, size arithmetic and the raw in-band
//! accessors (see the module docs of [`super`] for the layout of a VM page).

use super::*;

pub(super) const PAGE_HDR: usize = 32;
pub(super) const PAGE_MAGIC: u32 = 0x5046_4d56; // "VMFP"
pub(super) const FREE: u32 = 1;
pub(super) const BMAGIC: u32 = 0b1010;
pub(super) const PMAGIC: u32 = 0b0101;
/// Low nibble of a block held by the quick cache (not FREE, a different magic).
pub(super) const QMAGIC: u32 = 0b1100;
pub(super) const LOW: u32 = 0xf;

/// Does a block header's size word carry valid magic bits (free, allocated or cached)?
#[inline(always)]
pub(super) fn hdr_ok(sw: u32) -> bool {
    let l = sw & LOW;
    l & !FREE == BMAGIC || l == QMAGIC
}

/// Offset of the first block header in a VM page of `p` pages.
#[inline(always)]
pub(super) const fn first_off(p: usize) -> usize {
    PAGE_HDR + 32 * p + BLOCK_HEADER
}

/// Bytes available for blocks (headers included) in a VM page of `p` pages: `4064p − 48`.
#[inline(always)]
pub const fn region_bytes(p: usize) -> usize {
    p * PAGE_SIZE - BLOCK_HEADER - first_off(p)
}

/// Per-page metadata overhead of a VM page of `p` pages, in bytes: `32p + 48`.
#[inline(always)]
pub const fn page_overhead(p: usize) -> usize {
    p * PAGE_SIZE - region_bytes(p)
}

/// Number of pages of a VM page whose region can hold a block of `total` bytes.
#[inline]
pub(super) fn pages_for(total: usize) -> usize {
    if total <= region_bytes(1) {
        1
    } else {
        (total + 48).div_ceil(PAGE_SIZE - 32)
    }
}

/// Bytes a one-unit block of a family of `struct_size`-byte structs occupies (8-byte header +
/// payload rounded so the total is a multiple of 16, at least 32); `None` above [`MAX_BLOCK`].
/// Sizes ≡ 8 (mod 16) waste nothing: 24 → 32, 40 → 48, 56 → 64, 120 → 128.
pub const fn block_bytes_for(struct_size: usize) -> Option<usize> {
    match struct_size.checked_add(BLOCK_HEADER + ALIGN - 1) {
        Some(t) => {
            let t = t & !(ALIGN - 1);
            let t = if t < MIN_BLOCK { MIN_BLOCK } else { t };
            if t > MAX_BLOCK {
                None
            } else {
                Some(t)
            }
        }
        None => None,
    }
}

/// Block total (header + payload, multiple of 16, ≥ 32) for a payload of `size` bytes.
#[inline(always)]
pub(super) fn block_total(size: usize) -> Option<usize> {
    block_bytes_for(size)
}

// ---- raw in-band accessors -------------------------------------------------------------------

/// # Safety
/// `a` must be a 4-aligned address inside a live VM page of this heap.
#[inline(always)]
pub(super) unsafe fn rd32(a: usize) -> u32 {
    // SAFETY: per the contract.
    unsafe { *at::<u32>(a) }
}
/// # Safety
/// As [`rd32`].
#[inline(always)]
pub(super) unsafe fn wr32(a: usize, v: u32) {
    // SAFETY: per the contract.
    unsafe { *at::<u32>(a) = v }
}
/// # Safety
/// `a` must be an 8-aligned address inside a live VM page of this heap.
#[inline(always)]
pub(super) unsafe fn rdw(a: usize) -> usize {
    // SAFETY: per the contract.
    unsafe { *at::<usize>(a) }
}
/// # Safety
/// As [`rdw`].
#[inline(always)]
pub(super) unsafe fn wrw(a: usize, v: usize) {
    // SAFETY: per the contract.
    unsafe { *at::<usize>(a) = v }
}

// VmPage header fields.
pub(super) const VP_MAGIC: usize = 0;
pub(super) const VP_FAMILY: usize = 4;
pub(super) const VP_PAGES: usize = 8;
pub(super) const VP_NEXT: usize = 16;
pub(super) const VP_PREV: usize = 24;
// Free block payload fields (offsets from the block header).
pub(super) const FB_NEXT: usize = 8;
pub(super) const FB_PREV: usize = 16;
pub(super) const FB_PAGE: usize = 24;
