//! `heap-stress`: random operations on each of our heaps and a workout of the global
//! allocator (see [`super`]).

use super::*;

static STRESS_ACCT: Acct = Acct::new();

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }
}

const SLOTS: usize = 2048;

#[inline]
fn pattern(tag: u64, i: usize) -> u64 {
    tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).wrapping_mul(0xff51_afd7_ed55_8ccd)
}

fn fill(p: usize, size: usize, tag: u64) {
    for i in 0..size / 8 {
        // SAFETY: `p` is a live block of at least `size` bytes, 8-byte aligned.
        unsafe { ((p + i * 8) as *mut u64).write(pattern(tag, i)) };
    }
}

fn ok(p: usize, size: usize, tag: u64) -> bool {
    // SAFETY: as in `fill`.
    (0..size / 8).all(|i| unsafe { ((p + i * 8) as *const u64).read() } == pattern(tag, i))
}

/// Random sizes: mostly small, some medium, a few large.
fn size(r: &mut Rng) -> usize {
    match r.below(100) {
        0..=69 => 8 + r.below(249) as usize,
        70..=94 => 257 + r.below(3840) as usize,
        _ => 4097 + r.below(60_000) as usize,
    }
}

/// `ops` random operations on `h`; returns (errors, most live blocks).
fn stress<H: Heap>(h: &mut H, ops: u64, seed: u64) -> (u64, usize) {
    let mut r = Rng(seed | 1);
    let mut slots = [(0usize, 0usize, 0u64); SLOTS];
    let (mut live, mut max_live, mut errors, mut tag) = (0usize, 0usize, 0u64, 0u64);
    for _ in 0..ops {
        let i = r.below(SLOTS as u64) as usize;
        let (p, s, t) = slots[i];
        let Some(lay) = Layout::from_size_align(s.max(1), 8).ok() else {
            errors += 1;
            continue;
        };
        if p == 0 {
            let n = size(&mut r);
            let Some(l) = Layout::from_size_align(n, 8).ok() else {
                continue;
            };
            match h.alloc(l) {
                Some(q) => {
                    tag += 1;
                    let q = q.as_ptr().expose_provenance();
                    fill(q, n, tag);
                    slots[i] = (q, n, tag);
                    live += 1;
                    max_live = max_live.max(live);
                }
                None => errors += 1,
            }
            continue;
        }
        if !ok(p, s, t) {
            errors += 1;
        }
        let ptr = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(p));
        let Some(ptr) = ptr else {
            errors += 1;
            continue;
        };
        if r.below(4) == 0 {
            // Resize: contents up to the smaller size must survive.
            let n = size(&mut r);
            match h.realloc(ptr, lay, n) {
                Some(q) => {
                    let q = q.as_ptr().expose_provenance();
                    if !ok(q, s.min(n) & !7, t) {
                        errors += 1;
                    }
                    fill(q, n, t);
                    slots[i] = (q, n, t);
                }
                None => errors += 1,
            }
        } else {
            h.dealloc(ptr, lay);
            slots[i] = (0, 0, 0);
            live -= 1;
        }
    }
    for (p, s, t) in slots.iter_mut() {
        if *p != 0 {
            if !ok(*p, *s, *t) {
                errors += 1;
            }
            if let (Some(ptr), Ok(l)) = (
                NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(*p)),
                Layout::from_size_align((*s).max(1), 8),
            ) {
                h.dealloc(ptr, l);
            }
            *p = 0;
        }
    }
    (errors, max_live)
}

/// Ring-3 entry of `heap-stress`.
pub extern "C" fn heap_stress(_: u64) -> u64 {
    let ops = if quick() { 100_000 } else { 1_000_000 };
    let mut failed = 0;
    let report = |name: &str, errors: u64, max_live: usize, audit: &str, cycles: u64| {
        println!(
            "guest: heap-stress {}: {} random operations, {} errors, up to {} live blocks, audit {}, {} cycles/op",
            name,
            ops,
            errors,
            max_live,
            audit,
            cycles / ops
        );
        let mut k = crate::console::Line::new();
        let _ = write!(k, "stress.{}.ops", name);
        rec(k.as_str(), ops);
        k.clear();
        let _ = write!(k, "stress.{}.errors", name);
        rec(k.as_str(), errors);
        k.clear();
        let _ = write!(k, "stress.{}.audit", name);
        rec(k.as_str(), audit);
    };
    let t = |f: &mut dyn FnMut() -> (u64, usize)| {
        // SAFETY: rdtsc has no side effects.
        let t0 = unsafe { core::arch::x86_64::_rdtsc() };
        let r = f();
        // SAFETY: as above.
        (r, unsafe { core::arch::x86_64::_rdtsc() } - t0)
    };

    // page-family
    {
        let mut h = PfHeap::new(&STRESS_ACCT);
        let ((e, m), c) = t(&mut || stress(&mut h, ops, 1));
        let pf = h.families();
        pf.trim();
        let audit = match pf.audit() {
            Ok(a) if a.alloc_bytes == 0 && a.data_pages == 0 => "ok",
            Ok(_) => "pages left",
            Err(_) => "corrupted",
        };
        report("page-family", e, m, audit, c);
        failed += u64::from(e != 0 || audit != "ok");
    }
    // mems
    {
        let mut h = MemsHeap::new(&STRESS_ACCT);
        let ((e, m), c) = t(&mut || stress(&mut h, ops, 2));
        let audit = match h.mems().audit() {
            Ok(a) if a.process_segments == 0 => "ok",
            Ok(_) => "segments left",
            Err(_) => "corrupted",
        };
        report("mems", e, m, audit, c);
        failed += u64::from(e != 0 || audit != "ok");
    }
    // memvisor (slabs on their page store, the mid-size path, MeMS), with the slab,
    // mid-size and MeMS audits.
    {
        let mut h: MemvisorHeap<GuestPages> = crate::heap::peers::memvisor(&STRESS_ACCT);
        let ((e, m), c) = t(&mut || stress(&mut h, ops, 3));
        let a1 = h.audit_slabs().and(h.mid().audit());
        let a2 = h.mems().audit();
        let live = h.stats().live;
        let audit = match (a1, a2) {
            (Ok(_), Ok(b)) if live == [0, 0] && b.process_segments == 0 => "ok",
            (Ok(_), Ok(_)) => "blocks left",
            _ => "corrupted",
        };
        report("memvisor", e, m, audit, c);
        failed += u64::from(e != 0 || audit != "ok" || h.stats().bad_frees != 0);
    }
    // The kernel's global allocator through `alloc`: growth by realloc, boxes, a map, strings,
    // large sizes and large alignments.
    let g = global_workout(ops / 10);
    println!(
        "guest: heap-stress global allocator (Vec, Box, BTreeMap, String, aligned): {}",
        g
    );
    rec("stress.global", g);
    failed += u64::from(g != "ok");
    source::flush();
    rec("stress.pages_after", STRESS_ACCT.pages());
    if STRESS_ACCT.pages() != 0 {
        println!(
            "FAILED: {} pages still held after dropping every heap",
            STRESS_ACCT.pages()
        );
        failed += 1;
    }
    u64::from(failed != 0)
}

/// Exercise the `#[global_allocator]` (`global.rs`) with `alloc` collections; "ok" or what
/// went wrong.
fn global_workout(n: u64) -> &'static str {
    use alloc::boxed::Box;
    use alloc::collections::BTreeMap;
    use alloc::string::String;
    use alloc::vec::Vec;
    let mut v: Vec<u64> = Vec::new();
    for i in 0..n {
        v.push(i.wrapping_mul(0x9e37_79b9));
    }
    if v.iter()
        .enumerate()
        .any(|(i, &x)| x != (i as u64).wrapping_mul(0x9e37_79b9))
    {
        return "Vec lost elements while growing";
    }
    let mut m: BTreeMap<u64, Box<[u8; 48]>> = BTreeMap::new();
    for i in 0..n.min(20_000) {
        m.insert(i * 7, Box::new([i as u8; 48]));
        if i % 3 == 0 {
            m.remove(&(i * 7 / 2));
        }
    }
    if m.iter().any(|(k, b)| b.iter().any(|&x| x != (k / 7) as u8)) {
        return "BTreeMap of boxes corrupted";
    }
    let mut s = String::new();
    for i in 0..2000 {
        let _ = write!(s, "{},", i);
    }
    if !s.starts_with("0,1,2,") || !s.ends_with("1999,") {
        return "String corrupted";
    }
    for (size, align) in [
        (64, 4096),
        (10_000, 64),
        (1 << 20, 16),
        (24, 32),
        (3, 1),
        (977, 16),
    ] {
        let Ok(l) = Layout::from_size_align(size, align) else {
            return "bad layout";
        };
        // SAFETY: a non-zero-size layout; the block is written within its size, then freed
        // with the same layout.
        unsafe {
            let p = alloc::alloc::alloc(l);
            if p.is_null() || !p.addr().is_multiple_of(align) {
                return "aligned allocation failed or misaligned";
            }
            core::ptr::write_bytes(p, 0xa5, size);
            let q = alloc::alloc::realloc(p, l, size * 2);
            if q.is_null() || *q.add(size - 1) != 0xa5 || !q.addr().is_multiple_of(align) {
                return "realloc lost contents or alignment";
            }
            alloc::alloc::dealloc(q, Layout::from_size_align_unchecked(size * 2, align));
        }
    }
    drop((v, m, s));
    let bad = crate::heap::global::with_heap(|h| h.stats().bad_frees).unwrap_or(1);
    if bad != 0 {
        return "the global heap refused a free";
    }
    "ok"
}
