//! What the invariant checks report: the [`Violation`]s found, frames by [`FrameState`], leaves
//! by area, the leak report, and the run report's [`InvariantSummary`].

use crate::addr::PAGE_SIZE;
use crate::paging::PteFlags;
use serde::Serialize;
use std::fmt;

/// One broken invariant: what, and the frame / GVA / PTE concerned (JSON: hex strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which invariant (`frame_double_owner`, `frame_unowned`, `frame_state`, `zone_count`,
    /// `table_frame_writable`, `table_frame_mapped`, `table_frame_outside_pool`, `wx`,
    /// `kernel_rights`, `kernel_alias_writable`, `guard_mapped`, `leaf_outside_ram`,
    /// `stray_leaf`, `leaf_outside_region`, `region_prot`, `region`, `window`,
    /// `mapped_counter`, `walk`, `teardown`, ...).
    pub kind: &'static str,
    /// The frame (PFN) concerned, if any.
    #[serde(serialize_with = "crate::report::hex::hex_opt")]
    pub frame: Option<u64>,
    /// The GVA concerned, if any.
    #[serde(serialize_with = "crate::report::hex::hex_opt")]
    pub gva: Option<u64>,
    /// The raw leaf PTE that maps `gva`, if any.
    #[serde(serialize_with = "crate::report::hex::hex_opt")]
    pub pte: Option<u64>,
    /// The table frame (PFN) and index holding that PTE (JSON: `["0x…", index]`).
    #[serde(serialize_with = "crate::report::hex::hex_table_index")]
    pub pte_at: Option<(u64, u16)>,
    /// Explanation.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(p) = self.frame {
            write!(f, " frame {:#x} (GPA {:#x})", p, p.wrapping_mul(PAGE_SIZE))?;
        }
        if let Some(g) = self.gva {
            write!(f, " GVA {g:#x}")?;
        }
        if let Some(p) = self.pte {
            write!(f, " PTE {p:#018x} [{}]", PteFlags::from_bits_truncate(p))?;
        }
        if let Some((t, i)) = self.pte_at {
            write!(f, " at table {t:#x}[{i}]")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What a frame is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FrameState {
    /// Page 0 and the boot-info frame (reserved).
    BootReserved,
    /// The kernel image (reserved).
    Kernel,
    /// A page-table pool chunk (allocated): page tables and the pool's spare frames.
    TablePool,
    /// A boot, #DF or ring-3 stack frame (allocated).
    Stack,
    /// A read-only blob the host mapped for the guest at [`crate::layout::BLOB_GVA`] (e.g. a
    /// replay trace; allocated).
    Blob,
    /// Owned by a scenario's host area
    /// ([`AddressSpace::host_areas`](crate::space::AddressSpace::host_areas); allocated), e.g.
    /// the fault matrix's data frame and records buffer.
    HostArea,
    /// Mapped for the mmap region with this id (allocated).
    Mapped {
        /// The owner region's id.
        region: u64,
    },
}

impl FrameState {
    pub(super) fn reserved(self) -> bool {
        matches!(self, FrameState::BootReserved | FrameState::Kernel)
    }
}

/// Frames by state (4 KiB frames); `ram` is the sum of the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FrameCounts {
    /// RAM frames.
    pub ram: u64,
    /// Free frames.
    pub free: u64,
    /// Page 0 and the boot-info frame.
    pub boot_reserved: u64,
    /// Kernel image frames.
    pub kernel: u64,
    /// Page-table pool frames (in use or spare).
    pub table_pool: u64,
    /// Pool frames holding page tables.
    pub page_tables: u64,
    /// Stack frames.
    pub stacks: u64,
    /// Frames mapped for mmap regions.
    pub mapped: u64,
    /// Blob frames and fault-matrix frames (other host-owned guest data).
    pub host_data: u64,
}

/// Per-zone accounting as checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ZoneCount {
    /// Zone name.
    pub name: &'static str,
    /// RAM frames in the zone.
    pub present: u64,
    /// Present minus reserved.
    pub managed: u64,
    /// Free frames.
    pub free: u64,
    /// Allocated frames (managed minus free).
    pub allocated: u64,
    /// Reserved RAM frames (present minus managed).
    pub reserved: u64,
    /// Allocated frames that have an owner.
    pub owned: u64,
}

/// Leaves by area.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LeafCounts {
    /// Direct-map leaves.
    pub direct: u64,
    /// Direct-map leaves mapped read-only.
    pub direct_read_only: u64,
    /// Kernel-image leaves.
    pub kernel: u64,
    /// Stack leaves.
    pub stacks: u64,
    /// The doorbell page.
    pub doorbell: u64,
    /// Pages of the stage-2 test layout and extra ranges ([`memvisor_abi::stage2`]; GPAs
    /// outside RAM, listed in `AddressSpace::stage2_ranges`).
    pub stage2_test: u64,
    /// Leaves in mmap regions.
    pub mmap: u64,
    /// Leaves of the blob area and of the fault matrix's area.
    pub host_data: u64,
}

/// Frames still mapped for one region (the leak report, at exit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leak {
    /// The owner region's id.
    pub region: u64,
    /// Its first GVA.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub start: u64,
    /// One past its last GVA.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub end: u64,
    /// Frames mapped for it.
    pub frames: u64,
    /// The first [`LEAK_FRAMES_LISTED`](super::LEAK_FRAMES_LISTED) of them (PFNs).
    #[serde(serialize_with = "crate::report::hex::hex_vec")]
    pub pfns: Vec<u64>,
}

/// What a successful [`check`](super::check) found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InvariantReport {
    /// Frames by state.
    pub frames: FrameCounts,
    /// Per zone.
    pub zones: Vec<ZoneCount>,
    /// Leaves by area.
    pub leaves: LeafCounts,
    /// Live regions.
    pub regions: u64,
    /// Frames still mapped, by owner region.
    pub leaks: Vec<Leak>,
}

/// What [`teardown_check`](super::teardown_check) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TeardownReport {
    /// Regions unmapped.
    pub regions_unmapped: u64,
    /// Data frames given back.
    pub data_frames_freed: u64,
    /// Frames that would be given back with the page tables, pool chunks, stacks and other
    /// host-owned guest data (blob, fault matrix).
    pub boot_frames: u64,
    /// Free frames in the end (with the boot structures given back).
    pub free_frames: u64,
    /// Managed frames (all free after teardown).
    pub managed_frames: u64,
}

/// The invariant part of the run report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InvariantSummary {
    /// Checked after every hypercall batch ([`crate::vmm::VmConfig::check_invariants`]).
    pub checked_every_batch: bool,
    /// Checks run during the run.
    pub checks: u64,
    /// Violations found (during the run, at exit or at teardown).
    pub violations: Vec<Violation>,
    /// The check at exit (frames by state, leak report), if it passed.
    pub at_exit: Option<InvariantReport>,
    /// The teardown check, if it passed.
    pub teardown: Option<TeardownReport>,
}

impl InvariantSummary {
    /// One line for the text report.
    pub fn line(&self) -> String {
        let mut parts = vec![format!(
            "{} check(s){}",
            self.checks,
            if self.checked_every_batch {
                " (after every batch)"
            } else {
                ""
            }
        )];
        if let Some(r) = &self.at_exit {
            let f = &r.frames;
            parts.push(format!(
                "at exit: {} RAM frames = {} free + {} boot + {} kernel + {} table pool ({} tables) + {} stacks + {} host data + {} mapped; {} frame(s) still mapped for {} region(s)",
                f.ram, f.free, f.boot_reserved, f.kernel, f.table_pool, f.page_tables, f.stacks,
                f.host_data, f.mapped, r.leaks.iter().map(|l| l.frames).sum::<u64>(), r.leaks.len()
            ));
        }
        if let Some(t) = &self.teardown {
            parts.push(format!(
                "teardown: {} region(s) unmapped, {} data frames freed, all {} managed frames free",
                t.regions_unmapped, t.data_frames_freed, t.managed_frames
            ));
        }
        if let Some(v) = self.violations.first() {
            parts.push(format!(
                "{} VIOLATION(S), first: {v}",
                self.violations.len()
            ));
        }
        parts.join("; ")
    }
}
