//! The guest kernel ELF, built by `build.rs` from `guest/kernel` and embedded.

/// The bytes behind [`GUEST_ELF`], 8-byte aligned (ELF parsers read the headers as u64s).
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/memvisor-guest.elf"
)));

/// The embedded guest kernel (an x86_64 ELF64 executable linked at
/// `0xffff_ffff_8020_0000`, loaded at GPA 2 MiB), 8-byte aligned.
pub static GUEST_ELF: &[u8] = &ALIGNED.0;
