//! The heap scenarios (`memvisor run --scenario NAME`), all in ring 3:
//!
//! * `seed-page-family`: the seed's test_application (register `emp_t` and `student_t`;
//!   scenario 1 allocates 3 employees and 2 students, scenario 2 frees emp1, emp3 and stud2,
//!   scenario 3 frees the rest) with the seed's reports after each step, the slabinfo table,
//!   and the errors the heap reports instead of corrupting itself.
//! * `seed-mems`: MeMS's classic example: ten 1000-byte arrays, stats, a write through the
//!   virtual address read back through the physical one (`mems_get`, cross-checked against the
//!   host), a free, a new allocation, stats, `mems_finish`.
//! * `heap-stress`: 10^6 random operations (10^5 with `--quick`) on each of our heaps,
//!   every block filled with a pattern and checked before it is freed or resized, a full audit
//!   at the end, and every page given back.
//! * `heap-debug`: guard-page debugging (`guard.rs`): an overflow and a use after free on a
//!   page family, on MeMS and (with `--heap-debug guard`) through the global allocator, each
//!   caught by the MMU and reported.

use super::guard::{self, Kind};
use super::memvisor::MemvisorHeap;
use super::peers::{Heap, MemsHeap, PfHeap};
use super::source::{self, Acct, GuestPages};
use crate::{boot, hc, println};
use core::alloc::Layout;
use core::fmt::{self, Write};
use core::ptr::NonNull;
use memvisor_abi::flags;
use memvisor_heaps::{mm_reg_struct, xcalloc, xfree, Mems, PageFamilies};

/// The console as a `fmt::Write` (the heaps' reports write into it).
struct Console;
impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::console::print(format_args!("{}", s));
        Ok(())
    }
}

fn rec(key: &str, v: impl fmt::Display) {
    let mut line = crate::console::Line::new();
    let _ = write!(line, "{}={}", key, v);
    hc::record(line.as_str());
}

fn quick() -> bool {
    boot().flags & flags::QUICK != 0
}

fn fail(what: &str) -> u64 {
    println!("FAILED: {}", what);
    1
}

// ---- seed-page-family ---------------------------------------------------------------------

/// The seed's `emp_t`.
#[allow(non_camel_case_types)]
#[repr(C)]
struct emp_t {
    name: [u8; 32],
    emp_id: u32,
}

/// The seed's `student_t`.
#[allow(non_camel_case_types)]
#[repr(C)]
struct student_t {
    name: [u8; 32],
    rollno: u32,
    marks_phys: u32,
    marks_chem: u32,
    marks_maths: u32,
    next: *mut student_t,
}

static SEED_ACCT: Acct = Acct::new();

fn reports(pf: &PageFamilies<GuestPages>, step: &str) {
    println!("---- {} ----", step);
    let _ = pf.mm_print_memory_usage(&mut Console, None);
    let _ = pf.mm_print_block_usage(&mut Console);
}

/// Ring-3 entry of `seed-page-family`.
pub extern "C" fn seed_page_family(_: u64) -> u64 {
    match seed_pf() {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

fn seed_pf() -> Result<(), &'static str> {
    let mut pf = PageFamilies::mm_init(GuestPages::new(&SEED_ACCT));
    mm_reg_struct!(pf, emp_t).map_err(|_| "register emp_t")?;
    mm_reg_struct!(pf, student_t).map_err(|_| "register student_t")?;
    let _ = pf.mm_print_registered_page_families(&mut Console);

    // Scenario 1.
    let emp1 = xcalloc!(pf, 1, emp_t).map_err(|_| "xcalloc emp1")?;
    let emp2 = xcalloc!(pf, 1, emp_t).map_err(|_| "xcalloc emp2")?;
    let emp3 = xcalloc!(pf, 1, emp_t).map_err(|_| "xcalloc emp3")?;
    let stud1 = xcalloc!(pf, 1, student_t).map_err(|_| "xcalloc stud1")?;
    let stud2 = xcalloc!(pf, 1, student_t).map_err(|_| "xcalloc stud2")?;
    // Use them as the application would.
    for (i, e) in [emp1, emp2, emp3].into_iter().enumerate() {
        // SAFETY: xcalloc returned zeroed memory for one emp_t, 16-byte aligned.
        unsafe {
            (*e.as_ptr()).emp_id = 100 + i as u32;
            (*e.as_ptr()).name = *b"emp0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        }
    }
    // SAFETY: as above, one student_t each.
    unsafe {
        (*stud1.as_ptr()).rollno = 1;
        (*stud1.as_ptr()).next = stud2.as_ptr();
        (*stud2.as_ptr()).rollno = 2;
    }
    reports(&pf, "scenario 1: allocated emp1, emp2, emp3, stud1, stud2");
    let _ = pf.mm_print_slabinfo(&mut Console);
    let emp = pf
        .lookup_page_family_by_name("emp_t")
        .ok_or("lookup emp_t")?;
    let info = pf.family_info(emp).map_err(|_| "family_info")?;
    rec("seedpf.step1.emp_t.obc", info.allocated_blocks());
    rec("seedpf.step1.pages", pf.pages_in_use());

    // Scenario 2.
    xfree!(pf, emp1).map_err(|_| "xfree emp1")?;
    xfree!(pf, emp3).map_err(|_| "xfree emp3")?;
    xfree!(pf, stud2).map_err(|_| "xfree stud2")?;
    reports(&pf, "scenario 2: freed emp1, emp3, stud2");
    let info = pf.family_info(emp).map_err(|_| "family_info")?;
    rec("seedpf.step2.emp_t.obc", info.allocated_blocks());
    // The heap reports bad requests with the address instead of corrupting itself.
    println!("---- errors the heap refuses ----");
    let errs = [
        ("double free of emp1", xfree!(pf, emp1).err()),
        (
            "free of a pointer inside emp2",
            pf.xfree(NonNull::new(emp2.as_ptr().cast::<u8>().wrapping_add(8)).ok_or("ptr")?)
                .err(),
        ),
        ("xcalloc of an unknown family", pf.xcalloc("car_t", 1).err()),
    ];
    for (i, (what, e)) in errs.iter().enumerate() {
        let Some(e) = e else {
            return Err("a bad request was accepted");
        };
        println!("{}: {}", what, e);
        rec(heap_key("seedpf.error", i).as_str(), e);
    }
    // SAFETY: emp2 is still live.
    if unsafe { (*emp2.as_ptr()).emp_id } != 101 {
        return Err("emp2 lost its contents");
    }

    // Scenario 3.
    xfree!(pf, emp2).map_err(|_| "xfree emp2")?;
    xfree!(pf, stud1).map_err(|_| "xfree stud1")?;
    reports(&pf, "scenario 3: freed emp2, stud1");
    let data = pf.data_pages();
    rec("seedpf.step3.data_pages", data);
    if data != 0 {
        return Err("empty VM pages were not given back");
    }
    drop(pf);
    source::flush();
    rec("seedpf.pages_after_drop", SEED_ACCT.pages());
    println!("guest: seed-page-family done; every page went back to the host");
    Ok(())
}

fn heap_key(prefix: &str, i: usize) -> crate::console::Line {
    let mut l = crate::console::Line::new();
    let _ = write!(l, "{}.{}", prefix, i);
    l
}

// ---- seed-mems ----------------------------------------------------------------------------

/// Ring-3 entry of `seed-mems`.
pub extern "C" fn seed_mems(_: u64) -> u64 {
    match seed_mems_run() {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

fn seed_mems_run() -> Result<(), &'static str> {
    let mut m = Mems::mems_init(GuestPages::new(&SEED_ACCT));
    let mut ptr = [0usize; 10];
    println!("------- Allocated virtual addresses [mems_malloc] -------");
    for p in ptr.iter_mut() {
        *p = m
            .mems_malloc(core::mem::size_of::<i32>() * 250)
            .map_err(|_| "mems_malloc")?
            .as_ptr()
            .expose_provenance();
        println!("Virtual address: {}", *p);
    }
    println!("------ Assigning value to Virtual address [mems_get] -----");
    // Write through the virtual address, read back through the physical address (the
    // direct map shows GPA p at direct_map_base + p).
    let v1 = ptr[0] + 4;
    // SAFETY: ptr[0] is a live 1000-byte segment; index 1 of its i32 array.
    unsafe { (v1 as *mut i32).write_volatile(200) };
    let phys = m.mems_get(v1 as *const u8).ok_or("mems_get")?;
    let phys0 = m.mems_get(ptr[0] as *const u8).ok_or("mems_get")?;
    println!("Virtual address: {}\tPhysical Address: {}", ptr[0], phys0);
    // SAFETY: the direct map covers all guest RAM (US, readable); `phys` is a RAM GPA.
    let through_phys = unsafe { ((boot().direct_map_base + phys) as *const i32).read_volatile() };
    println!("Value written: {}", through_phys);
    if through_phys != 200 || phys != phys0 + 4 {
        return Err("the physical address does not show what was written");
    }
    // SAFETY: as above, now writing through the physical alias of index 2.
    unsafe { ((boot().direct_map_base + phys0 + 8) as *mut i32).write_volatile(300) };
    // SAFETY: index 2 of ptr[0]'s array.
    let back = unsafe { ((ptr[0] + 8) as *const i32).read_volatile() };
    if back != 300 {
        return Err("a write through the physical address is not visible virtually");
    }
    rec("seedmems.mems_get", phys);
    rec("seedmems.value_via_phys", through_phys);
    rec(
        "seedmems.translate_mismatches",
        source::TRANSLATE_MISMATCH.load(core::sync::atomic::Ordering::Relaxed),
    );
    println!("--------- Printing Stats [mems_print_stats] --------");
    let _ = m.mems_print_stats(&mut Console);
    rec("seedmems.stats1.pages", m.data_pages());
    rec("seedmems.stats1.main_chain", m.main_chain_len());
    println!("--------- Freeing up the memory [mems_free] --------");
    m.mems_free(NonNull::new(core::ptr::with_exposed_provenance_mut(ptr[3])).ok_or("ptr")?)
        .map_err(|_| "mems_free")?;
    let _ = m.mems_print_stats(&mut Console);
    rec("seedmems.stats2.unused", m.hole_bytes());
    let again = m
        .mems_malloc(core::mem::size_of::<i32>() * 250)
        .map_err(|_| "mems_malloc")?;
    ptr[3] = again.as_ptr().expose_provenance();
    println!("Virtual address: {} (reused)", ptr[3]);
    let _ = m.mems_print_stats(&mut Console);
    rec("seedmems.stats3.unused", m.hole_bytes());
    rec("seedmems.stats3.pages", m.data_pages());
    // A bad free is refused with the address.
    if let Err(e) =
        m.mems_free(NonNull::new(core::ptr::with_exposed_provenance_mut(ptr[5] + 16)).ok_or("ptr")?)
    {
        println!("free of a pointer inside a segment: {}", e);
        rec("seedmems.error", e);
    } else {
        return Err("a bad free was accepted");
    }
    m.mems_finish();
    println!("--------- After mems_finish --------");
    let _ = m.mems_print_stats(&mut Console);
    rec("seedmems.finish.pages", m.pages_in_use());
    drop(m);
    source::flush();
    println!("guest: seed-mems done");
    Ok(())
}

// ---- heap-stress --------------------------------------------------------------------------

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
    // memvisor (slabs on page families + MeMS), with both audits.
    {
        let mut h: MemvisorHeap<GuestPages> = super::peers::memvisor(&STRESS_ACCT);
        let ((e, m), c) = t(&mut || stress(&mut h, ops, 3));
        let a1 = h.slab_families().audit();
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
    let bad = super::global::with_heap(|h| h.stats().bad_frees).unwrap_or(1);
    if bad != 0 {
        return "the global heap refused a free";
    }
    "ok"
}

// ---- heap-debug ---------------------------------------------------------------------------

extern "C" fn write_byte(addr: u64) -> u64 {
    // SAFETY: deliberately a plain (not probed) store that may fault: the guard hook catches
    // the #PF and lands in `guard::try_run`'s landing pad.
    unsafe { core::ptr::write_volatile(addr as *mut u8, 0x5a) };
    0
}

extern "C" fn read_byte(addr: u64) -> u64 {
    // SAFETY: as `write_byte`, a load.
    u64::from(unsafe { core::ptr::read_volatile(addr as *const u8) })
}

extern "C" fn vec_overflow(_: u64) -> u64 {
    let mut v: alloc::vec::Vec<u8> = alloc::vec::Vec::with_capacity(100);
    v.extend_from_slice(&[7u8; 100]);
    let p = v.as_mut_ptr();
    // SAFETY: deliberately one byte past the allocation (capacity 100): in guard mode its end
    // abuts the guard page, so this store faults and never returns here (the landing pad
    // abandons this frame, leaking `v`, which is harmless in a demonstration).
    unsafe { core::ptr::write_volatile(p.add(100), 1) };
    v.len() as u64
}

struct Expect {
    kind: Kind,
    offset: i64,
    heap: &'static str,
}

/// Report the outcome of one bad access; 1 if it was not the expected fault.
fn check(n: &mut usize, r: Result<u64, guard::Fault>, e: Expect) -> u64 {
    *n += 1;
    match r {
        Err(f) if f.kind == e.kind && f.offset() == e.offset && f.rec.heap == e.heap => {
            guard::report(*n, &f);
            0
        }
        Err(f) => {
            guard::report(*n, &f);
            println!("FAILED: expected {} at offset {}", e.kind.name(), e.offset);
            1
        }
        Ok(_) => {
            println!("FAILED: no fault for the expected {}", e.kind.name());
            1
        }
    }
}

/// Ring-3 entry of `heap-debug`.
pub extern "C" fn heap_debug(_: u64) -> u64 {
    crate::probe::set_hook(Some(guard::hook));
    let mut n = 0usize;
    let mut failed = 0u64;
    println!(
        "guest: heap-debug: every allocation on its own page(s), its end at an unmapped guard page{}",
        if super::global::guard_mode() { " (--heap-debug guard: the global allocator too)" } else { "" }
    );

    // A page family's struct: emp_t, 36 bytes, 4-byte aligned, so its end is the page's end.
    let size = core::mem::size_of::<emp_t>();
    let align = core::mem::align_of::<emp_t>();
    match guard::alloc(size, align, "page-family", "emp_t") {
        Ok(emp) => {
            // In bounds: fine.
            let _ = guard::try_run(write_byte, (emp + size - 1) as u64);
            failed += check(
                &mut n,
                guard::try_run(write_byte, (emp + size) as u64),
                Expect {
                    kind: Kind::Overflow,
                    offset: size as i64,
                    heap: "page-family",
                },
            );
            if guard::free(emp).is_err() {
                failed += 1;
            }
            failed += check(
                &mut n,
                guard::try_run(read_byte, (emp + 4) as u64),
                Expect {
                    kind: Kind::UseAfterFree,
                    offset: 4,
                    heap: "page-family",
                },
            );
        }
        Err(_) => failed += 1,
    }

    // A MeMS segment of 1000 bytes (8-byte aligned: its end is the page's end).
    match guard::alloc(1000, 8, "mems", "segment") {
        Ok(seg) => {
            failed += check(
                &mut n,
                guard::try_run(write_byte, (seg + 1000) as u64),
                Expect {
                    kind: Kind::Overflow,
                    offset: 1000,
                    heap: "mems",
                },
            );
            if guard::free(seg).is_err() {
                failed += 1;
            }
            failed += check(
                &mut n,
                guard::try_run(write_byte, (seg + 512) as u64),
                Expect {
                    kind: Kind::UseAfterFree,
                    offset: 512,
                    heap: "mems",
                },
            );
            // A second free of the same segment is refused.
            match guard::free(seg) {
                Err(guard::GuardError::DoubleFree(a)) => {
                    println!(
                        "guest: heap-debug: second free refused: double free of {:#x}",
                        a
                    );
                    rec("heapdebug.double_free", "refused");
                }
                _ => failed += 1,
            }
        }
        Err(_) => failed += 1,
    }

    // The global allocator (only in guard mode).
    if super::global::guard_mode() {
        failed += check(
            &mut n,
            guard::try_run(vec_overflow, 0),
            Expect {
                kind: Kind::Overflow,
                offset: 100,
                heap: "memvisor",
            },
        );
    }
    crate::probe::set_hook(None);
    rec("heapdebug.faults", guard::faults());
    println!(
        "guest: heap-debug: {} bad accesses caught and recovered",
        guard::faults()
    );
    u64::from(failed != 0)
}
