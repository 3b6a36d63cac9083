//! Frame-allocator benchmarks (issue 2): `memvisor_frames::BitmapAllocator` beside
//! `buddy_system_allocator::FrameAllocator` on the same workloads, in the same run.
//!
//! Configurations: 1 GiB (2^18 frames) and 64 GiB (2^24 frames) at PFN 2^20 (4 GiB), each
//! `empty` or `90%` full with the random fragmented pattern of `init_bitmap_rand(7, 0.9)`; the
//! buddy allocator gets exactly the same free frames. In the `90%` state one extra 2 MiB group
//! (the last one) is left entirely free so that a 2 MiB-aligned allocation can succeed — it
//! must be found among all groups.
//!
//! Workloads:
//! * `pair` — allocate one frame and free it (`alloc` + `free(p, 1)` vs `alloc(1)` +
//!   `dealloc(p, 1)`).
//! * `huge` — allocate 512 frames aligned to 512 (2 MiB) and free them (the buddy allocator
//!   aligns a 512-frame block to 512 by construction).
//! * `batch` — allocate 1024 single frames, then free them in reverse order (per frame).
//! * `free-all` — from the state where every frame of the configuration is allocated (`empty`:
//!   all frames, allocated one at a time; `90%`: the random 90 %), free every allocated frame
//!   with one single-frame call per frame, in address order. Throughput is frames freed.
//!   `free-all-runs` (ours only) frees the same frames with one call per maximal run.
//!
//! Run: `CARGO_TARGET_DIR=/tmp/target-frames cargo bench -p memvisor-frames --bench frames`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use buddy_system_allocator::FrameAllocator;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use memvisor_frames::addr::Pfn;
use memvisor_frames::BitmapAllocator;

const BASE: u64 = 1 << 20;
type Buddy = FrameAllocator<32>;

struct Config {
    name: String,
    frames: u64,
    fill: bool,
}

/// True under `cargo bench` (criterion gets `--bench`); under `cargo test --benches` each
/// benchmark runs once as a smoke test, and only the 1 GiB configurations are built.
fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn configs() -> Vec<Config> {
    let mut v = Vec::new();
    let sizes: &[(&str, u64)] = if bench_mode() {
        &[("1GiB", 1 << 18), ("64GiB", 1 << 24)]
    } else {
        &[("1GiB", 1 << 18)]
    };
    for &(size, frames) in sizes {
        for fill in [false, true] {
            let state = if fill { "90%" } else { "empty" };
            v.push(Config {
                name: format!("{size}/{state}"),
                frames,
                fill,
            });
        }
    }
    v
}

/// Our allocator in the configuration's state.
fn ours(c: &Config) -> BitmapAllocator {
    let mut a = BitmapAllocator::new(Pfn::new(BASE), c.frames);
    if c.fill {
        a.init_bitmap_rand(7, 0.9);
        // Leave the last 2 MiB group entirely free.
        let last = BASE + c.frames - 512;
        for p in last..last + 512 {
            if !a.is_free(Pfn::new(p)) {
                a.free(Pfn::new(p), 1).expect("filled frame");
            }
        }
    }
    a
}

/// The allocated frames of `a`, in address order.
fn used_frames(a: &BitmapAllocator) -> Vec<u64> {
    (BASE..BASE + a.frames())
        .filter(|&p| !a.is_free(Pfn::new(p)))
        .collect()
}

/// The maximal allocated runs of `a` as `(start, len)`.
fn used_runs(a: &BitmapAllocator) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for p in used_frames(a) {
        match runs.last_mut() {
            Some((s, l)) if *s + *l == p => *l += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs
}

/// A buddy allocator with the same free frames as `a`, with the others allocated through it
/// (every frame allocated one at a time, then the free ones deallocated).
fn buddy_like(a: &BitmapAllocator) -> Buddy {
    let n = a.frames() as usize;
    let mut b = Buddy::new();
    b.add_frame(BASE as usize, BASE as usize + n);
    let mut all = Vec::with_capacity(n);
    while let Some(p) = b.alloc(1) {
        all.push(p);
    }
    all.sort_unstable();
    for p in all {
        if a.is_free(Pfn::new(p as u64)) {
            b.dealloc(p, 1);
        }
    }
    b
}

/// A buddy allocator with every frame free (cheap: no per-frame work).
fn buddy_empty(frames: u64) -> Buddy {
    let mut b = Buddy::new();
    b.add_frame(BASE as usize, (BASE + frames) as usize);
    b
}

fn buddy_for(c: &Config, a: &BitmapAllocator) -> Buddy {
    if c.fill {
        buddy_like(a)
    } else {
        buddy_empty(c.frames)
    }
}

fn bench_ops(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("frames");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000));
    for c in configs() {
        let mut a = ours(&c);
        let mut b = buddy_for(&c, &a);
        eprintln!(
            "{}: ours free {} / {} frames, metadata {} bytes = {:.4} B/frame",
            c.name,
            a.free_frames(),
            c.frames,
            a.metadata_bytes(),
            a.metadata_bytes() as f64 / c.frames as f64
        );
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("pair/ours", &c.name), |it| {
            it.iter(|| {
                let p = a.alloc().expect("free frame");
                a.free(black_box(p), 1).expect("allocated");
            })
        });
        g.bench_function(BenchmarkId::new("pair/buddy", &c.name), |it| {
            it.iter(|| {
                let p = b.alloc(1).expect("free frame");
                b.dealloc(black_box(p), 1);
            })
        });
        g.bench_function(BenchmarkId::new("huge/ours", &c.name), |it| {
            it.iter(|| {
                let p = a.alloc_contiguous(512, 512).expect("free 2 MiB");
                a.free(black_box(p), 512).expect("allocated");
            })
        });
        g.bench_function(BenchmarkId::new("huge/buddy", &c.name), |it| {
            it.iter(|| {
                let p = b.alloc(512).expect("free 2 MiB");
                b.dealloc(black_box(p), 512);
            })
        });
        let mut held = Vec::with_capacity(1024);
        g.throughput(Throughput::Elements(1024));
        g.bench_function(BenchmarkId::new("batch/ours", &c.name), |it| {
            it.iter(|| {
                for _ in 0..1024 {
                    held.push(a.alloc().expect("free frame"));
                }
                while let Some(p) = held.pop() {
                    a.free(p, 1).expect("allocated");
                }
            })
        });
        let mut held = Vec::with_capacity(1024);
        g.bench_function(BenchmarkId::new("batch/buddy", &c.name), |it| {
            it.iter(|| {
                for _ in 0..1024 {
                    held.push(b.alloc(1).expect("free frame"));
                }
                while let Some(p) = held.pop() {
                    b.dealloc(p, 1);
                }
            })
        });
    }
    g.finish();
}

/// The state before free-all: everything the configuration allocates, allocated.
fn ours_full(c: &Config) -> BitmapAllocator {
    if c.fill {
        let mut a = BitmapAllocator::new(Pfn::new(BASE), c.frames);
        a.init_bitmap_rand(7, 0.9);
        a
    } else {
        let mut a = BitmapAllocator::new(Pfn::new(BASE), c.frames);
        while a.alloc().is_ok() {}
        a
    }
}

fn bench_free_all(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("frames");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(500));
    for c in configs() {
        let template = ours_full(&c);
        let used = used_frames(&template);
        let runs = used_runs(&template);
        g.throughput(Throughput::Elements(used.len() as u64));
        g.bench_function(BenchmarkId::new("free-all/ours", &c.name), |it| {
            it.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut a = template.clone();
                    let t = Instant::now();
                    for &p in &used {
                        a.free(Pfn::new(p), 1).expect("allocated");
                    }
                    total += t.elapsed();
                    black_box(&a);
                }
                total
            })
        });
        g.bench_function(BenchmarkId::new("free-all-runs/ours", &c.name), |it| {
            it.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut a = template.clone();
                    let t = Instant::now();
                    for &(p, n) in &runs {
                        a.free(Pfn::new(p), n).expect("allocated");
                    }
                    total += t.elapsed();
                    black_box(&a);
                }
                total
            })
        });
        g.bench_function(BenchmarkId::new("free-all/buddy", &c.name), |it| {
            it.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut b = buddy_like(&template);
                    let t = Instant::now();
                    for &p in &used {
                        b.dealloc(p as usize, 1);
                    }
                    total += t.elapsed();
                    black_box(&b);
                }
                total
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .without_plots()
        .nresamples(20_000)
        .configure_from_args();
    bench_ops(&mut c);
    bench_free_all(&mut c);
    c.final_summary();
}
