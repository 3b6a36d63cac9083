//! The main job under KVM: boot the real guest, run the demo, assert on the report.

mod common;

use memvisor::layout::{MMAP_WINDOW_START, MMIO_HOLE_END, MMIO_HOLE_START};
use memvisor_cli::report_text::ReportText as _;

const PAGE: u64 = 4096;

/// The address of `name` in the embedded guest's symbol table.
fn guest_symbol(name: &str) -> u64 {
    use object::{Object, ObjectSymbol};
    let elf = object::File::parse(memvisor::guest_image::GUEST_ELF).expect("guest ELF");
    elf.symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| s.address())
        .unwrap_or_else(|| panic!("no symbol {name} in the guest"))
}

/// `len` bytes of the guest ELF's code at virtual address `va`.
fn guest_code(va: u64, len: u64) -> Vec<u8> {
    use object::{Object, ObjectSection};
    let elf = object::File::parse(memvisor::guest_image::GUEST_ELF).expect("guest ELF");
    elf.sections()
        .find_map(|s| s.data_range(va, len).ok().flatten())
        .unwrap_or_else(|| panic!("no code at {va:#x} in the guest"))
        .to_vec()
}

#[test]
fn demo_boots_faults_and_exits_zero() {
    if !common::kvm_or_skip("demo_boots_faults_and_exits_zero") {
        return;
    }
    let r = common::run(&common::config("demo", 256 << 20));
    assert_eq!(r.outcome, "exit", "report: {}", r.to_text());
    assert_eq!(r.guest_exit_code, Some(0), "console: {}", r.console);

    // The guest's regions are handed out from the start of the mmap window: 16 populated
    // pages + guard, then 64 lazy pages + guard.
    let pop = MMAP_WINDOW_START;
    let lazy = pop + 17 * PAGE;
    let lazy_faults: Vec<_> = r.faults.iter().filter(|f| f.kind == "lazy").collect();
    assert_eq!(lazy_faults.len(), 8);
    for (i, f) in lazy_faults.iter().enumerate() {
        assert_eq!(f.vector, 14);
        // The demo runs in ring 3: a user write to a not-present page is W|U (SDM Vol. 3A
        // §4.7).
        assert_eq!(f.error_code, 0x6, "fault {i}");
        assert_eq!(f.cr2, lazy + (i as u64) * 8 * PAGE + 8);
        assert!(f.resolved);
        assert!(f.rip >= memvisor::layout::KERNEL_VIRT_OFFSET);
    }
    let reported: Vec<_> = r.faults.iter().filter(|f| f.kind == "reported").collect();
    assert_eq!(reported.len(), 2, "{:?}", r.faults);
    // User write to a read-only present page: P|W|U.
    assert_eq!(
        (reported[0].error_code, reported[0].cr2),
        (0x7, pop + 3 * PAGE + 16)
    );
    // User read after munmap: not present, read, U.
    assert_eq!((reported[1].error_code, reported[1].cr2), (0x4, pop));
    // Both at the faulting instruction (issue 14: the read after munmap, caught by a probe on
    // the #PF fast path, was reported at RIP 0): the write in the demo's text, the read at the
    // probe's load instruction.
    assert!(reported[0].rip >= memvisor::layout::KERNEL_VIRT_OFFSET);
    // The probe's load is `movzx edx, byte ptr [rdi]` (0f b6 17), a few bytes into
    // `probe_read_u8` (after `xor eax, eax`).
    let probe = guest_symbol("probe_read_u8");
    assert!(
        (probe..probe + 16).contains(&reported[1].rip),
        "{:?}",
        reported[1]
    );
    assert_eq!(
        guest_code(reported[1].rip, 3),
        [0x0f, 0xb6, 0x17],
        "{:?}",
        reported[1]
    );
    assert_eq!(
        reported[1].rip,
        guest_symbol("probe_read_u8_load"),
        "{:?}",
        reported[1]
    );
    assert!(r.faults.iter().all(|f| f.rip != 0), "{:?}", r.faults);
    // Reducing rights of a touched page (mprotect RO) and unmapping touched pages (the
    // populated and the lazy region) made the VMM flush KVM's shadow page tables; unmapping
    // the never-touched DMA page did not (its PTE has A=0, so no shadow entry can exist).
    // With EPT / NPT there are no shadow pages: no flush at all.
    let shadow = r.backend.is_none_or(|b| b.shadow_paging);
    assert_eq!(r.shadow_flushes, if shadow { 3 } else { 0 });
    assert!(reported.iter().all(|f| f.resolved));
    assert_eq!(r.lazy_faults, 8);
    // Every demand-paging fault went through the #PF assist exit, and the VMM did the iretq
    // (KVM_CAP_SYNC_REGS is there on PVM and VMX/SVM alike); the read after munmap took the
    // assist exit too and was declined (not a lazy page), so the guest's handler reported it.
    assert_eq!(r.lazy_faults_assisted, 8);
    assert_eq!(r.vmm_irets, 8);
    assert_eq!(r.exits.get("pf_assist").copied(), Some(9), "{:?}", r.exits);

    // Everything the guest mapped was given back.
    assert_eq!(r.regions_live, 0);
    assert_eq!(r.mapped_frames, 0);
    // Ring 3 rings the MMIO doorbell; the kernel (exception handlers, exit) uses port IO.
    assert!(
        r.exits.get("doorbell").copied().unwrap_or(0) >= 15,
        "{:?}",
        r.exits
    );
    assert!(
        r.exits.get("io_out").copied().unwrap_or(0) >= 3,
        "{:?}",
        r.exits
    );
    assert_eq!(
        r.stage2_total, 0,
        "doorbell writes are hypercalls, not stage-2 faults"
    );
    assert_eq!(r.bad_blocks, 0);
    for call in ["mmap", "munmap", "mprotect", "translate", "stats", "exit"] {
        assert!(
            r.hypercalls.contains_key(call),
            "no {call} in {:?}",
            r.hypercalls
        );
    }
    assert_eq!(r.hypercalls["mmap"].errors, 0);

    // Zones: 256 MiB = DMA (4096 frames) + DMA32; the DMA mmap came from DMA.
    let dma = r.zones.iter().find(|z| z.name == "DMA").expect("DMA zone");
    assert_eq!(
        (dma.start, dma.end, dma.present_frames),
        (0, 16 << 20, 4096)
    );
    assert!(dma.allocations >= 1);
    let dma32 = r
        .zones
        .iter()
        .find(|z| z.name == "DMA32")
        .expect("DMA32 zone");
    assert_eq!(dma32.present_frames, (256 << 20) / PAGE - 4096);
    assert!(r.buddyinfo.contains("zone      DMA"));
    assert!(r.zoneinfo.contains("Node 0, zone"));

    // Page tables: the direct map of 256 MiB is 128 2 MiB pages, and the kernel's text
    // takes one more (`space::image`).
    assert_eq!(r.page_tables.mappings_2m, 128 + 1);
    assert_eq!(r.page_tables.mappings_1g, 0);
    assert!(r.page_tables.table_frames >= 4);
    assert_eq!(r.memslots.len(), 1);
    assert_eq!(r.e820.len(), 1);
    assert!(r.console.contains("exiting 0"));
}

#[test]
fn ram_above_the_mmio_hole_gets_two_memslots() {
    if !common::kvm_or_skip("ram_above_the_mmio_hole_gets_two_memslots") {
        return;
    }
    let r = common::run(&common::config("demo", 4 << 30));
    assert_eq!(r.guest_exit_code, Some(0), "{}", r.to_text());
    let slots: Vec<(u64, u64)> = r.memslots.iter().map(|m| (m.gpa, m.size)).collect();
    assert_eq!(
        slots,
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, (4 << 30) - MMIO_HOLE_START)
        ]
    );
    let e820: Vec<(u64, u64, &str)> = r.e820.iter().map(|e| (e.start, e.size, e.kind)).collect();
    assert_eq!(
        e820,
        vec![
            (0, MMIO_HOLE_START, "ram"),
            (MMIO_HOLE_START, MMIO_HOLE_END - MMIO_HOLE_START, "reserved"),
            (MMIO_HOLE_END, (4 << 30) - MMIO_HOLE_START, "ram")
        ]
    );
    let normal = r
        .zones
        .iter()
        .find(|z| z.name == "Normal")
        .expect("Normal zone");
    assert_eq!(normal.present_frames, (1 << 30) / PAGE);
}

#[test]
fn a_64_gib_guest_boots_lazily() {
    if !common::kvm_or_skip("a_64_gib_guest_boots_lazily") {
        return;
    }
    let r = common::run(&common::config("demo", 64 << 30));
    assert_eq!(r.guest_exit_code, Some(0), "{}", r.to_text());
    // 64 GiB of RAM with the 1 GiB hole: 65 GiB of GPA space, direct-mapped in 2 MiB pages;
    // plus the kernel's text in one 2 MiB page.
    assert_eq!(
        r.page_tables.mappings_2m + r.page_tables.mappings_1g * 512,
        64 * 512 + 1
    );
}
