//! The address space's host-side state as one serializable value ([`SpaceState`]), for
//! snapshots (`crate::vm::snapshot`): zones with their bitmaps, the page tables' bookkeeping,
//! the page-table pool, the mmap window's FreeMap, the regions, the fault log and counters.
//! Guest RAM itself is not in it (the snapshot's PAGES section holds it).

use super::{AddressSpace, BuildOptions, FaultRecord, HostArea, Region, SpaceCounters, TablePool};
use crate::addr::Pfn;
use crate::boot::cpuid::Features;
use crate::boot::loader::KernelImage;
use crate::frames::{FreeMap, ZoneTable};
use crate::memory::GuestRam;
use crate::paging::{PageTables, ShadowFlush};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One fault-log entry as stored in a snapshot (the report's [`FaultRecord`] with its `kind`
/// as an owned string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultState {
    /// Exception vector.
    pub vector: u64,
    /// Error code.
    pub error_code: u64,
    /// CR2.
    pub cr2: u64,
    /// RIP.
    pub rip: u64,
    /// Resolved.
    pub resolved: bool,
    /// `lazy`, `reported` or `teardown`.
    pub kind: String,
}

/// Every fault-log kind the host writes (so a restored record gets its `&'static str` back).
const FAULT_KINDS: [&str; 3] = ["lazy", "reported", "teardown"];

impl FaultState {
    fn of(r: &FaultRecord) -> Self {
        FaultState {
            vector: r.vector,
            error_code: r.error_code,
            cr2: r.cr2,
            rip: r.rip,
            resolved: r.resolved,
            kind: r.kind.to_string(),
        }
    }

    fn record(&self) -> Option<FaultRecord> {
        let kind = FAULT_KINDS.iter().find(|k| **k == self.kind)?;
        Some(FaultRecord {
            vector: self.vector,
            error_code: self.error_code,
            cr2: self.cr2,
            rip: self.rip,
            resolved: self.resolved,
            kind,
        })
    }
}

/// The host-side state of an [`AddressSpace`] (everything but guest RAM).
#[derive(Debug, Serialize, Deserialize)]
pub struct SpaceState {
    /// Frame allocator by zone (bitmaps, summaries, hints, counters).
    pub zones: ZoneTable,
    /// Page-table bookkeeping (root, table frames by level, counters).
    pub pt: PageTables,
    /// Page-table frame pool (chunks, free and in-use frames).
    pub pool: TablePool,
    /// Free GVA ranges of the mmap window.
    pub window: FreeMap,
    /// Live regions by start GVA.
    pub regions: BTreeMap<u64, Region>,
    /// The loaded kernel image's layout.
    pub kernel: KernelImage,
    /// Paging features of the guest CPUID.
    pub features: Features,
    /// Fault log.
    pub faults: Vec<FaultState>,
    /// Counters.
    pub counters: SpaceCounters,
    /// Boot stack frames.
    pub stack_frames: Vec<Pfn>,
    /// A shadow flush is owed (the address space's pending `ShadowFlush`).
    pub shadow_stale: bool,
    /// Build options.
    pub build_options: BuildOptions,
    /// GVA areas a scenario's host side mapped for its own data, with their frames.
    pub host_areas: Vec<HostArea>,
    /// Stage-2 GPA ranges mapped for the guest.
    pub stage2_ranges: Vec<(u64, u64)>,
    /// Host-made mappings of GPAs outside RAM.
    pub device_maps: Vec<(u64, u64, u64)>,
    /// Next region id.
    pub next_region: u64,
}

/// [`SpaceState`] borrowed from a live [`AddressSpace`] (serializes to the same encoding).
#[derive(Serialize)]
pub struct SpaceStateRef<'a> {
    zones: &'a ZoneTable,
    pt: &'a PageTables,
    pool: &'a TablePool,
    window: &'a FreeMap,
    regions: &'a BTreeMap<u64, Region>,
    kernel: &'a KernelImage,
    features: Features,
    faults: Vec<FaultState>,
    counters: &'a SpaceCounters,
    stack_frames: &'a [Pfn],
    shadow_stale: bool,
    build_options: BuildOptions,
    host_areas: &'a [HostArea],
    stage2_ranges: &'a [(u64, u64)],
    device_maps: &'a [(u64, u64, u64)],
    next_region: u64,
}

impl AddressSpace {
    /// The host-side state, borrowed (for a snapshot: serialize it, restore with
    /// [`AddressSpace::from_state`]).
    pub fn save_state(&self) -> SpaceStateRef<'_> {
        SpaceStateRef {
            zones: &self.zones,
            pt: &self.pt,
            pool: &self.pool,
            window: &self.window,
            regions: &self.regions,
            kernel: &self.kernel,
            features: self.features,
            faults: self.faults.iter().map(FaultState::of).collect(),
            counters: &self.counters,
            stack_frames: &self.stack_frames,
            shadow_stale: self.shadow.is_needed(),
            build_options: self.build_options,
            host_areas: &self.host_areas,
            stage2_ranges: &self.stage2_ranges,
            device_maps: &self.device_maps,
            next_region: self.next_region,
        }
    }

    /// The address space of `state` over `ram` (whose contents are the snapshot's). Returns
    /// `None` if a fault-log record has an unknown kind.
    pub fn from_state(ram: GuestRam, state: SpaceState) -> Option<AddressSpace> {
        let faults = state
            .faults
            .iter()
            .map(FaultState::record)
            .collect::<Option<Vec<_>>>()?;
        Some(AddressSpace {
            ram,
            zones: state.zones,
            pt: state.pt,
            pool: state.pool,
            window: state.window,
            regions: state.regions,
            kernel: state.kernel,
            features: state.features,
            faults,
            counters: state.counters,
            stack_frames: state.stack_frames,
            shadow: ShadowFlush::when(state.shadow_stale),
            build_options: state.build_options,
            host_areas: state.host_areas,
            stage2_ranges: state.stage2_ranges,
            device_maps: state.device_maps,
            next_region: state.next_region,
        })
    }
}
