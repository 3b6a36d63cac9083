//! memvisor's guest runtime: everything a guest needs to boot on the memvisor VMM and talk to
//! it, as a `no_std` library for `x86_64-unknown-none`. The memvisor guest kernel and the
//! test guests users write (see README "Writing your own test") are both built on it.
//!
//! # The boot contract (what the VMM guarantees at `_start`)
//! The VMM (`memvisor::boot`, `src/space`) loads an ELF64 executable whose `PT_LOAD`
//! segments are linked at GVA = GPA + [`abi::KERNEL_VIRT_OFFSET`] (GPA from
//! [`abi::KERNEL_PHYS_BASE`]; `link.ld` in this crate does that), and enters it in 64-bit
//! mode at its ELF entry with:
//! * CR0 = PE | MP | ET | NE | WP | PG, CR4 = PAE | PGE | OSFXSR | OSXMMEXCPT, EFER = LME | LMA
//!   (| NXE when the CPU has NX; Intel SDM Vol. 3A §10.8.5), a flat 64-bit code segment at
//!   CPL 0 and interrupts off;
//! * CR3 = the host-built 4-level page tables: the kernel image (text RX, rodata R+NX,
//!   data/bss RW+NX, all US=1 so ring 3 may run it), the direct map of all RAM at
//!   [`abi::BootInfo::direct_map_base`], the boot, #DF and ring-3 stacks, each above an
//!   unmapped guard page, and the MMIO doorbell page at [`abi::DOORBELL_GVA`];
//! * `rsp` = top of the boot stack, `rdi` = GVA of the [`abi::BootInfo`] (magic checked
//!   here before anything else is trusted); no other register is defined.
//!
//! [`entry!`] emits `_start`, which makes one bare exit (the VMM times "first guest
//! instruction"), checks the boot info, loads this crate's GDT, TSS (IST1 = #DF stack, an I/O
//! bitmap for the hypercall ports) and an IDT catching all 32 exception vectors ([`idt`]),
//! then runs the program's `main` in ring 3 (on a PVM host ring 0 is emulated instruction by
//! instruction, ~9000x slower) or in ring 0, and ends the run with its result.
//!
//! # Pieces
//! * [`hc`]: hypercall blocks, typed calls (`mmap`, `munmap`, `mprotect`, `translate`, ...);
//! * [`console`]: `print!` / `println!` to the host's report;
//! * [`idt`], [`fault`]: exceptions; [`fault::expect_fault`], per-vector handlers;
//! * [`probe`]: one-byte read / write / fetch probes that return the #PF instead of failing;
//! * [`user`]: running a function in ring 3 ([`user::run`]) or ring 0 ([`fault::in_ring0`]);
//! * [`ucall`]: `sync!`, `guest_assert!`, `guest_assert_eq!`, [`ucall::done`].
#![no_std]

pub use memvisor_abi as abi;

pub mod console;
pub mod fault;
pub mod hc;
pub mod idt;
pub mod probe;
pub mod ucall;
pub mod user;

pub use abi::{MapFlags, Prot, Status, Zone};
pub use fault::{expect_fault, try_fault, Fault};

use abi::{BootInfo, BOOT_MAGIC};

/// The boot information, copied out of the page the host wrote.
static mut BOOT: Option<BootInfo> = None;

/// The boot information (valid once `_start` has checked and stored it).
pub fn boot() -> &'static BootInfo {
    // SAFETY: BOOT is written once in `start` before any program code runs; single vCPU and
    // no interrupt handler writes it.
    match unsafe { &*core::ptr::addr_of!(BOOT) } {
        Some(b) => b,
        None => hc::panic_str("boot info used before _start stored it"),
    }
}

/// Where [`entry!`] runs the program's `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// CPL 3 (native speed on a PVM host; the default).
    User,
    /// CPL 0 (needed for privileged instructions; emulated on a PVM host).
    Kernel,
}

/// Called by the `_start` that [`entry!`] emits: check and store the boot info, load the
/// GDT/TSS/IDT, run `main` in `ring`, exit with its result. Not for direct use.
///
/// # Safety
/// Only from `_start`, once, with the VMM's `rdi` (see the boot contract above).
#[doc(hidden)]
pub unsafe extern "C" fn start(
    boot_info: *const BootInfo,
    main: extern "C" fn(u64) -> u64,
    ring: u64,
) -> ! {
    // SAFETY: the host passes the GVA of a BootInfo it wrote in the direct map; the magic is
    // checked before anything else in it is trusted.
    let info = unsafe { core::ptr::read_volatile(boot_info) };
    if info.magic != BOOT_MAGIC {
        hc::panic_str("bad boot info magic");
    }
    // SAFETY: single-threaded early boot; no reference to BOOT exists yet.
    unsafe { *core::ptr::addr_of_mut!(BOOT) = Some(info) };
    idt::init(&info);
    let code = if ring == 0 {
        main(0)
    } else {
        user::run(main, 0)
    };
    console::flush();
    hc::exit(code as u32)
}

/// Emit the guest's `_start` for `main`: `entry!(main)` runs `fn main() -> u32` in ring 3,
/// `entry!(kernel main)` in ring 0; the run ends with `Exit(main's result)` (a test guest
/// usually ends earlier, with [`ucall::done`]).
///
/// ```ignore
/// #![no_std]
/// #![no_main]
/// memvisor_guest_sdk::entry!(main);
/// fn main() -> u32 {
///     memvisor_guest_sdk::ucall::done()
/// }
/// ```
#[macro_export]
macro_rules! entry {
    (kernel $main:path) => {
        $crate::entry!(@emit $main, 0);
    };
    ($main:path) => {
        $crate::entry!(@emit $main, 1);
    };
    (@emit $main:path, $ring:literal) => {
        extern "C" fn __memvisor_guest_main(_: u64) -> u64 {
            let f: fn() -> u32 = $main;
            f() as u64
        }
        core::arch::global_asm!(
            ".section .text.entry, \"ax\"",
            ".global _start",
            "_start:",
            // One bare exit first: the VMM times "VMM start -> first guest instruction".
            "    mov dx, {null_port}",
            "    out dx, al",
            "    xor ebp, ebp",
            "    lea rsi, [rip + {main}]",
            concat!("    mov edx, ", $ring),
            "    call {start}",
            "2:  hlt",
            "    jmp 2b",
            ".text",
            start = sym $crate::start,
            main = sym __memvisor_guest_main,
            null_port = const $crate::abi::PORT_NULL,
        );
    };
}

/// A test's guest half in one item: `guest_main! { statements }` is
/// `entry!(main); fn main() -> u32 { statements; ucall::done() }` (ring 3): the run ends
/// with `Ucall(Done)` after the statements (a guest that should end otherwise does so inside
/// them: an assertion, a fault, `hc::exit`). In a test file that is
/// also built for the host, put `#[cfg(memvisor_guest)]` on the invocation: the host build
/// drops it unexpanded, so it needs no `mod guest` around it. Items (helper functions,
/// `#[no_mangle]` ones included) and `use`s may appear among the statements.
///
/// ```ignore
/// #[cfg(memvisor_guest)]
/// memvisor_guest_sdk::guest_main! {
///     use memvisor_guest_sdk::sync;
///     sync!(1, 2);
/// }
/// ```
#[macro_export]
macro_rules! guest_main {
    ($($body:tt)*) => {
        $crate::entry!(__memvisor_test_main);
        fn __memvisor_test_main() -> u32 {
            {
                $($body)*
            }
            $crate::ucall::done()
        }
    };
}

#[cfg(feature = "panic-handler")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    use core::fmt::Write;
    let mut msg = console::Line::new();
    let _ = write!(msg, "{}", info);
    console::flush();
    hc::panic_str(msg.as_str())
}
