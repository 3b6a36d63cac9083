//! Longer deterministic random runs of both heaps (overlap and content checks, periodic
//! audits), like the heap-stress scenario but smaller.

use core::ptr::NonNull;
use std::collections::BTreeMap;
use std::vec::Vec;

use super::{check, fill};
use crate::host::HostPageSource;
use crate::{Mems, PageFamilies, PageSource};

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn no_overlap(live: &BTreeMap<usize, (usize, u64)>, addr: usize, len: usize) {
    if let Some((&a, &(l, _))) = live.range(..addr).next_back() {
        assert!(a + l <= addr, "overlap");
    }
    if let Some((&a, _)) = live.range(addr..).next() {
        assert!(addr + len <= a, "overlap");
    }
}

#[test]
fn page_families_stress() {
    let mut pf = PageFamilies::new(HostPageSource::new());
    pf.set_quick_cache(16);
    pf.set_empty_page_cache(1);
    let sizes = [8usize, 24, 40, 56, 100, 250, 1000, 2040];
    let ids: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let name: &'static str = std::boxed::Box::leak(std::format!("c{i}").into_boxed_str());
            pf.mm_instantiate_new_page_family(name, s).unwrap()
        })
        .collect();
    let mut live: BTreeMap<usize, (usize, u64)> = BTreeMap::new();
    let mut slots: Vec<Option<usize>> = std::vec![None; 3000];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for step in 0..60_000u64 {
        let k = xorshift(&mut seed) as usize % slots.len();
        if let Some(addr) = slots[k].take() {
            let (len, id) = live.remove(&addr).unwrap();
            assert!(check(addr as *const u8, len, id));
            pf.xfree(NonNull::new(addr as *mut u8).unwrap()).unwrap();
        } else {
            let c = xorshift(&mut seed) as usize % sizes.len();
            let units = if xorshift(&mut seed) & 15 == 0 { 3 } else { 1 };
            let p = pf.xmalloc(ids[c], units).unwrap();
            let addr = p.as_ptr().addr();
            let len = sizes[c] * units;
            no_overlap(&live, addr, len);
            fill(p.as_ptr(), len.min(64), step);
            live.insert(addr, (len.min(64), step));
            slots[k] = Some(addr);
        }
        if step % 10_000 == 0 {
            pf.audit().unwrap();
            assert_eq!(pf.source().mapped_pages(), pf.pages_in_use());
        }
    }
    for addr in live.keys() {
        pf.xfree(NonNull::new(*addr as *mut u8).unwrap()).unwrap();
    }
    pf.trim();
    pf.audit().unwrap();
    assert_eq!(pf.source().mapped_pages(), 0);
}

#[test]
fn mems_stress() {
    let mut m = Mems::new(HostPageSource::new());
    m.set_release_empty(true);
    let mut live: BTreeMap<usize, (usize, u64)> = BTreeMap::new();
    let mut slots: Vec<Option<usize>> = std::vec![None; 1000];
    let mut seed = 0x1234_5678_9abc_def1u64;
    for step in 0..40_000u64 {
        let k = xorshift(&mut seed) as usize % slots.len();
        if let Some(addr) = slots[k].take() {
            let (len, id) = live.remove(&addr).unwrap();
            assert!(check(addr as *const u8, len, id));
            m.mems_free(NonNull::new(addr as *mut u8).unwrap()).unwrap();
        } else {
            let r = xorshift(&mut seed);
            let size = match r % 8 {
                0 => (r >> 8) as usize % 40_000,
                1..=3 => (r >> 8) as usize % 4096,
                _ => (r >> 8) as usize % 512,
            };
            let align = if matches!(r % 13, 0) { 256 } else { 16 };
            let p = m.mems_alloc_aligned(size, align).unwrap();
            let addr = p.as_ptr().addr();
            assert_eq!(addr % align, 0);
            no_overlap(&live, addr, size);
            fill(p.as_ptr(), size.min(64), step);
            live.insert(addr, (size.min(64), step));
            slots[k] = Some(addr);
        }
        if step % 10_000 == 0 {
            m.audit().unwrap();
            assert_eq!(m.source().mapped_pages(), m.pages_in_use());
        }
    }
    for addr in live.keys() {
        m.mems_free(NonNull::new(*addr as *mut u8).unwrap())
            .unwrap();
    }
    m.audit().unwrap();
    assert_eq!(m.source().mapped_pages(), 0);
}

/// A page source that can be built in a `const` context, to show both heaps can be statics
/// (behind a lock).
struct NoPages;

// SAFETY: never hands out memory.
unsafe impl PageSource for NoPages {
    fn map_pages(&mut self, _pages: usize) -> Option<NonNull<u8>> {
        None
    }
    fn unmap_pages(&mut self, _base: NonNull<u8>, _pages: usize) {}
}

#[test]
fn const_construction_and_out_of_memory() {
    static PF: std::sync::Mutex<PageFamilies<NoPages>> =
        std::sync::Mutex::new(PageFamilies::new(NoPages));
    static MEMS: std::sync::Mutex<Mems<NoPages>> = std::sync::Mutex::new(Mems::new(NoPages));
    let mut pf = PF.lock().unwrap();
    let f = pf.mm_instantiate_new_page_family("x", 8).unwrap();
    assert_eq!(
        pf.xmalloc(f, 1),
        Err(crate::HeapError::OutOfMemory { pages: 1 })
    );
    pf.audit().unwrap();
    let mut m = MEMS.lock().unwrap();
    assert!(matches!(
        m.mems_malloc(10),
        Err(crate::HeapError::OutOfMemory { .. })
    ));
    assert_eq!(m.mems_get(core::ptr::null()), None);
    m.audit().unwrap();
}
