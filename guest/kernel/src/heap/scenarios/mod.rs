//! The heap scenarios (`memvisor run --scenario NAME`), all in ring 3:
//!
//! * `seed-page-family`: the seed's test_application (register `emp_t` and `student_t`;
//!   scenario 1 allocates 3 employees and 2 students, scenario 2 frees emp1, emp3 and stud2,
//!   scenario 3 frees the rest) with the seed's reports after each step, the slabinfo table,
//!   and the errors the heap reports instead of corrupting itself.
//! * `seed-mems`: MeMS's classic example: ten 1000-byte arrays, stats, a write through the
//!   virtual address read back through the physical one (`mems_get`, cross-checked against the
//!   host), a free, a new allocation, stats, `mems_finish`.
//! * `heap-stress`: 10^6 random operations (10^5 with `--quick`) on each of our heaps,
//!   every block filled with a pattern and checked before it is freed or resized, a full audit
//!   at the end, and every page given back.
//! * `heap-debug`: guard-page debugging (`guard.rs`): an overflow and a use after free on a
//!   page family, on MeMS and (with `--heap-debug guard`) through the global allocator, each
//!   caught by the MMU and reported.

use super::guard::{self, Kind};
use super::memvisor::MemvisorHeap;
use super::peers::{Heap, MemsHeap, PfHeap};
use super::source::{self, Acct, GuestPages};
use crate::{boot, hc, println};
use core::alloc::Layout;
use core::fmt::{self, Write};
use core::ptr::NonNull;
use memvisor_abi::flags;
use memvisor_heaps::{mm_reg_struct, xcalloc, xfree, Mems, PageFamilies};

mod debug;
mod seed_mems;
mod seed_pf;
mod stress;

pub use debug::heap_debug;
pub use seed_mems::seed_mems;
pub use seed_pf::seed_page_family;
pub use stress::heap_stress;

/// The console as a `fmt::Write` (the heaps' reports write into it).
struct Console;
impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::console::print(format_args!("{}", s));
        Ok(())
    }
}

fn rec(key: &str, v: impl fmt::Display) {
    let mut line = crate::console::Line::new();
    let _ = write!(line, "{}={}", key, v);
    hc::record(line.as_str());
}

fn quick() -> bool {
    boot().flags & flags::QUICK != 0
}

fn fail(what: &str) -> u64 {
    println!("FAILED: {}", what);
    1
}

static SEED_ACCT: Acct = Acct::new();
