//! The hostile-guest scenario (being written: issue 7). Until then it fails loudly.

/// Ring-3 entry point.
pub extern "C" fn run_user(_: u64) -> u64 {
    crate::println!("hostile scenario: not written yet");
    3
}
