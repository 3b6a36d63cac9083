//! Page families: the seed's test_application and unit tests.
#![allow(non_camel_case_types)]

use core::ptr::NonNull;

use super::report;
use crate::host::HostPageSource;
use crate::page_family::{region_bytes, MAX_FAMILIES};
use crate::{mm_reg_struct, xcalloc, xfree, HeapError, PageFamilies, PAGE_SIZE};

/// The seed's `emp_t` (36 bytes).
#[repr(C)]
struct emp_t {
    name: [u8; 32],
    emp_id: u32,
}

/// The seed's `student_t` (56 bytes).
#[repr(C)]
struct student_t {
    name: [u8; 32],
    rollno: u32,
    marks_phys: u32,
    marks_chem: u32,
    marks_maths: u32,
    next: *mut student_t,
}

fn usage_line(pf: &PageFamilies<HostPageSource>, name: &str) -> std::string::String {
    let r = report(|w| pf.mm_print_block_usage(w));
    r.lines().find(|l| l.starts_with(name)).unwrap_or("").into()
}

/// The seed's test_application: register emp_t and student_t, scenario 1 (3 employees, 2
/// students), scenario 2 (free emp1, emp3, stud2), scenario 3 (free the rest).
#[test]
fn seed_test_application() {
    let mut pf = PageFamilies::mm_init(HostPageSource::new());
    let _emp = mm_reg_struct!(pf, emp_t).unwrap();
    let stud = mm_reg_struct!(pf, student_t).unwrap();
    assert_eq!(
        mm_reg_struct!(pf, emp_t),
        Err(HeapError::FamilyExists { name: "emp_t" })
    );
    assert_eq!(
        report(|w| pf.mm_print_registered_page_families(w)),
        "Page Family : emp_t, Size = 36\nPage Family : student_t, Size = 56\n"
    );
    assert_eq!(pf.lookup_page_family_by_name("student_t"), Some(stud));
    assert_eq!(pf.lookup_page_family_by_name("nope"), None);

    // Scenario 1.
    let emp1 = xcalloc!(pf, 1, emp_t).unwrap();
    let emp2 = xcalloc!(pf, 1, emp_t).unwrap();
    let emp3 = xcalloc!(pf, 1, emp_t).unwrap();
    let stud1 = xcalloc!(pf, 1, student_t).unwrap();
    let stud2 = xcalloc!(pf, 1, student_t).unwrap();
    // SAFETY: live, zeroed, properly aligned blocks of the right size.
    unsafe {
        assert_eq!((*emp2.as_ptr()).emp_id, 0);
        (*emp1.as_ptr()).emp_id = 1;
        (*emp2.as_ptr()).emp_id = 2;
        (*emp3.as_ptr()).emp_id = 3;
        (*stud1.as_ptr()).rollno = 10;
        (*stud1.as_ptr()).next = stud2.as_ptr();
        (*stud2.as_ptr()).marks_maths = 99;
    }
    for p in [
        emp1.cast::<u8>(),
        emp2.cast(),
        emp3.cast(),
        stud1.cast(),
        stud2.cast(),
    ] {
        assert_eq!(p.as_ptr().addr() % 16, 0);
    }
    assert_eq!(pf.family_of(stud2.cast()).unwrap(), stud);
    let mu = report(|w| pf.mm_print_memory_usage(w, None));
    assert!(
        mu.contains("vm_page_family : emp_t, struct size = 36"),
        "{mu}"
    );
    assert!(mu.contains("vm_page_family : student_t, struct size = 56"));
    assert_eq!(mu.matches("ALLOCATED").count(), 5);
    assert_eq!(mu.matches("F R E E D").count(), 2);
    assert!(mu.contains("block_size = 40      offset = 72"), "{mu}");
    assert!(mu.contains("App Memory in use : 144 Bytes, VM Pages in use : 1 (4096 Bytes), % of memory in use by the application : 3.51 %"), "{mu}");
    assert!(mu.contains("# Of VM Pages in Use : 2 (8192 Bytes)"));
    let only = report(|w| pf.mm_print_memory_usage(w, Some("student_t")));
    assert!(!only.contains("emp_t") && only.contains("# Of VM Pages in Use : 1 (4096 Bytes)"));
    assert_eq!(
        usage_line(&pf, "emp_t"),
        "emp_t                  TBC : 4       FBC : 1       OBC : 3    AppMemUsage : 144"
    );
    assert_eq!(
        usage_line(&pf, "student_t"),
        "student_t              TBC : 3       FBC : 1       OBC : 2    AppMemUsage : 128"
    );
    let slab = report(|w| pf.mm_print_slabinfo(w));
    assert!(slab.contains(
        "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab>"
    ));
    let emp_slab: std::vec::Vec<&str> = slab
        .lines()
        .find(|l| l.starts_with("emp_t"))
        .unwrap()
        .split_whitespace()
        .collect();
    // 4016 region bytes / 48-byte blocks = 83 objects per one-page slab.
    assert_eq!(emp_slab, ["emp_t", "3", "83", "48", "83", "1"]);
    pf.audit().unwrap();
    assert_eq!(pf.source().mapped_pages(), pf.pages_in_use());

    // Scenario 2.
    xfree!(pf, emp1).unwrap();
    xfree!(pf, emp3).unwrap();
    xfree!(pf, stud2).unwrap();
    // SAFETY: emp2 / stud1 are still live.
    unsafe {
        assert_eq!((*emp2.as_ptr()).emp_id, 2);
        assert_eq!((*stud1.as_ptr()).rollno, 10);
    }
    assert_eq!(
        usage_line(&pf, "emp_t"),
        "emp_t                  TBC : 3       FBC : 2       OBC : 1    AppMemUsage : 48"
    );
    assert_eq!(
        usage_line(&pf, "student_t"),
        "student_t              TBC : 2       FBC : 1       OBC : 1    AppMemUsage : 64"
    );
    assert_eq!(
        xfree!(pf, emp1),
        Err(HeapError::DoubleFree {
            addr: emp1.as_ptr().addr()
        })
    );
    pf.audit().unwrap();

    // Scenario 3: everything goes back to the source.
    xfree!(pf, emp2).unwrap();
    xfree!(pf, stud1).unwrap();
    assert_eq!(
        usage_line(&pf, "emp_t"),
        "emp_t                  TBC : 0       FBC : 0       OBC : 0    AppMemUsage : 0"
    );
    let mu = report(|w| pf.mm_print_memory_usage(w, None));
    assert!(mu.contains("# Of VM Pages in Use : 0 (0 Bytes)"), "{mu}");
    assert_eq!(pf.pages_in_use(), 0);
    assert_eq!(pf.source().mapped_pages(), 0);
    assert_eq!(
        xfree!(pf, emp2),
        Err(HeapError::InvalidPointer {
            addr: emp2.as_ptr().addr(),
            reason: "not in a page owned by this heap"
        })
    );
    pf.audit().unwrap();
}

#[test]
fn errors_name_the_address_and_change_nothing() {
    let mut pf = PageFamilies::new(HostPageSource::new());
    let f = pf.mm_instantiate_new_page_family("obj", 100).unwrap();
    assert_eq!(
        pf.xcalloc("nope", 1),
        Err(HeapError::UnknownFamilyName {
            name: crate::NameBuf::new("nope")
        })
    );
    let a = pf.xcalloc(f, 1).unwrap();
    let b = pf.xcalloc(f, 2).unwrap();
    let before = report(|w| pf.mm_print_memory_usage(w, None));
    let addr = a.as_ptr().addr();
    let errs = [
        (
            addr + 8,
            "not 16-byte aligned, so not a block returned by this heap",
        ),
        (addr + 16, "interior pointer of an allocated block"),
        (
            addr - 8,
            "not 16-byte aligned, so not a block returned by this heap",
        ),
        (addr - 16, "points into a VM page header"),
    ];
    for (p, reason) in errs {
        let e = pf.xfree(NonNull::new(p as *mut u8).unwrap()).unwrap_err();
        assert_eq!(e, HeapError::InvalidPointer { addr: p, reason });
        assert!(std::format!("{e}").contains(&std::format!("{p:#x}")));
    }
    let on_stack = 0u128;
    let sp = NonNull::from(&on_stack).cast::<u8>();
    assert!(matches!(
        pf.xfree(sp),
        Err(HeapError::InvalidPointer { .. })
    ));
    assert_eq!(before, report(|w| pf.mm_print_memory_usage(w, None)));
    pf.xfree(a).unwrap();
    // `a`'s block is free (b follows it, allocated): a second free is a double free, and
    // so is a pointer into the middle of that free block.
    assert_eq!(pf.xfree(a), Err(HeapError::DoubleFree { addr }));
    let mid = NonNull::new((addr + 32) as *mut u8).unwrap();
    assert_eq!(
        pf.xfree(mid),
        Err(HeapError::DoubleFree { addr: addr + 32 })
    );
    pf.xfree(b).unwrap();
    assert_eq!(pf.source().mapped_pages(), 0);
    assert!(matches!(pf.xfree(b), Err(HeapError::InvalidPointer { .. })));
}

#[test]
fn family_table_limits() {
    let mut pf = PageFamilies::new(HostPageSource::new());
    assert_eq!(
        pf.mm_instantiate_new_page_family("zero", 0),
        Err(HeapError::InvalidStructSize { size: 0 })
    );
    let names: std::vec::Vec<&'static str> = (0..=MAX_FAMILIES)
        .map(|i| &*std::boxed::Box::leak(std::format!("f{i:02}").into_boxed_str()))
        .collect();
    for name in &names[..MAX_FAMILIES] {
        pf.mm_instantiate_new_page_family(name, 24).unwrap();
    }
    assert_eq!(
        pf.mm_instantiate_new_page_family(names[MAX_FAMILIES], 24),
        Err(HeapError::TooManyFamilies { max: MAX_FAMILIES })
    );
    assert_eq!(pf.family_count(), MAX_FAMILIES);
    let id = pf.lookup_page_family_by_name("f63").unwrap();
    assert_eq!(id.index(), 63);
    let p = pf.xcalloc(id, usize::MAX / 8);
    assert_eq!(p, Err(HeapError::TooLarge { size: usize::MAX }));
}

#[test]
fn multi_page_blocks_and_page_return() {
    let mut pf = PageFamilies::new(HostPageSource::new());
    let f = pf.mm_instantiate_new_page_family("rec", 1000).unwrap();
    // 9 units = 9000 bytes > one page's payload (4008): a 3-page VM page.
    let big = pf.xcalloc(f, 9).unwrap();
    assert!(pf.usable_size(big).unwrap() >= 9000);
    // SAFETY: the block is zeroed and at least 9000 bytes long.
    unsafe {
        let s = core::slice::from_raw_parts_mut(big.as_ptr(), 9000);
        assert!(s.iter().all(|&b| b == 0));
        s.fill(0xab);
    }
    let info = pf.family_info(f).unwrap();
    assert_eq!((info.vm_pages, info.pages), (1, 3));
    // The rest of the 3-page VM page serves small requests.
    let small = pf.xcalloc(f, 1).unwrap();
    assert_eq!(pf.family_info(f).unwrap().vm_pages, 1);
    let a = pf.audit().unwrap();
    assert_eq!(
        a.data_pages * PAGE_SIZE,
        a.overhead_bytes + a.alloc_bytes + a.free_bytes
    );
    pf.xfree(big).unwrap();
    assert_eq!(pf.family_info(f).unwrap().pages, 3);
    pf.xfree(small).unwrap();
    assert_eq!(pf.family_info(f).unwrap().pages, 0);
    assert_eq!(pf.source().mapped_pages(), 0);
    // Exactly one page's payload fits in one page.
    let g = pf
        .mm_instantiate_new_page_family("page", region_bytes(1) - 8)
        .unwrap();
    let p = pf.xcalloc(g, 1).unwrap();
    assert_eq!(pf.family_info(g).unwrap().pages, 1);
    assert_eq!(pf.usable_size(p).unwrap(), region_bytes(1) - 8);
    pf.xfree(p).unwrap();
    assert_eq!(pf.pages_in_use(), 0);
}

#[test]
fn largest_first_reuse_and_merging() {
    let mut pf = PageFamilies::new(HostPageSource::new());
    let f = pf.mm_instantiate_new_page_family("x", 48).unwrap();
    let ps: std::vec::Vec<_> = (0..70).map(|_| pf.xmalloc(f, 1).unwrap()).collect();
    // 70 * 64 = 4480 > 4016: two pages.
    assert_eq!(pf.family_info(f).unwrap().vm_pages, 2);
    // Free every other block of the first 20: no merging possible.
    for p in ps[..20].iter().step_by(2) {
        pf.xfree(*p).unwrap();
    }
    // 62 blocks of 64 bytes fill page 1 up to a 48-byte free sliver; page 2 has its tail.
    let i = pf.family_info(f).unwrap();
    assert_eq!(i.free_blocks, 10 + 2);
    // Freeing the neighbours merges into one free run.
    for p in ps[..20].iter().skip(1).step_by(2) {
        pf.xfree(*p).unwrap();
    }
    assert_eq!(pf.family_info(f).unwrap().free_blocks, 3);
    pf.audit().unwrap();
    // Largest first: a 3-unit request takes from the largest free block.
    let big = pf.xcalloc(f, 3).unwrap();
    assert_eq!(pf.usable_size(big).unwrap(), 3 * 48 + 8);
    pf.xfree(big).unwrap();
    for p in &ps[20..] {
        pf.xfree(*p).unwrap();
    }
    assert_eq!(pf.source().mapped_pages(), 0);
}

#[test]
fn empty_page_cache_and_trim() {
    let mut pf = PageFamilies::new(HostPageSource::new());
    pf.set_empty_page_cache(1);
    let f = pf.mm_instantiate_new_page_family("c", 64).unwrap();
    let p = pf.xmalloc(f, 1).unwrap();
    pf.xfree(p).unwrap();
    assert_eq!(pf.family_info(f).unwrap().empty_pages, 1);
    assert_eq!(pf.data_pages(), 1);
    let maps = pf.source().calls().0;
    for _ in 0..100 {
        let p = pf.xmalloc(f, 1).unwrap();
        pf.xfree(p).unwrap();
    }
    assert_eq!(
        pf.source().calls().0,
        maps,
        "no map/unmap churn with the cache"
    );
    pf.audit().unwrap();
    assert_eq!(pf.trim(), 1);
    assert_eq!(pf.pages_in_use(), 0);
    assert_eq!(pf.source().mapped_pages(), 0);
    pf.audit().unwrap();
}

#[test]
fn out_of_memory_is_an_error() {
    let mut pf = PageFamilies::new(HostPageSource::with_limit(6));
    let f = pf.mm_instantiate_new_page_family("o", 2000).unwrap();
    let mut live = std::vec::Vec::new();
    let err = loop {
        match pf.xcalloc(f, 1) {
            Ok(p) => live.push(p),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, HeapError::OutOfMemory { .. }));
    assert_eq!(pf.source().mapped_pages(), pf.pages_in_use());
    pf.audit().unwrap();
    for p in live {
        pf.xfree(p).unwrap();
    }
    assert_eq!(pf.source().mapped_pages(), 0);
}

#[test]
fn corrupted_header_is_detected_not_followed() {
    let mut pf = PageFamilies::new(HostPageSource::new());
    let f = pf.mm_instantiate_new_page_family("c", 32).unwrap();
    let a = pf.xmalloc(f, 1).unwrap();
    let b = pf.xmalloc(f, 1).unwrap();
    // Simulate a buffer overflow from `a` into `b`'s header.
    // SAFETY: the 8 bytes before `b` are its header inside a live page of the heap.
    unsafe { core::ptr::write_bytes(b.as_ptr().sub(8), 0xff, 8) };
    assert!(matches!(pf.xfree(b), Err(HeapError::Corrupted { .. })));
    assert!(matches!(pf.xfree(a), Err(HeapError::Corrupted { .. })));
    assert!(pf.audit().is_err());
}

#[test]
fn display_of_errors() {
    let e = HeapError::InvalidPointer {
        addr: 0x1000,
        reason: "x",
    };
    assert_eq!(std::format!("{e}"), "invalid pointer 0x1000: x");
    let e = HeapError::DoubleFree { addr: 0x20 };
    assert_eq!(
        std::format!("{e}"),
        "double free of 0x20: the memory is already free"
    );
    let n = crate::NameBuf::new("ééééééééééééééééééééé");
    assert!(n.as_str().len() <= 32);
}

#[test]
fn quick_cache() {
    let mut pf = PageFamilies::new(HostPageSource::new());
    pf.set_quick_cache(4);
    let f = pf.mm_instantiate_new_page_family("q", 64).unwrap();
    let ps: std::vec::Vec<_> = (0..10).map(|_| pf.xcalloc(f, 1).unwrap()).collect();
    for p in &ps[..5] {
        // SAFETY: live 64-byte blocks.
        unsafe { p.as_ptr().write_bytes(0xee, 64) };
        pf.xfree(*p).unwrap();
    }
    let i = pf.family_info(f).unwrap();
    assert_eq!((i.quick_blocks, i.allocated_blocks()), (4, 5));
    // ps[0..4] are cached; ps[4] was freed the normal way (its neighbour ps[3] is cached, so
    // not merged): free blocks are ps[4] and the page's tail.
    assert_eq!(i.free_blocks, 2);
    let a = pf.audit().unwrap();
    assert_eq!(a.quick_blocks, 4);
    let mu = report(|w| pf.mm_print_memory_usage(w, None));
    assert_eq!(mu.matches("[quick]").count(), 4, "{mu}");
    let bu = report(|w| pf.mm_print_block_usage(w));
    assert!(bu.contains("FBC : 6       OBC : 5"), "{bu}");
    assert_eq!(
        pf.xfree(ps[4]),
        Err(HeapError::DoubleFree {
            addr: ps[4].as_ptr().addr()
        })
    );
    assert_eq!(
        pf.usable_size(ps[3]),
        Err(HeapError::DoubleFree {
            addr: ps[3].as_ptr().addr()
        })
    );
    // LIFO reuse, zeroed by xcalloc.
    let again = pf.xcalloc(f, 1).unwrap();
    assert_eq!(again, ps[3]);
    // SAFETY: live 64-byte block.
    assert!(unsafe { core::slice::from_raw_parts(again.as_ptr(), 64) }
        .iter()
        .all(|&b| b == 0));
    // Multi-unit requests never use the quick cache.
    let two = pf.xcalloc(f, 2).unwrap();
    assert!(!ps.contains(&two));
    pf.xfree(two).unwrap();
    pf.xfree(again).unwrap();
    for p in &ps[5..] {
        pf.xfree(*p).unwrap();
    }
    assert_eq!(pf.family_info(f).unwrap().allocated_blocks(), 0);
    assert!(pf.data_pages() > 0, "cached blocks keep the page");
    pf.audit().unwrap();
    pf.flush_quick();
    assert_eq!(pf.pages_in_use(), 0);
    assert_eq!(pf.source().mapped_pages(), 0);
    // Lowering the depth flushes.
    let p = pf.xmalloc(f, 1).unwrap();
    let q = pf.xmalloc(f, 1).unwrap();
    pf.xfree(p).unwrap();
    pf.xfree(q).unwrap();
    assert_eq!(pf.family_info(f).unwrap().quick_blocks, 2);
    pf.set_quick_cache(0);
    assert_eq!(pf.source().mapped_pages(), 0);
}

#[test]
fn block_bytes_and_contains() {
    use crate::page_family::block_bytes_for;
    assert_eq!(block_bytes_for(1), Some(32));
    assert_eq!(block_bytes_for(24), Some(32));
    assert_eq!(block_bytes_for(25), Some(48));
    assert_eq!(block_bytes_for(40), Some(48));
    assert_eq!(block_bytes_for(120), Some(128));
    assert_eq!(block_bytes_for(usize::MAX), None);
    let mut pf = PageFamilies::new(HostPageSource::new());
    let f = pf.mm_instantiate_new_page_family("c", 40).unwrap();
    let p = pf.xmalloc(f, 1).unwrap();
    assert_eq!(pf.usable_size(p).unwrap(), 40);
    assert!(pf.contains(p.as_ptr()));
    assert!(pf.contains(p.as_ptr().wrapping_add(1000)));
    assert!(!pf.contains(&0u8));
    pf.xfree(p).unwrap();
    assert!(!pf.contains(p.as_ptr()));
}
