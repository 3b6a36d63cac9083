//! Host-side rows of `memvisor bench`: a Linux minor fault, page-table builds against a
//! memset of the same PTE bytes, and frame alloc + free pairs against
//! `buddy_system_allocator` (timed with `Instant`, medians of batches).

use super::median_ns;
use memvisor::addr::{Gpa, Gva, Pfn};
use memvisor::frames::BitmapAllocator;
use memvisor::paging::{FramePool, PageSize, PageTables, PteFlags};
use std::time::Instant;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Host Linux minor fault: first touch of fresh anonymous pages in this process, ns per page.
pub(super) fn host_minor_fault_ns(pages: usize) -> f64 {
    let len = pages * 4096;
    // SAFETY: a private anonymous mapping we own and unmap below; no other reference to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return f64::NAN;
    }
    let t0 = Instant::now();
    for i in 0..pages {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile((p as *mut u8).add(i * 4096), 1) };
    }
    let ns = t0.elapsed().as_nanos() as f64 / pages as f64;
    // SAFETY: unmapping exactly what we mapped.
    unsafe { libc::munmap(p, len) };
    ns
}

/// Page-table build figures: ns per entry for a direct map of `bytes` with `size` pages, and
/// memset of the same number of PTE bytes, one of each per rep (interleaved, as in
/// `crates/paging/benches/paging.rs`); medians over `reps`.
pub(super) fn pt_build(bytes: u64, size: PageSize, reps: usize) -> (f64, f64) {
    let entries = bytes / size.bytes();
    let tables = (entries / 512 + 8) as usize;
    let mem_bytes = (tables + 16) * 4096;
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_bytes)]) else {
        return (f64::NAN, f64::NAN);
    };
    let flags = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::NO_EXECUTE;
    let mut times = Vec::new();
    // The memset peer runs interleaved with the builds (one of each per rep), so both see
    // the same machine state; each figure is the median over reps.
    let mut buf = vec![0xffu8; (entries * 8) as usize];
    let mut memsets = Vec::new();
    for _ in 0..reps {
        let Ok(mut pool) = FramePool::new(Pfn::new(1), (mem_bytes / 4096 - 1) as u64) else {
            return (f64::NAN, f64::NAN);
        };
        let Ok(mut pt) = PageTables::new(&mem, &mut pool) else {
            return (f64::NAN, f64::NAN);
        };
        // Map GPAs above the table memory (a writable mapping over table frames is refused).
        let base = Gpa::new(1 << 40);
        let t0 = Instant::now();
        let ok = match size {
            PageSize::Size4K => pt
                .edit(&mem, &mut pool)
                .map_range(Gva::new(0xffff_8880_0000_0000), base, bytes, size, flags)
                .is_ok(),
            _ => pt
                .edit(&mem, &mut pool)
                .map_direct(
                    Gva::new(0xffff_8880_0000_0000),
                    &[(base, bytes)],
                    false,
                    flags,
                )
                .is_ok(),
        };
        let dt = t0.elapsed();
        if !ok {
            return (f64::NAN, f64::NAN);
        }
        times.push(dt.as_nanos() as f64 / entries as f64);
        memsets.push(
            median_ns(1, 1, || {
                buf.fill(0);
                std::hint::black_box(&buf);
            }) / entries as f64,
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (median(&mut times), median(&mut memsets))
}

/// Single-frame alloc+free pair on our bitmap allocator and on buddy_system_allocator's
/// FrameAllocator, 1 GiB of frames (ns per pair).
pub(super) fn frames_pair() -> (f64, f64) {
    let frames = (1u64 << 30) / 4096;
    let mut ours = BitmapAllocator::new(Pfn::new(0), frames);
    let a = median_ns(9, 100_000, || {
        if let Ok(p) = ours.alloc() {
            let _ = ours.free(p, 1);
        }
    });
    let mut buddy = buddy_system_allocator::FrameAllocator::<32>::new();
    buddy.add_frame(0, frames as usize);
    let b = median_ns(9, 100_000, || {
        if let Some(p) = buddy.alloc(1) {
            buddy.dealloc(p, 1);
        }
    });
    (a, b)
}
