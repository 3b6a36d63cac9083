//! Guest RAM: vm-memory regions (one KVM memslot each) laid out around the 32-bit MMIO hole,
//! and the e820 map the guest receives.
//!
//! Regions are anonymous `MAP_NORESERVE | MAP_PRIVATE` mappings (vm-memory's default), so a
//! 64 GiB guest costs nothing until pages are touched; or, with [`RamBacking::Shm`], shared
//! mappings of one memfd ([`shm`]). KVM API doc §4.35 (`KVM_SET_USER_MEMORY_REGION`).

pub mod shm;
pub use shm::{RamBacking, ShmBacking, ShmError};

use crate::addr::Gpa;
use crate::layout::{MAX_MEM_SIZE, MMIO_HOLE_END, MMIO_HOLE_START};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use memvisor_abi::{E820Entry, E820_RAM, E820_RESERVED};
use serde::Serialize;
use thiserror::Error;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Guest memory with vm-memory's dirty bitmap: every host write through vm-memory marks its
/// 4 KiB page, so dirty logging can merge the VMM's own writes with KVM's log (as Firecracker
/// does).
pub type GuestMem = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The requested size is zero.
    #[error("memory size must be greater than 0")]
    Zero,
    /// The requested size is not a multiple of 4 KiB.
    #[error("memory size {bytes} bytes is not a multiple of 4 KiB")]
    Unaligned {
        /// The size in bytes.
        bytes: u64,
    },
    /// The requested size exceeds [`MAX_MEM_SIZE`].
    #[error("memory size {bytes} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The size in bytes.
        bytes: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// The guest-physical address space of the host's CPU (MAXPHYADDR) cannot hold the RAM.
    #[error("--mem {bytes} bytes: RAM would end at GPA {end:#x}, beyond what this host's guest-physical address space (MAXPHYADDR {maxphyaddr}) allows for RAM; at most {max} bytes ({} GiB)", max >> 30)]
    BeyondMaxPhyAddr {
        /// The size in bytes.
        bytes: u64,
        /// One past the last GPA the RAM would occupy.
        end: u64,
        /// MAXPHYADDR (CPUID 0x8000_0008 EAX\[7:0\]).
        maxphyaddr: u8,
        /// The largest RAM size for this MAXPHYADDR ([`crate::layout::PhysLayout::max_mem`]).
        max: u64,
    },
    /// The host could not reserve the address space.
    #[error("cannot map {bytes} bytes of guest memory: {source}")]
    Mmap {
        /// The size in bytes.
        bytes: u64,
        /// vm-memory's error.
        source: vm_memory::mmap::FromRangesError,
    },
    /// A new memslot would overlap an existing one.
    #[error("memslot at GPA {gpa:#x} (+{size:#x} bytes) overlaps slot {other} at GPA {other_gpa:#x} (+{other_size:#x})")]
    Overlap {
        /// First GPA of the new slot.
        gpa: u64,
        /// Its size in bytes.
        size: u64,
        /// The slot it overlaps.
        other: u32,
        /// That slot's first GPA.
        other_gpa: u64,
        /// That slot's size.
        other_size: u64,
    },
    /// More memslots than KVM allows (KVM_CAP_NR_MEMSLOTS).
    #[error("too many memslots: KVM allows {limit} (KVM_CAP_NR_MEMSLOTS)")]
    TooManySlots {
        /// The limit.
        limit: usize,
    },
    /// A memslot that is not registered.
    #[error("memslot {slot} is not registered")]
    NoSuchSlot {
        /// The slot number.
        slot: u32,
    },
    /// A zero-sized or misaligned memslot.
    #[error("memslot at GPA {gpa:#x} (+{size:#x} bytes) is empty or not 4 KiB aligned")]
    BadSlot {
        /// First GPA.
        gpa: u64,
        /// Size in bytes.
        size: u64,
    },
    /// The shared-memory backing could not be set up ([`RamBacking::Shm`]).
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// KVM refused a memslot.
    #[error(
        "KVM_SET_USER_MEMORY_REGION slot {slot} (gpa {gpa:#x}, {size} bytes) failed: {source}"
    )]
    Memslot {
        /// Slot number.
        slot: u32,
        /// First GPA.
        gpa: u64,
        /// Size in bytes.
        size: u64,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// A VMM access to guest RAM on the guest's behalf found no RAM at the GPA.
    #[error("no guest RAM at GPA {gpa:#x} (+{len} bytes)")]
    Access {
        /// First GPA.
        gpa: u64,
        /// Bytes.
        len: u64,
    },
}

/// Parse a size such as `256M`, `4G`, `65536`, `512K` (binary units; suffix case-insensitive,
/// optional `B`/`iB`). Returns bytes.
///
/// # Errors
/// A one-line message for an empty string, an unknown suffix, or an overflow.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(format!(
            "invalid size '{s}': expected a number with optional K/M/G/T suffix"
        ));
    }
    let n: u64 = t[..digits_end]
        .parse()
        .map_err(|_| format!("invalid size '{s}': number too large"))?;
    let suffix = t[digits_end..].to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "invalid size '{s}': unknown suffix '{}' (use K, M, G or T)",
                &t[digits_end..]
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size '{s}': overflows 64 bits"))
}

/// Memslots to register, each with the host address (HVA) of its first byte.
pub type SlotPlan = Vec<(Memslot, u64)>;

/// One memslot as registered with KVM.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Memslot {
    /// KVM slot number.
    pub slot: u32,
    /// First GPA (JSON: hex string).
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// KVM memslot flags (`KVM_MEM_LOG_DIRTY_PAGES` = 1, `KVM_MEM_READONLY` = 2; JSON: hex
    /// string).
    #[serde(serialize_with = "crate::report::hex::hex32")]
    pub flags: u32,
}

/// Guest RAM and its map.
pub struct GuestRam {
    /// The backing memory (one region per RAM range).
    pub mem: GuestMem,
    /// RAM ranges `(first GPA, bytes)`, ascending.
    pub ram: Vec<(Gpa, u64)>,
    /// The e820 map given to the guest.
    pub e820: Vec<E820Entry>,
    /// Total RAM in bytes.
    pub bytes: u64,
    /// The userfaultfd handler serving RAM's first touches, when RAM is uffd-backed
    /// ([`crate::uffd`], `GuestRam::attach_uffd`).
    pub uffd: Option<crate::uffd::UffdHandler>,
    /// The memfd and its alias mapping with [`RamBacking::Shm`] (last: unmapped after the
    /// regions and the handler are gone).
    pub shm: Option<ShmBacking>,
}

/// RAM ranges `(first GPA, bytes)` for `bytes` of guest RAM: below the MMIO hole, then from
/// 4 GiB (the shape [`crate::frames::ZoneTable::new`] takes).
pub fn ram_ranges(bytes: u64) -> Vec<(Gpa, u64)> {
    if bytes <= MMIO_HOLE_START {
        vec![(Gpa::new(0), bytes)]
    } else {
        vec![
            (Gpa::new(0), MMIO_HOLE_START),
            (Gpa::new(MMIO_HOLE_END), bytes - MMIO_HOLE_START),
        ]
    }
}

/// The e820 map for the given RAM ranges: RAM entries plus the MMIO hole as reserved when RAM
/// continues above it.
pub fn e820_for(ram: &[(Gpa, u64)]) -> Vec<E820Entry> {
    let mut out = Vec::new();
    for (i, &(addr, size)) in ram.iter().enumerate() {
        let addr = addr.raw();
        if i > 0 {
            out.push(E820Entry {
                addr: MMIO_HOLE_START,
                size: MMIO_HOLE_END - MMIO_HOLE_START,
                kind: E820_RESERVED,
                pad: 0,
            });
        }
        out.push(E820Entry {
            addr,
            size,
            kind: E820_RAM,
            pad: 0,
        });
    }
    out
}

impl GuestRam {
    /// Reserve `bytes` of guest RAM (lazily backed, private anonymous memory).
    ///
    /// # Errors
    /// [`MemoryError::Zero`], [`MemoryError::Unaligned`], [`MemoryError::TooLarge`] or
    /// [`MemoryError::Mmap`].
    pub fn new(bytes: u64) -> Result<Self, MemoryError> {
        Self::new_with(bytes, RamBacking::Anonymous)
    }

    /// Reserve `bytes` of guest RAM backed as `backing` says (lazily in both cases).
    ///
    /// # Errors
    /// As [`GuestRam::new`], and [`MemoryError::Shm`] when the memfd cannot be made.
    pub fn new_with(bytes: u64, backing: RamBacking) -> Result<Self, MemoryError> {
        if bytes == 0 {
            return Err(MemoryError::Zero);
        }
        if bytes % 4096 != 0 {
            return Err(MemoryError::Unaligned { bytes });
        }
        if bytes > MAX_MEM_SIZE {
            return Err(MemoryError::TooLarge {
                bytes,
                max: MAX_MEM_SIZE,
            });
        }
        let ram = ram_ranges(bytes);
        let ranges: Vec<(GuestAddress, usize)> = ram
            .iter()
            .map(|&(a, s)| (GuestAddress(a.raw()), s as usize))
            .collect();
        let shm = match backing {
            RamBacking::Anonymous => None,
            RamBacking::Shm => Some(ShmBacking::create(bytes)?),
        };
        let mem = match &shm {
            None => GuestMem::from_ranges(&ranges),
            Some(shm) => {
                // The RAM ranges one after another in the file, in GPA order.
                let mut files = Vec::with_capacity(ranges.len());
                let mut offset = 0u64;
                for &(gpa, size) in &ranges {
                    let file = shm.file().try_clone().map_err(|source| ShmError::Sys {
                        what: "dup",
                        bytes,
                        source,
                    })?;
                    files.push((gpa, size, Some(vm_memory::FileOffset::new(file, offset))));
                    offset += size as u64;
                }
                GuestMem::from_ranges_with_files(&files)
            }
        }
        .map_err(|source| MemoryError::Mmap { bytes, source })?;
        // Transparent huge pages for guest RAM, as QEMU does: the host faults guest RAM in
        // 2 MiB at a time instead of 4 KiB, so most first touches of a frame (demand
        // paging, fresh frames) find the host page already there. Advice only: with THP
        // off or unavailable the kernel ignores it and nothing else changes. (Anonymous RAM
        // only: shared memory keeps 4 KiB pages, so a minor fault maps one page.)
        for region in mem.iter().filter(|_| shm.is_none()) {
            // SAFETY: the range is exactly one mapping vm-memory created and owns; madvise
            // only changes how the kernel backs it (no data change, no unmapping).
            let rc = unsafe {
                libc::madvise(
                    region.as_ptr().cast(),
                    region.len() as usize,
                    libc::MADV_HUGEPAGE,
                )
            };
            if rc != 0 {
                log::debug!(
                    "madvise(MADV_HUGEPAGE) on guest RAM: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(GuestRam {
            e820: e820_for(&ram),
            mem,
            ram,
            bytes,
            uffd: None,
            shm,
        })
    }

    /// How RAM is backed.
    pub fn backing(&self) -> RamBacking {
        match self.shm {
            Some(_) => RamBacking::Shm,
            None => RamBacking::Anonymous,
        }
    }

    /// With [`RamBacking::Shm`], the memfd offset of guest-physical `gpa` (the RAM ranges lie
    /// one after another in the file); `None` outside RAM or for anonymous RAM.
    pub fn shm_offset(&self, gpa: u64) -> Option<u64> {
        self.shm.as_ref()?;
        let mut offset = 0u64;
        for &(a, s) in &self.ram {
            if gpa >= a.raw() && gpa - a.raw() < s {
                return Some(offset + (gpa - a.raw()));
            }
            offset += s;
        }
        None
    }

    /// The memslots [`GuestRam::register`] creates (slot numbers from 0, flags 0), each with
    /// the host address (HVA) of its region.
    pub fn slot_plan(&self) -> Vec<(Memslot, u64)> {
        self.mem
            .iter()
            .enumerate()
            .map(|(i, region)| {
                let slot = Memslot {
                    slot: i as u32,
                    gpa: region.start_addr().0,
                    size: region.len(),
                    flags: 0,
                };
                (slot, region.as_ptr() as u64)
            })
            .collect()
    }

    /// Register every region as a KVM memslot (slot numbers from 0, flags 0).
    ///
    /// # Errors
    /// [`MemoryError::Memslot`] if KVM refuses one.
    pub fn register(&self, vm: &VmFd) -> Result<Vec<Memslot>, MemoryError> {
        // SAFETY: every HVA of the plan is a live mapping owned by `self.mem`, which outlives
        // the VM (the Vmm keeps both and drops the VM first).
        unsafe { register_plan(vm, &self.slot_plan()) }
    }

    /// True if `[gpa, gpa + len)` lies wholly inside one RAM range.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        self.ram
            .iter()
            .any(|&(a, s)| gpa >= a.raw() && end <= a.raw() + s)
    }

    /// One past the highest RAM GPA.
    pub fn end(&self) -> u64 {
        self.ram.last().map_or(0, |&(a, s)| a.raw() + s)
    }
}

/// The VM's memslots: every slot the VMM registers goes through here, which refuses overlaps
/// and more slots than KVM allows before asking KVM (KVM API doc §4.35).
#[derive(Debug)]
pub struct Memslots {
    slots: std::collections::BTreeMap<u32, (Memslot, u64)>,
    limit: usize,
}

impl Memslots {
    /// A registry allowing `limit` slots (KVM_CAP_NR_MEMSLOTS).
    pub fn new(limit: usize) -> Self {
        Memslots {
            slots: Default::default(),
            limit,
        }
    }

    /// Registered slots, by number.
    pub fn slots(&self) -> impl Iterator<Item = &Memslot> {
        self.slots.values().map(|(m, _)| m)
    }

    /// Check that a slot `[gpa, gpa + size)` can be added (no overlap, under the limit).
    ///
    /// # Errors
    /// [`MemoryError::BadSlot`], [`MemoryError::Overlap`] or [`MemoryError::TooManySlots`].
    pub fn check(&self, gpa: u64, size: u64, except: Option<u32>) -> Result<(), MemoryError> {
        let end = gpa
            .checked_add(size)
            .ok_or(MemoryError::BadSlot { gpa, size })?;
        if size == 0 || gpa % 4096 != 0 || size % 4096 != 0 {
            return Err(MemoryError::BadSlot { gpa, size });
        }
        for (m, _) in self.slots.values() {
            if Some(m.slot) != except && gpa < m.gpa + m.size && m.gpa < end {
                return Err(MemoryError::Overlap {
                    gpa,
                    size,
                    other: m.slot,
                    other_gpa: m.gpa,
                    other_size: m.size,
                });
            }
        }
        if except.is_none() && self.slots.len() >= self.limit {
            return Err(MemoryError::TooManySlots { limit: self.limit });
        }
        Ok(())
    }

    fn free_number(&self) -> u32 {
        (0u32..)
            .find(|n| !self.slots.contains_key(n))
            .unwrap_or(u32::MAX)
    }

    /// Register `[gpa, gpa + size)` backed at host address `hva` with `flags`; returns the slot.
    ///
    /// # Errors
    /// As [`Self::check`], or [`MemoryError::Memslot`] if KVM refuses.
    ///
    /// # Safety
    /// `[hva, hva + size)` must stay mapped while the slot is registered.
    pub unsafe fn add(
        &mut self,
        vm: &VmFd,
        gpa: u64,
        size: u64,
        hva: u64,
        flags: u32,
    ) -> Result<u32, MemoryError> {
        self.check(gpa, size, None)?;
        let slot = self.free_number();
        let m = Memslot {
            slot,
            gpa,
            size,
            flags,
        };
        // SAFETY: the caller keeps the host range mapped while the slot exists.
        unsafe { set_region(vm, &m, hva)? };
        self.slots.insert(slot, (m, hva));
        Ok(slot)
    }

    /// Record a slot registered elsewhere (guest RAM, the flush slot).
    pub fn track(&mut self, m: Memslot, hva: u64) {
        self.slots.insert(m.slot, (m, hva));
    }

    /// Delete a slot (KVM drops its shadow pages); returns it so it can be added back.
    ///
    /// # Errors
    /// [`MemoryError::NoSuchSlot`], or [`MemoryError::Memslot`] if KVM refuses.
    pub fn remove(&mut self, vm: &VmFd, slot: u32) -> Result<(Memslot, u64), MemoryError> {
        let (m, hva) = *self
            .slots
            .get(&slot)
            .ok_or(MemoryError::NoSuchSlot { slot })?;
        let gone = Memslot { size: 0, ..m };
        // SAFETY: deleting a slot (size 0) maps nothing.
        unsafe { set_region(vm, &gone, hva)? };
        self.slots.remove(&slot);
        Ok((m, hva))
    }

    /// Change a slot's flags (e.g. start dirty logging).
    ///
    /// # Errors
    /// [`MemoryError::NoSuchSlot`], or [`MemoryError::Memslot`] if KVM refuses.
    pub fn set_flags(&mut self, vm: &VmFd, slot: u32, flags: u32) -> Result<(), MemoryError> {
        let (m, hva) = *self
            .slots
            .get(&slot)
            .ok_or(MemoryError::NoSuchSlot { slot })?;
        let new = Memslot { flags, ..m };
        // SAFETY: same host range as when the slot was added, still mapped.
        unsafe { set_region(vm, &new, hva)? };
        self.slots.insert(slot, (new, hva));
        Ok(())
    }
}

/// Register the memslots of `plan` (from [`GuestRam::slot_plan`]) with KVM, in order: one
/// `KVM_SET_USER_MEMORY_REGION` each (KVM API doc §4.35). Apart from the VM and the plan it
/// touches nothing, so it may run on another thread while the caller prepares the rest of the
/// VM (a restore does: see `crate::vm::snapshot`).
///
/// # Errors
/// [`MemoryError::Memslot`] if KVM refuses one (the slots before it stay registered).
///
/// # Safety
/// Every `[hva, hva + size)` of the plan must stay mapped while its slot is registered and a
/// vCPU of `vm` may run.
pub unsafe fn register_plan(
    vm: &VmFd,
    plan: &[(Memslot, u64)],
) -> Result<Vec<Memslot>, MemoryError> {
    let mut slots = Vec::with_capacity(plan.len());
    for (m, hva) in plan {
        // SAFETY: forwarded to the caller.
        unsafe { set_region(vm, m, *hva) }?;
        slots.push(*m);
    }
    Ok(slots)
}

/// KVM_SET_USER_MEMORY_REGION for `m` at host address `hva`.
///
/// # Safety
/// `[hva, hva + m.size)` must stay mapped while the slot is registered.
unsafe fn set_region(vm: &VmFd, m: &Memslot, hva: u64) -> Result<(), MemoryError> {
    let region = kvm_userspace_memory_region {
        slot: m.slot,
        guest_phys_addr: m.gpa,
        memory_size: m.size,
        userspace_addr: hva,
        flags: m.flags,
    };
    // SAFETY: forwarded to the caller.
    unsafe { vm.set_user_memory_region(region) }.map_err(|source| MemoryError::Memslot {
        slot: m.slot,
        gpa: m.gpa,
        size: m.size,
        source,
    })
}

#[cfg(test)]
mod tests;
