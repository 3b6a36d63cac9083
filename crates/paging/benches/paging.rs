//! Page-table build benchmarks, each beside a memset of the same number of PTE bytes:
//!
//! * `direct_map_64g_2m`: `PageTables::new` + `map_direct` of 64 GiB with 2 MiB pages
//!   (32768 PDEs in 64 PDs = 256 KiB of entries). Target ≤ 1 ms.
//! * `range_1g_4k`: `map_range` of 1 GiB with 4 KiB pages (262144 PTEs in 512 PTs = 2 MiB of
//!   entries). Target ≤ 2 × memset of 2 MiB.
//! * `single_page/*`: map + unmap of one 4 KiB page (with and without existing tables),
//!   protect of one page, translate through a 2 MiB leaf.
//!
//! Guest memory is 8 MiB at 1 TiB and only holds the tables (the frame pool); the mapped
//! GPAs (0 .. 64 GiB) need not exist. Teardown is not timed. After the criterion groups a
//! summary measured in the same run (interleaved, median of 201) prints ns per entry and the
//! ratio to memset.
//!
//! Run: `cargo bench -p memvisor-paging --bench paging`.

use criterion::{black_box, criterion_group, BenchmarkId, Criterion, Throughput};
use memvisor_frames::addr::{Gpa, Gva, Pfn, HUGE_PAGE_SIZE, PAGE_SIZE};
use memvisor_paging::{FramePool, PageSize, PageTables, Protection, PteFlags};
use std::time::{Duration, Instant};
use vm_memory::{GuestAddress, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;

const MEM_BASE: u64 = 1 << 40;
const MEM_SIZE: u64 = 8 << 20;
const DIRECT_BASE: Gva = Gva::new(0xffff_8880_0000_0000);
const DIRECT_BYTES: u64 = 64 << 30;
const DIRECT_ENTRIES: u64 = DIRECT_BYTES / (2 << 20);
const RANGE_GVA: Gva = Gva::new(0x0000_7f00_0000_0000);
const RANGE_ENTRIES: u64 = HUGE_PAGE_SIZE / PAGE_SIZE;

struct Env {
    mem: Mem,
    pool: FramePool,
    flags: PteFlags,
}

impl Env {
    fn new() -> Self {
        let mem = Mem::from_ranges(&[(GuestAddress(MEM_BASE), MEM_SIZE as usize)]).unwrap();
        let pool = FramePool::new(Pfn::new(MEM_BASE / PAGE_SIZE), MEM_SIZE / PAGE_SIZE).unwrap();
        let flags = Protection::KERNEL_DATA.to_pte_flags(true) | PteFlags::GLOBAL;
        let mut env = Env { mem, pool, flags };
        // Touch the whole pool once so page faults are not measured.
        for _ in 0..2 {
            env.direct_map().free_all(&mut env.pool);
            let mut pt = env.tables();
            env.range_1g(&mut pt);
            pt.free_all(&mut env.pool);
        }
        env
    }

    fn tables(&mut self) -> PageTables {
        PageTables::new(&self.mem, &mut self.pool).unwrap()
    }

    fn direct_map(&mut self) -> PageTables {
        let mut pt = self.tables();
        let ram = [(Gpa::new(0), DIRECT_BYTES)];
        pt.edit(&self.mem, &mut self.pool)
            .map_direct(DIRECT_BASE, &ram, false, self.flags)
            .unwrap();
        pt
    }

    fn range_1g(&mut self, pt: &mut PageTables) {
        pt.edit(&self.mem, &mut self.pool)
            .map_range(
                RANGE_GVA,
                Gpa::new(0x4000_0000),
                HUGE_PAGE_SIZE,
                PageSize::Size4K,
                self.flags,
            )
            .unwrap();
    }

    /// Time `iters` direct-map builds (teardown untimed).
    fn time_direct(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = Instant::now();
            let pt = black_box(self.direct_map());
            total += t.elapsed();
            pt.free_all(&mut self.pool);
        }
        total
    }

    /// Time `iters` 1 GiB / 4 KiB range maps into fresh tables (setup, teardown untimed).
    fn time_range(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let mut pt = self.tables();
            let t = Instant::now();
            self.range_1g(&mut pt);
            total += t.elapsed();
            pt.free_all(&mut self.pool);
        }
        total
    }
}

fn time_memset(buf: &mut [u8], iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        black_box(&mut *buf).fill(0);
        black_box(&*buf);
    }
    t.elapsed()
}

fn benches(c: &mut Criterion) {
    let mut env = Env::new();

    let mut g = c.benchmark_group("direct_map_64g_2m");
    g.throughput(Throughput::Elements(DIRECT_ENTRIES));
    g.bench_function("page_tables", |b| b.iter_custom(|n| env.time_direct(n)));
    let mut buf = vec![1u8; (DIRECT_ENTRIES * 8) as usize];
    g.bench_function(BenchmarkId::new("memset", "256KiB"), |b| {
        b.iter_custom(|n| time_memset(&mut buf, n))
    });
    g.finish();

    let mut g = c.benchmark_group("range_1g_4k");
    g.throughput(Throughput::Elements(RANGE_ENTRIES));
    g.bench_function("page_tables", |b| b.iter_custom(|n| env.time_range(n)));
    let mut buf = vec![1u8; (RANGE_ENTRIES * 8) as usize];
    g.bench_function(BenchmarkId::new("memset", "2MiB"), |b| {
        b.iter_custom(|n| time_memset(&mut buf, n))
    });
    g.finish();

    let mut g = c.benchmark_group("single_page");
    let mut pt = env.direct_map();
    let (mem, pool, flags) = (&env.mem, &mut env.pool, env.flags);
    let gva = Gva::new(0x1234_5000);
    let s4k = PageSize::Size4K;
    // Into an empty area: allocates (and then frees) a PDPT, a PD and a PT.
    g.bench_function("map_unmap_4k_new_tables", |b| {
        b.iter(|| {
            pt.edit(mem, pool)
                .map(gva, Gpa::new(0x5000), s4k, flags)
                .unwrap();
            let _ = black_box(pt.edit(mem, pool).unmap(gva, PAGE_SIZE).unwrap());
        })
    });
    // Next to an existing page: the tables exist.
    let neighbour = Gva::new(gva.raw() + PAGE_SIZE);
    pt.edit(mem, pool)
        .map(neighbour, Gpa::new(0x6000), s4k, flags)
        .unwrap();
    g.bench_function("map_unmap_4k", |b| {
        b.iter(|| {
            pt.edit(mem, pool)
                .map(gva, Gpa::new(0x5000), s4k, flags)
                .unwrap();
            let _ = black_box(pt.edit(mem, pool).unmap(gva, PAGE_SIZE).unwrap());
        })
    });
    let ro = Protection::KERNEL_RODATA.to_pte_flags(true);
    let mut flip = false;
    g.bench_function("protect_4k", |b| {
        b.iter(|| {
            flip = !flip;
            let f = if flip { ro } else { flags };
            let _ = black_box(pt.protect(mem, neighbour, PAGE_SIZE, f).unwrap());
        })
    });
    let probe = Gva::new(DIRECT_BASE.raw() + 0x7_1234_5678);
    g.bench_function("translate_2m", |b| {
        b.iter(|| black_box(pt.translate(mem, black_box(probe)).unwrap()))
    });
    g.finish();
    pt.free_all(&mut env.pool);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Interleaved runs: page-table build, then memset of the same bytes, 201 times; medians.
fn summary() {
    let mut env = Env::new();
    let mut small = vec![1u8; (DIRECT_ENTRIES * 8) as usize];
    let mut big = vec![1u8; (RANGE_ENTRIES * 8) as usize];
    let (mut d, mut dm, mut r, mut rm) = (vec![], vec![], vec![], vec![]);
    for _ in 0..201 {
        d.push(env.time_direct(1).as_nanos() as f64);
        dm.push(time_memset(&mut small, 1).as_nanos() as f64);
        r.push(env.time_range(1).as_nanos() as f64);
        rm.push(time_memset(&mut big, 1).as_nanos() as f64);
    }
    let (d, dm, r, rm) = (median(d), median(dm), median(r), median(rm));
    println!("\npaging summary (median of 201 interleaved runs):");
    println!(
        "  direct map 64 GiB / 2 MiB: {:>9.1} us  {:.2} ns/PDE | memset 256 KiB {:>7.1} us  {:.2} ns/8 B | ratio {:.2}",
        d / 1e3,
        d / DIRECT_ENTRIES as f64,
        dm / 1e3,
        dm / DIRECT_ENTRIES as f64,
        d / dm
    );
    println!(
        "  range 1 GiB / 4 KiB:       {:>9.1} us  {:.2} ns/PTE | memset 2 MiB   {:>7.1} us  {:.2} ns/8 B | ratio {:.2}",
        r / 1e3,
        r / RANGE_ENTRIES as f64,
        rm / 1e3,
        rm / RANGE_ENTRIES as f64,
        r / rm
    );
}

criterion_group!(paging, benches);

fn main() {
    paging();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
