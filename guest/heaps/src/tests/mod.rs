//! Host tests (std only here): seed scenarios, unit tests and proptest model tests.

mod mems_model;
mod mems_unit;
mod memvisor_model;
mod mid_model;
mod park;
mod pf_model;
mod pf_unit;
mod registry;
mod slab_order;
mod stress;

use std::string::String;

/// Run a report function into a `String`.
pub(crate) fn report(f: impl FnOnce(&mut dyn core::fmt::Write) -> core::fmt::Result) -> String {
    let mut s = String::new();
    f(&mut s).expect("report");
    s
}

/// Deterministic fill pattern for block `id`.
pub(crate) fn pattern(id: u64, i: usize) -> u8 {
    let x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (x >> 56) as u8 ^ (i as u8)
}

/// Fill `len` bytes at `p` with the pattern of `id`.
pub(crate) fn fill(p: *mut u8, len: usize, id: u64) {
    for i in 0..len {
        // SAFETY: the caller owns `len` bytes at `p` (a live block).
        unsafe { *p.add(i) = pattern(id, i) };
    }
}

/// Check the pattern of `id` over `len` bytes at `p`.
pub(crate) fn check(p: *const u8, len: usize, id: u64) -> bool {
    // SAFETY: the caller owns `len` bytes at `p` (a live block).
    (0..len).all(|i| unsafe { *p.add(i) } == pattern(id, i))
}

#[test]
fn heaps_are_send() {
    fn is_send<T: Send>() {}
    is_send::<crate::PageFamilies<crate::host::HostPageSource>>();
    is_send::<crate::Mems<crate::host::HostPageSource>>();
}
