//! Every guest address constant, GVA and GPA, in one place (host and guest share it; the
//! host's `memvisor::layout` re-exports it). The two tables below are the diagram of the
//! layout: a unit test parses them and checks that they list exactly [`GVA_REGIONS`] and
//! [`GPA_REGIONS`], that the regions do not overlap, and that every constant lies in its
//! region. Bounds are inclusive (`last`), so the top of the address space needs no overflow.
//!
//! # Diagram
//!
//! Guest-virtual (48-bit canonical; everything not listed is never mapped):
//!
//! | first GVA             | last GVA              | region                                  |
//! | --------------------- | --------------------- | --------------------------------------- |
//! | 0x0000_1000_0000_0000 | 0x0000_1fff_ffff_ffff | mmap window (16 TiB; regions + guards)  |
//! | 0x0000_2000_0000_0000 | 0x0000_2fff_ffff_ffff | fault matrix (PML4 slots 64..=95)       |
//! | 0x0000_3000_0000_0000 | 0x0000_30ff_ffff_ffff | stage-2 window (<= 1 TiB)               |
//! | 0x0000_3100_0000_0000 | 0x0000_38ff_ffff_ffff | fault matrix 1 GiB leaves (slots 98..=113) |
//! | 0x0000_3900_0000_0000 | 0x0000_397f_ffff_ffff | fault matrix LA57 paths (slot 114)      |
//! | 0x0000_4000_0000_0000 | 0x0000_407f_ffff_ffff | blob (read-only, NX; PML4 slot 128)     |
//! | 0x0000_7ffe_0000_0000 | 0x0000_7ffe_0000_0fff | doorbell page (US)                      |
//! | 0x0000_7fff_0000_0000 | 0x0000_7fff_0010_0fff | ring-3 stack 1 MiB (guard page below)   |
//! | 0xffff_8880_0000_0000 | 0xffff_c87f_ffff_ffff | direct map of RAM (64 TiB, NX)          |
//! | 0xffff_c900_0000_0000 | 0xffff_c900_0001_5fff | boot + #DF stacks (guard pages below)   |
//! | 0xffff_ffff_8000_0000 | 0xffff_ffff_ffff_ffff | kernel image (GPA + KERNEL_VIRT_OFFSET) |
//!
//! Guest-physical (RAM fills what is not listed, up to the RAM size; past 3 GiB it continues
//! above the MMIO hole):
//!
//! | first GPA             | last GPA              | region                                  |
//! | --------------------- | --------------------- | --------------------------------------- |
//! | 0x0000_0000_0000_0000 | 0x0000_0000_0000_0fff | page 0 (reserved)                       |
//! | 0x0000_0000_0000_1000 | 0x0000_0000_0000_1fff | boot info (GDT in its second half)      |
//! | 0x0000_0000_0020_0000 | 0x0000_0000_00ff_ffff | kernel image at 2 MiB, then zone DMA    |
//! | 0x0000_0000_c000_0000 | 0x0000_0000_ffff_ffff | 32-bit MMIO hole (no RAM)               |
//! | 0x0000_0100_0000_0000 | 0x0000_01ff_ffff_ffff | stage-2 window at MAXPHYADDR >= 41      |
//!
//! Inside the MMIO hole: the MMIO doorbell [`DOORBELL_GPA`] (and [`NULL_DOORBELL_GPA`]) and the
//! host's flush slot [`FLUSH_SLOT_GPA`]. Zones: DMA below [`ZONE_DMA_END`], DMA32 below
//! [`ZONE_DMA32_END`], Normal above. Below MAXPHYADDR 41 the stage-2 window moves down
//! (`memvisor::layout::PhysLayout`).
//!
//! Sources: Linux `Documentation/arch/x86/x86_64/mm.rst` (direct map at
//! `0xffff_8880_0000_0000`, vmalloc at `0xffff_c900_0000_0000`, kernel text at
//! `__START_KERNEL_map = 0xffff_ffff_8000_0000`); Firecracker `arch/x86_64/layout.rs` (MMIO gap
//! below 4 GiB); Intel SDM Vol. 3A §4.5 (PML4 slots of 512 GiB, canonical addresses).

// ---- guest-virtual ----------------------------------------------------------------------------

/// First GVA of the window mmap regions are handed out from.
pub const MMAP_WINDOW_START: u64 = 0x0000_1000_0000_0000;
/// End (exclusive) of the mmap window: 16 TiB after its start.
pub const MMAP_WINDOW_END: u64 = 0x0000_2000_0000_0000;
/// Unmapped guard gap after each mmap region, in bytes (one 4 KiB page).
pub const MMAP_GUARD: u64 = 0x1000;

/// First PML4 slot (512 GiB each) of the fault matrix's test VAs.
pub const MATRIX_SLOT: u64 = 64;
/// First PML4 slot of the fault matrix's reserved-bit VAs.
pub const MATRIX_RSVD_SLOT: u64 = 80;
/// First PML4 slot of the fault matrix's feature variants with 4 KiB leaves (CR4.SMEP,
/// CR4.SMAP, protection keys: slots 84..=87).
pub const MATRIX_VARIANT_SLOT: u64 = 84;
/// GVA of the fault matrix's supervisor-only (US=0) alias of its records buffer (PML4 slot
/// 88), which CPL 0 probes use while CR4.SMAP is set.
pub const MATRIX_BUF_ALIAS_GVA: u64 = 88 << 39;
/// Base of the fault matrix's supervisor-only, read-only alias of the kernel's writable
/// segments (PML4 slot 89; a kernel byte at GPA `g` appears at this base + `g`): the IDT and
/// GDT the CPU reads while CR4.SMAP is set (implicit supervisor accesses, SDM Vol. 3A
/// §4.6.1, may not touch US=1 pages).
pub const MATRIX_KDATA_ALIAS_GVA: u64 = 89 << 39;
/// GVA of the fault matrix's records buffer (PML4 slot 90).
pub const MATRIX_BUF_GVA: u64 = 90 << 39;
/// GVA of the fault matrix's supervisor-only (US=0) alias of the kernel's probe code
/// (PML4 slot 91), which CPL 0 runs while CR4.SMEP / SMAP are set.
pub const MATRIX_TRAMP_GVA: u64 = 91 << 39;
/// PML4 slot of the fault matrix's implicit-supervisor-access variant (`smap-implicit`): 256
/// test pages whose descriptor at offset 8 a segment load reads through an LDT.
pub const MATRIX_IMPLICIT_SLOT: u64 = 95;
/// The GVAs the fault matrix maps: PML4 slots 64 (first matrix VA) to 95 (implicit-access
/// variant; slots 92..=94 unused).
pub const MATRIX_AREA: core::ops::Range<u64> =
    (MATRIX_SLOT << 39)..(MATRIX_IMPLICIT_SLOT + 1) << 39;
/// First of the 16 PML4 slots of the fault matrix's 1 GiB leaves (one slot per PML4E flag
/// combination, 16 PDPTE leaves each), after the stage-2 window.
pub const MATRIX_1G_SLOT: u64 = 98;
/// The GVAs of the fault matrix's 1 GiB leaves: PML4 slots 98..=113.
pub const MATRIX_1G_AREA: core::ops::Range<u64> =
    (MATRIX_1G_SLOT << 39)..(MATRIX_1G_SLOT + 16) << 39;

/// PML4 slot of the fault matrix's LA57 paths: 16 4 KiB leaves whose 5-level VAs
/// `((i5 + 1) << 48) | (114 << 39) | (i5 << 12)` go through PML5 entries 1..=16 (each a
/// PML5E flag combination pointing to the one PML4); the 4-level address with the same bits
/// 47:0 reaches the same leaves through PML5E 0 (the host builds and reads them there).
pub const MATRIX_LA57_SLOT: u64 = 114;
/// The 4-level GVAs of the fault matrix's LA57 paths: PML4 slot 114.
pub const MATRIX_LA57_AREA: core::ops::Range<u64> =
    (MATRIX_LA57_SLOT << 39)..(MATRIX_LA57_SLOT + 1) << 39;

/// GVA where the stage-2 window's first GPA is mapped (see [`crate::stage2`]).
pub const STAGE2_GVA_BASE: u64 = 0x0000_3000_0000_0000;
/// Largest stage-2 window, in bytes (1 TiB; `memvisor::layout::PhysLayout`).
pub const STAGE2_MAX_LEN: u64 = 1 << 40;

/// GVA where the host maps a blob it hands the guest (e.g. an encoded allocation trace for
/// `memvisor replay`): read-only, user-accessible, no-execute; length in `BootInfo.arg[1]`.
pub const BLOB_GVA: u64 = 0x0000_4000_0000_0000;
/// The GVAs a blob may use: one PML4 slot (512 GiB) from [`BLOB_GVA`].
pub const BLOB_AREA: core::ops::Range<u64> = BLOB_GVA..BLOB_GVA + (1 << 39);

/// GVA where the host maps the doorbell page (US=1, so ring 3 can ring it).
pub const DOORBELL_GVA: u64 = 0x0000_7ffe_0000_0000;

/// Ring-3 stack size in bytes (256 frames = 1 MiB): scenarios run in ring 3.
pub const USER_STACK_SIZE: u64 = 1 << 20;
/// Lowest GVA of the ring-3 stack (low canonical half); the page below it is a guard.
pub const USER_STACK_BOTTOM: u64 = 0x0000_7fff_0000_1000;
/// Top of the ring-3 stack.
pub const USER_STACK_TOP: u64 = USER_STACK_BOTTOM + USER_STACK_SIZE;

/// GVA of GPA 0 in the direct map (Linux's `page_offset_base`).
pub const DIRECT_MAP_BASE: u64 = 0xffff_8880_0000_0000;
/// Span reserved for the direct map (64 TiB, as Linux): RAM (at most 1 TiB plus the MMIO
/// hole) fits with room to spare.
pub const DIRECT_MAP_SPAN: u64 = 1 << 46;

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

/// Offset between the kernel image's GVAs and its GPAs: a kernel-image byte at GPA `p` is
/// mapped at GVA `p + KERNEL_VIRT_OFFSET` (Linux's `__START_KERNEL_map`, the top 2 GiB).
pub const KERNEL_VIRT_OFFSET: u64 = 0xffff_ffff_8000_0000;

// ---- guest-physical ---------------------------------------------------------------------------

/// GPA of the boot-info frame (one 4 KiB frame).
pub const BOOT_INFO_GPA: u64 = 0x1000;
/// GDT location (GPA, inside the boot-info frame's second half) used for the first entry.
pub const BOOT_GDT_GPA: u64 = BOOT_INFO_GPA + 0x800;
/// GPA where the kernel image is linked and loaded (2 MiB).
pub const KERNEL_PHYS_BASE: u64 = 0x20_0000;
/// End (exclusive) of zone DMA: 16 MiB (the kernel image ends below it).
pub const ZONE_DMA_END: u64 = 16 << 20;
/// End (exclusive) of zone DMA32: 4 GiB.
pub const ZONE_DMA32_END: u64 = 4 << 30;
/// Start of the 32-bit MMIO hole: no RAM between this GPA and [`MMIO_HOLE_END`] (3 GiB).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO hole (4 GiB); RAM beyond 3 GiB continues here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// GPA of the MMIO doorbell: an 8-byte write of a request block's GPA here is a hypercall
/// (no memslot covers it: the write exits as `KVM_EXIT_MMIO`). In the 32-bit MMIO hole.
pub const DOORBELL_GPA: u64 = 0xd000_0000;
/// GPA of the null doorbell: a write here is a bare exit the VMM counts and ignores (the
/// ring-3 counterpart of [`crate::PORT_NULL`], the floor for a ring-3 hypercall).
pub const NULL_DOORBELL_GPA: u64 = DOORBELL_GPA + 8;
/// GPA of the host's flush slot (one 4 KiB memslot in the MMIO hole the guest never
/// touches; deleting and re-adding it drops KVM's shadow pages).
pub const FLUSH_SLOT_GPA: u64 = 0xdfff_f000;
/// First GPA of the stage-2 window at MAXPHYADDR 41 and more (1 TiB).
pub const STAGE2_GPA_BASE: u64 = 1 << 40;

/// A named address range, bounds inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub first: u64,
    /// Last address (inclusive).
    pub last: u64,
    /// What lives there (as in the diagram).
    pub name: &'static str,
}

const fn region(first: u64, len: u64, name: &'static str) -> Region {
    Region {
        first,
        last: first + (len - 1),
        name,
    }
}

/// The GVA regions of the diagram, in address order.
pub const GVA_REGIONS: [Region; 11] = [
    region(
        MMAP_WINDOW_START,
        MMAP_WINDOW_END - MMAP_WINDOW_START,
        "mmap window (16 TiB; regions + guards)",
    ),
    region(
        MATRIX_AREA.start,
        MATRIX_AREA.end - MATRIX_AREA.start,
        "fault matrix (PML4 slots 64..=95)",
    ),
    region(STAGE2_GVA_BASE, STAGE2_MAX_LEN, "stage-2 window (<= 1 TiB)"),
    region(
        MATRIX_1G_AREA.start,
        MATRIX_1G_AREA.end - MATRIX_1G_AREA.start,
        "fault matrix 1 GiB leaves (slots 98..=113)",
    ),
    region(
        MATRIX_LA57_AREA.start,
        MATRIX_LA57_AREA.end - MATRIX_LA57_AREA.start,
        "fault matrix LA57 paths (slot 114)",
    ),
    region(
        BLOB_AREA.start,
        BLOB_AREA.end - BLOB_AREA.start,
        "blob (read-only, NX; PML4 slot 128)",
    ),
    region(DOORBELL_GVA, 0x1000, "doorbell page (US)"),
    region(
        USER_STACK_BOTTOM - 0x1000,
        USER_STACK_SIZE + 0x1000,
        "ring-3 stack 1 MiB (guard page below)",
    ),
    region(
        DIRECT_MAP_BASE,
        DIRECT_MAP_SPAN,
        "direct map of RAM (64 TiB, NX)",
    ),
    region(
        STACKS_BASE,
        DF_STACK_TOP - STACKS_BASE,
        "boot + #DF stacks (guard pages below)",
    ),
    Region {
        first: KERNEL_VIRT_OFFSET,
        last: u64::MAX,
        name: "kernel image (GPA + KERNEL_VIRT_OFFSET)",
    },
];

/// The GPA regions of the diagram, in address order.
pub const GPA_REGIONS: [Region; 5] = [
    region(0, 0x1000, "page 0 (reserved)"),
    region(BOOT_INFO_GPA, 0x1000, "boot info (GDT in its second half)"),
    region(
        KERNEL_PHYS_BASE,
        ZONE_DMA_END - KERNEL_PHYS_BASE,
        "kernel image at 2 MiB, then zone DMA",
    ),
    region(
        MMIO_HOLE_START,
        MMIO_HOLE_END - MMIO_HOLE_START,
        "32-bit MMIO hole (no RAM)",
    ),
    region(
        STAGE2_GPA_BASE,
        STAGE2_MAX_LEN,
        "stage-2 window at MAXPHYADDR >= 41",
    ),
];

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// The diagram's table rows whose first column starts with `0x`, after `heading`.
    fn diagram(heading: &str) -> Vec<Region> {
        let src = include_str!("layout.rs");
        let mut rows = Vec::new();
        let mut on = false;
        for line in src.lines() {
            let Some(l) = line.strip_prefix("//!") else {
                continue;
            };
            if l.contains(heading) {
                on = true;
                continue;
            }
            if on && l.trim().is_empty() && !rows.is_empty() {
                break;
            }
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            if on && cells.len() == 5 && cells[1].starts_with("0x") {
                let num = |s: &str| u64::from_str_radix(&s[2..].replace('_', ""), 16).expect("hex");
                rows.push((num(cells[1]), num(cells[2]), cells[3]));
            }
        }
        rows.into_iter()
            .map(|(first, last, name)| Region {
                first,
                last,
                // Leak-free comparison: match the name against the constant table below.
                name: GVA_REGIONS
                    .iter()
                    .chain(GPA_REGIONS.iter())
                    .find(|r| r.name == name)
                    .map_or("?", |r| r.name),
            })
            .collect()
    }

    fn disjoint_sorted(rs: &[Region]) {
        for r in rs {
            assert!(r.first <= r.last, "{r:?}");
        }
        for w in rs.windows(2) {
            assert!(
                w[0].last < w[1].first,
                "overlap or out of order: {:?} / {:?}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn diagram_matches_the_constants() {
        assert_eq!(diagram("Guest-virtual"), GVA_REGIONS.to_vec());
        assert_eq!(diagram("Guest-physical"), GPA_REGIONS.to_vec());
    }

    #[test]
    fn regions_do_not_overlap() {
        disjoint_sorted(&GVA_REGIONS);
        disjoint_sorted(&GPA_REGIONS);
    }

    #[test]
    fn constants_lie_in_their_regions() {
        let in_gva = |a: u64, name: &str| {
            let r = GVA_REGIONS.iter().find(|r| r.first <= a && a <= r.last);
            assert_eq!(r.map(|r| r.name), Some(name), "GVA {a:#x}");
        };
        in_gva(MATRIX_SLOT << 39, GVA_REGIONS[1].name);
        in_gva(MATRIX_RSVD_SLOT << 39, GVA_REGIONS[1].name);
        in_gva(MATRIX_BUF_GVA, GVA_REGIONS[1].name);
        in_gva(MATRIX_VARIANT_SLOT << 39, GVA_REGIONS[1].name);
        in_gva(((MATRIX_VARIANT_SLOT + 4) << 39) - 1, GVA_REGIONS[1].name);
        in_gva(MATRIX_TRAMP_GVA, GVA_REGIONS[1].name);
        in_gva(MATRIX_BUF_ALIAS_GVA, GVA_REGIONS[1].name);
        in_gva(MATRIX_IMPLICIT_SLOT << 39, GVA_REGIONS[1].name);
        in_gva(((MATRIX_IMPLICIT_SLOT + 1) << 39) - 1, GVA_REGIONS[1].name);
        in_gva(
            MATRIX_KDATA_ALIAS_GVA + KERNEL_PHYS_BASE,
            GVA_REGIONS[1].name,
        );
        in_gva(MATRIX_1G_SLOT << 39, GVA_REGIONS[3].name);
        in_gva(((MATRIX_1G_SLOT + 16) << 39) - 1, GVA_REGIONS[3].name);
        in_gva(MATRIX_LA57_SLOT << 39, GVA_REGIONS[4].name);
        in_gva(BLOB_GVA, GVA_REGIONS[5].name);
        in_gva(DOORBELL_GVA, GVA_REGIONS[6].name);
        in_gva(USER_STACK_TOP - 1, GVA_REGIONS[7].name);
        in_gva(BOOT_STACK_BOTTOM, GVA_REGIONS[9].name);
        in_gva(DF_STACK_TOP - 1, GVA_REGIONS[9].name);
        in_gva(KERNEL_VIRT_OFFSET + KERNEL_PHYS_BASE, GVA_REGIONS[10].name);
        // Every GVA region is canonical and lies in one half.
        for r in GVA_REGIONS {
            let half = |a: u64| (a as i64) >> 47;
            assert!(
                matches!(half(r.first), 0 | -1) && half(r.first) == half(r.last),
                "{r:?}"
            );
        }
        let in_gpa = |a: u64, name: &str| {
            let r = GPA_REGIONS.iter().find(|r| r.first <= a && a <= r.last);
            assert_eq!(r.map(|r| r.name), Some(name), "GPA {a:#x}");
        };
        in_gpa(BOOT_GDT_GPA, GPA_REGIONS[1].name);
        for a in [
            DOORBELL_GPA,
            NULL_DOORBELL_GPA,
            FLUSH_SLOT_GPA,
            FLUSH_SLOT_GPA + 0xfff,
        ] {
            in_gpa(a, GPA_REGIONS[3].name);
        }
    }

    // Zones end where the diagram says: DMA32 at the hole's end, DMA below the hole.
    const _: () = assert!(ZONE_DMA32_END == MMIO_HOLE_END && ZONE_DMA_END < MMIO_HOLE_START);
}
