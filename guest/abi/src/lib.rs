//! The memvisor hypercall ABI, shared by the host VMM and the guest kernel (no_std).
//!
//! # Transport
//! The guest builds a request block ([`Batch`] header followed by `count` [`Request`]s, all
//! 8-byte aligned) in its own memory and writes the block's **guest physical address** (GPA,
//! below 4 GiB) with a 32-bit `out` to [`PORT_HYPERCALL`]. The VMM gets a `KVM_EXIT_IO`,
//! validates the block (it must lie wholly inside guest RAM), executes the requests in order,
//! writes each one's `status` and `value`, sets [`Batch::completed`], and resumes the vCPU.
//! One exit serves a whole batch: batching amortises the ~8 µs exit cost on PVM hosts.
//!
//! Byte output goes to [`PORT_SERIAL`] (COM1 data register, one byte per `out`); the hypercall
//! [`Call::ConsoleWrite`] writes a whole buffer in one exit and is what the guest normally uses.
//! [`PORT_NULL`] is a port the VMM counts and ignores: the floor for an exit round trip.
//!
//! # TLB
//! After `munmap` or `mprotect` return, the **guest** flushes its TLB (invlpg per page, or a
//! CR3 reload for large ranges) before relying on the change: the host edits page tables but
//! cannot flush a vCPU's TLB from outside (Intel SDM Vol. 3A §4.10.4).
//!
//! Sources: design after Xen PV `HYPERVISOR_mmu_update` batches and uhyve's port-IO hypercalls.
#![no_std]

pub mod typed;
pub mod ucall;
pub use typed::{Hypercall, MapFlags, Prot, Zone};

pub mod layout;
// The layout's names this crate always had (defined in `layout`).
pub use layout::{
    DOORBELL_GPA, DOORBELL_GVA, KERNEL_PHYS_BASE, KERNEL_VIRT_OFFSET, NULL_DOORBELL_GPA,
};

/// Port for hypercalls: 32-bit `out` of the request block's GPA.
pub const PORT_HYPERCALL: u16 = 0x0510;

/// Port the VMM ignores (only counts): a bare exit, the floor for hypercall cost.
pub const PORT_NULL: u16 = 0x0511;
/// COM1 data register: the guest may write console bytes here one at a time.
pub const PORT_SERIAL: u16 = 0x03f8;
/// Host-assisted demand paging: the guest's #PF entry does `out PORT_PF_ASSIST, al` for a
/// not-present fault, changing no register. The VMM reads CR2 (`KVM_GET_SREGS`) and the
/// exception frame at RSP (error code, RIP) itself; if CR2 lies in a lazy region and is not
/// backed, it backs the page and resumes the vCPU at the kernel symbol
/// [`PF_ASSIST_DONE_SYMBOL`] (which drops the error code and `iretq`s); otherwise the guest
/// continues after the `out` with its own #PF path. Below 0x100 so that the one-instruction
/// `out imm8, al` form can be used.
pub const PORT_PF_ASSIST: u16 = 0x00ee;
/// ELF symbol of the kernel's resume point after an assisted demand-paging fault (see
/// [`PORT_PF_ASSIST`]); without it in the kernel's symbol table the VMM does not assist.
pub const PF_ASSIST_DONE_SYMBOL: &str = "memvisor_pf_assist_done";
/// ELF symbols bounding the kernel's fault-matrix probe code (page-aligned start): the
/// `fault-matrix` host maps those pages a second time, supervisor-only (US=0), at
/// [`layout::MATRIX_TRAMP_GVA`] for the passes with CR4.SMEP / SMAP set.
pub const MATRIX_TRAMP_SYMBOLS: [&str; 2] =
    ["memvisor_matrix_tramp_start", "memvisor_matrix_tramp_end"];

/// Magic value in [`BootInfo::magic`] (`"MEMVISOR"` little-endian-ish).
pub const BOOT_MAGIC: u64 = 0x524f_5349_564d_454d;
/// ABI version in [`BootInfo::version`].
pub const ABI_VERSION: u32 = 2;
/// Maximum number of e820 entries in [`BootInfo`].
pub const MAX_E820: usize = 16;
/// Maximum number of requests in one [`Batch`].
pub const MAX_BATCH: u32 = 512;
/// Maximum length in bytes of one console write (longer writes are rejected with `Inval`).
pub const MAX_CONSOLE_WRITE: u64 = 64 * 1024;

/// Hypercall numbers ([`Request::nr`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Does nothing; `value = 0`. For measuring the hypercall floor.
    Nop = 0,
    /// `args[0]` = GVA of UTF-8 bytes, `args[1]` = length in bytes (≤ [`MAX_CONSOLE_WRITE`]).
    ConsoleWrite = 1,
    /// `args[0]` = exit code (low 32 bits). The VMM stops after this request.
    Exit = 2,
    /// `args[0]` = length in bytes (multiple of 4 KiB, > 0), `args[1]` = [`prot`] bits,
    /// `args[2]` = [`zone`] number, `args[3]` = [`map`] flags, `args[4]` = the GVA for
    /// [`map::FIXED`] (else 0). `value` = GVA of the region.
    Mmap = 3,
    /// `args[0]` = GVA (4 KiB aligned), `args[1]` = length in bytes (multiple of 4 KiB).
    /// The range must lie inside one region the guest got from `Mmap`.
    Munmap = 4,
    /// `args[0]` = GVA, `args[1]` = length in bytes, `args[2]` = new [`prot`] bits.
    Mprotect = 5,
    /// `args[0]` = GVA. `value` = GPA of that byte; `args` are unchanged. `NotMapped` if the
    /// page is not present.
    Translate = 6,
    /// `args[0]` = GVA of a [`MemStats`] the host fills in.
    Stats = 7,
    /// Report a fault the guest saw: `args` = vector, error code, CR2, RIP, resolved (0/1).
    FaultReport = 8,
    /// Demand paging: `args[0]` = faulting GVA (CR2), `args[1]` = #PF error code, `args[2]` =
    /// RIP. The host logs the fault. If the page
    /// lies in a lazy region and is not yet backed, the host backs and maps it (`value` = 1);
    /// otherwise `NotMapped` (not a lazy page) or `Perm` (present: a protection fault).
    LazyFault = 9,
    /// `args[0]` = GVA of a UTF-8 panic message, `args[1]` = length. The VMM stops and fails.
    Panic = 10,
    /// `args[0]` = GVA of a UTF-8 line of scenario output, `args[1]` = length: a `key=value`
    /// line the host parses into the report (e.g. `heap.events=123`).
    Record = 11,
    /// Stage-2 test control (the `stage2` scenario): `args[0]` = a [`stage2`] op,
    /// `args[1]` = its operand. `value` = op-specific result.
    Stage2 = 12,
    /// A ucall of the guest SDK: `args[0]` = GVA of a [`ucall::Record`], `args[1]` = its size
    /// ([`ucall::RECORD_BYTES`]). `Sync` resumes (at once in a built-in scenario; at the next
    /// `Vm::run` in a step-wise test); `Assert`, `Done` and `Fault` end the run. Requests after
    /// a ucall in the same batch are `Skipped`: send a ucall alone.
    Ucall = 13,
    /// Fault matrix pass boundary (the `fault-matrix` scenario): `args[0]` = index of the
    /// pass that just ended (or [`matrix::NO_PASS`]), `args[1]` = index of the pass about to
    /// start (or [`matrix::NO_PASS`]). The host snapshots the test leaves for the ended pass,
    /// clears A/D in every test entry and flushes KVM's shadow before the guest runs again.
    MatrixSync = 16,
}

impl Call {
    /// Decode a call number; `None` for an unknown number.
    pub const fn from_u32(nr: u32) -> Option<Call> {
        Some(match nr {
            0 => Call::Nop,
            1 => Call::ConsoleWrite,
            2 => Call::Exit,
            3 => Call::Mmap,
            4 => Call::Munmap,
            5 => Call::Mprotect,
            6 => Call::Translate,
            7 => Call::Stats,
            8 => Call::FaultReport,
            9 => Call::LazyFault,
            10 => Call::Panic,
            11 => Call::Record,
            12 => Call::Stage2,
            13 => Call::Ucall,
            16 => Call::MatrixSync,
            _ => return None,
        })
    }

    /// Lower-case name, as used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Call::Nop => "nop",
            Call::ConsoleWrite => "console_write",
            Call::Exit => "exit",
            Call::Mmap => "mmap",
            Call::Munmap => "munmap",
            Call::Mprotect => "mprotect",
            Call::Translate => "translate",
            Call::Stats => "stats",
            Call::FaultReport => "fault_report",
            Call::LazyFault => "lazy_fault",
            Call::Panic => "panic",
            Call::Record => "record",
            Call::Stage2 => "stage2",
            Call::Ucall => "ucall",
            Call::MatrixSync => "matrix_sync",
        }
    }
}

/// Status codes in [`Request::status`]: 0 is success, errors are negative.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// Unknown call number.
    NoSys = -1,
    /// Malformed argument: misaligned, zero or overflowing length, non-canonical GVA,
    /// unknown flag bits.
    Inval = -2,
    /// Out of frames (in the zone and its fallbacks) or out of guest-virtual space.
    NoMem = -3,
    /// A pointer argument (request block, buffer) is not inside guest RAM / not mapped.
    Fault = -4,
    /// Not permitted: the range is not owned by the guest (kernel image, stack guard, page
    /// tables), or the protection asked for is writable and executable (W^X).
    Perm = -5,
    /// The range is not (wholly) mapped / not inside one mmap region.
    NotMapped = -6,
    /// The zone number does not name a zone present in this guest.
    NoZone = -7,
    /// The request was not executed because an earlier request in the batch ended the run.
    Skipped = -8,
    /// A fixed-address `Mmap` ([`map::FIXED`]) overlaps a region or guard page the guest
    /// already has.
    Exists = -9,
}

impl Status {
    /// Decode a status value (unknown values map to `None`).
    pub const fn from_i32(v: i32) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            -1 => Status::NoSys,
            -2 => Status::Inval,
            -3 => Status::NoMem,
            -4 => Status::Fault,
            -5 => Status::Perm,
            -6 => Status::NotMapped,
            -7 => Status::NoZone,
            -8 => Status::Skipped,
            -9 => Status::Exists,
            _ => return None,
        })
    }

    /// Lower-case name, as used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NoSys => "nosys",
            Status::Inval => "inval",
            Status::NoMem => "nomem",
            Status::Fault => "fault",
            Status::Perm => "perm",
            Status::NotMapped => "not_mapped",
            Status::NoZone => "no_zone",
            Status::Skipped => "skipped",
            Status::Exists => "exists",
        }
    }
}

/// Protection bits for `Mmap` / `Mprotect` (`args[1]` / `args[2]`).
pub mod prot {
    /// Readable (always implied for a mapped page on x86).
    pub const READ: u64 = 1;
    /// Writable (PTE.RW).
    pub const WRITE: u64 = 2;
    /// Executable (PTE.NX clear). WRITE | EXEC together is refused (W^X).
    pub const EXEC: u64 = 4;
    /// Accessible from CPL 3 (PTE.US).
    pub const USER: u64 = 8;
    /// Not accessible at all (a PROT_NONE page stays reserved but not present).
    pub const NONE: u64 = 0;
    /// All defined bits.
    pub const ALL: u64 = READ | WRITE | EXEC | USER;
}

/// Flags for `Mmap` (`args[3]`).
pub mod map {
    /// Back and map every page now.
    pub const POPULATE: u64 = 1;
    /// Back pages on first touch: the guest's #PF handler sends `LazyFault`.
    pub const LAZY: u64 = 2;
    /// Back with 2 MiB pages where the length allows (only with POPULATE).
    pub const HUGE: u64 = 4;
    /// Map at exactly the GVA in `args[4]` (4 KiB aligned, 2 MiB with HUGE), never moving
    /// or replacing anything: the region and its guard page must lie in the mmap window
    /// (else `Perm`) and overlap no region or guard page (else `Exists`). Without FIXED,
    /// `args[4]` must be 0 (else `Inval`).
    pub const FIXED: u64 = 8;
    /// All defined bits.
    pub const ALL: u64 = POPULATE | LAZY | HUGE | FIXED;
}

/// Zone numbers for `Mmap` (`args[2]`).
pub mod zone {
    /// Any zone: Normal, falling back to DMA32 then DMA.
    pub const ANY: u64 = 0;
    /// DMA: frames below 16 MiB.
    pub const DMA: u64 = 1;
    /// DMA32: frames in [16 MiB, 4 GiB).
    pub const DMA32: u64 = 2;
    /// Normal: frames at or above 4 GiB.
    pub const NORMAL: u64 = 3;
}

/// Header of a request block; `count` [`Request`]s follow it directly.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    /// Number of requests that follow (1 ..= [`MAX_BATCH`]).
    pub count: u32,
    /// Set by the host: how many requests it executed.
    pub completed: u32,
}

/// One hypercall request (64 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    /// A [`Call`] number.
    pub nr: u32,
    /// Reserved, must be zero.
    pub reserved: u32,
    /// Arguments; meaning per [`Call`].
    pub args: [u64; 5],
    /// Set by the host: a [`Status`] value.
    pub status: i32,
    /// Reserved, written as zero by the host.
    pub pad: u32,
    /// Set by the host: the result value (e.g. the GVA of an mmap).
    pub value: u64,
}

impl Request {
    /// A request for `call` with `args`.
    pub const fn new(call: Call, args: [u64; 5]) -> Self {
        Request {
            nr: call as u32,
            reserved: 0,
            args,
            status: 0,
            pad: 0,
            value: 0,
        }
    }
}

/// e820 entry type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 entry type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One entry of the e820 memory map (ACPI "Address Range Descriptor").
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct E820Entry {
    /// First GPA of the range.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
    /// Zero.
    pub pad: u32,
}

/// Boot information the host writes into guest RAM; its GVA (in the direct map) is in `rdi`
/// when the guest's `_start` runs.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`].
    pub version: u32,
    /// Number of valid entries in `e820`.
    pub e820_count: u32,
    /// The e820 map.
    pub e820: [E820Entry; MAX_E820],
    /// Guest RAM in bytes (sum of the RAM entries).
    pub ram_bytes: u64,
    /// GVA where GPA 0 appears in the direct map.
    pub direct_map_base: u64,
    /// GPA of the PML4 (also in CR3).
    pub pml4_gpa: u64,
    /// First and one-past-last GVA of the window the host hands out `Mmap` ranges from.
    pub heap_window: [u64; 2],
    /// GVA range of the boot stack `[bottom, top)`; the page below `bottom` is the guard.
    pub stack: [u64; 2],
    /// GVA range of the #DF IST stack `[bottom, top)`.
    pub df_stack: [u64; 2],
    /// GVA range of the ring-3 stack `[bottom, top)` (US=1; the page below is a guard).
    pub user_stack: [u64; 2],
    /// TSC frequency in kHz (from CPUID 0x15/0x16 or KVM), 0 if unknown.
    pub tsc_khz: u64,
    /// Feature bits, see [`feature`].
    pub features: u64,
    /// Which scenario to run: [`scenario::id`] of its name.
    pub scenario: u32,
    /// Flags, see [`flags`].
    pub flags: u32,
    /// Scenario argument: e.g. a trace's GVA.
    pub arg: [u64; 4],
}

/// Bits of [`BootInfo::features`] (from the guest CPUID the host set).
pub mod feature {
    /// EFER.NXE is set and PTE.NX is honoured.
    pub const NX: u64 = 1;
    /// 1 GiB pages (CPUID 0x8000_0001 EDX.Page1GB).
    pub const PAGE_1G: u64 = 2;
    /// SMEP.
    pub const SMEP: u64 = 4;
    /// SMAP.
    pub const SMAP: u64 = 8;
    /// PKU.
    pub const PKU: u64 = 16;
    /// LA57.
    pub const LA57: u64 = 32;
}

/// Bits of [`BootInfo::flags`].
pub mod flags {
    /// Heap debugging with guard pages (`--heap-debug guard`).
    pub const HEAP_DEBUG_GUARD: u32 = 1;
    /// Quick mode (fewer iterations) for benchmarks and tests.
    pub const QUICK: u32 = 2;
}

/// The `stage2` scenario's guest-physical test layout and control ops ([`Call::Stage2`]).
///
/// Four 64 KiB regions at offsets from the window's first GPA, which the host chooses from the
/// CPU's MAXPHYADDR (`memvisor::layout::PhysLayout`: 1 TiB = [`stage2::GPA_BASE`] at MAXPHYADDR 41 and
/// more, 2^MAXPHYADDR / 2 below) and passes to the guest in `BootInfo::arg[1]`. The host maps
/// the window at `GVA_BASE + offset` (US, RW, NX) whatever is (or is not) behind it.
pub mod stage2 {
    /// First GPA of the test regions at MAXPHYADDR 41 and more (1 TiB; defined in
    /// [`crate::layout`]).
    pub use crate::layout::STAGE2_GPA_BASE as GPA_BASE;
    /// GVA where the window's first GPA is mapped (defined in [`crate::layout`]).
    pub use crate::layout::STAGE2_GVA_BASE as GVA_BASE;
    /// Bytes in each region.
    pub const REGION: u64 = 64 << 10;
    /// Offset of the region with no memslot: every access exits as KVM_EXIT_MMIO.
    pub const UNBACKED_OFF: u64 = 0;
    /// Offset of a KVM_MEM_READONLY memslot filled by the host with byte `i & 0xff` at offset
    /// `i`.
    pub const READONLY_OFF: u64 = 1 << 20;
    /// Offset of the range declared lazy: the first access to a page makes the host add a
    /// memslot for it.
    pub const LAZY_OFF: u64 = 2 << 20;
    /// Offset of a memslot the guest can have removed and added back (op REMOVE / ADD).
    pub const REMOVABLE_OFF: u64 = 3 << 20;
    /// [`UNBACKED_OFF`] in the window at [`GPA_BASE`].
    pub const UNBACKED: u64 = GPA_BASE + UNBACKED_OFF;
    /// [`READONLY_OFF`] in the window at [`GPA_BASE`].
    pub const READONLY: u64 = GPA_BASE + READONLY_OFF;
    /// [`LAZY_OFF`] in the window at [`GPA_BASE`].
    pub const LAZY: u64 = GPA_BASE + LAZY_OFF;
    /// [`REMOVABLE_OFF`] in the window at [`GPA_BASE`].
    pub const REMOVABLE: u64 = GPA_BASE + REMOVABLE_OFF;
    /// Op: remove the REMOVABLE slot (its contents are kept by the host).
    pub const OP_REMOVE: u64 = 0;
    /// Op: add the REMOVABLE slot back.
    pub const OP_ADD: u64 = 1;
    /// Op: start dirty logging on guest RAM (clears the log).
    pub const OP_DIRTY_START: u64 = 2;
    /// Op: read (and clear) the dirty log; the host records it in its report. `value` = number
    /// of dirty pages.
    pub const OP_DIRTY_READ: u64 = 3;
    /// Op: is KVM_MEM_READONLY supported? `value` = 1 or 0.
    pub const OP_READONLY_SUPPORTED: u64 = 4;
}

/// The guest heaps a trace replay can run on, by id (`memvisor replay --heap NAME`; the id
/// is what the host passes in `BootInfo::arg[2]` and the bit of a heap mask): our page
/// families, MeMS and the memvisor heap, then the peer allocators.
pub const HEAPS: [&str; 8] = [
    "page-family",
    "mems",
    "memvisor",
    "talc",
    "linked-list",
    "buddy",
    "rlsf",
    "dlmalloc",
];

/// Scenarios are named, not numbered: [`BootInfo::scenario`] holds [`scenario::id`] of the
/// name (`"demo"`, `"fault-matrix"`, ...). The guest kernel's table is generated from its
/// `src/scenarios/*.rs` files (one file a scenario) and the host's from the same files, so no
/// number table exists to keep in step.
pub mod scenario {
    /// The id of a scenario name: its 32-bit FNV-1a hash (the build scripts refuse two names
    /// with one id).
    pub const fn id(name: &str) -> u32 {
        let b = name.as_bytes();
        let mut h: u32 = 0x811c_9dc5;
        let mut i = 0;
        while i < b.len() {
            h ^= b[i] as u32;
            h = h.wrapping_mul(0x0100_0193);
            i += 1;
        }
        h
    }

    /// A guest built on the SDK's entry macro (a user's test guest) ignores the scenario;
    /// `memvisor::Vm` writes this id (of the name `"sdk"`).
    pub const SDK: u32 = id("sdk");
}

/// The fault-matrix scenario's shared layout: the host builds the test page tables and a
/// [`matrix::Plan`] of passes; each pass probes every record's VA once with one access at one CPL
/// in one mode and the guest's #PF handler fills in the record.
pub mod matrix {
    /// [`Plan::magic`].
    pub const PLAN_MAGIC: u64 = 0x5849_5254_414d_4650; // "PFMATRIX"
    /// Most passes in a plan.
    pub const MAX_PASSES: usize = 256;
    /// "No pass" in `MatrixSync` arguments.
    pub const NO_PASS: u64 = u64::MAX;
    /// [`Pass::access`]: a 1-byte read.
    pub const ACCESS_READ: u32 = 0;
    /// [`Pass::access`]: a 1-byte write (of 0xC3, the byte already there).
    pub const ACCESS_WRITE: u32 = 1;
    /// [`Pass::access`]: an instruction fetch (`call` to the VA, whose byte is `ret`).
    pub const ACCESS_EXEC: u32 = 2;
    /// [`Pass::access`]: an implicit supervisor-mode read (SDM Vol. 3A §4.6.1) of the 8-byte
    /// descriptor at the VA: `mov es` of an LDT selector, with LDTR based at the VA's
    /// 64 KiB-aligned base (selector = `(va & 0xffff) | 7`; the VA is 8-byte aligned).
    pub const ACCESS_DESC: u32 = 3;
    /// [`Pass::mode`]: CR0.WP = 1.
    pub const MODE_WP: u32 = 1;
    /// [`Pass::mode`]: IA32_EFER.NXE = 1.
    pub const MODE_NXE: u32 = 2;
    /// [`Pass::mode`]: CR4.SMEP = 1.
    pub const MODE_SMEP: u32 = 4;
    /// [`Pass::mode`]: CR4.SMAP = 1 (RFLAGS.AC = 0 for the probes unless `MODE_AC`).
    pub const MODE_SMAP: u32 = 8;
    /// [`Pass::mode`]: CR4.PKE = 1 and PKRU = [`Pass::pkru`].
    pub const MODE_PKE: u32 = 16;
    /// [`Pass::mode`]: RFLAGS.AC = 1 for CPL 0 probes (with `MODE_SMAP`).
    pub const MODE_AC: u32 = 32;
    /// Bytes of one record: `[va, cr2, error_code]` (u64 each).
    pub const RECORD_BYTES: u64 = 24;
    /// A record's `error_code` before the probe (and after it, if it did not fault).
    pub const NOT_FAULTED: u64 = u64::MAX;

    /// One pass: `count` records at `records`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Pass {
        /// `ACCESS_*`.
        pub access: u32,
        /// 0 or 3.
        pub cpl: u32,
        /// `MODE_*` bits.
        pub mode: u32,
        /// PKRU value when `MODE_PKE` is set.
        pub pkru: u32,
        /// GVA of the first record.
        pub records: u64,
        /// Number of records.
        pub count: u64,
    }

    /// The passes the guest runs, in order.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct Plan {
        /// [`PLAN_MAGIC`].
        pub magic: u64,
        /// Valid entries of `pass`.
        pub passes: u64,
        /// The passes.
        pub pass: [Pass; MAX_PASSES],
    }
}

/// Memory statistics the host writes for `Stats`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Guest RAM frames (4 KiB) in all zones.
    pub total_frames: u64,
    /// Free frames.
    pub free_frames: u64,
    /// Frames mapped for the guest by `Mmap` (data pages).
    pub mapped_frames: u64,
    /// Frames holding page tables.
    pub table_frames: u64,
    /// Live mmap regions.
    pub regions: u64,
    /// Lazy faults served.
    pub lazy_faults: u64,
}

// Each type below is repr(C), made only of integers (and arrays of repr(C) integer structs),
// with no padding bytes the compiler could leave uninitialised (fields are laid out to natural
// alignment with explicit pad fields), so every byte pattern is a valid value.
#[cfg(feature = "host")]
mod host_impls {
    use super::*;
    // SAFETY: repr(C) integers only, no implicit padding (see above).
    unsafe impl vm_memory::ByteValued for Batch {}
    // SAFETY: repr(C) integers only, no implicit padding (see above).
    unsafe impl vm_memory::ByteValued for Request {}
    // SAFETY: repr(C) integers only, no implicit padding (see above).
    unsafe impl vm_memory::ByteValued for E820Entry {}
    // SAFETY: repr(C) integers only, no implicit padding (see above).
    unsafe impl vm_memory::ByteValued for BootInfo {}
    // SAFETY: repr(C) integers only, no implicit padding (see above).
    unsafe impl vm_memory::ByteValued for MemStats {}
    // SAFETY: repr(C) integers only, no implicit padding (see above).
    unsafe impl vm_memory::ByteValued for matrix::Pass {}
    // SAFETY: repr(C) integers only, no implicit padding (see above).
    unsafe impl vm_memory::ByteValued for matrix::Plan {}
    // SAFETY: repr(C) integers only, no implicit padding (see above).
    unsafe impl vm_memory::ByteValued for ucall::Record {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layout_is_stable() {
        assert_eq!(size_of::<Batch>(), 8);
        assert_eq!(size_of::<Request>(), 64);
        assert_eq!(align_of::<Request>(), 8);
        assert_eq!(size_of::<E820Entry>(), 24);
        assert_eq!(size_of::<MemStats>(), 48);
        // BootInfo has no implicit padding: the sum of its fields' sizes.
        assert_eq!(
            size_of::<BootInfo>(),
            8 + 4 + 4 + 24 * MAX_E820 + 8 * 3 + 16 * 4 + 8 * 2 + 4 * 2 + 8 * 4
        );
    }

    #[test]
    fn call_and_status_round_trip() {
        for nr in 0..32 {
            if let Some(c) = Call::from_u32(nr) {
                assert_eq!(c as u32, nr);
            }
        }
        assert_eq!(Call::from_u32(14), None);
        for v in -8..=0 {
            assert_eq!(Status::from_i32(v).map(|s| s as i32), Some(v));
        }
        assert_eq!(Status::from_i32(1), None);
    }
}
