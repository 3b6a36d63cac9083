//! `Vm::snapshot` / `Vm::snapshot_incremental` / `Vm::restore` in one process: at the same
//! sync point, base + incremental layer hold exactly the memory of a full snapshot (page by
//! page), and both restore to a guest that finds its data and finishes the same way; a
//! restored VM takes an incremental snapshot on top of the file it came from (the pages the
//! uffd handler served since the restore) that again equals a full snapshot.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
memvisor_guest_sdk::guest_main! {
    use memvisor_guest_sdk::{boot, guest_assert_eq, sync};
    let base = boot().arg[0];
    let page = |i: u64| (base + i * 4096 + 8 * i) as *mut u64;
    for i in 0..16u64 {
        // SAFETY: inside the host's lazy region of 64 pages.
        unsafe { page(i).write_volatile(i + 1) };
    }
    sync!(1);
    for i in 8..32u64 {
        // SAFETY: as above.
        unsafe { page(i).write_volatile(i + 100) };
    }
    sync!(2);
    for i in 24..40u64 {
        // SAFETY: as above.
        unsafe { page(i).write_volatile(i + 1000) };
    }
    sync!(3);
    for i in 0..40u64 {
        // SAFETY: as above.
        let v = unsafe { page(i).read_volatile() };
        let want = match i {
            0..=7 => i + 1,
            8..=23 => i + 100,
            _ => i + 1000,
        };
        guest_assert_eq!(v, want);
    }
    memvisor_guest_sdk::println!("snapshot_api: 40 pages checked");
}

mod common;

#[test]
fn base_plus_incremental_equals_a_full_snapshot_and_both_restore() {
    use memvisor::snapshot::{Identity, Snapshot};
    use memvisor::vm::{Exit, RestoreOptions, Ucall};
    use memvisor_abi::{MapFlags, Prot, Zone};
    use std::path::Path;
    if !common::uffd_or_skip("snapshot_api") {
        return;
    }
    let mut vm = common::vm_or_skip!("snapshot_api");
    let lazy = vm.mmap(64 << 12, Prot::USER_RW, Zone::ANY, MapFlags::LAZY);
    vm.set_args([lazy.unwrap(), 0, 0, 0]).unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, inc, full) = (
        dir.path().join("base.snap"),
        dir.path().join("inc.snap"),
        dir.path().join("full.snap"),
    );
    // Not at a sync point yet: refused.
    assert!(matches!(
        vm.snapshot(&base),
        Err(memvisor::vm::SnapError::NotAtSync)
    ));
    assert_eq!(common::sync(&mut vm), [1]);
    let b = vm.snapshot(&base).expect("base snapshot");
    assert_eq!(common::sync(&mut vm), [2]);
    // The API's own dirty-log read must not take pages from the incremental snapshot.
    let read = vm.dirty_log().expect("dirty log");
    assert!(!read.kvm.is_empty());
    let i = vm.snapshot_incremental(&inc).expect("incremental");
    let f = vm.snapshot(&full).expect("full snapshot");
    assert_eq!(i.base_id, Some(b.id));
    assert!(i.pages < f.pages, "{i:?} vs {f:?}");

    let elf = common::guest_elf("snapshot_api");
    let id = Identity::of(64 << 20, &elf);
    // Every page of `base` + `layer` equals the page of `whole` (absent = zero).
    let same_memory = |base: &Path, layer: &Path, whole: &Path| {
        let bs = Snapshot::open(base, id).expect("open base");
        let is = Snapshot::open_layer(layer, id, bs.id).expect("open layer");
        let fs = Snapshot::open(whole, id).expect("open full");
        let mut all: Vec<u64> = bs.gpas();
        all.extend(is.gpas());
        all.extend(fs.gpas());
        all.sort_unstable();
        all.dedup();
        let page = |s: &Snapshot, gpa| {
            let mut p = [0u8; 4096];
            s.read_page(gpa, &mut p).expect("page").then_some(p)
        };
        for gpa in all {
            let layered = page(&is, gpa)
                .or_else(|| page(&bs, gpa))
                .unwrap_or([0; 4096]);
            let one = page(&fs, gpa).unwrap_or([0; 4096]);
            assert!(layered == one, "GPA {gpa:#x} differs");
        }
    };
    same_memory(&base, &inc, &full);

    assert_eq!(common::sync(&mut vm), [3]);
    common::done(&mut vm);
    let console = vm.console().to_string();
    for (top, under) in [(&inc, Some(base.as_path())), (&full, None)] {
        let mut r = memvisor::Vm::restore(top, under, elf.clone(), RestoreOptions::default())
            .expect("restore");
        assert_eq!(common::sync(&mut r), [3]);
        assert_eq!(r.run().expect("run"), Exit::Ucall(Ucall::Done));
        assert_eq!(r.console(), console);
        common::invariants(&r);
        let st = r.restore_stats().expect("restored");
        assert!(st.pages_read > 0 && st.pages_read < st.file_pages, "{st:?}");
    }

    // A restored VM: an incremental snapshot on the file it came from.
    let (inc3, full3) = (dir.path().join("inc3.snap"), dir.path().join("full3.snap"));
    let mut r = memvisor::Vm::restore(&full, None, elf.clone(), RestoreOptions::default())
        .expect("restore");
    assert_eq!(common::sync(&mut r), [3]);
    let i3 = r
        .snapshot_incremental(&inc3)
        .expect("incremental of a restored VM");
    let f3 = r.snapshot(&full3).expect("full snapshot of a restored VM");
    assert!(i3.pages < f3.pages, "{i3:?} vs {f3:?}");
    same_memory(&full, &inc3, &full3);
    common::done(&mut r);
    for (top, under) in [(&inc3, Some(full.as_path())), (&full3, None)] {
        let mut r = memvisor::Vm::restore(top, under, elf.clone(), RestoreOptions::default())
            .expect("restore");
        assert_eq!(r.run().expect("run"), Exit::Ucall(Ucall::Done));
        assert_eq!(r.console(), console);
    }
}
