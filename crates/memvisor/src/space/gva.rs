//! The host's access to guest memory by GVA on the guest's behalf: `Translate`, and checked
//! reads and writes through the guest's own page tables (never into a page-table frame or
//! another frame the host must not write).

use super::ops::HcResult;
use super::AddressSpace;
use crate::addr::{is_canonical, Pfn, PAGE_SIZE};
use memvisor_abi::Status;
use vm_memory::{Bytes, GuestAddress};

impl AddressSpace {
    /// `Translate`: GPA of the byte at `gva`.
    ///
    /// # Errors
    /// [`Status::NotMapped`] if `gva` is not mapped.
    pub fn translate_gva(&self, gva: u64) -> HcResult {
        if !is_canonical(gva) {
            return Err(Status::Inval);
        }
        self.pt
            .translate_raw(&self.ram.mem, gva)
            .map(|t| t.gpa.raw())
            .map_err(|_| Status::NotMapped)
    }

    /// True if the host may write guest frame `pfn` on the guest's behalf: RAM, not a
    /// page-table pool frame, not inside the kernel's read-only or executable segments.
    pub fn host_may_write(&self, pfn: Pfn) -> bool {
        let gpa = pfn.raw() * PAGE_SIZE;
        if !self.ram.contains(gpa, PAGE_SIZE) || self.pool.owns(pfn) {
            return false;
        }
        !self.kernel.segments.iter().any(|s| {
            !s.write && gpa + PAGE_SIZE > (s.gpa & !(PAGE_SIZE - 1)) && gpa < s.gpa + s.memsz
        })
    }

    /// GPA of `gva` without a page walk, when it lies in a mapping the host built at boot
    /// and never edits afterwards: a kernel image segment (GVA = GPA + the segment's offset)
    /// or the boot stack, which is also the exception stack (TSS.RSP0). `None` elsewhere.
    /// Exact: no hypercall can change these mappings (the invariants check that they stay
    /// intact).
    pub fn boot_fixed_gpa(&self, gva: u64) -> Option<u64> {
        if let Some(seg) = self
            .kernel
            .segments
            .iter()
            .find(|s| gva >= s.gva && gva - s.gva < s.memsz)
        {
            return Some(seg.gpa + (gva - seg.gva));
        }
        let off = gva.checked_sub(crate::layout::BOOT_STACK_BOTTOM)?;
        if off >= crate::layout::BOOT_STACK_SIZE {
            return None;
        }
        // The boot stack's frames come first in `stack_frames`, in GVA order.
        let pfn = self.stack_frames.get((off / PAGE_SIZE) as usize)?;
        Some(pfn.raw() * PAGE_SIZE + off % PAGE_SIZE)
    }

    /// Read the little-endian u64 at `gva` (8-byte aligned): through
    /// [`boot_fixed_gpa`](Self::boot_fixed_gpa) when it applies, else by a page walk.
    ///
    /// # Errors
    /// [`Status::Fault`] if the address is misaligned, unmapped or outside RAM.
    pub fn read_gva_u64(&self, gva: u64) -> Result<u64, Status> {
        if gva % 8 != 0 {
            return Err(Status::Fault);
        }
        let gpa = match self.boot_fixed_gpa(gva) {
            Some(g) => g,
            None => self.translate_gva(gva).map_err(|_| Status::Fault)?,
        };
        self.ram
            .mem
            .read_obj::<u64>(GuestAddress(gpa))
            .map_err(|_| Status::Fault)
    }

    /// Read `len` bytes at guest virtual `gva` (walking the page tables page by page).
    ///
    /// # Errors
    /// [`Status::Fault`] if a page is unmapped or outside RAM.
    pub fn read_gva(&self, gva: u64, len: u64) -> Result<Vec<u8>, Status> {
        let end = gva.checked_add(len).ok_or(Status::Fault)?;
        let mut out = Vec::with_capacity(len as usize);
        let mut cur = gva;
        while cur < end {
            let gpa = self.translate_gva(cur).map_err(|_| Status::Fault)?;
            let n = (PAGE_SIZE - (cur % PAGE_SIZE)).min(end - cur);
            let start = out.len();
            out.resize(start + n as usize, 0);
            vm_memory::Bytes::read_slice(
                &self.ram.mem,
                &mut out[start..],
                vm_memory::GuestAddress(gpa),
            )
            .map_err(|_| Status::Fault)?;
            cur += n;
        }
        Ok(out)
    }

    /// Write `bytes` at guest virtual `gva`: every page must be mapped writable and be a
    /// frame the host may write (see [`Self::host_may_write`]).
    ///
    /// # Errors
    /// [`Status::Fault`] if a page is unmapped, read-only or a frame the host may not write.
    pub fn write_gva(&self, gva: u64, bytes: &[u8]) -> Result<(), Status> {
        let end = gva.checked_add(bytes.len() as u64).ok_or(Status::Fault)?;
        let mut cur = gva;
        while cur < end {
            let t = self
                .pt
                .translate_raw(&self.ram.mem, cur)
                .map_err(|_| Status::Fault)?;
            if !t.effective.writable || !self.host_may_write(t.gpa.pfn()) {
                return Err(Status::Fault);
            }
            let n = (PAGE_SIZE - (cur % PAGE_SIZE)).min(end - cur);
            let off = (cur - gva) as usize;
            vm_memory::Bytes::write_slice(
                &self.ram.mem,
                &bytes[off..off + n as usize],
                vm_memory::GuestAddress(t.gpa.raw()),
            )
            .map_err(|_| Status::Fault)?;
            cur += n;
        }
        Ok(())
    }
}
