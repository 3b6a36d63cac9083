use super::*;
use crate::uffd::PageSource;
use crate::uffd::UffdHandler;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const KERNEL: &[u8] = b"\x7fELF a guest kernel";

fn page(v: u8) -> [u8; PAGE as usize] {
    [v; PAGE as usize]
}

fn id() -> Identity {
    Identity::of(1 << 20, KERNEL)
}

fn full(dir: &Path) -> (PathBuf, u64) {
    let path = dir.join("full.snap");
    let (a, b, c) = (page(1), page(2), page(3));
    let snap = write(
        &path,
        id(),
        None,
        b"state",
        &[(0x1000, &a), (0x5000, &b), (0x8000, &c)],
    )
    .expect("write");
    (path, snap)
}

#[test]
fn round_trip_and_no_temp_file_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, snap_id) = full(dir.path());
    let s = Snapshot::open(&path, id()).expect("open");
    assert_eq!(s.id, snap_id);
    assert_eq!(s.state, b"state");
    assert_eq!(s.gpas(), vec![0x1000, 0x5000, 0x8000]);
    let mut buf = page(0);
    assert!(s.read_page(0x5000, &mut buf).expect("read"));
    assert_eq!(buf, page(2));
    assert!(!s.read_page(0x2000, &mut buf).expect("absent"));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("full.snap")]);
}

fn refused(path: &Path, want: Identity) -> String {
    match Snapshot::open(path, want) {
        Ok(_) => panic!("{} accepted", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_files_refused_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = full(dir.path());
    let good = std::fs::read(&path).expect("read");
    let variant = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    // Truncated anywhere: header, section header, index, page data.
    for cut in [10, 63, 70, 100, good.len() - 1] {
        let e = refused(&variant("cut", &good[..cut]), id());
        assert!(e.contains("truncated"), "cut {cut}: {e}");
    }
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(refused(&variant("magic", &bad), id()).contains("not a memvisor snapshot"));
    // Another version: a later one, and version 1 (zone bitmaps as CBOR integers).
    for v in [VERSION + 1, 1] {
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&v.to_le_bytes());
        let e = refused(&variant("ver", &bad), id());
        assert!(e.contains(&format!("format version {v}")), "{e}");
    }
    let mut bad = good.clone();
    bad[20] ^= 1;
    assert!(refused(&variant("hdr", &bad), id()).contains("corrupt header"));
    let mut bad = good.clone();
    bad[HEADER + SECTION_HEADER] ^= 1;
    assert!(refused(&variant("state", &bad), id()).contains("corrupt state section"));
    let idx = HEADER + SECTION_HEADER + 5 + SECTION_HEADER + 9;
    let mut bad = good.clone();
    bad[idx] ^= 1;
    assert!(refused(&variant("index", &bad), id()).contains("corrupt page index"));
    let e = refused(&path, Identity::of(2 << 20, KERNEL));
    assert!(
        e.contains("taken with 1048576 bytes of guest RAM, this VM has 2097152"),
        "{e}"
    );
    let e = refused(&path, Identity::of(1 << 20, b"another kernel"));
    assert!(e.contains("another guest kernel"), "{e}");
    let mut bad = good.clone();
    bad.extend_from_slice(&[0; 7]);
    assert!(refused(&variant("tail", &bad), id()).contains("after the last section"));
    let e = refused(&variant("empty", &[]), id());
    assert!(e.contains("truncated") && !e.contains('\n'), "{e}");
    // A corrupt page is caught when read, not at open (opening stays O(index)).
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let s = Snapshot::open(&variant("page", &bad), id()).expect("index is intact");
    let mut buf = page(0);
    let e = s.read_page(0x8000, &mut buf).expect_err("corrupt page");
    assert!(e.to_string().contains("corrupt page at GPA 0x8000"), "{e}");
}

#[test]
fn writer_refuses_repeated_or_unaligned_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = page(1);
    let p = dir.path().join("x.snap");
    assert!(write(&p, id(), None, b"", &[(0x1000, &a), (0x1000, &a)]).is_err());
    assert!(write(&p, id(), None, b"", &[(0x1001, &a)]).is_err());
    assert!(!p.exists());
}

#[test]
fn base_plus_incremental_equals_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base_path, base_id) = full(dir.path());
    let inc_path = dir.path().join("inc.snap");
    let (b2, d) = (page(0x22), page(0x44));
    write(
        &inc_path,
        id(),
        Some(base_id),
        b"state2",
        &[(0x5000, &b2), (0xa000, &d)],
    )
    .expect("write inc");
    let full_path = dir.path().join("full2.snap");
    let (a, c) = (page(1), page(3));
    write(
        &full_path,
        id(),
        None,
        b"state2",
        &[(0x1000, &a), (0x5000, &b2), (0x8000, &c), (0xa000, &d)],
    )
    .expect("write full");
    // An incremental file is not a full snapshot, and must sit on its own base.
    assert!(refused(&inc_path, id()).contains("layered on snapshot"));
    assert!(Snapshot::open_layer(&inc_path, id(), base_id ^ 1).is_err());
    let base = Arc::new(Snapshot::open(&base_path, id()).expect("base"));
    let inc = Arc::new(Snapshot::open_layer(&inc_path, id(), base_id).expect("inc"));
    let whole = Arc::new(Snapshot::open(&full_path, id()).expect("full"));
    let range = vec![(0x10_0000_0000, 0, 16 * PAGE)];
    let mut layered = SnapshotSource::new(vec![base, inc], range.clone());
    let mut single = SnapshotSource::new(vec![whole], range);
    for i in 0..16 {
        let hva = 0x10_0000_0000 + i * PAGE;
        let (mut x, mut y) = (page(0xee), page(0xee));
        let (hx, hy) = (layered.read(hva, &mut x), single.read(hva, &mut y));
        assert_eq!(hx, hy, "page {i}");
        if hx {
            assert_eq!(x, y, "page {i}");
        }
    }
}

#[test]
fn uffd_restore_reads_only_touched_pages() {
    // SAFETY: probe only; the descriptor is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if fd < 0 {
        eprintln!("skipped: userfaultfd unsupported by host");
        return;
    }
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd as i32) };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mem.snap");
    let pages: Vec<[u8; PAGE as usize]> = (0..64u8).map(page).collect();
    let list: Vec<(u64, &[u8; PAGE as usize])> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 * PAGE, p))
        .collect();
    let want = Identity::of(64 * PAGE, KERNEL);
    write(&path, want, None, b"", &list).expect("write");
    let snap = Arc::new(Snapshot::open(&path, want).expect("open"));
    let len = (64 * PAGE) as usize;
    // SAFETY: a fresh private anonymous mapping, unmapped at the end of the test.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let hva = base as u64;
    let src = SnapshotSource::new(vec![snap], vec![(hva, 0, 64 * PAGE)]);
    let counters = src.counters.clone();
    // SAFETY: the mapping lives until after the handler is dropped.
    let h = unsafe { UffdHandler::start(&[(hva, 64 * PAGE)], Box::new(src)) }.expect("uffd");
    for i in [3u64, 7, 40] {
        // SAFETY: inside the mapping; the handler serves the page from the file.
        let v = unsafe { std::ptr::read_volatile((hva + i * PAGE + 100) as *const u8) };
        assert_eq!(v, i as u8);
    }
    let s = h.stats();
    assert_eq!(
        (counters.pages_read.load(Ordering::Relaxed), s.copies),
        (3, 3),
        "{s:?}"
    );
    assert_eq!(h.stats().copies, 3);
    drop(h);
    // SAFETY: the test's own mapping, after the handler stopped.
    unsafe { libc::munmap(base, len) };
}
