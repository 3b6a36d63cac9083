//! `seed-mems`: MeMS's classic example (see [`super`]).

use super::*;

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
