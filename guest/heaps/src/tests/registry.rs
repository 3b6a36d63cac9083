use crate::host::HostPageSource;
use crate::registry::PageRegistry;

/// The lookup cache never serves a page unregistered by a range removal, big or small;
/// inline runs and the tree alike.
#[test]
fn cache_drops_removed_ranges() {
    for inline in [true, false] {
        let mut src = HostPageSource::new();
        let mut r = if inline {
            PageRegistry::new()
        } else {
            PageRegistry::tree_only()
        };
        let (a, b) = (0x4000_0000usize, 0x4010_0000usize);
        r.insert_range(&mut src, a, 1, 5).unwrap();
        r.insert_range(&mut src, b, 40, 7).unwrap();
        // Cached now.
        assert_eq!((r.get(a), r.get(b), r.get(b + 39 * 4096)), (5, 7, 7));
        r.remove_range(&mut src, b, 40);
        assert_eq!((r.get(a), r.get(b), r.get(b + 39 * 4096)), (5, 0, 0));
        // Again, with another value.
        r.insert_range(&mut src, b, 40, 9).unwrap();
        assert_eq!((r.get(a), r.get(b + 4096)), (5, 9));
        r.remove_range(&mut src, b, 40);
        assert_eq!((r.get(a), r.get(b), r.get(b + 4096)), (5, 0, 0));
        // A removal of a few pages updates their slots only.
        r.insert_range(&mut src, b, 4, 3).unwrap();
        assert_eq!(r.get(b + 3 * 4096), 3);
        r.remove_range(&mut src, b + 2 * 4096, 2);
        assert_eq!((r.get(a), r.get(b), r.get(b + 2 * 4096)), (5, 3, 0));
        r.remove_range(&mut src, b, 2);
        r.remove_range(&mut src, a, 1);
        assert_eq!((r.entries(), r.node_pages(), src.mapped_pages()), (0, 0, 0));
    }
}

#[test]
fn insert_get_remove_frees_nodes() {
    let mut src = HostPageSource::new();
    let mut r = PageRegistry::tree_only();
    let a = 0x7f12_3456_7000usize;
    let b = 0xffff_ffff_8020_0000usize; // upper half (kernel image)
    r.insert(&mut src, a, 11).unwrap();
    assert_eq!(r.node_pages(), 1, "one key: the root is a leaf");
    let w = a & !0x1f_ffff; // a's 2 MiB window
    r.insert(&mut src, w + 511 * 4096, 12).unwrap();
    assert_eq!(r.node_pages(), 1, "same 2 MiB window");
    r.insert(&mut src, w + 512 * 4096, 13).unwrap();
    assert_eq!(r.node_pages(), 3, "two leaves under a root");
    r.remove(&mut src, w + 512 * 4096);
    assert_eq!(r.node_pages(), 1, "shrinks back to one leaf");
    assert_eq!(r.get(w + 511 * 4096), 12);
    r.remove(&mut src, w + 511 * 4096);
    r.insert(&mut src, b, 22).unwrap();
    assert_eq!(r.get(a), 11);
    assert_eq!(r.get(a + 0xfff), 11);
    assert_eq!(r.get(a + 0x1000), 0);
    assert_eq!(r.get(b + 5), 22);
    // Same low 36 bits of the page number but the other half of the address space.
    assert_eq!(r.get(b & 0x0000_ffff_ffff_ffff), 0);
    assert_eq!(r.get(0x0001_0000_0000_0000), 0, "non-canonical");
    assert_eq!(r.node_pages(), 7); // root + 2 * (3 levels)
    assert_eq!(src.mapped_pages(), 7);
    assert_eq!(r.remove(&mut src, a), 11);
    assert_eq!(r.remove(&mut src, a), 0);
    assert_eq!(r.node_pages(), 1, "b's leaf is the root again");
    assert_eq!(r.remove(&mut src, b), 22);
    assert_eq!(r.node_pages(), 0);
    assert_eq!(src.mapped_pages(), 0);
}

#[test]
fn ranges_and_failed_insert_roll_back() {
    let mut src = HostPageSource::new();
    let mut r = PageRegistry::tree_only();
    // 1030 pages crossing two leaf boundaries.
    let base = 0x4000_0000usize - 3 * 4096;
    r.insert_range(&mut src, base, 1030, 7).unwrap();
    assert_eq!(r.entries(), 1030);
    for i in 0..1030 {
        assert_eq!(r.get(base + i * 4096), 7);
    }
    assert_eq!(r.get(base - 1), 0);
    assert_eq!(r.get(base + 1030 * 4096), 0);
    let pages = r.node_pages();
    // A range that needs new nodes but the source is out of pages: nothing stays.
    src.set_limit(Some(src.mapped_pages()));
    assert!(r.insert_range(&mut src, 0x7000_0000_0000, 3, 9).is_err());
    assert_eq!(r.node_pages(), pages);
    assert_eq!(r.get(0x7000_0000_0000), 0);
    src.set_limit(None);
    r.remove_range(&mut src, base, 1030);
    assert_eq!((r.entries(), r.node_pages(), src.mapped_pages()), (0, 0, 0));
    r.insert(&mut src, base, 1).unwrap();
    r.clear(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

#[test]
fn few_runs_stay_inline_then_spill() {
    use crate::registry::RUNS_INLINE;
    let mut src = HostPageSource::new();
    let mut r = PageRegistry::new();
    // Runs in different 2 MiB windows and both halves: no node page while inline.
    let top = 0xffff_ffff_ffff_f000usize; // the last page of the address space
    r.insert_range(&mut src, top, 1, 5).unwrap();
    r.insert_range(&mut src, 0x4000_0000, 67, 1).unwrap();
    r.insert_range(&mut src, 0x7000_0000_0000, 16, 2).unwrap();
    assert_eq!(
        (r.node_pages(), src.mapped_pages(), r.entries()),
        (0, 0, 84)
    );
    assert_eq!(r.get(top + 0xfff), 5);
    assert_eq!(r.get(0x4000_0000 + 66 * 4096 + 5), 1);
    assert_eq!(r.get(0x4000_0000 + 67 * 4096), 0);
    assert_eq!(r.get(0x7000_0000_0000 - 1), 0);
    // Pages registered with their own address join one run, at either end.
    let own = 0x2000_0000usize;
    for j in (0..20).rev().chain(20..40) {
        r.insert_range(&mut src, own + j * 4096, 1, own + j * 4096)
            .unwrap();
    }
    assert_eq!((r.inline_runs(), r.node_pages(), r.entries()), (4, 0, 124));
    assert_eq!(r.get(own + 39 * 4096 + 8), own + 39 * 4096);
    assert_eq!(r.get(own + 40 * 4096), 0);
    r.remove_range(&mut src, own, 40);
    assert_eq!((r.inline_runs(), r.entries()), (3, 84));
    // A removal inside a run splits it; the ends read right.
    r.remove_range(&mut src, 0x4000_0000 + 10 * 4096, 5);
    assert_eq!(r.inline_runs(), 4);
    assert_eq!(r.get(0x4000_0000 + 9 * 4096), 1);
    assert_eq!(r.get(0x4000_0000 + 10 * 4096), 0);
    assert_eq!(r.get(0x4000_0000 + 14 * 4096), 0);
    assert_eq!(r.get(0x4000_0000 + 15 * 4096), 1);
    assert_eq!(r.entries(), 79);
    // Past RUNS_INLINE runs, the runs move into the tree.
    for i in 0..RUNS_INLINE {
        r.insert_range(&mut src, 0x5000_0000 + i * 8192, 1, 9)
            .unwrap();
    }
    assert_eq!(r.inline_runs(), 0);
    assert!(r.node_pages() > 0);
    assert_eq!(r.node_pages(), src.mapped_pages());
    assert_eq!(r.entries(), 79 + RUNS_INLINE);
    assert_eq!(r.get(top), 5);
    assert_eq!(r.get(0x4000_0000 + 15 * 4096), 1);
    assert_eq!(r.get(0x4000_0000 + 12 * 4096), 0);
    // Emptied, the tree unmaps its nodes; the next runs are inline again.
    r.remove_range(&mut src, 0x4000_0000, 67);
    r.remove_range(&mut src, 0x7000_0000_0000, 16);
    r.remove_range(&mut src, 0x5000_0000, RUNS_INLINE * 2);
    r.remove_range(&mut src, top, 1);
    assert_eq!((r.entries(), r.node_pages(), src.mapped_pages()), (0, 0, 0));
    r.insert_range(&mut src, 0x4000_0000, 3, 7).unwrap();
    assert_eq!((r.inline_runs(), r.node_pages()), (1, 0));
    // A spill that cannot map a node page fails and changes nothing.
    for i in 1..RUNS_INLINE {
        r.insert_range(&mut src, 0x5000_0000 + i * 8192, 1, 9)
            .unwrap();
    }
    src.set_limit(Some(0));
    assert!(r.insert_range(&mut src, 0x6000_0000, 1, 3).is_err());
    assert_eq!(
        (r.inline_runs(), r.node_pages(), r.entries()),
        (RUNS_INLINE, 0, 3 + RUNS_INLINE - 1)
    );
    assert_eq!(r.get(0x4000_0000 + 2 * 4096), 7);
    assert_eq!(r.get(0x6000_0000), 0);
    // Splits use the spare slots; with none left and no page, the split run's tail is
    // unregistered (counted), never left stale.
    r.remove_range(&mut src, 0x4000_0000 + 4096, 1);
    assert_eq!(r.get(0x4000_0000), 7);
    assert_eq!(r.get(0x4000_0000 + 4096), 0);
    assert_eq!(r.get(0x4000_0000 + 2 * 4096), 7);
    assert_eq!(r.dropped_pages(), 0);
    r.clear(&mut src);
    assert_eq!(
        (r.entries(), r.inline_runs(), src.mapped_pages()),
        (0, 0, 0)
    );
    src.set_limit(None);
}

/// A split of an inline run with every slot in use and no page for the tree unregisters
/// the run's tail (counted), never leaves it stale.
#[test]
fn split_without_slot_or_page_drops_the_tail() {
    use crate::registry::RUNS;
    let mut src = HostPageSource::new();
    let mut r = PageRegistry::with_inline_max(RUNS);
    let base = 0x4000_0000usize;
    for i in 0..RUNS {
        r.insert_range(&mut src, base + i * 4 * 4096, 3, 5).unwrap();
    }
    assert_eq!(
        (r.inline_runs(), r.node_pages(), r.entries()),
        (RUNS, 0, 3 * RUNS)
    );
    src.set_limit(Some(0));
    r.remove_range(&mut src, base + 4096, 1);
    assert_eq!(r.dropped_pages(), 1);
    assert_eq!(r.get(base), 5);
    assert_eq!(r.get(base + 4096), 0);
    assert_eq!(r.get(base + 2 * 4096), 0, "the dropped tail");
    assert_eq!(r.get(base + 4 * 4096), 5);
    assert_eq!(r.entries(), 3 * RUNS - 2);
    // With a page, a split spills the runs into the tree instead.
    src.set_limit(None);
    r.remove_range(&mut src, base + 5 * 4096, 1);
    assert_eq!(r.inline_runs(), 0);
    assert!(r.node_pages() > 0);
    assert_eq!(
        (
            r.get(base + 4 * 4096),
            r.get(base + 5 * 4096),
            r.get(base + 6 * 4096)
        ),
        (5, 0, 5)
    );
    assert_eq!(r.entries(), 3 * RUNS - 3);
    r.clear(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, usize),
        /// Pages `p .. p + n` each registered with its own address as the value (even
        /// offsets downwards, then odd ones upwards: runs grow at both ends and meet).
        InsertOwn(usize, usize),
        InsertRange(usize, usize, usize),
        Remove(usize),
        RemoveRange(usize, usize),
        /// `set_range`: registered pages take a new value in place (nothing is mapped).
        SetRange(usize, usize, usize),
    }

    // Pages near leaf (512) and level-2 (512 * 512) boundaries, in both halves.
    fn page() -> impl Strategy<Value = usize> {
        let bases = prop_oneof![
            Just(0x4000_0000usize),
            Just(0x7fff_ffe0_0000usize),
            Just(0xffff_ffff_8000_0000usize),
        ];
        (bases, -1100i64..1100).prop_map(|(b, o)| (b as i64 + o * 4096) as usize)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (page(), 1usize..4).prop_map(|(p, v)| Op::Insert(p, v)),
            (page(), 1usize..40).prop_map(|(p, n)| Op::InsertOwn(p, n)),
            (page(), 0usize..1100, 1usize..4).prop_map(|(p, n, v)| Op::InsertRange(p, n, v)),
            page().prop_map(Op::Remove),
            (page(), 0usize..1100).prop_map(|(p, n)| Op::RemoveRange(p, n)),
            (page(), 1usize..1100, 5usize..8).prop_map(|(p, n, v)| Op::SetRange(p, n, v)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Range operations (one walk per leaf) agree with a page → value map; nodes are
        /// unmapped as soon as they empty; a failed insert leaves nothing behind.
        #[test]
        fn registry_matches_model(
            ops in proptest::collection::vec(op(), 1..24),
            limit in 0usize..3,
            inline_max in prop_oneof![Just(0usize), 1usize..6, Just(crate::registry::RUNS_INLINE)],
        ) {
            model(&ops, limit, inline_max)?;
        }
    }

    /// The model run of `registry_matches_model`.
    fn model(ops: &[Op], limit: usize, inline_max: usize) -> Result<(), TestCaseError> {
        let inline = inline_max != 0;
        let mut src = HostPageSource::new();
        let mut r = PageRegistry::with_inline_max(inline_max);
        let mut m: BTreeMap<usize, usize> = BTreeMap::new();
        let mut dropped = 0;
        for (i, op) in ops.iter().enumerate() {
            // Every few ops, run out of node pages after `limit` more.
            let starve = i % 5 == 4;
            if starve {
                src.set_limit(Some(src.mapped_pages() + limit));
            }
            match *op {
                Op::Insert(p, v) => {
                    if r.insert(&mut src, p + 7, v).is_ok() {
                        m.insert(p, v);
                    }
                }
                Op::InsertOwn(p, n) => {
                    let evens = (0..n).rev().filter(|j| j % 2 == 0);
                    for j in evens.chain((0..n).filter(|j| j % 2 == 1)) {
                        let q = p + j * 4096;
                        if r.insert_range(&mut src, q, 1, q).is_ok() {
                            m.insert(q, q);
                        }
                    }
                }
                Op::InsertRange(p, n, v) => {
                    if r.insert_range(&mut src, p, n, v).is_ok() {
                        for j in 0..n {
                            m.insert(p + j * 4096, v);
                        }
                    } else {
                        // Rolled back: the pages filled before the failure are
                        // unregistered; the ones after it keep their old values.
                        for j in 0..n {
                            let q = p + j * 4096;
                            match r.get(q) {
                                0 => {
                                    m.remove(&q);
                                }
                                got => prop_assert_eq!(Some(&got), m.get(&q)),
                            }
                        }
                    }
                }
                Op::Remove(p) => {
                    prop_assert_eq!(r.remove(&mut src, p + 9), m.remove(&p).unwrap_or(0));
                }
                Op::RemoveRange(p, n) => {
                    r.remove_range(&mut src, p, n);
                    for j in 0..n {
                        m.remove(&(p + j * 4096));
                    }
                }
                Op::SetRange(p, n, v) => {
                    // In the tree every registered page of the range takes the value;
                    // inline, the runs wholly inside it. No page is registered anew.
                    let tree = r.inline_runs() == 0;
                    let mapped = src.mapped_pages();
                    let set = r.set_range(p, n, v);
                    prop_assert_eq!(src.mapped_pages(), mapped);
                    // Pages that changed, and pages that already had the value (either).
                    let (mut changed, mut same) = (0, 0);
                    for j in 0..n {
                        let q = p + j * 4096;
                        let got = r.get(q);
                        match m.get(&q).copied() {
                            None => prop_assert_eq!(got, 0),
                            Some(old) if old == v => {
                                prop_assert_eq!(got, v);
                                same += 1;
                            }
                            Some(_) if got == v => {
                                changed += 1;
                                m.insert(q, v);
                            }
                            Some(old) => {
                                prop_assert!(!tree, "a tree entry kept its value");
                                prop_assert_eq!(got, old);
                            }
                        }
                    }
                    prop_assert!(changed <= set && set <= changed + same);
                }
            }
            if starve {
                src.set_limit(None);
            }
            if r.dropped_pages() != dropped {
                // Only after a split with every inline slot in use and no page: those
                // pages read 0 (never stale), the others keep their values.
                prop_assert!(starve);
                let before = m.len();
                m.retain(|&p, _| r.get(p) != 0);
                prop_assert_eq!(before - m.len(), r.dropped_pages() - dropped);
                dropped = r.dropped_pages();
            }
            if r.inline_runs() != 0 {
                prop_assert_eq!(r.node_pages(), 0);
            }
            prop_assert_eq!(r.entries(), m.len());
            prop_assert_eq!(r.node_pages(), src.mapped_pages());
            // The tree is only as tall as the keys need: keys of one 2 MiB window take
            // a single leaf.
            let mut windows = m.keys().map(|&p| ((p >> 12) & ((1 << 36) - 1)) >> 9);
            if let Some(w) = windows.next() {
                if windows.all(|x| x == w) {
                    prop_assert!(r.node_pages() <= 1);
                    if !inline {
                        prop_assert_eq!(r.node_pages(), 1);
                    }
                }
            }
            for (&p, &v) in &m {
                prop_assert_eq!(r.get(p), v);
                prop_assert_eq!(r.get(p + 4095), v);
            }
            // Neighbours of every touched range agree too (absent ones read 0).
            if let Op::InsertRange(p, n, _) | Op::RemoveRange(p, n) = *op {
                for j in [0usize, n / 2, n.saturating_sub(1), n] {
                    let q = p + j * 4096;
                    prop_assert_eq!(r.get(q), m.get(&q).copied().unwrap_or(0));
                }
                let q = p.wrapping_sub(4096);
                prop_assert_eq!(r.get(q), m.get(&q).copied().unwrap_or(0));
            }
        }
        // Every node page the tree holds is needed: emptying it unmaps them all.
        let keys: Vec<usize> = m.keys().copied().collect();
        for p in keys {
            r.remove(&mut src, p);
        }
        prop_assert_eq!((r.entries(), r.node_pages(), src.mapped_pages()), (0, 0, 0));
        Ok(())
    }
}
