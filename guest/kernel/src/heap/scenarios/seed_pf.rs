//! `seed-page-family`: the seed's test_application with the seed's reports after each step
//! (see [`super`]).

use super::*;

/// The seed's `emp_t`.
#[allow(non_camel_case_types)]
#[repr(C)]
pub(super) struct emp_t {
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
    // Sync point 1 (a midpoint for `memvisor snapshot --at-sync 1`).
    memvisor_guest_sdk::ucall::sync(&[1]);

    // Scenario 2.
    xfree!(pf, emp1).map_err(|_| "xfree emp1")?;
    xfree!(pf, emp3).map_err(|_| "xfree emp3")?;
    xfree!(pf, stud2).map_err(|_| "xfree stud2")?;
    reports(&pf, "scenario 2: freed emp1, emp3, stud2");
    let info = pf.family_info(emp).map_err(|_| "family_info")?;
    rec("seedpf.step2.emp_t.obc", info.allocated_blocks());
    // Sync point 2.
    memvisor_guest_sdk::ucall::sync(&[2]);
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
