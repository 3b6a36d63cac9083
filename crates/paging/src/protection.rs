//! Protection presets and their leaf PTE flags.
//!
//! A [`Protection`] says what an access may do; [`Protection::to_pte_flags`] turns it into
//! the leaf flags (intermediate entries are always `P | RW | US`, see the [module
//! docs](super)). x86 paging cannot express every combination, so the mapping is:
//!
//! | field           | leaf bits                                   |
//! |-----------------|---------------------------------------------|
//! | any access      | P (present implies readable)                |
//! | `write`         | RW                                          |
//! | `user`          | US                                          |
//! | `!exec`         | NX, only when `nx_supported` (else executable) |
//! | `cache_disable` | PCD \| PWT (uncached, for MMIO)              |
//!
//! No access at all (`read`, `write` and `exec` all false) gives empty flags (not present):
//! such a range must be left unmapped, and `map` refuses the flags. Write without read and
//! execute-only are not expressible and come out readable.
//!
//! The presets follow seed `003_733038d7242770b3.txt` (KERNEL_CODE, KERNEL_DATA, USER_CODE,
//! USER_DATA, DEVICE_MEMORY) plus read-only data for W^X kernel and user images.

use super::pte::PteFlags;

/// What accesses a mapping allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Protection {
    /// Loads allowed.
    pub read: bool,
    /// Stores allowed.
    pub write: bool,
    /// Instruction fetches allowed.
    pub exec: bool,
    /// Accessible from user mode (CPL 3).
    pub user: bool,
    /// Uncached (PCD | PWT), for device memory.
    pub cache_disable: bool,
}

impl Protection {
    /// No access (leave unmapped).
    pub const NONE: Protection = Protection::new(false, false, false, false);
    /// Kernel text: read + execute → `P`.
    pub const KERNEL_CODE: Protection = Protection::new(true, false, true, false);
    /// Kernel data / bss / stack / heap: read + write → `P RW NX`.
    pub const KERNEL_DATA: Protection = Protection::new(true, true, false, false);
    /// Kernel read-only data: read → `P NX`.
    pub const KERNEL_RODATA: Protection = Protection::new(true, false, false, false);
    /// User text: read + execute → `P US`.
    pub const USER_CODE: Protection = Protection::new(true, false, true, true);
    /// User data: read + write → `P RW US NX`.
    pub const USER_DATA: Protection = Protection::new(true, true, false, true);
    /// User read-only data: read → `P US NX`.
    pub const USER_RODATA: Protection = Protection::new(true, false, false, true);
    /// Device memory (MMIO): kernel read + write, uncached → `P RW PWT PCD NX`.
    pub const DEVICE_MEMORY: Protection = Protection {
        read: true,
        write: true,
        exec: false,
        user: false,
        cache_disable: true,
    };

    /// A cacheable protection.
    pub const fn new(read: bool, write: bool, exec: bool, user: bool) -> Self {
        Protection {
            read,
            write,
            exec,
            user,
            cache_disable: false,
        }
    }

    /// True if some access is allowed (the range should be mapped at all).
    pub const fn is_accessible(self) -> bool {
        self.read || self.write || self.exec
    }

    /// Leaf PTE flags for this protection; `nx_supported` = CPUID.80000001H:EDX.NX and
    /// IA32_EFER.NXE set. Empty flags for [`Protection::NONE`].
    pub const fn to_pte_flags(self, nx_supported: bool) -> PteFlags {
        if !self.is_accessible() {
            return PteFlags::empty();
        }
        let mut bits = PteFlags::PRESENT.bits();
        if self.write {
            bits |= PteFlags::WRITABLE.bits();
        }
        if self.user {
            bits |= PteFlags::USER.bits();
        }
        if self.cache_disable {
            bits |= PteFlags::PCD.bits() | PteFlags::PWT.bits();
        }
        if !self.exec && nx_supported {
            bits |= PteFlags::NO_EXECUTE.bits();
        }
        PteFlags::from_bits_truncate(bits)
    }

    /// The protection that leaf `flags` grant (the inverse of [`Protection::to_pte_flags`]
    /// with NX support: a present page is readable; executable unless NX).
    pub const fn from_pte_flags(flags: PteFlags) -> Self {
        if !flags.contains(PteFlags::PRESENT) {
            return Protection::NONE;
        }
        Protection {
            read: true,
            write: flags.contains(PteFlags::WRITABLE),
            exec: !flags.contains(PteFlags::NO_EXECUTE),
            user: flags.contains(PteFlags::USER),
            cache_disable: flags.contains(PteFlags::PCD),
        }
    }
}

impl core::fmt::Display for Protection {
    /// `rwx`-style, e.g. `r-x`, `rw- user`, `rw- uncached`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let c = |b: bool, ch: char| if b { ch } else { '-' };
        write!(
            f,
            "{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.exec, 'x')
        )?;
        if self.user {
            f.write_str(" user")?;
        }
        if self.cache_disable {
            f.write_str(" uncached")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    const PWT: u64 = 8;
    const PCD: u64 = 0x10;
    const NX: u64 = 1 << 63;

    #[test]
    fn preset_bits_exact() {
        let cases = [
            (Protection::KERNEL_CODE, P),
            (Protection::KERNEL_DATA, P | RW | NX),
            (Protection::KERNEL_RODATA, P | NX),
            (Protection::USER_CODE, P | US),
            (Protection::USER_DATA, P | RW | US | NX),
            (Protection::USER_RODATA, P | US | NX),
            (Protection::DEVICE_MEMORY, P | RW | PWT | PCD | NX),
            (Protection::NONE, 0),
        ];
        for (prot, bits) in cases {
            assert_eq!(prot.to_pte_flags(true).bits(), bits, "{prot}");
            // Without NX support nothing is non-executable.
            assert_eq!(prot.to_pte_flags(false).bits(), bits & !NX, "{prot}");
        }
    }

    #[test]
    fn round_trip_and_display() {
        for prot in [
            Protection::KERNEL_CODE,
            Protection::KERNEL_DATA,
            Protection::KERNEL_RODATA,
            Protection::USER_CODE,
            Protection::USER_DATA,
            Protection::USER_RODATA,
            Protection::DEVICE_MEMORY,
            Protection::NONE,
        ] {
            assert_eq!(Protection::from_pte_flags(prot.to_pte_flags(true)), prot);
        }
        assert_eq!(Protection::KERNEL_CODE.to_string(), "r-x");
        assert_eq!(Protection::USER_DATA.to_string(), "rw- user");
        assert_eq!(Protection::DEVICE_MEMORY.to_string(), "rw- uncached");
        // Write-only comes out readable; exec-only likewise.
        let wo = Protection::new(false, true, false, false);
        assert_eq!(wo.to_pte_flags(true).bits(), P | RW | NX);
    }
}
