//! Host replay of an allocation trace (`tests/data/traces/*.trace`) on the memvisor heap, with
//! the host page source: prints events, peak live bytes, peak pages the heap held, efficiency
//! and ns per event (best of a few timed passes). A quick way to study the heap's layout
//! decisions without booting the guest; the figures that count are the guest's
//! (`memvisor replay TRACE --heap memvisor`), which use the same code.
//!
//! `cargo run -p memvisor-heaps --features host --release --example replay -- TRACE...`

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Instant;

use core::alloc::Layout;
use memvisor_heaps::host::HostPageSource;
use memvisor_heaps::{MemvisorHeap, PageSource};

/// One host page source shared by both sub-heaps (so the peak is of their sum).
#[derive(Clone)]
struct Shared(Rc<RefCell<HostPageSource>>);

// SAFETY: forwards to `HostPageSource`, which upholds the contract.
unsafe impl PageSource for Shared {
    fn map_pages(&mut self, pages: usize) -> Option<NonNull<u8>> {
        self.0.borrow_mut().map_pages(pages)
    }
    fn unmap_pages(&mut self, base: NonNull<u8>, pages: usize) {
        self.0.borrow_mut().unmap_pages(base, pages)
    }
}

enum Ev {
    A(usize, usize),
    F(usize),
    R(usize, usize),
}

fn load(path: &str) -> Vec<Ev> {
    let text = std::fs::read_to_string(path).expect("read trace");
    let mut v = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let n = |i: usize| f[i].parse::<usize>().expect("number");
        match f.first() {
            Some(&"a") => v.push(Ev::A(n(1), n(2))),
            Some(&"f") => v.push(Ev::F(n(1))),
            Some(&"r") => v.push(Ev::R(n(1), n(2))),
            _ => {}
        }
    }
    v
}

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size.max(1), 8).expect("layout")
}

/// Replay once; returns (peak live bytes, peak pages, nanoseconds, bad frees).
fn run(ev: &[Ev], detail: bool) -> (usize, usize, u128, usize) {
    let mut brk = (0usize, [0usize; 7]);
    let mut dump = String::new();
    let src = Shared(Rc::new(RefCell::new(HostPageSource::new())));
    let mut h = MemvisorHeap::new(src.clone(), src.clone());
    let mut live: HashMap<usize, (NonNull<u8>, usize)> = HashMap::with_capacity(1 << 16);
    let (mut cur, mut peak) = (0usize, 0usize);
    let t0 = Instant::now();
    for e in ev {
        match *e {
            Ev::A(id, s) => {
                let p = h.alloc(lay(s)).expect("alloc");
                live.insert(id, (p, s));
                cur += s;
            }
            Ev::F(id) => {
                let (p, s) = live.remove(&id).expect("live id");
                h.dealloc(p, lay(s));
                cur -= s;
            }
            Ev::R(id, n) => {
                let (p, s) = live[&id];
                let q = h.realloc(p, lay(s), n).expect("realloc");
                live.insert(id, (q, n));
                cur = cur + n - s;
            }
        }
        peak = peak.max(cur);
        if detail {
            let pf = h.slab_families();
            let m = h.mems();
            let now = pf.pages_in_use() + m.pages_in_use();
            if now > brk.0 {
                dump.clear();
                let _ = m.mems_print_stats(&mut dump);
                brk = (
                    now,
                    [
                        pf.data_pages(),
                        pf.metadata_pages(),
                        m.data_pages(),
                        m.metadata_pages(),
                        m.hole_bytes(),
                        cur,
                        m.main_chain_len(),
                    ],
                );
            }
        }
    }
    if detail {
        println!("  at peak pages {}: slab data {} slab registry {} mems data {} mems meta {} mems holes {} B live {} B mems nodes {}", brk.0, brk.1[0], brk.1[1], brk.1[2], brk.1[3], brk.1[4], brk.1[5], brk.1[6]);
        if std::env::var_os("DUMP").is_some() {
            println!("{dump}");
        }
    }
    let ns = t0.elapsed().as_nanos();
    for (_, (p, s)) in live.drain() {
        h.dealloc(p, lay(s));
    }
    let bad = h.stats().bad_frees;
    drop(h);
    let pages = src.0.borrow().peak_pages();
    (peak, pages, ns, bad)
}

fn main() {
    for path in std::env::args().skip(1) {
        let ev = load(&path);
        let (peak, pages, _, bad) = run(&ev, true);
        let best = (0..5).map(|_| run(&ev, false).2).min().unwrap_or(0);
        println!(
            "{path}: events {} peak_live {peak} peak_pages {pages} ({} B) efficiency {:.2} % \
             {:.1} ns/event bad_frees {bad}",
            ev.len(),
            pages * 4096,
            peak as f64 * 100.0 / (pages * 4096) as f64,
            best as f64 / ev.len() as f64
        );
    }
}
