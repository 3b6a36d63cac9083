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
    // In order: runs of 1, 2, 4 pages, then the range's last page (faults on 0, 1, 3, 7).
    assert_eq!(
        (s.faults, s.copies, s.read_ahead, s.zeropages),
        (4, 4, 4, 0)
    );
    assert_eq!(s.hist_ns_log2.iter().sum::<u64>(), 4);
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
    assert_eq!((s.faults, s.copies, s.zeropages), (4 + 2, 4, 2));
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

/// Data for every page but each `every`-th (index `every - 1`, `2 * every - 1`, ...) from
/// `base`: the page's address repeated.
struct Holes {
    base: u64,
    every: u64,
}
impl PageSource for Holes {
    fn read(&mut self, hva: u64, buf: &mut [u8; PAGE as usize]) -> bool {
        if ((hva - self.base) / PAGE + 1) % self.every == 0 {
            return false;
        }
        Pattern.read(hva, buf)
    }
}

/// Read page `i` of the mapping at `hva` (its first 8 bytes after the first 8).
fn word(hva: u64, i: u64) -> u64 {
    // SAFETY: callers pass a page inside their live, registered mapping.
    unsafe { std::ptr::read_volatile((hva + i * PAGE + 8) as *const u64) }
}

#[test]
fn readahead_grows_in_order_and_keeps_every_page_right() {
    if !available() {
        eprintln!("skipped: userfaultfd unsupported by host");
        return;
    }
    let pages = 1100u64;
    let base = map(pages);
    let hva = base as u64;
    // SAFETY: the mapping lives until the munmap at the end, after the handler.
    let h = unsafe { UffdHandler::start(&[(hva, pages * PAGE)], Box::new(Pattern)) }.expect("uffd");
    let mut faults_at = vec![];
    for i in 0..pages {
        let before = h.stats().faults;
        assert_eq!(word(hva, i), hva + i * PAGE, "page {i}");
        if h.stats().faults != before {
            faults_at.push(i);
        }
    }
    // The window: 1, 2, 4, ... 512 pages, then 512 again.
    assert_eq!(faults_at, [0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 1023]);
    let s = h.stats();
    assert_eq!((s.faults, s.copies, s.source_reads), (11, 11, 11));
    assert_eq!(s.copies + s.read_ahead, pages);
    assert_eq!(
        (s.zeropages, s.fault_around, s.raced, s.errors),
        (0, 0, 0, 0)
    );
    drop(h);
    // SAFETY: unmapping the test's own mapping after the handler stopped.
    unsafe { libc::munmap(base.cast(), (pages * PAGE) as usize) };
}

#[test]
fn readahead_stays_one_page_for_scattered_faults() {
    if !available() {
        eprintln!("skipped: userfaultfd unsupported by host");
        return;
    }
    let pages = 300u64;
    let base = map(pages);
    let hva = base as u64;
    // SAFETY: the mapping lives until the munmap at the end, after the handler.
    let h = unsafe { UffdHandler::start(&[(hva, pages * PAGE)], Box::new(Pattern)) }.expect("uffd");
    // Every third page, then backwards: never the page after the previous run.
    let order: Vec<u64> = (0..pages)
        .step_by(3)
        .chain((0..pages).rev().step_by(7))
        .collect();
    let mut touched = std::collections::BTreeSet::new();
    for &i in &order {
        assert_eq!(word(hva, i), hva + i * PAGE, "page {i}");
        touched.insert(i);
    }
    let s = h.stats();
    assert_eq!(s.read_ahead, 0);
    assert_eq!(s.copies, touched.len() as u64);
    drop(h);
    // SAFETY: unmapping the test's own mapping after the handler stopped.
    unsafe { libc::munmap(base.cast(), (pages * PAGE) as usize) };
}

#[test]
fn readahead_stops_at_holes_and_discarded_pages() {
    if !available() {
        eprintln!("skipped: userfaultfd unsupported by host");
        return;
    }
    let pages = 64u64;
    let base = map(pages);
    let hva = base as u64;
    let src = Holes {
        base: hva,
        every: 8,
    };
    // SAFETY: the mapping lives until the munmap at the end, after the handler.
    let h = unsafe { UffdHandler::start(&[(hva, pages * PAGE)], Box::new(src)) }.expect("uffd");
    // Pages 7, 15, ... have no data: a run stops before them, they read zero, and the stream
    // goes on after them.
    for i in 0..16 {
        let want = if i % 8 == 7 { 0 } else { hva + i * PAGE };
        assert_eq!(word(hva, i), want, "page {i}");
    }
    let s = h.stats();
    // Faults on 0, 1 (+1), 3 (+3: 4..6), 7 (a hole: zero), 8 (+6: the window 8..15 stops
    // before the hole 15), 15 (zero).
    assert_eq!(
        (s.faults, s.copies, s.read_ahead, s.zeropages),
        (6, 4, 10, 2)
    );
    // A page discarded before it was ever served must come back zero, not from the source,
    // even inside an in-order run: fault on 20, discard 22, then 21 (in order: window 2, but
    // 22 is discarded) and 22.
    assert_eq!(word(hva, 20), hva + 20 * PAGE);
    // SAFETY: our own page, never touched.
    unsafe { discard(hva + 22 * PAGE, PAGE) }.expect("madvise");
    assert_eq!(word(hva, 21), hva + 21 * PAGE);
    assert_eq!(word(hva, 22), 0);
    let s = h.stats();
    assert_eq!(
        (s.faults, s.copies, s.read_ahead, s.zeropages),
        (9, 6, 10, 3)
    );
    assert_eq!((s.remove_events, s.raced, s.errors), (1, 0, 0));
    drop(h);
    // SAFETY: unmapping the test's own mapping after the handler stopped.
    unsafe { libc::munmap(base.cast(), (pages * PAGE) as usize) };
}

#[test]
fn readahead_skips_pages_already_in_place() {
    if !available() {
        eprintln!("skipped: userfaultfd unsupported by host");
        return;
    }
    let pages = 16u64;
    let base = map(pages);
    let hva = base as u64;
    // SAFETY: the mapping lives until the munmap at the end, after the handler.
    let h = unsafe { UffdHandler::start(&[(hva, pages * PAGE)], Box::new(Pattern)) }.expect("uffd");
    // Page 5 first; then 3 and 4 in order: the run of 4 (window 2) stops before 5, which
    // is in place already and is not read again.
    for i in [5, 3, 4, 5] {
        assert_eq!(word(hva, i), hva + i * PAGE, "page {i}");
    }
    let s = h.stats();
    assert_eq!((s.faults, s.copies, s.read_ahead), (3, 3, 0));
    assert_eq!((s.raced, s.errors), (0, 0));
    drop(h);
    // SAFETY: unmapping the test's own mapping after the handler stopped.
    unsafe { libc::munmap(base.cast(), (pages * PAGE) as usize) };
}
