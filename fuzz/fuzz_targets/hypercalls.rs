//! Arbitrary bytes as a hostile call sequence (mmap / munmap / mprotect / lazy faults /
//! translate / stats / console / record / exit / unknown calls, blocks of up to 512 requests,
//! raw blocks rung at hostile GPAs, floods until NoMem) against a real address space without
//! KVM. After every step: the host invariants and the shadow model; at the end: the kernel's
//! read-only segments and the teardown check. Any failure panics (a finding).
//!
//! `cargo +nightly fuzz run hypercalls` (see the README's "Fuzzing" section).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memvisor::boot::cpuid::Features;
use memvisor::frames::ZonePreset;
use memvisor_cli::harness::Harness;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the CPU and zone layout; the rest is the call sequence.
    let (sel, rest) = data.split_first().map_or((0, data), |(s, r)| (*s, r));
    let features = Features {
        nx: sel & 1 == 0,
        page_1g: sel & 2 != 0,
        pse: true,
        ..Features::default()
    };
    let preset = if sel & 4 != 0 {
        ZonePreset::Legacy
    } else {
        ZonePreset::X86_64
    };
    let mut h = match Harness::new(32 << 20, preset, features) {
        Ok(h) => h,
        Err(e) => panic!("harness: {e}"),
    };
    if let Err(e) = h.run_bytes(rest) {
        panic!("{e}");
    }
});
