//! Stage-2 (guest-physical) test regions and their control: a GPA with no memslot, a
//! `KVM_MEM_READONLY` slot, a lazily backed range, a slot removed and re-added at run time,
//! and dirty logging (`KVM_MEM_LOG_DIRTY_PAGES` + `KVM_GET_DIRTY_LOG`) merged with the VMM's
//! own writes (vm-memory's dirty bitmap), as Firecracker does. KVM API doc §4.35 (memory
//! regions, read-only slots), §4.8 (`KVM_GET_DIRTY_LOG`).
//!
//! The layout is [`memvisor_abi::stage2`]; the host maps all four regions in the guest's page
//! tables (US, RW, NX) whatever is behind them, so the guest's accesses reach KVM.

use crate::addr::{Gpa, Gva, PAGE_SIZE};
use crate::memory::{MemoryError, Memslots};
use crate::paging::{PageSize, Protection};
use crate::space::{AddressSpace, SpaceError};
use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use memvisor_abi::{stage2 as s2, Status};
use serde::Serialize;
use std::collections::BTreeMap;
use vm_memory::bitmap::Bitmap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Bytes of the stage-2 test layout mapped for the guest from [`s2::GPA_BASE`] (four regions,
/// 1 MiB apart).
pub const STAGE2_LAYOUT: u64 = 4 << 20;

/// One read of the dirty log: GPAs of dirty 4 KiB pages (JSON: hex strings).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DirtyRead {
    /// Pages KVM logged (guest writes).
    #[serde(serialize_with = "crate::report::hex::hex_vec")]
    pub kvm: Vec<u64>,
    /// Pages the VMM itself wrote (page tables, zeroed frames, hypercall results, boot info).
    #[serde(serialize_with = "crate::report::hex::hex_vec")]
    pub host: Vec<u64>,
    /// The union, ascending.
    #[serde(serialize_with = "crate::report::hex::hex_vec")]
    pub merged: Vec<u64>,
}

/// What the stage-2 scenario did, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stage2Report {
    /// First GPA of the window (from MAXPHYADDR, see [`crate::layout::PhysLayout`]; JSON: a
    /// hex string).
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub gpa_base: u64,
    /// Bytes of the window.
    pub window_len: u64,
    /// KVM_MEM_READONLY supported (else the read-only checks are "skipped: unsupported by
    /// host").
    pub readonly_supported: bool,
    /// Lazy-range accesses that made the host add a memslot.
    pub lazy_backed: u64,
    /// Slot operations in order (`remove REMOVABLE`, `add REMOVABLE`, `lazy +slot gpa`).
    pub slot_ops: Vec<String>,
    /// Dirty-log reads in order.
    pub dirty_reads: Vec<DirtyRead>,
}

/// Extra guest-physical ranges a test author asks for (see `memvisor_cli::api::VmBuilder`): each
/// `(gpa, bytes)` must lie in the stage-2 window (`[stage2_base, stage2_base + stage2_len)` of
/// [`crate::layout::PhysLayout`]: `[1 TiB, 2 TiB)` at MAXPHYADDR 42 and more), 4 KiB aligned,
/// and is mapped for the guest at `GVA_BASE + (gpa - stage2_base)` (US, RW, NX).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// KVM_MEM_READONLY memslots, filled with byte `i & 0xff` at offset `i`.
    pub read_only: Vec<(u64, u64)>,
    /// Lazily backed ranges: the first access to a page adds a memslot for it.
    pub lazy: Vec<(u64, u64)>,
}

impl Extras {
    /// True if no extra range is asked for.
    pub fn is_empty(&self) -> bool {
        self.read_only.is_empty() && self.lazy.is_empty()
    }
}

/// The VMM side of the stage-2 regions.
pub struct Stage2 {
    base: u64,
    readonly: Option<MmapRegion>,
    /// Backing of the extra read-only slots (kept alive while the VM runs).
    _extra_ro: Vec<MmapRegion>,
    lazy_ranges: Vec<(u64, u64)>,
    lazy: BTreeMap<u64, MmapRegion>,
    removable: MmapRegion,
    removable_slot: Option<u32>,
    dirty: bool,
    /// The report.
    pub report: Stage2Report,
}

fn region(len: u64) -> Result<MmapRegion, MemoryError> {
    MmapRegion::new(len as usize).map_err(|_| MemoryError::BadSlot { gpa: 0, size: len })
}

impl Stage2 {
    /// Register the regions: map all four in the guest page tables, add the read-only slot
    /// (filled with byte `i & 0xff`) if KVM supports it, and the removable slot.
    ///
    /// # Errors
    /// A memslot or page-table error.
    pub fn setup(
        kvm: &Kvm,
        vm: &VmFd,
        slots: &mut Memslots,
        space: &mut AddressSpace,
        extras: &Extras,
        phys: &crate::layout::PhysLayout,
    ) -> Result<Self, SpaceError> {
        let base = phys.stage2_base;
        let flags = Protection::USER_DATA.to_pte_flags(space.features.nx);
        space.ensure_pool(8).map_err(|_| SpaceError::TooSmall {
            bytes: space.ram.bytes,
            why: "no frames for the stage-2 page tables".into(),
        })?;
        space.pt.edit(&space.ram.mem, &mut space.pool).map_range(
            Gva::new(s2::GVA_BASE),
            Gpa::new(base),
            STAGE2_LAYOUT,
            PageSize::Size4K,
            flags,
        )?;
        space.stage2_ranges.push((base, STAGE2_LAYOUT));
        let ro_ok = kvm.check_extension(Cap::ReadonlyMem);
        let readonly = if ro_ok {
            let r = region(s2::REGION)?;
            for i in 0..s2::REGION as usize {
                // SAFETY: i < the region's length; the region is ours and not yet shared.
                unsafe { *r.as_ptr().add(i) = i as u8 };
            }
            // SAFETY: the region lives in `self` as long as the VM (the Vmm drops the VM first).
            unsafe {
                slots.add(
                    vm,
                    base + s2::READONLY_OFF,
                    s2::REGION,
                    r.as_ptr() as u64,
                    KVM_MEM_READONLY,
                )?
            };
            Some(r)
        } else {
            None
        };
        let removable = region(s2::REGION)?;
        // SAFETY: as above.
        let slot = unsafe {
            slots.add(
                vm,
                base + s2::REMOVABLE_OFF,
                s2::REGION,
                removable.as_ptr() as u64,
                0,
            )?
        };
        let window = base..base + phys.stage2_len;
        let bad = |gpa: u64, len: u64| {
            len == 0
                || gpa % PAGE_SIZE != 0
                || len % PAGE_SIZE != 0
                || !window.contains(&gpa)
                || gpa.checked_add(len).is_none_or(|e| e > window.end)
        };
        let mut extra_ro = Vec::new();
        for &(gpa, len) in extras.read_only.iter().chain(&extras.lazy) {
            if bad(gpa, len) {
                return Err(SpaceError::Memory(MemoryError::BadSlot { gpa, size: len }));
            }
            let gva = s2::GVA_BASE + (gpa - base);
            space.stage2_ranges.push((gpa, len));
            if space.pt.translate_raw(&space.ram.mem, gva).is_err() {
                space.ensure_pool(8).map_err(|_| SpaceError::TooSmall {
                    bytes: space.ram.bytes,
                    why: "no frames for extra ranges".into(),
                })?;
                space.pt.edit(&space.ram.mem, &mut space.pool).map_range(
                    crate::paging::canonical(gva)?,
                    Gpa::new(gpa),
                    len,
                    PageSize::Size4K,
                    flags,
                )?;
            }
        }
        if ro_ok {
            for &(gpa, len) in &extras.read_only {
                let r = region(len)?;
                for i in 0..len as usize {
                    // SAFETY: i < the region's length; the region is ours.
                    unsafe { *r.as_ptr().add(i) = i as u8 };
                }
                // SAFETY: kept in `self.extra_ro` as long as the VM.
                unsafe { slots.add(vm, gpa, len, r.as_ptr() as u64, KVM_MEM_READONLY)? };
                extra_ro.push(r);
            }
        }
        let mut lazy_ranges = vec![(base + s2::LAZY_OFF, s2::REGION)];
        lazy_ranges.extend(extras.lazy.iter().copied());
        Ok(Stage2 {
            base,
            readonly,
            _extra_ro: extra_ro,
            lazy_ranges,
            lazy: BTreeMap::new(),
            removable,
            removable_slot: Some(slot),
            dirty: false,
            report: Stage2Report {
                gpa_base: base,
                window_len: phys.stage2_len,
                readonly_supported: ro_ok,
                ..Default::default()
            },
        })
    }

    /// An MMIO exit at `gpa`: if it lies in the lazy range, add a memslot for its page and
    /// complete the access against it (write: store the data; read: fill `data` from the
    /// fresh backing). Returns true if handled that way.
    ///
    /// # Errors
    /// A memslot error.
    pub fn on_mmio(
        &mut self,
        vm: &VmFd,
        slots: &mut Memslots,
        gpa: u64,
        data: &mut [u8],
        write: bool,
    ) -> Result<bool, MemoryError> {
        if !self
            .lazy_ranges
            .iter()
            .any(|&(start, len)| (start..start + len).contains(&gpa))
        {
            return Ok(false);
        }
        let page = gpa & !(PAGE_SIZE - 1);
        let off = (gpa - page) as usize;
        if off + data.len() > PAGE_SIZE as usize || self.lazy.contains_key(&page) {
            return Ok(false);
        }
        let r = region(PAGE_SIZE)?;
        // SAFETY: off + data.len() <= 4096 (checked); the region is ours.
        unsafe {
            let p = r.as_ptr().add(off);
            if write {
                std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len());
            } else {
                std::ptr::copy_nonoverlapping(p, data.as_mut_ptr(), data.len());
            }
        }
        // SAFETY: the region is kept in `self.lazy` as long as the VM.
        let slot = unsafe { slots.add(vm, page, PAGE_SIZE, r.as_ptr() as u64, 0)? };
        self.lazy.insert(page, r);
        self.report.lazy_backed += 1;
        self.report
            .slot_ops
            .push(format!("lazy +slot {slot} gpa {page:#x}"));
        Ok(true)
    }

    fn op(
        &mut self,
        vm: &VmFd,
        slots: &mut Memslots,
        space: &mut AddressSpace,
        op: u64,
    ) -> Result<u64, Status> {
        match op {
            s2::OP_REMOVE => {
                let slot = self.removable_slot.take().ok_or(Status::Inval)?;
                slots.remove(vm, slot).map_err(|_| Status::Fault)?;
                self.report.slot_ops.push("remove REMOVABLE".into());
                Ok(0)
            }
            s2::OP_ADD => {
                if self.removable_slot.is_some() {
                    return Err(Status::Inval);
                }
                let hva = self.removable.as_ptr() as u64;
                // SAFETY: the backing region lives in `self`.
                let slot =
                    unsafe { slots.add(vm, self.base + s2::REMOVABLE_OFF, s2::REGION, hva, 0) }
                        .map_err(|_| Status::Fault)?;
                self.removable_slot = Some(slot);
                self.report.slot_ops.push("add REMOVABLE".into());
                Ok(0)
            }
            s2::OP_DIRTY_START => {
                for m in ram_slots(space, slots) {
                    slots
                        .set_flags(vm, m, KVM_MEM_LOG_DIRTY_PAGES)
                        .map_err(|_| Status::Fault)?;
                }
                reset_host_dirty(space);
                self.dirty = true;
                Ok(0)
            }
            s2::OP_DIRTY_READ => {
                if !self.dirty {
                    return Err(Status::Inval);
                }
                let read = read_dirty(vm, slots, space).map_err(|_| Status::Fault)?;
                let n = read.merged.len() as u64;
                self.report.dirty_reads.push(read);
                Ok(n)
            }
            s2::OP_READONLY_SUPPORTED => Ok(self.readonly.is_some() as u64),
            _ => Err(Status::Inval),
        }
    }
}

/// Slot numbers of guest RAM (slots whose range lies in guest RAM).
fn ram_slots(space: &AddressSpace, slots: &Memslots) -> Vec<u32> {
    slots
        .slots()
        .filter(|m| space.ram.contains(m.gpa, m.size))
        .map(|m| m.slot)
        .collect()
}

fn reset_host_dirty(space: &AddressSpace) {
    for r in space.ram.mem.iter() {
        MmapRegion::bitmap(r).reset();
    }
}

/// Turn dirty logging on for every RAM slot and clear the VMM's own dirty bitmap.
pub(crate) fn start_dirty(
    vm: &VmFd,
    slots: &mut Memslots,
    space: &AddressSpace,
) -> Result<(), MemoryError> {
    for m in ram_slots(space, slots) {
        slots.set_flags(vm, m, KVM_MEM_LOG_DIRTY_PAGES)?;
    }
    reset_host_dirty(space);
    Ok(())
}

/// GPAs of the set bits of a `KVM_GET_DIRTY_LOG` bitmap of a slot starting at `base`.
pub(crate) fn bitmap_pages(base: u64, bits: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for (w, word) in bits.iter().enumerate() {
        let mut x = *word;
        while x != 0 {
            let b = x.trailing_zeros() as u64;
            out.push(base + (w as u64 * 64 + b) * PAGE_SIZE);
            x &= x - 1;
        }
    }
    out
}

/// Read and clear KVM's dirty log for the RAM slots and the VMM's own dirty bitmap.
pub(crate) fn read_dirty(
    vm: &VmFd,
    slots: &Memslots,
    space: &AddressSpace,
) -> Result<DirtyRead, MemoryError> {
    let mut read = DirtyRead::default();
    for slot in ram_slots(space, slots) {
        let Some(m) = slots.slots().find(|m| m.slot == slot).copied() else {
            continue;
        };
        let bits =
            vm.get_dirty_log(slot, m.size as usize)
                .map_err(|source| MemoryError::Memslot {
                    slot,
                    gpa: m.gpa,
                    size: m.size,
                    source,
                })?;
        for (w, word) in bits.iter().enumerate() {
            let mut x = *word;
            while x != 0 {
                let b = x.trailing_zeros() as u64;
                read.kvm.push(m.gpa + (w as u64 * 64 + b) * PAGE_SIZE);
                x &= x - 1;
            }
        }
    }
    for r in space.ram.mem.iter() {
        let base = r.start_addr().0;
        for page in 0..r.len() / PAGE_SIZE {
            if MmapRegion::bitmap(r).dirty_at((page * PAGE_SIZE) as usize) {
                read.host.push(base + page * PAGE_SIZE);
            }
        }
        MmapRegion::bitmap(r).reset();
    }
    let mut merged: Vec<u64> = read.kvm.iter().chain(&read.host).copied().collect();
    merged.sort_unstable();
    merged.dedup();
    read.merged = merged;
    Ok(read)
}

/// The VMM-served calls during a run: the VM, its memslots, and the stage-2 regions if this
/// run has them.
pub struct VmmSide<'a> {
    /// The VM.
    pub vm: &'a VmFd,
    /// Its memslots.
    pub slots: &'a mut Memslots,
    /// Stage-2 regions, if set up.
    pub stage2: Option<&'a mut Stage2>,
    /// The scenario's host side (its control calls).
    pub hooks: &'a mut dyn crate::scenario::Scenario,
}

impl crate::hypercall::VmmCalls for VmmSide<'_> {
    fn stage2(&mut self, space: &mut AddressSpace, op: u64, _arg: u64) -> Result<u64, Status> {
        match self.stage2.as_deref_mut() {
            Some(s) => s.op(self.vm, self.slots, space, op),
            None => Err(Status::NoSys),
        }
    }

    fn control(
        &mut self,
        space: &mut AddressSpace,
        call: &memvisor_abi::Hypercall,
    ) -> Result<u64, Status> {
        self.hooks.control(space, call)
    }
}

/// The start of the instruction that made an MMIO **write** exit, where it can be known. KVM
/// completes the write and advances RIP before `KVM_EXIT_MMIO` and reports no instruction
/// length, so this decodes the (at most 15, SDM Vol. 2A §2.3.11) bytes before `regs.rip`
/// through the guest's page tables: a start counts if the instruction decoded there ends
/// exactly at `regs.rip` and writes `size` bytes at an address that translates to `gpa` with
/// the registers at the exit (which a store such as `mov [base+disp], reg` leaves unchanged).
/// `None` unless exactly one start counts (e.g. for `push` or `stos`, which change their
/// address registers, or an FS/GS-relative store, whose base is not read).
pub fn write_instruction(
    space: &AddressSpace,
    regs: &kvm_bindings::kvm_regs,
    gpa: u64,
    size: u32,
) -> Option<u64> {
    use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, OpAccess};
    let end = regs.rip;
    // The longest run of readable bytes before `end`, up to 15.
    let bytes = (1..=15u64)
        .rev()
        .find_map(|n| space.read_gva(end.checked_sub(n)?, n).ok())?;
    let mut factory = InstructionInfoFactory::new();
    let mut found = None;
    for len in 1..=bytes.len() {
        let start = end - len as u64;
        let mut decoder =
            Decoder::with_ip(64, &bytes[bytes.len() - len..], start, DecoderOptions::NONE);
        let insn = decoder.decode();
        if insn.is_invalid() || insn.len() != len {
            continue;
        }
        let next_ip = insn.next_ip();
        let info = factory.info(&insn);
        let hit = info.used_memory().iter().any(|m| {
            matches!(
                m.access(),
                OpAccess::Write
                    | OpAccess::ReadWrite
                    | OpAccess::CondWrite
                    | OpAccess::ReadCondWrite
            ) && m.memory_size().size() == size as usize
                && m.virtual_address(0, |r, _, _| register(regs, r, next_ip))
                    .and_then(|va| space.translate_gva(va).ok())
                    == Some(gpa)
        });
        if hit {
            if found.is_some() {
                return None;
            }
            found = Some(start);
        }
    }
    found
}

/// A register's value at the exit, for an address computation: general registers (sized),
/// RIP as the next instruction, the flat ES/CS/SS/DS bases (0 in 64-bit mode); `None` for
/// anything else (FS/GS bases, vector registers).
fn register(r: &kvm_bindings::kvm_regs, reg: iced_x86::Register, next_ip: u64) -> Option<u64> {
    use iced_x86::Register as R;
    let v = match reg.full_register() {
        R::RAX => r.rax,
        R::RBX => r.rbx,
        R::RCX => r.rcx,
        R::RDX => r.rdx,
        R::RSI => r.rsi,
        R::RDI => r.rdi,
        R::RBP => r.rbp,
        R::RSP => r.rsp,
        R::R8 => r.r8,
        R::R9 => r.r9,
        R::R10 => r.r10,
        R::R11 => r.r11,
        R::R12 => r.r12,
        R::R13 => r.r13,
        R::R14 => r.r14,
        R::R15 => r.r15,
        R::RIP => next_ip,
        R::ES | R::CS | R::SS | R::DS => 0,
        _ => return None,
    };
    Some(match reg.size() {
        1 => v & 0xff,
        2 => v & 0xffff,
        4 => v & 0xffff_ffff,
        _ => v,
    })
}
