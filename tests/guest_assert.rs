//! A failed guest assertion reaches the host as `Ucall(Assert)` with its file, line, the
//! condition and both values; the run is then over.
#![cfg_attr(memvisor_guest, no_std, no_main)]

#[cfg(memvisor_guest)]
mod guest {
    use memvisor_guest_sdk::{entry, guest_assert, guest_assert_eq, sync, ucall::done};
    entry!(main);

    // `1 + 1 == 2` is a passing assertion on purpose.
    #[allow(clippy::eq_op)]
    fn main() -> u32 {
        guest_assert!(1 + 1 == 2);
        sync!(42u8, -1i32, true);
        let answer = 6 * 7;
        guest_assert_eq!(answer, 41);
        done()
    }
}

#[cfg(not(memvisor_guest))]
mod common;
#[cfg(not(memvisor_guest))]
use memvisor::{Exit, Ucall};

#[cfg(not(memvisor_guest))]
#[test]
fn failed_guest_assertion_is_a_ucall_assert_with_file_line_and_values() {
    let mut vm = common::vm_or_skip!("guest_assert");
    assert_eq!(common::sync(&mut vm), [42, u64::MAX, 1]);
    let line = 1 + include_str!("guest_assert.rs")
        .lines()
        .position(|l| l.contains("eq!(answer, 41)"))
        .unwrap();
    let Exit::Ucall(Ucall::Assert {
        file,
        line: l,
        msg,
        values,
    }) = common::step(&mut vm)
    else {
        panic!()
    };
    assert_eq!(
        (file.as_str(), l as usize, msg.as_str(), &values[..]),
        ("../guest_assert.rs", line, "answer == 41", &[42, 41][..])
    );
    assert_eq!(
        common::step(&mut vm),
        common::step(&mut vm),
        "the run stays over"
    );
    let report = vm.report();
    assert_eq!(report.outcome, "panic");
    assert!(report.invariants.is_some_and(|i| i.violations.is_empty()));
}
