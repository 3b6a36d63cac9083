//! Host-assisted demand paging: the [`PORT_PF_ASSIST`] exit.
//!
//! On a PVM host every guest CPL0 instruction is emulated (about 1.4 µs each, plus a page
//! walk for its fetch), so a #PF handler that builds a `LazyFault` request costs more than
//! the exit it ends in. The guest's #PF entry therefore sends a not-present fault to the host
//! at once, with one `out imm8, al` that changes no register, and the VMM does the handler's
//! work:
//!
//! ```text
//!  ring 3 access ──#PF──> pf_assist_entry: test byte [rsp], 1 (P) ; jnz in-guest path
//!                                          out PORT_PF_ASSIST, al ──exit──> VMM:
//!        RSP and CR2 from kvm_run (KVM_CAP_SYNC_REGS; else KVM_GET_REGS / KVM_GET_SREGS)
//!        error code, RIP, CS, RFLAGS, RSP, SS read at RSP through our page tables
//!        AddressSpace::lazy_fault(CR2, error code, RIP)
//!          backed, frame returns to CPL 3 and sync regs: the VMM performs the iretq
//!                  (RIP, RSP, RFLAGS from the frame; CS, SS loaded from the guest's GDT)
//!          backed otherwise: RIP := memvisor_pf_assist_done (add rsp, 8 ; iretq)
//!          declined: RIP unchanged
//!  the access is retried and succeeds
//!  declined: the guest's own path (probes, LazyFault request, Rust #PF handler)
//! ```
//!
//! Everything read from the guest is hostile: a bad RSP, a frame that does not translate, a
//! present-page error code or a CR2 outside every lazy region only declines; the VMM's
//! iretq loads CS and SS only from present DPL-3 descriptors of the right kind (a 64-bit
//! code segment, a writable data segment) with RPL 3 selectors, canonical RIP and RSP and the
//! architectural RFLAGS bits (Intel SDM Vol. 3A §6.14.3, IRET in 64-bit mode), and otherwise
//! leaves the iretq to the guest. Setting RIP after an `out` is safe on both exit paths KVM
//! has: its emulator (PVM, CPL0) has already advanced RIP past the `out`, and the fast-PIO
//! completion (VMX/SVM) skips the `out` only if RIP is unchanged (`complete_fast_pio_out` in
//! arch/x86/kvm/x86.c).
//!
//! [`PORT_PF_ASSIST`]: memvisor_abi::PORT_PF_ASSIST

use crate::addr::is_canonical;
use crate::space::AddressSpace;
use kvm_bindings::{kvm_regs, kvm_segment};
use kvm_ioctls::{SyncReg, VcpuFd};

/// #PF error code bit 0: the page was present (a protection fault, never a lazy page).
const PF_P: u64 = 1;
/// RFLAGS bits an iretq to 64-bit code may load: CF PF AF ZF SF TF IF DF OF IOPL NT RF AC
/// ID (VM, VIF and VIP must stay clear); bit 1 always reads as 1.
const RFLAGS_LOADABLE: u64 = 0x0025_7fd5;
const RFLAGS_FIXED: u64 = 0x2;

/// What the VMM did with one assist exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assist {
    /// The page was backed and mapped; the VMM also performed the guest's iretq.
    BackedAndReturned,
    /// The page was backed and mapped; the vCPU resumes at the kernel's done label, which
    /// does the iretq.
    Backed,
    /// Not a lazy page (or no done label, or an unreadable frame): the guest goes on with
    /// its own #PF path.
    Declined,
}

/// The exception frame the CPU pushed for the #PF (Intel SDM Vol. 3A §6.14.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

impl Frame {
    /// The six words at `rsp` (8-byte aligned, as the CPU leaves it after pushing them).
    fn read(space: &AddressSpace, rsp: u64) -> Option<Frame> {
        let w = |i: u64| space.read_gva_u64(rsp.checked_add(i * 8)?).ok();
        Some(Frame {
            error_code: w(0)?,
            rip: w(1)?,
            cs: w(2)?,
            rflags: w(3)?,
            rsp: w(4)?,
            ss: w(5)?,
        })
    }
}

/// Serve one `PORT_PF_ASSIST` exit. With `sync_regs` (KVM_CAP_SYNC_REGS: the caller made
/// KVM store GPRs and sregs in `kvm_run` on every exit) registers come from `kvm_run` and go
/// back through `kvm_dirty_regs`; otherwise through KVM_GET_REGS, KVM_GET_SREGS and
/// KVM_SET_REGS (each ~7 µs on a PVM host).
///
/// # Errors
/// A failing `KVM_GET_REGS`, `KVM_GET_SREGS` or `KVM_SET_REGS`.
pub fn on_exit(
    vcpu: &mut VcpuFd,
    sync_regs: bool,
    space: &mut AddressSpace,
) -> Result<Assist, kvm_ioctls::Error> {
    let Some(done) = space.kernel.pf_assist_done else {
        return Ok(Assist::Declined);
    };
    let (rsp, cr2) = if sync_regs {
        let s = vcpu.sync_regs();
        (s.regs.rsp, s.sregs.cr2)
    } else {
        (vcpu.get_regs()?.rsp, vcpu.get_sregs()?.cr2)
    };
    let Some(frame) = Frame::read(space, rsp) else {
        return Ok(Assist::Declined);
    };
    if frame.error_code & PF_P != 0 || space.lazy_fault(cr2, frame.error_code, frame.rip).is_err() {
        return Ok(Assist::Declined);
    }
    space.counters.lazy_faults_assisted += 1;
    if sync_regs {
        let gdt = vcpu.sync_regs().sregs.gdt;
        let user = user_segments(space, gdt.base, u32::from(gdt.limit), &frame);
        let s = vcpu.sync_regs_mut();
        if let Some((cs, ss)) = user {
            iret_regs(&mut s.regs, &frame);
            s.sregs.cs = cs;
            s.sregs.ss = ss;
            vcpu.set_sync_dirty_reg(SyncReg::Register);
            vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
            space.counters.vmm_irets += 1;
            return Ok(Assist::BackedAndReturned);
        }
        s.regs.rip = done;
        vcpu.set_sync_dirty_reg(SyncReg::Register);
    } else {
        let mut regs = vcpu.get_regs()?;
        regs.rip = done;
        vcpu.set_regs(&regs)?;
    }
    Ok(Assist::Backed)
}

/// The iretq's effect on the GPRs: pop the error code and the frame.
fn iret_regs(regs: &mut kvm_regs, f: &Frame) {
    regs.rip = f.rip;
    regs.rsp = f.rsp;
    regs.rflags = (f.rflags & RFLAGS_LOADABLE) | RFLAGS_FIXED;
}

/// CS and SS for an iretq to CPL 3, if the frame returns to CPL 3 through valid user
/// descriptors of the guest's GDT (`base`, `limit` in bytes − 1); `None` leaves the iretq to
/// the guest, which takes whatever fault the CPU would raise.
fn user_segments(
    space: &AddressSpace,
    base: u64,
    limit: u32,
    f: &Frame,
) -> Option<(kvm_segment, kvm_segment)> {
    if f.cs & 3 != 3 || f.ss & 3 != 3 || f.cs > 0xffff || f.ss > 0xffff {
        return None;
    }
    if !is_canonical(f.rip) || !is_canonical(f.rsp) {
        return None;
    }
    let cs = descriptor(space, base, limit, f.cs as u16)?;
    let ss = descriptor(space, base, limit, f.ss as u16)?;
    let code64 = cs.type_ & 0x8 != 0 && cs.l == 1 && cs.db == 0;
    let data_rw = ss.type_ & 0xa == 0x2;
    (code64 && data_rw && cs.dpl == 3 && ss.dpl == 3).then_some((cs, ss))
}

/// The segment-register cache KVM wants for selector `sel` of the GDT at `base`: present,
/// non-system descriptors only (Intel SDM Vol. 3A §3.4.5, segment descriptor layout).
fn descriptor(space: &AddressSpace, base: u64, limit: u32, sel: u16) -> Option<kvm_segment> {
    let index = u64::from(sel & !7);
    if sel & 4 != 0 || index == 0 || index + 7 > u64::from(limit) {
        return None;
    }
    let d = space.read_gva_u64(base.checked_add(index)?).ok()?;
    let seg = crate::boot::gdt::decode_descriptor(d, sel);
    (seg.present == 1 && seg.s == 1).then_some(seg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A KVM-free address space (`invariants::tests::space`) with this GDT in the last 64
    /// bytes of the kernel image's writable segment; returns it and the GDT's GVA.
    fn with_gdt(gdt: [u64; 8]) -> (AddressSpace, u64) {
        let space = crate::invariants::tests::space();
        let seg = space
            .kernel
            .segments
            .iter()
            .find(|s| s.write && !s.exec)
            .copied()
            .expect("the kernel has a writable segment");
        let end = (seg.gpa + seg.memsz) & !0xfff;
        let base = seg.gva + (end - 64 - seg.gpa);
        let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
        space.write_gva(base, &bytes).expect("GDT bytes");
        (space, base)
    }

    const GDT: [u64; 8] = [
        0,                     // 0x00 null
        0x00af_9b00_0000_ffff, // 0x08 kernel code, 64-bit
        0x00cf_9300_0000_ffff, // 0x10 kernel data
        0x00cf_f300_0000_ffff, // 0x18 user data, DPL 3
        0x00af_fb00_0000_ffff, // 0x20 user code, 64-bit, DPL 3
        0x00af_7b00_0000_ffff, // 0x28 user code, not present
        0x0000_e900_0000_0067, // 0x30 a TSS (system descriptor), DPL 3
        0x00cf_fb00_0000_ffff, // 0x38 user code, 32-bit (L=0, D=1), DPL 3
    ];

    fn frame(cs: u64, ss: u64) -> Frame {
        Frame {
            error_code: 6,
            rip: 0x40_1000,
            cs,
            rflags: 0x202,
            rsp: 0x7fff_f000,
            ss,
        }
    }

    #[test]
    fn descriptors_decode_as_the_sdm_lays_them_out() {
        let (space, base) = with_gdt(GDT);
        let s = &space;
        let cs = descriptor(s, base, 63, 0x23).expect("user code");
        assert_eq!(
            (
                cs.base,
                cs.limit,
                cs.selector,
                cs.type_,
                cs.s,
                cs.dpl,
                cs.present
            ),
            (0, 0xffff_ffff, 0x23, 0xb, 1, 3, 1)
        );
        assert_eq!((cs.l, cs.db, cs.g, cs.avl), (1, 0, 1, 0));
        let ss = descriptor(s, base, 63, 0x1b).expect("user data");
        assert_eq!((ss.type_, ss.dpl, ss.l, ss.db, ss.g), (0x3, 3, 0, 1, 1));
        assert_eq!(descriptor(s, base, 63, 0x2b), None, "not present");
        assert_eq!(descriptor(s, base, 63, 0x33), None, "system descriptor");
        assert_eq!(descriptor(s, base, 63, 0x03), None, "null selector");
        assert_eq!(descriptor(s, base, 63, 0x27), None, "TI=1 (LDT)");
        assert_eq!(descriptor(s, base, 31, 0x23), None, "beyond the GDT limit");
        assert_eq!(
            descriptor(s, 1 << 47, 63, 0x23),
            None,
            "GDT base not mapped"
        );
    }

    #[test]
    fn the_vmm_iret_takes_only_valid_user_segments() {
        let (space, base) = with_gdt(GDT);
        let s = &space;
        let ok = user_segments(s, base, 63, &frame(0x23, 0x1b)).expect("valid return");
        assert_eq!((ok.0.selector, ok.1.selector), (0x23, 0x1b));
        for (cs, ss, why) in [
            (0x20, 0x1b, "CS RPL 0"),
            (0x23, 0x18, "SS RPL 0"),
            (0x0b, 0x1b, "DPL 0 code"),
            (0x23, 0x13, "DPL 0 data"),
            (0x3b, 0x1b, "32-bit code"),
            (0x23, 0x23, "code segment as SS"),
            (0x2b, 0x1b, "not present"),
            (0x1_0023, 0x1b, "selector wider than 16 bits"),
        ] {
            assert_eq!(user_segments(s, base, 63, &frame(cs, ss)), None, "{why}");
        }
        let mut f = frame(0x23, 0x1b);
        f.rip = 0x8000_0000_0000;
        assert_eq!(user_segments(s, base, 63, &f), None, "non-canonical RIP");
    }

    #[test]
    fn rflags_mask_is_the_architectural_set() {
        // CF PF AF ZF SF TF IF DF OF IOPL(2) NT RF AC ID.
        let bits = [0, 2, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 18, 21];
        assert_eq!(bits.iter().map(|b| 1u64 << b).sum::<u64>(), RFLAGS_LOADABLE);
        let mut r = kvm_regs::default();
        let f = Frame {
            error_code: 6,
            rip: 0x40_1000,
            cs: 0x23,
            rflags: u64::MAX,
            rsp: 0x7fff_f000,
            ss: 0x1b,
        };
        iret_regs(&mut r, &f);
        assert_eq!((r.rip, r.rsp), (0x40_1000, 0x7fff_f000));
        assert_eq!(r.rflags, RFLAGS_LOADABLE | 2);
        assert_eq!(
            r.rflags & (1 << 17 | 1 << 19 | 1 << 20),
            0,
            "VM VIF VIP stay clear"
        );
    }
}
