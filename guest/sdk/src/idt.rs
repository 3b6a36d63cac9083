//! GDT, TSS and IDT: entry stubs for vectors 0–31 (`global_asm!`), #DF on IST1, and the
//! Rust-side dispatcher. Intel SDM Vol. 3A §6.14 (64-bit IDT gates), §7.7 (64-bit TSS).

use core::cell::UnsafeCell;
use memvisor_abi::{BootInfo, Call, Request};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// Registers saved by the entry stubs, lowest address first. Handlers may edit them; the
/// stub restores them and `iretq`s.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// Vectors that push an error code: 8, 10–14, 17, 21, 29, 30 (SDM Vol. 3A Table 6-1).
macro_rules! stubs {
    ($($v:literal $err:literal),*) => {
        core::arch::global_asm!(
            $(
                concat!(".global isr_stub_", $v),
                concat!("isr_stub_", $v, ":"),
                concat!(".if ", $err, " == 0"),
                "    push 0",
                ".endif",
                concat!("    push ", $v),
                "    jmp isr_common",
            )*
            "isr_common:",
            "    push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
            "    push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
            "    mov rdi, rsp",
            "    cld",
            "    call {dispatch}",
            "    pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
            "    pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
            "    add rsp, 16",
            "    iretq",
            ".section .rodata",
            ".balign 8",
            ".global isr_stub_table",
            "isr_stub_table:",
            $( concat!("    .quad isr_stub_", $v), )*
            ".text",
            dispatch = sym dispatch,
        );
    };
}

stubs!(0 0, 1 0, 2 0, 3 0, 4 0, 5 0, 6 0, 7 0, 8 1, 9 0, 10 1, 11 1, 12 1, 13 1, 14 1, 15 0,
       16 0, 17 1, 18 0, 19 0, 20 0, 21 1, 22 0, 23 0, 24 0, 25 0, 26 0, 27 0, 28 0, 29 1, 30 1, 31 0);

extern "C" {
    static isr_stub_table: [u64; 32];
    fn pf_assist_entry();
}

/// GDT selector of the 64-bit kernel code segment.
pub const KERNEL_CS: u16 = 0x08;
/// GDT selector of the kernel data segment.
pub const KERNEL_DS: u16 = 0x10;
/// GDT selector of the 64-bit ring-3 code segment (RPL 0; OR in 3 to use it).
pub const USER_CS: u16 = 0x20;
/// GDT selector of the ring-3 data segment.
pub const USER_DS: u16 = 0x18;
/// GDT selector of the kernel's TSS (loaded in TR at boot).
pub const KERNEL_TSS: u16 = 0x28;
/// GDT selector of a second descriptor of the same TSS whose base [`load_tr_at`] sets (to a
/// second mapping of the TSS, e.g. a supervisor-only alias for CR4.SMAP tests).
pub const ALIAS_TSS: u16 = 0x38;
/// GDT selector of the LDT descriptor [`load_ldt`] sets (no LDT is loaded at boot).
pub const LDT: u16 = 0x48;
/// GDT entries (8 bytes each): null, 4 segments, 3 system descriptors of 16 bytes.
const GDT_ENTRIES: usize = 11;
/// Linear address of the GDT (its kernel mapping), set by [`init`].
static GDT_BASE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
#[repr(C, align(16))]
struct Idt([[u64; 2]; 256]);

/// The TSS followed by its I/O permission bitmap (SDM Vol. 3A §20.5.2): ring 3 may use the
/// hypercall, null and COM1 ports (bit clear = allowed), no others. Needed because a PVM host
/// keeps RFLAGS.IOPL at 0 in ring 3.
#[repr(C)]
struct TssWithIoMap {
    tss: TaskStateSegment,
    iomap: [u8; IOMAP_BYTES],
}

/// Bitmap bytes: ports 0..=0x517 plus the required trailing 0xff byte.
const IOMAP_BYTES: usize = 0x518 / 8 + 1;

const fn iomap() -> [u8; IOMAP_BYTES] {
    let mut m = [0xffu8; IOMAP_BYTES];
    let ports = [
        memvisor_abi::PORT_HYPERCALL,
        memvisor_abi::PORT_NULL,
        memvisor_abi::PORT_SERIAL,
    ];
    let mut i = 0;
    while i < ports.len() {
        let p = ports[i] as usize;
        m[p / 8] &= !(1 << (p % 8));
        i += 1;
    }
    m
}

struct Tables {
    idt: Idt,
    gdt: GlobalDescriptorTable<GDT_ENTRIES>,
    tss: TssWithIoMap,
}

struct TablesCell(UnsafeCell<Tables>);
// SAFETY: written once in init() on the single vCPU before interrupts can use them.
unsafe impl Sync for TablesCell {}

static TABLES: TablesCell = TablesCell(UnsafeCell::new(Tables {
    idt: Idt([[0; 2]; 256]),
    gdt: GlobalDescriptorTable::empty(),
    tss: TssWithIoMap {
        tss: TaskStateSegment::new(),
        iomap: iomap(),
    },
}));

/// Encode a 64-bit interrupt gate (type 0xE, present) to `handler`, using IST `ist`, callable
/// by `int n` from privilege level `dpl`.
fn gate(handler: u64, selector: u16, ist: u8, dpl: u8) -> [u64; 2] {
    let low = (handler & 0xffff)
        | ((selector as u64) << 16)
        | (((ist & 7) as u64) << 32)
        | ((0x8e_u64 | ((dpl as u64 & 3) << 5)) << 40)
        | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

/// Load our GDT (code, data, TSS with IST1 = the #DF stack) and an IDT for vectors 0–31.
pub fn init(info: &BootInfo) {
    // SAFETY: single vCPU, called once at boot before any exception is expected; the tables
    // live in a static, so the pointers loaded into GDTR/IDTR/TR stay valid forever.
    unsafe {
        let t = &mut *TABLES.0.get();
        t.tss.tss.interrupt_stack_table[0] = VirtAddr::new_truncate(info.df_stack[1]);
        // Order matters for SYSRET-style layouts: kernel code 0x08, kernel data 0x10,
        // user data 0x18, user code 0x20, TSS 0x28.
        let code = t.gdt.append(Descriptor::kernel_code_segment());
        let data = t.gdt.append(Descriptor::kernel_data_segment());
        let udata = t.gdt.append(Descriptor::user_data_segment());
        let ucode = t.gdt.append(Descriptor::user_code_segment());
        debug_assert!(udata.0 & !3 == USER_DS && ucode.0 & !3 == USER_CS);
        let tss_desc = match Descriptor::tss_segment_with_iomap(
            &*core::ptr::addr_of!(t.tss.tss),
            &*core::ptr::addr_of!(t.tss.iomap),
        ) {
            Ok(d) => d,
            Err(_) => crate::hc::panic_str("TSS I/O bitmap rejected"),
        };
        let tss = t.gdt.append(tss_desc);
        debug_assert!(tss.0 == KERNEL_TSS);
        // Placeholders (not present) that load_tr_at / load_ldt fill in before use.
        let alias = t.gdt.append(Descriptor::SystemSegment(0, 0));
        let ldt = t.gdt.append(Descriptor::SystemSegment(0, 0));
        debug_assert!(alias.0 == ALIAS_TSS && ldt.0 == LDT);
        let gdt: &'static GlobalDescriptorTable<GDT_ENTRIES> = &*core::ptr::addr_of!(t.gdt);
        gdt.load();
        GDT_BASE.store(
            x86_64::instructions::tables::sgdt().base.as_u64(),
            core::sync::atomic::Ordering::Relaxed,
        );
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(SegmentSelector(data.0));
        load_tss(tss);
        let stubs = &*core::ptr::addr_of!(isr_stub_table);
        for (v, &addr) in stubs.iter().enumerate() {
            let ist = if v == 8 { 1 } else { 0 };
            t.idt.0[v] = gate(addr, code.0, ist, 0);
        }
        // #PF enters through the host-assisted entry (not-present faults go to the host at
        // once), then the assembly fast path (probes, lazy pages), which falls back to
        // isr_stub_14.
        t.idt.0[14] = gate(pf_assist_entry as *const () as u64, code.0, 0, 0);
        let idtr = x86_64::structures::DescriptorTablePointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: VirtAddr::new_truncate(core::ptr::addr_of!(t.idt) as u64),
        };
        x86_64::instructions::tables::lidt(&idtr);
    }
}

/// Address of TSS.RSP0 (the stack the CPU switches to on an exception from ring 3).
pub fn tss_rsp0_slot() -> *mut u64 {
    // SAFETY: only the address is taken; TABLES lives forever.
    unsafe {
        let t = TABLES.0.get();
        core::ptr::addr_of_mut!((*t).tss.tss.privilege_stack_table[0]) as *mut u64
    }
}

/// Linear address of the kernel's TSS (its kernel mapping).
pub fn tss_base() -> u64 {
    // SAFETY: only the address is taken; TABLES lives forever.
    unsafe { core::ptr::addr_of!((*TABLES.0.get()).tss.tss) as u64 }
}

/// A 16-byte system descriptor (SDM Vol. 3A §8.2.3, Figure 8-4: TSS and LDT descriptors in
/// IA-32e mode): present, DPL 0, `typ` (0x2 LDT, 0x9 available TSS), byte-granular `limit`.
pub const fn system_descriptor(base: u64, limit: u32, typ: u8) -> [u64; 2] {
    let low = (limit as u64 & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (((typ as u64 & 0xf) | 0x80) << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [low, base >> 32]
}

/// Write the 16-byte GDT entry at selector `sel` (one of the kernel GDT's system slots).
///
/// # Safety
/// GDTR need not be the kernel GDT, but nothing may use the descriptor while it is half
/// written (single vCPU, no exception expected in between).
unsafe fn write_system(sel: u16, d: [u64; 2]) {
    let e = (GDT_BASE.load(core::sync::atomic::Ordering::Relaxed) + u64::from(sel)) as *mut u64;
    // SAFETY: `sel` is one of this module's system slots inside the kernel GDT (static,
    // writable kernel data); the caller guarantees no concurrent use.
    unsafe {
        core::ptr::write_volatile(e, d[0]);
        core::ptr::write_volatile(e.add(1), d[1]);
    }
}

/// Load TR with [`ALIAS_TSS`]: the kernel's TSS (same limit, I/O bitmap offset and contents)
/// seen at linear address `base`. `ltr` sets the descriptor's busy bit (SDM Vol. 3A §8.2.4),
/// so GDTR must be the kernel's writable GDT when this runs.
///
/// # Safety
/// `base` must map the kernel's TSS frames (read access suffices: 64-bit mode only reads the
/// TSS, for RSP0 / IST / the I/O bitmap) for as long as TR holds it, i.e. until
/// [`load_tr_kernel`]; GDTR must be the kernel GDT.
pub unsafe fn load_tr_at(base: u64) {
    let kernel = (GDT_BASE.load(core::sync::atomic::Ordering::Relaxed) + u64::from(KERNEL_TSS))
        as *const u64;
    // SAFETY: per the caller; the kernel TSS descriptor (static GDT) gives the limit; the
    // alias descriptor is written before `ltr` reads it.
    unsafe {
        let low = core::ptr::read_volatile(kernel);
        let limit = (low & 0xffff) as u32 | (((low >> 48) & 0xf) as u32) << 16;
        write_system(ALIAS_TSS, system_descriptor(base, limit, 0x9));
        core::arch::asm!("ltr {0:x}", in(reg) ALIAS_TSS, options(nostack, preserves_flags));
    }
}

/// Load TR with the kernel's own TSS again (after [`load_tr_at`]): clears its busy bit first
/// (`ltr` of a busy TSS is #GP). GDTR must be the kernel GDT.
///
/// # Safety
/// GDTR must be the kernel GDT.
pub unsafe fn load_tr_kernel() {
    let e =
        (GDT_BASE.load(core::sync::atomic::Ordering::Relaxed) + u64::from(KERNEL_TSS)) as *mut u64;
    // SAFETY: the kernel TSS descriptor in the static GDT; bit 41 is the busy bit of its type.
    unsafe {
        core::ptr::write_volatile(e, core::ptr::read_volatile(e) & !(1 << 41));
        core::arch::asm!("ltr {0:x}", in(reg) KERNEL_TSS, options(nostack, preserves_flags));
    }
}

/// Load LDTR with [`LDT`] describing an LDT at linear address `base` of `limit + 1` bytes, or
/// with the null selector (no LDT) if `base` is `None`. `lldt` reads only the GDT; the LDT
/// itself is read when a selector with TI = 1 is loaded (an implicit supervisor access, SDM
/// Vol. 3A §4.6.1). GDTR must be the kernel GDT.
///
/// # Safety
/// GDTR must be the kernel GDT; segment loads through the LDT must be expected (faults
/// caught) while it is loaded.
pub unsafe fn load_ldt(ldt: Option<(u64, u32)>) {
    // SAFETY: per the caller.
    unsafe {
        let sel = match ldt {
            Some((base, limit)) => {
                write_system(LDT, system_descriptor(base, limit, 0x2));
                LDT
            }
            None => 0,
        };
        core::arch::asm!("lldt {0:x}", in(reg) sel, options(nostack, preserves_flags));
    }
}

/// Exception names (SDM Vol. 3A Table 6-1).
pub fn vector_name(v: u64) -> &'static str {
    match v {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD error",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        _ => "reserved",
    }
}

/// Report a fault to the host's fault log.
pub fn report(vector: u64, error_code: u64, cr2: u64, rip: u64, resolved: bool) {
    let mut r = [Request::new(
        Call::FaultReport,
        [vector, error_code, cr2, rip, resolved as u64],
    )];
    crate::hc::batch_in_fault(&mut r);
}

extern "C" fn dispatch(f: &mut TrapFrame) {
    if f.vector == 14 {
        crate::probe::page_fault(f);
        return;
    }
    if f.vector == 13 && crate::user::gp_service(f) {
        return;
    }
    if crate::probe::other_fault(f) {
        return;
    }
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    if f.vector != 8 && crate::fault::on_exception(f, cr2) {
        return;
    }
    let mut line = crate::console::Line::new();
    if f.vector == 8 {
        // On IST1: the faulting stack is unusable. Report and stop.
        let _ = core::fmt::Write::write_fmt(
            &mut line,
            format_args!(
                "double fault (#DF) on the IST stack: rip={:#x} rsp={:#x} cr2={:#x} (stack overflow into the guard page?)",
                f.rip, f.rsp, cr2
            ),
        );
    } else {
        let _ = core::fmt::Write::write_fmt(
            &mut line,
            format_args!(
                "unhandled exception {} ({}) error_code={:#x} rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cr2={:#x}",
                f.vector,
                vector_name(f.vector),
                f.error_code,
                f.rip,
                f.rsp,
                f.rflags,
                f.cs,
                cr2
            ),
        );
    }
    unhandled(f, cr2, line.as_str())
}

/// End the run for an exception nobody expected: a `FAULT` ucall (vector, error code, CR2,
/// RIP and `msg`), which the host logs in its fault log and reports (`Exit::Fault`, or a
/// failed run with `msg` for the built-in scenarios).
pub fn unhandled(f: &TrapFrame, cr2: u64, msg: &str) -> ! {
    let mut r = memvisor_abi::ucall::Record::new(memvisor_abi::ucall::FAULT);
    for v in [f.vector, f.error_code, cr2, f.rip] {
        r.push(v);
    }
    r.set_msg(msg);
    crate::ucall::send_in_fault(&r);
    // Only reached if the host resumed us after all.
    crate::hc::panic_str(msg)
}
