//! The guest's heaps (issue 4): the page source on the mmap hypercalls, the kernel's
//! `#[global_allocator]`, guard-page heap debugging, trace replay with peer allocators, the
//! heap scenarios and the in-guest heap benchmark. The heap logic itself is the
//! `memvisor-heaps` crate (`guest/heaps`).

pub mod bench;
pub mod global;
pub mod guard;
pub mod memvisor;
pub mod peers;
pub mod replay;
pub mod replay_many;
pub mod scenarios;
pub mod source;
pub mod strong_peers;
