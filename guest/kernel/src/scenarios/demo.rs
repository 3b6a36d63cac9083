//! The main job's demonstration: map memory (populated and lazy), take demand-paging faults,
//! take a protection fault and recover from it, cross-check translation, unmap, exit.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "the main job: mmap populated and lazy memory, demand faults, a protection fault recovered, translate, munmap";

/// Kernel entry: the demonstration in ring 3.
pub fn run() -> u32 {
    crate::user::run(run_user, 0) as u32
}

use crate::idt::TrapFrame;
use crate::probe::{self, Probe};
use crate::{boot, hc, println, walk};
use core::sync::atomic::{AtomicU64, Ordering};
use memvisor_abi::{map, prot, zone, Call, MemStats};

const PAGE: u64 = 4096;

/// The page made read-only for the protection-fault demonstration.
static RO_PAGE: AtomicU64 = AtomicU64::new(0);

/// #PF hook: a write to RO_PAGE is a protection fault (P|W). Report it as resolved, make the
/// page writable again, flush, and let the write retry.
fn recover_ro(f: &mut TrapFrame, cr2: u64) -> bool {
    let page = RO_PAGE.load(Ordering::SeqCst);
    if page == 0 || cr2 & !(PAGE - 1) != page || f.error_code & 0x3 != 0x3 {
        return false;
    }
    crate::idt::report(14, f.error_code, cr2, f.rip, true);
    let mut r = [memvisor_abi::Request::new(
        Call::Mprotect,
        [page, PAGE, prot::READ | prot::WRITE | prot::USER, 0, 0],
    )];
    hc::batch_in_fault(&mut r);
    x86_64::instructions::tlb::flush(x86_64::VirtAddr::new_truncate(page));
    RO_PAGE.store(0, Ordering::SeqCst);
    r[0].status == 0
}

fn check(ok: bool, what: &str) -> Result<(), u32> {
    if ok {
        Ok(())
    } else {
        println!("FAILED: {}", what);
        Err(1)
    }
}

/// Ring-3 entry point.
pub extern "C" fn run_user(_: u64) -> u64 {
    body() as u64
}

fn body() -> u32 {
    match demo() {
        Ok(()) => 0,
        Err(c) => c,
    }
}

fn demo() -> Result<(), u32> {
    let info = boot();
    println!(
        "guest: booted; {} MiB RAM, {} e820 entries, direct map at {:#x}, mmap window {:#x}..{:#x}",
        info.ram_bytes >> 20,
        info.e820_count,
        info.direct_map_base,
        info.heap_window[0],
        info.heap_window[1]
    );

    // 1. Populated memory: 16 pages, backed at mmap time; touching them takes no fault.
    // Ring 3 touches these pages: user-accessible.
    let rw = prot::READ | prot::WRITE | prot::USER;
    let pop = hc::mmap(16 * PAGE, rw, zone::ANY, map::POPULATE).map_err(|s| {
        println!("mmap populate failed: {:?}", s);
        1u32
    })?;
    for i in 0..16 * PAGE / 8 {
        // SAFETY: [pop, pop + 64 KiB) was just mapped read/write for us.
        unsafe { ((pop + i * 8) as *mut u64).write_volatile(i ^ 0x5a5a) };
    }
    let mut sum_ok = true;
    for i in 0..16 * PAGE / 8 {
        // SAFETY: as above.
        sum_ok &= unsafe { ((pop + i * 8) as *const u64).read_volatile() } == i ^ 0x5a5a;
    }
    check(sum_ok, "populated region keeps its data")?;
    println!(
        "guest: mmap populate 16 pages at {:#x}: written and verified",
        pop
    );

    // 2. Lazy memory: 64 pages, backed on first touch; touch every 8th page.
    let lazy = hc::mmap(64 * PAGE, rw, zone::ANY, map::LAZY).map_err(|_| 1u32)?;
    let before = lazy_faults_served()?;
    for i in (0..64).step_by(8) {
        // SAFETY: the page lies in our lazy region; the #PF handler has the host back it.
        unsafe { ((lazy + i * PAGE + 8) as *mut u64).write_volatile(0xfeed_0000 + i) };
    }
    let served = lazy_faults_served()? - before;
    check(
        served == 8,
        "8 demand-paging faults for 8 touched lazy pages",
    )?;
    for i in (0..64).step_by(8) {
        // SAFETY: the page is now backed.
        let v = unsafe { ((lazy + i * PAGE + 8) as *const u64).read_volatile() };
        check(v == 0xfeed_0000 + i, "lazy page keeps its data")?;
    }
    println!(
        "guest: mmap lazy 64 pages at {:#x}: 8 pages touched, {} demand-paging faults served",
        lazy, served
    );

    // 3. Protection fault: make one populated page read-only and write it.
    let target = pop + 3 * PAGE;
    hc::mprotect(target, PAGE, prot::READ | prot::USER).map_err(|_| 1u32)?;
    RO_PAGE.store(target, Ordering::SeqCst);
    probe::set_hook(Some(recover_ro));
    // SAFETY: the page is ours; the write faults once (read-only), the hook makes it writable
    // again and the write retries.
    unsafe { ((target + 16) as *mut u64).write_volatile(0xdead_beef) };
    probe::set_hook(None);
    // SAFETY: mapped and readable.
    let v = unsafe { ((target + 16) as *const u64).read_volatile() };
    check(
        v == 0xdead_beef && RO_PAGE.load(Ordering::SeqCst) == 0,
        "protection fault recovered",
    )?;
    println!("guest: write to read-only page {:#x}: #PF (P|W|U) caught, reported, page made writable, write retried", target);

    // 4. Translation: our own walk of the page tables vs the host's translate.
    for gva in [pop, pop + 5 * PAGE + 123, lazy + 8 * PAGE] {
        let host = hc::translate(gva).map_err(|_| 1u32)?;
        let mine = walk::translate(gva).map(|(gpa, _)| gpa);
        check(mine == Some(host), "guest walk agrees with host translate")?;
    }
    println!("guest: translate: guest page-table walk agrees with the host for 3 addresses");

    // 5. A DMA-zone page lies below 16 MiB.
    let dma = hc::mmap(PAGE, rw, zone::DMA, map::POPULATE).map_err(|_| 1u32)?;
    let dma_gpa = hc::translate(dma).map_err(|_| 1u32)?;
    check(dma_gpa < 16 << 20, "DMA frame below 16 MiB")?;
    println!("guest: mmap zone DMA at {:#x} -> GPA {:#x}", dma, dma_gpa);

    // 6. Stats, then unmap everything; an access after munmap faults (caught by a probe).
    let mut stats = MemStats::default();
    hc::call(
        Call::Stats,
        [&mut stats as *mut MemStats as u64, 0, 0, 0, 0],
    )
    .map_err(|_| 1u32)?;
    println!(
        "guest: stats: {} frames, {} free, {} mapped for mmap, {} page-table frames, {} regions, {} lazy faults",
        stats.total_frames, stats.free_frames, stats.mapped_frames, stats.table_frames, stats.regions, stats.lazy_faults
    );
    check(
        stats.mapped_frames == 16 + 8 + 1,
        "host counts 25 mapped frames",
    )?;
    hc::munmap(pop, 16 * PAGE).map_err(|_| 1u32)?;
    hc::munmap(lazy, 64 * PAGE).map_err(|_| 1u32)?;
    hc::munmap(dma, PAGE).map_err(|_| 1u32)?;
    match probe::read(pop) {
        Probe::Fault { error_code, cr2 } => {
            crate::idt::report(14, error_code, cr2, probe::last_rip(), true);
            check(
                error_code == 0x4 && cr2 == pop,
                "read after munmap: user not-present fault",
            )?;
            println!(
                "guest: read after munmap at {:#x}: #PF error code {:#x} (not present), caught",
                cr2, error_code
            );
        }
        Probe::Ok => return check(false, "read after munmap faults"),
    }
    hc::call(
        Call::Stats,
        [&mut stats as *mut MemStats as u64, 0, 0, 0, 0],
    )
    .map_err(|_| 1u32)?;
    check(
        stats.mapped_frames == 0 && stats.regions == 0,
        "everything unmapped",
    )?;
    println!("guest: all regions unmapped; exiting 0");
    Ok(())
}

/// Demand-paging faults the host has served so far (its `Stats` counter: it counts the faults
/// it backed through the #PF assist exit and through `LazyFault` requests alike).
fn lazy_faults_served() -> Result<u64, u32> {
    let mut stats = MemStats::default();
    hc::call(
        Call::Stats,
        [&mut stats as *mut MemStats as u64, 0, 0, 0, 0],
    )
    .map_err(|_| 1u32)?;
    Ok(stats.lazy_faults)
}
