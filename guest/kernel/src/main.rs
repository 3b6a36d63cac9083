//! memvisor's guest kernel.
//!
//! Entered in 64-bit mode on page tables the host built, with `rdi` = GVA of the
//! [`BootInfo`](memvisor_abi::BootInfo) and `rsp` = top of a boot stack whose lowest page is an
//! unmapped guard. It installs its own GDT/TSS (an IST stack for #DF) and an IDT for vectors
//! 0–31, then runs the scenario the host named and exits through a hypercall.
#![no_std]
#![no_main]
#![allow(dead_code)] // some probes and hypercall wrappers serve only later scenarios

extern crate alloc;

mod bench;
mod console;
mod crash;
mod demo;
mod hc;
mod heap;
mod hostile;
mod idt;
mod matrix;
mod probe;
mod stage2;
mod user;
mod walk;

use core::panic::PanicInfo;
use memvisor_abi::{BootInfo, BOOT_MAGIC};

core::arch::global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    // First instruction: one bare exit to the null port, so the VMM can time
    // "VMM start -> first guest instruction".
    "    mov dx, {null_port}",
    "    out dx, al",
    "    xor ebp, ebp",
    "    call {kmain}",
    "2:  hlt",
    "    jmp 2b",
    kmain = sym kmain,
    null_port = const memvisor_abi::PORT_NULL,
);

/// The boot information, copied out of the page the host wrote.
static mut BOOT: Option<BootInfo> = None;

/// The boot information (valid after `kmain` stored it).
pub fn boot() -> &'static BootInfo {
    // SAFETY: BOOT is written once in kmain before anything calls boot(); single vCPU and no
    // interrupt handler writes it.
    match unsafe { &*core::ptr::addr_of!(BOOT) } {
        Some(b) => b,
        None => hc::panic_str("boot info used before kmain stored it"),
    }
}

extern "C" fn kmain(boot_info: *const BootInfo) -> ! {
    // SAFETY: the host passes the GVA of a BootInfo it wrote in the direct map; we check the
    // magic before trusting anything else in it.
    let info = unsafe { core::ptr::read_volatile(boot_info) };
    if info.magic != BOOT_MAGIC {
        hc::panic_str("bad boot info magic");
    }
    // SAFETY: single-threaded early boot; no reference to BOOT exists yet.
    unsafe { *core::ptr::addr_of_mut!(BOOT) = Some(info) };
    idt::init(&info);
    let code = match info.scenario {
        memvisor_abi::scenario::DEMO => user::run(demo::run_user, 0) as u32,
        memvisor_abi::scenario::BOOT => 0,
        memvisor_abi::scenario::FAULT_MATRIX => matrix::run(),
        memvisor_abi::scenario::STAGE2 => user::run(stage2::run_user, info.arg[1]) as u32,
        memvisor_abi::scenario::HOSTILE => user::run(hostile::run_user, 0) as u32,
        memvisor_abi::scenario::BENCH => {
            bench::run_kernel();
            user::run(bench::run_user, 0) as u32
        }
        memvisor_abi::scenario::SEED_PAGE_FAMILY => {
            user::run(heap::scenarios::seed_page_family, 0) as u32
        }
        memvisor_abi::scenario::SEED_MEMS => user::run(heap::scenarios::seed_mems, 0) as u32,
        memvisor_abi::scenario::HEAP_STRESS => user::run(heap::scenarios::heap_stress, 0) as u32,
        memvisor_abi::scenario::HEAP_DEBUG => user::run(heap::scenarios::heap_debug, 0) as u32,
        memvisor_abi::scenario::REPLAY => user::run(heap::replay::run_user, 0) as u32,
        memvisor_abi::scenario::HEAP_BENCH => user::run(heap::bench::run_user, 0) as u32,
        memvisor_abi::scenario::RUNAWAY => crash::runaway(),
        memvisor_abi::scenario::GUEST_PANIC => crash::guest_panic(),
        memvisor_abi::scenario::TRIPLE_FAULT => crash::triple_fault(),
        memvisor_abi::scenario::DOUBLE_FAULT => crash::double_fault(),
        other => {
            println!("unknown scenario {}", other);
            1
        }
    };
    console::flush();
    hc::exit(code)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    use core::fmt::Write;
    let mut msg = console::Line::new();
    let _ = write!(msg, "{}", info);
    console::flush();
    hc::panic_str(msg.as_str())
}
