//! The `stage2` scenario (ring 3): accesses to guest-physical memory with no memslot, a
//! read-only memslot, a lazily backed range, a memslot removed and added back, and dirty
//! logging. The host maps the window of `memvisor_abi::stage2` (its first GPA follows the
//! CPU's MAXPHYADDR and arrives in `BootInfo::arg[1]`) at `GVA_BASE`; its report lists every
//! stage-2 exit (GPA, size, direction, value, RIP).

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str =
    "stage-2 faults: unbacked GPAs, read-only and lazy memslots, slot removal, dirty log";

/// Kernel entry: ring 3, with the window's first GPA (`BootInfo::arg[1]`, the host's choice).
pub fn run() -> u32 {
    crate::user::run(run_user, crate::boot().arg[1]) as u32
}

use crate::{hc, println};
use core::fmt::Write;
use core::ptr::{read_volatile, write_volatile};
use memvisor_abi::{map, prot, stage2 as s2, zone, Call};

const PAGE: u64 = 4096;

/// GVA of a region given as its GPA in the window at `s2::GPA_BASE` (the offsets are the same
/// wherever the host put the window).
fn gva(gpa: u64) -> u64 {
    s2::GVA_BASE + (gpa - s2::GPA_BASE)
}

fn op(o: u64) -> Result<u64, &'static str> {
    hc::call(Call::Stage2, [o, 0, 0, 0, 0]).map_err(|_| "stage2 op refused")
}

fn record(key: &str, value: u64) {
    let mut l = crate::console::Line::new();
    let _ = write!(l, "stage2.{}={:#x}", key, value);
    hc::record(l.as_str());
}

fn check(ok: bool, what: &'static str) -> Result<(), &'static str> {
    if ok {
        Ok(())
    } else {
        Err(what)
    }
}

/// Ring-3 entry point.
pub extern "C" fn run_user(gpa_base: u64) -> u64 {
    match body(gpa_base) {
        Ok(()) => 0,
        Err(e) => {
            println!("stage2 FAILED: {}", e);
            1
        }
    }
}

fn body(gpa_base: u64) -> Result<(), &'static str> {
    // 1. No memslot: reads return all-ones (the VMM's choice), writes are reported with their
    //    value. Sizes 1, 2, 4, 8.
    let u = gva(s2::UNBACKED);
    // SAFETY: the page is mapped (US, RW) with no RAM behind it: every access exits to the VMM.
    unsafe {
        check(
            read_volatile((u + 0x10) as *const u8) == 0xff,
            "unbacked u8 read",
        )?;
        check(
            read_volatile((u + 0x20) as *const u16) == 0xffff,
            "unbacked u16 read",
        )?;
        check(
            read_volatile((u + 0x30) as *const u32) == 0xffff_ffff,
            "unbacked u32 read",
        )?;
        check(
            read_volatile((u + 0x40) as *const u64) == u64::MAX,
            "unbacked u64 read",
        )?;
        write_volatile((u + 0x50) as *mut u8, 0x5a);
        write_volatile((u + 0x60) as *mut u16, 0x1234);
        write_volatile((u + 0x70) as *mut u32, 0xdead_beef);
        write_volatile((u + 0x80) as *mut u64, 0x0102_0304_0506_0708);
    }
    println!(
        "stage2: unbacked GPA {:#x}: 4 reads, 4 writes exited as MMIO",
        gpa_base + s2::UNBACKED_OFF
    );

    // 2. Read-only memslot.
    if op(s2::OP_READONLY_SUPPORTED)? == 1 {
        let r = gva(s2::READONLY);
        // SAFETY: mapped; reads are served from the read-only slot, the write exits as MMIO.
        unsafe {
            check(
                read_volatile((r + 0x41) as *const u8) == 0x41,
                "read-only slot read",
            )?;
            write_volatile((r + 0x40) as *mut u32, 0xcafe_f00d);
            check(
                read_volatile((r + 0x40) as *const u32) == 0x4342_4140,
                "read-only slot unchanged",
            )?;
        }
        println!("stage2: read-only slot: read ok, write exited as MMIO, contents unchanged");
    } else {
        println!("stage2: read-only slot: skipped: unsupported by host");
    }

    // 3. Lazy range: the first access to each page makes the VMM add a memslot.
    let l = gva(s2::LAZY);
    // SAFETY: mapped; the first access exits, the VMM backs the page and completes it.
    unsafe {
        write_volatile((l + 0x10) as *mut u64, 0x1122_3344_5566_7788);
        check(
            read_volatile((l + 0x10) as *const u64) == 0x1122_3344_5566_7788,
            "lazy write kept",
        )?;
        check(
            read_volatile((l + PAGE + 0x20) as *const u32) == 0,
            "lazy read of a fresh page",
        )?;
        write_volatile((l + PAGE + 0x20) as *mut u32, 7);
        check(
            read_volatile((l + PAGE + 0x20) as *const u32) == 7,
            "lazy page now RAM",
        )?;
    }
    println!("stage2: lazy range: 2 pages backed on first access");

    // 4. Remove a memslot at run time, then add it back.
    let m = gva(s2::REMOVABLE);
    // SAFETY: mapped; backed by the removable slot except between REMOVE and ADD.
    unsafe {
        write_volatile((m + 0x100) as *mut u64, 0xabcd_ef01_2345_6789);
        op(s2::OP_REMOVE)?;
        check(
            read_volatile((m + 0x100) as *const u64) == u64::MAX,
            "removed slot exits",
        )?;
        op(s2::OP_ADD)?;
        check(
            read_volatile((m + 0x100) as *const u64) == 0xabcd_ef01_2345_6789,
            "data restored",
        )?;
    }
    println!("stage2: removed slot: access exited; added back: data restored");

    // 5. Dirty log: write a chosen set of pages of a fresh region.
    let n = 32u64;
    let rw = prot::READ | prot::WRITE | prot::USER;
    let buf = hc::mmap(n * PAGE, rw, zone::ANY, map::POPULATE).map_err(|_| "mmap")?;
    let chosen = [1u64, 5, 17, 30];
    for (i, &p) in chosen.iter().enumerate() {
        let gpa = hc::translate(buf + p * PAGE).map_err(|_| "translate")?;
        let mut k = crate::console::Line::new();
        let _ = write!(k, "written{}", i);
        record(k.as_str(), gpa & !(PAGE - 1));
    }
    // Pages the guest writes besides the chosen ones while the log runs: its hypercall block
    // and the ring-3 stack.
    let sp: u64;
    // SAFETY: reading rsp.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp) };
    record("block", hc::main_block_gpa() & !(PAGE - 1));
    for (i, page) in [
        sp & !(PAGE - 1),
        (sp & !(PAGE - 1)) - PAGE,
        (sp & !(PAGE - 1)) + PAGE,
    ]
    .iter()
    .enumerate()
    {
        if let Ok(g) = hc::translate(*page) {
            let mut k = crate::console::Line::new();
            let _ = write!(k, "stack{}", i);
            record(k.as_str(), g & !(PAGE - 1));
        }
    }
    op(s2::OP_DIRTY_START)?;
    for &p in &chosen {
        // SAFETY: inside our populated region.
        unsafe { write_volatile((buf + p * PAGE + 8) as *mut u64, p) };
    }
    let first = op(s2::OP_DIRTY_READ)?;
    let second = op(s2::OP_DIRTY_READ)?;
    hc::munmap(buf, n * PAGE).map_err(|_| "munmap")?;
    println!(
        "stage2: dirty log: {} dirty pages after the writes, {} at the next read",
        first, second
    );
    Ok(())
}
