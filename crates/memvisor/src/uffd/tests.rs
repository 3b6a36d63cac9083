//! Unit tests of the handler against plain anonymous mappings (no KVM).

use super::*;

/// Serves every page as its own address repeated (a stand-in for a snapshot file).
struct Pattern;
impl PageSource for Pattern {
    fn read(&mut self, hva: u64, buf: &mut [u8; PAGE as usize]) -> bool {
        for c in buf.chunks_exact_mut(8) {
            c.copy_from_slice(&hva.to_le_bytes());
        }
        true
    }
}

fn map(pages: u64) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping, unmapped by the test.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            (pages * PAGE) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

fn available() -> bool {
    std::path::Path::new("/dev/userfaultfd").exists() || {
        // SAFETY: probe only; the descriptor is closed at once.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: closing the descriptor just opened.
            unsafe { libc::close(fd as i32) };
        }
        fd >= 0
    }
}

#[test]
fn serves_source_then_zero_after_remove() {
    if !available() {
        eprintln!("skipped: userfaultfd unsupported by host");
        return;
    }
    let pages = 8;
    let base = map(pages);
    let hva = base as u64;
    // SAFETY: the mapping above lives until the munmap at the end, after the handler.
    let h = unsafe { UffdHandler::start(&[(hva, pages * PAGE)], Box::new(Pattern)) }.expect("uffd");
    // First touches come from the source.
    for i in 0..pages {
        let a = hva + i * PAGE;
        // SAFETY: inside the live mapping; the handler fills the page.
        let v = unsafe { std::ptr::read_volatile((a + 8) as *const u64) };
        assert_eq!(v, a);
    }
    // SAFETY: inside the live mapping.
    unsafe { std::ptr::write_volatile((hva + 16) as *mut u64, 7) };
    let s = h.stats();
    assert_eq!((s.faults, s.copies, s.zeropages), (pages, pages, 0));
    assert_eq!(s.hist_ns_log2.iter().sum::<u64>(), pages);
    // Discard pages 2 and 3: they must come back zero, not from the source.
    // SAFETY: our own pages, contents no longer needed.
    unsafe { discard(hva + 2 * PAGE, 2 * PAGE) }.expect("madvise");
    for i in 0..pages {
        let a = hva + i * PAGE;
        // SAFETY: inside the live mapping.
        let v = unsafe { std::ptr::read_volatile((a + 8) as *const u64) };
        assert_eq!(v, if i == 2 || i == 3 { 0 } else { a }, "page {i}");
    }
    // SAFETY: as above.
    let v = unsafe { std::ptr::read_volatile((hva + 16) as *const u64) };
    assert_eq!(v, 7);
    let s = h.stats();
    assert_eq!(s.remove_events, 1);
    assert_eq!(s.removed_pages, 2);
    assert_eq!((s.faults, s.copies, s.zeropages), (pages + 2, pages, 2));
    drop(h);
    // SAFETY: unmapping the test's own mapping after the handler stopped.
    unsafe { libc::munmap(base.cast(), (pages * PAGE) as usize) };
}

#[test]
fn fault_around_fills_zero_blocks_and_refills_discarded_pages() {
    if !available() {
        eprintln!("skipped: userfaultfd unsupported by host");
        return;
    }
    let pages = 2 * FAULT_AROUND_PAGES;
    let base = map(pages + FAULT_AROUND_PAGES);
    // A 16-page aligned range (the mapping has a block to spare).
    let block = FAULT_AROUND_PAGES * PAGE;
    let hva = (base as u64 + block - 1) & !(block - 1);
    // SAFETY: the mapping lives until the munmap at the end, after the handler.
    let h =
        unsafe { UffdHandler::start(&[(hva, pages * PAGE)], Box::new(ZeroSource)) }.expect("uffd");
    let at = |i: u64| hva + i * PAGE;
    let write = |i: u64, v: u64| {
        // SAFETY: inside the live, registered mapping.
        unsafe { std::ptr::write_volatile(at(i) as *mut u64, v) }
    };
    let read = |i: u64| {
        // SAFETY: as above.
        unsafe { std::ptr::read_volatile(at(i) as *const u64) }
    };
    // One fault fills the whole first block; writes to all of it take no further message.
    write(5, 1);
    for i in 0..FAULT_AROUND_PAGES {
        assert_eq!(read(i), u64::from(i == 5), "page {i}");
        write(i, 100 + i);
    }
    let s = h.stats();
    assert_eq!((s.faults, s.zeropages, s.fault_around), (1, 1, 15));
    // Discard pages 0..4: a fault on page 2 refills 0..4 (stopping at mapped page 4).
    // SAFETY: our own pages, contents no longer needed.
    unsafe { discard(at(0), 4 * PAGE) }.expect("madvise");
    assert_eq!(read(2), 0);
    let s = h.stats();
    assert_eq!((s.faults, s.zeropages, s.fault_around), (2, 1 + 1, 15 + 3));
    assert_eq!(s.remove_events, 1);
    // Discard pages 8..12: the block's start is mapped, so page 10's fault fills 10..12.
    // SAFETY: as above.
    unsafe { discard(at(8), 4 * PAGE) }.expect("madvise");
    assert_eq!(read(10), 0);
    let s = h.stats();
    assert_eq!((s.faults, s.zeropages, s.fault_around), (3, 3, 18 + 1));
    // Nothing stale and nothing lost: discarded pages read zero, the others kept.
    for i in 0..FAULT_AROUND_PAGES {
        let gone = i < 4 || (8..12).contains(&i);
        assert_eq!(read(i), if gone { 0 } else { 100 + i }, "page {i}");
    }
    // The second block is served by its own fault.
    assert_eq!(read(FAULT_AROUND_PAGES + 15), 0);
    let s = h.stats();
    assert_eq!((s.faults, s.zeropages, s.raced, s.errors), (5, 5, 0, 0));
    // Page 8 (read above) refilled 8..10: one ahead.
    assert_eq!(s.fault_around, 19 + 1 + 15);
    drop(h);
    // SAFETY: unmapping the test's own mapping after the handler stopped.
    unsafe { libc::munmap(base.cast(), ((pages + FAULT_AROUND_PAGES) * PAGE) as usize) };
}

#[test]
fn bad_ranges_refused() {
    if !available() {
        eprintln!("skipped: userfaultfd unsupported by host");
        return;
    }
    // SAFETY: nothing is registered for a refused range.
    let r = unsafe { UffdHandler::start(&[(0x1001, PAGE)], Box::new(ZeroSource)) };
    assert!(matches!(r, Err(UffdError::BadRange { .. })));
    // SAFETY: as above.
    let r = unsafe { UffdHandler::start(&[(0x1000, 0)], Box::new(ZeroSource)) };
    assert!(matches!(r, Err(UffdError::BadRange { .. })));
}

#[test]
fn histogram_buckets() {
    let mut s = UffdStats::default();
    s.record(0);
    s.record(1);
    s.record(1500);
    s.record(u64::MAX);
    assert_eq!(s.hist_ns_log2[0], 2);
    assert_eq!(s.hist_ns_log2[10], 1);
    assert_eq!(s.hist_ns_log2[HIST_BUCKETS - 1], 1);
    assert_eq!(s.max_ns, u64::MAX);
}

#[test]
fn fault_around_window_grows_with_sequential_faults() {
    if !available() {
        eprintln!("skipped: userfaultfd unsupported by host");
        return;
    }
    // 16 + 32 + 64 + 128 + 256 + 512 + 512 pages, then a jump back.
    let pages = 1520u64;
    let base = map(pages + FAULT_AROUND_PAGES);
    let block = FAULT_AROUND_PAGES * PAGE;
    let hva = (base as u64 + block - 1) & !(block - 1);
    // SAFETY: the mapping lives until the munmap at the end, after the handler.
    let h =
        unsafe { UffdHandler::start(&[(hva, pages * PAGE)], Box::new(ZeroSource)) }.expect("uffd");
    let mut faults_at = vec![];
    for i in 0..pages {
        let before = h.stats().faults;
        // SAFETY: inside the live, registered mapping.
        unsafe { std::ptr::write_volatile((hva + i * PAGE) as *mut u8, 1) };
        if h.stats().faults != before {
            faults_at.push(i);
        }
    }
    assert_eq!(faults_at, [0, 16, 48, 112, 240, 496, 1008]);
    let s = h.stats();
    assert_eq!(s.zeropages + s.fault_around, pages);
    assert_eq!((s.raced, s.errors), (0, 0));
    // Out of order: back to the aligned 16-page block.
    // SAFETY: our own pages, contents no longer needed.
    unsafe { discard(hva, 64 * PAGE) }.expect("madvise");
    // SAFETY: inside the live mapping.
    let v = unsafe { std::ptr::read_volatile((hva + 40 * PAGE) as *const u8) };
    assert_eq!(v, 0);
    let s = h.stats();
    assert_eq!(s.fault_around, pages - 7 + 15);
    drop(h);
    // SAFETY: unmapping the test's own mapping after the handler stopped.
    unsafe { libc::munmap(base.cast(), ((pages + FAULT_AROUND_PAGES) * PAGE) as usize) };
}
