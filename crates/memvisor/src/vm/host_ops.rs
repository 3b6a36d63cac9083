//! Host-side operations on a [`Vm`] between runs: guest memory by mmap region (frames from a
//! zone, 4 KiB or 2 MiB pages), raw GVA → GPA mappings outside RAM with chosen PTE flags and
//! page size, protection, translation, reads and writes by GVA and GPA, extra memslots
//! (plain, `KVM_MEM_READONLY`, dirty-logged) and the dirty log of guest RAM.
//! KVM API doc §4.35 (`KVM_SET_USER_MEMORY_REGION`), §4.8 (`KVM_GET_DIRTY_LOG`).

use super::Vm;
use crate::addr::{Gpa, Gva, PAGE_SIZE};
use crate::memory::MemoryError;
use crate::paging::{PageSize, PagingError, PteFlags};
use crate::stage2::DirtyRead;
use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use memvisor_abi::{MapFlags, Prot, Status, Zone};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

/// Errors of the host-side operations.
#[derive(Debug, Error)]
pub enum VmOpError {
    /// The address space refused (the same status a guest hypercall would get).
    #[error("refused: {} ({status:?})", status.name())]
    Status {
        /// The status.
        status: Status,
    },
    /// A page-table edit failed.
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// A memslot or memory operation failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A range the operation does not accept.
    #[error("bad range {start:#x}+{len:#x}: {why}")]
    Range {
        /// First address.
        start: u64,
        /// Length in bytes.
        len: u64,
        /// Why.
        why: &'static str,
    },
    /// The host (KVM or the guest CPUID) lacks what the operation needs.
    #[error("unsupported by host: {0}")]
    Unsupported(&'static str),
}

impl From<Status> for VmOpError {
    fn from(status: Status) -> Self {
        VmOpError::Status { status }
    }
}

/// The kind of an extra memslot ([`Vm::add_memslot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemslotKind {
    /// Ordinary read-write memory.
    Plain,
    /// `KVM_MEM_READONLY`: reads succeed, writes exit as MMIO.
    ReadOnly,
    /// `KVM_MEM_LOG_DIRTY_PAGES`: read with [`Vm::memslot_dirty_log`].
    DirtyLogged,
}

type OpResult<T> = Result<T, VmOpError>;

fn range(start: u64, len: u64, why: &'static str) -> VmOpError {
    VmOpError::Range { start, len, why }
}

impl Vm {
    /// After a host edit: flush KVM's shadow pages if a mapping was removed or reduced.
    fn after_edit(&mut self) -> OpResult<()> {
        self.flush_slot
            .flush_owed(&self.vm, &mut self.slots, self.space.take_shadow_flush())?;
        Ok(())
    }

    /// Map `len` bytes of fresh zeroed frames from `zone` with `prot` (exactly as the guest's
    /// `Mmap` hypercall: a region the guest may also `munmap` / `mprotect`); returns its GVA.
    /// `MapFlags::HUGE` maps 2 MiB pages (len a multiple of 2 MiB), `LAZY` backs pages on
    /// first touch.
    ///
    /// # Errors
    /// [`VmOpError::Status`] as the hypercall (`Inval`, `NoMem`, `NoZone`, `Perm` for W+X).
    pub fn mmap(&mut self, len: u64, prot: Prot, zone: Zone, flags: MapFlags) -> OpResult<u64> {
        let flags = MapFlags::from_bits_retain(flags.bits() & !MapFlags::FIXED.bits());
        Ok(self.space.mmap(len, prot, zone, flags, 0)?)
    }

    /// As [`Vm::mmap`] but at exactly `gva` (the `Mmap` hypercall with `MapFlags::FIXED`):
    /// fresh zeroed frames from `zone` mapped at `[gva, gva + len)`, the page after it kept
    /// as the region's guard. Returns `gva`.
    ///
    /// # Errors
    /// [`VmOpError::Status`]: `Inval` (misaligned: 4 KiB, 2 MiB with `HUGE`; overflow),
    /// `Perm` (region or guard outside the mmap window
    /// `[memvisor::layout::MMAP_WINDOW_START, MMAP_WINDOW_END)`, or W+X), `Exists` (overlaps
    /// a region or guard page), `NoMem`, `NoZone`. Nothing changes on error.
    pub fn mmap_at(
        &mut self,
        gva: u64,
        len: u64,
        prot: Prot,
        zone: Zone,
        flags: MapFlags,
    ) -> OpResult<u64> {
        let flags = flags | MapFlags::FIXED;
        Ok(self.space.mmap(len, prot, zone, flags, gva)?)
    }

    /// Unmap `[gva, gva + len)` of an mmap region and free its frames.
    ///
    /// # Errors
    /// As the `Munmap` hypercall.
    pub fn munmap(&mut self, gva: u64, len: u64) -> OpResult<()> {
        self.space.munmap(gva, len)?;
        self.after_edit()
    }

    /// Change the protection of `[gva, gva + len)` inside one mmap region.
    ///
    /// # Errors
    /// As the `Mprotect` hypercall.
    pub fn mprotect(&mut self, gva: u64, len: u64, prot: Prot) -> OpResult<()> {
        self.space.mprotect(gva, len, prot)?;
        self.after_edit()
    }

    /// The full translation of `gva` by the host's walk of the guest page tables: GPA, page
    /// size, leaf PTE, effective rights.
    ///
    /// # Errors
    /// [`VmOpError::Paging`] for a non-canonical or unmapped GVA.
    pub fn translate(&self, gva: u64) -> OpResult<crate::paging::Translation> {
        Ok(self.space.pt.translate_raw(&self.space.ram.mem, gva)?)
    }

    /// Map `[gva, gva + len)` to `[gpa, gpa + len)` with leaf `flags` (PRESENT is added) and
    /// pages of `size`, for GPAs **outside guest RAM** (an unbacked window: accesses exit as
    /// [`super::Exit::Mmio`]; or an [`Vm::add_memslot`] slot). The GVA range must lie
    /// outside the kernel half and the mmap window; 1 GiB pages need CPUID Page1GB.
    ///
    /// # Errors
    /// [`VmOpError::Range`] (alignment, RAM overlap, above MAXPHYADDR, reserved GVAs),
    /// [`VmOpError::Status`] with `Perm` for a writable leaf without NX (W+X) when the guest
    /// has NX, [`VmOpError::Unsupported`], [`VmOpError::Paging`] (already mapped, ...).
    pub fn map_gpa(
        &mut self,
        gva: u64,
        gpa: u64,
        len: u64,
        size: PageSize,
        flags: PteFlags,
    ) -> OpResult<()> {
        if size == PageSize::Size1G && !self.features.page_1g {
            return Err(VmOpError::Unsupported("1 GiB pages (CPUID Page1GB)"));
        }
        // W^X, as the Mmap hypercall: a writable and executable leaf is refused, not left
        // for the invariants to report after the run.
        if self.features.nx
            && flags.contains(PteFlags::WRITABLE)
            && !flags.contains(PteFlags::NO_EXECUTE)
        {
            return Err(Status::Perm.into());
        }
        let step = size.bytes();
        let gpa_end = gpa.checked_add(len).ok_or(range(gpa, len, "overflows"))?;
        let gva_end = gva.checked_add(len).ok_or(range(gva, len, "overflows"))?;
        if len == 0 || gva % step != 0 || gpa % step != 0 || len % step != 0 {
            return Err(range(gva, len, "not aligned to the page size"));
        }
        if gpa_end > 1u64 << self.phys_bits {
            return Err(range(gpa, len, "above MAXPHYADDR"));
        }
        if self
            .space
            .ram
            .ram
            .iter()
            .any(|&(s, n)| gpa < s.raw() + n && s.raw() < gpa_end)
        {
            return Err(range(gpa, len, "overlaps guest RAM (use mmap)"));
        }
        let (w0, w1) = (
            crate::layout::MMAP_WINDOW_START,
            crate::layout::MMAP_WINDOW_END,
        );
        if gva_end > 1 << 47 || (gva < w1 && w0 < gva_end) || gva_end > memvisor_abi::DOORBELL_GVA {
            return Err(range(
                gva,
                len,
                "not in the lower half below the doorbell, outside the mmap window",
            ));
        }
        // Table frames the range can need: one PT / PD / PDPT per 512 entries of the level
        // below, plus one per level for a range that straddles a table boundary.
        let pages = len / step;
        let tables = pages / 512 + pages / (512 * 512) + 6;
        self.space.ensure_pool(tables).map_err(VmOpError::from)?;
        self.space
            .pt
            .edit(&self.space.ram.mem, &mut self.space.pool)
            .map_range(
                Gva::new(gva),
                Gpa::new(gpa),
                len,
                size,
                flags | PteFlags::PRESENT,
            )?;
        self.space.device_maps.push((gva, len, gpa));
        Ok(())
    }

    /// Read `len` bytes at `gva` (through the guest page tables).
    ///
    /// # Errors
    /// `Fault` if a page is not mapped or not RAM.
    pub fn read_gva(&self, gva: u64, len: u64) -> OpResult<Vec<u8>> {
        Ok(self.space.read_gva(gva, len)?)
    }

    /// Write `bytes` at `gva` (page-table frames and the kernel's read-only segments are
    /// refused).
    ///
    /// # Errors
    /// `Fault` / `Perm`.
    pub fn write_gva(&mut self, gva: u64, bytes: &[u8]) -> OpResult<()> {
        Ok(self.space.write_gva(gva, bytes)?)
    }

    /// Read `len` bytes of guest RAM at `gpa`.
    ///
    /// # Errors
    /// [`VmOpError::Range`] outside RAM.
    pub fn read_gpa(&self, gpa: u64, len: u64) -> OpResult<Vec<u8>> {
        if !self.space.ram.contains(gpa, len) {
            return Err(range(gpa, len, "not guest RAM"));
        }
        let mut buf = vec![0u8; len as usize];
        self.space
            .ram
            .mem
            .read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|_| range(gpa, len, "not guest RAM"))?;
        Ok(buf)
    }

    /// Write guest RAM at `gpa` (never a page-table frame).
    ///
    /// # Errors
    /// [`VmOpError::Range`] outside RAM or on a frame the host may not write.
    pub fn write_gpa(&mut self, gpa: u64, bytes: &[u8]) -> OpResult<()> {
        let len = bytes.len() as u64;
        if len == 0 {
            return Ok(());
        }
        if !self.space.ram.contains(gpa, len) {
            return Err(range(gpa, len, "not guest RAM"));
        }
        let (first, last) = (gpa / PAGE_SIZE, (gpa + len - 1) / PAGE_SIZE);
        if !(first..=last).all(|p| self.space.host_may_write(crate::addr::Pfn::new(p))) {
            return Err(range(gpa, len, "a page-table or read-only kernel frame"));
        }
        self.space
            .ram
            .mem
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|_| range(gpa, len, "not guest RAM"))
    }

    /// Add a memslot of `size` bytes of fresh zeroed host memory at `gpa` (outside RAM, below
    /// `1 << phys_bits()`); returns its KVM slot number.
    ///
    /// # Errors
    /// [`VmOpError::Unsupported`] for `ReadOnly` without `KVM_CAP_READONLY_MEM`;
    /// [`VmOpError::Range`]; [`VmOpError::Memory`] (overlap, no free slot, KVM refused).
    pub fn add_memslot(&mut self, gpa: u64, size: u64, kind: MemslotKind) -> OpResult<u32> {
        let end = gpa.checked_add(size).ok_or(range(gpa, size, "overflows"))?;
        if size == 0 || gpa % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 || end > 1 << self.phys_bits {
            return Err(range(gpa, size, "not page aligned or above MAXPHYADDR"));
        }
        let flags = match kind {
            MemslotKind::Plain => 0,
            MemslotKind::ReadOnly => {
                let kvm = kvm_ioctls::Kvm::new().map_err(|_| VmOpError::Unsupported("/dev/kvm"))?;
                if !kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
                    return Err(VmOpError::Unsupported("KVM_MEM_READONLY"));
                }
                KVM_MEM_READONLY
            }
            MemslotKind::DirtyLogged => KVM_MEM_LOG_DIRTY_PAGES,
        };
        self.deferred.settle()?;
        let r = vm_memory::mmap::MmapRegion::new(size as usize)
            .map_err(|_| MemoryError::BadSlot { gpa, size })?;
        // SAFETY: the region is kept in `host_backing` until the slot is removed or the VM is
        // dropped (the VM fd closes first: fields drop in declaration order).
        let slot = unsafe {
            self.slots
                .add(&self.vm, gpa, size, r.as_ptr() as u64, flags)?
        };
        self.host_backing.push((slot, r));
        Ok(slot)
    }

    /// Remove a memslot added by [`Vm::add_memslot`] (its GPAs then exit as MMIO).
    ///
    /// # Errors
    /// [`VmOpError::Range`] for a slot this API did not add; [`VmOpError::Memory`].
    pub fn remove_memslot(&mut self, slot: u32) -> OpResult<()> {
        let Some(i) = self.host_backing.iter().position(|(s, _)| *s == slot) else {
            return Err(range(slot as u64, 0, "not a slot added by add_memslot"));
        };
        self.slots.remove(&self.vm, slot)?;
        self.host_backing.remove(i);
        Ok(())
    }

    /// The contents of a slot added by [`Vm::add_memslot`].
    pub fn memslot_bytes(&self, slot: u32) -> Option<&[u8]> {
        let (_, r) = self.host_backing.iter().find(|(s, _)| *s == slot)?;
        // SAFETY: the region is mapped for its whole length while it is in host_backing; the
        // guest does not run while the returned borrow of `self` lives.
        Some(unsafe { std::slice::from_raw_parts(r.as_ptr(), r.size()) })
    }

    /// The contents of a slot added by [`Vm::add_memslot`], writable by the host (e.g. to
    /// fill a read-only slot before the guest reads it).
    pub fn memslot_bytes_mut(&mut self, slot: u32) -> Option<&mut [u8]> {
        let (_, r) = self.host_backing.iter().find(|(s, _)| *s == slot)?;
        // SAFETY: as `memslot_bytes`; the exclusive borrow of `self` keeps the guest stopped
        // and any other view of the region away while the slice lives.
        Some(unsafe { std::slice::from_raw_parts_mut(r.as_ptr(), r.size()) })
    }

    /// Read and clear KVM's dirty log of a `DirtyLogged` slot: GPAs of written pages.
    ///
    /// # Errors
    /// [`VmOpError::Memory`] if KVM refuses.
    pub fn memslot_dirty_log(&mut self, slot: u32) -> OpResult<Vec<u64>> {
        self.deferred.settle()?;
        let m = self
            .slots
            .slots()
            .find(|m| m.slot == slot)
            .copied()
            .ok_or(MemoryError::NoSuchSlot { slot })?;
        let bits = self
            .vm
            .get_dirty_log(slot, m.size as usize)
            .map_err(|source| MemoryError::Memslot {
                slot,
                gpa: m.gpa,
                size: m.size,
                source,
            })?;
        let pages = crate::stage2::bitmap_pages(m.gpa, &bits);
        if self.space.ram.contains(m.gpa, m.size) {
            self.snap.stash(&pages);
        }
        Ok(pages)
    }

    /// Start dirty logging on guest RAM (`KVM_MEM_LOG_DIRTY_PAGES` on every RAM slot) and
    /// clear the VMM's own dirty bitmap.
    ///
    /// # Errors
    /// [`VmOpError::Memory`] if KVM refuses.
    pub fn start_dirty_log(&mut self) -> OpResult<()> {
        self.deferred.settle()?;
        if self.snap.dirty_on() {
            // Keep what the next incremental snapshot needs before the log is cleared.
            let read = crate::stage2::read_dirty(&self.vm, &self.slots, &self.space)?;
            self.snap.stash(&read.merged);
        }
        crate::stage2::start_dirty(&self.vm, &mut self.slots, &self.space)?;
        Ok(())
    }

    /// Read and clear the dirty log of guest RAM: pages the guest wrote (`kvm`, including
    /// page-table frames whose A/D bits the MMU set), pages the VMM wrote (`host`: page
    /// tables it edited, hypercall results), and their union.
    ///
    /// # Errors
    /// [`VmOpError::Memory`] if KVM refuses.
    pub fn dirty_log(&mut self) -> OpResult<DirtyRead> {
        self.deferred.settle()?;
        let read = crate::stage2::read_dirty(&self.vm, &self.slots, &self.space)?;
        // The next incremental snapshot still needs these pages.
        self.snap.stash(&read.merged);
        Ok(read)
    }

    /// Is `gpa` a frame of the guest's page tables (for reading dirty logs)?
    pub fn is_page_table_frame(&self, gpa: u64) -> bool {
        self.space
            .pool
            .is_table(crate::addr::Pfn::new(gpa / PAGE_SIZE))
    }

    /// Is `gpa` a frame the guest runtime itself writes while running any program: the
    /// kernel image (its .data/.bss hold the hypercall request blocks) or a page of the boot,
    /// #DF or ring-3 stack (ucall records live on the stack)? For reading dirty logs.
    pub fn is_guest_runtime_frame(&self, gpa: u64) -> bool {
        use crate::layout::*;
        let k = &self.space.kernel;
        if (k.phys_start..k.phys_end).contains(&gpa) {
            return true;
        }
        let page = gpa & !(PAGE_SIZE - 1);
        [
            (BOOT_STACK_BOTTOM, BOOT_STACK_TOP),
            (DF_STACK_BOTTOM, DF_STACK_TOP),
            (USER_STACK_BOTTOM, USER_STACK_TOP),
        ]
        .iter()
        .any(|&(lo, hi)| {
            (lo..hi).step_by(PAGE_SIZE as usize).any(|g| {
                self.space
                    .pt
                    .translate_raw(&self.space.ram.mem, g)
                    .is_ok_and(|t| t.gpa.raw() & !(PAGE_SIZE - 1) == page)
            })
        })
    }
}
