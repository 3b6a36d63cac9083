//! The `memvisor` heap, the guest kernel's general-purpose allocator (the type behind the
//! `#[global_allocator]`, see `global.rs`). Its code is in the `memvisor-heaps` crate
//! (`guest/heaps/src/memvisor/`), so it is model-tested on the host like the heaps it is
//! built from.

pub use memvisor_heaps::memvisor::*;
