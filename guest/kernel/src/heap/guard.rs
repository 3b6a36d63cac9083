//! Hardware-checked heap debugging (`--heap-debug guard`), after GWP-ASan: every allocation
//! gets its own page(s) from one `mmap`, placed so that its **end abuts the unmapped guard
//! page** the host leaves after every region; a free unmaps the pages at once. So an access
//! one byte past the end (overflow) or to a freed block (use after free) raises a real #PF on
//! the MMU, which the #PF hook below turns into a report naming the heap, the family or
//! segment, the allocation's address and size, the offset of the bad access and its kind.
//!
//! Limits (as in GWP-ASan): the start is rounded down to the allocation's alignment, so an
//! overflow inside that slack (< alignment bytes) is not caught; an underflow is not caught;
//! a freed range the host hands out again to a later `mmap` is no longer checked.
//!
//! Recovery: [`try_run`] is a setjmp: it runs a function and, if the hook catches a guard
//! fault inside it, resumes at a landing pad with the caller's stack and callee-saved
//! registers restored (the function's frames are abandoned, like a `longjmp`). Outside
//! `try_run` the hook reports the fault and lets the kernel's #PF handler stop the guest.
//! The hook runs at CPL 0 (emulated instruction by instruction on PVM), so it only looks the
//! address up, reports the fault to the host's fault log and redirects; the text report is
//! written after the landing, in ring 3.

use crate::idt::TrapFrame;
use crate::{hc, println};
use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use memvisor_abi::{map, prot, zone};

const PAGE: usize = 4096;
/// Allocation records kept (live ones, and the most recent freed ones for use-after-free).
pub const RECORDS: usize = 1024;

/// Which kind of bad access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An access at or past the end of a live allocation (in its guard page).
    Overflow,
    /// An access to an allocation that was freed.
    UseAfterFree,
}

impl Kind {
    /// `overflow` / `use-after-free`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Overflow => "overflow",
            Kind::UseAfterFree => "use-after-free",
        }
    }
}

/// One allocation of the guard heap.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// First page of its mapping.
    pub base: usize,
    /// Pages mapped (the guard page follows them).
    pub pages: usize,
    /// The allocation's address.
    pub addr: usize,
    /// Its size in bytes.
    pub size: usize,
    /// Heap name: `page-family`, `mems`, `memvisor`.
    pub heap: &'static str,
    /// Page-family name, `segment` (MeMS) or `size class` (global allocator).
    pub what: &'static str,
    /// 0 unused, 1 live, 2 freed.
    pub state: u8,
    /// Allocation sequence number (newest wins when ranges were reused).
    pub seq: u64,
}

const EMPTY: Rec = Rec {
    base: 0,
    pages: 0,
    addr: 0,
    size: 0,
    heap: "",
    what: "",
    state: 0,
    seq: 0,
};

/// A caught bad access.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// Overflow or use after free.
    pub kind: Kind,
    /// The allocation it hit.
    pub rec: Rec,
    /// Faulting address (CR2).
    pub cr2: u64,
    /// #PF error code.
    pub error_code: u64,
    /// RIP of the faulting instruction.
    pub rip: u64,
}

impl Fault {
    /// Offset of the bad access from the allocation's start, in bytes.
    pub fn offset(&self) -> i64 {
        self.cr2 as i64 - self.rec.addr as i64
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.rec;
        write!(f, "{} heap={} ", self.kind.name(), r.heap)?;
        match r.heap {
            "mems" => write!(f, "segment=P[{}:{}]", r.addr, r.addr + r.size.max(1) - 1)?,
            "page-family" => write!(f, "family={}", r.what)?,
            _ => write!(f, "{}", r.what)?,
        }
        write!(
            f,
            " addr={:#x} size={} offset={} access={} cr2={:#x} error_code={:#x} rip={:#x}",
            r.addr,
            r.size,
            self.offset(),
            if self.error_code & 2 != 0 {
                "write"
            } else {
                "read"
            },
            self.cr2,
            self.error_code,
            self.rip
        )
    }
}

struct Table {
    recs: [Rec; RECORDS],
    seq: u64,
    live: usize,
    faults: u64,
}

struct TableCell(UnsafeCell<Table>);
// SAFETY: one vCPU. Normal code changes the table only inside `with_table` (BUSY set); the
// #PF hook only reads it, and only when BUSY is clear (a fault while the table is being
// changed is not a guard fault: the guard heap itself never touches guarded memory).
unsafe impl Sync for TableCell {}

static TABLE: TableCell = TableCell(UnsafeCell::new(Table {
    recs: [EMPTY; RECORDS],
    seq: 0,
    live: 0,
    faults: 0,
}));
static BUSY: AtomicBool = AtomicBool::new(false);
static HOOKED: AtomicBool = AtomicBool::new(false);

fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> Option<R> {
    if BUSY.swap(true, Ordering::Acquire) {
        return None;
    }
    // SAFETY: BUSY makes this the only reference (see the Sync impl).
    let r = f(unsafe { &mut *TABLE.0.get() });
    BUSY.store(false, Ordering::Release);
    Some(r)
}

/// Errors of the guard heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardError {
    /// The host refused the mapping, or the record table is full of live allocations.
    OutOfMemory,
    /// Not the address of a live guard allocation.
    InvalidPointer(usize),
    /// The allocation was already freed.
    DoubleFree(usize),
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::OutOfMemory => f.write_str("out of memory"),
            GuardError::InvalidPointer(a) => write!(f, "invalid pointer {a:#x}"),
            GuardError::DoubleFree(a) => write!(f, "double free of {a:#x}"),
        }
    }
}

/// Allocate `size` bytes aligned to `align` on their own page(s), ending at the guard page.
/// `heap` and `what` name the heap and the family / segment / class for fault reports.
pub fn alloc(
    size: usize,
    align: usize,
    heap: &'static str,
    what: &'static str,
) -> Result<usize, GuardError> {
    let size = size.max(1);
    let align = align.max(1);
    if !align.is_power_of_two() || align > 1 << 30 {
        return Err(GuardError::OutOfMemory);
    }
    let need = size.checked_add(align - 1).ok_or(GuardError::OutOfMemory)?;
    let pages = need.div_ceil(PAGE);
    let len = pages.checked_mul(PAGE).ok_or(GuardError::OutOfMemory)?;
    // A free record first (a full table of live allocations refuses).
    let slot = with_table(|t| {
        let mut best: Option<usize> = None;
        for (i, r) in t.recs.iter().enumerate() {
            if r.state == 0 {
                return Some(i);
            }
            if r.state == 2 && best.is_none_or(|b| t.recs[b].seq > r.seq) {
                best = Some(i);
            }
        }
        best
    })
    .flatten()
    .ok_or(GuardError::OutOfMemory)?;
    if !HOOKED.swap(true, Ordering::SeqCst) {
        // The first guard allocation installs the #PF hook (scenarios with a hook of their own
        // replace it while they run).
        crate::probe::set_hook(Some(hook));
    }
    let base = hc::mmap(
        len as u64,
        prot::READ | prot::WRITE | prot::USER,
        zone::ANY,
        map::POPULATE,
    )
    .map_err(|_| GuardError::OutOfMemory)? as usize;
    let addr = (base + len - size) & !(align - 1);
    with_table(|t| {
        t.seq += 1;
        t.live += 1;
        t.recs[slot] = Rec {
            base,
            pages,
            addr,
            size,
            heap,
            what,
            state: 1,
            seq: t.seq,
        };
    });
    Ok(addr)
}

/// Free a guard allocation: its pages are unmapped at once (and the TLB flushed).
pub fn free(addr: usize) -> Result<(), GuardError> {
    let found = with_table(|t| {
        let mut freed = false;
        let mut live: Option<usize> = None;
        for (i, r) in t.recs.iter().enumerate() {
            if r.addr == addr && r.state == 1 {
                live = Some(i);
            } else if r.addr == addr && r.state == 2 {
                freed = true;
            }
        }
        match live {
            Some(i) => {
                t.recs[i].state = 2;
                t.live -= 1;
                Ok(t.recs[i])
            }
            None if freed => Err(GuardError::DoubleFree(addr)),
            None => Err(GuardError::InvalidPointer(addr)),
        }
    })
    .unwrap_or(Err(GuardError::InvalidPointer(addr)))?;
    let _ = hc::munmap(found.base as u64, (found.pages * PAGE) as u64);
    Ok(())
}

/// Size of the live guard allocation at `addr`.
pub fn size_of(addr: usize) -> Option<usize> {
    with_table(|t| {
        t.recs
            .iter()
            .find(|r| r.state == 1 && r.addr == addr)
            .map(|r| r.size)
    })
    .flatten()
}

/// Live guard allocations.
pub fn live() -> usize {
    with_table(|t| t.live).unwrap_or(0)
}

/// Guard faults caught so far.
pub fn faults() -> u64 {
    with_table(|t| t.faults).unwrap_or(0)
}

/// Classify a faulting address against the records: the newest allocation whose pages (live:
/// the guard page after them) contain `cr2`.
fn classify(t: &Table, cr2: usize) -> Option<(Kind, Rec)> {
    let mut hit: Option<(Kind, Rec)> = None;
    for r in t.recs.iter() {
        let end = r.base + r.pages * PAGE;
        let k = match r.state {
            1 if cr2 >= end && cr2 < end + PAGE => Kind::Overflow,
            2 if cr2 >= r.base && cr2 < end => Kind::UseAfterFree,
            _ => continue,
        };
        if hit.is_none_or(|(_, h)| h.seq < r.seq) {
            hit = Some((k, *r));
        }
    }
    hit
}

// ---- the landing pad ------------------------------------------------------------------------

/// `[saved rsp, armed]` of the active [`try_run`].
#[no_mangle]
static HEAP_JMPBUF: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static LAST: LastCell = LastCell(UnsafeCell::new(None));
struct LastCell(UnsafeCell<Option<Fault>>);
// SAFETY: written by the #PF hook (the interrupted code is not touching it: it only reads it
// after the landing) and read by normal code after the landing; one vCPU.
unsafe impl Sync for LastCell {}

core::arch::global_asm!(
    ".global heap_try_call",
    // rdi = fn, rsi = arg. Returns rax = value, rdx = 1 if a guard fault landed.
    "heap_try_call:",
    "    push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "    sub rsp, 8",
    "    mov [rip + {buf}], rsp",
    "    mov qword ptr [rip + {buf} + 8], 1",
    "    mov rax, rdi",
    "    mov rdi, rsi",
    "    call rax",
    "    mov qword ptr [rip + {buf} + 8], 0",
    "    xor edx, edx",
    "    jmp 2f",
    ".global heap_try_landing",
    "heap_try_landing:",
    "    xor eax, eax",
    "    mov edx, 1",
    "2:  add rsp, 8",
    "    pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "    ret",
    buf = sym HEAP_JMPBUF,
);

#[repr(C)]
struct TryResult {
    value: u64,
    faulted: u64,
}

extern "C" {
    fn heap_try_call(f: extern "C" fn(u64) -> u64, arg: u64) -> TryResult;
    static heap_try_landing: u8;
}

/// Run `f(arg)`; if a guard fault is caught inside it, return the fault instead (the rest
/// of `f` does not run: it must not hold anything that needs dropping).
pub fn try_run(f: extern "C" fn(u64) -> u64, arg: u64) -> Result<u64, Fault> {
    // SAFETY: heap_try_call saves the callee-saved registers and RSP, calls `f`, and comes
    // back either normally or through the landing pad, where the hook restored RSP to the
    // saved value (the pad pops the saved registers): a setjmp/longjmp pair written in asm.
    let r = unsafe { heap_try_call(f, arg) };
    if r.faulted == 0 {
        return Ok(r.value);
    }
    // SAFETY: the hook wrote LAST before redirecting here; nothing else writes it.
    match unsafe { *LAST.0.get() } {
        Some(fault) => Err(fault),
        None => Ok(0),
    }
}

/// The #PF hook: a not-present fault in a guard page (overflow) or a freed allocation (use
/// after free) is reported to the host's fault log and, inside [`try_run`], resumed at the
/// landing pad. Other faults are left to the kernel.
pub fn hook(f: &mut TrapFrame, cr2: u64) -> bool {
    if f.error_code & 1 != 0 || BUSY.load(Ordering::Acquire) {
        return false;
    }
    // SAFETY: BUSY is clear, so no normal code holds the table (see the Sync impl).
    let t = unsafe { &mut *TABLE.0.get() };
    let Some((kind, rec)) = classify(t, cr2 as usize) else {
        return false;
    };
    t.faults += 1;
    let fault = Fault {
        kind,
        rec,
        cr2,
        error_code: f.error_code,
        rip: f.rip,
    };
    let armed = HEAP_JMPBUF[1].load(Ordering::SeqCst) != 0;
    crate::idt::report(14, f.error_code, cr2, f.rip, armed);
    if !armed {
        // Not recoverable: name it, then let the kernel stop the guest.
        let mut line = crate::console::Line::new();
        let _ = write!(line, "heapdebug.unrecovered={}", fault);
        record_in_fault(line.as_str());
        return false;
    }
    // SAFETY: see LastCell.
    unsafe { *LAST.0.get() = Some(fault) };
    HEAP_JMPBUF[1].store(0, Ordering::SeqCst);
    f.rip = core::ptr::addr_of!(heap_try_landing) as u64;
    f.rsp = HEAP_JMPBUF[0].load(Ordering::SeqCst);
    f.rax = 0;
    f.rdx = 1;
    true
}

/// A `Record` hypercall from the #PF handler (its own request block).
fn record_in_fault(line: &str) {
    let mut r = [memvisor_abi::Request::new(
        memvisor_abi::Call::Record,
        [line.as_ptr() as u64, line.len() as u64, 0, 0, 0],
    )];
    hc::batch_in_fault(&mut r);
}

/// Report a caught fault: a console line and a `heapdebug.fault.N=...` record.
pub fn report(n: usize, fault: &Fault) {
    println!("guest: heap-debug: caught {}", fault);
    let mut line = crate::console::Line::new();
    let _ = write!(line, "heapdebug.fault.{}={}", n, fault);
    hc::record(line.as_str());
}
