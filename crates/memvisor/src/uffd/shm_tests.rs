//! Unit tests of shared-memory RAM under userfaultfd (MINOR mode, prefill through the alias,
//! REMOVE by hole punching) and of chosen GPA ranges, on [`GuestRam`] without KVM.

use super::*;
use crate::memory::{GuestRam, RamBacking};
use vm_memory::{Bytes, GuestAddress};

fn available() -> bool {
    // SAFETY: probe only; the descriptor is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(fd as i32) };
    }
    fd >= 0
}

fn read(ram: &GuestRam, gpa: u64) -> u64 {
    ram.mem
        .read_obj::<u64>(GuestAddress(gpa))
        .expect("read guest RAM")
}

fn shm_ram() -> Option<GuestRam> {
    if !available() {
        eprintln!("skipped: userfaultfd unsupported by host");
        return None;
    }
    let mut ram = GuestRam::new_with(16 << 20, RamBacking::Shm).expect("shm RAM");
    match ram.attach_uffd(Box::new(ZeroSource)) {
        Ok(()) => Some(ram),
        Err(UffdError::Unsupported { what }) => {
            eprintln!("skipped: unsupported by host ({what})");
            None
        }
        Err(e) => panic!("attach: {e}"),
    }
}

fn stats(ram: &GuestRam) -> UffdStats {
    ram.uffd.as_ref().expect("handler").stats()
}

#[test]
fn page_filled_through_the_alias_is_a_minor_fault() {
    let Some(ram) = shm_ram() else { return };
    let shm = ram.shm.as_ref().expect("shm backing");
    let gpa = 0x10_000;
    let page = [0xabu8; PAGE as usize];
    shm.write(ram.shm_offset(gpa).expect("offset"), &page)
        .expect("write through the alias");
    assert_eq!(stats(&ram).faults, 0, "the alias is not registered");
    assert_eq!(read(&ram, gpa + 8), 0xabab_abab_abab_abab);
    let s = stats(&ram);
    assert_eq!(s.mode, UffdMode::MissingMinor);
    assert_eq!(
        (s.faults, s.minor_faults, s.continues, s.missing_faults),
        (1, 1, 1, 0)
    );
    // Prefilled (zeroed) pages: first touches are minor and read zero. In order, the
    // continue-ahead run doubles: faults on pages 0, 1 (maps 1-2), 3 (maps 3; 4 is not in
    // the page cache: the run stops there).
    ram.shm_prefill(0x20_000, 4 * PAGE).expect("prefill");
    for i in 0..4 {
        assert_eq!(read(&ram, 0x20_000 + i * PAGE), 0);
    }
    let s = stats(&ram);
    assert_eq!(
        (
            s.minor_faults,
            s.continues,
            s.continue_ahead,
            s.missing_faults
        ),
        (4, 4, 1, 0)
    );
    // A page not in the page cache is a missing fault, served zero.
    assert_eq!(read(&ram, 0x100_000), 0);
    let s = stats(&ram);
    assert_eq!((s.minor_faults, s.missing_faults, s.zeropages), (4, 1, 1));
    assert_eq!(s.errors, 0);
    assert_eq!(s.hist_ns_log2.iter().sum::<u64>(), 5);
}

#[test]
fn remove_on_shm_serves_zero_never_stale() {
    let Some(ram) = shm_ram() else { return };
    let gpa = 0x40_000;
    ram.mem
        .write_obj(0x1122_3344_5566_7788u64, GuestAddress(gpa))
        .expect("write");
    assert_eq!(read(&ram, gpa), 0x1122_3344_5566_7788);
    // The guest freed the frame: MADV_REMOVE punches the memfd (page cache included).
    ram.discard_if_uffd(gpa, PAGE);
    // (The handler counts the event after reading it, before serving the next fault.)
    assert_eq!(read(&ram, gpa), 0, "stale data came back after REMOVE");
    let s = stats(&ram);
    assert_eq!((s.remove_events, s.removed_pages), (1, 1));
    assert_eq!(s.minor_faults, 0, "the page cache kept the discarded page");
    assert!(s.missing_faults >= 2);
    // The alias sees the hole too.
    let shm = ram.shm.as_ref().expect("shm backing");
    let alias = shm
        .alias_hva(ram.shm_offset(gpa).expect("offset"))
        .expect("alias");
    // SAFETY: inside the live alias mapping of the memfd.
    assert_eq!(unsafe { std::ptr::read_volatile(alias as *const u64) }, 0);
    // A prefill after the discard makes the next touch minor again, still zero.
    ram.discard_if_uffd(gpa, PAGE);
    ram.shm_prefill(gpa, PAGE).expect("prefill");
    assert_eq!(read(&ram, gpa), 0);
}

#[test]
fn minor_mode_needs_shared_memory() {
    if !available() {
        eprintln!("skipped: userfaultfd unsupported by host");
        return;
    }
    let mut anon = GuestRam::new(16 << 20).expect("RAM");
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let r: Vec<(u64, u64)> = anon
        .mem
        .iter()
        .map(|r| (r.as_ptr() as u64, r.len()))
        .collect();
    // SAFETY: the ranges are RAM's own mapping, alive while `anon` lives (the handler is
    // dropped at once on success).
    let res = unsafe { UffdHandler::start_with(&r, Box::new(ZeroSource), UffdMode::MissingMinor) };
    assert!(res.is_err(), "MINOR on anonymous memory must be refused");
    assert!(matches!(
        anon.shm_prefill(0, PAGE),
        Err(UffdError::BadGpaRange { .. })
    ));
    anon.attach_uffd(Box::new(ZeroSource)).expect("MISSING");
    assert_eq!(stats(&anon).mode, UffdMode::Missing);
}

#[test]
fn chosen_range_only_faults_there() {
    if !available() {
        eprintln!("skipped: userfaultfd unsupported by host");
        return;
    }
    let mut ram = GuestRam::new(16 << 20).expect("RAM");
    for bad in [
        vec![(0x1000, 0)],
        vec![(0x1800, 0x1000)],
        vec![(15 << 20, 2 << 20)],
        vec![(0, 0x3000), (0x2000, 0x1000)],
    ] {
        assert!(
            matches!(
                ram.attach_uffd_ranges(Box::new(ZeroSource), &bad),
                Err(UffdError::BadGpaRange { .. })
            ),
            "{bad:x?}"
        );
    }
    let (start, len) = (0x100_000, 0x100_000);
    ram.attach_uffd_ranges(Box::new(ZeroSource), &[(start, len)])
        .expect("attach");
    let h = ram.uffd.as_ref().expect("handler");
    h.track_touched();
    ram.mem.write_obj(1u64, GuestAddress(0x50_000)).expect("w");
    ram.mem.write_obj(2u64, GuestAddress(0x300_000)).expect("w");
    assert_eq!(h.stats().faults, 0, "outside the range: ordinary memory");
    ram.mem.write_obj(3u64, GuestAddress(0x180_000)).expect("w");
    let s = h.stats();
    assert_eq!((s.faults, s.registered_bytes), (1, len));
    let hva0 = ram.hva(start).expect("hva");
    let touched = h.take_touched();
    assert!(!touched.is_empty());
    assert!(touched.iter().all(|&p| p >= hva0 && p < hva0 + len));
    assert_eq!(read(&ram, 0x180_000), 3);
}

#[test]
fn gpa_range_syntax() {
    assert_eq!(
        parse_gpa_range("0x1000..0x3000").ok(),
        Some((0x1000, 0x2000))
    );
    assert_eq!(parse_gpa_range("4096..8192").ok(), Some((4096, 4096)));
    assert_eq!(
        parse_gpa_range("0x10_0000..0x20_0000").ok(),
        Some((0x10_0000, 0x10_0000))
    );
    for bad in [
        "",
        "0x1000",
        "0x1000..",
        "..0x2000",
        "0x2000..0x1000",
        "0x1000..0x1000",
    ] {
        assert!(parse_gpa_range(bad).is_err(), "{bad}");
    }
    assert!(parse_gpa_range("0x1001..0x3000").is_err());
    assert!(parse_gpa_range("0x1000..0xffffffffffffffffff").is_err());
}

#[test]
fn prefault_cursor_fills_the_page_cache_then_touches_are_minor() {
    let Some(mut ram) = shm_ram() else { return };
    let mut anon = GuestRam::new(16 << 20).expect("RAM");
    assert!(matches!(
        anon.start_prefault_cursor(),
        Err(UffdError::NoCursor { .. })
    ));
    // A page the VMM wrote before the cursor keeps its data.
    ram.mem
        .write_obj(0x5555_u64, GuestAddress(0x200_000))
        .expect("write");
    ram.start_prefault_cursor().expect("cursor");
    assert!(matches!(
        ram.start_prefault_cursor(),
        Err(UffdError::NoCursor { .. })
    ));
    let t0 = std::time::Instant::now();
    while stats(&ram).prefaulted_bytes < 16 << 20 {
        assert!(
            t0.elapsed().as_secs() < 20,
            "cursor stalled: {:?}",
            stats(&ram)
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(stats(&ram).prefaulted_bytes, 16 << 20);
    let before = stats(&ram);
    for i in 0..64u64 {
        assert_eq!(read(&ram, 0x800_000 + i * PAGE), 0);
    }
    assert_eq!(read(&ram, 0x200_000), 0x5555);
    let s = stats(&ram);
    assert_eq!(
        s.missing_faults, before.missing_faults,
        "all pages were in the page cache"
    );
    assert!(s.minor_faults > before.minor_faults);
    // 65 pages read (continue-ahead may map more past them).
    assert!(s.continues + s.continue_ahead - before.continues - before.continue_ahead >= 65);
    assert_eq!(s.errors, 0);
    drop(anon);
}
