//! Hypercalls: build a request block in a static page, `out` its GPA to the hypercall port.
//!
//! The block lives in the kernel image's .bss, so its GPA is its GVA minus
//! [`KERNEL_VIRT_OFFSET`]. One vCPU, and hypercalls are not made from interrupt context while
//! another is in flight except by the #PF handler, which uses its own block.

use core::cell::UnsafeCell;
use memvisor_abi::{
    Batch, Call, Hypercall, MapFlags, MemStats, Prot, Request, Status, Zone, KERNEL_VIRT_OFFSET,
    MAX_BATCH, PORT_HYPERCALL,
};

/// A request block: header plus up to `N` requests.
#[repr(C, align(4096))]
pub struct Block<const N: usize> {
    /// The header the VMM reads `count` from and writes `completed` to.
    pub head: Batch,
    /// The requests.
    pub reqs: [Request; N],
}

/// A request block in a static.
pub struct StaticBlock<const N: usize>(UnsafeCell<Block<N>>);

// SAFETY: the guest runs on one vCPU; each block is used by one context (main code or the
// #PF handler), never concurrently.
unsafe impl<const N: usize> Sync for StaticBlock<N> {}

impl<const N: usize> Default for StaticBlock<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> StaticBlock<N> {
    /// An empty block.
    pub const fn new() -> Self {
        StaticBlock(UnsafeCell::new(Block {
            head: Batch {
                count: 0,
                completed: 0,
            },
            reqs: [Request {
                nr: 0,
                reserved: 0,
                args: [0; 5],
                status: 0,
                pad: 0,
                value: 0,
            }; N],
        }))
    }

    /// The block itself, for code that writes headers and requests by hand (e.g. a hostile
    /// guest's malformed blocks); volatile accesses only, from the block's one context.
    pub const fn as_ptr(&self) -> *mut Block<N> {
        self.0.get()
    }

    /// The block's GPA (it lives in the kernel image: GVA minus [`KERNEL_VIRT_OFFSET`]).
    pub fn gpa(&self) -> u64 {
        (self.0.get() as u64).wrapping_sub(KERNEL_VIRT_OFFSET)
    }

    /// Write the header (count 1) and `req` as request 0, for blocks the assembly rings itself.
    pub fn preset(&self, req: Request) {
        let p = self.0.get();
        // SAFETY: exclusive use at init time (see the Sync impl).
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*p).reqs[0]), req);
            core::ptr::write_volatile(
                core::ptr::addr_of_mut!((*p).head),
                Batch {
                    count: 1,
                    completed: 0,
                },
            );
        }
    }

    /// Run `reqs` (at most N, at most MAX_BATCH) in one exit; results are written back.
    /// Returns the host's `completed` (0 if it refused the block).
    #[inline]
    pub fn run(&self, reqs: &mut [Request]) -> u32 {
        let n = reqs.len().min(N).min(MAX_BATCH as usize);
        let p = self.0.get();
        // SAFETY: exclusive use of this block (see the Sync impl); volatile so the compiler
        // neither elides the stores before the `out` nor caches the host's writes after it.
        unsafe {
            for (i, r) in reqs.iter().take(n).enumerate() {
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*p).reqs[i]), *r);
            }
            core::ptr::write_volatile(
                core::ptr::addr_of_mut!((*p).head),
                Batch {
                    count: n as u32,
                    completed: 0,
                },
            );
            let gpa = (p as u64).wrapping_sub(KERNEL_VIRT_OFFSET) as u32;
            doorbell(gpa);
            for (i, r) in reqs.iter_mut().take(n).enumerate() {
                *r = core::ptr::read_volatile(core::ptr::addr_of!((*p).reqs[i]));
            }
            core::ptr::read_volatile(core::ptr::addr_of!((*p).head)).completed
        }
    }
}

/// Ring the VMM with a request block's GPA: `out` to the hypercall port in ring 0; from ring
/// 3 an 8-byte write to the MMIO doorbell (ring 3 cannot do port IO on a PVM host; see
/// `user.rs`).
#[inline(always)]
pub fn doorbell(gpa: u32) {
    // SAFETY: both paths only exit to the VMM, which reads the block at `gpa`; the doorbell
    // page is mapped by the host at DOORBELL_GVA (US=1, no RAM behind it).
    unsafe {
        if crate::user::cpl() == 0 {
            core::arch::asm!("out dx, eax", in("dx") PORT_HYPERCALL, in("eax") gpa,
                options(nostack, preserves_flags));
        } else {
            ring_mmio(gpa as u64);
        }
    }
}

/// Ring the VMM with any 64-bit value as the block's GPA through the MMIO doorbell (an
/// 8-byte write to [`memvisor_abi::DOORBELL_GVA`]), from either ring: the VMM serves the
/// block there or, for a GPA it refuses, counts a bad block and resumes. Nothing in guest
/// memory is written by the instruction itself.
#[inline(always)]
pub fn ring_mmio(gpa: u64) {
    // SAFETY: a write to the doorbell page, which the host maps US=1 with no RAM behind it:
    // it exits to the VMM, which serves (or refuses) the block at `gpa` and resumes us.
    unsafe {
        core::arch::asm!("mov qword ptr [{db}], {v}", db = in(reg) memvisor_abi::DOORBELL_GVA,
            v = in(reg) gpa, options(nostack, preserves_flags));
    }
}

/// Requests the main block holds: the most [`batch`] sends in one exit (a heap's page pool
/// unmaps up to this many runs at once, so that KVM's shadow tables are flushed once).
pub const MAIN_BLOCK_REQUESTS: usize = 256;

static MAIN: StaticBlock<MAIN_BLOCK_REQUESTS> = StaticBlock::new();
static FAULT: StaticBlock<4> = StaticBlock::new();

/// GPA of the main request block (for tests that account for the guest's own writes).
pub fn main_block_gpa() -> u64 {
    MAIN.gpa()
}

/// Run a batch from normal (non-handler) context.
#[inline]
pub fn batch(reqs: &mut [Request]) {
    MAIN.run(reqs);
}

/// Run a batch from the #PF handler.
#[inline]
pub fn batch_in_fault(reqs: &mut [Request]) {
    FAULT.run(reqs);
}

/// A single call; returns `Ok(value)` or the error status.
///
/// # Errors
/// The host's error [`Status`] for the call (see the ABI docs of each `Call`).
#[inline]
pub fn call(c: Call, args: [u64; 5]) -> Result<u64, Status> {
    let mut r = [Request::new(c, args)];
    batch(&mut r);
    result(&r[0])
}

/// Status of a completed request.
///
/// # Errors
/// The request's error status.
#[inline]
pub fn result(r: &Request) -> Result<u64, Status> {
    match Status::from_i32(r.status) {
        Some(Status::Ok) => Ok(r.value),
        Some(s) => Err(s),
        None => Err(Status::Inval),
    }
}

/// Exit the VM with `code`.
pub fn exit(code: u32) -> ! {
    let _ = call(Call::Exit, [code as u64, 0, 0, 0, 0]);
    loop {
        x86_64::instructions::hlt();
    }
}

/// Report a panic message and stop.
pub fn panic_str(msg: &str) -> ! {
    let _ = call(
        Call::Panic,
        [msg.as_ptr() as u64, msg.len() as u64, 0, 0, 0],
    );
    loop {
        x86_64::instructions::hlt();
    }
}

/// mmap: `len` bytes, protection, zone, flags → GVA.
///
/// # Errors
/// The host's error [`Status`] for the call (see the ABI docs of each `Call`).
pub fn mmap(len: u64, prot: u64, zone: u64, flags: u64) -> Result<u64, Status> {
    call(Call::Mmap, [len, prot, zone, flags, 0])
}

/// munmap, then flush the TLB for the range (the guest's job, see the ABI docs).
///
/// # Errors
/// The host's error [`Status`] for the call (see the ABI docs of each `Call`).
pub fn munmap(gva: u64, len: u64) -> Result<u64, Status> {
    let r = call(Call::Munmap, [gva, len, 0, 0, 0]);
    flush_range(gva, len);
    r
}

/// mprotect, then flush the TLB for the range.
///
/// # Errors
/// The host's error [`Status`] for the call (see the ABI docs of each `Call`).
pub fn mprotect(gva: u64, len: u64, prot: u64) -> Result<u64, Status> {
    let r = call(Call::Mprotect, [gva, len, prot, 0, 0]);
    flush_range(gva, len);
    r
}

/// Host translation of a GVA → GPA.
///
/// # Errors
/// The host's error [`Status`] for the call (see the ABI docs of each `Call`).
pub fn translate(gva: u64) -> Result<u64, Status> {
    call(Call::Translate, [gva, 0, 0, 0, 0])
}

/// Send a `key=value` record line for the host's report.
pub fn record(line: &str) {
    let _ = call(
        Call::Record,
        [line.as_ptr() as u64, line.len() as u64, 0, 0, 0],
    );
}

/// invlpg each page of a range, or reload CR3 for more than 64 pages. From ring 3 this asks
/// the kernel (`int 0x81`).
pub fn flush_range(gva: u64, len: u64) {
    if crate::user::cpl() != 0 {
        crate::user::flush_from_user(gva, len);
        return;
    }
    let pages = len.div_ceil(4096);
    if pages > 64 {
        x86_64::instructions::tlb::flush_all();
    } else {
        for i in 0..pages {
            x86_64::instructions::tlb::flush(x86_64::VirtAddr::new_truncate(gva + i * 4096));
        }
    }
}

/// A typed hypercall (encoded with [`Hypercall::encode`], the inverse of the host's decoder).
///
/// # Errors
/// The host's error [`Status`] for the call (see the ABI docs of each `Call`).
#[inline]
pub fn hypercall(h: Hypercall) -> Result<u64, Status> {
    let mut r = [h.encode()];
    batch(&mut r);
    result(&r[0])
}

/// Typed `Mmap`: `len` bytes (multiple of 4 KiB) with `prot` from `zone` → GVA.
///
/// # Errors
/// The host's error [`Status`] for the call (see the ABI docs of each `Call`).
pub fn map(len: u64, prot: Prot, zone: Zone, flags: MapFlags) -> Result<u64, Status> {
    hypercall(Hypercall::Mmap {
        len,
        prot,
        zone,
        flags,
        addr: 0,
    })
}

/// Typed `Mmap` at exactly `gva` ([`MapFlags::FIXED`] is added to `flags`): `Perm` outside
/// the mmap window, `Exists` over a region or guard page the guest has, `Inval` misaligned.
///
/// # Errors
/// The host's error [`Status`] for the call (see the ABI docs of each `Call`).
pub fn map_at(gva: u64, len: u64, prot: Prot, zone: Zone, flags: MapFlags) -> Result<u64, Status> {
    hypercall(Hypercall::Mmap {
        len,
        prot,
        zone,
        flags: flags | MapFlags::FIXED,
        addr: gva,
    })
}

/// Typed `Mprotect`, then a TLB flush of the range.
///
/// # Errors
/// The host's error [`Status`] for the call (see the ABI docs of each `Call`).
pub fn protect(gva: u64, len: u64, prot: Prot) -> Result<u64, Status> {
    let r = hypercall(Hypercall::Mprotect { gva, len, prot });
    flush_range(gva, len);
    r
}

/// `Stats`: the host's frame and mapping counters.
///
/// # Errors
/// The host's error [`Status`] for the call (see the ABI docs of each `Call`).
pub fn stats() -> Result<MemStats, Status> {
    let mut s = MemStats::default();
    hypercall(Hypercall::Stats {
        gva: &mut s as *mut MemStats as u64,
    })?;
    // SAFETY: the host wrote the struct through its GVA; read it back without the compiler
    // assuming it unchanged.
    Ok(unsafe { core::ptr::read_volatile(&s) })
}
