//! Unit tests of guest RAM: sizes, layout around the MMIO hole, the memslot registry.

use super::*;

#[test]
fn sizes() {
    assert_eq!(parse_size("256M"), Ok(256 << 20));
    assert_eq!(parse_size("4g"), Ok(4 << 30));
    assert_eq!(parse_size("64GiB"), Ok(64 << 30));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("12Q").is_err());
    assert!(parse_size("").is_err());
    assert!(parse_size("M").is_err());
    assert!(parse_size("99999999999999999999").is_err());
    assert!(parse_size("16777216T").is_err());
}

#[test]
fn layout_around_hole() {
    assert_eq!(ram_ranges(256 << 20), vec![(Gpa::new(0), 256 << 20)]);
    assert_eq!(
        ram_ranges(4 << 30),
        vec![(Gpa::new(0), 3 << 30), (Gpa::new(4 << 30), 1 << 30)]
    );
    let e = e820_for(&ram_ranges(4 << 30));
    assert_eq!(e.len(), 3);
    assert_eq!(
        (e[1].addr, e[1].size, e[1].kind),
        (3 << 30, 1 << 30, E820_RESERVED)
    );
    assert_eq!((e[2].addr, e[2].kind), (4 << 30, E820_RAM));
}

#[test]
fn memslot_registry_refuses_overlaps_and_excess() {
    let mut m = Memslots::new(2);
    m.track(
        Memslot {
            slot: 0,
            gpa: 0,
            size: 1 << 20,
            flags: 0,
        },
        0,
    );
    assert!(matches!(
        m.check(0x8_0000, 0x1000, None),
        Err(MemoryError::Overlap { other: 0, .. })
    ));
    assert!(m.check(1 << 20, 0x1000, None).is_ok());
    assert!(matches!(
        m.check(1 << 20, 0, None),
        Err(MemoryError::BadSlot { .. })
    ));
    assert!(matches!(
        m.check(u64::MAX - 0xfff, 0x2000, None),
        Err(MemoryError::BadSlot { .. })
    ));
    m.track(
        Memslot {
            slot: 1,
            gpa: 2 << 20,
            size: 0x1000,
            flags: 0,
        },
        0,
    );
    assert!(matches!(
        m.check(8 << 20, 0x1000, None),
        Err(MemoryError::TooManySlots { limit: 2 })
    ));
}

#[test]
fn bad_sizes() {
    assert!(matches!(GuestRam::new(0), Err(MemoryError::Zero)));
    assert!(matches!(
        GuestRam::new(4097),
        Err(MemoryError::Unaligned { .. })
    ));
    assert!(matches!(
        GuestRam::new(2 << 40),
        Err(MemoryError::TooLarge { .. })
    ));
    let r = GuestRam::new(8 << 20).expect("8 MiB");
    assert!(r.contains(0, 8 << 20));
    assert!(!r.contains(0, (8 << 20) + 1));
    assert!(!r.contains(u64::MAX, 2));
}
