//! Page-table module: exact entry bits, translate, unmap/protect policies, error atomicity,
//! the direct map, and a proptest model check against a shadow map.

use memvisor_frames::addr::{Gpa, Gva, Pfn, HUGE_PAGE_SIZE, LARGE_PAGE_SIZE, PAGE_SIZE};
use memvisor_paging::{
    FramePool, FrameSource, PageSize, PageTables, PagingError, Protection, Pte, PteFlags,
    TABLE_ENTRY_FLAGS,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
/// Guest memory: 16 MiB; table frames come from [8 MiB, 16 MiB), data GPAs are below 8 MiB
/// (or outside guest memory: mapped GPAs need not exist).
const MEM_SIZE: u64 = 16 * MIB;
const POOL_START: Pfn = Pfn::new(8 * MIB / PAGE_SIZE);
const POOL_FRAMES: u64 = 8 * MIB / PAGE_SIZE;

const KDATA: PteFlags = Protection::KERNEL_DATA.to_pte_flags(true);
const UDATA: PteFlags = Protection::USER_DATA.to_pte_flags(true);
const UCODE: PteFlags = Protection::USER_CODE.to_pte_flags(true);
const KRO: PteFlags = Protection::KERNEL_RODATA.to_pte_flags(true);

fn setup_with(frames: u64) -> (Mem, FramePool, PageTables) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    // Dirty the pool so that missing zeroing would show.
    mem.write_slice(
        &vec![0xa5; (MEM_SIZE / 2) as usize],
        GuestAddress(MEM_SIZE / 2),
    )
    .unwrap();
    let mut pool = FramePool::new(POOL_START, frames).unwrap();
    let pt = PageTables::new(&mem, &mut pool).unwrap();
    (mem, pool, pt)
}

fn setup() -> (Mem, FramePool, PageTables) {
    setup_with(POOL_FRAMES)
}

fn entry(mem: &Mem, table: Pfn, index: u64) -> u64 {
    mem.read_obj::<u64>(GuestAddress(table.raw() * PAGE_SIZE + index * 8))
        .unwrap()
}

/// Every table frame with its bytes: equal snapshots mean byte-identical tables.
fn snapshot(mem: &Mem, pt: &PageTables) -> Vec<(Pfn, Vec<u8>)> {
    pt.table_frames()
        .map(|pfn| {
            let mut b = vec![0u8; PAGE_SIZE as usize];
            mem.read_slice(&mut b, GuestAddress(pfn.raw() * PAGE_SIZE))
                .unwrap();
            (pfn, b)
        })
        .collect()
}

#[test]
fn new_root_is_zeroed_and_counted() {
    let (mem, pool, pt) = setup();
    assert_eq!(pt.root(), POOL_START);
    assert!(pt.is_table_frame(POOL_START));
    assert_eq!(pt.table_frames().collect::<Vec<_>>(), [POOL_START]);
    assert_eq!(snapshot(&mem, &pt)[0].1, vec![0u8; 4096]);
    assert_eq!(pool.in_use(), 1);
    let s = pt.summary(&mem);
    assert_eq!((s.table_frames, s.pml4_tables, s.root_gpa), (1, 1, 8 * MIB));
}

#[test]
fn exact_entries_at_each_level() {
    let (mem, mut pool, mut pt) = setup();
    let gva = Gva::new(0xffff_8880_0020_3000);
    pt.edit(&mem, &mut pool)
        .map(gva, Gpa::new(0x5000), PageSize::Size4K, UDATA)
        .unwrap();
    let (pml4, pdpt, pd, ptab) = (
        POOL_START,
        Pfn::new(POOL_START.raw() + 1),
        Pfn::new(POOL_START.raw() + 2),
        Pfn::new(POOL_START.raw() + 3),
    );
    assert_eq!(TABLE_ENTRY_FLAGS.bits(), 0x7);
    assert_eq!(entry(&mem, pml4, 0x111), (pdpt.raw() * PAGE_SIZE) | 0x7);
    assert_eq!(entry(&mem, pdpt, 0), (pd.raw() * PAGE_SIZE) | 0x7);
    assert_eq!(entry(&mem, pd, 1), (ptab.raw() * PAGE_SIZE) | 0x7);
    assert_eq!(entry(&mem, ptab, 3), 0x8000_0000_0000_5007);
    // Everything else in the new tables is zero (the pool was dirtied with 0xa5).
    let nonzero: usize = snapshot(&mem, &pt)
        .iter()
        .map(|(_, b)| b.chunks(8).filter(|c| c.iter().any(|&x| x != 0)).count())
        .sum();
    assert_eq!(nonzero, 4);

    // 2 MiB and 1 GiB leaves: PS set, exact bits.
    pt.edit(&mem, &mut pool)
        .map(
            Gva::new(0x4000_0000),
            Gpa::new(0x20_0000),
            PageSize::Size2M,
            KDATA,
        )
        .unwrap();
    let t = pt.translate(&mem, Gva::new(0x4000_0000)).unwrap();
    assert_eq!(t.leaf_pte.raw(), 0x8000_0000_0020_0083);
    pt.edit(&mem, &mut pool)
        .map(
            Gva::new(0x80_0000_0000),
            Gpa::new(0x1_4000_0000),
            PageSize::Size1G,
            UCODE,
        )
        .unwrap();
    let t = pt.translate(&mem, Gva::new(0x80_0000_0000)).unwrap();
    assert_eq!(t.leaf_pte.raw(), 0x1_4000_0085);
    let levels: Vec<u8> = t.entries().map(|e| e.level).collect();
    assert_eq!(levels, [4, 3]);
}

#[test]
fn translate_with_offsets_and_sizes() {
    let (mem, mut pool, mut pt) = setup();
    pt.edit(&mem, &mut pool)
        .map(
            Gva::new(0x40_1000),
            Gpa::new(0x7000),
            PageSize::Size4K,
            KDATA,
        )
        .unwrap();
    pt.edit(&mem, &mut pool)
        .map(
            Gva::new(0x60_0000),
            Gpa::new(0x40_0000),
            PageSize::Size2M,
            KRO,
        )
        .unwrap();
    let big = Gva::new(0xffff_ffff_c000_0000); // last 1 GiB of the address space
    pt.edit(&mem, &mut pool)
        .map(big, Gpa::new(0x3_c000_0000), PageSize::Size1G, UCODE)
        .unwrap();

    let t = pt.translate(&mem, Gva::new(0x40_1abc)).unwrap();
    assert_eq!((t.gpa, t.page_size), (Gpa::new(0x7abc), PageSize::Size4K));
    assert_eq!(t.entries().count(), 4);
    let t = pt.translate(&mem, Gva::new(0x7f_fff8)).unwrap();
    assert_eq!(
        (t.gpa, t.page_size),
        (Gpa::new(0x5f_fff8), PageSize::Size2M)
    );
    let t = pt.translate(&mem, Gva::new(u64::MAX)).unwrap();
    assert_eq!(
        (t.gpa, t.page_size),
        (Gpa::new(0x3_ffff_ffff), PageSize::Size1G)
    );

    assert!(matches!(
        pt.translate(&mem, Gva::new(0x40_2000)),
        Err(PagingError::NotMapped { gva }) if gva == Gva::new(0x40_2000)
    ));
    // A non-canonical GVA cannot reach translate: the type rejects it.
    assert!(Gva::new_canonical(0x8000_0000_0000).is_err());
}

#[test]
fn effective_rights_combine_all_levels() {
    let (mem, mut pool, mut pt) = setup();
    let gva = Gva::new(0x1234_5000);
    pt.edit(&mem, &mut pool)
        .map(gva, Gpa::new(0x9000), PageSize::Size4K, UDATA)
        .unwrap();
    let e = pt.translate(&mem, gva).unwrap().effective;
    assert!(e.writable && e.user && !e.executable);
    let _ = pt.protect(&mem, gva, PAGE_SIZE, UCODE).unwrap();
    let e = pt.translate(&mem, gva).unwrap().effective;
    assert!(!e.writable && e.user && e.executable);
    let _ = pt
        .protect(
            &mem,
            gva,
            PAGE_SIZE,
            Protection::KERNEL_CODE.to_pte_flags(true),
        )
        .unwrap();
    let e = pt.translate(&mem, gva).unwrap().effective;
    assert!(!e.writable && !e.user && e.executable);

    // SDM §4.6: R/W and U/S are ANDed and XD ORed over the levels. Restrict the PDE by hand.
    let _ = pt
        .protect(&mem, gva, PAGE_SIZE, UDATA | PteFlags::NO_EXECUTE)
        .unwrap();
    let t = pt.translate(&mem, gva).unwrap();
    let pde = t.entries().find(|w| w.level == 2).copied().unwrap();
    let pde_gpa = GuestAddress(pde.table.raw() * PAGE_SIZE + u64::from(pde.index) * 8);
    mem.write_obj(pde.pte.raw() & !0x6, pde_gpa).unwrap();
    let e = pt.translate(&mem, gva).unwrap().effective;
    assert!(!e.writable && !e.user);
    // NX only at the PML4E makes the page non-executable.
    let _ = pt.protect(&mem, gva, PAGE_SIZE, UCODE).unwrap();
    mem.write_obj(pde.pte.raw(), pde_gpa).unwrap();
    let pml4e = t.walk[0].unwrap();
    let pml4e_gpa = GuestAddress(pml4e.table.raw() * PAGE_SIZE + u64::from(pml4e.index) * 8);
    mem.write_obj(pml4e.pte.raw() | 1 << 63, pml4e_gpa).unwrap();
    let e = pt.translate(&mem, gva).unwrap().effective;
    assert!(!e.writable && e.user && !e.executable);
}

#[test]
fn unmap_returns_leaves_and_frees_empty_tables() {
    let (mem, mut pool, mut pt) = setup();
    let base = Gva::new(0xffff_8000_3fe0_0000); // 2 MiB below a 1 GiB boundary
    pt.edit(&mem, &mut pool)
        .map_range(
            base,
            Gpa::new(0x10_0000),
            16 * PAGE_SIZE,
            PageSize::Size4K,
            KDATA,
        )
        .unwrap();
    pt.edit(&mem, &mut pool)
        .map(
            Gva::new(base.raw() + LARGE_PAGE_SIZE),
            Gpa::new(0x40_0000),
            PageSize::Size2M,
            KDATA,
        )
        .unwrap();
    let s = pt.summary(&mem);
    assert_eq!((s.mappings_4k, s.mappings_2m), (16, 1));
    assert_eq!(pt.table_frame_count(), 5); // PML4, PDPT, 2 PDs, 1 PT
    assert_eq!((s.pdpt_tables, s.pd_tables, s.pt_tables), (1, 2, 1));

    let removed = pt
        .edit(&mem, &mut pool)
        .unmap(base, LARGE_PAGE_SIZE + LARGE_PAGE_SIZE)
        .err()
        .map(|e| e.to_string());
    // The first 2 MiB are only partly mapped: refused, nothing changes.
    assert!(removed.unwrap().contains("not mapped"));
    assert_eq!(pt.summary(&mem).mappings_4k, 16);

    let removed = pt
        .edit(&mem, &mut pool)
        .unmap(base, 16 * PAGE_SIZE)
        .unwrap()
        .leaves;
    assert_eq!(removed.len(), 16);
    assert_eq!(
        removed[3],
        (
            Gva::new(base.raw() + 0x3000),
            Gpa::new(0x10_3000),
            PageSize::Size4K
        )
    );
    assert_eq!(pt.table_frame_count(), 3); // the PT and its PD are gone
    let removed = pt
        .edit(&mem, &mut pool)
        .unmap(Gva::new(base.raw() + LARGE_PAGE_SIZE), LARGE_PAGE_SIZE)
        .unwrap()
        .leaves;
    assert_eq!(
        removed,
        [(
            Gva::new(base.raw() + LARGE_PAGE_SIZE),
            Gpa::new(0x40_0000),
            PageSize::Size2M
        )]
    );
    assert_eq!(pt.table_frame_count(), 1);
    assert_eq!(pool.in_use(), 1);
    assert_eq!(snapshot(&mem, &pt)[0].1, vec![0u8; 4096]);
    let s = pt.summary(&mem);
    assert_eq!(
        (s.table_frames, s.mappings_4k, s.mappings_2m, s.mapped_bytes),
        (1, 0, 0, 0)
    );
}

#[test]
fn large_pages_are_never_split() {
    let (mem, mut pool, mut pt) = setup();
    let g = Gva::new(0x20_0000);
    pt.edit(&mem, &mut pool)
        .map(g, Gpa::new(0x20_0000), PageSize::Size2M, KDATA)
        .unwrap();
    let before = snapshot(&mem, &pt);
    let err = pt
        .edit(&mem, &mut pool)
        .map(
            Gva::new(0x20_1000),
            Gpa::new(0x1000),
            PageSize::Size4K,
            KDATA,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        PagingError::WouldSplitLargePage {
            gva,
            leaf_gva,
            page_size: PageSize::Size2M
        } if gva == Gva::new(0x20_1000) && leaf_gva == Gva::new(0x20_0000)
    ));
    assert!(matches!(
        pt.edit(&mem, &mut pool)
            .unmap(Gva::new(0x20_1000), PAGE_SIZE),
        Err(PagingError::WouldSplitLargePage { .. })
    ));
    assert!(matches!(
        pt.protect(&mem, g, PAGE_SIZE, KRO),
        Err(PagingError::WouldSplitLargePage { .. })
    ));
    assert!(matches!(
        pt.edit(&mem, &mut pool).map(g, Gpa::new(0x60_0000), PageSize::Size2M, KDATA),
        Err(PagingError::AlreadyMapped { gva }) if gva == Gva::new(0x20_0000)
    ));
    // A 2 MiB page over existing 4 KiB pages.
    pt.edit(&mem, &mut pool)
        .map(
            Gva::new(0x40_5000),
            Gpa::new(0x1000),
            PageSize::Size4K,
            KDATA,
        )
        .unwrap();
    let before2 = snapshot(&mem, &pt);
    assert!(matches!(
        pt.edit(&mem, &mut pool).map(Gva::new(0x40_0000),
            Gpa::new(0x60_0000),
            PageSize::Size2M,
            KDATA
        ),
        Err(PagingError::AlreadyMapped { gva }) if gva == Gva::new(0x40_0000)
    ));
    assert_eq!(snapshot(&mem, &pt), before2);
    let _ = pt
        .edit(&mem, &mut pool)
        .unmap(Gva::new(0x40_5000), PAGE_SIZE)
        .unwrap();
    assert_eq!(snapshot(&mem, &pt), before);
}

#[test]
fn protect_changes_flags_keeps_address_and_ad() {
    let (mem, mut pool, mut pt) = setup();
    let g = Gva::new(0x7000_0000);
    pt.edit(&mem, &mut pool)
        .map_range(
            g,
            Gpa::new(0x30_0000),
            4 * PAGE_SIZE,
            PageSize::Size4K,
            UDATA,
        )
        .unwrap();
    // The CPU set A and D on the second page.
    let t = pt.translate(&mem, Gva::new(g.raw() + 0x1000)).unwrap();
    let pte_entry = t.walk[3].unwrap();
    let pte_gpa = GuestAddress(pte_entry.table.raw() * PAGE_SIZE + u64::from(pte_entry.index) * 8);
    mem.write_obj(pte_entry.pte.raw() | 0x60, pte_gpa).unwrap();

    let user_ro = Protection::USER_RODATA.to_pte_flags(true);
    assert_eq!(
        pt.protect(&mem, g, 4 * PAGE_SIZE, user_ro).unwrap().changed,
        4
    );
    assert_eq!(
        pt.protect(&mem, g, 4 * PAGE_SIZE, user_ro).unwrap().changed,
        0
    );
    let t = pt.translate(&mem, Gva::new(g.raw() + 0x1008)).unwrap();
    assert_eq!(t.gpa, Gpa::new(0x30_1008));
    assert_eq!(t.leaf_pte.raw(), 0x8000_0000_0030_1065);
    assert!(!t.effective.writable);
    let t = pt.translate(&mem, Gva::new(g.raw() + 0x3000)).unwrap();
    assert_eq!(t.leaf_pte.raw(), 0x8000_0000_0030_3005);

    // Unmapped page inside the range: nothing changes.
    let before = snapshot(&mem, &pt);
    assert!(matches!(
        pt.protect(&mem, g, 5 * PAGE_SIZE, UDATA),
        Err(PagingError::NotMapped { gva }) if gva.raw() == g.raw() + 0x4000
    ));
    assert_eq!(snapshot(&mem, &pt), before);
    // Flags must be present and leaf-only.
    assert!(matches!(
        pt.protect(&mem, g, PAGE_SIZE, PteFlags::WRITABLE),
        Err(PagingError::MissingPresent { .. })
    ));
    assert!(matches!(
        pt.protect(&mem, g, PAGE_SIZE, UDATA | PteFlags::HUGE),
        Err(PagingError::UnsupportedFlags {
            unsupported: 0x80,
            ..
        })
    ));
    assert_eq!(snapshot(&mem, &pt), before);
}

#[test]
fn hostile_arguments_are_errors_and_change_nothing() {
    let (mem, mut pool, mut pt) = setup();
    pt.edit(&mem, &mut pool)
        .map(Gva::new(0x1000), Gpa::new(0x1000), PageSize::Size4K, KDATA)
        .unwrap();
    let before = snapshot(&mem, &pt);
    let s4 = PageSize::Size4K;
    let cases: Vec<(&str, Result<(), PagingError>)> = vec![
        (
            "misaligned gva",
            pt.edit(&mem, &mut pool)
                .map(Gva::new(0x2001), Gpa::new(0), s4, KDATA),
        ),
        (
            "misaligned gpa",
            pt.edit(&mem, &mut pool)
                .map(Gva::new(0x2000), Gpa::new(0x10), s4, KDATA),
        ),
        (
            "2M misaligned",
            pt.edit(&mem, &mut pool)
                .map(Gva::new(0x1000), Gpa::new(0), PageSize::Size2M, KDATA),
        ),
        (
            "crosses hole",
            pt.edit(&mem, &mut pool).map_range(
                Gva::new(0x7fff_ffff_f000),
                Gpa::new(0),
                0x2000,
                s4,
                KDATA,
            ),
        ),
        (
            "wraps",
            pt.edit(&mem, &mut pool).map_range(
                Gva::new(0xffff_ffff_ffff_f000),
                Gpa::new(0),
                0x2000,
                s4,
                KDATA,
            ),
        ),
        (
            "huge len",
            pt.edit(&mem, &mut pool).map_range(
                Gva::new(0x2000),
                Gpa::new(0),
                u64::MAX - 0xfff,
                s4,
                KDATA,
            ),
        ),
        (
            "zero len",
            pt.edit(&mem, &mut pool)
                .map_range(Gva::new(0x2000), Gpa::new(0), 0, s4, KDATA),
        ),
        (
            "odd len",
            pt.edit(&mem, &mut pool)
                .map_range(Gva::new(0x2000), Gpa::new(0), 0x1800, s4, KDATA),
        ),
        (
            "gpa overflow",
            pt.edit(&mem, &mut pool).map_range(
                Gva::new(0x2000),
                Gpa::new(u64::MAX - 0xfff),
                0x2000,
                s4,
                KDATA,
            ),
        ),
        (
            "gpa > 52 bits",
            pt.edit(&mem, &mut pool)
                .map(Gva::new(0x2000), Gpa::new(1 << 52), s4, KDATA),
        ),
        (
            "no present",
            pt.edit(&mem, &mut pool)
                .map(Gva::new(0x2000), Gpa::new(0), s4, PteFlags::WRITABLE),
        ),
        (
            "huge flag",
            pt.edit(&mem, &mut pool)
                .map(Gva::new(0x2000), Gpa::new(0), s4, KDATA | PteFlags::HUGE),
        ),
        (
            "address bits",
            pt.edit(&mem, &mut pool).map(
                Gva::new(0x2000),
                Gpa::new(0),
                s4,
                PteFlags::from_bits_truncate(0x0010_0000_0000_0001),
            ),
        ),
        (
            "already",
            pt.edit(&mem, &mut pool)
                .map(Gva::new(0x1000), Gpa::new(0x5000), s4, KDATA),
        ),
        (
            "table frame rw",
            pt.edit(&mem, &mut pool).map(
                Gva::new(0x2000),
                Gpa::new(POOL_START.raw() * PAGE_SIZE),
                s4,
                KDATA,
            ),
        ),
        (
            "table frame rw 2M",
            pt.edit(&mem, &mut pool).map(
                Gva::new(0x20_0000),
                Gpa::new(POOL_START.raw() * PAGE_SIZE),
                PageSize::Size2M,
                KDATA,
            ),
        ),
        (
            "unmap hole",
            pt.edit(&mem, &mut pool)
                .unmap(Gva::new(0x1000), 0x2000)
                .map(|_| ()),
        ),
        (
            "unmap huge",
            pt.edit(&mem, &mut pool)
                .unmap(Gva::new(0x1000), u64::MAX)
                .map(|_| ()),
        ),
        (
            "protect odd",
            pt.protect(&mem, Gva::new(0x1000), 0x1001, KDATA)
                .map(|_| ()),
        ),
        (
            "protect zero",
            pt.protect(&mem, Gva::new(0x1000), 0, KDATA).map(|_| ()),
        ),
    ];
    // Non-canonical GVAs are rejected by the type before any edit.
    for nc in [0x8000_0000_0000, 0xffff_0000_0000_0000, 1 << 63] {
        assert!(Gva::new_canonical(nc).is_err(), "{nc:#x}");
    }
    for (what, r) in cases {
        let e = r.expect_err(what);
        assert!(!e.to_string().is_empty(), "{what}");
        if what == "table frame rw" {
            assert!(
                matches!(e, PagingError::WritableTableFrame { table, .. } if table == POOL_START)
            );
        }
    }
    assert_eq!(snapshot(&mem, &pt), before);
    assert_eq!(pool.in_use(), 4);
    // Read-only aliases of table frames are fine (the VMM may show tables to the guest).
    pt.edit(&mem, &mut pool)
        .map(
            Gva::new(0x2000),
            Gpa::new(POOL_START.raw() * PAGE_SIZE),
            s4,
            KRO,
        )
        .unwrap();
    // ... but cannot be made writable later.
    assert!(matches!(
        pt.protect(&mem, Gva::new(0x2000), PAGE_SIZE, KDATA),
        Err(PagingError::WritableTableFrame { .. })
    ));
}

#[test]
fn map_range_is_all_or_nothing() {
    let (mem, mut pool, mut pt) = setup();
    // A page at the end of a 3 GiB range makes the whole range fail.
    let conflict = Gva::new(0x1_0000_0000 + 3 * HUGE_PAGE_SIZE - PAGE_SIZE);
    pt.edit(&mem, &mut pool)
        .map(conflict, Gpa::new(0), PageSize::Size4K, KDATA)
        .unwrap();
    let before = snapshot(&mem, &pt);
    let in_use = pool.in_use();
    let err = pt
        .edit(&mem, &mut pool)
        .map_range(
            Gva::new(0x1_0000_0000),
            Gpa::new(1 << 32),
            3 * HUGE_PAGE_SIZE,
            PageSize::Size2M,
            KDATA,
        )
        .unwrap_err();
    assert!(
        matches!(err, PagingError::AlreadyMapped { gva } if gva.raw() == conflict.raw() & !(LARGE_PAGE_SIZE - 1)),
        "{err:?}"
    );
    assert_eq!(snapshot(&mem, &pt), before);
    assert_eq!(pool.in_use(), in_use);
    assert_eq!(pt.summary(&mem).mappings_2m, 0);

    // Running out of table frames half-way: everything is rolled back.
    let (mem, mut pool, mut pt) = setup_with(40);
    pt.edit(&mem, &mut pool)
        .map(
            Gva::new(0x4000_0000_7000),
            Gpa::new(0),
            PageSize::Size4K,
            KDATA,
        )
        .unwrap();
    let before = snapshot(&mem, &pt);
    let err = pt
        .edit(&mem, &mut pool)
        .map_range(
            Gva::new(0),
            Gpa::new(1 << 32),
            64 * LARGE_PAGE_SIZE,
            PageSize::Size4K,
            KDATA,
        )
        .unwrap_err();
    assert!(matches!(err, PagingError::OutOfFrames), "{err:?}");
    assert_eq!(snapshot(&mem, &pt), before);
    assert_eq!(pool.in_use(), 4);
    assert_eq!(pt.summary(&mem).mappings_4k, 1);
    // A smaller range fits.
    pt.edit(&mem, &mut pool)
        .map_range(
            Gva::new(0x40_0000),
            Gpa::new(1 << 32),
            16 * LARGE_PAGE_SIZE,
            PageSize::Size4K,
            KDATA,
        )
        .unwrap();
    assert_eq!(pt.summary(&mem).mappings_4k, 1 + 16 * 512);
}

#[test]
fn duplicate_or_foreign_table_frames_are_refused() {
    struct Bad(Vec<Pfn>);
    impl FrameSource for Bad {
        fn alloc_table_frame(&mut self) -> Result<Pfn, PagingError> {
            self.0.pop().ok_or(PagingError::OutOfFrames)
        }
        fn free_table_frame(&mut self, pfn: Pfn) {
            self.0.push(pfn);
        }
    }
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    // Outside guest memory: refused and given back.
    let mut src = Bad(vec![Pfn::new(1 << 30)]);
    assert!(matches!(
        PageTables::new(&mem, &mut src),
        Err(PagingError::Memory { .. })
    ));
    assert_eq!(src.0, [Pfn::new(1 << 30)]);
    // The same frame twice.
    let mut src = Bad(vec![Pfn::new(0x900), Pfn::new(0x900)]);
    let mut pt = PageTables::new(&mem, &mut src).unwrap();
    let before = snapshot(&mem, &pt);
    let err = pt
        .edit(&mem, &mut src)
        .map(Gva::new(0), Gpa::new(1 << 32), PageSize::Size1G, KDATA)
        .unwrap_err();
    assert!(
        matches!(err, PagingError::DuplicateTableFrame { pfn } if pfn == Pfn::new(0x900)),
        "{err:?}"
    );
    assert_eq!(snapshot(&mem, &pt), before);
}

#[test]
fn corrupt_and_reserved_entries_are_reported() {
    let (mem, mut pool, mut pt) = setup();
    pt.edit(&mem, &mut pool)
        .map(
            Gva::new(0x20_0000),
            Gpa::new(0x20_0000),
            PageSize::Size2M,
            KDATA,
        )
        .unwrap();
    let t = pt.translate(&mem, Gva::new(0x20_0000)).unwrap();
    let pde = t.walk[2].unwrap();
    let pde_gpa = GuestAddress(pde.table.raw() * PAGE_SIZE + u64::from(pde.index) * 8);
    // Bit 13 is reserved in a 2 MiB leaf.
    mem.write_obj(pde.pte.raw() | 0x2000, pde_gpa).unwrap();
    assert!(matches!(
        pt.translate(&mem, Gva::new(0x20_0000)),
        Err(PagingError::ReservedBits {
            level: 2,
            bits: 0x2000,
            ..
        })
    ));
    // A PDE pointing to a frame that is not one of the tables.
    mem.write_obj(0x5000u64 | 0x7, pde_gpa).unwrap();
    assert!(matches!(
        pt.translate(&mem, Gva::new(0x20_0000)),
        Err(PagingError::CorruptTable { level: 2, .. })
    ));
    assert!(pt.try_leaves(&mem).is_err());
    assert!(pt.dump(&mem).contains("walk error"));
    assert!(matches!(
        pt.edit(&mem, &mut pool)
            .unmap(Gva::new(0x20_0000), LARGE_PAGE_SIZE),
        Err(PagingError::CorruptTable { .. })
    ));
}

#[test]
fn address_space_edges() {
    let (mem, mut pool, mut pt) = setup();
    let top = Gva::new(0xffff_ffff_ffff_f000);
    let low_top = Gva::new(0x7fff_ffff_f000);
    let bottom_high = Gva::new(0xffff_8000_0000_0000);
    for (i, g) in [top, low_top, bottom_high, Gva::new(0)]
        .into_iter()
        .enumerate()
    {
        pt.edit(&mem, &mut pool)
            .map(g, Gpa::new(i as u64 * PAGE_SIZE), PageSize::Size4K, KDATA)
            .unwrap();
    }
    let leaves = pt.leaves(&mem);
    let gvas: Vec<u64> = leaves.iter().map(|l| l.gva.raw()).collect();
    assert_eq!(gvas, [0, low_top.raw(), bottom_high.raw(), top.raw()]);
    assert_eq!(
        pt.translate(&mem, Gva::new(u64::MAX)).unwrap().gpa,
        Gpa::new(0xfff)
    );
    let dump = pt.dump(&mem);
    assert!(
        dump.contains(
            "0xfffffffffffff000-0x10000000000000000 -> 0x0000000000000000  4K x1  P RW NX"
        ),
        "{dump}"
    );
    for g in [top, low_top, bottom_high, Gva::new(0)] {
        let _ = pt.edit(&mem, &mut pool).unmap(g, PAGE_SIZE).unwrap();
    }
    assert_eq!(pt.table_frame_count(), 1);
}

#[test]
fn dump_coalesces_runs() {
    let (mem, mut pool, mut pt) = setup();
    pt.edit(&mem, &mut pool)
        .map_range(
            Gva::new(0x40_0000),
            Gpa::new(0x10_0000),
            8 * PAGE_SIZE,
            PageSize::Size4K,
            UCODE,
        )
        .unwrap();
    let _ = pt
        .protect(&mem, Gva::new(0x40_6000), 2 * PAGE_SIZE, UDATA)
        .unwrap();
    let dump = pt.dump(&mem);
    let lines: Vec<&str> = dump.lines().collect();
    assert!(
        lines[0].starts_with("page tables: CR3 0x800000, 4 table frames"),
        "{dump}"
    );
    assert_eq!(
        &lines[1..],
        [
            "0x0000000000400000-0x0000000000406000 -> 0x0000000000100000  4K x6  P US",
            "0x0000000000406000-0x0000000000408000 -> 0x0000000000106000  4K x2  P RW US NX",
        ]
    );
}

#[test]
fn direct_map_64g_2m_and_1g() {
    let (mem, mut pool, mut pt) = setup();
    let base = Gva::new(0xffff_8880_0000_0000);
    let ram = [(Gpa::new(0x10_0000_0000), 64 << 30)]; // above the table pool
    pt.edit(&mem, &mut pool)
        .map_direct(base, &ram, false, KDATA | PteFlags::GLOBAL)
        .unwrap();
    let s = pt.summary(&mem);
    assert_eq!(
        (s.mappings_2m, s.pd_tables, s.pdpt_tables, s.table_frames),
        (32768, 64, 1, 66)
    );
    assert_eq!(s.mapped_bytes, 64 << 30);
    let t = pt
        .translate(&mem, Gva::new(base.raw() + 0x10_0000_0000 + 0x1234_5678))
        .unwrap();
    assert_eq!(
        (t.gpa, t.page_size),
        (Gpa::new(0x10_1234_5678), PageSize::Size2M)
    );
    assert_eq!(pt.dump(&mem).lines().count(), 2);

    let (mem, mut pool, mut pt) = setup();
    pt.edit(&mem, &mut pool)
        .map_direct(base, &ram, true, KDATA)
        .unwrap();
    let s = pt.summary(&mem);
    assert_eq!((s.mappings_1g, s.table_frames), (64, 2));
}

#[test]
fn direct_map_holes_edges_and_rollback() {
    let (mem, mut pool, mut pt) = setup();
    let base = Gva::new(0xffff_8880_0000_0000);
    // RAM below 8 MiB minus page 0, a hole, then 4 GiB .. 5 GiB + 12 KiB.
    let ram = [
        (Gpa::new(0x1000), 8 * MIB - 0x1000),
        (Gpa::new(4 << 30), (1 << 30) + 0x3000),
    ];
    pt.edit(&mem, &mut pool)
        .map_direct(base, &ram, true, KDATA)
        .unwrap();
    let s = pt.summary(&mem);
    assert_eq!(
        (s.mappings_4k, s.mappings_2m, s.mappings_1g),
        (511 + 3, 3, 1)
    );
    assert!(matches!(
        pt.translate(&mem, base),
        Err(PagingError::NotMapped { .. })
    ));
    assert!(matches!(
        pt.translate(&mem, Gva::new(base.raw() + (3 << 30))),
        Err(PagingError::NotMapped { .. })
    ));
    assert_eq!(
        pt.translate(&mem, Gva::new(base.raw() + 0x5000))
            .unwrap()
            .gpa,
        Gpa::new(0x5000)
    );
    assert_eq!(
        pt.translate(&mem, Gva::new(base.raw() + (5 << 30) + 0x2000))
            .unwrap()
            .page_size,
        PageSize::Size4K
    );

    // Overlapping ranges: the second overlaps the first, everything is rolled back.
    let (mem, mut pool, mut pt) = setup();
    let before = snapshot(&mem, &pt);
    let bad = [(Gpa::new(0), 64 * MIB), (Gpa::new(0x20_0000), 0x1000)];
    assert!(pt
        .edit(&mem, &mut pool)
        .map_direct(base, &bad, false, KRO)
        .is_err());
    assert_eq!(snapshot(&mem, &pt), before);
    // Writable direct map over the table pool is refused.
    let all = [(Gpa::new(0), MEM_SIZE)];
    assert!(matches!(
        pt.edit(&mem, &mut pool)
            .map_direct(base, &all, false, KDATA),
        Err(PagingError::WritableTableFrame { .. })
    ));
    assert_eq!(snapshot(&mem, &pt), before);
    assert_eq!(pool.in_use(), 1);
    // Read-only over the pool is allowed.
    pt.edit(&mem, &mut pool)
        .map_direct(base, &all, false, KRO)
        .unwrap();
}

#[test]
fn free_all_returns_every_frame() {
    let (mem, mut pool, mut pt) = setup();
    pt.edit(&mem, &mut pool)
        .map_range(
            Gva::new(0),
            Gpa::new(0),
            4 * LARGE_PAGE_SIZE,
            PageSize::Size4K,
            KDATA,
        )
        .unwrap();
    assert_eq!(pool.in_use(), 1 + 1 + 1 + 4);
    pt.free_all(&mut pool);
    assert_eq!(pool.in_use(), 0);
}

// ---- model test ---------------------------------------------------------------------------

/// The window: 8 MiB straddling the 512 GiB boundary (two PML4 entries, PDPT and PD edges).
const WIN: u64 = (512 << 30) - 4 * MIB;
const WIN_PAGES: u64 = 8 * MIB / PAGE_SIZE;

#[derive(Debug, Clone)]
enum Op {
    Map {
        page: u64,
        n: u64,
        big: bool,
        gpa_page: u64,
        prot: usize,
    },
    /// With `snap`, the range is moved to start at a mapped leaf and extended to end at one.
    Unmap { page: u64, n: u64, snap: bool },
    Protect {
        page: u64,
        n: u64,
        snap: bool,
        prot: usize,
    },
}

fn prot(i: usize) -> PteFlags {
    [
        UDATA,
        KDATA,
        UCODE,
        KRO,
        Protection::DEVICE_MEMORY.to_pte_flags(true),
    ][i % 5]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..WIN_PAGES, 1..40u64, any::<bool>(), 0..1024u64, 0..5usize)
            .prop_map(|(page, n, big, gpa_page, prot)| Op::Map { page, n, big, gpa_page, prot }),
        2 => (0..WIN_PAGES, prop_oneof![1..16u64, 1..1100u64], any::<bool>())
            .prop_map(|(page, n, snap)| Op::Unmap { page, n, snap }),
        1 => (0..WIN_PAGES, prop_oneof![1..16u64, 1..1100u64], any::<bool>(), 0..5usize)
            .prop_map(|(page, n, snap, prot)| Op::Protect { page, n, snap, prot }),
    ]
}

/// Shadow: 4 KiB page index in the window → (gpa, flags, leaf start page, leaf size).
type Shadow = BTreeMap<u64, (u64, PteFlags, u64, PageSize)>;

/// Move `[page, page + n)` to start at the first mapped leaf at or after `page` and to end at
/// the end of the leaf holding its last page (if mapped), so unmap/protect often succeed.
fn snap_to_leaves(shadow: &Shadow, page: u64, n: u64) -> (u64, u64) {
    let Some((_, first)) = shadow.range(page..).next() else {
        return (page, n);
    };
    let start = first.2;
    let mut end = (start + n).min(WIN_PAGES);
    if let Some(last) = shadow.get(&(end - 1)) {
        end = last.2 + last.3.bytes() / PAGE_SIZE;
    }
    (start, end - start)
}

fn apply(mem: &Mem, pool: &mut FramePool, pt: &mut PageTables, shadow: &mut Shadow, op: &Op) {
    let before = snapshot(mem, pt);
    let ok = match *op {
        Op::Map {
            page,
            n,
            big,
            gpa_page,
            prot: p,
        } => {
            let (size, per) = if big {
                (PageSize::Size2M, 512)
            } else {
                (PageSize::Size4K, 1)
            };
            let page = page / per * per;
            let n = n.min((WIN_PAGES - page) / per).max(1);
            // Data GPAs from 1 GiB up: outside guest memory and the table pool.
            let gpa = (1 << 30) + gpa_page / per * per * PAGE_SIZE;
            let len = n * size.bytes();
            let r = pt.edit(mem, pool).map_range(
                Gva::new(WIN + page * PAGE_SIZE),
                Gpa::new(gpa),
                len,
                size,
                prot(p),
            );
            let conflict = (page..page + n * per).any(|q| shadow.contains_key(&q));
            assert_eq!(r.is_err(), conflict, "{op:?}: {r:?}");
            if let Err(e) = &r {
                match e {
                    PagingError::AlreadyMapped { .. } | PagingError::WouldSplitLargePage { .. } => {
                    }
                    other => panic!("{op:?}: {other:?}"),
                }
            } else {
                for k in 0..n {
                    for j in 0..per {
                        let q = page + k * per + j;
                        shadow.insert(
                            q,
                            (
                                gpa + (k * per + j) * PAGE_SIZE,
                                prot(p),
                                page + k * per,
                                size,
                            ),
                        );
                    }
                }
            }
            r.is_ok()
        }
        Op::Unmap { page, n, snap } | Op::Protect { page, n, snap, .. } => {
            let n = n.min(WIN_PAGES - page);
            let (page, n) = if snap {
                snap_to_leaves(shadow, page, n)
            } else {
                (page, n)
            };
            let range = page..page + n;
            let valid = range.clone().all(|q| {
                shadow.get(&q).is_some_and(|&(_, _, start, size)| {
                    start >= page && start + size.bytes() / PAGE_SIZE <= page + n
                })
            });
            let gva = Gva::new(WIN + page * PAGE_SIZE);
            if let Op::Protect { prot: p, .. } = *op {
                let r = pt
                    .protect(mem, gva, n * PAGE_SIZE, prot(p))
                    .map(|p| p.changed);
                assert_eq!(r.is_ok(), valid, "{op:?}: {r:?}");
                if let Ok(changed) = r {
                    let mut expect = 0;
                    for q in range {
                        let e = shadow.get_mut(&q).unwrap();
                        if e.2 == q && e.1 != prot(p) {
                            expect += 1;
                        }
                        e.1 = prot(p);
                    }
                    assert_eq!(changed, expect, "{op:?}");
                }
                valid
            } else {
                let r = pt
                    .edit(mem, pool)
                    .unmap(gva, n * PAGE_SIZE)
                    .map(|u| u.leaves);
                assert_eq!(r.is_ok(), valid, "{op:?}: {r:?}");
                if let Ok(removed) = r {
                    let expect: Vec<_> = range
                        .clone()
                        .filter_map(|q| {
                            let &(gpa, _, start, size) = shadow.get(&q).unwrap();
                            (start == q).then_some((
                                Gva::new(WIN + q * PAGE_SIZE),
                                Gpa::new(gpa),
                                size,
                            ))
                        })
                        .collect();
                    assert_eq!(removed, expect);
                    for q in range {
                        shadow.remove(&q);
                    }
                }
                valid
            }
        }
    };
    if !ok {
        assert_eq!(
            snapshot(mem, pt),
            before,
            "{op:?} failed but changed the tables"
        );
    }
}

fn check(mem: &Mem, pt: &PageTables, shadow: &Shadow) {
    for q in (0..WIN_PAGES)
        .step_by(7)
        .chain([0, 1023, 1024, WIN_PAGES - 1])
    {
        let gva = Gva::new(WIN + q * PAGE_SIZE + 0x10);
        match (pt.translate(mem, gva), shadow.get(&q)) {
            (Ok(t), Some(&(gpa, flags, _, size))) => {
                assert_eq!(t.gpa, Gpa::new(gpa + 0x10));
                assert_eq!(t.page_size, size);
                assert_eq!(t.leaf_pte.flags() - PteFlags::HUGE, flags);
            }
            (Err(PagingError::NotMapped { .. }), None) => {}
            (r, s) => panic!("page {q}: {r:?} vs {s:?}"),
        }
    }
    // Leaves and counters agree with the shadow; no table frame is a data page.
    let leaves = pt.try_leaves(mem).unwrap();
    let n4 = shadow
        .iter()
        .filter(|(q, e)| e.2 == **q && e.3 == PageSize::Size4K)
        .count();
    let n2 = shadow
        .iter()
        .filter(|(q, e)| e.2 == **q && e.3 == PageSize::Size2M)
        .count();
    assert_eq!(leaves.len(), n4 + n2);
    let s = pt.summary(mem);
    assert_eq!((s.mappings_4k, s.mappings_2m), (n4 as u64, n2 as u64));
    assert_eq!(s.table_frames, pt.table_frame_count());
    for l in &leaves {
        let first = l.gpa.raw() / PAGE_SIZE;
        let pages = l.size.bytes() / PAGE_SIZE;
        assert!(pt
            .table_frames()
            .all(|t| t.raw() < first || t.raw() >= first + pages));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn model_matches_shadow(ops in prop::collection::vec(op(), 1..40)) {
        let (mem, mut pool, mut pt) = setup();
        let mut shadow = Shadow::new();
        for op in &ops {
            apply(&mem, &mut pool, &mut pt, &mut shadow, op);
            check(&mem, &pt, &shadow);
        }
        // Unmap everything: back to the bare PML4.
        let starts: Vec<(u64, PageSize)> = shadow.iter().filter(|(q, e)| e.2 == **q).map(|(q, e)| (*q, e.3)).collect();
        for (q, size) in starts {
            let _ = pt.edit(&mem, &mut pool).unmap(Gva::new(WIN + q * PAGE_SIZE), size.bytes()).unwrap();
        }
        prop_assert_eq!(pt.table_frame_count(), 1);
        prop_assert_eq!(pool.in_use(), 1);
        prop_assert!(pt.leaves(&mem).is_empty());
    }

    /// Arbitrary arguments never panic; errors change nothing.
    #[test]
    fn hostile_arguments_never_panic(
        gva in any::<u64>(), gpa in any::<u64>(), len in any::<u64>(), flags in any::<u64>(),
        size in 0..3usize, which in 0..3usize,
    ) {
        let (mem, mut pool, mut pt) = setup_with(64);
        pt.edit(&mem, &mut pool).map(Gva::new(0xffff_8000_0000_0000), Gpa::new(0), PageSize::Size2M, KDATA).unwrap();
        let before = snapshot(&mem, &pt);
        let size = PageSize::ALL[size];
        let flags = PteFlags::from_bits_truncate(flags);
        // Keep the length small enough not to need gigabytes of tables when it succeeds.
        let len = len % (8 * size.bytes()) ;
        let r = match which {
            0 => pt.edit(&mem, &mut pool).map_range(Gva::new_truncate(gva), Gpa::new(gpa), len, size, flags),
            1 => pt.edit(&mem, &mut pool).unmap(Gva::new_truncate(gva), len).map(|_| ()),
            _ => pt.protect(&mem, Gva::new_truncate(gva), len, flags).map(|_| ()),
        };
        if r.is_err() {
            prop_assert_eq!(snapshot(&mem, &pt), before);
        }
        let _ = pt.dump(&mem);
        let _ = pt.translate(&mem, Gva::new_truncate(gva));
    }
}

#[test]
fn pte_helpers_public_api() {
    let p = Pte::new(Gpa::new(0x1000), KDATA);
    assert!(p.is_present() && p.is_leaf(1));
    assert_eq!(p.flags(), KDATA);
    assert_eq!(p.addr(), Gpa::new(0x1000));
}

#[test]
fn unaligned_host_mapping_and_two_regions() {
    // A region starting at GPA 4: table frames are not 8-byte aligned on the host, which
    // takes the buffered write path. A second region holds more table frames.
    let mem = Mem::from_ranges(&[
        (GuestAddress(4), (MEM_SIZE - 4) as usize),
        (GuestAddress(1 << 32), MEM_SIZE as usize),
    ])
    .unwrap();
    for (first, gva) in [
        (POOL_START, Gva::new(0x40_0000)),
        (
            Pfn::new((1 << 32) / PAGE_SIZE),
            Gva::new(0xffff_c000_0000_0000),
        ),
    ] {
        let mut pool = FramePool::new(first, 16).unwrap();
        let mut pt = PageTables::new(&mem, &mut pool).unwrap();
        pt.edit(&mem, &mut pool)
            .map_range(
                gva,
                Gpa::new(0x10_0000),
                4 * PAGE_SIZE,
                PageSize::Size4K,
                KDATA,
            )
            .unwrap();
        for k in 0..4 {
            let t = pt
                .translate(&mem, Gva::new(gva.raw() + k * PAGE_SIZE + 8))
                .unwrap();
            assert_eq!(t.gpa, Gpa::new(0x10_0008 + k * PAGE_SIZE));
        }
        assert_eq!(pt.leaves(&mem).len(), 4);
        let _ = pt.edit(&mem, &mut pool).unmap(gva, 4 * PAGE_SIZE).unwrap();
        assert_eq!(pt.table_frame_count(), 1);
    }
}

/// The flush tokens: owed only for a removed or reduced leaf the CPU has accessed (A = 1).
#[test]
fn unmap_and_protect_return_the_owed_shadow_flush() {
    let (mem, mut pool, mut pt) = setup();
    let g = Gva::new(0x40_0000);
    pt.edit(&mem, &mut pool)
        .map_range(
            g,
            Gpa::new(0x30_0000),
            4 * PAGE_SIZE,
            PageSize::Size4K,
            UDATA,
        )
        .unwrap();
    // Never accessed: reducing rights or unmapping owes nothing.
    let p = pt.protect(&mem, g, PAGE_SIZE, UCODE).unwrap();
    assert_eq!(p.changed, 1);
    assert!(!p.flush.take_needed());
    // Mark the second page accessed, as the CPU's walker would.
    let leaf = pt.translate(&mem, Gva::new(g.raw() + PAGE_SIZE)).unwrap();
    let at = pt
        .entry_gpa(&mem, Gva::new(g.raw() + PAGE_SIZE), 1)
        .unwrap();
    mem.write_obj(
        leaf.leaf_pte.raw() | PteFlags::ACCESSED.bits(),
        GuestAddress(at.raw()),
    )
    .unwrap();
    // Granting a right owes nothing, taking one away owes a flush.
    let grant = pt
        .protect(&mem, Gva::new(g.raw() + PAGE_SIZE), PAGE_SIZE, UDATA)
        .unwrap();
    assert!(!grant.flush.take_needed());
    let p = pt.protect(&mem, g, 2 * PAGE_SIZE, KRO).unwrap();
    assert_eq!(p.changed, 2);
    assert!(p.flush.take_needed());
    // Unmapping an accessed leaf owes a flush; the others' unmap does not.
    let u = pt
        .edit(&mem, &mut pool)
        .unmap(Gva::new(g.raw() + 2 * PAGE_SIZE), 2 * PAGE_SIZE)
        .unwrap();
    assert_eq!(u.leaves.len(), 2);
    assert!(!u.flush.take_needed());
    let u = pt.edit(&mem, &mut pool).unmap(g, 2 * PAGE_SIZE).unwrap();
    assert_eq!(u.leaves.len(), 2);
    assert!(u.flush.take_needed());
}
