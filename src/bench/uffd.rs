//! Host-side demand-paging figures for userfaultfd ([`memvisor::uffd`]), each beside its peers
//! measured in the same run, interleaved round by round (median of the rounds):
//!
//! - `uffd_zero_fill`: first write to each page of a uffd-registered anonymous range, served
//!   by the handler thread as fresh guest RAM under `--uffd` is: fault-around with one
//!   `UFFDIO_COPY` of zeros per block, 16 pages doubling up to 512 while faults come in order
//!   (so 12 messages for 4,096 pages touched in order);
//! - `uffd_copy`: the same from a source with data for every page (what a snapshot restore
//!   does, file read aside), served with `UFFDIO_COPY` and readahead: the run copied per
//!   fault starts at the faulting page alone and doubles (up to 512 pages) while faults come
//!   in order (so 12 messages for 4,096 pages touched in order);
//! - `uffd_minor_continue`: first writes to each page of a shared-memory range (a memfd mapped
//!   `MAP_SHARED`, registered MISSING | MINOR) whose page cache was filled beforehand
//!   (`fallocate`, untimed: the VMM's prefill through its alias), served with
//!   `UFFDIO_CONTINUE` and continue-ahead (the run doubles up to 512 pages while minor faults
//!   come in order), what `--ram-backing shm --uffd-prefill` gives the guest
//!   (`uffd_minor_prefill_and_continue`: the same plus the `fallocate` fill, timed);
//! - floor: `madvise(MADV_POPULATE_WRITE)` of the same number of fresh pages (the kernel
//!   populates them in one call: no fault, no handler);
//! - memslot-per-page: `KVM_SET_USER_MEMORY_REGION` of one 4 KiB slot, the ioctl the lazy
//!   stage-2 range pays per page (`memvisor::stage2`), *without* its MMIO exit (~35 µs on PVM):
//!   a lower bound of that path's cost per page (the whole path is measured in the guest,
//!   [`guest_figures`]).
//!
//! These are host figures: the vCPU's own stage-2 fault into the uffd path is not in them;
//! [`guest_figures`] has those.
//!
//! Guest demand paging ([`guest_figures`]): the `bench` guest's first write from ring 3 to
//! each page of a populated region whose frames the host never touched (`r3_first_touch`,
//! rdtsc in the guest): on uffd-backed RAM (`--uffd`: a vCPU stage-2 fault into the uffd
//! handler, with fault-around, [`memvisor::uffd::FAULT_AROUND_PAGES`]) vs on RAM
//! prefaulted with `MADV_POPULATE_WRITE` before the guest starts (the floor: the guest's
//! touch, then only KVM's shadow fill, plus the populate's own time per page).
//!
//! Memslot per page, measured ([`memslot_run`]): one `--uffd` guest that also has a lazy
//! stage-2 range of 2,048 pages (`--quick`; 8,192 otherwise) writes once to each page of a
//! fresh populated RAM region and once to each page of the lazy range, 16 rounds of
//! 1/16th each, alternating (rdtsc around each half-round). Each lazy page's first write is an
//! MMIO exit after which the VMM adds a 4 KiB memslot for it ([`memvisor::stage2::Stage2`]), so
//! the slot count grows by the whole range over the run; the first and last rounds are
//! reported too. Runs of the three kinds alternate, median of the rounds and of the runs.
//!
//! Snapshot restore ([`restore_figures`]): the demo is snapshotted at its first sync point
//! (once per RAM size, 256 MiB and 4 GiB), then restored in this process again and again,
//! the two sizes interleaved round by round (31 rounds, 3 with `--quick`; median: on a
//! shared host single restores are slowed several-fold when another process takes the CPU):
//! from the start of `Vm::restore` (files opened and checked, every page CRC verified, state
//! decoded, RAM registered with userfaultfd, vCPU state loaded, and meanwhile on a second
//! thread the eager RAM memslots: the 2 MiB chunks holding the file's pages) to the
//! first return of `KVM_RUN`, i.e. the guest has executed (an upper bound of "to its first
//! instruction"; the guest's first touches of its code and stack pages are served from the
//! file inside that time).

use super::{fig, Figure, Target};
use memvisor::uffd::{PageSource, UffdHandler, ZeroSource, PAGE};
use std::time::Instant;

/// `MADV_POPULATE_WRITE` (Linux 5.14, include/uapi/asm-generic/mman-common.h).
const MADV_POPULATE_WRITE: i32 = 23;

struct Filled;
impl PageSource for Filled {
    fn read(&mut self, _hva: u64, buf: &mut [u8; PAGE as usize]) -> bool {
        buf[0] = 1;
        true
    }
}

struct Mapping(*mut libc::c_void, usize);

impl Mapping {
    fn new(pages: usize) -> Option<Mapping> {
        let len = pages * PAGE as usize;
        // SAFETY: a fresh private anonymous mapping owned by the returned value.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        (p != libc::MAP_FAILED).then_some(Mapping(p, len))
    }

    fn touch_all(&self) {
        for off in (0..self.1).step_by(PAGE as usize) {
            // SAFETY: inside the mapping this value owns.
            unsafe { std::ptr::write_volatile((self.0 as *mut u8).add(off), 2) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns.
        unsafe { libc::munmap(self.0, self.1) };
    }
}

/// ns per page of first writes through a uffd handler serving from `source`.
fn uffd_ns(pages: usize, source: Box<dyn PageSource>) -> Option<f64> {
    let m = Mapping::new(pages)?;
    // SAFETY: the mapping outlives the handler (dropped first, below).
    let h = unsafe { UffdHandler::start(&[(m.0 as u64, m.1 as u64)], source) }.ok()?;
    let t0 = Instant::now();
    m.touch_all();
    let ns = t0.elapsed().as_nanos() as f64 / pages as f64;
    let served = h.stats();
    drop(h);
    // Every page served once: filled for its own fault, or ahead of one (fault-around,
    // readahead).
    (served.copies + served.zeropages + served.fault_around + served.read_ahead == pages as u64)
        .then_some(ns)
}

/// ns per page of first writes to a MINOR-registered shared-memory range whose page cache
/// was filled first: minor faults served with `UFFDIO_CONTINUE`; and ns per page of that
/// fill (`fallocate`).
fn minor_ns(pages: usize) -> Option<(f64, f64)> {
    let len = pages as u64 * PAGE;
    let shm = memvisor::memory::ShmBacking::create(len).ok()?;
    let t0 = Instant::now();
    shm.populate(0, len).ok()?;
    let fill = t0.elapsed().as_nanos() as f64 / pages as f64;
    use std::os::fd::AsRawFd;
    // SAFETY: a new shared mapping of the memfd, owned by the Mapping below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            shm.file().as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let m = Mapping(p, len as usize);
    // SAFETY: the shared mapping outlives the handler (dropped first, below).
    let h = unsafe {
        UffdHandler::start_with(
            &[(m.0 as u64, len)],
            Box::new(ZeroSource),
            memvisor::uffd::UffdMode::MissingMinor,
        )
    }
    .ok()?;
    let t0 = Instant::now();
    m.touch_all();
    let ns = t0.elapsed().as_nanos() as f64 / pages as f64;
    let s = h.stats();
    drop(h);
    (s.missing_faults == 0 && s.continues + s.continue_ahead == pages as u64).then_some((ns, fill))
}

/// ns per page of `MADV_POPULATE_WRITE` on fresh pages.
fn populate_ns(pages: usize) -> Option<f64> {
    let m = Mapping::new(pages)?;
    let t0 = Instant::now();
    // SAFETY: populating the mapping this function owns.
    let rc = unsafe { libc::madvise(m.0, m.1, MADV_POPULATE_WRITE) };
    let ns = t0.elapsed().as_nanos() as f64 / pages as f64;
    (rc == 0).then_some(ns)
}

/// ns per one-page memslot added (then removed, untimed) on a fresh KVM VM.
fn memslot_ns(pages: usize) -> Option<f64> {
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let vm = kvm.create_vm().ok()?;
    let n = pages.min(kvm.get_nr_memslots().saturating_sub(8)).max(1);
    let m = Mapping::new(n)?;
    let region = |slot: u32, size: u64| kvm_bindings::kvm_userspace_memory_region {
        slot,
        guest_phys_addr: slot as u64 * PAGE,
        memory_size: size,
        userspace_addr: m.0 as u64 + slot as u64 * PAGE,
        flags: 0,
    };
    let t0 = Instant::now();
    for s in 0..n as u32 {
        // SAFETY: each slot maps one page of `m`, which outlives the VM's slots (they are
        // deleted below before `m` is dropped).
        unsafe { vm.set_user_memory_region(region(s, PAGE)) }.ok()?;
    }
    let ns = t0.elapsed().as_nanos() as f64 / n as f64;
    for s in 0..n as u32 {
        // SAFETY: deleting a slot (size 0) maps nothing.
        let _ = unsafe { vm.set_user_memory_region(region(s, 0)) };
    }
    Some(ns)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The figures; rows whose mechanism the host lacks hold NaN and say so in the peer name.
pub(super) fn figures(quick: bool) -> Vec<Figure> {
    let (pages, rounds) = if quick { (4096, 3) } else { (16384, 7) };
    let (mut zero, mut copy, mut pop, mut slot) = (vec![], vec![], vec![], vec![]);
    let (mut minor, mut minor_fill) = (vec![], vec![]);
    for _ in 0..rounds {
        zero.push(uffd_ns(pages, Box::new(ZeroSource)).unwrap_or(f64::NAN));
        copy.push(uffd_ns(pages, Box::new(Filled)).unwrap_or(f64::NAN));
        let (m, f) = minor_ns(pages).unwrap_or((f64::NAN, f64::NAN));
        minor.push(m);
        minor_fill.push(m + f);
        pop.push(populate_ns(pages).unwrap_or(f64::NAN));
        slot.push(memslot_ns(pages).unwrap_or(f64::NAN));
    }
    let (zero, copy, pop, slot) = (median(zero), median(copy), median(pop), median(slot));
    let (minor, minor_fill) = (median(minor), median(minor_fill));
    let na = |x: f64, what: &str| {
        if x.is_finite() {
            what.to_string()
        } else {
            format!("{what} (skipped: unsupported by host)")
        }
    };
    vec![
        fig(
            "uffd_zero_fill_demand_paging_per_page",
            zero,
            "ns",
            &na(pop, "MADV_POPULATE_WRITE per page (floor)"),
            pop,
            Target::RatioMax(3.0),
        ),
        fig(
            "uffd_copy_demand_paging_per_page",
            copy,
            "ns",
            &na(pop, "MADV_POPULATE_WRITE per page (floor)"),
            pop,
            Target::RatioMax(3.0),
        ),
        fig(
            "uffd_minor_continue_per_page",
            minor,
            "ns",
            &na(pop, "MADV_POPULATE_WRITE per page (floor)"),
            pop,
            Target::Scale,
        ),
        fig(
            "uffd_minor_prefill_and_continue_per_page",
            minor_fill,
            "ns",
            &na(pop, "MADV_POPULATE_WRITE per page (floor)"),
            pop,
            Target::Scale,
        ),
        fig(
            "uffd_minor_continue_vs_copy_per_page",
            minor,
            "ns",
            &na(copy, "uffd_copy per page (UFFDIO_COPY with readahead)"),
            copy,
            Target::Scale,
        ),
        fig(
            "uffd_zero_fill_vs_memslot_per_page",
            zero,
            "ns",
            &na(
                slot,
                "KVM_SET_USER_MEMORY_REGION of a 4 KiB slot (lazy range's ioctl, no exit)",
            ),
            slot,
            Target::RatioMax(0.1),
        ),
    ]
}

/// Run the demo with `mem` bytes of RAM to its first sync point and snapshot it to `path`.
fn demo_snapshot(mem: u64, path: &std::path::Path) -> Option<()> {
    use memvisor::vm::{Exit, Ucall, Vm};
    let cfg = memvisor::vmm::VmConfig {
        mem_bytes: mem,
        scenario: "demo".into(),
        timeout: std::time::Duration::from_secs_f64(30.0 * memvisor::backend::time_scale()),
        ..memvisor::vmm::VmConfig::default()
    };
    let mut vm = Vm::create(&cfg, crate::registry::hooks_for(&cfg.scenario), None).ok()?;
    vm.set_stepwise(true);
    loop {
        match vm.run().ok()? {
            Exit::Ucall(Ucall::Sync(_)) => break,
            e if e.resumable() => {}
            _ => return None,
        }
    }
    vm.snapshot(path).ok().map(|_| ())
}

/// Restore `path` and run to the next sync point: µs from the start of the restore to the
/// first return of `KVM_RUN`, and the pages read from the file by then... and by the end.
fn restore_us(path: &std::path::Path) -> Option<f64> {
    let opts = memvisor::vm::RestoreOptions::default();
    let mut vm =
        memvisor::vm::Vm::restore(path, None, memvisor::guest_image::GUEST_ELF.to_vec(), opts)
            .ok()?;
    vm.run().ok()?;
    vm.first_exit_us().map(|u| u as f64)
}

/// Restore-to-first-guest-exit of a 256 MiB and a 4 GiB demo snapshot (see the module docs).
pub(super) fn restore_figures(quick: bool) -> Vec<Figure> {
    let dir = std::env::temp_dir().join(format!("memvisor-bench-restore-{}", std::process::id()));
    let rounds = if quick { 3 } else { 31 };
    let (small, large) = (dir.join("256M.snap"), dir.join("4G.snap"));
    let made = std::fs::create_dir_all(&dir).is_ok()
        && demo_snapshot(256 << 20, &small).is_some()
        && demo_snapshot(4 << 30, &large).is_some();
    let (mut a, mut b) = (vec![], vec![]);
    for _ in 0..rounds {
        if !made {
            break;
        }
        a.push(restore_us(&small).unwrap_or(f64::NAN));
        b.push(restore_us(&large).unwrap_or(f64::NAN));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (a, b) = (median(a), median(b));
    let peer = |what: &str| {
        if a.is_finite() && b.is_finite() {
            what.to_string()
        } else {
            format!("{what} (skipped: unsupported by host: userfaultfd or KVM)")
        }
    };
    vec![
        fig(
            "snapshot_restore_to_first_guest_exit_256MiB",
            a,
            "us",
            &peer("the same, 4 GiB guest"),
            b,
            Target::ValueMax(10_000.0),
        ),
        fig(
            "snapshot_restore_to_first_guest_exit_4GiB",
            b,
            "us",
            &peer("the same, 256 MiB guest (flat: lazy restore)"),
            a,
            // Flat: issue 16's "stays flat as the guest's memory grows to 4 GiB", ≤ ~1.2.
            Target::ValueAndRatioMax(10_000.0, 1.2),
        ),
    ]
}

/// One `bench` guest run: (r3_first_touch ns, populate ns per page or NaN).
fn bench_guest(quick: bool, uffd: bool) -> Option<(f64, f64)> {
    let mut cfg = super::guest_config(quick);
    cfg.uffd = uffd;
    let mut vm =
        memvisor::vm::Vm::create(&cfg, crate::registry::hooks_for(&cfg.scenario), None).ok()?;
    let mut pop = f64::NAN;
    if !uffd {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let t0 = Instant::now();
        let mut bytes = 0u64;
        for r in vm.space().ram().mem.iter() {
            // SAFETY: populating guest RAM this VM owns (contents unchanged: fresh pages
            // read as zero, written pages are kept).
            let rc =
                unsafe { libc::madvise(r.as_ptr().cast(), r.len() as usize, MADV_POPULATE_WRITE) };
            if rc != 0 {
                return None;
            }
            bytes += r.len();
        }
        pop = t0.elapsed().as_nanos() as f64 / (bytes / PAGE) as f64;
    }
    vm.run().ok()?;
    let r = vm.report();
    if !r.success() {
        return None;
    }
    let g = |n: &str| super::rec(&r, n, r.tsc_khz);
    Some((g("r3_first_touch"), pop))
}

/// Pages of the lazy stage-2 range in [`memslot_run`] (one memslot each by the end): 2,048
/// (`--quick`) or 8,192, fewer if KVM allows fewer memslots (64 kept for RAM and the rest),
/// a multiple of the guest's 16 rounds.
fn memslot_pages(quick: bool) -> u64 {
    let want: u64 = if quick { 2048 } else { 8192 };
    let limit = kvm_ioctls::Kvm::new().map_or(0, |k| k.get_nr_memslots() as u64);
    want.min(limit.saturating_sub(64)) / 16 * 16
}

/// What one [`memslot_run`] measured, ns per page.
#[derive(Clone, Copy)]
struct MemslotRun {
    /// Median round: first writes to fresh uffd-backed RAM.
    uffd: f64,
    /// Median round: first writes to the lazy range (MMIO exit + a 4 KiB memslot per page).
    slot: f64,
    /// The lazy range's first round (fewest memslots) and last round (most).
    slot_first: f64,
    slot_last: f64,
    /// The RAM half of the first round (before any lazy memslot was added).
    uffd_first: f64,
}

/// One `bench` guest run with `--uffd` RAM and a lazy stage-2 range of `pages` pages (past the
/// stage-2 test layout), whose ring-3 loop writes once to each page of a fresh populated
/// region and of the lazy range, interleaved round by round (16 rounds). `None` if the run
/// failed or a lazy page was not backed by its own memslot.
fn memslot_run(quick: bool, pages: u64) -> Option<MemslotRun> {
    use memvisor_abi::stage2 as s2;
    let (_, phys) = memvisor::backend::probe().ok()?;
    let off = memvisor::stage2::STAGE2_LAYOUT;
    let mut cfg = super::guest_config(quick);
    cfg.uffd = true;
    cfg.stage2_extras
        .lazy
        .push((phys.stage2_base + off, pages * PAGE));
    cfg.arg[0] = pages;
    cfg.arg[1] = s2::GVA_BASE + off;
    let mut vm =
        memvisor::vm::Vm::create(&cfg, crate::registry::hooks_for(&cfg.scenario), None).ok()?;
    vm.run().ok()?;
    let r = vm.report();
    let backed = r.stage2_report.as_ref().map_or(0, |s| s.lazy_backed);
    if !r.success() || backed != pages {
        return None;
    }
    let g = |n: &str| super::rec(&r, n, r.tsc_khz);
    Some(MemslotRun {
        uffd: g("r3_ram_first_touch_vs_memslot"),
        slot: g("r3_memslot_first_touch"),
        slot_first: g("r3_memslot_first_touch_first_round"),
        slot_last: g("r3_memslot_first_touch_last_round"),
        uffd_first: g("r3_ram_first_touch_vs_memslot_first_round"),
    })
}

/// Guest demand paging through uffd vs the floor and vs the memslot-per-page lazy range (see
/// the module docs).
pub(super) fn guest_figures(quick: bool) -> Vec<Figure> {
    let rounds = if quick { 2 } else { 5 };
    let pages = memslot_pages(quick);
    let (mut uf, mut pre, mut pop) = (vec![], vec![], vec![]);
    let mut runs: Vec<MemslotRun> = vec![];
    for _ in 0..rounds {
        let u = bench_guest(quick, true);
        uf.push(u.map_or(f64::NAN, |x| x.0));
        let p = bench_guest(quick, false);
        pre.push(p.map_or(f64::NAN, |x| x.0));
        pop.push(p.map_or(f64::NAN, |x| x.1));
        if let Some(m) = (pages > 0).then(|| memslot_run(quick, pages)).flatten() {
            runs.push(m);
        }
    }
    let (uf, pre, pop) = (median(uf), median(pre), median(pop));
    let floor = pre + pop;
    let col = |f: fn(&MemslotRun) -> f64| median(runs.iter().map(f).collect());
    let (m_uffd, m_slot) = (col(|m| m.uffd), col(|m| m.slot));
    let (m_first, m_last) = (col(|m| m.slot_first), col(|m| m.slot_last));
    let m_uffd_first = col(|m| m.uffd_first);
    let rate = |ns: f64| 1e9 / ns;
    let na = |x: f64, y: f64, what: &str| {
        if x.is_finite() && y.is_finite() {
            what.to_string()
        } else {
            format!("{what} (skipped: unsupported by host)")
        }
    };
    let slot_peer = format!(
        "guest first write to a lazy stage-2 page, one 4 KiB memslot per page ({pages} pages, same guest, interleaved rounds)"
    );
    vec![
        fig(
            "guest_demand_paging_uffd_per_page",
            uf,
            "ns",
            &na(
                uf,
                floor,
                "guest first touch of MADV_POPULATE_WRITE-prefaulted RAM + populate per page (floor)",
            ),
            floor,
            Target::RatioMax(3.0),
        ),
        fig(
            "guest_demand_paging_uffd_vs_memslot_per_page",
            m_uffd,
            "ns",
            &na(m_uffd, m_slot, &slot_peer),
            m_slot,
            Target::RatioMax(0.1),
        ),
        fig(
            "guest_demand_paging_uffd_rate",
            rate(m_uffd),
            "pages/s",
            &na(m_uffd, m_slot, &slot_peer),
            rate(m_slot),
            Target::RatioMin(10.0),
        ),
        fig(
            "guest_memslot_first_touch_last_round",
            m_last,
            "ns",
            &na(
                m_last,
                m_first,
                &format!("the same, first round (slot count grows by {pages} over the rounds)"),
            ),
            m_first,
            Target::Scale,
        ),
        fig(
            "guest_uffd_first_touch_first_round",
            m_uffd_first,
            "ns",
            &na(
                m_uffd_first,
                m_uffd,
                "the same guest's uffd first touch, median round (rounds after memslots were added)",
            ),
            m_uffd,
            Target::Scale,
        ),
    ]
}
