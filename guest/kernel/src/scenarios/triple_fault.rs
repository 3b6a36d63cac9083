//! Crash path: a triple fault, which KVM reports as `KVM_EXIT_SHUTDOWN`.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "empty IDT + exception: KVM_EXIT_SHUTDOWN";

/// Kernel entry: load an IDT with limit 0 and execute `ud2`: #UD cannot be delivered (#GP),
/// nor can #GP (#DF), nor #DF: a triple fault.
pub fn run() -> u32 {
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
