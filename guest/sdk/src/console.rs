//! Console output: a line buffer flushed with one `ConsoleWrite` hypercall per line.

use core::cell::UnsafeCell;
use core::fmt;
use memvisor_abi::Call;

/// A fixed-capacity line (truncates silently past its capacity).
pub struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }

    pub fn as_str(&self) -> &str {
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            // Truncation may split a UTF-8 sequence: keep the valid prefix.
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

struct Console(UnsafeCell<Line>);
// SAFETY: one vCPU; the console is not used from exception handlers while main code holds it
// (handlers report through hypercalls of their own).
unsafe impl Sync for Console {}
static CONSOLE: Console = Console(UnsafeCell::new(Line::new()));

fn write_out(s: &str) {
    if !s.is_empty() {
        let _ = crate::hc::call(
            Call::ConsoleWrite,
            [s.as_ptr() as u64, s.len() as u64, 0, 0, 0],
        );
    }
}

/// Write formatted text; every '\n' flushes the line to the host.
pub fn print(args: fmt::Arguments) {
    struct W;
    impl fmt::Write for W {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            // SAFETY: see the Sync impl of Console.
            let line = unsafe { &mut *CONSOLE.0.get() };
            for part in s.split_inclusive('\n') {
                if line.len + part.len() > line.buf.len() {
                    write_out(line.as_str());
                    line.clear();
                }
                if part.len() > line.buf.len() {
                    write_out(part);
                    continue;
                }
                let _ = fmt::Write::write_str(line, part);
                if part.ends_with('\n') {
                    write_out(line.as_str());
                    line.clear();
                }
            }
            Ok(())
        }
    }
    let _ = fmt::Write::write_fmt(&mut W, args);
}

/// Flush a partial line.
pub fn flush() {
    // SAFETY: see the Sync impl of Console.
    let line = unsafe { &mut *CONSOLE.0.get() };
    write_out(line.as_str());
    line.clear();
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
