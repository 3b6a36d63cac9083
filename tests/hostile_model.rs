//! Issue 7 §3: the hypercall boundary without KVM. A real address space (guest RAM in a plain
//! `GuestMemoryMmap`, the real zone allocator, page tables and the embedded kernel) is driven
//! by random and crafted call sequences through `Hypercalls::handle` and straight into
//! `AddressSpace`; after every step the host invariants, a shadow model of what should be
//! mapped, and the kernel's read-only segments are checked (`memvisor_cli::harness`).

use memvisor::boot::cpuid::Features;
use memvisor::frames::ZonePreset;
use memvisor::invariants::{check, teardown_check};
use memvisor::layout::{
    BOOT_STACK_BOTTOM, DF_STACK_BOTTOM, DIRECT_MAP_BASE, MMAP_WINDOW_END, MMAP_WINDOW_START,
    USER_STACK_BOTTOM,
};
use memvisor_abi::{map, prot, zone, Call, Request, Status, DOORBELL_GPA, MAX_BATCH};
use memvisor_cli::harness::{read_stats, Harness};
use proptest::prelude::*;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;
const RW: u64 = prot::READ | prot::WRITE | prot::USER;

fn features(page_1g: bool) -> Features {
    Features {
        nx: true,
        page_1g,
        pse: true,
        ..Features::default()
    }
}

fn harness() -> Harness {
    Harness::new(32 << 20, ZonePreset::X86_64, features(false)).expect("harness")
}

fn ok(h: &mut Harness, reqs: &[Request]) {
    if let Err(e) = h.requests(reqs, false) {
        panic!("{e}");
    }
}

fn req(c: Call, args: [u64; 5]) -> Request {
    Request::new(c, args)
}

/// Run one request through a block and return the host's status and value.
fn one(h: &mut Harness, r: Request) -> (Status, u64) {
    ok(h, &[r]);
    let gpa = h.block_gpa + 8;
    let back: Request =
        vm_memory::Bytes::read_obj(&h.space.ram().mem, vm_memory::GuestAddress(gpa))
            .expect("read back");
    (Status::from_i32(back.status).expect("status"), back.value)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2500,
        max_shrink_iters: 2000,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    /// Random call sequences (bytes decoded into mmap / munmap / mprotect / lazy faults /
    /// translate / stats / console / record / exit / unknown calls, with crafted and random
    /// arguments, single requests, blocks of up to 512, raw blocks rung at hostile GPAs,
    /// floods until NoMem) on a 32 MiB guest.
    #[test]
    fn random_call_sequences_keep_every_invariant(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut h = harness();
        if let Err(e) = h.run_bytes(&data) {
            prop_assert!(false, "{}", e);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    /// The same on other layouts: RAM above the MMIO hole (zone Normal present), the legacy
    /// zone preset, and 1 GiB pages in the direct map.
    #[test]
    fn random_call_sequences_on_other_layouts(
        data in prop::collection::vec(any::<u8>(), 0..1024),
        layout in 0u8..3,
    ) {
        let (mem, preset, g1) = match layout {
            0 => ((4 << 30) + (64 << 20), ZonePreset::X86_64, false),
            1 => (1 << 30, ZonePreset::Legacy, false),
            _ => (5 << 30, ZonePreset::X86_64, true),
        };
        let mut h = Harness::new(mem, preset, features(g1)).expect("harness");
        if let Err(e) = h.run_bytes(&data) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn the_kernel_stacks_guards_and_page_tables_are_not_the_guests() {
    let mut h = harness();
    let k = h.space.kernel().clone();
    let text = k.segments[0].gva;
    let data = k.segments.iter().find(|s| s.write).expect("data").gva & !(PAGE - 1);
    let cr3 = h.space.cr3();
    let targets = [
        text,
        data,
        BOOT_STACK_BOTTOM - PAGE,
        BOOT_STACK_BOTTOM,
        DF_STACK_BOTTOM - PAGE,
        USER_STACK_BOTTOM - PAGE,
        USER_STACK_BOTTOM,
        DIRECT_MAP_BASE + cr3,
        DIRECT_MAP_BASE,
        memvisor_abi::DOORBELL_GVA,
    ];
    for &t in &targets {
        assert_eq!(
            one(&mut h, req(Call::Munmap, [t, PAGE, 0, 0, 0])).0,
            Status::Perm,
            "munmap {t:#x}"
        );
        for p in [RW, prot::READ, prot::READ | prot::EXEC] {
            assert_eq!(
                one(&mut h, req(Call::Mprotect, [t, PAGE, p, 0, 0])).0,
                Status::Perm,
                "mprotect {t:#x} {p:#x}"
            );
        }
    }
    // W+X is refused before anything else is looked at.
    assert_eq!(
        one(&mut h, req(Call::Mprotect, [text, PAGE, prot::ALL, 0, 0])).0,
        Status::Perm
    );
    assert_eq!(
        one(
            &mut h,
            req(Call::Mmap, [PAGE, prot::WRITE | prot::EXEC, 0, 0, 0])
        )
        .0,
        Status::Perm
    );
    // Lazy faults outside lazy regions do not map anything.
    for &t in &targets {
        let (st, _) = one(&mut h, req(Call::LazyFault, [t, 6, 0, 0, 0]));
        assert!(
            matches!(st, Status::NotMapped | Status::Perm),
            "{t:#x}: {st:?}"
        );
    }
    h.finish().expect("teardown");
}

#[test]
fn crafted_ranges_get_the_documented_errors() {
    let mut h = harness();
    // A first region, so that the one under test does not start at the window's start.
    assert_eq!(
        one(&mut h, req(Call::Mmap, [PAGE, RW, zone::ANY, map::LAZY, 0])).0,
        Status::Ok
    );
    let (st, a) = one(
        &mut h,
        req(Call::Mmap, [16 * PAGE, RW, zone::ANY, map::POPULATE, 0]),
    );
    assert_eq!(st, Status::Ok);
    assert!(a > MMAP_WINDOW_START);
    let cases: &[(u64, u64, Status)] = &[
        (a + 1, PAGE, Status::Inval),
        (a, 1, Status::Inval),
        (a, 0, Status::Inval),
        (a, !(PAGE - 1), Status::Inval),
        (!(PAGE - 1), PAGE, Status::Inval), // the end wraps past 2^64
        (0x0000_8000_0000_0000, PAGE, Status::Inval),
        (0xffff_7fff_ffff_f000, PAGE, Status::Inval),
        ((1 << 47) - PAGE, 2 * PAGE, Status::Inval), // crosses into the non-canonical hole
        (a, 0u64.wrapping_sub(a), Status::Inval),    // wraps to 0
        (a, 17 * PAGE, Status::NotMapped),           // runs into the guard page
        (a + 16 * PAGE, PAGE, Status::NotMapped),    // the guard page
        (a - PAGE, 2 * PAGE, Status::NotMapped),     // starts in the previous guard page
        (MMAP_WINDOW_END - PAGE, 2 * PAGE, Status::Perm),
        (MMAP_WINDOW_START - PAGE, PAGE, Status::Perm),
        (a + (1 << 30), PAGE, Status::NotMapped), // never mapped
    ];
    for &(g, l, want) in cases {
        assert_eq!(
            one(&mut h, req(Call::Munmap, [g, l, 0, 0, 0])).0,
            want,
            "munmap {g:#x}+{l:#x}"
        );
        assert_eq!(
            one(&mut h, req(Call::Mprotect, [g, l, prot::READ, 0, 0])).0,
            want,
            "mprotect {g:#x}+{l:#x}"
        );
    }
    // Partly mapped: punch a hole, then a range across it fails; each side still works.
    assert_eq!(
        one(&mut h, req(Call::Munmap, [a + 4 * PAGE, PAGE, 0, 0, 0])).0,
        Status::Ok
    );
    assert_eq!(
        one(&mut h, req(Call::Munmap, [a, 8 * PAGE, 0, 0, 0])).0,
        Status::NotMapped
    );
    assert_eq!(
        one(&mut h, req(Call::Mprotect, [a, 8 * PAGE, prot::READ, 0, 0])).0,
        Status::NotMapped
    );
    // Double munmap.
    assert_eq!(
        one(&mut h, req(Call::Munmap, [a + 4 * PAGE, PAGE, 0, 0, 0])).0,
        Status::NotMapped
    );
    assert_eq!(
        one(&mut h, req(Call::Munmap, [a, 4 * PAGE, 0, 0, 0])).0,
        Status::Ok
    );
    assert_eq!(
        one(&mut h, req(Call::Munmap, [a, 4 * PAGE, 0, 0, 0])).0,
        Status::NotMapped
    );
    // Zones that do not exist (no RAM above 4 GiB here; 4 and up are no zones).
    for z in [zone::NORMAL, 4, 99, u64::MAX] {
        assert_eq!(
            one(&mut h, req(Call::Mmap, [PAGE, RW, z, 0, 0])).0,
            Status::NoZone,
            "zone {z}"
        );
    }
    // Bad lengths, flags and protections for mmap.
    for (len, p, f, want) in [
        (0, RW, 0, Status::Inval),
        (PAGE + 1, RW, 0, Status::Inval),
        (u64::MAX, RW, 0, Status::Inval),
        (!(PAGE - 1), RW, 0, Status::Inval),
        (
            MMAP_WINDOW_END - MMAP_WINDOW_START + PAGE,
            RW,
            0,
            Status::Inval,
        ),
        (PAGE, 0, 0, Status::Inval),
        (PAGE, 0x10, 0, Status::Inval),
        (PAGE, RW, 16, Status::Inval),
        (PAGE, RW, map::FIXED, Status::Perm), // at GVA 0: outside the mmap window
        (PAGE, RW, map::LAZY | map::POPULATE, Status::Inval),
        (PAGE, RW, map::HUGE | map::POPULATE, Status::Inval),
        (PAGE, RW, u64::MAX, Status::Inval),
    ] {
        assert_eq!(
            one(&mut h, req(Call::Mmap, [len, p, 0, f, 0])).0,
            want,
            "mmap {len:#x} {p:#x} {f:#x}"
        );
    }
    h.finish().expect("teardown");
}

#[test]
fn fixed_mmap_lands_exactly_and_never_over_a_region_or_guard() {
    let mut h = harness();
    let at = MMAP_WINDOW_START + 0x40_0000;
    let fx = map::POPULATE | map::FIXED;
    assert_eq!(
        one(&mut h, req(Call::Mmap, [2 * PAGE, RW, 0, fx, at])),
        (Status::Ok, at)
    );
    for (gva, len, want) in [
        (at, PAGE, Status::Exists),                   // over the region
        (at + 2 * PAGE, PAGE, Status::Exists),        // over its guard page
        (at - PAGE, PAGE, Status::Exists),            // its own guard over the region
        (at + 3 * PAGE, PAGE, Status::Ok),            // right after the guard
        (at + 0x1001, PAGE, Status::Inval),           // misaligned
        (at + PAGE * 513, PAGE * 512, Status::Inval), // HUGE needs 2 MiB alignment
        (MMAP_WINDOW_END - PAGE, PAGE, Status::Perm), // its guard past the window
        (MMAP_WINDOW_START - PAGE, PAGE, Status::Perm),
        (!(PAGE - 1), PAGE, Status::Inval), // overflows
    ] {
        let f = if want == Status::Inval && len == PAGE * 512 {
            fx | map::HUGE
        } else {
            fx
        };
        let got = one(&mut h, req(Call::Mmap, [len, RW, 0, f, gva]));
        assert_eq!(got.0, want, "fixed mmap at {gva:#x}");
        if want == Status::Ok {
            assert_eq!(got.1, gva);
        }
    }
    // An address without FIXED is refused; after munmap the range can be taken again.
    assert_eq!(
        one(&mut h, req(Call::Mmap, [PAGE, RW, 0, map::POPULATE, at])).0,
        Status::Inval
    );
    assert_eq!(
        one(&mut h, req(Call::Munmap, [at, 2 * PAGE, 0, 0, 0])).0,
        Status::Ok
    );
    assert_eq!(
        one(&mut h, req(Call::Mmap, [2 * PAGE, RW, 0, fx, at])),
        (Status::Ok, at)
    );
    h.after_step().expect("model and invariants");
    h.finish().expect("teardown");
}

#[test]
fn mmap_until_nomem_then_free_it_all() {
    let mut h = harness();
    let free0 = h.space.zones().total_free();
    for (pages, z) in [
        (1, zone::ANY),
        (64, zone::DMA),
        (512, zone::DMA32),
        (16, zone::ANY),
    ] {
        let n = h.flood(pages, z, 100_000).expect("flood");
        assert!(
            n > 0,
            "flood of {pages}-page regions in zone {z} never ran out"
        );
    }
    // Lazy regions can be reserved far beyond RAM; touching them runs out, then all is freed.
    let (st, big) = one(
        &mut h,
        req(Call::Mmap, [1 << 30, RW, zone::ANY, map::LAZY, 0]),
    );
    assert_eq!(st, Status::Ok);
    let mut served = 0;
    let mut nomem = false;
    while !nomem {
        let reqs: Vec<Request> = (0..MAX_BATCH as u64)
            .map(|i| req(Call::LazyFault, [big + (served + i) * PAGE, 6, 0, 0, 0]))
            .collect();
        ok(&mut h, &reqs);
        served += MAX_BATCH as u64;
        nomem = h.results.get("nomem").copied().unwrap_or(0) > 0 && served > 4096;
        assert!(
            served < (64 << 20) / PAGE,
            "lazy faults never ran out of frames"
        );
    }
    assert_eq!(
        one(&mut h, req(Call::Munmap, [big, 1 << 30, 0, 0, 0])).0,
        Status::Ok
    );
    // Everything is back, except page-table pool chunks grown on the way (owned by the host).
    let pool = (h.space.pool().chunks.len() as u64 - 1) * 512;
    assert_eq!(h.space.zones().total_free() + pool, free0);
    h.finish().expect("teardown");
}

#[test]
fn lazy_fault_on_the_last_page_of_the_address_space() {
    // Bug found by this harness: `page + PAGE_SIZE` wrapped to 0 for the last canonical
    // page, so the highest lazy region "contained" it and the host mapped a frame at
    // 0xffff_ffff_ffff_f000 for the guest (a debug build panicked on the overflow instead).
    let mut h = harness();
    let (st, _) = one(
        &mut h,
        req(Call::Mmap, [4 * PAGE, RW, zone::ANY, map::LAZY, 0]),
    );
    assert_eq!(st, Status::Ok);
    for cr2 in [u64::MAX, !(PAGE - 1), u64::MAX - PAGE] {
        assert_eq!(
            h.space.lazy_fault(cr2, 6, 0),
            Err(Status::NotMapped),
            "{cr2:#x}"
        );
        check(&h.space).expect("invariants");
    }
    h.finish().expect("teardown");
}

#[test]
fn window_sized_lazy_regions_unmap_and_protect_quickly() {
    // Bug found by this harness: munmap and mprotect translated every 4 KiB page of the range,
    // 2^32 walks for a lazy region spanning the 16 TiB window: minutes in one hypercall, with
    // the vCPU (and the VMM's timeout) stuck.
    let mut h = harness();
    let len = MMAP_WINDOW_END - MMAP_WINDOW_START - PAGE;
    let t0 = Instant::now();
    let (st, a) = one(&mut h, req(Call::Mmap, [len, RW, zone::ANY, map::LAZY, 0]));
    assert_eq!(st, Status::Ok);
    for off in [0, len / 2, len - PAGE] {
        assert_eq!(
            one(&mut h, req(Call::LazyFault, [a + off, 6, 0, 0, 0])).0,
            Status::Ok
        );
    }
    assert_eq!(
        one(
            &mut h,
            req(Call::Mprotect, [a, len, prot::READ | prot::USER, 0, 0])
        ),
        (Status::Ok, 3)
    );
    assert_eq!(
        one(&mut h, req(Call::Mprotect, [a, len, RW, 0, 0])),
        (Status::Ok, 3)
    );
    assert_eq!(
        one(
            &mut h,
            req(Call::Munmap, [a + PAGE, len - 2 * PAGE, 0, 0, 0])
        )
        .0,
        Status::Ok
    );
    assert_eq!(
        one(&mut h, req(Call::Munmap, [a, PAGE, 0, 0, 0])).0,
        Status::Ok
    );
    assert_eq!(
        one(&mut h, req(Call::Munmap, [a + len - PAGE, PAGE, 0, 0, 0])).0,
        Status::Ok
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(h.space.regions().is_empty());
    h.finish().expect("teardown");
}

#[test]
fn pool_growth_inside_a_1g_direct_map_page_never_exposes_tables() {
    // Bug found by this harness: with 1 GiB pages in the direct map, a page-table pool chunk
    // grown inside a 1 GiB page cannot be made read-only (large pages are never split), and
    // `ensure_pool` kept the chunk anyway: new page tables in frames the guest could write
    // through the direct map (Xen XSA-182's class of bug). Now a chunk joins the pool only
    // once it is read-only (else it goes back and the call gets NoMem), and the direct map
    // uses 2 MiB pages, so every chunk can be made read-only.
    let mut h = Harness::new(3 << 30, ZonePreset::X86_64, features(true)).expect("harness");
    check(&h.space).expect("invariants at boot");
    // (The host now builds the direct map with 2 MiB pages only, so every chunk can be made
    // read-only; this test keeps the guest's 1 GiB-page CPU to show it stays that way.)
    // Fill the first GiB so the next chunks come from higher GiBs.
    let (st, _) = one(
        &mut h,
        req(
            Call::Mmap,
            [1000 << 20, RW, zone::ANY, map::POPULATE | map::HUGE, 0],
        ),
    );
    assert_eq!(st, Status::Ok);
    // Lazy pages 2 MiB apart: one new page table each, more than the pool holds.
    let (st, a) = one(
        &mut h,
        req(Call::Mmap, [1 << 40, RW, zone::ANY, map::LAZY, 0]),
    );
    assert_eq!(st, Status::Ok);
    let mut results = std::collections::BTreeMap::new();
    for i in 0..1200u64 {
        let r = h.space.lazy_fault(a + i * (2 << 20), 6, 0);
        *results
            .entry(format!("{r:?}").split('(').next().unwrap_or("").to_string())
            .or_insert(0) += 1;
        if i % 64 == 0 {
            check(&h.space).expect("invariants while the pool grows");
        }
    }
    check(&h.space).expect("invariants after the pool grew");
    assert!(
        h.space.pool().chunks.len() > 1,
        "the pool never grew: {results:?}"
    );
    // And it can always grow: every lazy fault got its page (and its page table).
    assert_eq!(results.get("Ok"), Some(&1200), "{results:?}");
    h.space.take_shadow_flush().discard();
    teardown_check(&mut h.space).expect("teardown");
}

#[test]
fn bad_request_blocks_are_refused_whole() {
    use vm_memory::{Bytes, GuestAddress};
    let mut h = harness();
    let end = h.space.ram().end();
    let block = h.block_gpa;
    let chunk_last = (h.space.pool().chunks[0].raw() + 511) * PAGE;
    let text = h.space.kernel().phys_start;
    let bad0 = h.hc.bad_blocks;
    // Blocks whose header says "1 request" (or 2) but which lie where the host must not
    // read or write: the header is planted there directly (host side), then rung.
    let planted: &[(u64, u32)] = &[
        (end - 8, 1),    // header at the very end of RAM, requests beyond it
        (end - 128, 2),  // 136 bytes: straddles the end of RAM
        (chunk_last, 1), // a page-table pool frame
        (text, 1),       // kernel text (read-only for the host)
        (block + 4, 1),  // unaligned
    ];
    for &(g, count) in planted {
        let mut saved = [0u8; 8];
        h.space
            .ram()
            .mem
            .read_slice(&mut saved, GuestAddress(g))
            .expect("read");
        h.space
            .ram()
            .mem
            .write_obj(
                memvisor_abi::Batch {
                    count,
                    completed: 0,
                },
                GuestAddress(g),
            )
            .expect("plant");
        let _ = h.hc.handle(&mut h.space, g);
        h.space
            .ram()
            .mem
            .write_slice(&saved, GuestAddress(g))
            .expect("restore");
        check(&h.space).expect("invariants");
    }
    assert_eq!(h.hc.bad_blocks - bad0, planted.len() as u64);
    // GPAs that are not RAM at all.
    let rings = [
        end,          // past RAM
        0xc000_0000,  // the MMIO hole
        DOORBELL_GPA, // the doorbell page
        0xdfff_f000,  // the flush-slot page (host memory, not guest RAM)
        u64::MAX - 7, // wraps
        u64::MAX,
        1 << 40, // far above RAM
    ];
    let one_req = {
        let mut b = vec![0u8; 8 + 64];
        b[..4].copy_from_slice(&1u32.to_le_bytes());
        b
    };
    for &g in &rings {
        h.raw(&one_req, g).expect("raw");
    }
    let header = |count: u32| {
        count
            .to_le_bytes()
            .iter()
            .chain([0u8; 4].iter())
            .copied()
            .collect::<Vec<u8>>()
    };
    h.raw(&header(0), block).expect("raw");
    h.raw(&header(MAX_BATCH + 1), block).expect("raw");
    h.raw(&header(u32::MAX), block).expect("raw");
    assert_eq!(
        h.hc.bad_blocks - bad0,
        (planted.len() + rings.len() + 3) as u64
    );
    // A count larger than the requests written: the host runs what is in memory after them
    // (stale requests or zeros); the block still lies in host-writable frames.
    h.raw(&header(h.block_cap as u32), block).expect("raw");
    h.raw(&one_req, block).expect("raw");
    assert_eq!(
        h.hc.bad_blocks - bad0,
        (planted.len() + rings.len() + 3) as u64
    );
    h.finish().expect("teardown");
}

#[test]
fn blocks_straddling_the_mmio_hole_are_refused() {
    use vm_memory::{Bytes, GuestAddress};
    // RAM [0, 3 GiB) and [4 GiB, 5 GiB + 64 MiB): the MMIO hole is a memslot hole.
    let mut h =
        Harness::new((4 << 30) + (64 << 20), ZonePreset::X86_64, features(false)).expect("harness");
    let hole = memvisor::layout::MMIO_HOLE_START;
    let bad0 = h.hc.bad_blocks;
    for (g, count, refused) in [
        (hole - 8, 1u32, true), // requests would lie in the hole
        (hole - 128, 2, true),  // straddles into the hole
        (hole - 72, 1, false),  // exactly fits below the hole: a valid block
        (hole - 64 * 512 - 8, 512, false),
        (hole - 64 * 512, 512, true),
    ] {
        h.space
            .ram()
            .mem
            .write_obj(
                memvisor_abi::Batch {
                    count,
                    completed: 0,
                },
                GuestAddress(g),
            )
            .expect("plant");
        for i in 0..count as u64 {
            h.space
                .ram()
                .mem
                .write_obj(req(Call::Nop, [0; 5]), GuestAddress(g + 8 + i * 64))
                .ok();
        }
        let before = h.hc.bad_blocks;
        let _ = h.hc.handle(&mut h.space, g);
        let back: memvisor_abi::Batch = h.space.ram().mem.read_obj(GuestAddress(g)).expect("read");
        assert_eq!(
            h.hc.bad_blocks - before,
            u64::from(refused),
            "block at {g:#x} count {count}"
        );
        assert_eq!(
            back.completed,
            if refused { 0 } else { count },
            "block at {g:#x}"
        );
        check(&h.space).expect("invariants");
    }
    for g in [hole, hole + 64, memvisor::layout::MMIO_HOLE_END - 8] {
        h.raw(&[1, 0, 0, 0, 0, 0, 0, 0], g).expect("raw");
    }
    assert_eq!(h.hc.bad_blocks - bad0, 6);
    h.finish().expect("teardown");
}

#[test]
fn console_records_and_fault_reports_are_bounded() {
    let mut h = harness();
    let text = h.space.kernel().segments[0].gva;
    // 64 KiB console writes from the kernel text: the host keeps at most 4 MiB.
    let reqs: Vec<Request> = (0..MAX_BATCH.min(h.block_cap as u32))
        .map(|_| req(Call::ConsoleWrite, [text, 64 << 10, 0, 0, 0]))
        .collect();
    for _ in 0..4 {
        ok(&mut h, &reqs);
    }
    assert!(h.hc.console.len() <= memvisor::hypercall::CONSOLE_KEEP_MAX + 64);
    assert!(h.hc.console.ends_with("not kept]\n"));
    // Records: lines longer than RECORD_LINE_MAX are refused; past RECORDS_MAX, NoMem.
    assert_eq!(
        one(&mut h, req(Call::Record, [text, 4096, 0, 0, 0])).0,
        Status::Inval
    );
    let line = h.scratch_gva;
    let reqs: Vec<Request> = (0..h.block_cap as u32)
        .map(|_| req(Call::Record, [line, 8, 0, 0, 0]))
        .collect();
    for _ in 0..=(memvisor::hypercall::RECORDS_MAX / h.block_cap) {
        ok(&mut h, &reqs);
    }
    assert_eq!(h.hc.records.len(), memvisor::hypercall::RECORDS_MAX);
    assert_eq!(
        one(&mut h, req(Call::Record, [line, 8, 0, 0, 0])).0,
        Status::NoMem
    );
    // Fault reports with any vector: the per-kind counters stay bounded.
    let reqs: Vec<Request> = (0..h.block_cap as u64)
        .map(|i| req(Call::FaultReport, [i * 0x1_0000_0001, 1, 2, 3, 1]))
        .collect();
    ok(&mut h, &reqs);
    assert!(
        h.space.counters().by_kind.len() <= 257,
        "{}",
        h.space.counters().by_kind.len()
    );
    h.finish().expect("teardown");
}

#[test]
fn stats_are_exact() {
    let mut h = harness();
    let (st, _) = one(
        &mut h,
        req(Call::Mmap, [8 * PAGE, RW, zone::DMA, map::POPULATE, 0]),
    );
    assert_eq!(st, Status::Ok);
    let scratch = h.scratch_gva;
    assert_eq!(
        one(&mut h, req(Call::Stats, [scratch, 0, 0, 0, 0])).0,
        Status::Ok
    );
    let s = read_stats(&h).expect("stats");
    let r = check(&h.space).expect("invariants");
    assert_eq!(s.mapped_frames, 8);
    assert_eq!(s.regions, 1);
    assert_eq!(s.free_frames, r.frames.free);
    assert_eq!(s.total_frames, r.frames.ram);
    assert_eq!(s.table_frames, r.frames.page_tables);
    assert_eq!(r.leaks.len(), 1);
    assert_eq!(r.leaks[0].frames, 8);
    // Stats into read-only or foreign memory faults.
    let text = h.space.kernel().segments[0].gva;
    let pt = DIRECT_MAP_BASE + h.space.cr3();
    for g in [text, pt, 0, u64::MAX - 8, memvisor_abi::DOORBELL_GVA] {
        assert_eq!(
            one(&mut h, req(Call::Stats, [g, 0, 0, 0, 0])).0,
            Status::Fault,
            "{g:#x}"
        );
    }
    h.finish().expect("teardown");
}

/// The #PF assist exit reads the exception frame and the GDT through `boot_fixed_gpa` (no
/// page walk): it must agree with a real walk on every page of the kernel image and the boot
/// stack, and decline everything else.
#[test]
fn boot_fixed_gpa_agrees_with_the_page_walk() {
    let h = harness();
    let s = &h.space;
    let mut checked = 0;
    // (start, end) of each range the host never edits; page tails past a segment's end are
    // mapped too but left to the walk.
    let mut ranges: Vec<(u64, u64)> = s
        .kernel()
        .segments
        .iter()
        .map(|seg| (seg.gva, seg.gva + seg.memsz))
        .collect();
    ranges.push((
        memvisor::layout::BOOT_STACK_BOTTOM,
        memvisor::layout::BOOT_STACK_TOP,
    ));
    for (start, end) in ranges {
        for va in (start..end)
            .step_by(8)
            .filter(|v| v % PAGE < 16 || v % PAGE >= PAGE - 8)
        {
            let walked = s.translate_gva(va).expect("mapped at boot");
            assert_eq!(s.boot_fixed_gpa(va), Some(walked), "{va:#x}");
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
    for va in [
        memvisor::layout::BOOT_STACK_BOTTOM - 8,
        memvisor::layout::BOOT_STACK_TOP,
        memvisor::layout::DIRECT_MAP_BASE,
        0,
    ] {
        assert_eq!(s.boot_fixed_gpa(va), None, "{va:#x}");
    }
}
