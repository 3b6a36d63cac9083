//! The mid-size path ([`Mid`], TLSF-style segregated fits with boundary tags) vs a shadow
//! model (proptest): random allocations of every mid size, frees, in-place resizes, double
//! and interior frees. After every step: blocks 16-byte aligned, inside the regions, not
//! overlapping, contents intact, the audit (boundary tags, live-start bitmaps, free lists,
//! counters) clean, pages accounted; refused frees change nothing; at the end at most the
//! spare regions are left and every page goes back. Slab-class blocks
//! ([`Mid::alloc_small`]) come only from free blocks the path already holds (no page is
//! mapped for them), never overlap another block, and are freed only by
//! [`Mid::free_small`]: [`Mid::free`] and [`Mid::resize_in_place`] refuse them, and
//! `free_small` refuses the other blocks. Region tails given back ([`Mid::trim_tails`])
//! are unmapped at once (the host source `munmap`s them), at most the pages asked for, and
//! only free pages: every live block stays inside the mapped pages.

use core::ptr::NonNull;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::vec::Vec;

use super::{check, fill};
use crate::host::HostPageSource;
use crate::memvisor::{Mid, MAX_SPARES, MID_MAX, MID_MIN};

#[derive(Debug, Clone)]
enum Op {
    Alloc { size: usize },
    AllocSmall { size: usize },
    WrongKind { pick: usize },
    Free { pick: usize },
    Resize { pick: usize, size: usize },
    Grow { pick: usize, size: usize },
    DoubleFree { pick: usize },
    Interior { pick: usize, off: usize },
    Trim { want: usize },
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => MID_MIN..4096,
        3 => 4096usize..20_000,
        1 => 20_000..=MID_MAX,
        1 => prop_oneof![Just(MID_MIN), Just(MID_MAX), Just(1024), Just(4096)],
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => size().prop_map(|size| Op::Alloc { size }),
        4 => (1usize..=crate::memvisor::SLAB_MAX).prop_map(|size| Op::AllocSmall { size }),
        1 => any::<usize>().prop_map(|pick| Op::WrongKind { pick }),
        8 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        3 => (any::<usize>(), size()).prop_map(|(pick, size)| Op::Resize { pick, size }),
        2 => (any::<usize>(), size()).prop_map(|(pick, size)| Op::Grow { pick, size }),
        1 => any::<usize>().prop_map(|pick| Op::DoubleFree { pick }),
        1 => (any::<usize>(), 1usize..70_000).prop_map(|(pick, off)| Op::Interior { pick, off }),
        2 => (0usize..40).prop_map(|want| Op::Trim { want }),
    ]
}

fn run(ops: Vec<Op>) {
    let mut src = HostPageSource::new();
    let mut m = Mid::new();
    // addr -> (size, id)
    let mut live: BTreeMap<usize, (usize, u64)> = BTreeMap::new();
    // Addresses of the live slab-class blocks (also in `live`).
    let mut small: std::collections::BTreeSet<usize> = Default::default();
    let mut freed: Vec<(usize, usize)> = Vec::new();
    let mut id = 0u64;
    let nn = |a: usize| NonNull::new(a as *mut u8).unwrap();
    for op in ops {
        match op {
            Op::Alloc { size } => {
                let p = m.alloc(&mut src, size).expect("alloc").as_ptr().addr();
                assert_eq!(p % 16, 0, "misaligned");
                assert!(m.usable_size(nn(p)).unwrap() >= size);
                if let Some((&a, &(s, _))) = live.range(..p).next_back() {
                    assert!(a + s <= p, "overlaps the block before");
                }
                if let Some((&a, _)) = live.range(p..).next() {
                    assert!(p + size <= a, "overlaps the block after");
                }
                assert!(
                    src.regions()
                        .any(|(b, n)| b <= p && p + size <= b + n * crate::PAGE_SIZE),
                    "outside the mapped pages"
                );
                fill(p as *mut u8, size, id);
                live.insert(p, (size, id));
                freed.retain(|&(f, _)| f != p);
                id += 1;
            }
            Op::AllocSmall { size } => {
                let before = (src.mapped_pages(), m.stats().region_pages);
                let Some(p) = m.alloc_small(size) else {
                    assert_eq!(before, (src.mapped_pages(), m.stats().region_pages));
                    continue;
                };
                let p = p.as_ptr().addr();
                assert_eq!(
                    before,
                    (src.mapped_pages(), m.stats().region_pages),
                    "mapped"
                );
                assert_eq!(p % 16, 0, "misaligned");
                if let Some((&a, &(s, _))) = live.range(..p).next_back() {
                    assert!(a + s <= p, "overlaps the block before");
                }
                if let Some((&a, _)) = live.range(p..).next() {
                    assert!(p + size <= a, "overlaps the block after");
                }
                assert!(
                    m.usable_size(nn(p)).is_err(),
                    "a slab-class block seen as mid-size"
                );
                fill(p as *mut u8, size, id);
                live.insert(p, (size, id));
                small.insert(p);
                freed.retain(|&(f, _)| f != p);
                id += 1;
            }
            Op::WrongKind { pick } => {
                if live.is_empty() {
                    continue;
                }
                let a = *live.keys().nth(pick % live.len()).unwrap();
                let s = live[&a].0;
                let before = (m.audit().expect("audit"), m.stats(), src.mapped_pages());
                if small.contains(&a) {
                    assert!(m.free(&mut src, nn(a), s).is_err(), "free of a small block");
                    assert!(
                        m.resize_in_place(nn(a), s).is_err(),
                        "resize of a small block"
                    );
                } else {
                    assert!(
                        m.free_small(&mut src, nn(a), 1).is_err(),
                        "free_small of a block"
                    );
                }
                assert_eq!(before, (m.audit().unwrap(), m.stats(), src.mapped_pages()));
            }
            Op::Free { pick } => {
                if live.is_empty() {
                    continue;
                }
                let a = *live.keys().nth(pick % live.len()).unwrap();
                let (s, i) = live.remove(&a).unwrap();
                assert!(check(a as *const u8, s, i), "corrupted");
                if small.remove(&a) {
                    m.free_small(&mut src, nn(a), s).expect("free_small");
                } else {
                    m.free(&mut src, nn(a), s).expect("free");
                }
                freed.push((a, s));
            }
            Op::Resize { pick, size } => {
                if live.is_empty() {
                    continue;
                }
                let a = *live.keys().nth(pick % live.len()).unwrap();
                if small.contains(&a) {
                    continue;
                }
                let (s, i) = live[&a];
                let next = live.range(a + 1..).next().map(|(&b, _)| b);
                if m.resize_in_place(nn(a), size).expect("resize") {
                    assert!(m.usable_size(nn(a)).unwrap() >= size);
                    assert!(check(a as *const u8, s.min(size), i), "resize lost data");
                    if let Some(b) = next {
                        assert!(a + size <= b, "grown over the next block");
                    }
                    fill(a as *mut u8, size, i);
                    live.insert(a, (size, i));
                } else {
                    assert!(size > s, "a shrink always succeeds in place");
                }
            }
            Op::Grow { pick, size } => {
                if live.is_empty() {
                    continue;
                }
                let a = *live.keys().nth(pick % live.len()).unwrap();
                if small.contains(&a) {
                    assert!(m.grow_in_place(nn(a), size).is_err(), "a small block grown");
                    continue;
                }
                let (s, i) = live[&a];
                let next = live.range(a + 1..).next().map(|(&b, _)| b);
                let usable = m.usable_size(nn(a)).unwrap();
                if m.grow_in_place(nn(a), size).expect("grow") {
                    let now = m.usable_size(nn(a)).unwrap();
                    assert!(now >= size);
                    if size <= usable {
                        assert_eq!(now, usable, "a growth within the block cut its room");
                    }
                    assert!(check(a as *const u8, s.min(size), i), "grow lost data");
                    if let Some(b) = next {
                        assert!(a + now <= b, "grown over the next block");
                    }
                    fill(a as *mut u8, size, i);
                    live.insert(a, (size, i));
                } else {
                    assert!(size > usable, "a block that holds the size stays");
                }
            }
            Op::DoubleFree { pick } => {
                if freed.is_empty() {
                    continue;
                }
                let (a, s) = freed[pick % freed.len()];
                if live.contains_key(&a) {
                    continue;
                }
                let before = (m.audit().expect("audit"), m.stats(), src.mapped_pages());
                assert!(m.free(&mut src, nn(a), s).is_err(), "double free accepted");
                assert!(
                    m.free_small(&mut src, nn(a), 1).is_err(),
                    "double free accepted"
                );
                assert_eq!(before, (m.audit().unwrap(), m.stats(), src.mapped_pages()));
            }
            Op::Interior { pick, off } => {
                if live.is_empty() {
                    continue;
                }
                let (&a, &(s, _)) = live.iter().nth(pick % live.len()).unwrap();
                let p = a + 1 + off % (s + 64);
                if live.contains_key(&p) {
                    continue;
                }
                let before = (m.audit().expect("audit"), m.stats(), src.mapped_pages());
                assert!(
                    m.free(&mut src, nn(p), MID_MIN).is_err(),
                    "interior free accepted"
                );
                assert_eq!(before, (m.audit().unwrap(), m.stats(), src.mapped_pages()));
            }
            Op::Trim { want } => {
                let before = (src.mapped_pages(), m.stats().region_pages);
                let got = m.trim_tails(&mut src, want);
                assert!(got <= want, "more than asked for");
                assert_eq!(before.0 - got, src.mapped_pages(), "not unmapped");
                assert_eq!(before.1 - got, m.stats().region_pages);
                for (&a, &(s, i)) in &live {
                    assert!(
                        src.regions()
                            .any(|(b, n)| b <= a && a + s <= b + n * crate::PAGE_SIZE),
                        "a live block lost its pages"
                    );
                    assert!(check(a as *const u8, s, i), "corrupted by a trim");
                }
            }
        }
        let a = m.audit().unwrap_or_else(|e| panic!("audit: {e}"));
        assert_eq!((a.live, a.small), (live.len(), small.len()));
        assert!(a.empty_regions <= MAX_SPARES + 1);
        assert_eq!(src.mapped_pages(), m.pages_in_use(), "pages accounted");
    }
    for (&a, &(s, i)) in &live {
        assert!(check(a as *const u8, s, i), "corrupted");
    }
    for (&a, &(s, _)) in &live {
        if small.contains(&a) {
            m.free_small(&mut src, nn(a), s).expect("free_small");
        } else {
            m.free(&mut src, nn(a), s).expect("free");
        }
    }
    let a = m.audit().expect("audit");
    assert_eq!((a.live, a.used_bytes), (0, 0));
    assert!(
        a.regions <= MAX_SPARES + 1,
        "only spare regions and the dv are kept"
    );
    m.release_spare(&mut src);
    assert_eq!(m.audit().unwrap().regions, 0);
    assert_eq!(src.mapped_pages(), 0, "every page given back");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn mid_matches_model(ops in proptest::collection::vec(op(), 1..400)) {
        run(ops);
    }
}

/// A pair loop keeps its region (the spare) instead of mapping and unmapping it each time;
/// a second emptied region goes back.
#[test]
fn spare_region_absorbs_a_pair_loop() {
    let mut src = HostPageSource::new();
    let mut m = Mid::new();
    for _ in 0..100 {
        let p = m.alloc(&mut src, 4096).unwrap();
        m.free(&mut src, p, 4096).unwrap();
    }
    assert_eq!(
        src.calls(),
        (1, 0),
        "one region mapped (its registry entry is inline), none unmapped"
    );
    // Full regions, then free them: the dv's stays, MAX_SPARES become spares, the others
    // go back; on request, the kept ones too.
    let mut v = Vec::new();
    while m.stats().regions < MAX_SPARES + 6 {
        v.push(m.alloc(&mut src, 60_000).unwrap());
    }
    for p in v {
        m.free(&mut src, p, 60_000).unwrap();
    }
    assert_eq!(m.stats().regions, MAX_SPARES + 1);
    assert_eq!(m.audit().unwrap().empty_regions, MAX_SPARES + 1);
    m.release_spare(&mut src);
    assert_eq!(m.stats().regions, 0);
    m.clear(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

/// The region hint (the region of the last lookup, checked before the registry) never
/// outlives its region: once the region goes back, a free of a pointer into it is refused
/// without touching its (unmapped) pages, and a new region at any address is found.
#[test]
fn region_hint_forgets_a_returned_region() {
    let mut src = HostPageSource::new();
    let mut m = Mid::new();
    let p = m.alloc(&mut src, 4096).unwrap();
    let q = m.alloc(&mut src, 4096).unwrap();
    // Both frees look the region up through the hint.
    m.free(&mut src, q, 4096).unwrap();
    m.free(&mut src, p, 4096).unwrap();
    assert!(m.contains(p.as_ptr().addr()));
    assert_eq!(m.release_spare(&mut src), 16);
    assert_eq!(src.mapped_pages(), 0, "the region went back");
    assert!(
        !m.contains(p.as_ptr().addr()),
        "a returned region is not ours"
    );
    assert!(
        m.free(&mut src, p, 4096).is_err(),
        "a free into a returned region"
    );
    let r = m.alloc(&mut src, 4096).unwrap();
    m.audit().expect("audit");
    m.free(&mut src, r, 4096).unwrap();
    m.clear(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

/// A region's free tail goes back (unmapped: the host source `munmap`s it) once it stayed
/// the same between two looks, at most the pages asked for; the region stays smaller, a
/// free of a pointer into the tail is refused, the tail's space is not handed out again,
/// and the region goes back with the pages it has left.
#[test]
fn free_region_tail_goes_back() {
    let mut src = HostPageSource::new();
    let mut m = Mid::new();
    // One block of 8 pages and a bit: the 16-page region keeps a free tail of 7 whole pages
    // (TRIM_MIN).
    let p = m.alloc(&mut src, 32_800).unwrap();
    assert_eq!((src.mapped_pages(), m.stats().region_pages), (16, 16));
    assert_eq!(
        m.trim_tails(&mut src, 100),
        0,
        "the first look only marks the tail"
    );
    assert_eq!(m.trim_tails(&mut src, 3), 3, "at most the pages asked for");
    assert_eq!((src.mapped_pages(), m.stats().region_pages), (13, 13));
    assert_eq!(
        m.trim_tails(&mut src, 100),
        0,
        "a tail of fewer than TRIM_MIN whole pages stays"
    );
    m.audit().expect("audit");
    let region = src.regions().next().unwrap();
    assert_eq!(region.1, 13);
    let tail = region.0 + 13 * crate::PAGE_SIZE;
    assert!(!m.contains(tail + 64), "a given-back page is not ours");
    assert!(m
        .free(&mut src, NonNull::new(tail as *mut u8).unwrap(), MID_MIN)
        .is_err());
    // A request the region's last free bytes cannot hold maps a new region elsewhere.
    let q = m.alloc(&mut src, 20_000).unwrap();
    assert_eq!(m.stats().regions, 2);
    assert!(q.as_ptr().addr() < region.0 || q.as_ptr().addr() >= tail);
    m.audit().expect("audit");
    m.free(&mut src, q, 20_000).unwrap();
    m.free(&mut src, p, 32_800).unwrap();
    m.release_spare(&mut src);
    assert_eq!(m.stats().regions, 0);
    assert_eq!(src.mapped_pages(), 0, "returned with the pages it had left");
    m.clear(&mut src);
}

/// Blocks of just over half a region (a 32 KiB buffer and its header) take a region each
/// the first two times; from the third region on, such a block gets a region one page
/// bigger, which holds two of them. Blocks of other sizes keep exact regions.
#[test]
fn blocks_of_just_over_half_a_region_get_regions_for_two_from_the_third() {
    let mut src = HostPageSource::new();
    let mut m = Mid::new();
    let n = 32 * 1024 + 48;
    let v: Vec<_> = (0..6).map(|_| m.alloc(&mut src, n).unwrap()).collect();
    let st = m.stats();
    assert_eq!((st.regions, st.region_pages), (4, 16 + 16 + 17 + 17));
    m.audit().unwrap();
    for p in v {
        m.free(&mut src, p, n).unwrap();
    }
    m.audit().unwrap();
    // 40 KiB blocks: one per region (two would need 5 pages more), exact regions.
    let mut m2 = Mid::new();
    let n2 = 40 * 1024;
    let w: Vec<_> = (0..4).map(|_| m2.alloc(&mut src, n2).unwrap()).collect();
    assert_eq!(m2.stats().region_pages, 4 * 16);
    for p in w {
        m2.free(&mut src, p, n2).unwrap();
    }
    m.release_spare(&mut src);
    m.clear(&mut src);
    m2.release_spare(&mut src);
    m2.clear(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}
