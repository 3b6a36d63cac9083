//! What [`super::Vm::run`] returns: one [`Exit`] per stop of the vCPU loop.

use crate::report::Outcome;
use memvisor_abi::ucall::{self, Record};

/// A ucall of the guest SDK (`sync!`, `guest_assert!`, `done()`), decoded from its binary
/// record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ucall {
    /// `sync!(values...)`: the guest waits; the next [`super::Vm::run`] resumes it.
    Sync(Vec<u64>),
    /// A failed `guest_assert!` / `guest_assert_eq!` (the run is over).
    Assert {
        /// Source file of the assertion (as `file!()` in the guest crate).
        file: String,
        /// Source line.
        line: u32,
        /// The condition, or the formatted message.
        msg: String,
        /// Values (`guest_assert_eq!`: left, right).
        values: Vec<u64>,
    },
    /// `done()`: the guest finished its test (the run is over).
    Done,
}

/// An exception the guest runtime did not expect (no handler, no `expect_fault`), as the
/// guest's IDT saw it (Intel SDM Vol. 3A §6.3; #PF error code bits §4.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFault {
    /// Vector (14 = #PF, 13 = #GP, 6 = #UD, 8 = #DF, ...).
    pub vector: u64,
    /// Error code pushed by the CPU (0 if the vector has none).
    pub error_code: u64,
    /// CR2 at the fault.
    pub cr2: u64,
    /// RIP of the faulting instruction.
    pub rip: u64,
    /// The guest's description (vector name, registers).
    pub message: String,
}

/// Why [`super::Vm::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// A ucall; only `Sync` lets the guest run on.
    Ucall(Ucall),
    /// An access to a GPA with no memslot (`KVM_EXIT_MMIO`, a stage-2 fault): `size` bytes
    /// (1, 2, 4 or 8) at `gpa`; `data` is the value written (little-endian) or 0 for a read.
    /// A read returns [`super::Vm::set_mmio_read`]'s value (default all-ones) when the guest
    /// runs again.
    Mmio {
        /// Guest-physical address.
        gpa: u64,
        /// Access size in bytes.
        size: u32,
        /// True for a write.
        write: bool,
        /// The written value (writes), else 0.
        data: u64,
    },
    /// An unexpected exception (the run is over).
    Fault(GuestFault),
    /// `KVM_EXIT_SHUTDOWN`: a triple fault (the run is over).
    Shutdown,
    /// The run exceeded its timeout and the watchdog kicked the vCPU out (the run is over).
    Timeout,
    /// The guest panicked with this message (the run is over).
    GuestPanic(String),
    /// The guest made the `Exit` hypercall with this code (the run is over).
    Exited(u32),
    /// Any other end ([`Outcome`]: `KVM_EXIT_HLT`, entry failure, internal error, a KVM
    /// error, an invariant violation).
    Stopped(Outcome),
}

impl Exit {
    /// True if the guest can run again after this exit.
    pub fn resumable(&self) -> bool {
        matches!(self, Exit::Ucall(Ucall::Sync(_)) | Exit::Mmio { .. })
    }

    /// The report's outcome for an exit that ends the run.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        Some(match self {
            Exit::Ucall(Ucall::Sync(_)) | Exit::Mmio { .. } => return None,
            Exit::Ucall(Ucall::Done) => Outcome::Exited(0),
            Exit::Ucall(Ucall::Assert {
                file, line, msg, ..
            }) => Outcome::Panicked(format!("guest assertion failed at {file}:{line}: {msg}")),
            Exit::Fault(f) => Outcome::Panicked(f.message.clone()),
            Exit::Shutdown => Outcome::TripleFault,
            Exit::Timeout => Outcome::Timeout,
            Exit::GuestPanic(m) => Outcome::Panicked(m.clone()),
            Exit::Exited(c) => Outcome::Exited(*c),
            Exit::Stopped(o) => o.clone(),
        })
    }

    /// The exit for a run that ended with `o`.
    pub(crate) fn from_outcome(o: Outcome) -> Exit {
        match o {
            Outcome::Exited(c) => Exit::Exited(c),
            Outcome::Panicked(m) => Exit::GuestPanic(m),
            Outcome::TripleFault => Exit::Shutdown,
            Outcome::Timeout => Exit::Timeout,
            other => Exit::Stopped(other),
        }
    }

    /// The exit for a decoded ucall record.
    pub(crate) fn from_record(r: &Record) -> Exit {
        match r.kind {
            ucall::SYNC => Exit::Ucall(Ucall::Sync(r.values().to_vec())),
            ucall::ASSERT => Exit::Ucall(Ucall::Assert {
                file: r.file_str().to_string(),
                line: r.line,
                msg: r.msg_str().to_string(),
                values: r.values().to_vec(),
            }),
            ucall::FAULT => {
                let v = |i: usize| r.values().get(i).copied().unwrap_or(0);
                Exit::Fault(GuestFault {
                    vector: v(0),
                    error_code: v(1),
                    cr2: v(2),
                    rip: v(3),
                    message: r.msg_str().to_string(),
                })
            }
            _ => Exit::Ucall(Ucall::Done),
        }
    }
}
