//! memvisor's guest kernel: the built-in scenarios, on the guest SDK (`guest/sdk`, whose
//! crate docs hold the boot contract). The SDK's `_start` checks the boot info, loads the
//! GDT/TSS/IDT and calls [`kmain`] at CPL 0, which runs the scenario the host named (most of
//! them in ring 3) and returns the exit code.
#![no_std]
#![no_main]
#![allow(dead_code)] // some probes and hypercall wrappers serve only later scenarios

extern crate alloc;

mod bench;
mod crash;
mod demo;
mod heap;
mod hostile;
mod matrix;
mod stage2;
mod walk;

// The runtime moved to the SDK; the scenarios keep their `crate::` paths.
pub use memvisor_guest_sdk::{boot, console, hc, idt, print, println, probe, user};

memvisor_guest_sdk::entry!(kernel kmain);

/// Run the scenario the host named; its result is the exit code.
fn kmain() -> u32 {
    match boot().scenario {
        memvisor_abi::scenario::DEMO => user::run(demo::run_user, 0) as u32,
        memvisor_abi::scenario::BOOT => 0,
        memvisor_abi::scenario::FAULT_MATRIX => matrix::run(),
        memvisor_abi::scenario::STAGE2 => user::run(stage2::run_user, boot().arg[1]) as u32,
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
    }
}
