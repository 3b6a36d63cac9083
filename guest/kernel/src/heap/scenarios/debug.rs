//! `heap-debug`: guard-page debugging of overflows and uses after free (see [`super`]).

use super::seed_pf::emp_t;
use super::*;

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
        if crate::heap::global::guard_mode() { " (--heap-debug guard: the global allocator too)" } else { "" }
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
    if crate::heap::global::guard_mode() {
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
