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
//! the mmap window's FreeMap, the fault log and counters) and the report's counters
//! (hypercalls, exits, console so far). kvm-bindings encodes its structures as their bytes
//! (x86_64 layout of `<linux/kvm.h>`). No in-kernel LAPIC / IOAPIC exists in this VMM (no
//! `KVM_CREATE_IRQCHIP`), so there is none to save.
//!
//! Not supported (refused with [`SnapError::Unsupported`]): VMs with stage-2 test ranges
//! (`--scenario stage2`, `VmBuilder` read-only / lazy ranges: their per-page memslots), extra
//! host memslots (`Vm::add_memslot`), the fault matrix.

use super::Vm;
use crate::backend::{FlushSlot, HostInfo};
use crate::frames::ZonePreset;
use crate::hypercall::{CallStats, Hypercalls};
use crate::memory::{GuestRam, Memslot, Memslots};
use crate::report::{ExitLatency, Stage2Fault};
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
pub const STATE_VERSION: u32 = 1;

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
    scenario: u32,
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
    /// Echo the guest's console output live.
    pub echo_console: bool,
    /// Check every page's CRC-32 before the VM is built ([`Snapshot::verify_pages`]: reads
    /// each page of the files once), so a corrupt page is refused before the guest runs
    /// (default on). Off, a corrupt page is found when the guest first touches it: it is
    /// served zero and counted (`corrupt_pages`).
    pub verify_pages: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            mem_bytes: None,
            timeout: Duration::from_secs(30),
            echo_console: false,
            verify_pages: true,
        }
    }
}

fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}

impl Vm {
    /// Write a full snapshot of the VM to `path` (temporary file + rename): its state and
    /// every RAM page ever written (see the module docs). Turns on dirty logging so that
    /// [`Vm::snapshot_incremental`] can follow.
    ///
    /// # Errors
    /// [`SnapError::NotAtSync`], [`SnapError::Unsupported`], [`SnapError::Kvm`],
    /// [`SnapError::File`] (I/O).
    pub fn snapshot(&mut self, path: &Path) -> Result<SnapshotInfo, SnapError> {
        let t0 = Instant::now();
        self.check_snapshottable()?;
        let cpu = self.capture_cpu()?;
        let mut gpas: BTreeSet<u64> = self.resident_pages();
        gpas.extend(self.snap.layer_pages.iter().copied());
        let pages = self.read_pages(&gpas, true)?;
        if let Some(h) = self.space.ram.uffd.as_ref() {
            h.take_touched();
        }
        // Start (or restart) the dirty log: the next incremental holds what changes from now.
        self.reset_dirty_log()?;
        self.write_snapshot(path, None, cpu, pages, t0)
    }

    /// Write an incremental snapshot to `path`: the state and the pages dirtied since the
    /// last snapshot of this VM (or its restore), layered on that snapshot.
    ///
    /// # Errors
    /// As [`Vm::snapshot`], and [`SnapError::NoBase`].
    pub fn snapshot_incremental(&mut self, path: &Path) -> Result<SnapshotInfo, SnapError> {
        let t0 = Instant::now();
        self.check_snapshottable()?;
        let Some(base) = self.snap.last_id else {
            return Err(SnapError::NoBase);
        };
        let cpu = self.capture_cpu()?;
        let gpas = if self.snap.dirty_on {
            let dirty = crate::stage2::read_dirty(&self.vm, &self.slots, &self.space)
                .map_err(|e| SnapError::Vmm(crate::vmm::VmmError::Space(e.into())))?;
            let mut gpas: BTreeSet<u64> = std::mem::take(&mut self.snap.stashed);
            gpas.extend(dirty.merged);
            gpas
        } else {
            // Restored and not yet snapshotted: every page the uffd handler served (or saw
            // discarded) since the restore; the others still equal the files below.
            self.uffd_touched()
        };
        let pages = self.read_pages(&gpas, false)?;
        self.reset_dirty_log()?;
        self.write_snapshot(path, Some(base), cpu, pages, t0)
    }

    fn check_snapshottable(&self) -> Result<(), SnapError> {
        if self.s2ctl.is_some() {
            return Err(SnapError::Unsupported {
                what: "stage-2 test ranges (per-page memslots)",
            });
        }
        if !self.host_backing.is_empty() {
            return Err(SnapError::Unsupported {
                what: "extra host memslots",
            });
        }
        if self.hc.matrix.is_some() {
            return Err(SnapError::Unsupported {
                what: "the fault matrix",
            });
        }
        if !self.at_sync || self.finished.is_some() || self.pending_mmio_read.is_some() {
            return Err(SnapError::NotAtSync);
        }
        Ok(())
    }

    /// Complete the pending exit (immediate_exit), then read every vCPU register we restore.
    fn capture_cpu(&mut self) -> Result<CpuState, SnapError> {
        self.vcpu.set_kvm_immediate_exit(1);
        let r = self.vcpu.run().map(|_| ());
        self.vcpu.set_kvm_immediate_exit(0);
        match r {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                return Err(SnapError::Kvm {
                    what: "KVM_RUN (immediate exit)",
                    source: e,
                })
            }
            Ok(()) => {
                return Err(SnapError::Unsupported {
                    what: "a kernel that runs the guest despite kvm_run.immediate_exit",
                })
            }
        }
        let v = &self.vcpu;
        let regs = v.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = v.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let xsave = v.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        let xcrs = v.get_xcrs().ok();
        let events = v.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        let debugregs = v.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        let mp_state = v.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
        let cpuid = v
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let mut msrs = Vec::new();
        for index in SAVED_MSRS {
            let Ok(mut m) = Msrs::from_entries(&[kvm_msr_entry {
                index,
                ..Default::default()
            }]) else {
                continue;
            };
            if v.get_msrs(&mut m) == Ok(1) {
                msrs.push((index, m.as_slice()[0].data));
            }
        }
        Ok(CpuState {
            regs,
            sregs,
            xsave,
            xcrs,
            msrs,
            events,
            debugregs,
            mp_state,
            cpuid,
            tsc_khz: self.tsc_khz,
        })
    }

    /// GPAs of the pages the uffd handler served or saw discarded since the last call.
    fn uffd_touched(&self) -> BTreeSet<u64> {
        let Some(h) = self.space.ram.uffd.as_ref() else {
            return BTreeSet::new();
        };
        let hvas = h.take_touched();
        let mut out = BTreeSet::new();
        for r in self.space.ram.mem.iter() {
            let (h0, len, g0) = (r.as_ptr() as u64, r.len(), r.start_addr().0);
            out.extend(
                hvas.iter()
                    .filter(|&&h| h >= h0 && h - h0 < len)
                    .map(|&h| g0 + (h - h0)),
            );
        }
        out
    }

    /// GPAs of the RAM pages resident in the host mapping (`mincore`).
    fn resident_pages(&self) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for r in self.space.ram.mem.iter() {
            let pages = (r.len() / crate::uffd::PAGE) as usize;
            let mut vec = vec![0u8; pages];
            // SAFETY: [as_ptr, as_ptr + len) is one live mapping owned by guest RAM; mincore
            // only reads the page tables of it and writes `pages` bytes into `vec`.
            let rc =
                unsafe { libc::mincore(r.as_ptr().cast(), r.len() as usize, vec.as_mut_ptr()) };
            let base = r.start_addr().0;
            for (i, v) in vec.iter().enumerate() {
                // On failure, take every page (correct, only larger).
                if rc != 0 || v & 1 != 0 {
                    out.insert(base + i as u64 * crate::uffd::PAGE);
                }
            }
        }
        out
    }

    fn read_pages(&self, gpas: &BTreeSet<u64>, skip_zero: bool) -> Result<Pages, SnapError> {
        let mut out = Vec::with_capacity(gpas.len());
        for &gpa in gpas {
            let mut page = Box::new([0u8; 4096]);
            self.space
                .ram
                .mem
                .read_slice(&mut page[..], GuestAddress(gpa))
                .map_err(|_| SnapError::Read { gpa })?;
            if skip_zero && is_zero(&page[..]) {
                continue;
            }
            out.push((gpa, page));
        }
        Ok(out)
    }

    /// Turn on dirty logging (first time) or read and drop the log (later).
    fn reset_dirty_log(&mut self) -> Result<(), SnapError> {
        let e =
            |e: crate::memory::MemoryError| SnapError::Vmm(crate::vmm::VmmError::Space(e.into()));
        self.snap.stashed.clear();
        if self.snap.dirty_on {
            crate::stage2::read_dirty(&self.vm, &self.slots, &self.space).map_err(e)?;
        } else {
            crate::stage2::start_dirty(&self.vm, &mut self.slots, &self.space).map_err(e)?;
            self.snap.dirty_on = true;
        }
        Ok(())
    }

    fn write_snapshot(
        &mut self,
        path: &Path,
        base: Option<u64>,
        cpu: CpuState,
        pages: Pages,
        t0: Instant,
    ) -> Result<SnapshotInfo, SnapError> {
        let state = VmStateOut {
            version: STATE_VERSION,
            config: ConfigState {
                mem_bytes: self.cfg.mem_bytes,
                scenario: self.cfg.scenario,
                scenario_name: self.cfg.scenario_name.clone(),
                flags: self.cfg.flags,
                arg: self.cfg.arg,
                zone_preset: self.cfg.zone_preset,
                check_invariants: self.cfg.check_invariants,
                stepwise: self.stepwise,
            },
            cpu,
            memslots: self
                .memslots
                .iter()
                .map(|m| (m.slot, m.gpa, m.size, m.flags))
                .collect(),
            space: self.space.save_state(),
            book: self.book(),
        };
        let mut blob = Vec::new();
        ciborium::into_writer(&state, &mut blob).map_err(|e| SnapError::State {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        let refs: Vec<(u64, &[u8; 4096])> = pages.iter().map(|(g, p)| (*g, &**p)).collect();
        let id = Identity::of(self.cfg.mem_bytes, &self.cfg.kernel);
        let new_id = snapshot::write(path, id, base, &blob, &refs)?;
        self.snap.last_id = Some(new_id);
        Ok(SnapshotInfo {
            id: new_id,
            base_id: base,
            pages: pages.len() as u64,
            state_bytes: blob.len() as u64,
            elapsed: t0.elapsed(),
        })
    }

    fn book(&self) -> Book {
        let hc = &self.hc;
        Book {
            by_call: hc
                .by_call
                .iter()
                .map(|(k, s)| (k.to_string(), s.count, s.errors, s.total_ns))
                .collect(),
            by_status: hc
                .by_status
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            bad_blocks: hc.bad_blocks,
            blocks: hc.blocks,
            console: hc.console.clone(),
            records: hc.records.clone(),
            exits: self.exits.clone(),
            stage2: self
                .stage2
                .iter()
                .map(|f| Stage2State {
                    gpa: f.gpa,
                    size: f.size,
                    write: f.write,
                    value: f.value,
                    rip: f.rip,
                    rip_source: f.rip_source.map(str::to_string),
                    exit_rip: f.exit_rip,
                    lazy_backed: f.lazy_backed,
                })
                .collect(),
            stage2_total: self.stage2_total,
            flushes: self.flush_slot.count,
            inv_checks: self.inv_checks,
            first_guest_us: self.first_guest_us,
        }
    }
}

/// `name` as one of the `&'static str` names `names` yields.
fn intern(name: &str, names: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    names.into_iter().find(|n| *n == name)
}

fn call_names() -> impl Iterator<Item = &'static str> {
    (0..=255u32)
        .filter_map(memvisor_abi::Call::from_u32)
        .map(memvisor_abi::Call::name)
        .chain(["unknown"])
}

fn status_names() -> impl Iterator<Item = &'static str> {
    (-255..=255i32)
        .filter_map(memvisor_abi::Status::from_i32)
        .map(memvisor_abi::Status::name)
}

impl Book {
    fn take_hypercalls(&mut self, echo: bool) -> Option<Hypercalls> {
        let mut hc = Hypercalls {
            bad_blocks: self.bad_blocks,
            blocks: self.blocks,
            console: std::mem::take(&mut self.console),
            records: std::mem::take(&mut self.records),
            echo,
            ..Hypercalls::default()
        };
        for (k, count, errors, total_ns) in std::mem::take(&mut self.by_call) {
            hc.by_call.insert(
                intern(&k, call_names())?,
                CallStats {
                    count,
                    errors,
                    total_ns,
                },
            );
        }
        for (k, v) in std::mem::take(&mut self.by_status) {
            hc.by_status.insert(intern(&k, status_names())?, v);
        }
        Some(hc)
    }
}

impl Vm {
    /// Restore a VM from the snapshot `top` (a full snapshot, or an incremental layer on
    /// `base`) for the guest kernel `kernel`, in this process: guest RAM is registered with
    /// userfaultfd and each page is read from the files on its first touch (the newest layer
    /// holding it wins; pages in no layer are zero). The VM continues from the sync point at
    /// the next [`Vm::run`]. Everything is validated before the vCPU exists.
    ///
    /// # Errors
    /// [`SnapError::File`] for a truncated, corrupt, wrong-version, wrong-size or
    /// other-kernel file (or a layer on another base), [`SnapError::State`],
    /// [`SnapError::NoUffd`] without userfaultfd, [`SnapError::Kvm`] / [`SnapError::Vmm`].
    pub fn restore(
        top: &Path,
        base: Option<&Path>,
        kernel: Vec<u8>,
        opts: RestoreOptions,
    ) -> Result<Vm, SnapError> {
        let t_start = Instant::now();
        let mem_bytes = match opts.mem_bytes {
            Some(m) => m,
            None => snapshot::read_identity(base.unwrap_or(top))?.mem_bytes,
        };
        let want = Identity::of(mem_bytes, &kernel);
        let layers: Vec<Arc<Snapshot>> = match base {
            None => vec![Arc::new(Snapshot::open(top, want)?)],
            Some(b) => {
                let b = Snapshot::open(b, want)?;
                let t = Snapshot::open_layer(top, want, b.id)?;
                vec![Arc::new(b), Arc::new(t)]
            }
        };
        if opts.verify_pages {
            for l in &layers {
                l.verify_pages()?;
            }
        }
        log::debug!(
            "restore: files open and verified after {:?}",
            t_start.elapsed()
        );
        let Some(newest) = layers.last().cloned() else {
            return Err(SnapError::NoBase);
        };
        let bad = |why: String| SnapError::State {
            path: top.display().to_string(),
            why,
        };
        let mut state: VmState =
            ciborium::from_reader(&newest.state[..]).map_err(|e| bad(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(bad(format!(
                "state version {}, this memvisor reads {STATE_VERSION}",
                state.version
            )));
        }
        if state.config.mem_bytes != mem_bytes {
            return Err(bad("RAM size differs from the header's".into()));
        }
        log::debug!("restore: state decoded after {:?}", t_start.elapsed());
        let mut ram = GuestRam::new(mem_bytes)
            .map_err(|e| SnapError::Vmm(crate::vmm::VmmError::Space(e.into())))?;
        let ranges: Vec<(u64, u64, u64)> = ram
            .mem
            .iter()
            .map(|r| (r.as_ptr() as u64, r.start_addr().0, r.len()))
            .collect();
        let source = SnapshotSource::new(layers.clone(), ranges);
        let counters = source.counters.clone();
        ram.attach_uffd(Box::new(source))
            .map_err(SnapError::NoUffd)?;
        if let Some(h) = ram.uffd.as_ref() {
            // An incremental snapshot of the restored VM needs every page served since now.
            h.track_touched();
        }
        log::debug!("restore: RAM + uffd after {:?}", t_start.elapsed());
        let layer_pages: BTreeSet<u64> = layers.iter().flat_map(|l| l.gpas()).collect();
        let hc = state
            .book
            .take_hypercalls(opts.echo_console)
            .ok_or_else(|| bad("unknown hypercall or status name".into()))?;
        let space = AddressSpace::from_state(ram, state.space)
            .ok_or_else(|| bad("unknown fault-log kind".into()))?;
        if space
            .ram
            .ram
            .iter()
            .map(|r| r.0)
            .ne(state.memslots.iter().map(|m| m.1))
        {
            return Err(bad("RAM memslots differ from this VM's".into()));
        }
        let cfg = VmConfig {
            mem_bytes,
            kernel,
            scenario: state.config.scenario,
            scenario_name: state.config.scenario_name,
            flags: state.config.flags,
            arg: state.config.arg,
            timeout: opts.timeout,
            zone_preset: state.config.zone_preset,
            echo_console: opts.echo_console,
            check_invariants: state.config.check_invariants,
            uffd: true,
        };
        let mut vm = build(cfg, space, hc, &state.cpu, t_start)?;
        vm.stepwise = state.config.stepwise;
        vm.exits = state.book.exits;
        vm.stage2 = state
            .book
            .stage2
            .into_iter()
            .map(|f| Stage2Fault {
                gpa: f.gpa,
                size: f.size,
                write: f.write,
                value: f.value,
                rip: f.rip,
                rip_source: f
                    .rip_source
                    .and_then(|s| intern(&s, ["exit", "decoded"].into_iter())),
                exit_rip: f.exit_rip,
                lazy_backed: f.lazy_backed,
            })
            .collect();
        vm.stage2_total = state.book.stage2_total;
        vm.flush_slot.count += state.book.flushes;
        vm.inv_checks = state.book.inv_checks;
        vm.at_sync = true;
        vm.snap = Track {
            last_id: Some(newest.id),
            dirty_on: false,
            stashed: BTreeSet::new(),
            layer_page_count: layer_pages.len() as u64,
            layers: layers.len() as u64,
            layer_pages,
            source: Some(counters),
        };
        vm.setup_us = t_start.elapsed().as_micros() as u64;
        Ok(vm)
    }

    /// Microseconds from the start of [`Vm::restore`] (or [`Vm::new`]) to the first return
    /// of `KVM_RUN`: the guest has executed (an upper bound of "to the first guest
    /// instruction"); `None` before the first run.
    pub fn first_exit_us(&self) -> Option<u64> {
        self.first_exit_us
    }

    /// What this VM read from its snapshot files so far (a restored VM), else `None`.
    pub fn restore_stats(&self) -> Option<RestoreStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let c = self.snap.source.as_ref()?;
        Some(RestoreStats {
            pages_read: c.pages_read.load(Relaxed),
            file_pages: self.snap.layer_page_count,
            corrupt_pages: c.corrupt.load(Relaxed),
            layers: self.snap.layers,
            restore_us: self.setup_us,
        })
    }
}

/// Create the KVM VM and vCPU around a restored address space and load the vCPU state.
fn build(
    cfg: VmConfig,
    space: AddressSpace,
    hc: Hypercalls,
    cpu: &CpuState,
    t_start: Instant,
) -> Result<Vm, SnapError> {
    let kvm_fd = Kvm::new().map_err(|source| crate::vmm::VmmError::NoKvm { source })?;
    let vm = kvm_fd.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
    let cpuid = CpuId::from_entries(&cpu.cpuid).map_err(|_| SnapError::State {
        path: String::new(),
        why: "CPUID table too large".into(),
    })?;
    // The features the VM was built with (what its report and page-table choices used).
    let features = space.features;
    let host = HostInfo::new(
        crate::backend::Backend::detect(),
        crate::backend::maxphyaddr(&cpuid),
    );
    let mem_err =
        |e: crate::memory::MemoryError| SnapError::Vmm(crate::vmm::VmmError::Space(e.into()));
    let t_slots = Instant::now();
    let memslots: Vec<Memslot> = space.ram.register(&vm).map_err(mem_err)?;
    let mut slots = Memslots::new(kvm_fd.get_nr_memslots());
    for m in &memslots {
        let hva = space
            .ram
            .mem
            .get_host_address(GuestAddress(m.gpa))
            .map(|p| p as u64)
            .unwrap_or(0);
        slots.track(*m, hva);
    }
    let memslot_us = t_slots.elapsed().as_micros() as u64;
    log::debug!("restore: memslots after {:?}", t_start.elapsed());
    let flush_slot = FlushSlot::new(&vm, &mut slots, host.shadow_paging).map_err(mem_err)?;
    let mut vcpu = vm.create_vcpu(0).map_err(kvm("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    let sync_regs = enable_sync_regs(&kvm_fd, &mut vcpu);
    load_cpu(&vcpu, cpu)?;
    log::debug!("restore: vCPU loaded after {:?}", t_start.elapsed());
    let watchdog = super::watchdog::Watchdog::start()
        .map_err(|e| kvm("signal handler")(kvm_ioctls::Error::new(e.errno())))?;
    Ok(Vm {
        cfg,
        vm,
        vcpu,
        features,
        phys_bits: host.maxphyaddr,
        host,
        space,
        memslots,
        slots,
        flush_slot,
        s2ctl: None,
        hc,
        sync_regs,
        tsc_khz: cpu.tsc_khz,
        watchdog,
        stepwise: false,
        exits: BTreeMap::new(),
        stage2: Vec::new(),
        stage2_total: 0,
        inv_checks: 0,
        latency: ExitLatency::default(),
        last_exit: None,
        pending_mmio_read: None,
        mmio_read_value: u64::MAX,
        finished: None,
        host_backing: Vec::new(),
        t_start,
        setup_us: 0,
        memslot_us,
        first_entry_us: None,
        first_exit_us: None,
        first_guest_us: None,
        run_time: Duration::ZERO,
        at_sync: true,
        snap: Track::default(),
    })
}

fn enable_sync_regs(kvm_fd: &Kvm, vcpu: &mut VcpuFd) -> bool {
    use kvm_bindings::{KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
    let mask = kvm_fd.check_extension_int(kvm_ioctls::Cap::SyncRegs) as u32;
    let ok =
        mask & (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS) == (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
    if ok {
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
    }
    ok
}

/// Load the saved vCPU state (Firecracker's order: MSRs after CPUID, then registers, special
/// registers, XSAVE, XCRs, debug registers, MP state, events).
fn load_cpu(vcpu: &VcpuFd, cpu: &CpuState) -> Result<(), SnapError> {
    let entries: Vec<kvm_msr_entry> = cpu
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    if !entries.is_empty() {
        let msrs = Msrs::from_entries(&entries).map_err(|_| SnapError::State {
            path: String::new(),
            why: "too many MSRs".into(),
        })?;
        let n = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if n != entries.len() {
            return Err(SnapError::Kvm {
                what: "KVM_SET_MSRS (an MSR was refused)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
    }
    vcpu.set_sregs(&cpu.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&cpu.regs).map_err(kvm("KVM_SET_REGS"))?;
    // SAFETY: `kvm_xsave` is the legacy 4 KiB XSAVE area KVM_GET_XSAVE returned (the
    // `xsave2` variant with a larger area is not used), so KVM reads no more than its size.
    unsafe { vcpu.set_xsave(&cpu.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    if let Some(x) = &cpu.xcrs {
        vcpu.set_xcrs(x).map_err(kvm("KVM_SET_XCRS"))?;
    }
    vcpu.set_debug_regs(&cpu.debugregs)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    vcpu.set_mp_state(cpu.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    vcpu.set_vcpu_events(&cpu.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
