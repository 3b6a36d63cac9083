//! A heap scenario (`crate::heap::scenarios`), in ring 3.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "page families: the seed's test_application (emp_t, student_t) with its memory and block usage reports after each step";

/// Kernel entry.
pub fn run() -> u32 {
    crate::user::run(crate::heap::scenarios::seed_page_family, 0) as u32
}
