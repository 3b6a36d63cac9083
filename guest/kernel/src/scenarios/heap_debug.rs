//! A heap scenario (`crate::heap::scenarios`), in ring 3.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "guard-page heap debugging: an overflow and a use after free caught by the MMU and reported (add --heap-debug guard for the global allocator)";

/// Kernel entry.
pub fn run() -> u32 {
    crate::user::run(crate::heap::scenarios::heap_debug, 0) as u32
}
