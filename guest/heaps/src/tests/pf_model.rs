//! Page families vs a shadow model (proptest): random xcalloc/xfree including bad frees.

use core::ptr::NonNull;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::vec::Vec;

use super::{check, fill, report};
use crate::host::HostPageSource;
use crate::page_family::{FamilyId, BLOCK_HEADER};
use crate::{HeapError, PageFamilies};

/// (name, struct size): tiny, the seed's two, one near a page, one larger than a page.
const FAMILIES: [(&str, usize); 5] = [
    ("tiny", 8),
    ("emp_t", 36),
    ("student_t", 56),
    ("rec", 1500),
    ("huge", 5000),
];

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        fam: usize,
        units: usize,
        by_name: bool,
    },
    Free {
        pick: usize,
    },
    DoubleFree {
        pick: usize,
    },
    Interior {
        pick: usize,
        off: usize,
    },
    Foreign {
        which: usize,
    },
    UnknownFamily {
        id: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..FAMILIES.len(), prop_oneof![8 => 1usize..3, 2 => 3usize..12, 1 => 0usize..1], any::<bool>())
            .prop_map(|(fam, units, by_name)| Op::Alloc { fam, units, by_name }),
        7 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => any::<usize>().prop_map(|pick| Op::DoubleFree { pick }),
        1 => (any::<usize>(), 1usize..4096).prop_map(|(pick, off)| Op::Interior { pick, off }),
        1 => (0usize..3).prop_map(|which| Op::Foreign { which }),
        1 => (FAMILIES.len()..100).prop_map(|id| Op::UnknownFamily { id }),
    ]
}

struct Live {
    addr: usize,
    len: usize,
    fam: usize,
    id: u64,
}

type Pf = PageFamilies<HostPageSource>;

fn snapshot(pf: &Pf) -> (std::string::String, crate::PfAudit, usize) {
    (
        report(|w| pf.mm_print_memory_usage(w, None)),
        pf.audit().expect("audit"),
        pf.source().mapped_pages(),
    )
}

fn check_state(pf: &Pf, ids: &[FamilyId], live: &BTreeMap<usize, Live>) {
    let a = pf.audit().unwrap_or_else(|e| panic!("audit: {e}"));
    assert_eq!(pf.source().mapped_pages(), pf.pages_in_use());
    assert_eq!(a.data_pages + a.registry_pages, pf.pages_in_use());
    assert_eq!(a.blocks - a.free_blocks - a.quick_blocks, live.len());
    for (f, id) in ids.iter().enumerate() {
        let info = pf.family_info(*id).unwrap();
        let mine: Vec<&Live> = live.values().filter(|l| l.fam == f).collect();
        let bytes: usize = mine
            .iter()
            .map(|l| {
                pf.usable_size(NonNull::new(l.addr as *mut u8).unwrap())
                    .unwrap()
                    + BLOCK_HEADER
            })
            .sum();
        assert_eq!(info.alloc_bytes, bytes, "family {f}");
        assert_eq!(info.allocated_blocks(), mine.len());
        if mine.is_empty() && info.quick_blocks == 0 {
            assert_eq!(info.pages, 0, "empty family {f} keeps pages");
        }
    }
}

fn run(ops: Vec<Op>, quick: usize) {
    let mut pf = PageFamilies::new(HostPageSource::new());
    pf.set_quick_cache(quick);
    let ids: Vec<FamilyId> = FAMILIES
        .iter()
        .map(|&(n, s)| pf.mm_instantiate_new_page_family(n, s).unwrap())
        .collect();
    let mut live: BTreeMap<usize, Live> = BTreeMap::new();
    let mut freed: Vec<usize> = Vec::new();
    let foreign = [0u128; 4];
    let mut next_id = 0u64;
    for op in ops {
        match op {
            Op::Alloc {
                fam,
                units,
                by_name,
            } => {
                let p = if by_name {
                    pf.xcalloc(FAMILIES[fam].0, units)
                } else {
                    pf.xcalloc(ids[fam], units)
                }
                .unwrap();
                let addr = p.as_ptr().addr();
                let len = units.max(1) * FAMILIES[fam].1;
                assert_eq!(addr % 16, 0);
                assert!(pf.usable_size(p).unwrap() >= len);
                // No overlap with live neighbours.
                if let Some((_, prev)) = live.range(..addr).next_back() {
                    assert!(prev.addr + prev.len <= addr, "overlap with previous block");
                }
                if let Some((&next, _)) = live.range(addr..).next() {
                    assert!(addr + len <= next, "overlap with next block");
                }
                // SAFETY: the block is live and `len` bytes long.
                let zero = unsafe { core::slice::from_raw_parts(p.as_ptr(), len) };
                assert!(zero.iter().all(|&b| b == 0), "xcalloc memory not zeroed");
                fill(p.as_ptr(), len, next_id);
                live.insert(
                    addr,
                    Live {
                        addr,
                        len,
                        fam,
                        id: next_id,
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
                    "block contents corrupted"
                );
                pf.xfree(NonNull::new(addr as *mut u8).unwrap()).unwrap();
                freed.push(addr);
            }
            Op::DoubleFree { pick } => {
                // A freed address that is not a live block start again.
                let cands: Vec<usize> = freed
                    .iter()
                    .copied()
                    .filter(|a| !live.contains_key(a))
                    .collect();
                if cands.is_empty() {
                    continue;
                }
                let addr = cands[pick % cands.len()];
                let before = snapshot(&pf);
                let e = pf
                    .xfree(NonNull::new(addr as *mut u8).unwrap())
                    .unwrap_err();
                assert!(
                    matches!(e, HeapError::DoubleFree { addr: a } | HeapError::InvalidPointer { addr: a, .. } if a == addr),
                    "{e:?}"
                );
                assert_eq!(before, snapshot(&pf));
            }
            Op::Interior { pick, off } => {
                if live.is_empty() {
                    continue;
                }
                let l = live.values().nth(pick % live.len()).unwrap();
                let addr = l.addr + off % l.len.max(2).saturating_sub(1) + 1;
                let before = snapshot(&pf);
                let e = pf
                    .xfree(NonNull::new(addr as *mut u8).unwrap())
                    .unwrap_err();
                assert!(
                    matches!(e, HeapError::InvalidPointer { addr: a, .. } if a == addr),
                    "{e:?}"
                );
                assert_eq!(before, snapshot(&pf));
            }
            Op::Foreign { which } => {
                let addr = [
                    foreign.as_ptr().addr(),
                    16,
                    0x7fff_ffff_fff0, // canonical, (almost surely) unmapped
                ][which];
                let before = snapshot(&pf);
                let e = pf
                    .xfree(NonNull::new(addr as *mut u8).unwrap())
                    .unwrap_err();
                assert!(
                    matches!(e, HeapError::InvalidPointer { addr: a, .. } if a == addr),
                    "{e:?}"
                );
                assert_eq!(before, snapshot(&pf));
            }
            Op::UnknownFamily { id } => {
                let before = snapshot(&pf);
                let name = std::format!("nofam{id}");
                assert!(matches!(
                    pf.xcalloc(name.as_str(), 1),
                    Err(HeapError::UnknownFamilyName { .. })
                ));
                assert_eq!(before, snapshot(&pf));
            }
        }
        check_state(&pf, &ids, &live);
    }
    for l in live.values() {
        assert!(
            check(l.addr as *const u8, l.len, l.id),
            "block contents corrupted"
        );
    }
    for (&addr, _) in live.iter() {
        pf.xfree(NonNull::new(addr as *mut u8).unwrap()).unwrap();
    }
    pf.audit().unwrap();
    pf.flush_quick();
    pf.audit().unwrap();
    assert_eq!(pf.pages_in_use(), 0);
    assert_eq!(pf.source().mapped_pages(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn page_families_match_model(
        ops in proptest::collection::vec(op(), 1..400),
        quick in prop_oneof![2 => Just(0usize), 1 => 1usize..6],
    ) {
        run(ops, quick);
    }
}

#[test]
fn page_families_unknown_family_id() {
    let mut pf = PageFamilies::new(HostPageSource::new());
    let id = pf.mm_instantiate_new_page_family("a", 8).unwrap();
    let mut other = PageFamilies::new(HostPageSource::new());
    other.mm_instantiate_new_page_family("a", 8).unwrap();
    let id2 = other.mm_instantiate_new_page_family("b", 8).unwrap();
    assert_eq!(pf.xcalloc(id2, 1), Err(HeapError::UnknownFamily { id: 1 }));
    assert!(pf.xcalloc(id, 1).is_ok());
}
