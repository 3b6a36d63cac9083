//! Crash path: a stack overflow into the boot stack's guard page, caught as #DF on its IST
//! stack.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "stack overflow into the guard page: #DF on its IST stack";

/// Kernel entry: point RSP just above the boot stack's guard page and push: the push faults
/// (#PF), the #PF frame cannot be pushed on the same stack, so the CPU raises #DF, which runs
/// on IST1.
pub fn run() -> u32 {
    let guard_top = crate::boot().stack[0];
    // SAFETY: deliberately overflows the stack; the #DF handler reports and stops the VM, so
    // execution never returns here.
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "push rax",
            "push rax",
            "ud2",
            top = in(reg) guard_top + 8,
            options(noreturn)
        );
    }
}
