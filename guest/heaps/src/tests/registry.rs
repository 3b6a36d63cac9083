use crate::host::HostPageSource;
use crate::registry::PageRegistry;

#[test]
fn insert_get_remove_frees_nodes() {
    let mut src = HostPageSource::new();
    let mut r = PageRegistry::new();
    let a = 0x7f12_3456_7000usize;
    let b = 0xffff_ffff_8020_0000usize; // upper half (kernel image)
    r.insert(&mut src, a, 11).unwrap();
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
    assert_eq!(r.node_pages(), 4);
    assert_eq!(r.remove(&mut src, b), 22);
    assert_eq!(r.node_pages(), 0);
    assert_eq!(src.mapped_pages(), 0);
}

#[test]
fn ranges_and_failed_insert_roll_back() {
    let mut src = HostPageSource::new();
    let mut r = PageRegistry::new();
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
