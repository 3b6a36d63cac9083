//! Ucalls to the host test (KVM selftests' `GUEST_SYNC` / `GUEST_ASSERT` / `GUEST_DONE`), as
//! binary [`Record`]s sent by one `Ucall` hypercall (see [`memvisor_abi::ucall`]):
//! [`sync!`](crate::sync) waits for the host (`Exit::Ucall(Sync)`), [`guest_assert!`](crate::guest_assert)
//! and [`guest_assert_eq!`](crate::guest_assert_eq) end the run on failure with file, line,
//! message and values (`Ucall(Assert)`), [`done`] ends it (`Ucall(Done)`).

use memvisor_abi::ucall::{self, Record, RECORD_BYTES};
use memvisor_abi::Call;

/// A value a ucall can carry (integers, `bool`, pointers), widened to `u64`.
pub trait UcallValue {
    /// The value as 64 bits (signed values sign-extended, pointers as addresses).
    fn to_u64(&self) -> u64;
}

macro_rules! ucall_value {
    ($($t:ty),*) => { $( impl UcallValue for $t { fn to_u64(&self) -> u64 { *self as u64 } } )* };
}
ucall_value!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, bool);

impl<T> UcallValue for *const T {
    fn to_u64(&self) -> u64 {
        *self as u64
    }
}

impl<T> UcallValue for *mut T {
    fn to_u64(&self) -> u64 {
        *self as u64
    }
}

/// Send one record (from normal context: the main request block).
pub fn send(rec: &Record) {
    let _ = crate::hc::call(
        Call::Ucall,
        [rec as *const Record as u64, RECORD_BYTES as u64, 0, 0, 0],
    );
}

/// Send one record from an exception handler (its own request block).
pub(crate) fn send_in_fault(rec: &Record) {
    let mut r = [memvisor_abi::Request::new(
        Call::Ucall,
        [rec as *const Record as u64, RECORD_BYTES as u64, 0, 0, 0],
    )];
    crate::hc::batch_in_fault(&mut r);
}

/// A sync point with up to [`ucall::MAX_VALS`] values (more are dropped).
pub fn sync(vals: &[u64]) {
    let mut r = Record::new(ucall::SYNC);
    for &v in vals {
        r.push(v);
    }
    send(&r);
}

/// The test is over: `Ucall(Done)`; the host ends the run.
pub fn done() -> ! {
    crate::console::flush();
    send(&Record::new(ucall::DONE));
    crate::hc::exit(0)
}

/// A failed assertion: `Ucall(Assert)` with `file`, `line`, `msg`, `vals`; the host ends the
/// run.
pub fn assert_failed(file: &str, line: u32, msg: &str, vals: &[u64]) -> ! {
    crate::console::flush();
    let mut r = Record::new(ucall::ASSERT);
    r.line = line;
    r.set_file(file);
    r.set_msg(msg);
    for &v in vals {
        r.push(v);
    }
    send(&r);
    crate::hc::exit(1)
}

/// [`assert_failed`] with a formatted message.
pub fn assert_failed_fmt(file: &str, line: u32, msg: core::fmt::Arguments, vals: &[u64]) -> ! {
    let mut l = crate::console::Line::new();
    let _ = core::fmt::Write::write_fmt(&mut l, msg);
    assert_failed(file, line, l.as_str(), vals)
}

/// `sync!(a, b, ...)`: stop at a sync point with up to 6 values ([`UcallValue`]s); the host's
/// `vm.run()` returns `Exit::Ucall(Ucall::Sync(values))` and the guest continues at the next
/// `vm.run()`.
#[macro_export]
macro_rules! sync {
    ($($v:expr),* $(,)?) => {
        $crate::ucall::sync(&[$($crate::ucall::UcallValue::to_u64(&$v)),*])
    };
}

/// `guest_assert!(cond)` or `guest_assert!(cond, "format", args...)`: on failure the run ends
/// with `Ucall(Assert)` carrying this file, line and the condition (or message).
#[macro_export]
macro_rules! guest_assert {
    ($cond:expr $(,)?) => {
        if !$cond {
            $crate::ucall::assert_failed(file!(), line!(), stringify!($cond), &[])
        }
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            $crate::ucall::assert_failed_fmt(file!(), line!(), format_args!($($fmt)+), &[])
        }
    };
}

/// `guest_assert_eq!(left, right)`: on failure `Ucall(Assert)` with file, line,
/// `"left == right"` and the two values ([`UcallValue`]s).
#[macro_export]
macro_rules! guest_assert_eq {
    ($a:expr, $b:expr $(,)?) => {
        match (&$a, &$b) {
            (l, r) => {
                if *l != *r {
                    $crate::ucall::assert_failed(
                        file!(),
                        line!(),
                        concat!(stringify!($a), " == ", stringify!($b)),
                        &[
                            $crate::ucall::UcallValue::to_u64(l),
                            $crate::ucall::UcallValue::to_u64(r),
                        ],
                    )
                }
            }
        }
    };
}
