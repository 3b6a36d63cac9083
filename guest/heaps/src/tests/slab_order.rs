//! The order of a slab class's partly used slabs (`memvisor/slab.rs`, [`QUEUE_FROM`]): a full
//! slab that gets a slot back is the next one allocated from while its class has few partly
//! used slabs, and waits behind the head once it has [`QUEUE_FROM`] or more.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::vec::Vec;

use crate::host::HostPageSource;
use crate::memvisor::{route, Route, NSLOTS, QUEUE_FROM};
use crate::{MemvisorHeap, PAGE_SIZE};

type H = MemvisorHeap<HostPageSource>;

fn slab_of(p: NonNull<u8>) -> usize {
    p.as_ptr().addr() & !(PAGE_SIZE - 1)
}

/// `partial` slabs of the 176-byte class get a slot back, then one more full slab does;
/// returns whether the next 176-byte block comes from that last slab.
fn next_block_from_the_slab_that_got_a_slot_back(partial: usize) -> bool {
    let mut h: H = MemvisorHeap::new(HostPageSource::new(), HostPageSource::new());
    let l = Layout::from_size_align(176, 8).expect("layout");
    let Route::Slab(c) = route(176, 8) else {
        panic!("176 B not on a slab")
    };
    let per = NSLOTS[c] as usize;
    let n = partial + 2;
    let v: Vec<_> = (0..per * n).map(|_| h.alloc(l).expect("alloc")).collect();
    let mut slabs: Vec<usize> = Vec::new();
    for &p in &v {
        if !slabs.contains(&slab_of(p)) {
            slabs.push(slab_of(p));
        }
    }
    assert_eq!(slabs.len(), n, "every slab full");
    let first_block_of = |s: usize| *v.iter().find(|&&p| slab_of(p) == s).expect("block");
    for &s in &slabs[..partial] {
        h.dealloc(first_block_of(s), l);
    }
    let x = slabs[n - 1];
    h.dealloc(first_block_of(x), l);
    let a = h.audit_slabs().expect("slab audit");
    assert_eq!(a.slabs[c], n);
    let q = h.alloc(l).expect("alloc");
    h.audit_slabs().expect("slab audit");
    slab_of(q) == x
}

#[test]
fn a_slab_that_gets_a_slot_back_is_next_in_a_class_with_few_partial_slabs() {
    assert!(next_block_from_the_slab_that_got_a_slot_back(0));
    assert!(next_block_from_the_slab_that_got_a_slot_back(
        QUEUE_FROM as usize - 1
    ));
}

#[test]
fn a_slab_that_gets_a_slot_back_waits_behind_the_head_in_a_fragmented_class() {
    assert!(!next_block_from_the_slab_that_got_a_slot_back(
        QUEUE_FROM as usize
    ));
    assert!(!next_block_from_the_slab_that_got_a_slot_back(
        QUEUE_FROM as usize + 5
    ));
}

/// Random churn in two classes with many partly used slabs (so both list orders occur):
/// no block is handed out twice, and the audit (lists, counts, the partial slab count)
/// holds throughout and after everything is freed.
#[test]
fn churn_with_many_partial_slabs_keeps_the_lists_consistent() {
    let mut h: H = MemvisorHeap::new(HostPageSource::new(), HostPageSource::new());
    let ls = [
        Layout::from_size_align(176, 8).expect("layout"),
        Layout::from_size_align(48, 8).expect("layout"),
    ];
    let mut live: Vec<(NonNull<u8>, usize)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for i in 0..40_000 {
        // Grow to 3,000 blocks, then shrink to a tenth, then churn.
        let grow = if i < 6_000 {
            true
        } else if i < 12_000 {
            live.len() < 300
        } else {
            rnd(2) == 0
        };
        if grow || live.is_empty() {
            let k = rnd(2);
            let p = h.alloc(ls[k]).expect("alloc");
            assert!(seen.insert(p.as_ptr().addr()), "block handed out twice");
            live.push((p, k));
        } else {
            let j = rnd(live.len());
            let (p, k) = live.swap_remove(j);
            seen.remove(&p.as_ptr().addr());
            h.dealloc(p, ls[k]);
        }
        if i % 997 == 0 {
            h.audit_slabs().expect("slab audit");
        }
    }
    for (p, k) in live {
        h.dealloc(p, ls[k]);
    }
    let a = h.audit_slabs().expect("slab audit");
    assert_eq!(a.live, 0);
    assert_eq!(h.stats().bad_frees, 0);
}

/// A class without a slab borrows from the class it borrowed from last while that class has
/// a free slot (`Class::lend`), and takes a slab of its own once no lender has one.
#[test]
fn a_class_without_a_slab_keeps_borrowing_from_its_lender() {
    let mut h: H = MemvisorHeap::new(HostPageSource::new(), HostPageSource::new());
    let (l40, l48) = (
        Layout::from_size_align(40, 8).expect("layout"),
        Layout::from_size_align(48, 8).expect("layout"),
    );
    let Route::Slab(c48) = route(48, 8) else {
        panic!("48 B not on a slab")
    };
    let first = h.alloc(l48).expect("alloc");
    let page = slab_of(first);
    for _ in 0..3 {
        let v: Vec<_> = (0..10).map(|_| h.alloc(l40).expect("alloc")).collect();
        assert!(
            v.iter().all(|&p| slab_of(p) == page),
            "borrowed from the 48 B slab"
        );
        for p in v {
            h.dealloc(p, l40);
        }
        assert_eq!(h.audit_slabs().expect("slab audit").live, 1);
    }
    // Fill the 48 B slab with 40 B blocks: the next one takes a slab of its own.
    let rest: Vec<_> = (1..NSLOTS[c48] as usize)
        .map(|_| h.alloc(l40).expect("alloc"))
        .collect();
    assert!(rest.iter().all(|&p| slab_of(p) == page));
    let own = h.alloc(l40).expect("alloc");
    assert_ne!(slab_of(own), page);
    let a = h.audit_slabs().expect("slab audit");
    assert_eq!(a.live, NSLOTS[c48] as usize + 1);
    for p in rest {
        h.dealloc(p, l40);
    }
    h.dealloc(own, l40);
    h.dealloc(first, l48);
    assert_eq!(h.audit_slabs().expect("slab audit").live, 0);
    assert_eq!(h.stats().bad_frees, 0);
}
