//! The memvisor heap's parked large blocks (`memvisor/park.rs`) and the large-block policies
//! around them: tests of whole scenarios (the model test, `memvisor_model.rs`, checks the
//! invariants on random operation sequences).

use std::vec::Vec;

use super::{check, fill};
use crate::host::HostPageSource;
use crate::memvisor::{PARK, SOLO_MIN};
use crate::{MemvisorHeap, PAGE_SIZE};
use core::alloc::Layout;

type H = MemvisorHeap<HostPageSource>;

fn lay(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).expect("layout")
}

/// Parked large blocks (`memvisor/park.rs`): a freed solo block is parked and handed out
/// again, to a request of its size or a smaller one, without a call to the source; a smaller
/// request's block is cut to its request before the heap grows past its high-water mark, and
/// before a realloc resizes it (contents kept); a parked block cannot be freed or resized
/// again; at most `PARK` blocks are parked; parked blocks go back on request.
#[test]
fn freed_large_buffers_are_parked_and_reused() {
    let mut h: H = MemvisorHeap::new(HostPageSource::new(), HostPageSource::new());
    let (big, small) = (lay(270_352, 8), lay(73_744, 8));
    let p = h.alloc(big).expect("alloc");
    h.dealloc(p, big);
    let (calls, pages) = (h.mems().source().inner().calls(), h.pages_in_use());
    assert_eq!(
        h.parked().collect::<Vec<_>>(),
        [(p.as_ptr().addr(), 270_352)]
    );
    // The same size, then a smaller one, alternating: the one block serves all.
    for l in [big, small, big, small, small, big] {
        let q = h.alloc(l).expect("alloc");
        assert_eq!(q, p, "served by the parked block");
        fill(q.as_ptr(), l.size(), 3);
        h.dealloc(q, l);
    }
    assert_eq!(h.mems().source().inner().calls(), calls, "no source call");
    assert_eq!(h.pages_in_use(), pages);
    // A freed (parked) block is refused by dealloc and realloc, and nothing changes.
    h.dealloc(p, big);
    assert!(h.realloc(p, big, 300_000).is_none());
    assert_eq!(h.stats().bad_frees, 2);
    assert_eq!(h.parked().count(), 1);
    // A small request takes the big block (loose); the heap grows past its mark for a second
    // big block only after the loose block is cut to its request.
    let q = h.alloc(small).expect("alloc");
    fill(q.as_ptr(), small.size(), 5);
    let r = h.alloc(big).expect("alloc");
    assert_eq!(
        h.mems().mems_usable_size(q).expect("live"),
        73_744,
        "the loose block was cut to its request"
    );
    assert!(check(q.as_ptr(), small.size(), 5));
    assert!(h.pages_in_use() <= pages + 73_744usize.div_ceil(PAGE_SIZE));
    // A realloc of a loose block cuts it first, keeping its contents.
    h.dealloc(r, big);
    let q2 = h.alloc(lay(100_000, 8)).expect("alloc");
    assert_eq!(q2, r, "the parked big block");
    fill(q2.as_ptr(), 100_000, 9);
    let q3 = h.realloc(q2, lay(100_000, 8), 120_000).expect("realloc");
    assert!(check(q3.as_ptr(), 100_000, 9));
    assert!(h.mems().mems_usable_size(q3).expect("live") < 270_352);
    h.dealloc(q3, lay(120_000, 8));
    h.dealloc(q, small);
    // The bound: more frees than PARK park the newest PARK blocks.
    let v: Vec<_> = (0..PARK + 3)
        .map(|i| {
            let l = lay(SOLO_MIN + i * PAGE_SIZE, 8);
            (h.alloc(l).expect("alloc"), l)
        })
        .collect();
    for &(b, l) in &v {
        h.dealloc(b, l);
    }
    let mut parked: Vec<usize> = h.parked().map(|b| b.0).collect();
    let mut newest: Vec<usize> = v[v.len() - PARK..]
        .iter()
        .map(|b| b.0.as_ptr().addr())
        .collect();
    parked.sort_unstable();
    newest.sort_unstable();
    assert_eq!(parked, newest);
    h.release_parked();
    assert_eq!(h.parked().count(), 0);
    assert_eq!(h.mems().audit().expect("MeMS audit").process_segments, 0);
    assert_eq!(h.stats().live, [0, 0]);
    assert_eq!(h.stats().bad_frees, 2);
}
