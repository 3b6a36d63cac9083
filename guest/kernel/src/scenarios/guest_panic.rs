//! Crash path: the guest panics; the VMM reports the message and fails the run.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "the guest panics; the VMM reports the message and fails";

/// Kernel entry: panics with a recognisable message.
pub fn run() -> u32 {
    panic!("guest-panic scenario: deliberate panic with code {}", 42);
}
