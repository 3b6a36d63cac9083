//! The guest's address space, owned by the host: guest RAM, the zone allocator, the page
//! tables, the mmap window and its regions.
//!
//! [`AddressSpace::build`] lays out a fresh guest (kernel image W^X, direct map, stacks with
//! guard pages, boot info); [`ops`] implements the memory hypercalls with every argument
//! treated as hostile.

mod access;
mod five_level;
#[cfg(test)]
mod flush_tests;
mod gva;
pub mod image;
pub mod ops;
pub mod pool;
mod state;

pub use state::{FaultState, SpaceState, SpaceStateRef};

use crate::addr::{Gpa, Gva, Pfn, PAGE_SIZE};
use crate::boot::cpuid::Features;
use crate::boot::loader::{self, KernelImage, LoaderError};
use crate::frames::{FrameError, FreeMap, ZoneKind, ZonePreset, ZoneTable};
use crate::layout::*;
use crate::memory::{GuestRam, MemoryError};
use crate::paging::{PageSize, PageTables, PagingError, Protection, PteFlags, ShadowFlush};
pub use access::HostTables;
use memvisor_abi::{BootInfo, Prot, Status, Zone, ABI_VERSION, BOOT_MAGIC, MAX_E820};
pub use pool::TablePool;
use std::collections::BTreeMap;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

/// Errors of building or editing the address space.
#[derive(Debug, Error)]
pub enum SpaceError {
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel image is unusable.
    #[error("kernel: {0}")]
    Loader(#[from] LoaderError),
    /// The frame allocator refused.
    #[error("frames: {0}")]
    Frames(#[from] FrameError),
    /// A page-table edit failed.
    #[error("page tables: {0}")]
    Paging(#[from] PagingError),
    /// A kernel segment is both writable and executable.
    #[error("kernel segment at GVA {gva:#x} is writable and executable (W^X)")]
    WritableExecutable {
        /// The segment's GVA.
        gva: u64,
    },
    /// A kernel segment lies in the mmap window (which belongs to the guest's regions).
    #[error(
        "kernel segment at GVA {gva:#x} lies in the mmap window [{:#x}, {:#x})",
        MMAP_WINDOW_START,
        MMAP_WINDOW_END
    )]
    KernelInWindow {
        /// The segment's GVA.
        gva: u64,
    },
    /// Guest RAM too small for the boot layout.
    #[error("guest RAM of {bytes} bytes is too small: {why}")]
    TooSmall {
        /// RAM in bytes.
        bytes: u64,
        /// What did not fit.
        why: String,
    },
    /// Address arithmetic overflowed.
    #[error(transparent)]
    Addr(#[from] crate::addr::AddrError),
    /// userfaultfd-backed RAM could not be set up.
    #[error("userfaultfd: {0}")]
    Uffd(#[from] crate::uffd::UffdError),
    /// Writing boot structures failed.
    #[error("cannot write {what} to guest memory")]
    Write {
        /// Which structure.
        what: &'static str,
    },
}

/// How a region's pages get their frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Backing {
    /// Every page was backed at mmap time.
    Populated,
    /// Pages are backed on first touch (LazyFault).
    Lazy,
}

/// One mmap region: `[start, end)` plus an unmapped guard page after `end` when `guard`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Region {
    /// Region id (increasing; 0 is never used).
    pub id: u64,
    /// First GVA.
    pub start: u64,
    /// One past the last GVA.
    pub end: u64,
    /// Whether the page at `end` is this region's reserved guard.
    pub guard: bool,
    /// Protection by range: key = first GVA of a run, value = its protection until the next
    /// key.
    pub prot: BTreeMap<u64, Prot>,
    /// Zone frames come from (as the guest asked: `Zone::ANY` stays `ANY`).
    pub zone: Zone,
    /// Populated or lazy.
    pub backing: Backing,
}

impl Region {
    /// Protection in effect at `gva` (inside the region; `Prot::NONE` outside).
    pub fn prot_at(&self, gva: u64) -> Prot {
        self.prot
            .range(..=gva)
            .next_back()
            .map_or(Prot::NONE, |(_, &p)| p)
    }
}

/// One entry of the fault log.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct FaultRecord {
    /// Exception vector (14 for #PF).
    pub vector: u64,
    /// Error code (for #PF: P W U RSVD I/D, SDM Vol. 3A §4.7; JSON: hex string).
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub error_code: u64,
    /// CR2 (the faulting GVA for #PF; JSON: hex string).
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub cr2: u64,
    /// Guest RIP of the faulting instruction (JSON: hex string).
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub rip: u64,
    /// Whether the fault was resolved (lazy page backed, or recovered by the guest).
    pub resolved: bool,
    /// `lazy` (demand paging served by the host) or `reported` (reported by the guest).
    pub kind: &'static str,
}

/// Counters of the address space.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SpaceCounters {
    /// Faults by kind and vector (`lazy/14`, `reported/14`, `reported/8`, ...).
    pub by_kind: BTreeMap<String, u64>,
    /// Data frames currently mapped for mmap regions.
    pub mapped_frames: u64,
    /// Lazy faults served.
    pub lazy_faults: u64,
    /// Of those, served through the #PF assist exit (`crate::pf_assist`).
    pub lazy_faults_assisted: u64,
    /// Of those, returned to the guest by the VMM's own iretq.
    pub vmm_irets: u64,
    /// Faults reported by the guest or logged by the host (all kinds).
    pub faults: u64,
}

/// Most entries kept in the fault log; later faults are only counted.
pub const FAULT_LOG_MAX: usize = 4096;

/// The guest's memory, owned by the host. Its parts are the crate's (the VMM, the
/// invariants, the scenarios' host sides edit them together); from outside, read them through
/// the accessors and change them only through the hypercall operations ([`ops`]).
pub struct AddressSpace {
    /// Guest RAM and the e820 map.
    pub(crate) ram: GuestRam,
    /// Frame allocator by zone.
    pub(crate) zones: ZoneTable,
    /// The guest's page tables (CR3 = `pt.cr3_root()`: the PML4, or a PML5 above it).
    pub(crate) pt: PageTables,
    /// Frames for page tables.
    pub(crate) pool: TablePool,
    /// Free GVA ranges of the mmap window.
    pub(crate) window: FreeMap,
    /// Live mmap regions by start GVA.
    pub(crate) regions: BTreeMap<u64, Region>,
    /// The loaded kernel image.
    pub(crate) kernel: KernelImage,
    /// Paging features of the guest CPUID.
    pub(crate) features: Features,
    /// Fault log (first [`FAULT_LOG_MAX`] faults).
    pub(crate) faults: Vec<FaultRecord>,
    /// Counters.
    pub(crate) counters: SpaceCounters,
    /// Frames of the boot stacks.
    pub(crate) stack_frames: Vec<Pfn>,
    /// The shadow flush owed since the VMM last flushed KVM's shadow page tables (a mapping
    /// was removed or its rights reduced; see [`crate::backend::FlushSlot`]). Private: edits
    /// add to it, [`Self::take_shadow_flush`] hands it to the VMM exactly once.
    shadow: ShadowFlush,
    /// How the space was built (e.g. `no_nx` for the fault matrix).
    pub(crate) build_options: BuildOptions,
    /// GVA areas a scenario's host side maps for its own data ([`HostArea`]; e.g. the fault
    /// matrix's tables). Empty in most scenarios.
    host_areas: Vec<HostArea>,
    /// GPA ranges `(first, bytes)` outside RAM that the VMM maps for the guest at
    /// `stage2::GVA_BASE + (gpa - stage2::GPA_BASE)` ([`memvisor_abi::stage2`]): the stage-2
    /// test layout and a test's extra read-only and lazy ranges (`crate::stage2::Stage2::setup`).
    /// Empty unless the stage-2 regions are set up.
    pub(crate) stage2_ranges: Vec<(u64, u64)>,
    /// Host-made mappings of GPAs outside RAM `(gva, len, gpa)` (`Vm::map_gpa`: unbacked
    /// windows and extra memslots); the invariants accept their leaves.
    pub(crate) device_maps: Vec<(u64, u64, u64)>,
    next_region: u64,
}

/// A GVA area a scenario's host side maps for its own data, on page tables it may build
/// deliberately malformed (non-present or reserved-bit entries, as the fault matrix does):
/// the invariants walk only what can be walked there and require every leaf in it to map
/// one of `frames`, which the teardown frees.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostArea {
    /// `[start, end)` GVAs, in the lower canonical half.
    pub gva: std::ops::Range<u64>,
    /// Frame runs `(first, count)` the area owns (allocated from the zones).
    pub frames: Vec<(Pfn, u64)>,
}

/// Options of [`AddressSpace::build_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildOptions {
    /// Map the kernel's own pages (image, direct map, stacks, doorbell) without NX even when
    /// the CPU has it: a **W^X relaxation for the `fault-matrix` scenario only**, whose guest
    /// runs half its passes with EFER.NXE = 0, where NX is a reserved bit and every NX
    /// mapping (the kernel's stack and data included) would fault with RSVD = 1. Writable
    /// pages are then executable; nothing else changes.
    pub no_nx: bool,
    /// Back guest RAM through userfaultfd ([`crate::uffd`]): every first touch of a frame is
    /// served zero by the VMM's handler thread, and frames freed by munmap are discarded
    /// (`MADV_DONTNEED`).
    pub uffd: bool,
}

fn prot_flags(p: Protection, nx: bool) -> PteFlags {
    p.to_pte_flags(nx)
}

impl AddressSpace {
    /// Build a fresh guest: RAM of `mem_bytes`, the kernel ELF `kernel` loaded and mapped W^X,
    /// the direct map, boot and #DF stacks with guard pages, and the boot info.
    ///
    /// # Errors
    /// Any [`SpaceError`]; nothing is leaked (the whole space is dropped).
    pub fn build(
        mem_bytes: u64,
        kernel: &[u8],
        preset: ZonePreset,
        features: Features,
    ) -> Result<Self, SpaceError> {
        Self::build_with(mem_bytes, kernel, preset, features, BuildOptions::default())
    }

    /// [`AddressSpace::build`] with [`BuildOptions`].
    ///
    /// # Errors
    /// As [`AddressSpace::build`].
    pub fn build_with(
        mem_bytes: u64,
        kernel: &[u8],
        preset: ZonePreset,
        features: Features,
        opts: BuildOptions,
    ) -> Result<Self, SpaceError> {
        let ram = crate::uffd::RamOptions::default();
        Self::build_with_ram(mem_bytes, kernel, preset, features, opts, &ram)
    }

    /// [`AddressSpace::build_with`] with RAM backed as `ram` says: its backing, and with
    /// [`BuildOptions::uffd`] the GPA ranges registered with userfaultfd (all of RAM when
    /// none) and the shared-memory prefill (before anything is written to RAM).
    ///
    /// # Errors
    /// As [`AddressSpace::build`]; [`SpaceError::Uffd`] for a bad range, a prefill without
    /// shared memory, or userfaultfd refusing (e.g. MINOR mode unsupported by the host).
    pub fn build_with_ram(
        mem_bytes: u64,
        kernel: &[u8],
        preset: ZonePreset,
        features: Features,
        opts: BuildOptions,
        ram_opts: &crate::uffd::RamOptions,
    ) -> Result<Self, SpaceError> {
        let t0 = std::time::Instant::now();
        let mut ram = GuestRam::new_with(mem_bytes, ram_opts.backing)?;
        if opts.uffd {
            ram.attach_uffd_ranges(Box::new(crate::uffd::ZeroSource), &ram_opts.uffd_ranges)?;
        }
        for &(gpa, len) in &ram_opts.prefill {
            ram.shm_prefill(gpa, len)?;
        }
        if ram_opts.prefault_cursor {
            ram.start_prefault_cursor()?;
        }
        let mut zones = ZoneTable::new(&ram.ram, preset)?;
        log::debug!("build: RAM + zones after {:?}", t0.elapsed());
        let min = KERNEL_PHYS_BASE + (4 << 20);
        if mem_bytes < min {
            return Err(SpaceError::TooSmall {
                bytes: mem_bytes,
                why: format!("at least {} MiB are needed", min >> 20),
            });
        }
        // Page 0 and the boot-info frame.
        zones.reserve(Pfn::new(0), 2)?;
        let image = loader::load(&ram, kernel)?;
        let kframes = (image.phys_end - image.phys_start) / PAGE_SIZE;
        zones.reserve(Gpa::new(image.phys_start).pfn(), kframes)?;

        // Table frames for the boot mappings: one PD per GiB and one PDPT per 512 GiB of the
        // direct map, edge PTs, the kernel image and stacks, plus slack.
        let end = ram.end();
        let boot_tables = end.div_ceil(1 << 30) + end.div_ceil(512 << 30) + 32;
        let mut pool = TablePool::new();
        while pool.available() < boot_tables {
            pool.grow(&mut zones).map_err(|_| SpaceError::TooSmall {
                bytes: mem_bytes,
                why: "no 2 MiB-aligned run of 512 free frames for page tables".into(),
            })?;
        }
        log::debug!("build: kernel loaded, pool ready after {:?}", t0.elapsed());
        let mut pt = PageTables::new(&ram.mem, &mut pool)?;
        let nx = features.nx && !opts.no_nx;

        // Kernel image, per segment, W^X (text in 2 MiB pages where `image` allows).
        for seg in &image.segments {
            if seg.write && seg.exec {
                return Err(SpaceError::WritableExecutable { gva: seg.gva });
            }
        }
        for m in image::image_mappings(&image) {
            // The mmap window is the guest's to map and unmap: no kernel page may lie there.
            if m.gva < MMAP_WINDOW_END && m.gva.saturating_add(m.len) > MMAP_WINDOW_START {
                return Err(SpaceError::KernelInWindow {
                    gva: image.segments[m.segment].gva,
                });
            }
            // The image is user-accessible (US=1): the guest runs its scenarios in ring 3,
            // where PVM executes them natively (CPL0 code is emulated there). W^X holds.
            pt.edit(&ram.mem, &mut pool).map_range(
                crate::paging::canonical(m.gva)?,
                Gpa::new(m.gpa),
                m.len,
                m.size,
                prot_flags(m.prot, nx),
            )?;
        }

        // Direct map of all RAM: read/write, except the table pool chunk and the 2 MiB
        // span(s) holding the kernel image, which are read-only (never writable aliases).
        // US=1 so ring-3 scenario code can walk the page tables (read-only) and read RAM.
        let direct_flags = prot_flags(Protection::USER_DATA, nx);
        let ro_flags = prot_flags(Protection::USER_RODATA, nx);
        let chunk_bytes = TABLE_POOL_CHUNK_FRAMES * PAGE_SIZE;
        let kstart = image.phys_start & !(LARGE_PAGE - 1);
        let kend = image.phys_end.div_ceil(LARGE_PAGE) * LARGE_PAGE;
        let mut ro: Vec<(u64, u64)> = pool
            .chunks
            .iter()
            .map(|c| (c.raw() * PAGE_SIZE, chunk_bytes))
            .collect();
        ro.push((kstart, kend - kstart));
        let (rw_ranges, ro_ranges) = split_ranges(&ram.ram, &ro);
        for (list, flags) in [(&rw_ranges, direct_flags), (&ro_ranges, ro_flags)] {
            pt.edit(&ram.mem, &mut pool).map_direct(
                Gva::new(DIRECT_MAP_BASE),
                list,
                // 2 MiB pages only: a page-table pool chunk grown later must be made
                // read-only with one PD entry, and 1 GiB leaves are never split.
                false,
                flags,
            )?;
        }

        log::debug!("build: direct map after {:?}", t0.elapsed());
        // Stacks: guard | boot stack | guard | #DF stack (supervisor), and the ring-3 stack
        // (user) with its own guard below.
        let kstack_flags = prot_flags(Protection::KERNEL_DATA, nx);
        let mut stack_frames = Vec::new();
        for (bottom, size, flags) in [
            (BOOT_STACK_BOTTOM, BOOT_STACK_SIZE, kstack_flags),
            (DF_STACK_BOTTOM, DF_STACK_SIZE, kstack_flags),
            (USER_STACK_BOTTOM, USER_STACK_SIZE, direct_flags),
        ] {
            for i in 0..size / PAGE_SIZE {
                // DMA32 on x86-64; the legacy preset has no DMA32 (its Normal is below 896 MiB).
                let pfn = zones
                    .alloc(ZoneKind::Dma32, 1, 1)
                    .or_else(|_| zones.alloc(ZoneKind::Normal, 1, 1))?;
                stack_frames.push(pfn);
                let gpa = pfn.gpa()?;
                zero_frame(&ram, gpa.raw())?;
                pt.edit(&ram.mem, &mut pool).map(
                    Gva::new(bottom + i * PAGE_SIZE),
                    gpa,
                    PageSize::Size4K,
                    flags,
                )?;
            }
        }

        // The MMIO doorbell page (no memslot behind it): ring 3 can ring the VMM with a write.
        pt.edit(&ram.mem, &mut pool).map(
            Gva::new(memvisor_abi::DOORBELL_GVA),
            Gpa::new(memvisor_abi::DOORBELL_GPA),
            PageSize::Size4K,
            direct_flags,
        )?;

        let window = FreeMap::new(MMAP_WINDOW_START, MMAP_WINDOW_END - MMAP_WINDOW_START);
        let space = AddressSpace {
            ram,
            zones,
            pt,
            pool,
            window,
            regions: BTreeMap::new(),
            kernel: image,
            features,
            faults: Vec::new(),
            counters: SpaceCounters::default(),
            stack_frames,
            shadow: ShadowFlush::none(),
            build_options: opts,
            host_areas: Vec::new(),
            stage2_ranges: Vec::new(),
            device_maps: Vec::new(),
            next_region: 1,
        };
        Ok(space)
    }

    /// Record `count` frames from `first` as owned by the host area `gva` (created on first
    /// use; see [`HostArea`]).
    pub fn add_host_frames(&mut self, gva: std::ops::Range<u64>, first: Pfn, count: u64) {
        match self.host_areas.iter_mut().find(|a| a.gva == gva) {
            Some(a) => a.frames.push((first, count)),
            None => self.host_areas.push(HostArea {
                gva,
                frames: vec![(first, count)],
            }),
        }
    }

    /// The host areas ([`HostArea`]), in the order they were added.
    pub fn host_areas(&self) -> &[HostArea] {
        &self.host_areas
    }

    /// Map `bytes` read-only (US, NX) at `gva` (page aligned, outside every other mapping) on
    /// fresh frames: a blob the host hands the guest, e.g. an encoded trace
    /// ([`crate::layout::BLOB_GVA`]). Returns the number of pages mapped.
    ///
    /// # Errors
    /// [`SpaceError`] when frames or table frames run out or guest memory cannot be written.
    pub fn map_blob(&mut self, gva: u64, bytes: &[u8]) -> Result<u64, SpaceError> {
        let pages = (bytes.len() as u64).div_ceil(PAGE_SIZE);
        let flags = prot_flags(Protection::USER_RODATA, self.features.nx);
        for i in 0..pages {
            self.ensure_pool(4).map_err(|_| SpaceError::Write {
                what: "blob page tables",
            })?;
            let pfn = match self.zones.alloc(ZoneKind::Dma32, 1, 1) {
                Ok(p) => p,
                Err(_) => self.zones.alloc(ZoneKind::Normal, 1, 1)?,
            };
            let gpa = pfn.gpa()?;
            zero_frame(&self.ram, gpa.raw())?;
            let off = (i * PAGE_SIZE) as usize;
            let chunk = &bytes[off..bytes.len().min(off + PAGE_SIZE as usize)];
            self.ram
                .mem
                .write_slice(chunk, GuestAddress(gpa.raw()))
                .map_err(|_| SpaceError::Write { what: "blob" })?;
            self.pt.edit(&self.ram.mem, &mut self.pool).map(
                Gva::new(gva + i * PAGE_SIZE),
                gpa,
                PageSize::Size4K,
                flags,
            )?;
        }
        Ok(pages)
    }

    /// Write the boot info for `scenario` into its frame; returns its GVA (for `rdi`).
    ///
    /// # Errors
    /// [`SpaceError::Write`] if guest memory cannot be written.
    pub fn write_boot_info(
        &self,
        scenario: u32,
        flags: u32,
        arg: [u64; 4],
        tsc_khz: u64,
    ) -> Result<u64, SpaceError> {
        let mut e820 = [memvisor_abi::E820Entry::default(); MAX_E820];
        for (dst, src) in e820.iter_mut().zip(&self.ram.e820) {
            *dst = *src;
        }
        let info = BootInfo {
            magic: BOOT_MAGIC,
            version: ABI_VERSION,
            e820_count: self.ram.e820.len().min(MAX_E820) as u32,
            e820,
            ram_bytes: self.ram.bytes,
            direct_map_base: DIRECT_MAP_BASE,
            pml4_gpa: self.pt.root().raw() * PAGE_SIZE,
            heap_window: [MMAP_WINDOW_START, MMAP_WINDOW_END],
            stack: [BOOT_STACK_BOTTOM, BOOT_STACK_TOP],
            df_stack: [DF_STACK_BOTTOM, DF_STACK_TOP],
            user_stack: [USER_STACK_BOTTOM, USER_STACK_TOP],
            tsc_khz,
            features: self.features.abi_bits(),
            scenario,
            flags,
            arg,
        };
        self.ram
            .mem
            .write_obj(info, GuestAddress(BOOT_INFO_GPA))
            .map_err(|_| SpaceError::Write { what: "boot info" })?;
        let gdt_bytes: Vec<u8> = crate::boot::gdt::BOOT_GDT
            .iter()
            .flat_map(|e| e.to_le_bytes())
            .collect();
        self.ram
            .mem
            .write_slice(&gdt_bytes, GuestAddress(BOOT_GDT_GPA))
            .map_err(|_| SpaceError::Write { what: "GDT" })?;
        Ok(DIRECT_MAP_BASE + BOOT_INFO_GPA)
    }

    /// Append to the fault log (bounded) and count.
    pub fn log_fault(&mut self, rec: FaultRecord) {
        self.counters.faults += 1;
        *self
            .counters
            .by_kind
            // Vectors are 0-255; a hostile FaultReport may send any u64: one key for all
            // out-of-range values, so the map stays bounded.
            .entry(match rec.vector {
                v @ 0..=255 => format!("{}/{v}", rec.kind),
                _ => format!("{}/invalid", rec.kind),
            })
            .or_default() += 1;
        if self.faults.len() < FAULT_LOG_MAX {
            self.faults.push(rec);
        }
    }

    /// The CR3 value: GPA of the PML4, or of the PML5 after [`Self::enable_la57`].
    pub fn cr3(&self) -> u64 {
        self.pt.cr3_root().raw() * PAGE_SIZE
    }

    /// Allocate a region id.
    fn region_id(&mut self) -> u64 {
        let id = self.next_region;
        self.next_region += 1;
        id
    }
}

/// RAM ranges `(first GPA, bytes)`.
pub type Ranges = Vec<(Gpa, u64)>;

/// Split RAM `ranges` into the parts outside and inside the `ro` spans (`(gpa, bytes)`).
pub fn split_ranges(ranges: &[(Gpa, u64)], ro: &[(u64, u64)]) -> (Ranges, Ranges) {
    let mut cuts: Vec<(u64, u64)> = ro.iter().map(|&(a, l)| (a, a.saturating_add(l))).collect();
    cuts.sort_unstable();
    let (mut outside, mut inside) = (Vec::new(), Vec::new());
    for &(start, len) in ranges {
        let start = start.raw();
        let end = start + len;
        let mut cur = start;
        for &(a, b) in &cuts {
            let (a, b) = (a.max(cur), b.min(end));
            if a >= b {
                continue;
            }
            if a > cur {
                outside.push((Gpa::new(cur), a - cur));
            }
            inside.push((Gpa::new(a), b - a));
            cur = b;
        }
        if cur < end {
            outside.push((Gpa::new(cur), end - cur));
        }
    }
    (outside, inside)
}

/// Bytes in a 2 MiB page.
const LARGE_PAGE: u64 = crate::addr::LARGE_PAGE_SIZE;

/// Zero one 4 KiB frame.
pub(crate) fn zero_frame(ram: &GuestRam, gpa: u64) -> Result<(), SpaceError> {
    static ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
    ram.mem
        .write_slice(&ZEROS, GuestAddress(gpa))
        .map_err(|_| SpaceError::Write { what: "frame" })
}

/// ABI status for a space error seen while serving a hypercall.
pub fn status_of(e: &SpaceError) -> Status {
    match e {
        SpaceError::Frames(_) => Status::NoMem,
        SpaceError::Paging(PagingError::OutOfFrames) => Status::NoMem,
        SpaceError::Paging(_) => Status::Inval,
        _ => Status::Fault,
    }
}
