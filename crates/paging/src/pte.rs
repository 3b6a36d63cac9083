//! Page-table entries: [`Pte`] and its [`PteFlags`], with the reserved-bit rules of 4-level
//! paging.
//!
//! Layout (Intel SDM Vol. 3A §4.5, tables 4-14 … 4-20):
//!
//! ```text
//!  63  62..52  51 ........................ 12  11..9  8  7   6  5  4   3   2  1  0
//!  XD  ignored  address of table / page        ign.   G  PS  D  A  PCD PWT US RW P
//! ```
//!
//! In a 2 MiB leaf the address is bits 51:21 (bits 20:13 reserved, bit 12 PAT); in a 1 GiB
//! leaf bits 51:30 (29:13 reserved, 12 PAT). Bits M..51 are reserved everywhere, with M the
//! guest's MAXPHYADDR. PS is reserved in a PML4E; XD is reserved unless IA32_EFER.NXE = 1.
//! In a PTE (level 1) bit 7 is PAT, not PS; this module never sets PAT.

use crate::addr::Gpa;

/// Bits 51:12: the address field of an entry.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Flag bits of a page-table entry (everything outside [`ADDR_MASK`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct PteFlags(u64);

impl PteFlags {
    /// P: the entry is present.
    pub const PRESENT: PteFlags = PteFlags(1 << 0);
    /// R/W: writes allowed (if set at every level).
    pub const WRITABLE: PteFlags = PteFlags(1 << 1);
    /// U/S: user-mode (CPL 3) accesses allowed (if set at every level).
    pub const USER: PteFlags = PteFlags(1 << 2);
    /// PWT: page-level write-through.
    pub const PWT: PteFlags = PteFlags(1 << 3);
    /// PCD: page-level cache disable.
    pub const PCD: PteFlags = PteFlags(1 << 4);
    /// A: accessed (set by the CPU).
    pub const ACCESSED: PteFlags = PteFlags(1 << 5);
    /// D: dirty (set by the CPU; leaves only).
    pub const DIRTY: PteFlags = PteFlags(1 << 6);
    /// PS: this PDPTE / PDE maps a 1 GiB / 2 MiB page.
    pub const HUGE: PteFlags = PteFlags(1 << 7);
    /// G: global translation (survives CR3 loads when CR4.PGE = 1; leaves only).
    pub const GLOBAL: PteFlags = PteFlags(1 << 8);
    /// XD / NX: instruction fetches not allowed (needs IA32_EFER.NXE = 1).
    pub const NO_EXECUTE: PteFlags = PteFlags(1 << 63);

    /// Flags a caller may give a leaf (HUGE is set by the mapper itself).
    pub const LEAF_ALLOWED: PteFlags = PteFlags(
        Self::PRESENT.0
            | Self::WRITABLE.0
            | Self::USER.0
            | Self::PWT.0
            | Self::PCD.0
            | Self::ACCESSED.0
            | Self::DIRTY.0
            | Self::GLOBAL.0
            | Self::NO_EXECUTE.0,
    );

    /// Names in display order.
    const NAMES: [(PteFlags, &'static str); 10] = [
        (Self::PRESENT, "P"),
        (Self::WRITABLE, "RW"),
        (Self::USER, "US"),
        (Self::PWT, "PWT"),
        (Self::PCD, "PCD"),
        (Self::ACCESSED, "A"),
        (Self::DIRTY, "D"),
        (Self::HUGE, "PS"),
        (Self::GLOBAL, "G"),
        (Self::NO_EXECUTE, "NX"),
    ];

    /// No flags.
    pub const fn empty() -> Self {
        PteFlags(0)
    }

    /// From raw bits; address bits (51:12) are dropped.
    pub const fn from_bits_truncate(bits: u64) -> Self {
        PteFlags(bits & !ADDR_MASK)
    }

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// True if every flag of `other` is set.
    pub const fn contains(self, other: PteFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if any flag of `other` is set.
    pub const fn intersects(self, other: PteFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// True if no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `self | other`.
    pub const fn union(self, other: PteFlags) -> Self {
        PteFlags(self.0 | other.0)
    }

    /// `self & !other`.
    pub const fn difference(self, other: PteFlags) -> Self {
        PteFlags(self.0 & !other.0)
    }

    /// Set the flags of `other`.
    pub fn insert(&mut self, other: PteFlags) {
        self.0 |= other.0;
    }

    /// Clear the flags of `other`.
    pub fn remove(&mut self, other: PteFlags) {
        self.0 &= !other.0;
    }
}

impl core::ops::BitOr for PteFlags {
    type Output = PteFlags;
    fn bitor(self, rhs: PteFlags) -> PteFlags {
        self.union(rhs)
    }
}

impl core::ops::BitOrAssign for PteFlags {
    fn bitor_assign(&mut self, rhs: PteFlags) {
        self.insert(rhs);
    }
}

impl core::ops::BitAnd for PteFlags {
    type Output = PteFlags;
    fn bitand(self, rhs: PteFlags) -> PteFlags {
        PteFlags(self.0 & rhs.0)
    }
}

impl core::ops::Sub for PteFlags {
    type Output = PteFlags;
    fn sub(self, rhs: PteFlags) -> PteFlags {
        self.difference(rhs)
    }
}

impl core::fmt::Display for PteFlags {
    /// Space-separated names of the set flags, e.g. `P RW US NX`; other bits as hex.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut first = true;
        let mut rest = self.0;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(" ")?;
                }
                f.write_str(name)?;
                first = false;
                rest &= !flag.0;
            }
        }
        if rest != 0 {
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{rest:#x}")?;
            first = false;
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

impl core::fmt::Debug for PteFlags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PteFlags({self})")
    }
}

/// Reserved bits M..51 for a MAXPHYADDR of `phys_bits` (clamped to 12..=52).
pub const fn phys_reserved_mask(phys_bits: u8) -> u64 {
    let m = if phys_bits < 12 {
        12
    } else if phys_bits > 52 {
        52
    } else {
        phys_bits
    };
    ADDR_MASK & !((1u64 << m) - 1)
}

/// A 64-bit page-table entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Pte(u64);

impl Pte {
    /// The empty (not present) entry.
    pub const EMPTY: Pte = Pte(0);

    /// An entry pointing at `gpa` (bits 51:12 kept, the rest dropped) with `flags`
    /// (address bits of `flags` dropped).
    pub const fn new(gpa: Gpa, flags: PteFlags) -> Self {
        Pte((gpa.raw() & ADDR_MASK) | (flags.0 & !ADDR_MASK))
    }

    /// From the raw 64-bit value.
    pub const fn from_raw(raw: u64) -> Self {
        Pte(raw)
    }

    /// The raw 64-bit value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Bits 51:12 as a GPA. For a 2 MiB / 1 GiB leaf use [`Pte::leaf_addr`], which drops the
    /// PAT bit and the reserved low bits.
    pub const fn addr(self) -> Gpa {
        Gpa::new(self.0 & ADDR_MASK)
    }

    /// The frame address of this entry interpreted at `level` (1–4): bits 51:12 for a table
    /// pointer or a 4 KiB leaf, 51:21 for a 2 MiB leaf, 51:30 for a 1 GiB leaf.
    pub const fn leaf_addr(self, level: u8) -> Gpa {
        if self.is_leaf(level) {
            let mask = match level {
                2 => ADDR_MASK & !((1 << 21) - 1),
                3 => ADDR_MASK & !((1 << 30) - 1),
                _ => ADDR_MASK,
            };
            Gpa::new(self.0 & mask)
        } else {
            self.addr()
        }
    }

    /// The flag bits (everything outside bits 51:12).
    pub const fn flags(self) -> PteFlags {
        PteFlags::from_bits_truncate(self.0)
    }

    /// P is set.
    pub const fn is_present(self) -> bool {
        self.0 & PteFlags::PRESENT.0 != 0
    }

    /// True if this present entry maps a page at `level` instead of pointing to a table:
    /// always at level 1, with PS at levels 2 and 3, never at level 4 (or other levels).
    pub const fn is_leaf(self, level: u8) -> bool {
        if !self.is_present() {
            return false;
        }
        match level {
            1 => true,
            2 | 3 => self.0 & PteFlags::HUGE.0 != 0,
            _ => false,
        }
    }

    /// Reserved bits of this entry that are set, for an entry in a table at `level` (4 =
    /// PML4), a MAXPHYADDR of `phys_bits` and `nxe` = IA32_EFER.NXE. Zero for a
    /// non-present entry (the CPU ignores the other bits then).
    pub const fn reserved_bits(self, level: u8, phys_bits: u8, nxe: bool) -> u64 {
        if !self.is_present() {
            return 0;
        }
        let mut rsvd = phys_reserved_mask(phys_bits);
        if !nxe {
            rsvd |= PteFlags::NO_EXECUTE.0;
        }
        match level {
            4 => rsvd |= PteFlags::HUGE.0,
            3 if self.is_leaf(3) => rsvd |= 0x3fff_e000, // bits 29:13
            2 if self.is_leaf(2) => rsvd |= 0x001f_e000, // bits 20:13
            _ => {}
        }
        self.0 & rsvd
    }
}

impl core::fmt::Debug for Pte {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Pte({:#018x}: {} {})", self.0, self.addr(), self.flags())
    }
}

impl core::fmt::LowerHex for Pte {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::LowerHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_bits_are_the_sdm_bits() {
        assert_eq!(PteFlags::PRESENT.bits(), 0x1);
        assert_eq!(PteFlags::WRITABLE.bits(), 0x2);
        assert_eq!(PteFlags::USER.bits(), 0x4);
        assert_eq!(PteFlags::PWT.bits(), 0x8);
        assert_eq!(PteFlags::PCD.bits(), 0x10);
        assert_eq!(PteFlags::ACCESSED.bits(), 0x20);
        assert_eq!(PteFlags::DIRTY.bits(), 0x40);
        assert_eq!(PteFlags::HUGE.bits(), 0x80);
        assert_eq!(PteFlags::GLOBAL.bits(), 0x100);
        assert_eq!(PteFlags::NO_EXECUTE.bits(), 0x8000_0000_0000_0000);
        assert_eq!(PteFlags::LEAF_ALLOWED.bits(), 0x8000_0000_0000_017f);
    }

    #[test]
    fn pte_new_and_fields() {
        let f = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::NO_EXECUTE;
        let pte = Pte::new(Gpa::new(0x1234_5678_9000), f);
        assert_eq!(pte.raw(), 0x8000_1234_5678_9003);
        assert_eq!(pte.addr(), Gpa::new(0x1234_5678_9000));
        assert_eq!(pte.flags(), f);
        assert!(pte.is_present() && pte.is_leaf(1) && !pte.is_leaf(2) && !pte.is_leaf(4));
        // Address bits beyond 51 and below 12 are dropped, never mixed into the flags.
        let pte = Pte::new(Gpa::new(0xfff0_0000_0000_0fff), PteFlags::PRESENT);
        assert_eq!(pte.raw(), 0x1);
        // Flags cannot smuggle address bits.
        assert_eq!(
            PteFlags::from_bits_truncate(u64::MAX).bits(),
            0xfff0_0000_0000_0fff
        );
        assert!(!Pte::EMPTY.is_present() && !Pte::EMPTY.is_leaf(1));
    }

    #[test]
    fn large_leaf_address_and_reserved_bits() {
        let huge = PteFlags::PRESENT | PteFlags::HUGE;
        let pde = Pte::new(Gpa::new(0x4020_0000), huge);
        assert!(pde.is_leaf(2));
        assert_eq!(pde.leaf_addr(2), Gpa::new(0x4020_0000));
        assert_eq!(pde.reserved_bits(2, 52, true), 0);
        let bad = Pte::from_raw(0x4020_2000 | huge.bits());
        assert_eq!(bad.reserved_bits(2, 52, true), 0x2000);
        assert_eq!(bad.leaf_addr(2), Gpa::new(0x4020_0000));
        let pdpte = Pte::from_raw(0x4000_0000 | 0x1000_0000 | huge.bits());
        assert_eq!(pdpte.reserved_bits(3, 52, true), 0x1000_0000);
        // PS in a PML4E is reserved; NX is reserved without NXE; bits above MAXPHYADDR.
        assert_eq!(Pte::from_raw(huge.bits()).reserved_bits(4, 52, true), 0x80);
        let nx = Pte::new(Gpa::new(0x1000), PteFlags::PRESENT | PteFlags::NO_EXECUTE);
        assert_eq!(nx.reserved_bits(1, 52, false), 1 << 63);
        let high = Pte::new(Gpa::new(1 << 40), PteFlags::PRESENT);
        assert_eq!(high.reserved_bits(1, 40, true), 1 << 40);
        assert_eq!(high.reserved_bits(1, 41, true), 0);
        assert_eq!(Pte::from_raw(u64::MAX - 1).reserved_bits(1, 36, false), 0);
        assert_eq!(phys_reserved_mask(52), 0);
        assert_eq!(phys_reserved_mask(200), 0);
        assert_eq!(phys_reserved_mask(0), ADDR_MASK);
    }

    #[test]
    fn display() {
        let f = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER | PteFlags::NO_EXECUTE;
        assert_eq!(f.to_string(), "P RW US NX");
        assert_eq!(PteFlags::empty().to_string(), "-");
        assert_eq!(PteFlags::from_bits_truncate(0x201).to_string(), "P 0x200");
        assert_eq!((f - PteFlags::USER).to_string(), "P RW NX");
    }
}
