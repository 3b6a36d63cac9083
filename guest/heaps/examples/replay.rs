//! Host replay of an allocation trace (`tests/data/traces/*.trace`) on the memvisor heap, with
//! the host page source: prints peak live bytes, peak pages the heap held, efficiency, the
//! MeMS state at the peak (with `DUMP=1`), and ns per event against talc (best of several
//! interleaved timed passes; talc claims 64 KiB chunks from the same kind of page source, as
//! in the guest). A quick way to study the heap's layout decisions without booting the guest;
//! the figures that count are the guest's (`memvisor replay TRACE --heap memvisor`), which
//! run the same heap code.
//!
//! `cargo run -p memvisor-heaps --features host --release --example replay -- TRACE...`
//!
//! Environment: `DUMP=1` (and `DUMP_MID=1`: every mid-size block) prints the state at the
//! peak; `SERIES=1` prints `S pages slab+spare mems-data+kept mid live-bytes` on stderr at
//! every change of the pages held; `PAIR=size` and `BATCH=size` time the alloc + free pair
//! and the 256-block batch of one size against talc instead of replaying; `BENCH=1` runs
//! the guest bench's sequence; `TIMED=n` times `n` passes of each heap (default 7; 0: the
//! checked pass of each only); `POLLUTE=n` writes a 4 MiB buffer every `n` events, outside
//! the time counted, as each exit of a guest on a PVM host does to the caches (a guest replay
//! exits about every 300 events); `PEER=dlmalloc` replays on dlmalloc (the `dlmalloc` crate,
//! bump-allocated segments of one reservation) instead of talc. Under `valgrind
//! --tool=callgrind --cache-sim=yes` this gives the heap's instructions and cache misses per
//! event as deterministic figures; the `Heap` methods of the memvisor heap and of the peer
//! are never inlined, so `--toggle-collect='<replay::Peer as replay::Heap>::*'` (and the same
//! for `<memvisor_heaps::memvisor::MemvisorHeap<replay::Shared> as replay::Heap>::*`, with
//! `<replay::Shared*` and `<replay::DlPages*` toggled off again inside) counts each heap alone.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Instant;

use core::alloc::Layout;
use memvisor_heaps::host::HostPageSource;
use memvisor_heaps::{MemvisorHeap, PageSource};

/// One host page source shared by both sub-heaps (so the peak is of their sum), with a cache
/// of freed runs that are zeroed when handed out again, as the guest's page pool does (so the
/// timing is not dominated by `std::alloc` and fresh-page faults).
#[derive(Clone)]
struct Shared(Rc<RefCell<Pool>>);

#[derive(Default)]
struct Pool {
    src: HostPageSource,
    cache: std::collections::HashMap<usize, Vec<NonNull<u8>>>,
    held: usize,
    peak: usize,
    calls: (u64, u64),
}

impl Shared {
    fn new() -> Self {
        Shared(Rc::new(RefCell::new(Pool::default())))
    }
    fn peak_pages(&self) -> usize {
        self.0.borrow().peak
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (n, v) in std::mem::take(&mut self.cache) {
            for p in v {
                self.src.unmap_pages(p, n);
            }
        }
    }
}

// SAFETY: pages come from `HostPageSource` (which upholds the contract) and are zeroed again
// before a cached run is handed out a second time (except by `map_pages_dirty`).
unsafe impl PageSource for Shared {
    fn map_pages(&mut self, pages: usize) -> Option<NonNull<u8>> {
        self.get(pages, true)
    }
    fn map_pages_dirty(&mut self, pages: usize) -> Option<NonNull<u8>> {
        self.get(pages, false)
    }
    fn unmap_pages(&mut self, base: NonNull<u8>, pages: usize) {
        let mut p = self.0.borrow_mut();
        p.held -= pages;
        p.calls.1 += 1;
        p.cache.entry(pages).or_default().push(base);
    }
    fn shrink_pages(&mut self, base: NonNull<u8>, pages: usize, keep: usize) -> bool {
        let mut p = self.0.borrow_mut();
        let done = p.src.shrink_pages(base, pages, keep);
        if done {
            p.held -= pages - keep;
            p.calls.1 += 1;
        }
        done
    }
}

impl Shared {
    fn get(&mut self, pages: usize, zeroed: bool) -> Option<NonNull<u8>> {
        let mut p = self.0.borrow_mut();
        let got = match p.cache.get_mut(&pages).and_then(Vec::pop) {
            Some(q) => {
                if zeroed {
                    // SAFETY: a cached run of `pages` pages owned by the pool.
                    unsafe { q.as_ptr().write_bytes(0, pages * 4096) };
                }
                q
            }
            None => p.src.map_pages(pages)?,
        };
        p.held += pages;
        p.peak = p.peak.max(p.held);
        p.calls.0 += 1;
        Some(got)
    }
}

#[derive(Clone, Copy)]
enum Ev {
    A(usize, usize),
    F(usize),
    R(usize, usize),
}

fn load(path: &str) -> (Vec<Ev>, usize) {
    let text = std::fs::read_to_string(path).expect("read trace");
    let mut v = Vec::new();
    let mut ids = 0;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let n = |i: usize| f[i].parse::<usize>().expect("number");
        match f.first() {
            Some(&"a") => {
                ids = ids.max(n(1) + 1);
                v.push(Ev::A(n(1), n(2)))
            }
            Some(&"f") => v.push(Ev::F(n(1))),
            Some(&"r") => v.push(Ev::R(n(1), n(2))),
            _ => {}
        }
    }
    (v, ids)
}

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size.max(1), 8).expect("layout")
}

trait Heap {
    fn alloc(&mut self, l: Layout) -> NonNull<u8>;
    fn dealloc(&mut self, p: NonNull<u8>, l: Layout);
    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> NonNull<u8>;
}

impl Heap for MemvisorHeap<Shared> {
    #[inline(never)]
    fn alloc(&mut self, l: Layout) -> NonNull<u8> {
        MemvisorHeap::alloc(self, l).expect("alloc")
    }
    #[inline(never)]
    fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        MemvisorHeap::dealloc(self, p, l)
    }
    #[inline(never)]
    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> NonNull<u8> {
        MemvisorHeap::realloc(self, p, l, new).expect("realloc")
    }
}

/// talc growing by 64 KiB chunks of host pages (never given back, as in the guest).
struct Oom(Shared, Vec<(NonNull<u8>, usize)>);

impl talc::OomHandler for Oom {
    fn handle_oom(talc: &mut talc::Talc<Self>, layout: Layout) -> Result<(), ()> {
        let pages = (layout.size() + layout.align() + 2048)
            .div_ceil(4096)
            .max(16);
        let p = talc.oom_handler.0.map_pages(pages).ok_or(())?;
        talc.oom_handler.1.push((p, pages));
        let span = talc::Span::from_base_size(p.as_ptr(), pages * 4096);
        // SAFETY: fresh pages owned by this heap.
        unsafe { talc.claim(span) }.map(|_| ())
    }
}

struct Talc(talc::Talc<Oom>);

impl Heap for Talc {
    fn alloc(&mut self, l: Layout) -> NonNull<u8> {
        // SAFETY: non-zero size.
        unsafe { self.0.malloc(l) }.expect("talc alloc")
    }
    fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        // SAFETY: `p` is live, allocated with `l`.
        unsafe { self.0.free(p, l) }
    }
    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> NonNull<u8> {
        let new = new.max(1);
        // SAFETY: `p` is live, allocated with `l`.
        unsafe {
            if new > l.size() {
                self.0.grow(p, l, new).expect("talc grow")
            } else {
                self.0.shrink(p, l, new);
                p
            }
        }
    }
}

impl Drop for Talc {
    fn drop(&mut self) {
        for (p, n) in std::mem::take(&mut self.0.oom_handler.1) {
            self.0.oom_handler.0.unmap_pages(p, n);
        }
    }
}

/// dlmalloc's system allocator: bump allocation in one 4 GiB reservation made once per
/// process (the next heap starts at its base again, so its pages are already faulted in, as
/// the memvisor heap's recycled runs are), with the pages held counted in the shared page
/// source's peak. Freed runs are counted, never reused by the same heap.
struct DlPages(Shared, std::cell::Cell<usize>);

/// Bytes of the reservation.
const DL_ARENA: usize = 4 << 30;

fn dl_arena() -> usize {
    static BASE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        // SAFETY: a fresh anonymous private reservation; nothing else uses it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                DL_ARENA,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of the dlmalloc arena");
        p as usize
    })
}

// SAFETY: the example is single-threaded: a `DlPages` (and its `Rc`) never leaves the main
// thread; `dlmalloc::Allocator` merely requires `Send`.
unsafe impl Send for DlPages {}

// SAFETY: `alloc` returns page runs of the reservation, each handed out once per heap;
// `remap` never moves; pages may be dirty.
unsafe impl dlmalloc::Allocator for DlPages {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        let bytes = size.div_ceil(4096) * 4096;
        let off = self.1.get();
        if off + bytes > DL_ARENA {
            return (std::ptr::null_mut(), 0, 0);
        }
        self.1.set(off + bytes);
        let mut p = self.0 .0.borrow_mut();
        p.held += bytes / 4096;
        p.peak = p.peak.max(p.held);
        p.calls.0 += 1;
        ((dl_arena() + off) as *mut u8, bytes, 0)
    }
    fn remap(&self, _: *mut u8, _: usize, _: usize, _: bool) -> *mut u8 {
        std::ptr::null_mut()
    }
    fn free_part(&self, ptr: *mut u8, old: usize, new: usize) -> bool {
        if !(ptr as usize).is_multiple_of(4096)
            || !new.is_multiple_of(4096)
            || !old.is_multiple_of(4096)
            || new >= old
        {
            return false;
        }
        let mut p = self.0 .0.borrow_mut();
        p.held -= (old - new) / 4096;
        p.calls.1 += 1;
        true
    }
    fn free(&self, _: *mut u8, size: usize) -> bool {
        let mut p = self.0 .0.borrow_mut();
        p.held -= size.div_ceil(4096);
        p.calls.1 += 1;
        true
    }
    fn can_release_part(&self, _: u32) -> bool {
        true
    }
    fn allocates_zeros(&self) -> bool {
        false
    }
    fn page_size(&self) -> usize {
        4096
    }
}

/// `PEER=dlmalloc`: dlmalloc instead of talc as the peer.
struct Dl(Option<dlmalloc::Dlmalloc<DlPages>>);

impl Heap for Dl {
    fn alloc(&mut self, l: Layout) -> NonNull<u8> {
        let d = self.0.as_mut().expect("heap");
        // SAFETY: non-zero size, power-of-two alignment.
        NonNull::new(unsafe { d.malloc(l.size(), l.align()) }).expect("dlmalloc alloc")
    }
    fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        let d = self.0.as_mut().expect("heap");
        // SAFETY: `p` is live, allocated with `l`.
        unsafe { d.free(p.as_ptr(), l.size(), l.align()) }
    }
    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> NonNull<u8> {
        let d = self.0.as_mut().expect("heap");
        // SAFETY: `p` is live, allocated with `l`.
        NonNull::new(unsafe { d.realloc(p.as_ptr(), l.size(), l.align(), new.max(1)) })
            .expect("dlmalloc realloc")
    }
}

impl Drop for Dl {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            // SAFETY: no block of this heap is used after it is dropped.
            unsafe { d.destroy() };
        }
    }
}

/// The peer heap on `src`: talc, or dlmalloc with `PEER=dlmalloc`.
enum Peer {
    Talc(Talc),
    Dl(Box<Dl>),
}

impl Peer {
    fn new(src: Shared) -> Self {
        if std::env::var("PEER").is_ok_and(|p| p == "dlmalloc") {
            Peer::Dl(Box::new(Dl(Some(dlmalloc::Dlmalloc::new_with_allocator(
                DlPages(src, std::cell::Cell::new(0)),
            )))))
        } else {
            Peer::Talc(Talc(talc::Talc::new(Oom(src, Vec::new()))))
        }
    }
    fn name() -> &'static str {
        if std::env::var("PEER").is_ok_and(|p| p == "dlmalloc") {
            "dlmalloc"
        } else {
            "talc"
        }
    }
}

impl Heap for Peer {
    #[inline(never)]
    fn alloc(&mut self, l: Layout) -> NonNull<u8> {
        match self {
            Peer::Talc(t) => t.alloc(l),
            Peer::Dl(d) => d.alloc(l),
        }
    }
    #[inline(never)]
    fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        match self {
            Peer::Talc(t) => t.dealloc(p, l),
            Peer::Dl(d) => d.dealloc(p, l),
        }
    }
    #[inline(never)]
    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> NonNull<u8> {
        match self {
            Peer::Talc(t) => t.realloc(p, l, new),
            Peer::Dl(d) => d.realloc(p, l, new),
        }
    }
}

/// Write one word of every cache line of `junk` (evicts the caches, as a VM exit does).
#[inline(never)]
fn pollute_caches(junk: &mut [u64]) {
    for k in (0..junk.len()).step_by(8) {
        junk[k] = junk[k].wrapping_add(1);
    }
    std::hint::black_box(junk);
}

/// Replay once; returns (peak live bytes, nanoseconds; `POLLUTE=n`: the caches are evicted
/// every `n` events, outside the time counted).
#[inline(never)]
fn replay<H: Heap>(
    h: &mut H,
    ev: &[Ev],
    tab: &mut [(usize, usize)],
    mut probe: impl FnMut(&H, usize),
) -> (usize, u128) {
    let (mut cur, mut peak) = (0usize, 0usize);
    let pollute: usize = std::env::var("POLLUTE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut junk = vec![0u64; if pollute > 0 { 4 << 17 } else { 0 }];
    let mut lost = std::time::Duration::ZERO;
    let t0 = Instant::now();
    for (i, e) in ev.iter().enumerate() {
        if pollute > 0 && i % pollute == 0 {
            let t = Instant::now();
            pollute_caches(&mut junk);
            lost += t.elapsed();
        }
        match *e {
            Ev::A(id, s) => {
                let p = h.alloc(lay(s));
                tab[id] = (p.as_ptr().addr(), s);
                cur += s;
            }
            Ev::F(id) => {
                let (p, s) = std::mem::take(&mut tab[id]);
                h.dealloc(NonNull::new(p as *mut u8).expect("live"), lay(s));
                cur -= s;
            }
            Ev::R(id, n) => {
                let (p, s) = tab[id];
                let q = h.realloc(NonNull::new(p as *mut u8).expect("live"), lay(s), n);
                tab[id] = (q.as_ptr().addr(), n);
                cur = cur + n - s;
            }
        }
        peak = peak.max(cur);
        probe(h, cur);
    }
    let ns = (t0.elapsed() - lost).as_nanos();
    for e in ev {
        if let Ev::A(id, _) = *e {
            let (p, s) = std::mem::take(&mut tab[id]);
            if let Some(p) = NonNull::new(p as *mut u8) {
                h.dealloc(p, lay(s));
            }
        }
    }
    (peak, ns)
}

fn new_src() -> Shared {
    Shared::new()
}

/// `PAIR=size`: ns per alloc + free pair of `size` bytes (best of 5 × 200,000).
fn pair(size: usize) {
    let src = new_src();
    let mut h = MemvisorHeap::new(src.clone(), src);
    let l = lay(size);
    let mut best = u128::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..200_000 {
            let p = Heap::alloc(&mut h, l);
            Heap::dealloc(&mut h, std::hint::black_box(p), l);
        }
        best = best.min(t0.elapsed().as_nanos());
    }
    let mut t = Talc(talc::Talc::new(Oom(new_src(), Vec::new())));
    let mut tbest = u128::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..200_000 {
            let p = Heap::alloc(&mut t, l);
            Heap::dealloc(&mut t, std::hint::black_box(p), l);
        }
        tbest = tbest.min(t0.elapsed().as_nanos());
    }
    println!(
        "pair {size} B: memvisor {:.1} ns, talc {:.1} ns",
        best as f64 / 200_000.0,
        tbest as f64 / 200_000.0
    );
}

/// `BENCH=1`: the guest bench's sequence on one heap per allocator (sizes 16 … 16384: pairs,
/// then batches of 256 allocations and 256 frees), ns per operation, memvisor and talc.
fn bench_sequence() {
    fn run<H: Heap>(h: &mut H, name: &str, stats: impl Fn(&H) -> String) {
        for size in [16usize, 64, 256, 1024, 4096, 16384] {
            let l = lay(size);
            let p = h.alloc(l);
            h.dealloc(p, l);
            let t0 = Instant::now();
            for _ in 0..30_000 {
                let p = h.alloc(l);
                h.dealloc(std::hint::black_box(p), l);
            }
            let pair = t0.elapsed().as_nanos() as f64 / 30_000.0;
            let after_pairs = stats(h);
            let mut v = Vec::with_capacity(256);
            let t0 = Instant::now();
            for _ in 0..15 {
                for _ in 0..256 {
                    v.push(h.alloc(l));
                }
                for p in v.drain(..) {
                    h.dealloc(p, l);
                }
            }
            let batch = t0.elapsed().as_nanos() as f64 / (15.0 * 512.0);
            println!("{name} {size} B: pair {pair:.1} ns, batch {batch:.1} ns/op\n  after pairs {after_pairs}\n  after batches {}", stats(h));
        }
    }
    let src = new_src();
    let mut h = MemvisorHeap::new(src.clone(), src);
    run(&mut h, "memvisor", |h| format!("{:?}", h.mid().stats()));
    let mut t = Talc(talc::Talc::new(Oom(new_src(), Vec::new())));
    run(&mut t, "talc", |_| String::new());
}

/// `BATCH=size`: ns per operation of 256 allocations of `size` bytes then 256 frees in
/// allocation order (the guest bench's `heap_batch_*` sequence), best of 7 × 2,000 batches,
/// memvisor and talc interleaved twice.
fn batch(size: usize) {
    fn run<H: Heap>(h: &mut H, l: Layout) -> f64 {
        let mut v = Vec::with_capacity(256);
        let mut best = u128::MAX;
        for _ in 0..7 {
            let t0 = Instant::now();
            for _ in 0..2000 {
                for _ in 0..256 {
                    v.push(h.alloc(l));
                }
                for p in v.drain(..) {
                    h.dealloc(p, l);
                }
            }
            best = best.min(t0.elapsed().as_nanos());
        }
        best as f64 / (2000.0 * 512.0)
    }
    let l = lay(size);
    let src = new_src();
    let mut h = MemvisorHeap::new(src.clone(), src);
    let mut t = Talc(talc::Talc::new(Oom(new_src(), Vec::new())));
    let (a, b) = (run(&mut h, l), run(&mut t, l));
    let (c, d) = (run(&mut h, l), run(&mut t, l));
    println!(
        "batch {size} B: memvisor {:.2} ns, talc {:.2} ns",
        a.min(c),
        b.min(d)
    );
}

fn main() {
    if let Some(s) = std::env::var("BATCH").ok().and_then(|s| s.parse().ok()) {
        return batch(s);
    }
    if let Some(s) = std::env::var("PAIR").ok().and_then(|s| s.parse().ok()) {
        return pair(s);
    }
    if std::env::var_os("BENCH").is_some() {
        return bench_sequence();
    }
    let dump = std::env::var_os("DUMP").is_some();
    for path in std::env::args().skip(1) {
        let (ev, ids) = load(&path);
        let mut tab = vec![(0usize, 0usize); ids];
        // Checked pass: efficiency and the state at the peak.
        let src = new_src();
        let mut h = MemvisorHeap::new(src.clone(), src.clone());
        let mut at_peak = (0usize, String::new());
        // SERIES=1: one line on stderr whenever the pages held change.
        let series = std::env::var_os("SERIES").is_some();
        let mut last_pages = 0;
        let (peak, _) = replay(&mut h, &ev, &mut tab, |h, cur| {
            if series && h.pages_in_use() != last_pages {
                last_pages = h.pages_in_use();
                eprintln!(
                    "S {} {} {} {} {}",
                    last_pages,
                    h.slab_page_stats().slab_pages + h.slab_page_stats().spare_pages,
                    h.mems().data_pages() + h.keep_stats().kept_pages,
                    h.mid().pages_in_use(),
                    cur
                );
            }
            if !dump {
                return;
            }
            let (sp, m) = (h.slab_page_stats(), h.mems());
            let now = h.pages_in_use();
            if now > at_peak.0 {
                let mut s = format!(
                    "slab pages {} spare {} slab registry {} mems data {} mems holes {} B live {cur} B nodes {} kept {}\n",
                    sp.slab_pages, sp.spare_pages, sp.registry_pages, m.data_pages(), m.hole_bytes(), m.main_chain_len(),
                    h.keep_stats().kept_pages
                );
                if let Ok(a) = h.audit_slabs() {
                    s += &format!(
                        "slabs by class {:?} free slots {} ({} B)\nfree bytes by class {:?}\n",
                        a.slabs,
                        a.free_slots,
                        a.free_slot_bytes,
                        a.free_by_class
                            .iter()
                            .zip(memvisor_heaps::memvisor::CLASSES)
                            .map(|(n, c)| n * c)
                            .collect::<Vec<_>>()
                    );
                }
                s += &format!(
                    "mid: {:?} {:?} spare {}\n",
                    h.mid().stats(),
                    h.mid().audit(),
                    h.mid().spare_pages()
                );
                if std::env::var_os("DUMP_MID").is_some() {
                    let mut last = 0;
                    h.mid().for_each_block(|r, _, size, free| {
                        if r != last {
                            s += "\nregion:";
                            last = r;
                        }
                        s += &format!(" {}{}", if free { "-" } else { "" }, size);
                    });
                    s += "\n";
                }
                if let Ok(a) = m.audit() {
                    s += &format!(
                        "mems pool {} table {} segments {} holes {}\n",
                        a.pool_pages, a.table_pages, a.process_segments, a.holes
                    );
                }
                let _ = m.mems_print_stats(&mut s);
                at_peak = (now, s);
            }
        });
        let bad = h.stats().bad_frees;
        println!(
            "mid: {:?}; keep: {:?}; slab pages: {:?}",
            h.mid().stats(),
            h.keep_stats(),
            h.slab_page_stats()
        );
        drop(h);
        let pages = src.peak_pages();
        let calls = src.0.borrow().calls;
        println!("page source calls (map, unmap): {calls:?}");
        let tsrc = new_src();
        let mut t = Peer::new(tsrc.clone());
        replay(&mut t, &ev, &mut tab, |_, _| ());
        drop(t);
        let tpages = tsrc.peak_pages();
        if dump {
            println!("at the peak ({} pages):\n{}", at_peak.0, at_peak.1);
        }
        let (mut bm, mut bt) = (u128::MAX, u128::MAX);
        let timed: usize = std::env::var("TIMED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        for _ in 0..timed {
            let src = new_src();
            let mut h = MemvisorHeap::new(src.clone(), src);
            bm = bm.min(replay(&mut h, &ev, &mut tab, |_, _| ()).1);
            let mut t = Peer::new(new_src());
            bt = bt.min(replay(&mut t, &ev, &mut tab, |_, _| ()).1);
        }
        if timed == 0 {
            // No timed pass: nothing to time (and `bm`, `bt` are still `u128::MAX`).
            (bm, bt) = (0, 0);
        }
        let n = ev.len() as f64;
        println!(
            "{path}: {} events, peak live {peak}: memvisor {pages} pages, {:.2} % ({:.1} ns/event, \
             bad frees {bad}); {} {tpages} pages, {:.2} % ({:.1} ns/event); speed ratio {:.2}",
            ev.len(),
            peak as f64 * 100.0 / (pages * 4096) as f64,
            bm as f64 / n,
            Peer::name(),
            peak as f64 * 100.0 / (tpages * 4096) as f64,
            bt as f64 / n,
            bt as f64 / bm.max(1) as f64
        );
    }
}
