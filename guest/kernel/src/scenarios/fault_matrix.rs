//! The #PF permission matrix (`memvisor run --scenario fault-matrix`), guest side.
//!
//! The host built the test page tables and a [`Plan`] of passes (its GVA is `BootInfo.arg[0]`).
//! A pass probes every record's VA once with one access (read, write, fetch) at one CPL in
//! one mode (CR0.WP, EFER.NXE, and CR4.SMEP / SMAP / PKE + PKRU where the host asks for
//! them). The guest does not judge anything: the host compares each record with its SDM
//! oracle.
//!
//! Per pass: one `MatrixSync` hypercall (the host snapshots the test leaves of the pass that
//! ended, clears their A/D bits and flushes KVM's shadow pages), the mode set at CPL 0, then
//! the probe loop, at CPL 0 directly or at CPL 3 through [`crate::user::run`]. No exit per
//! case: a probe that faults is caught by `matrix_pf`, a 5-instruction #PF handler installed
//! in IDT vector 14 for the loop's duration (every CPL 0 instruction is emulated on a PVM
//! host, so the handler is kept minimal). Records are `[va, cr2, error_code]`; the host
//! prefilled `cr2` and `error_code` with `NOT_FAULTED`, so a probe that does not fault costs
//! no store at all.
//!
//! Loop registers: `rbx` = current record, `rcx` = records left, `r12` = where a faulting
//! probe resumes. The handler stores the error code and CR2 into the record and returns to
//! `r12`: `matrix_pf` with iretq for CPL 3 passes, `matrix_pf0` for CPL 0 passes by
//! dropping the frame and jumping (no emulated iretq; the loop needs no flags). An instruction
//! fetch probe is a `call` to the VA (the test data frame is all `0xC3`, `ret`): when the
//! fetch faults the return address is already on the stack, so its resume label pops it.
//!
//! CR4.SMEP / SMAP passes: the kernel runs from US=1 pages, which CPL 0 may not execute with
//! SMEP set (nor, with SMAP, may the CPU read the US=1 GDT / IDT). The probe code above lives
//! in one page-aligned section that the host maps a second time, supervisor-only, at
//! `MATRIX_TRAMP_GVA` for such plans; [`tramp_pass`] points the #PF (and, at CPL 3, #GP)
//! gates at that alias and calls `matrix_tramp0` / `matrix_tramp3` there, which set CR4
//! for the pass and put it back before anything runs from US=1 pages again. SMAP passes
//! also load GDTR / IDTR with the host's US=0 read-only alias of the kernel data; at CPL 3
//! TR too (the TSS through that alias: the ring switch reads TSS.RSP0). CPL 0 SMAP passes
//! use the US=0 alias of the records (the plan's `records` already points there); CPL 3
//! ones read the US=1 records in ring 3 and their #PF handler writes the alias.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "the #PF permission matrix: P/RW/US/NX at every level x r/w/x x CPL 0/3 x WP x NXE (+ SMEP, SMAP, PKU, 1 GiB variants where CPUID has them), checked against the SDM (--cases-out FILE)";

use crate::idt::{USER_CS, USER_DS};
use x86_64::registers::segmentation::{Segment, ES};
use x86_64::structures::gdt::SegmentSelector;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;
use crate::{boot, hc, println};
use core::sync::atomic::{AtomicU64, Ordering};
use memvisor_abi::matrix::{self, Pass, Plan};
use memvisor_abi::Call;

core::arch::global_asm!(
    // The probe code, in its own page-aligned section: the host maps these pages a second
    // time, supervisor-only, at MATRIX_TRAMP_GVA for the CR4.SMEP / SMAP passes (where a CPL 0
    // fetch from the kernel's US=1 text would fault). Position-independent (rip-relative
    // labels only), so it runs from either address.
    ".pushsection .text.memvisor_matrix_tramp, \"ax\"",
    ".balign 4096",
    ".global memvisor_matrix_tramp_start",
    "memvisor_matrix_tramp_start:",
    // #PF during a matrix pass. Stack: [rsp] = error code, then rip, cs, rflags, rsp, ss.
    ".global matrix_pf",
    "matrix_pf:",
    "    pop qword ptr [rbx + 16]",
    "    mov rax, cr2",
    "    mov [rbx + 8], rax",
    "    mov [rsp], r12",
    "    iretq",
    // The same for a CPL 3 pass run from the alias: the record is written at rbx + r13
    // (r13 = records alias - records, set by matrix_tramp3: under CR4.SMAP with RFLAGS.AC = 0
    // this CPL 0 handler may not write the US=1 records the ring-3 loop reads).
    ".global matrix_pf3a",
    "matrix_pf3a:",
    "    pop qword ptr [rbx + r13 + 16]",
    "    mov rax, cr2",
    "    mov [rbx + r13 + 8], rax",
    "    mov [rsp], r12",
    "    iretq",
    // The same for a pass at CPL 0: no privilege change, so the frame's RSP is the probe
    // loop's stack; drop the frame and jump back without an (emulated) iretq.
    ".global matrix_pf0",
    "matrix_pf0:",
    "    pop qword ptr [rbx + 16]",
    "    mov rax, cr2",
    "    mov [rbx + 8], rax",
    "    mov rsp, [rsp + 24]",
    "    jmp r12",
    // Probe loops: rdi = first record, rsi = count (> 0). Clobber rax, rcx, rdi.
    ".global matrix_loop_read",
    "matrix_loop_read:",
    "    push rbx",
    "    push r12",
    "    mov rbx, rdi",
    "    mov rcx, rsi",
    "    lea r12, [rip + 2f]",
    "1:  mov rdi, [rbx]",
    "    mov al, byte ptr [rdi]",
    "2:  add rbx, 24",
    "    loop 1b",
    "    pop r12",
    "    pop rbx",
    "    ret",
    ".global matrix_loop_write",
    "matrix_loop_write:",
    "    push rbx",
    "    push r12",
    "    mov rbx, rdi",
    "    mov rcx, rsi",
    "    lea r12, [rip + 2f]",
    "1:  mov rdi, [rbx]",
    "    mov byte ptr [rdi], 0xc3",
    "2:  add rbx, 24",
    "    loop 1b",
    "    pop r12",
    "    pop rbx",
    "    ret",
    ".global matrix_loop_exec",
    "matrix_loop_exec:",
    "    push rbx",
    "    push r12",
    "    mov rbx, rdi",
    "    mov rcx, rsi",
    "    lea r12, [rip + 3f]",
    "1:  mov rdi, [rbx]",
    "    call rdi",
    "    jmp 2f",
    // The fetch faulted: drop the return address `call` pushed.
    "3:  add rsp, 8",
    "2:  add rbx, 24",
    "    loop 1b",
    "    pop r12",
    "    pop rbx",
    "    ret",
    // Implicit supervisor reads: each record's VA holds a segment descriptor that LDTR's
    // LDT (based at the VA's 64 KiB-aligned base, loaded by desc_pass) reaches with the
    // selector (va & 0xffff) | 7; `mov es` reads it. ES is null again at the end.
    ".global matrix_loop_desc",
    "matrix_loop_desc:",
    "    push rbx",
    "    push r12",
    "    mov rbx, rdi",
    "    mov rcx, rsi",
    "    lea r12, [rip + 2f]",
    "1:  mov rdi, [rbx]",
    "    or edi, 7",
    "    mov es, di",
    "2:  add rbx, 24",
    "    loop 1b",
    "    xor eax, eax",
    "    mov es, ax",
    "    pop r12",
    "    pop rbx",
    "    ret",
    // A CPL 0 pass run from the alias: rdi = &Tramp. Sets CR4 for the pass, runs the loop
    // (its alias address), puts CR4 back before returning to the US=1 caller.
    ".global matrix_tramp0",
    // With Tramp.ac set (a CR4.SMAP pass with RFLAGS.AC = 1) the loop runs between stac and
    // clac (only then: both are #UD without SMAP).
    "matrix_tramp0:",
    "    push rbx",
    "    mov rax, cr4",
    "    push rax",
    "    mov rbx, [rdi + 56]",
    "    mov rax, [rdi + 16]",
    "    mov rcx, [rdi + 24]",
    "    mov rsi, [rdi + 8]",
    "    mov rdi, [rdi]",
    "    mov cr4, rax",
    "    test rbx, rbx",
    "    jz 4f",
    "    stac",
    "4:  call rcx",
    "    test rbx, rbx",
    "    jz 5f",
    "    clac",
    "5:  pop rax",
    "    mov cr4, rax",
    "    pop rbx",
    "    ret",
    // A CPL 3 pass entered from the alias: rdi = &Tramp. Saves the callee-saved registers
    // and CR4, points TSS.RSP0 below them (the saved RSP stored at RSP0 itself, above any
    // exception frame), sets CR4 for the pass and iretqs to the loop (its US=1 address) on
    // the user stack with `matrix_user_exit` as its return address, RFLAGS = Tramp.rflags
    // (AC for CR4.SMAP passes) and r13 = Tramp.records_delta (for matrix_pf3a).
    ".global matrix_tramp3",
    "matrix_tramp3:",
    "    push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "    mov rax, cr4",
    "    push rax",
    "    mov r8, [rdi + 32]",
    "    lea rax, [rsp - 64]",
    "    and rax, -16",
    "    mov [r8], rax",
    "    mov [rax], rsp",
    "    mov r9, [rdi + 40]",
    "    mov r10, [rdi + 48]",
    "    sub r9, 8",
    "    mov [r9], r10",
    "    mov r11, [rdi + 72]",
    "    mov r13, [rdi + 64]",
    "    mov rax, [rdi + 16]",
    "    mov rcx, [rdi + 24]",
    "    mov rsi, [rdi + 8]",
    "    mov rdi, [rdi]",
    "    mov cr4, rax",
    "    push {uds}",
    "    push r9",
    "    push r11",
    "    push {ucs}",
    "    push rcx",
    "    iretq",
    // Ring 3, after the loop returned: hlt traps (#GP) into matrix_gp3.
    ".global matrix_user_exit",
    "matrix_user_exit:",
    "    hlt",
    "    ud2",
    // #GP gate during a CPL 3 tramp pass: the frame (error code + 5 words) lies just below
    // TSS.RSP0, whose slot holds matrix_tramp3's RSP. Restore CR4 and the registers, return.
    ".global matrix_gp3",
    "matrix_gp3:",
    "    add rsp, 48",
    "    mov rsp, [rsp]",
    "    pop rax",
    "    mov cr4, rax",
    "    pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "    ret",
    ".global memvisor_matrix_tramp_end",
    "memvisor_matrix_tramp_end:",
    ".popsection",
    uds = const USER_DS as u64 | 3,
    ucs = const USER_CS as u64 | 3,
);

extern "C" {
    static memvisor_matrix_tramp_start: u8;
    fn matrix_tramp0();
    fn matrix_tramp3();
    fn matrix_user_exit();
    fn matrix_gp3();
    fn matrix_pf();
    fn matrix_pf3a();
    fn matrix_pf0();
    fn matrix_loop_read(records: u64, count: u64);
    fn matrix_loop_write(records: u64, count: u64);
    fn matrix_loop_exec(records: u64, count: u64);
    fn matrix_loop_desc(records: u64, count: u64);
}

/// IDT vector 14 as it was before a pass (low, high quadwords).
static SAVED_PF_GATE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// IDT vector 13 as it was before a CPL 3 tramp pass.
static SAVED_GP_GATE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

const VEC_GP: u64 = 13;
const VEC_PF: u64 = 14;

/// Address of the IDT's 16-byte gate for `vector`.
fn gate(vector: u64) -> *mut u64 {
    let idtr = x86_64::instructions::tables::sidt();
    (idtr.base.as_u64() + vector * 16) as *mut u64
}

/// Point IDT `vector` at `h` (same selector, type and IST as the current gate), saving the
/// old gate in `saved`.
fn install_gate(vector: u64, h: u64, saved: &[AtomicU64; 2]) {
    let gate = gate(vector);
    // SAFETY: CPL 0, one vCPU; the IDT lives in the kernel's writable .bss and `gate` is its
    // entry (IDTR from sidt). Only the offset fields change; no exception can be delivered
    // while the two stores are half done because nothing here touches unmapped memory.
    unsafe {
        let low = core::ptr::read_volatile(gate);
        let high = core::ptr::read_volatile(gate.add(1));
        saved[0].store(low, Ordering::Relaxed);
        saved[1].store(high, Ordering::Relaxed);
        let new_low = (low & 0x0000_ffff_ffff_0000) | (h & 0xffff) | ((h >> 16) & 0xffff) << 48;
        core::ptr::write_volatile(gate, new_low);
        core::ptr::write_volatile(gate.add(1), h >> 32);
    }
}

/// Put back a gate saved by [`install_gate`].
fn restore_gate(vector: u64, saved: &[AtomicU64; 2]) {
    let gate = gate(vector);
    // SAFETY: as in install_gate.
    unsafe {
        core::ptr::write_volatile(gate, saved[0].load(Ordering::Relaxed));
        core::ptr::write_volatile(gate.add(1), saved[1].load(Ordering::Relaxed));
    }
}

/// Point IDT vector 14 at `matrix_pf` (`matrix_pf0` for a CPL 0 pass), or at the
/// supervisor-only aliases of `matrix_pf3a` / `matrix_pf0` if `alias`.
fn install_handler(cpl: u32, alias: bool) {
    let h = match (cpl, alias) {
        (3, false) => matrix_pf as *const () as u64,
        (3, true) => matrix_pf3a as *const () as u64,
        _ => matrix_pf0 as *const () as u64,
    };
    install_gate(VEC_PF, if alias { tramp_alias(h) } else { h }, &SAVED_PF_GATE);
}

/// Put back the gate saved by [`install_handler`].
fn restore_handler() {
    restore_gate(VEC_PF, &SAVED_PF_GATE);
}

/// The supervisor-only alias (at [`memvisor_abi::layout::MATRIX_TRAMP_GVA`], mapped by the
/// host for passes that need it) of the probe-code address `a`.
fn tramp_alias(a: u64) -> u64 {
    let start = core::ptr::addr_of!(memvisor_matrix_tramp_start) as u64;
    memvisor_abi::layout::MATRIX_TRAMP_GVA + (a - start)
}

/// What `matrix_tramp0` / `matrix_tramp3` read (offsets fixed in their assembly).
#[repr(C)]
struct Tramp {
    records: u64,
    count: u64,
    /// CR4 for the pass.
    cr4: u64,
    /// The probe loop: its alias for CPL 0, its US=1 address for CPL 3.
    probe: u64,
    /// &TSS.RSP0 (CPL 3).
    rsp0_slot: u64,
    /// Top of the ring-3 stack (CPL 3).
    user_stack: u64,
    /// `matrix_user_exit` (US=1; CPL 3).
    user_exit: u64,
    /// Non-zero: RFLAGS.AC = 1 around the probe loop (CPL 0, CR4.SMAP).
    ac: u64,
    /// Records alias - records (CPL 3: where matrix_pf3a writes; 0 without SMAP).
    records_delta: u64,
    /// RFLAGS of the ring-3 loop (CPL 3): bit 1, and AC (bit 18) for RFLAGS.AC = 1 passes.
    rflags: u64,
}

/// The supervisor-only, read-only alias of the kernel data byte at `a` (its writable
/// segments, mapped by the host at `MATRIX_KDATA_ALIAS_GVA` + GPA for the SMAP passes).
fn kdata_alias(a: u64) -> u64 {
    memvisor_abi::layout::MATRIX_KDATA_ALIAS_GVA + (a - memvisor_abi::layout::KERNEL_VIRT_OFFSET)
}

/// Load GDTR and IDTR with `gdt` and `idt`.
fn load_tables(gdt: DescriptorTablePointer, idt: DescriptorTablePointer) {
    // SAFETY: both describe the kernel's own GDT and IDT, at their addresses or at their
    // supervisor-only aliases (the same frames, mapped by the host while the matrix runs);
    // the segment registers' cached descriptors do not change.
    unsafe {
        x86_64::instructions::tables::lgdt(&gdt);
        x86_64::instructions::tables::lidt(&idt);
    }
}

/// Run pass `p`, whose CR4 bits (SMEP / SMAP) forbid CPL 0 to execute the kernel's US=1
/// text, through the supervisor-only alias: CR4 is set and put back there, and every
/// CPL 0 instruction in between (probe loop, #PF and #GP handlers) runs from the alias.
///
/// Under CR4.SMAP every structure the CPU reads implicitly (as a supervisor, SDM Vol. 3A
/// §4.6.1) while the pass runs is on a US=0 page: GDTR and IDTR hold the host's read-only
/// US=0 alias of the kernel data, and for CPL 3 TR holds [`crate::idt::ALIAS_TSS`], the
/// kernel's TSS seen through that alias (the ring switch of each #PF / #GP reads TSS.RSP0;
/// the RSP0 stack is the US=0 boot stack). `ltr` writes the descriptor's busy bit, so it
/// runs while GDTR is still the kernel's own writable GDT, and TR is put back after.
fn tramp_pass(p: &Pass, cr4: u64) {
    let lp = match p.access {
        matrix::ACCESS_READ => matrix_loop_read as *const () as u64,
        matrix::ACCESS_WRITE => matrix_loop_write as *const () as u64,
        matrix::ACCESS_DESC => matrix_loop_desc as *const () as u64,
        _ => matrix_loop_exec as *const () as u64,
    };
    if p.count == 0 {
        return;
    }
    let smap = p.mode & matrix::MODE_SMAP != 0;
    let ac = p.mode & matrix::MODE_AC != 0;
    let mut t = Tramp {
        records: p.records,
        count: p.count,
        cr4,
        probe: tramp_alias(lp),
        rsp0_slot: crate::idt::tss_rsp0_slot() as u64,
        user_stack: boot().user_stack[1] & !0xf,
        user_exit: matrix_user_exit as *const () as u64,
        ac: u64::from(ac),
        records_delta: if smap {
            memvisor_abi::layout::MATRIX_BUF_ALIAS_GVA
                .wrapping_sub(memvisor_abi::layout::MATRIX_BUF_GVA)
        } else {
            0
        },
        rflags: 0x2 | u64::from(ac) << 18,
    };
    // Gates first: sidt must still give the kernel's writable IDT.
    install_handler(p.cpl, true);
    if p.cpl == 3 {
        install_gate(
            VEC_GP,
            tramp_alias(matrix_gp3 as *const () as u64),
            &SAVED_GP_GATE,
        );
    }
    let (gdt, idt) = (
        x86_64::instructions::tables::sgdt(),
        x86_64::instructions::tables::sidt(),
    );
    if smap {
        if p.cpl == 3 {
            // SAFETY: GDTR is the kernel GDT; the host mapped the kernel-data alias (which
            // holds the TSS) for this plan and keeps it until the last pass; TR goes back
            // below, before anything else can deliver an exception from ring 3.
            unsafe { crate::idt::load_tr_at(kdata_alias(crate::idt::tss_base())) };
        }
        let alias = |t: DescriptorTablePointer| DescriptorTablePointer {
            limit: t.limit,
            base: VirtAddr::new_truncate(kdata_alias(t.base.as_u64())),
        };
        load_tables(alias(gdt), alias(idt));
    }
    if p.cpl == 3 {
        t.probe = lp;
        // SAFETY: the host mapped the alias (US=0, executable) of the tramp section; the
        // #PF and #GP gates point into it, the ring-3 stack and records are mapped US=1, and
        // matrix_gp3 comes back here with the callee-saved registers and CR4 restored.
        unsafe {
            let f: extern "C" fn(*const Tramp) =
                core::mem::transmute(tramp_alias(matrix_tramp3 as *const () as u64) as usize);
            f(&t);
        }
    } else {
        // SAFETY: as above; matrix_tramp0 returns with CR4 restored before the first fetch
        // from the US=1 caller.
        unsafe {
            let f: extern "C" fn(*const Tramp) =
                core::mem::transmute(tramp_alias(matrix_tramp0 as *const () as u64) as usize);
            f(&t);
        }
    }
    if smap {
        load_tables(gdt, idt);
        if p.cpl == 3 {
            // SAFETY: GDTR is the kernel GDT again.
            unsafe { crate::idt::load_tr_kernel() };
        }
    }
    if p.cpl == 3 {
        restore_gate(VEC_GP, &SAVED_GP_GATE);
    }
    restore_handler();
}

const CR0_WP: u64 = 1 << 16;
const EFER: u32 = 0xc000_0080;
const EFER_NXE: u64 = 1 << 11;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const CR4_PKE: u64 = 1 << 22;

/// Control-register state to restore after the matrix.
#[derive(Clone, Copy)]
struct Regs {
    cr0: u64,
    cr4: u64,
    efer: u64,
}

fn read_regs() -> Regs {
    let (cr0, cr4): (u64, u64);
    // SAFETY: CPL 0 reads of CR0 / CR4 and of IA32_EFER (always present in long mode).
    unsafe {
        core::arch::asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags));
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags));
    }
    // SAFETY: as above.
    let efer = unsafe { x86_64::registers::model_specific::Msr::new(EFER).read() };
    Regs { cr0, cr4, efer }
}

fn write_regs(r: Regs) {
    // SAFETY: CPL 0. The host built every kernel mapping without NX for this scenario (so
    // EFER.NXE = 0 makes no kernel mapping reserved-bit faulting), WP only changes what
    // supervisor writes to read-only pages do, and CR4 bits are only set when the host's
    // plan asks for them (it does so only when the CPUID has the feature). The CR3 reload
    // flushes the TLB after the host's edits of the test tables.
    unsafe {
        core::arch::asm!("mov cr0, {}", in(reg) r.cr0, options(nostack, preserves_flags));
        core::arch::asm!("mov cr4, {}", in(reg) r.cr4, options(nostack, preserves_flags));
        x86_64::registers::model_specific::Msr::new(EFER).write(r.efer);
    }
    x86_64::instructions::tlb::flush_all();
}

fn set_bit(v: u64, bit: u64, on: bool) -> u64 {
    if on {
        v | bit
    } else {
        v & !bit
    }
}

/// Set CR0.WP, EFER.NXE, CR4.PKE and PKRU for `p`. Returns the CR4 of the pass, with
/// SMEP / SMAP, which only the tramp path ([`tramp_pass`]) loads.
fn apply_mode(base: Regs, p: &Pass) -> u64 {
    let on = |m: u32| p.mode & m != 0;
    let r = Regs {
        cr0: set_bit(base.cr0, CR0_WP, on(matrix::MODE_WP)),
        efer: set_bit(base.efer, EFER_NXE, on(matrix::MODE_NXE)),
        cr4: set_bit(base.cr4, CR4_PKE, on(matrix::MODE_PKE)),
    };
    write_regs(r);
    if on(matrix::MODE_PKE) {
        // SAFETY: CR4.PKE was just set; wrpkru with ecx = edx = 0 loads PKRU from eax. The
        // host's PKRU values only restrict protection keys its test leaves use (not key 0,
        // the kernel's).
        unsafe {
            core::arch::asm!("wrpkru", in("eax") p.pkru, in("ecx") 0u32, in("edx") 0u32,
                options(nostack, preserves_flags))
        };
    }
    set_bit(
        set_bit(r.cr4, CR4_SMEP, on(matrix::MODE_SMEP)),
        CR4_SMAP,
        on(matrix::MODE_SMAP),
    )
}

/// Run one pass's probe loop at the current CPL.
fn probe_loop(p: &Pass) {
    if p.count == 0 {
        return;
    }
    // SAFETY: the host mapped every record (US=1, RW) and built the test tables; each probe
    // either succeeds (the test data frame is all 0xC3: a write stores the byte already
    // there, a fetch executes `ret`) or faults into matrix_pf, which the caller installed.
    unsafe {
        match p.access {
            matrix::ACCESS_READ => matrix_loop_read(p.records, p.count),
            matrix::ACCESS_WRITE => matrix_loop_write(p.records, p.count),
            matrix::ACCESS_DESC => matrix_loop_desc(p.records, p.count),
            _ => matrix_loop_exec(p.records, p.count),
        }
    }
}

/// Ring-3 entry: `arg` is the address of the pass.
extern "C" fn user_pass(arg: u64) -> u64 {
    // SAFETY: `arg` is the address of USER_PASS (kernel .bss, mapped US=1), written by
    // `run_plan` before it entered ring 3 and not changed until this returns.
    let p = unsafe { core::ptr::read_volatile(arg as *const Pass) };
    probe_loop(&p);
    0
}

/// Ring-3 copy of the current pass (the kernel stack is supervisor-only; ring 3 reads this).
static mut USER_PASS: Pass = Pass {
    access: 0,
    cpl: 0,
    mode: 0,
    pkru: 0,
    records: 0,
    count: 0,
};

/// Run pass `p` (CR4 of the pass: `cr4`): through the alias if it sets SMEP or SMAP, else
/// at its CPL from the kernel's own text.
fn any_pass(p: &Pass, cr4: u64) {
    if p.mode & (matrix::MODE_SMEP | matrix::MODE_SMAP) != 0 {
        tramp_pass(p, cr4);
    } else if p.cpl == 3 {
        install_handler(p.cpl, false);
        // SAFETY: single vCPU; USER_PASS is written here, read by user_pass while this
        // function waits in user::run.
        unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!(USER_PASS), *p) };
        crate::user::run(user_pass, core::ptr::addr_of!(USER_PASS) as u64);
        restore_handler();
    } else {
        install_handler(p.cpl, false);
        probe_loop(p);
        restore_handler();
    }
}

/// An implicit-supervisor-read pass ([`matrix::ACCESS_DESC`]): the records are run in
/// groups that share a 64 KiB-aligned base; for each group LDTR is loaded (at CPL 0, with
/// the kernel's GDT) with an LDT at that base, limit 0xFFFF, and the group runs as a pass of
/// its own (`mov es` of each record's LDT selector). LDTR is null and ES the kernel data
/// segment again afterwards.
fn desc_pass(p: &Pass, cr4: u64) {
    let va = |i: u64| {
        // SAFETY: the host mapped every record (readable at CPL 0: the records or their
        // US=0 alias, CR4.SMAP not set here); `i` < p.count.
        unsafe { core::ptr::read_volatile((p.records + i * matrix::RECORD_BYTES) as *const u64) }
    };
    let mut i = 0;
    while i < p.count {
        let base = va(i) & !0xffff;
        let mut n = 1;
        while i + n < p.count && va(i + n) & !0xffff == base {
            n += 1;
        }
        // SAFETY: GDTR is the kernel GDT here (tramp_pass swaps it only inside); the LDT's
        // descriptors are read only by the probe loop's `mov es`, whose #PF the installed
        // handler catches.
        unsafe { crate::idt::load_ldt(Some((base, 0xffff))) };
        let group = Pass {
            records: p.records + i * matrix::RECORD_BYTES,
            count: n,
            ..*p
        };
        any_pass(&group, cr4);
        i += n;
    }
    // SAFETY: GDTR is the kernel GDT; the null selector loads no LDT.
    unsafe { crate::idt::load_ldt(None) };
    // SAFETY: the kernel data selector of the kernel GDT (what idt::init loaded into ES).
    unsafe { ES::set_reg(SegmentSelector(crate::idt::KERNEL_DS)) };
}

fn sync(ended: u64, next: u64) -> Result<(), &'static str> {
    hc::call(Call::MatrixSync, [ended, next, 0, 0, 0])
        .map(|_| ())
        .map_err(|_| "MatrixSync refused")
}

/// Kernel entry (CPL 0): run every pass of the host's plan. Returns the exit code.
pub fn run() -> u32 {
    match run_plan() {
        Ok(n) => {
            println!("guest: fault matrix: {} passes done", n);
            0
        }
        Err(e) => {
            println!("guest: fault matrix failed: {}", e);
            1
        }
    }
}

fn run_plan() -> Result<u64, &'static str> {
    let plan_gva = boot().arg[0];
    if plan_gva == 0 {
        return Err("no plan (BootInfo.arg[0] = 0)");
    }
    // SAFETY: the host wrote the plan at this GVA (mapped, readable); checked below.
    let plan = unsafe { core::ptr::read_volatile(plan_gva as *const Plan) };
    if plan.magic != matrix::PLAN_MAGIC || plan.passes as usize > matrix::MAX_PASSES {
        return Err("bad plan");
    }
    let base = read_regs();
    println!("guest: fault matrix: {} passes", plan.passes);
    let mut prev = matrix::NO_PASS;
    for (i, p) in plan.pass.iter().take(plan.passes as usize).enumerate() {
        sync(prev, i as u64)?;
        let cr4 = apply_mode(base, p);
        if p.access == matrix::ACCESS_DESC {
            desc_pass(p, cr4);
        } else {
            any_pass(p, cr4);
        }
        write_regs(base);
        prev = i as u64;
    }
    sync(prev, matrix::NO_PASS)?;
    Ok(plan.passes)
}
