//! Stage-2 faults under KVM: unbacked GPAs (exact GPA, size, direction, value), a read-only
//! memslot, lazy GPA backing, slot removal at run time, dirty logging merged with the VMM's
//! own writes, and memslot limits.

mod common;

use memvisor::memory::{MemoryError, Memslots};
use memvisor_abi::stage2 as s2;
use memvisor_cli::report_text::ReportText as _;
use std::collections::BTreeSet;

fn rec(r: &memvisor::report::Report, key: &str) -> Option<u64> {
    r.records
        .get(&format!("stage2.{key}"))
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
}

/// `n` bytes of the embedded guest's image at virtual address `va` (from its ELF segments).
fn guest_bytes(va: u64, n: u64) -> Vec<u8> {
    use object::{Object, ObjectSegment};
    let elf = object::File::parse(memvisor::guest_image::GUEST_ELF).expect("guest ELF");
    for seg in elf.segments() {
        let (start, data) = (seg.address(), seg.data().unwrap_or(&[]));
        if va >= start && va + n <= start + data.len() as u64 {
            let off = (va - start) as usize;
            return data[off..off + n as usize].to_vec();
        }
    }
    panic!("{va:#x} is not in the guest image");
}

/// Skip operand-size and REX prefixes.
fn opcode(b: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < b.len() && (b[i] == 0x66 || (0x40..=0x4f).contains(&b[i])) {
        i += 1;
    }
    &b[i..]
}

/// An instruction that reads a memory operand (ModRM with mod != 3): `mov r, r/m`, `cmp`,
/// `test`, group-1 arithmetic with an immediate, `movzx`.
fn is_load(b: &[u8]) -> bool {
    let mem = |modrm: u8| modrm >> 6 != 3;
    match opcode(b) {
        [0x8a | 0x8b | 0x38..=0x3b | 0x80 | 0x81 | 0x83 | 0x84 | 0x85, modrm, ..] => mem(*modrm),
        [0x0f, 0xb6 | 0xb7, modrm, ..] => mem(*modrm),
        _ => false,
    }
}

/// `mov r/m, r` or `mov r/m, imm` (a store) whose ModRM names memory (mod != 3).
fn is_store(b: &[u8]) -> bool {
    matches!(opcode(b), [0x88 | 0x89 | 0xc6 | 0xc7, modrm, ..] if modrm >> 6 != 3)
}

#[test]
fn stage2_faults_slots_and_dirty_log() {
    if !common::kvm_or_skip("stage2_faults_slots_and_dirty_log") {
        return;
    }
    let r = common::run(&common::config("stage2", 256 << 20));
    assert_eq!(r.guest_exit_code, Some(0), "{}", r.to_text());
    let s2r = r.stage2_report.clone().expect("stage-2 report");
    // The window's first GPA follows the host's MAXPHYADDR (1 TiB at 42 bits and more).
    let b = s2r.gpa_base;
    assert_eq!(b, memvisor::backend::probe().expect("KVM").1.stage2_base);

    // Unbacked GPA: exact accesses, in order.
    let unbacked: Vec<(u64, u32, bool, Option<u64>)> = r
        .stage2
        .iter()
        .filter(|f| ((b + s2::UNBACKED_OFF)..(b + s2::UNBACKED_OFF) + s2::REGION).contains(&f.gpa))
        .map(|f| (f.gpa, f.size, f.write, f.value))
        .collect();
    let u = b + s2::UNBACKED_OFF;
    assert_eq!(
        unbacked,
        vec![
            (u + 0x10, 1, false, None),
            (u + 0x20, 2, false, None),
            (u + 0x30, 4, false, None),
            (u + 0x40, 8, false, None),
            (u + 0x50, 1, true, Some(0x5a)),
            (u + 0x60, 2, true, Some(0x1234)),
            (u + 0x70, 4, true, Some(0xdead_beef)),
            (u + 0x80, 8, true, Some(0x0102_0304_0506_0708)),
        ]
    );
    // RIP (issue 14): a read's `rip` is its load instruction (KVM completes the read on the
    // next KVM_RUN); for a write KVM advanced RIP before the exit, and `rip` is the store
    // instruction decoded back from `exit_rip`.
    for f in &r.stage2 {
        let next = f.exit_rip.expect("KVM_GET_REGS at the exit");
        assert!(next >= memvisor::layout::KERNEL_VIRT_OFFSET, "{f:?}");
        let rip = f
            .rip
            .expect("every access here is a plain mov / cmp: its RIP is known");
        if f.write {
            // Decoded back from the exit RIP: a store instruction of at most 15 bytes that
            // ends there.
            assert_eq!(f.rip_source, Some("decoded"), "{f:?}");
            assert!(rip < next && next - rip <= 15, "{f:?}");
            assert!(is_store(&guest_bytes(rip, 15)), "{f:?}");
        } else {
            assert_eq!((rip, f.rip_source), (next, Some("exit")), "{f:?}");
            assert!(is_load(&guest_bytes(next, 15)), "{f:?}");
        }
    }

    // Read-only slot: only the write exits, with its value.
    let ro: Vec<_> = r
        .stage2
        .iter()
        .filter(|f| ((b + s2::READONLY_OFF)..(b + s2::READONLY_OFF) + s2::REGION).contains(&f.gpa))
        .collect();
    if s2r.readonly_supported {
        assert_eq!(ro.len(), 1, "{ro:?}");
        assert_eq!(
            (ro[0].gpa, ro[0].size, ro[0].write, ro[0].value),
            ((b + s2::READONLY_OFF) + 0x40, 4, true, Some(0xcafe_f00d))
        );
    } else {
        assert!(r
            .console
            .contains("read-only slot: skipped: unsupported by host"));
    }

    // Lazy range: two first accesses, each backed by a new memslot and completed.
    let lazy: Vec<_> = r.stage2.iter().filter(|f| f.lazy_backed).collect();
    assert_eq!(lazy.len(), 2, "{lazy:?}");
    assert_eq!(
        (lazy[0].gpa, lazy[0].write),
        ((b + s2::LAZY_OFF) + 0x10, true)
    );
    assert_eq!(
        (lazy[1].gpa, lazy[1].write),
        ((b + s2::LAZY_OFF) + 0x1000 + 0x20, false)
    );
    assert_eq!(s2r.lazy_backed, 2);

    // Removed slot: exactly one exit, a read, between remove and add.
    let removed: Vec<_> = r
        .stage2
        .iter()
        .filter(|f| {
            ((b + s2::REMOVABLE_OFF)..(b + s2::REMOVABLE_OFF) + s2::REGION).contains(&f.gpa)
        })
        .collect();
    assert_eq!(removed.len(), 1);
    assert_eq!(
        (removed[0].gpa, removed[0].size, removed[0].write),
        ((b + s2::REMOVABLE_OFF) + 0x100, 8, false)
    );
    assert!(s2r.slot_ops.contains(&"remove REMOVABLE".to_string()));
    assert!(s2r.slot_ops.contains(&"add REMOVABLE".to_string()));

    // Dirty log: the first read holds exactly the chosen pages plus the guest's incidental
    // writes (its hypercall block and ring-3 stack, and the page-table frames whose A/D bits
    // the MMU — KVM's walker — set), and the pages the VMM wrote itself.
    assert_eq!(s2r.dirty_reads.len(), 2);
    let written: BTreeSet<u64> = (0..4)
        .filter_map(|i| rec(&r, &format!("written{i}")))
        .collect();
    assert_eq!(written.len(), 4);
    let mut incidental: BTreeSet<u64> = (0..3)
        .filter_map(|i| rec(&r, &format!("stack{i}")))
        .collect();
    incidental.insert(rec(&r, "block").expect("block GPA"));
    let in_pool = |p: u64| {
        r.page_tables
            .pool_chunk_gpas
            .iter()
            .any(|&c| (c..c + (2 << 20)).contains(&p))
    };
    let first = &s2r.dirty_reads[0];
    let kvm: BTreeSet<u64> = first.kvm.iter().copied().collect();
    assert!(
        written.is_subset(&kvm),
        "written {written:x?} not all in {kvm:x?}"
    );
    let extra: BTreeSet<u64> = kvm
        .difference(&written)
        .copied()
        .filter(|p| !in_pool(*p))
        .collect();
    assert!(
        extra.is_subset(&incidental),
        "unexpected guest-dirty pages {extra:x?}"
    );
    let host: BTreeSet<u64> = first.host.iter().copied().collect();
    assert!(
        host.contains(&rec(&r, "block").unwrap_or(0)),
        "hypercall results are host writes"
    );
    let merged: BTreeSet<u64> = first.merged.iter().copied().collect();
    assert_eq!(merged, kvm.union(&host).copied().collect());
    // The log is clear after it is read: none of the chosen pages again.
    let second = &s2r.dirty_reads[1];
    assert!(
        second.merged.iter().all(|p| !written.contains(p)),
        "{second:?}"
    );
    assert!(
        second
            .kvm
            .iter()
            .all(|p| incidental.contains(p) || in_pool(*p)),
        "{second:?}"
    );
}

#[test]
fn memslot_overlap_and_limit_are_refused() {
    if !common::kvm_or_skip("memslot_overlap_and_limit_are_refused") {
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("kvm");
    let vm = kvm.create_vm().expect("vm");
    let limit = kvm.get_nr_memslots();
    let mem = vm_memory::mmap::MmapRegion::<()>::new(2 << 20).expect("host memory");
    let hva = mem.as_ptr() as u64;
    let mut slots = Memslots::new(limit);
    // SAFETY: `mem` outlives `vm` in this test (declared later drops first: vm is dropped at the
    // end of scope after slots; both live until the end).
    let a = unsafe { slots.add(&vm, 0, 1 << 20, hva, 0) }.expect("first slot");
    // SAFETY: as above (refused: overlaps the first slot).
    let err = unsafe { slots.add(&vm, 0x8_0000, 1 << 20, hva, 0) }.expect_err("overlap");
    assert!(
        matches!(err, MemoryError::Overlap { other, .. } if other == a),
        "{err}"
    );
    assert!(err.to_string().contains("overlaps slot"));
    // A second real slot works; then fill the registry up to KVM's limit (recorded without
    // ioctls: registering 32k real slots takes minutes) and one more is refused before KVM is
    // asked.
    // SAFETY: `mem` stays mapped until the end of the test, after the VM's last use.
    let b = unsafe { slots.add(&vm, 1 << 20, 4096, hva, 0) }.expect("second slot");
    assert_ne!(a, b);
    let mut gpa = 1u64 << 30;
    let mut n = 1000;
    while slots.slots().count() < limit {
        slots.track(
            memvisor::memory::Memslot {
                slot: n,
                gpa,
                size: 4096,
                flags: 0,
            },
            hva,
        );
        n += 1;
        gpa += 4096;
    }
    // SAFETY: as above (and this call is refused before KVM is asked).
    let err = unsafe { slots.add(&vm, gpa, 4096, hva, 0) }.expect_err("over the limit");
    assert!(matches!(err, MemoryError::TooManySlots { .. }), "{err}");
    assert!(err.to_string().contains("KVM_CAP_NR_MEMSLOTS"));
}

#[test]
fn builder_api_runs_with_extra_ranges_and_rejects_bad_ones() {
    if !common::kvm_or_skip("builder_api_runs_with_extra_ranges_and_rejects_bad_ones") {
        return;
    }
    use memvisor_cli::api::VmBuilder;
    let base = memvisor::backend::probe().expect("KVM").1.stage2_base;
    let r = VmBuilder::new()
        .mem("128M")
        .expect("size")
        .scenario("stage2")
        .expect("scenario")
        .read_only_range(base + (8 << 20), 0x2000)
        .lazy_range(base + (9 << 20), 0x4000)
        .check_invariants(true)
        .run()
        .expect("run");
    // The extra ranges are memory the VMM itself maps: legal for the invariants (issue 14).
    assert_eq!(r.outcome, "exit", "{}", r.to_text());
    assert_eq!(r.guest_exit_code, Some(0), "{}", r.to_text());
    let inv = r.invariants.as_ref().expect("invariant summary");
    assert!(
        inv.checked_every_batch && inv.violations.is_empty(),
        "{inv:?}"
    );
    let leaves = inv.at_exit.as_ref().expect("check at exit").leaves;
    // 4 MiB of test layout, 2 read-only and 4 lazy pages.
    assert_eq!(leaves.stage2_test, 1024 + 2 + 4, "{leaves:?}");
    // A range outside the stage-2 window is refused before the guest runs.
    let err = VmBuilder::new()
        .lazy_range(0x1000, 0x1000)
        .run()
        .expect_err("bad range");
    assert!(
        err.to_string().contains("not 4 KiB aligned") || err.to_string().contains("memslot"),
        "{err}"
    );
    assert!(VmBuilder::new().scenario("nope").is_err());
    assert!(VmBuilder::new().mem("12Q").is_err());
}

/// `stage2::write_instruction` without KVM: code bytes in a guest page, the registers as KVM
/// leaves them after the write.
#[test]
fn write_instructions_are_decoded_back_from_the_exit_rip() {
    use memvisor::boot::cpuid::Features;
    use memvisor::space::AddressSpace;
    use memvisor_abi::{MapFlags, Prot, Zone};
    let kernel = memvisor::guest_image::GUEST_ELF.to_vec();
    let features = Features {
        nx: true,
        pse: true,
        ..Default::default()
    };
    let mut sp = AddressSpace::build(
        128 << 20,
        &kernel,
        memvisor::frames::ZonePreset::X86_64,
        features,
    )
    .expect("address space");
    let page = sp
        .mmap(4096, Prot::USER_RW, Zone::ANY, MapFlags::POPULATE, 0)
        .expect("mmap");
    let gpa = sp.translate_gva(page).expect("mapped");
    // At +0x100: `mov [rbx+8], rax` (48 89 43 08), then at +0x104 `push rax` (50), then at
    // +0x105 `stosq` (48 ab).
    sp.write_gva(page + 0x100, &[0x48, 0x89, 0x43, 0x08, 0x50, 0x48, 0xab])
        .expect("write code");
    let mut regs = kvm_bindings::kvm_regs {
        rbx: page + 0x800,
        rip: page + 0x104,
        ..Default::default()
    };
    let target = gpa + 0x808;
    let find = memvisor::stage2::write_instruction;
    assert_eq!(find(&sp, &regs, target, 8), Some(page + 0x100));
    // KVM's access size picks the instruction: 4 bytes there are `mov [rbx+8], eax` (89 43 08,
    // the same bytes without REX.W); no store of 2 bytes or to another address ends there.
    assert_eq!(find(&sp, &regs, target, 4), Some(page + 0x101));
    assert_eq!(find(&sp, &regs, target, 2), None);
    assert_eq!(find(&sp, &regs, target + 8, 8), None);
    // push and stosq changed their address registers (RSP, RDI) before the exit: unknown.
    regs.rip = page + 0x105;
    regs.rsp = page + 0x900;
    assert_eq!(find(&sp, &regs, gpa + 0x900, 8), None);
    regs.rip = page + 0x107;
    regs.rdi = page + 0xa08;
    assert_eq!(find(&sp, &regs, gpa + 0xa00, 8), None);
    // Ambiguous: `ds: mov [rbx+8], eax` (3e 89 43 08) and its suffix without the prefix are
    // both 4-byte stores to the target that end at the exit RIP: unknown, not a guess.
    sp.write_gva(page + 0x110, &[0x3e, 0x89, 0x43, 0x08])
        .expect("write code");
    regs.rip = page + 0x114;
    assert_eq!(find(&sp, &regs, target, 4), None);
    // RIP at the very start of the mapping with nothing readable before it: unknown.
    regs.rip = page;
    assert_eq!(find(&sp, &regs, target, 8), None);
}
