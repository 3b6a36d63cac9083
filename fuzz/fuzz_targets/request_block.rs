//! Arbitrary bytes as one request block, written into the guest's kernel data (where real
//! blocks live) and rung at the block's GPA or at a GPA taken from the input; then the host
//! invariants, the kernel's read-only segments and the teardown check.
//!
//! `cargo +nightly fuzz run request_block` (see the README's "Fuzzing" section).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memvisor::boot::cpuid::Features;
use memvisor::frames::ZonePreset;
use memvisor_cli::harness::Harness;

fuzz_target!(|data: &[u8]| {
    let features = Features {
        nx: true,
        pse: true,
        ..Features::default()
    };
    let mut h = match Harness::new(32 << 20, ZonePreset::X86_64, features) {
        Ok(h) => h,
        Err(e) => panic!("harness: {e}"),
    };
    // Bytes 0..8: where to ring (0 = the block itself); the rest: the block.
    let (ring, block) = if data.len() >= 8 {
        let mut g = [0u8; 8];
        g.copy_from_slice(&data[..8]);
        (u64::from_le_bytes(g), &data[8..])
    } else {
        (0, data)
    };
    let ring = if ring == 0 { h.block_gpa } else { ring };
    // Twice: the second run sees what the first left in the block (statuses, values).
    for _ in 0..2 {
        if let Err(e) = h.raw(block, ring) {
            panic!("{e}");
        }
    }
    if let Err(e) = h.finish() {
        panic!("{e}");
    }
});
