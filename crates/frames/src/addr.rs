//! Address newtypes: guest physical address ([`Gpa`]), guest virtual address ([`Gva`]) and
//! page frame number ([`Pfn`]).
//!
//! All arithmetic that can overflow is checked and returns [`AddrError`] rather than wrapping
//! or panicking, because most addresses reaching the host come from the guest (hostile input).
//! A frame is 4 KiB ([`PAGE_SIZE`] bytes); `Pfn(n)` covers GPAs `[n * 4096, (n + 1) * 4096)`.
//!
//! Sources: Intel SDM Vol. 3A §4.1 (paging modes, 4 KiB pages), §4.5 (4-level paging:
//! canonical 48-bit linear addresses); seed `002_2147badeb8a18e20.txt` (Orbita `PhysAddr`,
//! `Frame::containing_address`).

use thiserror::Error;

/// Size of one frame / small page in bytes (4 KiB).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Size of a 2 MiB large page in bytes (a PD-level leaf).
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;
/// Size of a 1 GiB huge page in bytes (a PDPT-level leaf).
pub const HUGE_PAGE_SIZE: u64 = 1 << 30;

/// Errors of address arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AddrError {
    /// `base + offset` (or an align-up) does not fit in 64 bits.
    #[error("address overflow: {base:#x} + {offset:#x} exceeds 2^64")]
    Overflow {
        /// The starting address or value.
        base: u64,
        /// The amount added.
        offset: u64,
    },
    /// The alignment is zero or not a power of two.
    #[error("alignment {align:#x} is not a power of two")]
    BadAlign {
        /// The rejected alignment in bytes.
        align: u64,
    },
    /// A guest virtual address is not canonical for 48-bit linear addresses (bits 63:47 are
    /// not all equal; SDM Vol. 3A §3.3.7.1).
    #[error("GVA {addr:#x} is not canonical (48-bit)")]
    NonCanonical {
        /// The rejected address.
        addr: u64,
    },
    /// A frame number whose byte address does not fit in 64 bits.
    #[error("PFN {pfn:#x} is out of range")]
    PfnOutOfRange {
        /// The rejected frame number.
        pfn: u64,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, AddrError>;

/// Align `value` down to `align` bytes (`align` a power of two).
///
/// # Errors
/// [`AddrError::BadAlign`] if `align` is not a power of two.
pub const fn align_down(value: u64, align: u64) -> Result<u64> {
    if !align.is_power_of_two() {
        return Err(AddrError::BadAlign { align });
    }
    Ok(value & !(align - 1))
}

/// Align `value` up to `align` bytes (`align` a power of two).
///
/// # Errors
/// [`AddrError::BadAlign`] if `align` is not a power of two, [`AddrError::Overflow`] if the
/// result exceeds `u64::MAX`.
pub const fn align_up(value: u64, align: u64) -> Result<u64> {
    if !align.is_power_of_two() {
        return Err(AddrError::BadAlign { align });
    }
    match value.checked_add(align - 1) {
        Some(v) => Ok(v & !(align - 1)),
        None => Err(AddrError::Overflow {
            base: value,
            offset: align - 1,
        }),
    }
}

/// True if `value` is a multiple of `align` (`align` must be a power of two; false otherwise).
pub const fn is_aligned(value: u64, align: u64) -> bool {
    align.is_power_of_two() && value & (align - 1) == 0
}

/// Number of 4 KiB frames needed to hold `bytes` bytes (rounded up).
pub const fn frames_for(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE)
}

macro_rules! addr_common {
    ($t:ident) => {
        impl $t {
            /// The raw 64-bit value in bytes.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// `self + offset` bytes.
            ///
            /// # Errors
            /// [`AddrError::Overflow`] if the sum exceeds `u64::MAX`.
            pub const fn checked_add(self, offset: u64) -> Result<Self> {
                match self.0.checked_add(offset) {
                    Some(v) => Ok(Self(v)),
                    None => Err(AddrError::Overflow {
                        base: self.0,
                        offset,
                    }),
                }
            }

            /// Align down to `align` bytes.
            ///
            /// # Errors
            /// [`AddrError::BadAlign`] if `align` is not a power of two.
            pub const fn align_down(self, align: u64) -> Result<Self> {
                match align_down(self.0, align) {
                    Ok(v) => Ok(Self(v)),
                    Err(e) => Err(e),
                }
            }

            /// Align up to `align` bytes.
            ///
            /// # Errors
            /// [`AddrError::BadAlign`] or [`AddrError::Overflow`].
            pub const fn align_up(self, align: u64) -> Result<Self> {
                match align_up(self.0, align) {
                    Ok(v) => Ok(Self(v)),
                    Err(e) => Err(e),
                }
            }

            /// True if aligned to `align` bytes.
            pub const fn is_aligned(self, align: u64) -> bool {
                is_aligned(self.0, align)
            }

            /// Byte offset inside the containing 4 KiB page.
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }
        }

        impl core::fmt::Display for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl core::fmt::LowerHex for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

/// A guest physical address in bytes. Any 64-bit value (a GPA outside guest RAM is caught
/// where memory is touched); build one with [`Gpa::new`], read it with [`Gpa::raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Gpa(u64);

/// A guest virtual (linear) address in bytes, always canonical for 48-bit linear addresses
/// (bits 63:47 all equal; SDM Vol. 3A §3.3.7.1). Build one with [`Gva::new_canonical`]
/// (checked: guest and user data), [`Gva::new_truncate`] (sign-extends bit 47: computed
/// addresses) or [`Gva::new`] (constants and literals; panics if not canonical), the same
/// three constructors as the x86_64 crate's `VirtAddr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Gva(u64);

addr_common!(Gpa);
addr_common!(Gva);

impl Gpa {
    /// The GPA `addr` bytes.
    pub const fn new(addr: u64) -> Self {
        Gpa(addr)
    }

    /// The frame containing this address (`gpa / 4096`).
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }
}

impl Gva {
    /// A canonical GVA from a constant or literal.
    ///
    /// # Panics
    /// If `addr` is not canonical (at compile time when used in a `const`). Never call it
    /// with guest or user data: use [`Gva::new_canonical`].
    pub const fn new(addr: u64) -> Self {
        match Self::new_canonical(addr) {
            Ok(gva) => gva,
            Err(_) => panic!("Gva::new: address is not canonical (48-bit)"),
        }
    }

    /// `addr` made canonical by copying bit 47 into bits 63:48 (for addresses computed from
    /// table indices, as the x86_64 crate's `VirtAddr::new_truncate`).
    pub const fn new_truncate(addr: u64) -> Self {
        Gva((((addr << 16) as i64) >> 16) as u64)
    }

    /// A canonical 48-bit GVA: bits 63:47 all equal (SDM Vol. 3A §3.3.7.1).
    ///
    /// # Errors
    /// [`AddrError::NonCanonical`] otherwise.
    pub const fn new_canonical(addr: u64) -> Result<Self> {
        if is_canonical(addr) {
            Ok(Gva(addr))
        } else {
            Err(AddrError::NonCanonical { addr })
        }
    }

    /// True if bits 63:47 are all equal.
    pub const fn is_canonical(self) -> bool {
        is_canonical(self.0)
    }

    /// Index (0–511) of the entry that maps this GVA in the table at `level`
    /// (4 = PML4, 3 = PDPT, 2 = PD, 1 = PT). Levels outside 1–4 return 0.
    pub const fn table_index(self, level: u32) -> usize {
        if level == 0 || level > 4 {
            return 0;
        }
        ((self.0 >> (PAGE_SHIFT + 9 * (level - 1))) & 0x1ff) as usize
    }
}

/// True if `addr` is a canonical 48-bit linear address.
pub const fn is_canonical(addr: u64) -> bool {
    let top = (addr as i64) >> 47;
    top == 0 || top == -1
}

/// A page frame number: the index of a 4 KiB frame of guest physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Pfn(u64);

impl Pfn {
    /// The frame number `pfn` (any value: [`Pfn::gpa`] checks the byte address).
    pub const fn new(pfn: u64) -> Self {
        Pfn(pfn)
    }

    /// The raw frame number.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The GPA of the first byte of this frame.
    ///
    /// # Errors
    /// [`AddrError::PfnOutOfRange`] if `pfn * 4096` exceeds `u64::MAX`.
    pub const fn gpa(self) -> Result<Gpa> {
        if self.0 > (u64::MAX >> PAGE_SHIFT) {
            return Err(AddrError::PfnOutOfRange { pfn: self.0 });
        }
        Ok(Gpa(self.0 << PAGE_SHIFT))
    }

    /// The frame containing `gpa` (same as [`Gpa::pfn`]; seed 002 `Frame::containing_address`).
    pub const fn containing(gpa: Gpa) -> Self {
        gpa.pfn()
    }

    /// `self + n` frames.
    ///
    /// # Errors
    /// [`AddrError::Overflow`] if the sum exceeds `u64::MAX`.
    pub const fn checked_add(self, n: u64) -> Result<Self> {
        match self.0.checked_add(n) {
            Some(v) => Ok(Pfn(v)),
            None => Err(AddrError::Overflow {
                base: self.0,
                offset: n,
            }),
        }
    }
}

impl core::fmt::Display for Pfn {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_and_overflow() {
        assert_eq!(align_up(1, 4096), Ok(4096));
        assert_eq!(align_up(4096, 4096), Ok(4096));
        assert_eq!(align_down(4097, 4096), Ok(4096));
        assert!(matches!(
            align_up(u64::MAX, 4096),
            Err(AddrError::Overflow { .. })
        ));
        assert_eq!(align_up(5, 3), Err(AddrError::BadAlign { align: 3 }));
        assert_eq!(align_down(5, 0), Err(AddrError::BadAlign { align: 0 }));
        assert!(Gpa(u64::MAX).checked_add(1).is_err());
        assert_eq!(Gpa(0x1234).pfn(), Pfn(1));
        assert_eq!(Pfn(3).gpa(), Ok(Gpa(0x3000)));
        assert!(Pfn(u64::MAX).gpa().is_err());
        assert_eq!(frames_for(0), 0);
        assert_eq!(frames_for(1), 1);
        assert_eq!(frames_for(4097), 2);
    }

    #[test]
    fn canonical_and_indices() {
        assert!(is_canonical(0x0000_7fff_ffff_f000));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(Gva::new_canonical(0x0001_0000_0000_0000).is_err());
        let gva = Gva::new(0xffff_8880_0020_1000);
        assert_eq!(Gva::new_truncate(0x0000_8880_0020_1000), gva);
        assert_eq!(Gva::new_truncate(0x1000), Gva::new(0x1000));
        assert_eq!(gva.table_index(4), 0x111);
        assert_eq!(gva.table_index(3), 0);
        assert_eq!(gva.table_index(2), 1);
        assert_eq!(gva.table_index(1), 1);
        assert_eq!(gva.page_offset(), 0);
    }
}
