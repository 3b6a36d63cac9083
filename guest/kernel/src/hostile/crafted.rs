//! Crafted calls, one at a time, each with the one status the ABI allows: the zone probe;
//! calls on what is not the guest's (kernel image, stacks and guards, page tables, the
//! doorbell, buffers the host must not read or write, unknown calls and reserved bits); and
//! ranges (unaligned, zero, overflowing, wrapping, non-canonical, partly mapped, unmapped
//! twice), bad protections and zones, huge pages and lazy regions, checked with real accesses.

use super::ctx::{check_stats, Ctx};
use super::doorbell::{peek, send, text_gva, RO_PAGE, SACRIFICE};
use super::model::Expect;
use super::{HUGE, PAGE, RECORD_LINE_MAX, RW};
use crate::probe::{self, Probe};
use crate::{boot, hc, println};
use memvisor_abi::{
    map, prot, zone, Call, Request, Status, DOORBELL_GVA, KERNEL_VIRT_OFFSET, MAX_CONSOLE_WRITE,
};

/// Which zones exist: a lazy one-page mmap checks the zone and reserves no frame.
pub(super) fn probe_zones(c: &mut Ctx) {
    for z in 0..4u64 {
        let mut r = [Request::new(Call::Mmap, [PAGE, RW, z, map::LAZY, 0])];
        send(&mut r);
        c.t.batches += 1;
        c.t.count(r[0].status);
        c.m.zones[z as usize] = r[0].status == 0;
        if r[0].status == 0 {
            let mut u = [Request::new(Call::Munmap, [r[0].value, PAGE, 0, 0, 0])];
            send(&mut u);
            c.t.batches += 1;
            c.t.count(u[0].status);
        } else if r[0].status != Status::NoZone as i32 {
            c.mismatch("zone probe", &r[0], Expect::OkOr(Status::NoZone));
        }
    }
}

pub(super) fn crafted_not_mine(c: &mut Ctx) {
    let info = *boot();
    let dm = info.direct_map_base;
    let text = text_gva() & !(PAGE - 1);
    let ro = core::ptr::addr_of!(RO_PAGE) as u64;
    let sac = SACRIFICE.0.get() as u64;
    let user_x = prot::READ | prot::EXEC | prot::USER;
    let user_ro = prot::READ | prot::USER;
    // Kernel image: text, rodata, data/bss (the page is unused by anything we need).
    c.not_mine("kernel text", text, PAGE, user_x, true);
    c.not_mine("kernel rodata", ro, PAGE, user_ro, true);
    c.not_mine("kernel bss", sac, 2 * PAGE, RW, true);
    c.not_mine(
        "whole kernel",
        c.text & !(PAGE - 1),
        16 * PAGE,
        user_x,
        false,
    );
    // Stacks and their guards (munmap only where nothing we use lives).
    c.not_mine(
        "boot stack guard",
        info.stack[0] - PAGE,
        PAGE,
        prot::READ | prot::WRITE,
        true,
    );
    c.not_mine(
        "boot stack bottom",
        info.stack[0],
        PAGE,
        prot::READ | prot::WRITE,
        true,
    );
    c.not_mine(
        "boot stack",
        info.stack[0],
        info.stack[1] - info.stack[0],
        prot::READ | prot::WRITE,
        false,
    );
    c.not_mine(
        "#DF stack",
        info.df_stack[0],
        PAGE,
        prot::READ | prot::WRITE,
        true,
    );
    c.not_mine(
        "#DF stack guard",
        info.df_stack[0] - PAGE,
        PAGE,
        prot::READ | prot::WRITE,
        true,
    );
    c.not_mine(
        "user stack guard",
        info.user_stack[0] - PAGE,
        PAGE,
        RW,
        true,
    );
    c.not_mine("user stack bottom", info.user_stack[0], PAGE, RW, true);
    c.not_mine(
        "user stack",
        info.user_stack[0],
        info.user_stack[1] - info.user_stack[0],
        RW,
        false,
    );
    // Page tables, through the direct map (read-only there): making them writable is the
    // classic PV escape (Xen XSA-182).
    let pml4 = dm + info.pml4_gpa;
    c.not_mine("PML4 (direct map)", pml4, PAGE, user_ro, true);
    c.not_mine(
        "page-table pool (direct map)",
        pml4 & !(HUGE - 1),
        HUGE,
        user_ro,
        true,
    );
    c.not_mine("direct map", dm, HUGE, RW, true);
    c.not_mine("doorbell", DOORBELL_GVA, PAGE, RW, false);
    // The tables really are read-only: a write of the byte already there must fault (P|W|U).
    if let Some(b) = peek(pml4 + 8 * 511) {
        // SAFETY: writes back the byte that is there; the write must fault (read-only).
        match unsafe { probe::write(pml4 + 8 * 511, b as u8) } {
            Probe::Fault { error_code, .. } if error_code & 0x7 == 0x7 => {}
            other => {
                c.t.self_hits += 1;
                println!(
                    "hostile: FAILED: write to the PML4 through the direct map: {:?}",
                    other
                );
            }
        }
    }
    // Lazy faults and translations outside the guest's regions.
    for g in [
        text,
        ro,
        info.stack[0] - PAGE,
        pml4,
        DOORBELL_GVA,
        u64::MAX,
        !(PAGE - 1),
        0x0000_8000_0000_0000,
    ] {
        c.expect(Call::LazyFault, [g, 6, 0, 0, 0], Status::NotMapped);
    }
    let (_, gpa) = c.expect(Call::Translate, [text + 0x123, 0, 0, 0, 0], Status::Ok);
    if gpa != text + 0x123 - KERNEL_VIRT_OFFSET {
        c.t.mismatches += 1;
        println!(
            "hostile: MISMATCH translate of kernel text gave GPA {:#x}",
            gpa
        );
    }
    let (_, gpa) = c.expect(Call::Translate, [pml4, 0, 0, 0, 0], Status::Ok);
    if gpa != info.pml4_gpa {
        c.t.mismatches += 1;
        println!(
            "hostile: MISMATCH translate of the PML4 gave GPA {:#x}",
            gpa
        );
    }
    c.t.translate_checked += 2;
    c.expect(
        Call::Translate,
        [info.stack[0] - PAGE, 0, 0, 0, 0],
        Status::NotMapped,
    );
    c.expect(
        Call::Translate,
        [0x0000_8000_0000_0000, 0, 0, 0, 0],
        Status::Inval,
    );
    // Buffers the host must not write (Stats) or read (console, record).
    for g in [
        text,
        pml4,
        DOORBELL_GVA,
        u64::MAX - 8,
        0,
        info.stack[0] - PAGE,
    ] {
        c.expect(Call::Stats, [g, 0, 0, 0, 0], Status::Fault);
    }
    for (g, len, want) in [
        (text, MAX_CONSOLE_WRITE + 1, Status::Inval),
        (text, u64::MAX, Status::Inval),
        (u64::MAX - 4, 8, Status::Fault),
        (info.stack[0] - PAGE, 8, Status::Fault),
        (0x0000_8000_0000_0000, 8, Status::Fault),
        (DOORBELL_GVA, 8, Status::Fault),
    ] {
        c.expect(Call::ConsoleWrite, [g, len, 0, 0, 0], want);
    }
    c.expect(
        Call::Record,
        [text, RECORD_LINE_MAX + 1, 0, 0, 0],
        Status::Inval,
    );
    c.expect(Call::Record, [u64::MAX - 4, 8, 0, 0, 0], Status::Fault);
    // Unknown calls and reserved bits.
    for nr in [14u32, 99, 0x8000_0000, u32::MAX] {
        let mut r = [Request::new(Call::Nop, [0; 5])];
        r[0].nr = nr;
        c.batch_exact(&mut r, Status::NoSys);
    }
    let mut r = [Request::new(Call::Nop, [0; 5])];
    r[0].reserved = 1;
    c.batch_exact(&mut r, Status::Inval);
    let mut r = [Request::new(Call::Exit, [7, 0, 0, 0, 0])];
    r[0].reserved = 0x8000_0000; // an exit with reserved bits set is refused (we keep running)
    c.batch_exact(&mut r, Status::Inval);
}

pub(super) fn crafted_ranges(c: &mut Ctx) {
    let (win0, win1) = (c.m.window[0], c.m.window[1]);
    // A first small region so the one under test does not start at the window's start.
    let (_, first) = c.expect(Call::Mmap, [PAGE, RW, zone::ANY, map::LAZY, 0], Status::Ok);
    let (st, a) = c.expect(
        Call::Mmap,
        [16 * PAGE, RW, zone::ANY, map::POPULATE, 0],
        Status::Ok,
    );
    if st != Status::Ok {
        return;
    }
    // Populated memory is zeroed and ours: write and read back.
    for i in 0..16 {
        let p = a + i * PAGE + 8 * i;
        // SAFETY: [a, a + 16 pages) was just mapped read/write for us.
        let v = unsafe { core::ptr::read_volatile(p as *const u64) };
        if v != 0 {
            c.t.mismatches += 1;
            println!("hostile: MISMATCH fresh page {:#x} not zero", p);
        }
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(p as *mut u64, 0xabad_1dea ^ i) };
    }
    let cases: [(u64, u64, Status); 15] = [
        (a + 1, PAGE, Status::Inval),
        (a, 1, Status::Inval),
        (a, 0, Status::Inval),
        (a, !(PAGE - 1), Status::Inval),
        (!(PAGE - 1), PAGE, Status::Inval),
        (0x0000_8000_0000_0000, PAGE, Status::Inval),
        (0xffff_7fff_ffff_f000, PAGE, Status::Inval),
        ((1 << 47) - PAGE, 2 * PAGE, Status::Inval),
        (a, 0u64.wrapping_sub(a), Status::Inval),
        (a, 17 * PAGE, Status::NotMapped),
        (a + 16 * PAGE, PAGE, Status::NotMapped),
        (a - PAGE, 2 * PAGE, Status::NotMapped),
        (win1 - PAGE, 2 * PAGE, Status::Perm),
        (win0 - PAGE, PAGE, Status::Perm),
        (a + (1 << 30), PAGE, Status::NotMapped),
    ];
    for (g, l, want) in cases {
        c.expect(Call::Munmap, [g, l, 0, 0, 0], want);
        c.expect(Call::Mprotect, [g, l, prot::READ | prot::USER, 0, 0], want);
    }
    // W+X, bad protections.
    c.expect(Call::Mprotect, [a, PAGE, prot::ALL, 0, 0], Status::Perm);
    c.expect(
        Call::Mprotect,
        [a, PAGE, prot::WRITE | prot::EXEC, 0, 0],
        Status::Perm,
    );
    c.expect(Call::Mprotect, [a, PAGE, 0, 0, 0], Status::Inval);
    c.expect(Call::Mprotect, [a, PAGE, 0x10, 0, 0], Status::Inval);
    // Read-only, then a write faults (P|W|U); writable again, the write works.
    let target = a + 8 * PAGE;
    c.expect(
        Call::Mprotect,
        [target, PAGE, prot::READ | prot::USER, 0, 0],
        Status::Ok,
    );
    hc::flush_range(target, PAGE);
    // SAFETY: our page; the write must fault (read-only) and the probe catches it.
    match unsafe { probe::write(target + 8, 1) } {
        Probe::Fault { error_code, .. } if error_code & 7 == 7 => {}
        other => {
            c.t.mismatches += 1;
            println!("hostile: MISMATCH write to a read-only page: {:?}", other);
        }
    }
    c.expect(Call::Mprotect, [target, PAGE, RW, 0, 0], Status::Ok);
    hc::flush_range(target, PAGE);
    // SAFETY: our page, writable again.
    if !matches!(unsafe { probe::write(target + 8, 2) }, Probe::Ok) {
        c.t.mismatches += 1;
        println!("hostile: MISMATCH write after mprotect RW faulted");
    }
    // Partly mapped ranges and double munmap.
    c.expect(Call::Munmap, [a + 4 * PAGE, PAGE, 0, 0, 0], Status::Ok);
    hc::flush_range(a + 4 * PAGE, PAGE);
    match probe::read(a + 4 * PAGE) {
        Probe::Fault { error_code, .. } if error_code & 1 == 0 => {}
        other => {
            c.t.mismatches += 1;
            println!("hostile: MISMATCH read after munmap: {:?}", other);
        }
    }
    c.expect(Call::Munmap, [a, 8 * PAGE, 0, 0, 0], Status::NotMapped);
    c.expect(
        Call::Mprotect,
        [a, 8 * PAGE, prot::READ | prot::USER, 0, 0],
        Status::NotMapped,
    );
    c.expect(
        Call::Munmap,
        [a + 4 * PAGE, PAGE, 0, 0, 0],
        Status::NotMapped,
    );
    // The rest of the region kept its data.
    for i in [0u64, 3, 5, 15] {
        // SAFETY: still mapped (only page 4 was unmapped).
        let v = unsafe { core::ptr::read_volatile((a + i * PAGE + 8 * i) as *const u64) };
        if v != 0xabad_1dea ^ i {
            c.t.mismatches += 1;
            println!("hostile: MISMATCH page {} lost its data", i);
        }
    }
    c.expect(Call::Munmap, [a, 4 * PAGE, 0, 0, 0], Status::Ok);
    c.expect(Call::Munmap, [a, 4 * PAGE, 0, 0, 0], Status::NotMapped);
    c.expect(Call::Munmap, [a + 5 * PAGE, 11 * PAGE, 0, 0, 0], Status::Ok);
    hc::flush_range(a, 16 * PAGE);
    // Zones that do not exist; bad mmap arguments.
    for z in [4u64, 99, u64::MAX] {
        c.expect(Call::Mmap, [PAGE, RW, z, 0, 0], Status::NoZone);
    }
    if !c.m.zones[zone::NORMAL as usize] {
        c.expect(Call::Mmap, [PAGE, RW, zone::NORMAL, 0, 0], Status::NoZone);
    }
    for (len, p, f, want) in [
        (0, RW, 0, Status::Inval),
        (PAGE + 1, RW, 0, Status::Inval),
        (u64::MAX, RW, 0, Status::Inval),
        (!(PAGE - 1), RW, 0, Status::Inval),
        (win1 - win0 + PAGE, RW, 0, Status::Inval),
        (PAGE, 0, 0, Status::Inval),
        (PAGE, 0x10, 0, Status::Inval),
        (PAGE, prot::WRITE | prot::EXEC, 0, Status::Perm),
        (PAGE, RW, 16, Status::Inval),
        (PAGE, RW, map::FIXED, Status::Perm),
        (PAGE, RW, map::LAZY | map::POPULATE, Status::Inval),
        (PAGE, RW, map::HUGE | map::POPULATE, Status::Inval),
        (PAGE, RW, u64::MAX, Status::Inval),
    ] {
        c.expect(Call::Mmap, [len, p, zone::ANY, f, 0], want);
    }
    // Fixed addresses: exactly there; never over a region or its guard page, never with
    // the region or its guard outside the window, never misaligned; no address without FIXED.
    let fx = map::LAZY | map::FIXED;
    let at = c.m.window[1] - 64 * PAGE;
    let (st, v) = c.expect(Call::Mmap, [2 * PAGE, RW, zone::ANY, fx, at], Status::Ok);
    if st == Status::Ok && v != at {
        c.t.mismatches += 1;
    }
    c.expect(
        Call::Mmap,
        [PAGE, RW, zone::ANY, fx, at + PAGE],
        Status::Exists,
    );
    c.expect(
        Call::Mmap,
        [PAGE, RW, zone::ANY, fx, at + 2 * PAGE],
        Status::Exists,
    );
    c.expect(
        Call::Mmap,
        [PAGE, RW, zone::ANY, fx, at - PAGE],
        Status::Exists,
    );
    c.expect(
        Call::Mmap,
        [PAGE, RW, zone::ANY, fx, at + 3 * PAGE + 1],
        Status::Inval,
    );
    let last = c.m.window[1] - PAGE;
    c.expect(Call::Mmap, [PAGE, RW, zone::ANY, fx, last], Status::Perm);
    c.expect(
        Call::Mmap,
        [PAGE, RW, zone::ANY, fx, c.m.window[0] - PAGE],
        Status::Perm,
    );
    c.expect(
        Call::Mmap,
        [PAGE, RW, zone::ANY, map::LAZY, at],
        Status::Inval,
    );
    c.expect(Call::Munmap, [at, 2 * PAGE, 0, 0, 0], Status::Ok);
    // Huge pages are never split.
    let (st, h) = c.expect(
        Call::Mmap,
        [2 * HUGE, RW, zone::ANY, map::POPULATE | map::HUGE, 0],
        Status::Ok,
    );
    if st == Status::Ok {
        if h % HUGE != 0 {
            c.t.mismatches += 1;
        }
        c.expect(Call::Munmap, [h + PAGE, PAGE, 0, 0, 0], Status::Inval);
        c.expect(Call::Munmap, [h, PAGE, 0, 0, 0], Status::Inval);
        c.expect(
            Call::Mprotect,
            [h, PAGE, prot::READ | prot::USER, 0, 0],
            Status::Inval,
        );
        c.expect(
            Call::Mprotect,
            [h, HUGE, prot::READ | prot::USER, 0, 0],
            Status::Ok,
        );
        c.expect(Call::Munmap, [h, HUGE, 0, 0, 0], Status::Ok);
        c.expect(Call::Munmap, [h + HUGE, HUGE, 0, 0, 0], Status::Ok);
        hc::flush_range(h, 2 * HUGE);
    }
    // Lazy regions: a lazy fault backs a page once; other pages stay unbacked.
    let (st, l) = c.expect(
        Call::Mmap,
        [8 * PAGE, RW, zone::ANY, map::LAZY, 0],
        Status::Ok,
    );
    if st == Status::Ok {
        c.expect(Call::LazyFault, [l + 3 * PAGE + 5, 6, 0, 0, 0], Status::Ok);
        c.expect(Call::LazyFault, [l + 3 * PAGE, 6, 0, 0, 0], Status::Perm);
        c.expect(Call::Translate, [l + 3 * PAGE, 0, 0, 0, 0], Status::Ok);
        c.expect(
            Call::Translate,
            [l + 4 * PAGE, 0, 0, 0, 0],
            Status::NotMapped,
        );
        c.expect(
            Call::LazyFault,
            [l + 8 * PAGE, 6, 0, 0, 0],
            Status::NotMapped,
        );
        // A real first touch (the #PF handler asks the host) also works, and reads zero.
        // SAFETY: inside our lazy region; the #PF handler has the host back the page.
        unsafe { core::ptr::write_volatile((l + 5 * PAGE) as *mut u64, 77) };
        // SAFETY: as above, now backed.
        if unsafe { core::ptr::read_volatile((l + 5 * PAGE) as *const u64) } != 77 {
            c.t.mismatches += 1;
        }
        // The model learns the page the CPU touched.
        c.expect(Call::LazyFault, [l + 5 * PAGE, 6, 0, 0, 0], Status::Perm);
        if let Some(i) = c.m.find(l, l + PAGE) {
            c.m.r[i].backed |= 1 << 5;
        }
        c.expect(Call::Munmap, [l, 8 * PAGE, 0, 0, 0], Status::Ok);
        hc::flush_range(l, 8 * PAGE);
    }
    c.expect(Call::Munmap, [first, PAGE, 0, 0, 0], Status::Ok);
    // Stats into our own buffer: the host's view agrees with ours.
    check_stats(c, "after crafted ranges");
}
