//! Guest memory layout: documented address constants, nothing else.
//!
//! ```text
//! Guest-physical (GPA)                          Guest-virtual (GVA)
//! 0x0000_0000 ┌──────────────────────┐          0x0000_0000_0000_0000 ┌──────────────────────────┐
//!             │ page 0: reserved     │                                │ page 0: never mapped     │
//! 0x0000_1000 ├──────────────────────┤          0x0000_1000_0000_0000 ├──────────────────────────┤
//!             │ boot info (1 frame)  │                                │ mmap window (16 TiB):    │
//! 0x0000_2000 ├──────────────────────┤                                │ regions from the FreeMap,│
//!             │ free (zone DMA)      │                                │ each followed by an      │
//! 0x0020_0000 ├──────────────────────┤                                │ unmapped guard page      │
//!             │ kernel image (ELF)   │          0x0000_2000_0000_0000 ├──────────────────────────┤
//!             ├──────────────────────┤                                │ (not mapped)             │
//!             │ free: data frames,   │          0x0000_7fff_0000_1000 ├──────────────────────────┤
//!             │ page-table pool      │                                │ ring-3 stack 1 MiB (US)  │
//!             │ chunks (2 MiB each), │                                │ (guard page below)       │
//!             │ stacks               │          0xffff_8880_0000_0000 ├──────────────────────────┤
//!             │                      │                                │ direct map of all RAM:   │
//!             │                      │                                │ 2 MiB pages, NX, US;     │
//!             │                      │                                │ pool + kernel image RO   │
//! 0xc000_0000 ├──────────────────────┤          0xffff_c900_0000_0000 ├──────────────────────────┤
//!             │ 32-bit MMIO hole     │                                │ guard | boot stack 64 KiB│
//!             │ (no memslot; e820    │                                │ guard | #DF stack 16 KiB │
//!             │  reserved)           │          0xffff_ffff_8000_0000 ├──────────────────────────┤
//! 0x1_0000_0000├─────────────────────┤                                │ kernel image at          │
//!             │ RAM above 4 GiB      │                                │ GPA + 0xffff_ffff_8000_0000│
//!             │ (zone Normal)        │                                │ text RX, rodata R, data  │
//!             │                      │                                │ RW; US (ring 3 runs it)  │
//!             └──────────────────────┘                                └──────────────────────────┘
//! ```
//!
//! Sources: Linux `Documentation/arch/x86/x86_64/mm.rst` (direct map at
//! `0xffff_8880_0000_0000`, kernel text at `__START_KERNEL_map = 0xffff_ffff_8000_0000`);
//! Firecracker `arch/x86_64/layout.rs` (MMIO gap below 4 GiB).

pub use memvisor_abi::{KERNEL_PHYS_BASE, KERNEL_VIRT_OFFSET};

/// GPA of the boot-info frame (one 4 KiB frame).
pub const BOOT_INFO_GPA: u64 = 0x1000;

/// Start of the 32-bit MMIO hole: no RAM between this GPA and [`MMIO_HOLE_END`] (3 GiB).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO hole (4 GiB); RAM beyond 3 GiB continues here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// End (exclusive) of zone DMA: 16 MiB.
pub const ZONE_DMA_END: u64 = 16 << 20;
/// End (exclusive) of zone DMA32: 4 GiB.
pub const ZONE_DMA32_END: u64 = 4 << 30;

/// GVA of GPA 0 in the direct map (Linux's `page_offset_base`).
pub const DIRECT_MAP_BASE: u64 = 0xffff_8880_0000_0000;

/// First GVA of the window mmap regions are handed out from.
pub const MMAP_WINDOW_START: u64 = 0x0000_1000_0000_0000;
/// End (exclusive) of the mmap window: 16 TiB after its start.
pub const MMAP_WINDOW_END: u64 = 0x0000_2000_0000_0000;
/// Unmapped guard gap after each mmap region, in bytes (one 4 KiB page).
pub const MMAP_GUARD: u64 = 0x1000;

/// GVA where the host maps a blob it hands the guest (e.g. an encoded allocation trace for
/// `memvisor replay`): read-only, user-accessible, no-execute; length in `BootInfo.arg[1]`.
pub const BLOB_GVA: u64 = 0x0000_4000_0000_0000;

/// Base of the kernel-stack area (Linux's vmalloc base); its first page is the boot stack's
/// guard.
pub const STACKS_BASE: u64 = 0xffff_c900_0000_0000;
/// Boot stack size in bytes (16 frames).
pub const BOOT_STACK_SIZE: u64 = 64 << 10;
/// Lowest GVA of the boot stack; the page below it is the unmapped guard.
pub const BOOT_STACK_BOTTOM: u64 = STACKS_BASE + 0x1000;
/// Initial RSP: top of the boot stack.
pub const BOOT_STACK_TOP: u64 = BOOT_STACK_BOTTOM + BOOT_STACK_SIZE;
/// #DF IST stack size in bytes (4 frames).
pub const DF_STACK_SIZE: u64 = 16 << 10;
/// Lowest GVA of the #DF stack; the page below it is a guard.
pub const DF_STACK_BOTTOM: u64 = BOOT_STACK_TOP + 0x1000;
/// Top of the #DF stack (loaded into TSS.IST1 by the guest).
pub const DF_STACK_TOP: u64 = DF_STACK_BOTTOM + DF_STACK_SIZE;

/// Ring-3 stack size in bytes (256 frames = 1 MiB): scenarios run in ring 3.
pub const USER_STACK_SIZE: u64 = 1 << 20;
/// Lowest GVA of the ring-3 stack (low canonical half); the page below it is a guard.
pub const USER_STACK_BOTTOM: u64 = 0x0000_7fff_0000_1000;
/// Top of the ring-3 stack.
pub const USER_STACK_TOP: u64 = USER_STACK_BOTTOM + USER_STACK_SIZE;

/// GDT location (GPA, inside the boot-info frame's second half) used for the first entry.
pub const BOOT_GDT_GPA: u64 = BOOT_INFO_GPA + 0x800;

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
