//! Crash path: spin forever; the VMM's watchdog (`--timeout`) must stop the vCPU.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "spin forever; --timeout stops the vCPU";

/// Kernel entry: never returns.
pub fn run() -> u32 {
    spin()
}

/// Spin forever (also the hostile scenario's "kernel text never executed" address).
pub fn spin() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
