//! Boot: the kernel loader, the boot GDT, guest CPUID, and the vCPU's initial registers.
//!
//! Initial state (Intel SDM Vol. 3A §10.8.5, "Initializing IA-32e Mode"): CR0 = PE MP ET NE
//! WP PG, CR4 = PAE PGE OSFXSR OSXMMEXCPT (+ LA57 for a 5-level boot), EFER = LME LMA (+ NXE
//! when CPUID has NX), CS a 64-bit code segment, CR3 the host-built PML4 (or, for a 5-level
//! boot, the PML5 above it: CR4.LA57 cannot change in IA-32e mode, SDM Vol. 3A §4.1.1, so it
//! is set here), RSP the top of the boot stack, RDI the GVA of the boot info.

pub mod cpuid;
pub mod gdt;
pub mod loader;

use crate::layout::{BOOT_GDT_GPA, DIRECT_MAP_BASE};
use kvm_bindings::{kvm_regs, kvm_sregs};

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.MP: monitor coprocessor.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.ET: extension type.
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE: native x87 error reporting.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.WP: supervisor writes honour read-only pages.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.PGE: global pages.
pub const CR4_PGE: u64 = 1 << 7;
/// CR4.LA57: 5-level paging (CR3 points to a PML5).
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.OSFXSR.
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT.
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: execute-disable enable.
pub const EFER_NXE: u64 = 1 << 11;

/// Fill `sregs` for 64-bit entry on the page tables rooted at `cr3`: a PML4, or a PML5 when
/// `la57` (CR4.LA57 = 1).
pub fn setup_sregs(sregs: &mut kvm_sregs, cr3: u64, nx: bool, la57: bool) {
    let code = gdt::kvm_segment_from_gdt(gdt::BOOT_GDT[1], 1);
    let data = gdt::kvm_segment_from_gdt(gdt::BOOT_GDT[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = DIRECT_MAP_BASE + BOOT_GDT_GPA;
    sregs.gdt.limit = (gdt::BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE | CR4_PGE | CR4_OSFXSR | CR4_OSXMMEXCPT | if la57 { CR4_LA57 } else { 0 };
    sregs.efer = EFER_LME | EFER_LMA | if nx { EFER_NXE } else { 0 };
}

/// Whether KVM lets `vcpu` (its CPUID already set) start with CR4.LA57 = 1: sets the
/// 5-level entry state of [`setup_sregs`] on the page tables at `cr3` (KVM does not read
/// them here) and reports whether KVM_SET_SREGS took it. A PVM host, whose supported CPUID
/// has LA57, refuses it (EINVAL); so does any KVM whose vCPU CPUID lacks LA57 (KVM API doc
/// §4.4 KVM_SET_SREGS; Linux `kvm_is_valid_cr4`). The caller sets the real state afterwards.
pub fn accepts_la57(vcpu: &kvm_ioctls::VcpuFd, cr3: u64, nx: bool) -> bool {
    let Ok(mut sregs) = vcpu.get_sregs() else {
        return false;
    };
    setup_sregs(&mut sregs, cr3, nx, true);
    match vcpu.set_sregs(&sregs) {
        Ok(()) => true,
        Err(e) => {
            log::info!("5-level boot refused by KVM (KVM_SET_SREGS with CR4.LA57: {e}); 4-level");
            false
        }
    }
}

/// General registers at entry.
pub fn entry_regs(entry: u64, stack_top: u64, boot_info_gva: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: stack_top,
        rdi: boot_info_gva,
        rflags: 0x2,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_registers_exact() {
        let mut s = kvm_sregs::default();
        setup_sregs(&mut s, 0x40_0000, true, false);
        assert_eq!(s.cr0, 0x8001_0033);
        assert_eq!(s.cr4, 0x6a0);
        assert_eq!(s.efer, 0xd00);
        assert_eq!(s.cr3, 0x40_0000);
        assert_eq!(s.cs.selector, 0x08);
        assert_eq!(s.ss.selector, 0x10);
        setup_sregs(&mut s, 0x40_0000, false, false);
        assert_eq!(s.efer, 0x500);
        // A 5-level boot: CR4.LA57 (bit 12), CR3 the PML5; nothing else changes.
        setup_sregs(&mut s, 0x41_0000, false, true);
        assert_eq!((s.cr4, s.cr3, s.cr0), (0x16a0, 0x41_0000, 0x8001_0033));
        let r = entry_regs(0xffff_ffff_8020_0000, 0x1000, 0x2000);
        assert_eq!(
            (r.rip, r.rsp, r.rdi, r.rflags),
            (0xffff_ffff_8020_0000, 0x1000, 0x2000, 2)
        );
    }
}
