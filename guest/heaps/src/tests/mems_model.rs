//! MeMS vs a shadow model (proptest): random malloc/free (aligned too), in-place resizes and bad
//! frees, with and without the growth policy (minimum node size, solo nodes).

use core::ptr::NonNull;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::vec::Vec;

use super::{check, fill, report};
use crate::host::HostPageSource;
use crate::{HeapError, Mems, PAGE_SIZE};

#[derive(Debug, Clone)]
enum Op {
    Alloc { size: usize, align: usize },
    Free { pick: usize },
    DoubleFree { pick: usize },
    Interior { pick: usize, off: usize },
    Foreign { which: usize },
    Resize { pick: usize, size: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        6 => 0usize..300,
        3 => 300usize..5000,
        1 => 5000usize..40000,
    ];
    let align = prop_oneof![8 => Just(16usize), 1 => Just(64), 1 => Just(4096), 1 => Just(16384)];
    prop_oneof![
        10 => (size, align).prop_map(|(size, align)| Op::Alloc { size, align }),
        7 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => any::<usize>().prop_map(|pick| Op::DoubleFree { pick }),
        1 => (any::<usize>(), 1usize..40000).prop_map(|(pick, off)| Op::Interior { pick, off }),
        1 => (0usize..3).prop_map(|which| Op::Foreign { which }),
        2 => (any::<usize>(), prop_oneof![3 => 0usize..5000, 1 => 5000usize..40000])
            .prop_map(|(pick, size)| Op::Resize { pick, size }),
    ]
}

struct Live {
    len: usize,
    id: u64,
    /// Pages of its solo main node, if it got one.
    solo: Option<usize>,
}

/// Growth policy of a run: `(min_grow_pages, solo_min)`.
type Policy = (usize, usize);

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just((1, usize::MAX)),
        (
            1usize..6,
            prop_oneof![Just(4096usize), Just(8192), Just(20000)]
        ),
    ]
}

type M = Mems<HostPageSource>;

fn snapshot(m: &M) -> (std::string::String, crate::MemsAudit, usize) {
    (
        report(|w| m.mems_print_stats(w)),
        m.audit().expect("audit"),
        m.source().mapped_pages(),
    )
}

fn run(ops: Vec<Op>, release_empty: bool, (min_grow, solo_min): Policy) {
    let mut m = Mems::new(HostPageSource::new());
    m.set_release_empty(release_empty);
    m.set_min_grow_pages(min_grow);
    m.set_solo_min(solo_min);
    let mut live: BTreeMap<usize, Live> = BTreeMap::new();
    let mut freed: Vec<usize> = Vec::new();
    let foreign = [0u128; 4];
    let mut next_id = 0u64;
    for op in ops {
        match op {
            Op::Alloc { size, align } => {
                let p = if align == 16 {
                    m.mems_malloc(size)
                } else {
                    m.mems_alloc_aligned(size, align)
                }
                .unwrap();
                let addr = p.as_ptr().addr();
                assert_eq!(addr % align, 0);
                let usable = m.mems_usable_size(p).unwrap();
                assert!(usable >= size.max(1) && usable < size.max(1) + 16);
                if let Some((&pa, prev)) = live.range(..addr).next_back() {
                    assert!(pa + prev.len <= addr, "overlap with previous segment");
                }
                if let Some((&next, _)) = live.range(addr..).next() {
                    assert!(addr + size <= next, "overlap with next segment");
                }
                assert!(m.mems_get(p.as_ptr()).is_some());
                fill(p.as_ptr(), size, next_id);
                let rounded = size.max(1).next_multiple_of(16);
                let solo = (rounded >= solo_min)
                    .then(|| (rounded + align.saturating_sub(PAGE_SIZE)).div_ceil(PAGE_SIZE));
                live.insert(
                    addr,
                    Live {
                        len: size,
                        id: next_id,
                        solo,
                    },
                );
                freed.retain(|&f| f != addr);
                next_id += 1;
            }
            Op::Free { pick } => {
                if live.is_empty() {
                    continue;
                }
                let addr = *live.keys().nth(pick % live.len()).unwrap();
                let l = live.remove(&addr).unwrap();
                assert!(
                    check(addr as *const u8, l.len, l.id),
                    "segment contents corrupted"
                );
                let pages = m.data_pages();
                m.mems_free(NonNull::new(addr as *mut u8).unwrap()).unwrap();
                if let Some(n) = l.solo {
                    // A solo node goes back at once, whatever `release_empty` says.
                    assert_eq!(m.data_pages(), pages - n, "solo node not released");
                }
                freed.push(addr);
            }
            Op::Resize { pick, size } => {
                if live.is_empty() {
                    continue;
                }
                let addr = *live.keys().nth(pick % live.len()).unwrap();
                let p = NonNull::new(addr as *mut u8).unwrap();
                let old = m.mems_usable_size(p).unwrap();
                let before = snapshot(&m);
                let next_live = live.range(addr + 1..).next().map(|(&a, _)| a);
                if m.mems_resize_in_place(p, size).unwrap() {
                    let usable = m.mems_usable_size(p).unwrap();
                    assert!(usable >= size.max(1) && usable < size.max(1) + 16);
                    if let Some(nx) = next_live {
                        assert!(addr + usable <= nx, "resize overlaps the next segment");
                    }
                    let l = live.get_mut(&addr).unwrap();
                    assert!(
                        check(p.as_ptr(), l.len.min(size), l.id),
                        "contents moved or corrupted by a resize"
                    );
                    l.len = size;
                    fill(p.as_ptr(), size, l.id);
                } else {
                    assert!(
                        size.max(1).next_multiple_of(16) > old,
                        "a shrink must succeed"
                    );
                    assert_eq!(before, snapshot(&m), "a refused resize changed the heap");
                }
            }
            Op::DoubleFree { pick } => {
                let cands: Vec<usize> = freed
                    .iter()
                    .copied()
                    .filter(|a| !live.contains_key(a))
                    .collect();
                if cands.is_empty() {
                    continue;
                }
                let addr = cands[pick % cands.len()];
                let inside_live = live
                    .range(..addr)
                    .next_back()
                    .is_some_and(|(&a, l)| addr < a + l.len.max(1));
                let before = snapshot(&m);
                let e = m
                    .mems_free(NonNull::new(addr as *mut u8).unwrap())
                    .unwrap_err();
                if inside_live {
                    assert!(
                        matches!(e, HeapError::InvalidPointer { addr: a, .. } if a == addr),
                        "{e:?}"
                    );
                } else {
                    assert!(
                        matches!(e, HeapError::DoubleFree { addr: a } | HeapError::InvalidPointer { addr: a, .. } if a == addr),
                        "{e:?}"
                    );
                }
                assert_eq!(before, snapshot(&m));
            }
            Op::Interior { pick, off } => {
                if live.is_empty() {
                    continue;
                }
                let (&a, l) = live.iter().nth(pick % live.len()).unwrap();
                let addr = a + 1 + off % l.len.max(1);
                if live.contains_key(&addr) {
                    continue;
                }
                let before = snapshot(&m);
                let e = m
                    .mems_free(NonNull::new(addr as *mut u8).unwrap())
                    .unwrap_err();
                assert!(
                    matches!(e, HeapError::InvalidPointer { addr: x, .. } | HeapError::DoubleFree { addr: x } if x == addr),
                    "{e:?}"
                );
                if addr < a + l.len {
                    assert!(matches!(e, HeapError::InvalidPointer { .. }));
                }
                assert_eq!(before, snapshot(&m));
            }
            Op::Foreign { which } => {
                let addr = [foreign.as_ptr().addr(), 16, 0x7fff_ffff_fff0][which];
                let before = snapshot(&m);
                let e = m
                    .mems_free(NonNull::new(addr as *mut u8).unwrap())
                    .unwrap_err();
                assert!(
                    matches!(e, HeapError::InvalidPointer { addr: a, .. } if a == addr),
                    "{e:?}"
                );
                assert_eq!(m.mems_get(addr as *const u8), None);
                assert_eq!(before, snapshot(&m));
            }
        }
        let a = m.audit().unwrap_or_else(|e| panic!("audit: {e}"));
        assert_eq!(m.source().mapped_pages(), m.pages_in_use());
        assert_eq!(
            a.data_pages + a.pool_pages + a.table_pages,
            m.pages_in_use()
        );
        assert_eq!(a.data_pages * PAGE_SIZE, a.process_bytes + a.hole_bytes);
        assert_eq!(a.process_segments, live.len());
        let live_bytes: usize = live
            .keys()
            .map(|&p| {
                m.mems_usable_size(NonNull::new(p as *mut u8).unwrap())
                    .unwrap()
            })
            .sum();
        assert_eq!(a.process_bytes, live_bytes);
        if release_empty && live.is_empty() {
            assert_eq!(m.pages_in_use(), 0);
        }
    }
    for (&a, l) in &live {
        assert!(
            check(a as *const u8, l.len, l.id),
            "segment contents corrupted"
        );
    }
    for &a in live.keys() {
        m.mems_free(NonNull::new(a as *mut u8).unwrap()).unwrap();
    }
    let a = m.audit().unwrap();
    assert_eq!(a.process_segments, 0);
    if release_empty {
        assert_eq!(m.source().mapped_pages(), 0);
    } else {
        // Seed semantics: every main node is one hole, kept until mems_finish.
        assert_eq!(a.holes, a.main_nodes);
    }
    m.mems_finish();
    assert_eq!(m.pages_in_use(), 0);
    assert_eq!(m.source().mapped_pages(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn mems_matches_model(
        ops in proptest::collection::vec(op(), 1..400),
        release in any::<bool>(),
        policy in policy(),
    ) {
        run(ops, release, policy);
    }
}
