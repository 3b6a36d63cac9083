//! The memory hypercalls: mmap, munmap, mprotect, lazy faults (translate and checked access
//! to guest memory by GVA are in `space::gva`).
//!
//! Every argument is hostile: lengths and addresses are checked for alignment, overflow and
//! canonical form; ranges must lie inside one region the guest got from mmap (never the
//! kernel image, the stacks and their guards, the direct map or the page tables); a failing
//! call changes nothing (frames and GVA ranges taken so far are given back).
//! Who flushes the TLB: the guest, after the call returns (see the ABI crate docs).

use super::{zero_frame, AddressSpace, Backing, FaultRecord, Region, SpaceError};
use crate::addr::{is_canonical, Gpa, Gva, LARGE_PAGE_SIZE, PAGE_SIZE};
use crate::frames::ZoneKind;
use crate::layout::{MMAP_GUARD, MMAP_WINDOW_END, MMAP_WINDOW_START};
use crate::paging::{PageSize, PagingError, PteFlags, ShadowFlush};
use memvisor_abi::{map, prot, zone, MapFlags, Prot, Status, Zone};

/// Result of a hypercall operation: a value or an ABI status.
pub type HcResult = Result<u64, Status>;

/// #PF error code bit 1: the access was a write.
const PF_W: u64 = 1 << 1;

/// PTE flags for ABI protection bits (`prot` must be non-zero). NX is set unless EXEC, when
/// the CPU supports NX.
pub fn pte_flags_for(p: Prot, nx: bool) -> PteFlags {
    let p = p.bits();
    let mut f = PteFlags::PRESENT;
    if p & prot::WRITE != 0 {
        f |= PteFlags::WRITABLE;
    }
    if p & prot::USER != 0 {
        f |= PteFlags::USER;
    }
    if p & prot::EXEC == 0 && nx {
        f |= PteFlags::NO_EXECUTE;
    }
    f
}

fn check_prot(p: Prot) -> Result<(), Status> {
    let p = p.bits();
    if p & !prot::ALL != 0 || p == prot::NONE {
        return Err(Status::Inval);
    }
    if p & prot::WRITE != 0 && p & prot::EXEC != 0 {
        return Err(Status::Perm);
    }
    Ok(())
}

/// Check `[gva, gva + len)`: page aligned, non-empty, no overflow, canonical; returns the end.
fn check_range(gva: u64, len: u64) -> Result<u64, Status> {
    if len == 0 || gva % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
        return Err(Status::Inval);
    }
    let end = gva.checked_add(len).ok_or(Status::Inval)?;
    if !is_canonical(gva) || !is_canonical(end - 1) {
        return Err(Status::Inval);
    }
    Ok(end)
}

/// Check a fixed `Mmap` reservation `[addr, addr + reserve)` (region plus guard): aligned to
/// `align` and not overflowing (`Inval`), inside the mmap window (`Perm`).
fn check_fixed(addr: u64, reserve: u64, align: u64) -> Result<(), Status> {
    if addr % align != 0 {
        return Err(Status::Inval);
    }
    let end = addr.checked_add(reserve).ok_or(Status::Inval)?;
    if addr < MMAP_WINDOW_START || end > MMAP_WINDOW_END {
        return Err(Status::Perm);
    }
    Ok(())
}

impl AddressSpace {
    fn zone_kind(&self, z: Zone) -> Result<ZoneKind, Status> {
        let kind = match z.0 {
            zone::ANY => {
                // Highest zone present: Normal, else DMA32, else DMA.
                return [ZoneKind::Normal, ZoneKind::Dma32, ZoneKind::Dma]
                    .into_iter()
                    .find(|k| self.zone_present(*k))
                    .ok_or(Status::NoZone);
            }
            zone::DMA => ZoneKind::Dma,
            zone::DMA32 => ZoneKind::Dma32,
            zone::NORMAL => ZoneKind::Normal,
            _ => return Err(Status::NoZone),
        };
        if self.zone_present(kind) {
            Ok(kind)
        } else {
            Err(Status::NoZone)
        }
    }

    fn zone_present(&self, kind: ZoneKind) -> bool {
        self.zones.present(kind) > 0
    }

    /// The region containing all of `[gva, end)`, by start key.
    fn region_for(&self, gva: u64, end: u64) -> Option<u64> {
        let (&start, r) = self.regions.range(..=gva).next_back()?;
        (end <= r.end).then_some(start)
    }

    /// Status for a range that is in no region: `Perm` if it touches memory the guest may
    /// never unmap or protect (anything outside the mmap window), else `NotMapped`.
    fn outside_status(&self, gva: u64, end: u64) -> Status {
        if gva < MMAP_WINDOW_START || end > MMAP_WINDOW_END {
            Status::Perm
        } else {
            Status::NotMapped
        }
    }

    /// Give back one data frame run (its mapping is already gone).
    fn release(&mut self, gpa: u64, size: PageSize) {
        let frames = size.bytes() / PAGE_SIZE;
        if self.zones.free(Gpa::new(gpa).pfn(), frames).is_ok() {
            self.ram.discard_if_uffd(gpa, size.bytes());
            self.counters.mapped_frames = self.counters.mapped_frames.saturating_sub(frames);
        } else {
            log::error!("frame run at GPA {gpa:#x} could not be freed (accounting bug)");
        }
    }

    /// `Mmap`: reserve `len` bytes of the window (plus a guard page) and back them now
    /// (`POPULATE`, the default) or on first touch (`LAZY`). Returns the GVA. With
    /// `map::FIXED` the reservation is exactly `[addr, addr + len + guard)` (checked in this
    /// order: alignment and overflow `Inval`, outside the window `Perm`, zone, then any
    /// overlap with a region or guard page `Exists`); without it `addr` must be 0.
    ///
    /// # Errors
    /// The [`Status`] answered to the guest, in the order above; `NoMem` when frames or table frames run out.
    pub fn mmap(&mut self, len: u64, p: Prot, z: Zone, flags: MapFlags, addr: u64) -> HcResult {
        check_prot(p)?;
        let flags = flags.bits();
        if flags & !map::ALL != 0 {
            return Err(Status::Inval);
        }
        let lazy = flags & map::LAZY != 0;
        let huge = flags & map::HUGE != 0;
        if lazy && (flags & map::POPULATE != 0 || huge) {
            return Err(Status::Inval);
        }
        if len == 0 || len % PAGE_SIZE != 0 || len > MMAP_WINDOW_END - MMAP_WINDOW_START {
            return Err(Status::Inval);
        }
        if huge && len % LARGE_PAGE_SIZE != 0 {
            return Err(Status::Inval);
        }
        let reserve = len.checked_add(MMAP_GUARD).ok_or(Status::Inval)?;
        let align = if huge { LARGE_PAGE_SIZE } else { PAGE_SIZE };
        let fixed = flags & map::FIXED != 0;
        if fixed {
            check_fixed(addr, reserve, align)?;
        } else if addr != 0 {
            return Err(Status::Inval);
        }
        let kind = self.zone_kind(z)?;
        let gva = if fixed {
            self.window
                .alloc_at(addr, reserve)
                .map_err(|_| Status::Exists)?
        } else {
            self.window
                .alloc(reserve, align)
                .map_err(|_| Status::NoMem)?
        };
        let id = self.region_id();
        let mut region = Region {
            id,
            start: gva,
            end: gva + len,
            guard: true,
            prot: [(gva, p)].into_iter().collect(),
            zone: z,
            backing: if lazy {
                Backing::Lazy
            } else {
                Backing::Populated
            },
        };
        if !lazy {
            if let Err(st) = self.populate(&region, kind, huge) {
                let _ = self.window.free(gva, reserve);
                return Err(st);
            }
        }
        region.zone = z;
        self.regions.insert(gva, region);
        Ok(gva)
    }

    /// Back and map every page of a fresh region; on failure unmap and free what was done.
    fn populate(&mut self, r: &Region, kind: ZoneKind, huge: bool) -> Result<(), Status> {
        let flags = pte_flags_for(r.prot_at(r.start), self.features.nx);
        let (step, size) = if huge {
            (LARGE_PAGE_SIZE, PageSize::Size2M)
        } else {
            (PAGE_SIZE, PageSize::Size4K)
        };
        let frames = step / PAGE_SIZE;
        let mut done: Vec<(u64, u64)> = Vec::new();
        let mut gva = r.start;
        let result = loop {
            if gva >= r.end {
                break Ok(());
            }
            // Keep enough table frames for this page's walk.
            if let Err(e) = self.ensure_pool(4) {
                break Err(e);
            }
            let (pfn, fresh) = match self.zones.alloc_fresh(kind, frames, frames) {
                Ok(p) => p,
                Err(_) => break Err(Status::NoMem),
            };
            let gpa = pfn.raw() * PAGE_SIZE;
            // A fresh run still reads as zero (ZoneTable::alloc_fresh).
            let zeroed =
                fresh || (0..frames).all(|i| zero_frame(&self.ram, gpa + i * PAGE_SIZE).is_ok());
            let mapped = zeroed
                && self
                    .pt
                    .edit(&self.ram.mem, &mut self.pool)
                    .map(Gva::new(gva), Gpa::new(gpa), size, flags)
                    .is_ok();
            if !mapped {
                let _ = self.zones.free(pfn, frames);
                break Err(Status::NoMem);
            }
            self.counters.mapped_frames += frames;
            done.push((gva, gpa));
            gva += step;
        };
        if result.is_err() {
            for (g, _) in done {
                if let Ok(u) = self
                    .pt
                    .edit(&self.ram.mem, &mut self.pool)
                    .unmap(Gva::new(g), step)
                {
                    self.owe_shadow_flush(u.flush);
                    for (_, gpa, sz) in u.leaves {
                        self.release(gpa.raw(), sz);
                    }
                }
            }
        }
        result
    }

    /// Keep `flush` pending until the VMM takes it ([`Self::take_shadow_flush`]).
    pub fn owe_shadow_flush(&mut self, flush: ShadowFlush) {
        self.shadow.absorb(flush);
    }

    /// The shadow flush owed since the last take (consumed: a second take owes nothing until
    /// the next edit). The VMM passes it to [`crate::backend::FlushSlot::flush_owed`];
    /// host-only harnesses [`ShadowFlush::discard`] it.
    pub fn take_shadow_flush(&mut self) -> ShadowFlush {
        std::mem::take(&mut self.shadow)
    }

    /// Make sure the table pool has at least `n` free frames, growing it by a chunk (and
    /// marking that chunk read-only in the direct map) if needed.
    ///
    /// # Errors
    /// [`Status::NoMem`] if no chunk of frames is free or it cannot be made read-only.
    pub fn ensure_pool(&mut self, n: u64) -> Result<(), Status> {
        if self.pool.available() >= n {
            return Ok(());
        }
        // Make the chunk read-only in the direct map *before* it joins the pool: if that fails
        // (e.g. the chunk lies inside a 1 GiB direct-map page, which is never split), the
        // chunk goes back to the zones and no table is ever built in a writable frame.
        let chunk =
            super::pool::TablePool::alloc_chunk(&mut self.zones).map_err(|_| Status::NoMem)?;
        let ro = pte_flags_for(Prot::READ, self.features.nx);
        let len = crate::layout::TABLE_POOL_CHUNK_FRAMES * PAGE_SIZE;
        let Ok(p) = self.pt.protect(
            &self.ram.mem,
            Gva::new(crate::layout::DIRECT_MAP_BASE + chunk.raw() * PAGE_SIZE),
            len,
            ro,
        ) else {
            let _ = self
                .zones
                .free(chunk, crate::layout::TABLE_POOL_CHUNK_FRAMES);
            return Err(Status::NoMem);
        };
        self.pool.add_chunk(chunk);
        // Owed whatever the leaves' Accessed bits say (conservative: a new chunk is rare).
        self.owe_shadow_flush(p.flush.merge(ShadowFlush::needed()));
        Ok(())
    }

    /// Unmap the present pages of `[gva, end)` (holes allowed) and free their frames.
    fn unmap_present(&mut self, gva: u64, end: u64) {
        // The leaves of the range (the walk skips holes a table at a time: a lazy region may
        // span the whole 16 TiB window, too many pages to translate one by one).
        let present = self
            .pt
            .leaves_in_range(&self.ram.mem, Gva::new(gva), end - gva)
            .unwrap_or_default();
        for leaf in present {
            let size = leaf.size.bytes();
            if let Ok(u) = self
                .pt
                .edit(&self.ram.mem, &mut self.pool)
                .unmap(leaf.gva, size)
            {
                self.owe_shadow_flush(u.flush);
                for (_, gpa, sz) in u.leaves {
                    self.release(gpa.raw(), sz);
                }
            }
        }
    }

    /// `Munmap`: the range must lie inside one region. Frees the frames and the GVA range.
    ///
    /// # Errors
    /// [`Status::Inval`] for a bad range, the outside-a-region status otherwise.
    pub fn munmap(&mut self, gva: u64, len: u64) -> HcResult {
        let end = check_range(gva, len)?;
        let Some(key) = self.region_for(gva, end) else {
            return Err(self.outside_status(gva, end));
        };
        let Some(r) = self.regions.remove(&key) else {
            return Err(Status::NotMapped);
        };
        // A huge-page region may only be unmapped in whole 2 MiB pages.
        if r.backing == Backing::Populated
            && matches!(
                self.pt
                    .translate_raw(&self.ram.mem, gva)
                    .map(|t| t.page_size),
                Ok(PageSize::Size2M)
            )
            && (gva % LARGE_PAGE_SIZE != 0 || len % LARGE_PAGE_SIZE != 0)
        {
            self.regions.insert(key, r);
            return Err(Status::Inval);
        }
        self.unmap_present(gva, end);
        let head = gva > r.start;
        let tail = end < r.end;
        let free_start = if head { gva + MMAP_GUARD } else { gva };
        let free_end = if tail {
            end
        } else if r.guard {
            r.end + MMAP_GUARD
        } else {
            r.end
        };
        if free_start < free_end {
            let _ = self.window.free(free_start, free_end - free_start);
        }
        if head {
            let mut h = r.clone();
            h.end = gva;
            h.guard = true;
            h.prot = r.prot.range(..gva).map(|(&k, &v)| (k, v)).collect();
            self.regions.insert(h.start, h);
        }
        if tail {
            let mut t = r.clone();
            t.start = end;
            let p = r.prot_at(end);
            t.prot = r.prot.range(end..).map(|(&k, &v)| (k, v)).collect();
            t.prot.insert(end, p);
            t.id = self.region_id();
            self.regions.insert(t.start, t);
        }
        Ok(0)
    }

    /// `Mprotect`: new protection for a range inside one region (W^X enforced). Returns the
    /// number of present pages changed.
    ///
    /// # Errors
    /// [`Status::Inval`] for bad bits or range, `Perm` for W^X, the outside-a-region status.
    pub fn mprotect(&mut self, gva: u64, len: u64, p: Prot) -> HcResult {
        let end = check_range(gva, len)?;
        check_prot(p)?;
        let Some(key) = self.region_for(gva, end) else {
            return Err(self.outside_status(gva, end));
        };
        let flags = pte_flags_for(p, self.features.nx);
        // Apply to present pages first (all-or-nothing per run is the paging layer's job).
        // The leaves of the range, holes skipped a table at a time (see `unmap_present`).
        let mut changed = 0;
        let present = self
            .pt
            .leaves_in_range(&self.ram.mem, Gva::new(gva), len)
            .map_err(|_| Status::Inval)?;
        for leaf in &present {
            let size = leaf.size.bytes();
            if leaf.gva.raw() < gva || leaf.gva.raw() + size > end {
                return Err(Status::Inval);
            }
        }
        for leaf in present {
            let size = leaf.size.bytes();
            let p = self
                .pt
                .protect(&self.ram.mem, leaf.gva, size, flags)
                .map_err(|_| Status::Inval)?;
            changed += p.changed;
            self.owe_shadow_flush(p.flush);
        }
        if let Some(r) = self.regions.get_mut(&key) {
            let after = r.prot_at(end);
            let stale: Vec<u64> = r.prot.range(gva..end).map(|(&k, _)| k).collect();
            for k in stale {
                r.prot.remove(&k);
            }
            r.prot.insert(gva, p);
            if end < r.end {
                r.prot.insert(end, after);
            }
        }
        Ok(changed)
    }

    /// `LazyFault`: back the page at `cr2` if it lies in a lazy region and is not present.
    ///
    /// # Errors
    /// The [`Status`] answered to the guest: `Fault` outside a lazy region, `NoMem` when frames run out.
    pub fn lazy_fault(&mut self, cr2: u64, error_code: u64, rip: u64) -> HcResult {
        if !is_canonical(cr2) {
            return Err(Status::NotMapped);
        }
        let page = cr2 & !(PAGE_SIZE - 1);
        // The last page of the address space has no end: it lies in no region (a wrapping
        // end of 0 would match the highest region).
        let end = page.checked_add(PAGE_SIZE).ok_or(Status::NotMapped)?;
        let Some(key) = self.region_for(page, end) else {
            return Err(Status::NotMapped);
        };
        let (p, z) = match self.regions.get(&key) {
            Some(r) if r.backing == Backing::Lazy => (r.prot_at(page), r.zone),
            _ => return Err(Status::NotMapped),
        };
        // No separate walk to see whether the page is present: `map` refuses a mapped page
        // (AlreadyMapped), and only failures pay for a walk to pick the status.
        let present = |s: &Self| s.pt.translate_raw(&s.ram.mem, page).is_ok();
        let kind = self.zone_kind(z)?;
        if let Err(e) = self.ensure_pool(4) {
            return Err(if present(self) { Status::Perm } else { e });
        }
        let Ok((pfn, fresh)) = self.zones.alloc_fresh(kind, 1, 1) else {
            return Err(if present(self) {
                Status::Perm
            } else {
                Status::NoMem
            });
        };
        let gpa = pfn.raw() * PAGE_SIZE;
        // The faulting access is about to be retried: set A now, and D for a write fault
        // on a writable page, as Linux's do_anonymous_page does, so the hypervisor's walker
        // does not have to set them on the retry.
        let mut flags = pte_flags_for(p, self.features.nx) | PteFlags::ACCESSED;
        if error_code & PF_W != 0 && flags.contains(PteFlags::WRITABLE) {
            flags |= PteFlags::DIRTY;
        }
        // A fresh frame still reads as zero (ZoneTable::alloc_fresh).
        let mapped = if fresh || zero_frame(&self.ram, gpa).is_ok() {
            self.pt.edit(&self.ram.mem, &mut self.pool).map(
                Gva::new(page),
                Gpa::new(gpa),
                PageSize::Size4K,
                flags,
            )
        } else {
            Err(PagingError::OutOfFrames)
        };
        if let Err(e) = mapped {
            let _ = self.zones.free(pfn, 1);
            return Err(match e {
                PagingError::AlreadyMapped { .. } | PagingError::WouldSplitLargePage { .. } => {
                    Status::Perm
                }
                _ if present(self) => Status::Perm,
                _ => Status::NoMem,
            });
        }
        self.counters.mapped_frames += 1;
        self.counters.lazy_faults += 1;
        self.log_fault(FaultRecord {
            vector: 14,
            error_code,
            cr2,
            rip,
            resolved: true,
            kind: "lazy",
        });
        Ok(1)
    }
}

impl From<SpaceError> for Status {
    fn from(e: SpaceError) -> Status {
        super::status_of(&e)
    }
}
