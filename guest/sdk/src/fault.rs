//! Exceptions the program expects: [`expect_fault`] / [`try_fault`] run a closure and return
//! the exception it raised (a setjmp/longjmp pair in assembly), [`install`] puts a handler on
//! one vector, and [`in_ring0`] runs a closure at CPL 0 from ring 3.
//!
//! Order in which an exception is offered (see `idt::dispatch`): the ring-3 services of
//! [`crate::user`], the exception table of [`crate::probe`] (#PF), the #PF hook
//! ([`crate::probe::set_hook`]), a handler [`install`]ed for the vector, an armed
//! [`try_fault`]; anything left is an unexpected exception: a `FAULT` ucall (vector, error
//! code, CR2, RIP) that ends the run (the host sees `Exit::Fault`).

use crate::idt::TrapFrame;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// An exception the program caught: Intel SDM Vol. 3A §6.3 (vectors), §4.7 (#PF error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Exception vector (14 = #PF, 13 = #GP, 6 = #UD, ...).
    pub vector: u64,
    /// The error code the CPU pushed (0 for vectors without one).
    pub error_code: u64,
    /// CR2 (the faulting linear address) for #PF, else 0.
    pub cr2: u64,
    /// RIP of the faulting instruction.
    pub rip: u64,
}

/// A handler for one vector: return true if it handled the exception (the frame, which it may
/// edit, is resumed), false to pass it on.
pub type Handler = fn(&mut TrapFrame) -> bool;

static HANDLERS: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];

/// Install (`Some`) or remove (`None`) the handler of exception `vector` (0..32; others are
/// ignored). #PF handlers see only faults the host did not serve (demand paging) and no probe
/// claimed.
pub fn install(vector: u8, h: Option<Handler>) {
    if let Some(slot) = HANDLERS.get(vector as usize) {
        slot.store(h.map_or(0, |f| f as usize), Ordering::SeqCst);
    }
}

/// `[saved rsp, armed, cpl]` of the innermost active [`try_fault`].
#[no_mangle]
static SDK_TRY_BUF: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static LAST: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

core::arch::global_asm!(
    // rdi = fn, rsi = arg. Returns rax = value, rdx = 1 if an exception landed.
    ".global sdk_try_call",
    "sdk_try_call:",
    "    push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "    sub rsp, 8",
    "    mov [rip + {buf}], rsp",
    "    mov qword ptr [rip + {buf} + 8], 1",
    "    mov rax, rdi",
    "    mov rdi, rsi",
    "    call rax",
    "    mov qword ptr [rip + {buf} + 8], 0",
    "    xor edx, edx",
    "    jmp 2f",
    ".global sdk_try_landing",
    "sdk_try_landing:",
    "    xor eax, eax",
    "    mov edx, 1",
    "2:  add rsp, 8",
    "    pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "    ret",
    buf = sym SDK_TRY_BUF,
);

#[repr(C)]
struct TryResult {
    value: u64,
    faulted: u64,
}

extern "C" {
    fn sdk_try_call(f: extern "C" fn(u64) -> u64, arg: u64) -> TryResult;
    static sdk_try_landing: u8;
}

extern "C" fn call_once<F: FnOnce()>(arg: u64) -> u64 {
    // SAFETY: `arg` is the address of the `Option<F>` in `try_fault`'s frame, alive for the
    // whole call; it is taken exactly once.
    let slot = unsafe { &mut *(arg as *mut Option<F>) };
    if let Some(f) = slot.take() {
        f();
    }
    0
}

/// Run `f`; if it raises an exception no earlier handler claims, return it (the rest of `f`
/// does not run, and what `f` owned is not dropped: keep such closures to plain accesses).
/// Works at CPL 3 and CPL 0; nests.
pub fn try_fault<F: FnOnce()>(f: F) -> Option<Fault> {
    let mut slot = Some(f);
    let saved: [u64; 3] = core::array::from_fn(|i| SDK_TRY_BUF[i].load(Ordering::SeqCst));
    SDK_TRY_BUF[2].store(crate::user::cpl() as u64, Ordering::SeqCst);
    // SAFETY: sdk_try_call saves the callee-saved registers and RSP, calls `call_once`, and
    // comes back either normally or through the landing pad, where `on_exception` restored
    // RSP to the saved value and the pad pops the saved registers.
    let r = unsafe { sdk_try_call(call_once::<F>, &mut slot as *mut Option<F> as u64) };
    for (i, v) in saved.iter().enumerate() {
        SDK_TRY_BUF[i].store(*v, Ordering::SeqCst);
    }
    (r.faulted != 0).then(|| Fault {
        vector: LAST[0].load(Ordering::SeqCst),
        error_code: LAST[1].load(Ordering::SeqCst),
        cr2: LAST[2].load(Ordering::SeqCst),
        rip: LAST[3].load(Ordering::SeqCst),
    })
}

/// Run `f` and return the exception it raised; if it raised none, the run ends with a failed
/// assertion (`Ucall(Assert)`) naming the caller.
#[track_caller]
pub fn expect_fault<F: FnOnce()>(f: F) -> Fault {
    match try_fault(f) {
        Some(fault) => fault,
        None => {
            let at = core::panic::Location::caller();
            crate::ucall::assert_failed(
                at.file(),
                at.line(),
                "expected an exception, none was raised",
                &[],
            )
        }
    }
}

/// Offer an exception to the installed handler and the armed [`try_fault`]; true if taken.
pub(crate) fn on_exception(f: &mut TrapFrame, cr2: u64) -> bool {
    if let Some(slot) = HANDLERS.get(f.vector as usize) {
        let h = slot.load(Ordering::SeqCst);
        if h != 0 {
            // SAFETY: a slot holds 0 or a value stored from a `Handler` fn pointer.
            let h: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
            if h(f) {
                return true;
            }
        }
    }
    if SDK_TRY_BUF[1].load(Ordering::SeqCst) == 0
        || SDK_TRY_BUF[2].load(Ordering::SeqCst) != f.cs & 3
    {
        return false;
    }
    let cr2 = if f.vector == 14 { cr2 } else { 0 };
    for (slot, v) in LAST.iter().zip([f.vector, f.error_code, cr2, f.rip]) {
        slot.store(v, Ordering::SeqCst);
    }
    crate::idt::report(f.vector, f.error_code, cr2, f.rip, true);
    SDK_TRY_BUF[1].store(0, Ordering::SeqCst);
    f.rip = core::ptr::addr_of!(sdk_try_landing) as u64;
    f.rsp = SDK_TRY_BUF[0].load(Ordering::SeqCst);
    true
}

/// Run `f` at CPL 0 and return its result: directly when already at CPL 0, else through the
/// ring-3 service of [`crate::user`] (a trapping `hlt`; `f` then runs inside the #GP handler
/// on the kernel stack). On a PVM host every CPL 0 instruction is emulated: keep `f` short.
pub fn in_ring0<R: Copy + Default, F: FnOnce() -> R>(f: F) -> R {
    let mut slot = (Some(f), R::default());
    extern "C" fn run<R: Copy + Default, F: FnOnce() -> R>(arg: u64) -> u64 {
        // SAFETY: `arg` is the address of `slot` in `in_ring0`'s frame, alive for the call.
        let s = unsafe { &mut *(arg as *mut (Option<F>, R)) };
        if let Some(f) = s.0.take() {
            s.1 = f();
        }
        0
    }
    let arg = &mut slot as *mut (Option<F>, R) as u64;
    if crate::user::cpl() == 0 {
        run::<R, F>(arg);
    } else {
        crate::user::call_in_ring0(run::<R, F>, arg);
    }
    slot.1
}
