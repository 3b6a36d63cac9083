//! The guest kernel ELF, built by `build.rs` from `guest/kernel` and embedded.

/// The embedded guest kernel (an x86_64 ELF64 executable linked at
/// `0xffff_ffff_8020_0000`, loaded at GPA 2 MiB).
pub static GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/memvisor-guest.elf"));
