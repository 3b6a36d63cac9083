//! Crash-path scenarios: each ends the run in a way the VMM must report (never hang).

use crate::boot;

/// Spin forever; the VMM's watchdog must stop us.
pub fn runaway() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Panic with a recognisable message.
pub fn guest_panic() -> ! {
    panic!("guest-panic scenario: deliberate panic with code {}", 42);
}

/// Load an IDT with limit 0 and execute `ud2`: #UD cannot be delivered (#GP), nor can #GP
/// (#DF), nor #DF: a triple fault, which KVM reports as KVM_EXIT_SHUTDOWN.
pub fn triple_fault() -> ! {
    let idtr = x86_64::structures::DescriptorTablePointer {
        limit: 0,
        base: x86_64::VirtAddr::new(0),
    };
    // SAFETY: deliberately breaks exception delivery; the next instruction ends the VM.
    unsafe {
        x86_64::instructions::tables::lidt(&idtr);
        core::arch::asm!("ud2", options(noreturn));
    }
}

/// Point RSP just above the boot stack's guard page and push: the push faults (#PF), the
/// #PF frame cannot be pushed on the same stack, so the CPU raises #DF, which runs on IST1.
pub fn double_fault() -> ! {
    let guard_top = boot().stack[0];
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
