//! Guest code that faults unexpectedly, loops, panics or triple-faults ends in a clear `Exit`
//! naming what happened (vector, error code, CR2, RIP; timeout; message; shutdown) — never a
//! hang or a VMM panic.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
mod guest {
    use memvisor_guest_sdk::{boot, entry, fault};
    entry!(main);

    #[no_mangle]
    #[inline(never)]
    extern "C" fn crash_bad_read(p: *const u64) -> u64 {
        // SAFETY: deliberately not mapped: the read faults.
        unsafe { p.read_volatile() }
    }

    fn main() -> u32 {
        match boot().arg[0] {
            0 => crash_bad_read(0xdead_0000 as *const u64) as u32,
            1 => loop {
                core::hint::spin_loop()
            },
            2 => panic!("deliberate guest panic {}", 7),
            // SAFETY: an empty IDT, then #UD: no exception can be delivered (triple fault).
            3 => fault::in_ring0(|| unsafe {
                core::arch::asm!("lidt [{}]", "ud2", in(reg) &[0u64; 2]);
                0
            }),
            // SAFETY: ud2 raises #UD, which nobody expects.
            _ => unsafe { core::arch::asm!("ud2", options(noreturn)) },
        }
    }
}

#[cfg(not(memvisor_guest))]
mod common;
#[cfg(not(memvisor_guest))]
use memvisor::{Exit, Vm, VmOptions};

#[cfg(not(memvisor_guest))]
#[test]
fn unexpected_fault_loop_and_panic_give_clear_exits() {
    if common::guest_vm("guest_crash").is_none() {
        return;
    }
    let run = |arg: u64| {
        let opts = VmOptions {
            mem_bytes: 64 << 20,
            timeout: std::time::Duration::from_millis(500),
            ..Default::default()
        };
        let mut vm = Vm::new(common::guest_elf("guest_crash"), opts).unwrap();
        vm.set_args([arg, 0, 0, 0]).unwrap();
        let exit = common::step(&mut vm);
        common::invariants(&vm);
        (exit, vm.symbol("crash_bad_read").unwrap())
    };
    let (Exit::Fault(f), bad_read) = run(0) else {
        panic!()
    };
    assert_eq!((f.vector, f.error_code, f.cr2), (14, 0x4, 0xdead_0000));
    assert!(
        bad_read.contains(&f.rip) && f.message.contains("page fault"),
        "{f:?}"
    );
    assert_eq!(run(1).0, Exit::Timeout);
    let (Exit::GuestPanic(msg), _) = run(2) else {
        panic!()
    };
    assert!(msg.contains("deliberate guest panic 7"), "{msg}");
    assert_eq!(run(3).0, Exit::Shutdown);
    let (Exit::Fault(f), _) = run(4) else {
        panic!()
    };
    assert_eq!((f.vector, f.error_code), (6, 0));
}
