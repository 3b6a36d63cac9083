//! Boot only: the time to a running kernel (`memvisor bench`'s boot figures).

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "exit 0 as soon as the kernel is up (boot-time measurement)";

/// Kernel entry: exit 0 at once.
pub fn run() -> u32 {
    0
}
