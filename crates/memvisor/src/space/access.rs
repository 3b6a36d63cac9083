//! Read access to the parts of an [`AddressSpace`], and [`HostTables`]: the write access a
//! scenario's host side gets to build its own page tables.

use super::{AddressSpace, BuildOptions, FaultRecord, Region, SpaceCounters, TablePool};
use crate::addr::Pfn;
use crate::boot::cpuid::Features;
use crate::boot::loader::KernelImage;
use crate::frames::{FreeMap, ZoneTable};
use crate::memory::GuestRam;
use crate::paging::PageTables;
use std::collections::BTreeMap;

/// Read access to the parts of an [`AddressSpace`].
impl AddressSpace {
    /// Guest RAM and the e820 map.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }
    /// The frame allocator by zone.
    pub fn zones(&self) -> &ZoneTable {
        &self.zones
    }
    /// The guest's page tables.
    pub fn page_tables(&self) -> &PageTables {
        &self.pt
    }
    /// The page-table frame pool.
    pub fn pool(&self) -> &TablePool {
        &self.pool
    }
    /// Free GVA ranges of the mmap window.
    pub fn window(&self) -> &FreeMap {
        &self.window
    }
    /// Live mmap regions by start GVA.
    pub fn regions(&self) -> &BTreeMap<u64, Region> {
        &self.regions
    }
    /// The loaded kernel image.
    pub fn kernel(&self) -> &KernelImage {
        &self.kernel
    }
    /// Paging features of the guest CPUID.
    pub fn features(&self) -> Features {
        self.features
    }
    /// The fault log (first [`FAULT_LOG_MAX`](super::FAULT_LOG_MAX) faults).
    pub fn faults(&self) -> &[FaultRecord] {
        &self.faults
    }
    /// Counters.
    pub fn counters(&self) -> &SpaceCounters {
        &self.counters
    }
    /// Frames of the boot, #DF and ring-3 stacks.
    pub fn stack_frames(&self) -> &[Pfn] {
        &self.stack_frames
    }
    /// How the space was built.
    pub fn build_options(&self) -> BuildOptions {
        self.build_options
    }
    /// GPA ranges `(first, bytes)` outside RAM mapped for the stage-2 test layout and extra
    /// ranges.
    pub fn stage2_ranges(&self) -> &[(u64, u64)] {
        &self.stage2_ranges
    }
    /// Host-made mappings of GPAs outside RAM `(gva, len, gpa)`.
    pub fn device_maps(&self) -> &[(u64, u64, u64)] {
        &self.device_maps
    }

    /// The parts a scenario's host side edits together when it builds its own page tables
    /// for a [`HostArea`](super::HostArea) ([`HostTables`]).
    pub fn host_tables(&mut self) -> HostTables<'_> {
        HostTables {
            mem: &self.ram.mem,
            pt: &mut self.pt,
            pool: &mut self.pool,
            zones: &mut self.zones,
        }
    }
}

/// Write access for a scenario's host side that builds its own page tables in a
/// [`HostArea`](super::HostArea) (the fault matrix: it grows the table pool, takes frames from the zones,
/// maps through the tables and pokes their entries), from [`AddressSpace::host_tables`].
/// Frames it takes belong to its area ([`AddressSpace::add_host_frames`]); an edit that
/// removes or reduces a mapping owes a shadow flush ([`AddressSpace::owe_shadow_flush`]).
pub struct HostTables<'a> {
    /// Guest RAM.
    pub mem: &'a crate::memory::GuestMem,
    /// The guest's page tables.
    pub pt: &'a mut PageTables,
    /// Frames for page tables.
    pub pool: &'a mut TablePool,
    /// The frame allocator by zone.
    pub zones: &'a mut ZoneTable,
}
