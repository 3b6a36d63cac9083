//! In-guest measurements for `memvisor bench` (rdtsc; the host converts cycles to ns with the
//! TSC frequency). Each figure is sent as a `bench.NAME=CYCLES` record: the median over
//! batches of the mean cycles per operation. Figures and their peers are measured in the same
//! run; the host computes the ratios.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "in-guest measurements used by `memvisor bench`";

/// Kernel entry: the ring-0 figures, then the ring-3 ones.
pub fn run() -> u32 {
    run_kernel();
    crate::user::run(run_user, 0) as u32
}

use crate::probe;
use crate::{boot, hc, println};
use core::fmt::Write;
use memvisor_abi::{flags, map, prot, zone, Call};

const PAGE: u64 = 4096;

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects (CR4.TSD is clear, so ring 3 may use it).
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn quick() -> bool {
    boot().flags & flags::QUICK != 0
}

/// Median over `batches` of the mean cycles of `per_batch` calls of `op`.
fn measure(batches: usize, per_batch: u64, mut op: impl FnMut()) -> u64 {
    let mut v = [0u64; 32];
    let n = batches.min(v.len());
    for slot in v.iter_mut().take(n) {
        let t0 = rdtsc();
        for _ in 0..per_batch {
            op();
        }
        *slot = (rdtsc() - t0) / per_batch.max(1);
    }
    let s = &mut v[..n];
    s.sort_unstable();
    s[n / 2]
}

fn record(name: &str, value: u64) {
    let mut line = crate::console::Line::new();
    let _ = write!(line, "bench.{}={}", name, value);
    hc::record(line.as_str());
}

/// Ring-3 entry point.
pub extern "C" fn run_user(_: u64) -> u64 {
    match body() {
        Ok(()) => 0,
        Err(e) => {
            println!("bench failed: {}", e);
            1
        }
    }
}

fn body() -> Result<(), &'static str> {
    let (batches, per) = if quick() { (3usize, 20u64) } else { (15, 100) };
    let rw = prot::READ | prot::WRITE | prot::USER;

    // Exit floor, hypercall round trip, guest-handled #PF and demand-paging fault from ring 3,
    // measured in interleaved rounds so that each figure and its peer (the bare exit) see the
    // same machine load; each value is the median over rounds of the per-operation mean.
    // Round 0 is a warm-up for all of them alike (caches, KVM's shadow tables for the
    // regions, the page-table pool) and is not counted.
    let null_gva =
        memvisor_abi::DOORBELL_GVA + (memvisor_abi::NULL_DOORBELL_GPA - memvisor_abi::DOORBELL_GPA);
    let ro =
        hc::mmap(PAGE, prot::READ | prot::USER, zone::ANY, map::POPULATE).map_err(|_| "mmap ro")?;
    let rounds = batches.min(31) + 1;
    let pages_per_round = if quick() { 8 } else { 32 };
    let lazy_pages = rounds as u64 * pages_per_round;
    let lazy = hc::mmap(lazy_pages * PAGE, rw, zone::ANY, map::LAZY).map_err(|_| "mmap lazy")?;
    // Populated but never accessed: the first write costs only the hypervisor's own fill of
    // its (shadow or EPT) mapping, the part of a demand-paging fault no guest or VMM code
    // can avoid.
    let warm =
        hc::mmap(lazy_pages * PAGE, rw, zone::ANY, map::POPULATE).map_err(|_| "mmap populate")?;
    let mut bare = [0u64; 32];
    let mut null = [0u64; 32];
    let mut gpf = [0u64; 32];
    let mut demand = [0u64; 32];
    let mut touch = [0u64; 32];
    let mut ucall = [0u64; 32];
    for r in 0..rounds {
        let t0 = rdtsc();
        for _ in 0..per {
            // SAFETY: a write to the null doorbell: an MMIO exit the VMM counts and ignores.
            unsafe { core::ptr::write_volatile(null_gva as *mut u64, 0) };
        }
        let t1 = rdtsc();
        for _ in 0..per {
            let _ = hc::call(Call::Nop, [0; 5]);
        }
        let t2 = rdtsc();
        for _ in 0..per {
            // SAFETY: the write faults (read-only page) and the probe resumes; nothing is
            // written.
            let _ = unsafe { probe::write(ro, 0) };
        }
        let t3 = rdtsc();
        for i in 0..pages_per_round {
            let page = lazy + (r as u64 * pages_per_round + i) * PAGE;
            // SAFETY: inside our lazy region; the #PF handler has the host back the page.
            unsafe { core::ptr::write_volatile(page as *mut u8, 1) };
        }
        let t4 = rdtsc();
        for i in 0..pages_per_round {
            let page = warm + (r as u64 * pages_per_round + i) * PAGE;
            // SAFETY: inside our populated region.
            unsafe { core::ptr::write_volatile(page as *mut u8, 1) };
        }
        let t5 = rdtsc();
        for _ in 0..per {
            // A sync ucall (a binary record the host decodes; it resumes the guest at once in
            // a built-in scenario).
            memvisor_guest_sdk::ucall::sync(&[]);
        }
        let t6 = rdtsc();
        ucall[r] = (t6 - t5) / per;
        touch[r] = (t5 - t4) / pages_per_round;
        bare[r] = (t1 - t0) / per;
        null[r] = (t2 - t1) / per;
        gpf[r] = (t3 - t2) / per;
        demand[r] = (t4 - t3) / pages_per_round;
    }
    let median = |v: &mut [u64]| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    record("r3_bare_exit", median(&mut bare[1..rounds]));
    record("r3_null_hypercall", median(&mut null[1..rounds]));
    record("r3_guest_pf", median(&mut gpf[1..rounds]));
    record("r3_demand_fault", median(&mut demand[1..rounds]));
    record("r3_first_touch", median(&mut touch[1..rounds]));
    record("r3_ucall_sync", median(&mut ucall[1..rounds]));
    hc::munmap(warm, lazy_pages * PAGE).map_err(|_| "munmap populate")?;
    hc::munmap(ro, PAGE).map_err(|_| "munmap ro")?;
    hc::munmap(lazy, lazy_pages * PAGE).map_err(|_| "munmap lazy")?;

    // mmap throughput: populate + munmap of 1, 16 and 512 pages per call (cycles per page).
    for n in [1u64, 16, 512] {
        let reps = if quick() {
            2
        } else {
            if n == 512 {
                8
            } else {
                64
            }
        };
        let t0 = rdtsc();
        for _ in 0..reps {
            let va = hc::mmap(n * PAGE, rw, zone::ANY, map::POPULATE).map_err(|_| "mmap n")?;
            hc::munmap(va, n * PAGE).map_err(|_| "munmap n")?;
        }
        let mut name = crate::console::Line::new();
        let _ = write!(name, "r3_mmap_munmap_{}p_per_page", n);
        record(name.as_str(), (rdtsc() - t0) / (reps * n));
    }
    first_touch_vs_memslot()
}

/// Demand paging through userfaultfd vs one memslot per page, both as the guest sees them:
/// first writes from ring 3 to each page of a fresh populated region (on `--uffd` RAM its
/// frames are served by the VMM's uffd handler) and to each page of a lazily backed stage-2
/// range (each first access exits as MMIO and the VMM adds a 4 KiB memslot), interleaved
/// round by round over the same number of pages. `BootInfo::arg[0]`: pages of the lazy range
/// (0: not measured), `arg[1]`: its GVA. Records the medians over rounds of the cycles per
/// page, the memslot path's first and last round (the slot count grows by `pages` over the
/// run) and the RAM path's first round (before any memslot was added).
fn first_touch_vs_memslot() -> Result<(), &'static str> {
    let (pages, lazy) = (boot().arg[0], boot().arg[1]);
    if pages == 0 {
        return Ok(());
    }
    let rounds = 16u64;
    let per = pages / rounds;
    if per == 0 || lazy % PAGE != 0 {
        return Err("bad lazy range arguments");
    }
    let rw = prot::READ | prot::WRITE | prot::USER;
    let ram = hc::mmap(rounds * per * PAGE, rw, zone::ANY, map::POPULATE)
        .map_err(|_| "mmap first-touch region")?;
    let mut uffd = [0u64; 16];
    let mut slot = [0u64; 16];
    for r in 0..rounds {
        let first = r * per;
        let t0 = rdtsc();
        for i in first..first + per {
            // SAFETY: inside our populated region.
            unsafe { core::ptr::write_volatile((ram + i * PAGE) as *mut u8, 1) };
        }
        let t1 = rdtsc();
        for i in first..first + per {
            // SAFETY: inside the lazy stage-2 range the host mapped for us (arg[1]); the
            // write exits and the VMM backs the page with a memslot.
            unsafe { core::ptr::write_volatile((lazy + i * PAGE) as *mut u8, 1) };
        }
        let t2 = rdtsc();
        uffd[r as usize] = (t1 - t0) / per;
        slot[r as usize] = (t2 - t1) / per;
    }
    // Round 0's RAM half runs before any lazy page got its memslot.
    record("r3_ram_first_touch_vs_memslot_first_round", uffd[0]);
    record("r3_memslot_first_touch_first_round", slot[0]);
    record("r3_memslot_first_touch_last_round", slot[rounds as usize - 1]);
    uffd.sort_unstable();
    slot.sort_unstable();
    record("r3_ram_first_touch_vs_memslot", uffd[rounds as usize / 2]);
    record("r3_memslot_first_touch", slot[rounds as usize / 2]);
    hc::munmap(ram, rounds * per * PAGE).map_err(|_| "munmap first-touch region")?;
    Ok(())
}

/// Ring-0 figures (CPL 0 is emulated on PVM hosts): bare port-IO exit and null hypercall.
pub fn run_kernel() {
    let (batches, per) = if quick() { (3, 10) } else { (9, 50) };
    record(
        "r0_bare_exit",
        measure(batches, per, || {
            // SAFETY: an `out` to the null port: the VMM counts it and resumes.
            unsafe {
                core::arch::asm!("out dx, al", in("dx") memvisor_abi::PORT_NULL, in("al") 0u8,
                    options(nomem, nostack, preserves_flags))
            };
        }),
    );
    record(
        "r0_null_hypercall",
        measure(batches, per, || {
            let _ = hc::call(Call::Nop, [0; 5]);
        }),
    );
}
