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

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "the #PF permission matrix: P/RW/US/NX at every level x r/w/x x CPL 0/3 x WP x NXE, checked against the SDM (--cases-out FILE)";

use crate::{boot, hc, println};
use core::sync::atomic::{AtomicU64, Ordering};
use memvisor_abi::matrix::{self, Pass, Plan};
use memvisor_abi::Call;

core::arch::global_asm!(
    // #PF during a matrix pass. Stack: [rsp] = error code, then rip, cs, rflags, rsp, ss.
    ".global matrix_pf",
    "matrix_pf:",
    "    pop qword ptr [rbx + 16]",
    "    mov rax, cr2",
    "    mov [rbx + 8], rax",
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
);

extern "C" {
    fn matrix_pf();
    fn matrix_pf0();
    fn matrix_loop_read(records: u64, count: u64);
    fn matrix_loop_write(records: u64, count: u64);
    fn matrix_loop_exec(records: u64, count: u64);
}

/// IDT vector 14 as it was before a pass (low, high quadwords).
static SAVED_PF_GATE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Address of the IDT's 16-byte gate for #PF.
fn pf_gate() -> *mut u64 {
    let idtr = x86_64::instructions::tables::sidt();
    (idtr.base.as_u64() + 14 * 16) as *mut u64
}

/// Point IDT vector 14 at `matrix_pf` (`matrix_pf0` for a CPL 0 pass; same selector, type
/// and IST as the current gate).
fn install_handler(cpl: u32) {
    let gate = pf_gate();
    let h = if cpl == 3 {
        matrix_pf as *const () as u64
    } else {
        matrix_pf0 as *const () as u64
    };
    // SAFETY: CPL 0, one vCPU; the IDT lives in the kernel's writable .bss and `gate` is its
    // #PF entry (IDTR from sidt). Only the offset fields change; no #PF can be delivered while
    // the two stores are half done because nothing here touches unmapped memory.
    unsafe {
        let low = core::ptr::read_volatile(gate);
        let high = core::ptr::read_volatile(gate.add(1));
        SAVED_PF_GATE[0].store(low, Ordering::Relaxed);
        SAVED_PF_GATE[1].store(high, Ordering::Relaxed);
        let new_low = (low & 0x0000_ffff_ffff_0000) | (h & 0xffff) | ((h >> 16) & 0xffff) << 48;
        core::ptr::write_volatile(gate, new_low);
        core::ptr::write_volatile(gate.add(1), h >> 32);
    }
}

/// Put back the gate saved by [`install_handler`].
fn restore_handler() {
    let gate = pf_gate();
    // SAFETY: as in install_handler.
    unsafe {
        core::ptr::write_volatile(gate, SAVED_PF_GATE[0].load(Ordering::Relaxed));
        core::ptr::write_volatile(gate.add(1), SAVED_PF_GATE[1].load(Ordering::Relaxed));
    }
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

/// Set CR0.WP, EFER.NXE, CR4.SMEP / SMAP / PKE and PKRU for `p`.
fn apply_mode(base: Regs, p: &Pass) {
    let on = |m: u32| p.mode & m != 0;
    let r = Regs {
        cr0: set_bit(base.cr0, CR0_WP, on(matrix::MODE_WP)),
        efer: set_bit(base.efer, EFER_NXE, on(matrix::MODE_NXE)),
        cr4: set_bit(
            set_bit(
                set_bit(base.cr4, CR4_SMEP, on(matrix::MODE_SMEP)),
                CR4_SMAP,
                on(matrix::MODE_SMAP),
            ),
            CR4_PKE,
            on(matrix::MODE_PKE),
        ),
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
        apply_mode(base, p);
        install_handler(p.cpl);
        if p.cpl == 3 {
            // SAFETY: single vCPU; USER_PASS is written here, read by user_pass while this
            // function waits in user::run.
            unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!(USER_PASS), *p) };
            crate::user::run(user_pass, core::ptr::addr_of!(USER_PASS) as u64);
        } else {
            probe_loop(p);
        }
        restore_handler();
        write_regs(base);
        prev = i as u64;
    }
    sync(prev, matrix::NO_PASS)?;
    Ok(plan.passes)
}
