//! Guest memory layout. Every guest address constant (GVA and GPA) and the diagram that
//! matches them live in [`memvisor_abi::layout`] (the guest needs them too) and are
//! re-exported here; this module adds the host-only sizes and the part of the
//! guest-physical layout that depends on the host's MAXPHYADDR ([`PhysLayout`]).

pub use memvisor_abi::layout::*;

/// Default guest RAM size in bytes (256 MiB).
pub const DEFAULT_MEM_SIZE: u64 = 256 << 20;
/// Largest guest RAM size accepted by `--mem`, in bytes (1 TiB).
pub const MAX_MEM_SIZE: u64 = 1 << 40;

/// Frames in one page-table pool chunk: 512 (2 MiB, 2 MiB aligned), so the direct map can mark
/// a whole chunk read-only with one PD entry.
pub const TABLE_POOL_CHUNK_FRAMES: u64 = 512;

/// The guest-physical layout that depends on the host's MAXPHYADDR (CPUID 0x8000_0008
/// EAX\[7:0\], [`crate::backend::maxphyaddr`]): KVM refuses memslots ending above
/// 2^MAXPHYADDR on a two-dimensional-paging host, and the guest cannot address GPAs there.
///
/// With `top = 2^MAXPHYADDR`:
///
/// | | rule | MAXPHYADDR 48 | 40 | 39 |
/// | --- | --- | --- | --- | --- |
/// | stage-2 window base | min(1 TiB, top / 2) | 1 TiB | 512 GiB | 256 GiB |
/// | stage-2 window length | min(1 TiB, top / 4) | 1 TiB | 256 GiB | 128 GiB |
/// | largest `--mem` | min([`MAX_MEM_SIZE`], top / 2 − 1 GiB) | 1 TiB | 511 GiB | 255 GiB |
///
/// The 1 GiB subtracted is the MMIO hole RAM is moved past, so below 42 bits RAM ends at or
/// below the window base. (At 42 bits and more, `--mem` above 1023 GiB reaches the window:
/// the `stage2` scenario then reports the overlapping memslot.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PhysLayout {
    /// MAXPHYADDR (36..=52).
    pub maxphyaddr: u8,
    /// First GPA of the stage-2 test window ([`memvisor_abi::stage2`] offsets are relative to
    /// it).
    pub stage2_base: u64,
    /// Bytes of the stage-2 window.
    pub stage2_len: u64,
    /// Largest guest RAM in bytes.
    pub max_mem: u64,
}

impl PhysLayout {
    /// The layout for `maxphyaddr` (clamped to 36..=52).
    pub fn for_maxphyaddr(maxphyaddr: u8) -> Self {
        let bits = maxphyaddr.clamp(36, 52);
        let top = 1u64 << bits;
        PhysLayout {
            maxphyaddr: bits,
            stage2_base: (1u64 << 40).min(top / 2),
            stage2_len: (1u64 << 40).min(top / 4),
            max_mem: MAX_MEM_SIZE.min(top / 2 - (MMIO_HOLE_END - MMIO_HOLE_START)),
        }
    }

    /// True if `gpa` is the stage-2 window base for some MAXPHYADDR (36..=52): what the
    /// host invariants accept for the stage-2 test leaves without knowing the CPU.
    pub fn is_stage2_base(gpa: u64) -> bool {
        (36..=52u8).any(|b| Self::for_maxphyaddr(b).stage2_base == gpa)
    }

    /// One past the last GPA of `bytes` of RAM laid out around the MMIO hole.
    pub fn ram_end(bytes: u64) -> u64 {
        if bytes <= MMIO_HOLE_START {
            bytes
        } else {
            bytes.saturating_add(MMIO_HOLE_END - MMIO_HOLE_START)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_every_maxphyaddr() {
        for bits in 36..=52u8 {
            let l = PhysLayout::for_maxphyaddr(bits);
            let top = 1u64 << bits;
            assert!(l.stage2_base + l.stage2_len <= top, "{bits}");
            assert!(PhysLayout::ram_end(l.max_mem) <= top, "{bits}");
            if bits < 42 {
                assert!(PhysLayout::ram_end(l.max_mem) <= l.stage2_base, "{bits}");
            }
            assert!(l.stage2_len >= 4 << 20);
        }
        assert_eq!(PhysLayout::for_maxphyaddr(48).stage2_base, 1 << 40);
        assert_eq!(PhysLayout::for_maxphyaddr(48).max_mem, 1 << 40);
        assert_eq!(PhysLayout::for_maxphyaddr(40).stage2_base, 512 << 30);
        assert_eq!(PhysLayout::for_maxphyaddr(40).max_mem, 511 << 30);
        assert_eq!(PhysLayout::for_maxphyaddr(39).stage2_base, 256 << 30);
        assert_eq!(PhysLayout::for_maxphyaddr(39).max_mem, 255 << 30);
        assert!(PhysLayout::is_stage2_base(1 << 40) && PhysLayout::is_stage2_base(256 << 30));
        assert!(!PhysLayout::is_stage2_base(0) && !PhysLayout::is_stage2_base(3 << 40));
    }
}
