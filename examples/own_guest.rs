//! A guest program and its host side in one file, outside `tests/`: `cargo run --example
//! own_guest`. The guest half (under `cfg(memvisor_guest)`) is the `own_guest` binary of
//! `tests/guests/Cargo.toml`; the host half builds it with `memvisor::guest_build`, maps a
//! lazy region for it, and prints every exit, the demand faults the host served, and the
//! report's summary.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
mod guest {
    use memvisor_guest_sdk::{boot, entry, hc, println, sync, ucall::done};
    entry!(main);

    fn main() -> u32 {
        let base = boot().arg[0];
        for page in 0..4u64 {
            // SAFETY: inside the host's lazy region (8 pages): each first touch is a demand
            // fault the host serves.
            unsafe { ((base + page * 8192) as *mut u64).write_volatile(page) };
            sync!(page, base + page * 8192);
        }
        let s = hc::stats().unwrap_or_default();
        println!(
            "guest: {} lazy faults served, {} frames free",
            s.lazy_faults, s.free_frames
        );
        done()
    }
}

#[cfg(not(memvisor_guest))]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use memvisor::{Exit, Ucall, Vm, VmOptions};
    use memvisor_abi::{MapFlags, Prot, Zone};
    use std::path::Path;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let elf = memvisor::guest_build::build(
        &root.join("tests/guests/Cargo.toml"),
        "own_guest",
        &root.join("target/example-guests"),
    )?;
    let mut vm = Vm::new(elf, VmOptions::default())?;
    let base = vm.mmap(8 << 12, Prot::USER_RW, Zone::ANY, MapFlags::LAZY)?;
    vm.set_args([base, 0, 0, 0])?;
    loop {
        let exit = vm.run()?;
        println!("host: {exit:?}");
        match exit {
            Exit::Ucall(Ucall::Sync(_)) => {}
            Exit::Ucall(Ucall::Done) => break,
            other => return Err(format!("guest failed: {other:?}\n{}", vm.console()).into()),
        }
    }
    print!("{}", vm.console());
    for f in vm.faults().iter().filter(|f| f.kind == "lazy") {
        println!(
            "host: demand fault at CR2 {:#x}, error code {:#x}",
            f.cr2, f.error_code
        );
    }
    vm.check_invariants().map_err(|v| format!("{v:?}"))?;
    let report = vm.report();
    println!("host: outcome {}, exits {:?}", report.outcome, report.exits);
    Ok(())
}
