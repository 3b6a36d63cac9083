//! MeMS: the classic example of the seed and unit tests.

use core::ptr::NonNull;
use std::vec::Vec;

use super::report;
use crate::host::HostPageSource;
use crate::{HeapError, Mems, PAGE_SIZE};

fn stats_value(s: &str, key: &str) -> std::string::String {
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {s}"))
        .trim()
        .into()
}

/// MeMS's classic example: ten 1000-byte arrays (250 ints), stats, write/read through them and
/// `mems_get`, free one, allocate again, stats, `mems_finish`.
#[test]
fn seed_classic_example() {
    let mut m = Mems::mems_init(HostPageSource::new());
    let mut ptr: Vec<*mut i32> = Vec::new();
    for _ in 0..10 {
        ptr.push(
            m.mems_malloc(core::mem::size_of::<i32>() * 250)
                .unwrap()
                .cast()
                .as_ptr(),
        );
    }
    for (i, p) in ptr.iter().enumerate() {
        for j in 0..250 {
            // SAFETY: each array is a live 1000-byte (rounded to 1008) PROCESS segment.
            unsafe { *p.add(j) = (i * 1000 + j) as i32 };
        }
    }
    // SAFETY: as above.
    unsafe { *ptr[0].add(1) = 200 };
    let phys = m.mems_get(ptr[0].cast::<u8>().wrapping_add(4)).unwrap();
    // Any byte of a region translates, including holes.
    assert!(m.mems_get(ptr[3].cast::<u8>().wrapping_add(1050)).is_some());
    assert_eq!(phys, (ptr[0] as u64 + 4) | 1 << 62);
    assert_eq!(m.mems_get(&0u8), None);
    let s = report(|w| m.mems_print_stats(w));
    // 1000 → 1008 bytes (16-byte rounding): 4 per page, then a 64-byte hole.
    let lines: Vec<&str> = s.lines().filter(|l| l.starts_with("MAIN[")).collect();
    assert_eq!(lines.len(), 3, "{s}");
    let b0 = m.mems_get(ptr[0].cast()).map(|_| ptr[0] as usize).unwrap();
    assert_eq!(
        lines[0],
        std::format!(
            "MAIN[{}:{}]-> P[{}:{}] <-> P[{}:{}] <-> P[{}:{}] <-> P[{}:{}] <-> H[{}:{}] <-> NULL",
            b0,
            b0 + 4095,
            b0,
            b0 + 1007,
            b0 + 1008,
            b0 + 2015,
            b0 + 2016,
            b0 + 3023,
            b0 + 3024,
            b0 + 4031,
            b0 + 4032,
            b0 + 4095
        )
    );
    assert!(lines[2].matches("P[").count() == 2 && lines[2].matches("H[").count() == 1);
    assert_eq!(stats_value(&s, "Pages used:"), "3");
    assert_eq!(stats_value(&s, "Space unused:"), "2208");
    assert_eq!(stats_value(&s, "Main Chain Length:"), "3");
    assert_eq!(stats_value(&s, "Sub-chain Length array:"), "[5, 5, 3, ]");
    assert!(s.starts_with("----- MeMS SYSTEM STATS -----\n"));
    // SAFETY: live arrays.
    unsafe {
        assert_eq!(*ptr[0].add(1), 200);
        assert_eq!(*ptr[9].add(249), 9249);
    }

    m.mems_free(NonNull::new(ptr[3].cast()).unwrap()).unwrap();
    let s = report(|w| m.mems_print_stats(w));
    assert_eq!(stats_value(&s, "Space unused:"), "3216");
    assert_eq!(stats_value(&s, "Sub-chain Length array:"), "[4, 5, 3, ]");
    assert_eq!(
        m.mems_free(NonNull::new(ptr[3].cast()).unwrap()),
        Err(HeapError::DoubleFree {
            addr: ptr[3] as usize
        })
    );
    // Allocating again reuses the hole (no new main node).
    let again = m.mems_malloc(1000).unwrap();
    assert_eq!(again.as_ptr(), ptr[3].cast());
    let s = report(|w| m.mems_print_stats(w));
    assert_eq!(stats_value(&s, "Pages used:"), "3");
    assert_eq!(stats_value(&s, "Space unused:"), "2208");
    assert_eq!(stats_value(&s, "Sub-chain Length array:"), "[5, 5, 3, ]");
    for i in [0usize, 1, 2, 4, 5, 6, 7, 8, 9] {
        // SAFETY: untouched live arrays keep their contents.
        unsafe { assert_eq!(*ptr[i].add(100), (i * 1000 + 100) as i32) };
    }
    m.audit().unwrap();
    assert_eq!(m.source().mapped_pages(), m.pages_in_use());
    m.mems_finish();
    assert_eq!(m.mems_get(ptr[0].cast()), None);
    assert_eq!(m.source().mapped_pages(), 0);
    assert_eq!(m.pages_in_use(), 0);
    let s = report(|w| m.mems_print_stats(w));
    assert_eq!(stats_value(&s, "Main Chain Length:"), "0");
    assert_eq!(stats_value(&s, "Sub-chain Length array:"), "[]");
    // Usable again after finish.
    let p = m.mems_malloc(5000).unwrap();
    assert_eq!(m.data_pages(), 2);
    m.mems_free(p).unwrap();
}

#[test]
fn large_allocation_gets_ceil_pages_and_remainder_hole() {
    let mut m = Mems::new(HostPageSource::new());
    let p = m.mems_malloc(3 * PAGE_SIZE + 1).unwrap();
    assert_eq!(m.data_pages(), 4);
    assert_eq!(m.mems_usable_size(p).unwrap(), 3 * PAGE_SIZE + 16);
    assert_eq!(m.hole_bytes(), PAGE_SIZE - 16);
    // A fitting request uses the remainder hole.
    let q = m.mems_malloc(PAGE_SIZE - 16).unwrap();
    assert_eq!(q.as_ptr().addr(), p.as_ptr().addr() + 3 * PAGE_SIZE + 16);
    assert_eq!(m.hole_bytes(), 0);
    let s = report(|w| m.mems_print_stats(w));
    assert_eq!(stats_value(&s, "Sub-chain Length array:"), "[2, ]");
    m.mems_free(p).unwrap();
    m.mems_free(q).unwrap();
    assert_eq!(m.hole_bytes(), 4 * PAGE_SIZE);
    assert_eq!(
        stats_value(
            &report(|w| m.mems_print_stats(w)),
            "Sub-chain Length array:"
        ),
        "[1, ]"
    );
    // Zero-size requests get a unique 16-byte segment.
    let z1 = m.mems_malloc(0).unwrap();
    let z2 = m.mems_malloc(0).unwrap();
    assert_ne!(z1, z2);
    m.audit().unwrap();
}

#[test]
fn bad_frees_are_errors_and_change_nothing() {
    let mut m = Mems::new(HostPageSource::new());
    let a = m.mems_malloc(100).unwrap();
    let b = m.mems_malloc(100).unwrap();
    let before = (report(|w| m.mems_print_stats(w)), m.audit().unwrap());
    let addr = a.as_ptr().addr();
    let cases = [
        (
            addr + 8,
            HeapError::InvalidPointer {
                addr: addr + 8,
                reason: "interior pointer of a PROCESS segment",
            },
        ),
        (
            b.as_ptr().addr() + 112,
            HeapError::DoubleFree {
                addr: b.as_ptr().addr() + 112,
            },
        ),
        (
            0x10,
            HeapError::InvalidPointer {
                addr: 0x10,
                reason: "not in a MeMS region",
            },
        ),
    ];
    for (p, e) in cases {
        assert_eq!(m.mems_free(NonNull::new(p as *mut u8).unwrap()), Err(e));
        assert!(std::format!("{e}").contains(&std::format!("{p:#x}")));
    }
    assert_eq!(
        before,
        (report(|w| m.mems_print_stats(w)), m.audit().unwrap())
    );
    m.mems_free(a).unwrap();
    assert_eq!(m.mems_free(a), Err(HeapError::DoubleFree { addr }));
    m.mems_free(b).unwrap();
    m.audit().unwrap();
}

#[test]
fn aligned_allocations() {
    let mut m = Mems::new(HostPageSource::new());
    let _small = m.mems_malloc(48).unwrap();
    for align in [16usize, 32, 256, 4096, 8192, 65536] {
        let p = m.mems_alloc_aligned(100, align).unwrap();
        assert_eq!(p.as_ptr().addr() % align, 0, "align {align}");
        m.audit().unwrap();
    }
    assert_eq!(
        m.mems_alloc_aligned(8, 3),
        Err(HeapError::InvalidAlignment { align: 3 })
    );
    assert_eq!(m.source().mapped_pages(), m.pages_in_use());
    m.mems_finish();
    assert_eq!(m.source().mapped_pages(), 0);
}

#[test]
fn release_empty_gives_pages_back() {
    let mut m = Mems::new(HostPageSource::new());
    m.set_release_empty(true);
    let ps: Vec<_> = (0..50)
        .map(|i| m.mems_malloc(100 + i * 300).unwrap())
        .collect();
    m.audit().unwrap();
    for p in ps {
        m.mems_free(p).unwrap();
        m.audit().unwrap();
        assert_eq!(m.source().mapped_pages(), m.pages_in_use());
    }
    assert_eq!(m.main_chain_len(), 0);
    assert_eq!(m.source().mapped_pages(), 0);
}

#[test]
fn hash_table_grows_and_shrinks() {
    let mut m = Mems::new(HostPageSource::new());
    let ps: Vec<_> = (0..3000).map(|_| m.mems_malloc(16).unwrap()).collect();
    assert!(m.metadata_pages() > 10);
    let a = m.audit().unwrap();
    assert_eq!(a.process_segments, 3000);
    assert!(a.table_pages >= 16);
    for p in &ps[..2900] {
        m.mems_free(*p).unwrap();
    }
    let a = m.audit().unwrap();
    assert!(a.table_pages < 4, "{a:?}");
    for p in &ps[2900..] {
        m.mems_free(*p).unwrap();
    }
    m.audit().unwrap();
    assert_eq!(m.source().mapped_pages(), m.pages_in_use());
}

/// A fresh MeMS maps one metadata page (the home page: node slots and the small hash
/// table); a table past 96 entries gets pages of its own and comes
/// back home when it empties again.
#[test]
fn home_page_holds_pool_and_small_table() {
    let mut m = Mems::new(HostPageSource::new());
    let p = m.mems_malloc(100).unwrap();
    let a = m.audit().unwrap();
    assert_eq!((a.pool_pages, a.table_pages), (1, 0));
    assert_eq!(m.metadata_pages(), 1);
    assert_eq!(m.source().mapped_pages(), m.pages_in_use());
    let mut ps: Vec<_> = (0..200).map(|_| m.mems_malloc(16).unwrap()).collect();
    let a = m.audit().unwrap();
    assert!(a.table_pages >= 1, "{a:?}");
    assert!(a.pool_pages >= 4, "{a:?}");
    assert_eq!(m.source().mapped_pages(), m.pages_in_use());
    for q in ps.drain(10..) {
        m.mems_free(q).unwrap();
        m.audit().unwrap();
    }
    let a = m.audit().unwrap();
    assert_eq!(a.table_pages, 0, "back in the home page: {a:?}");
    assert_eq!(m.source().mapped_pages(), m.pages_in_use());
    // Every entry moved home is still found.
    for q in ps {
        m.mems_free(q).unwrap();
    }
    m.mems_free(p).unwrap();
    m.audit().unwrap();
    assert!(m.mems_free(p).is_err(), "double free refused");
    m.mems_finish();
    assert_eq!(m.source().mapped_pages(), 0);
}

#[test]
fn out_of_memory() {
    let mut m = Mems::new(HostPageSource::with_limit(12));
    let mut live = Vec::new();
    let e = loop {
        match m.mems_malloc(3000) {
            Ok(p) => live.push(p),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, HeapError::OutOfMemory { .. }));
    assert!(matches!(
        m.mems_malloc(usize::MAX - 3),
        Err(HeapError::TooLarge { .. })
    ));
    m.audit().unwrap();
    assert_eq!(m.source().mapped_pages(), m.pages_in_use());
    for p in live {
        m.mems_free(p).unwrap();
    }
    m.audit().unwrap();
}

/// `trim_solo` gives back the pages of a solo node past its PROCESS segment (after a shrink
/// in place), through the source's `shrink_pages`; the node stays tiled and the block keeps
/// its contents. A block of a shared node, or one that reaches its node's last page, gives
/// nothing back; a freed pointer is refused.
#[test]
fn trim_solo_gives_back_the_tail_pages() {
    let mut m = Mems::new(HostPageSource::new());
    m.set_solo_min(64 * 1024);
    let p = m.mems_malloc(270_352).unwrap();
    assert_eq!(m.data_pages(), 67);
    // SAFETY: `p` is a live 270,352-byte segment.
    unsafe { p.as_ptr().write_bytes(0x5a, 73_744) };
    assert_eq!(
        m.trim_solo(p).unwrap(),
        0,
        "nothing behind the block's last page"
    );
    assert!(m.mems_resize_in_place(p, 73_744).unwrap());
    assert_eq!(m.trim_solo(p).unwrap(), 67 - 19);
    assert_eq!(
        (
            m.data_pages(),
            m.source().mapped_pages() - m.metadata_pages()
        ),
        (19, 19)
    );
    assert_eq!(m.hole_bytes(), 19 * PAGE_SIZE - 73_744);
    // SAFETY: `p` still holds 73,744 bytes.
    assert!(unsafe { core::slice::from_raw_parts(p.as_ptr(), 73_744) }
        .iter()
        .all(|&b| b == 0x5a));
    m.audit().unwrap();
    // A block of a shared node is left alone.
    let q = m.mems_malloc(1000).unwrap();
    assert_eq!(m.trim_solo(q).unwrap(), 0);
    m.mems_free(p).unwrap();
    assert!(m.trim_solo(p).is_err(), "a freed block");
    assert_eq!(m.data_pages(), 1, "the solo node went back whole");
    m.mems_free(q).unwrap();
    m.audit().unwrap();
}
