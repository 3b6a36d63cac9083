//! Snapshot and restore of a running guest ([`Vm::snapshot`], [`Vm::snapshot_incremental`],
//! [`Vm::restore`]), in the file format of [`crate::snapshot`].
//!
//! # When
//! Only at a ucall sync point (the last [`Vm::run`] returned `Exit::Ucall(Sync)`). Before the
//! state is read the vCPU re-enters `KVM_RUN` once with `kvm_run.immediate_exit = 1`: KVM
//! completes the port-IO / MMIO exit it is still holding (a port-IO `out` advances RIP only
//! then) and returns `EINTR` without running a guest instruction (KVM API doc, §5
//! "KVM_RUN", `immediate_exit`: "userspace should ensure that the operation is completed
//! before performing a live migration").
//!
//! # Which pages
//! * **Full snapshot**: every RAM page that is resident in the host mapping (`mincore(2)`)
//!   and not all zeros, plus, for a VM that was itself restored, every page of the layers it
//!   was restored from (read through the uffd handler). A page that was never written is
//!   either not resident or all zeros (the zero page), so this is "pages ever written" without
//!   logging the whole run; an all-zero page is left out (restore serves it zero).
//! * **Incremental snapshot**: the pages dirtied since the previous snapshot of this VM:
//!   KVM's dirty log of the RAM memslots (`KVM_MEM_LOG_DIRTY_PAGES`, turned on by the first
//!   snapshot) merged with the VMM's own writes (vm-memory's dirty bitmap: page tables,
//!   zeroed frames, hypercall results) and with the pages `Vm::dirty_log` reads consumed in
//!   between; for a VM restored from a file and not snapshotted since, the pages the uffd
//!   handler served or saw discarded since the restore (`UffdHandler::take_touched`: the
//!   others still equal the files). Zero pages are included (they must hide the layer
//!   below).
//!
//! # STATE section, version [`STATE_VERSION`]
//! One [`VmState`] encoded with serde as CBOR (RFC 8949, the `ciborium` crate): a map with
//! named fields, so a reader sees what every value is. It holds the vCPU (`kvm_regs`,
//! `kvm_sregs` with EFER / CR0 / CR3 / CR4 / segment bases, XSAVE area and XCR0 (x87, SSE,
//! AVX state), the MSRs the guest uses (SYSENTER, STAR / LSTAR / CSTAR / SFMASK,
//! KERNEL_GS_BASE, TSC_AUX, PAT, TSC, MISC_ENABLE), vCPU events, debug registers, MP state,
//! the CPUID table), the RAM memslots, the memory manager ([`crate::space::SpaceState`]:
//! zones and their bitmaps, the page-table pool, the page-table bookkeeping, the regions and
//! the mmap window's FreeMap, the fault log and counters; each zone's bitmap is one CBOR byte
//! string of run-length records, its summaries rebuilt and checked on load: see
//! `memvisor_frames::BitmapAllocator`'s serde) and the report's counters
//! (hypercalls, exits, console so far). kvm-bindings encodes its structures as their bytes
//! (x86_64 layout of `<linux/kvm.h>`). No in-kernel LAPIC / IOAPIC exists in this VMM (no
//! `KVM_CREATE_IRQCHIP`), so there is none to save.
//!
//! Not supported (refused with [`SnapError::Unsupported`]): VMs with stage-2 test ranges
//! (`--scenario stage2`, `VmBuilder` read-only / lazy ranges: their per-page memslots), extra
//! host memslots (`Vm::add_memslot`), the fault matrix.

mod capture;
mod deferred;
mod restore;

pub(crate) use deferred::Deferred;

use super::{RunState, Vm};
use crate::backend::{FlushSlot, HostInfo};
use crate::frames::ZonePreset;
use crate::hypercall::{CallStats, Hypercalls};
use crate::memory::{GuestRam, Memslot, Memslots};
use crate::report::Stage2Fault;
use crate::snapshot::{
    self, Identity, RestoreStats, Snapshot, SnapshotError, SnapshotSource, SourceCounters,
};
use crate::space::{AddressSpace, SpaceState, SpaceStateRef};
use crate::vmm::VmConfig;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Version of the STATE section's encoding (inside format version [`snapshot::VERSION`]).
pub const STATE_VERSION: u32 = 2;

/// MSRs saved with the vCPU (those KVM does not support are skipped): IA32_TSC, SYSENTER_CS /
/// ESP / EIP, MISC_ENABLE, PAT, STAR, LSTAR, CSTAR, SFMASK, FS_BASE, GS_BASE,
/// KERNEL_GS_BASE, TSC_AUX (Intel SDM Vol. 4, table 2-2). EFER is part of `kvm_sregs`.
pub const SAVED_MSRS: [u32; 14] = [
    0x10,
    0x174,
    0x175,
    0x176,
    0x1a0,
    0x277,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0100,
    0xc000_0101,
    0xc000_0102,
    0xc000_0103,
];

/// Errors of snapshot and restore.
#[derive(Debug, Error)]
pub enum SnapError {
    /// The file is unusable (truncated, corrupt, another version, RAM size or kernel, ...).
    #[error(transparent)]
    File(#[from] SnapshotError),
    /// The VM is not at a ucall sync point.
    #[error("a snapshot is taken at a ucall sync point; the last exit was not Ucall(Sync)")]
    NotAtSync,
    /// An incremental snapshot needs a snapshot (or a restore) of this VM first.
    #[error("an incremental snapshot needs a full snapshot of this VM (or a restore) first")]
    NoBase,
    /// The VM uses something snapshots do not cover.
    #[error("snapshot of a VM with {what}: not supported")]
    Unsupported {
        /// What.
        what: &'static str,
    },
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The STATE section does not decode (or decodes to something inconsistent).
    #[error("snapshot {path}: bad state section: {why}")]
    State {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Guest RAM, memslots or the uffd handler could not be set up.
    #[error(transparent)]
    Vmm(#[from] crate::vmm::VmmError),
    /// The host lacks userfaultfd (restore serves memory through it).
    #[error("userfaultfd unavailable: {0} (skipped: unsupported by host)")]
    NoUffd(crate::uffd::UffdError),
    /// Guest memory could not be read.
    #[error("cannot read guest page at GPA {gpa:#x}")]
    Read {
        /// The page.
        gpa: u64,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapError {
    move |source| SnapError::Kvm { what, source }
}

/// The vCPU's architectural state.
#[derive(Serialize, Deserialize)]
struct CpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: Option<kvm_xcrs>,
    msrs: Vec<(u32, u64)>,
    events: kvm_vcpu_events,
    debugregs: kvm_debugregs,
    mp_state: kvm_mp_state,
    cpuid: Vec<kvm_cpuid_entry2>,
    tsc_khz: u64,
}

/// The report's bookkeeping that continues across a restore.
#[derive(Serialize, Deserialize, Default)]
struct Book {
    by_call: Vec<(String, u64, u64, u64)>,
    by_status: Vec<(String, u64)>,
    bad_blocks: u64,
    blocks: u64,
    console: String,
    records: Vec<(String, String)>,
    exits: BTreeMap<String, u64>,
    stage2: Vec<Stage2State>,
    stage2_total: u64,
    flushes: u64,
    inv_checks: u64,
    first_guest_us: Option<u64>,
}

/// A [`Stage2Fault`] with its `rip_source` owned.
#[derive(Serialize, Deserialize)]
struct Stage2State {
    gpa: u64,
    size: u32,
    write: bool,
    value: Option<u64>,
    rip: Option<u64>,
    rip_source: Option<String>,
    exit_rip: Option<u64>,
    lazy_backed: bool,
}

/// Pages of a snapshot: (GPA, contents).
type Pages = Vec<(u64, Box<[u8; 4096]>)>;

/// The VM's configuration as the report names it.
#[derive(Serialize, Deserialize)]
struct ConfigState {
    mem_bytes: u64,
    scenario_name: String,
    flags: u32,
    arg: [u64; 4],
    zone_preset: ZonePreset,
    check_invariants: bool,
    stepwise: bool,
}

/// The STATE section (see the module docs), written form.
#[derive(Serialize)]
struct VmStateOut<'a> {
    version: u32,
    config: ConfigState,
    cpu: CpuState,
    memslots: Vec<(u32, u64, u64, u32)>,
    space: SpaceStateRef<'a>,
    book: Book,
}

/// The STATE section (see the module docs), read form.
#[derive(Deserialize)]
pub(crate) struct VmState {
    version: u32,
    config: ConfigState,
    cpu: CpuState,
    memslots: Vec<(u32, u64, u64, u32)>,
    space: SpaceState,
    book: Book,
}

/// Snapshot bookkeeping of a [`Vm`].
#[derive(Default)]
pub(crate) struct Track {
    /// Id of the last snapshot taken of (or restored into) this VM: an incremental snapshot
    /// layers on it.
    last_id: Option<u64>,
    /// KVM dirty logging is on for the RAM slots.
    dirty_on: bool,
    /// Dirty pages the API's own dirty-log reads consumed since the last snapshot.
    stashed: BTreeSet<u64>,
    /// GPAs held by the layers this VM was restored from (they are not resident until read).
    layer_pages: BTreeSet<u64>,
    /// Counters of the snapshot source serving this VM's RAM (restored VMs).
    pub(crate) source: Option<Arc<SourceCounters>>,
    /// Pages in the layers this VM was restored from.
    pub(crate) layer_page_count: u64,
    /// Number of those layers.
    pub(crate) layers: u64,
}

impl Track {
    /// Dirty logging is on for the snapshots.
    pub(crate) fn dirty_on(&self) -> bool {
        self.dirty_on
    }

    /// Keep dirty pages read from the log by someone else (`Vm::dirty_log`) for the next
    /// incremental snapshot.
    pub(crate) fn stash(&mut self, gpas: &[u64]) {
        if self.dirty_on {
            self.stashed.extend(gpas.iter().copied());
        }
    }
}

/// What a snapshot wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The new snapshot's id.
    pub id: u64,
    /// The layer below (incremental), else `None`.
    pub base_id: Option<u64>,
    /// Pages written.
    pub pages: u64,
    /// Bytes of the STATE section.
    pub state_bytes: u64,
    /// Time to take it (vCPU state, page copies, file written and renamed).
    pub elapsed: Duration,
}

/// Options of [`Vm::restore`].
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Guest RAM the snapshot must have (`None`: whatever the file says).
    pub mem_bytes: Option<u64>,
    /// Wall-clock limit of each [`Vm::run`] call.
    pub timeout: Duration,
    /// Echo the guest's console output live, and where.
    pub echo_console: crate::hypercall::ConsoleEcho,
    /// The host side of the snapshot's scenario, by name (the saved `scenario`; e.g. the
    /// tools' registry lookup). Its `prepare` does not run again: what it shaped is in the
    /// restored memory and address space. Default: [`crate::scenario::default_hooks`].
    pub hooks: fn(&str) -> Box<dyn crate::scenario::Scenario>,
    /// Check every page's CRC-32 before the VM is built ([`Snapshot::verify_pages`]: reads
    /// each page of the files once), so a corrupt page is refused before the guest runs
    /// (default on). Off, a corrupt page is found when the guest first touches it: it is
    /// served zero and counted (`corrupt_pages`).
    pub verify_pages: bool,
    /// Lazy restore's chunk (bytes, a power of two, at least 2 MiB; default 2 MiB, the
    /// page-table pool's and a large page's unit): RAM is cut into chunks of this size and
    /// only the memslots of the chunks holding a page of the files are registered before
    /// the first `KVM_RUN` (consecutive chunks merged; the chunk doubles while that would
    /// take more than 16 slots); the rest follow on a thread (`deferred`).
    pub eager_chunk: u64,
    /// A test hook: the thread registering the deferred memslots sleeps this long first,
    /// so the guest meets RAM without a memslot (default zero).
    pub defer_delay: Duration,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            mem_bytes: None,
            timeout: Duration::from_secs(30),
            echo_console: crate::hypercall::ConsoleEcho::Off,
            hooks: |_| crate::scenario::default_hooks(),
            verify_pages: true,
            eager_chunk: 2 << 20,
            defer_delay: Duration::ZERO,
        }
    }
}

fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}
