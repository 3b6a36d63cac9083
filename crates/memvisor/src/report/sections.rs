//! Report sections gathered from the VM: stage-2 faults, registers at a crash, timings, the
//! JSON shapes of the e820 map, zones and page tables, and the interface of a scenario's own
//! section ([`ScenarioSection`]).

use kvm_ioctls::VcpuFd;
use serde::Serialize;

/// A stage-2 fault: an access to a GPA with no memslot (KVM_EXIT_MMIO).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Stage2Fault {
    /// The GPA accessed.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub gpa: u64,
    /// Access size in bytes.
    pub size: u32,
    /// True for a write.
    pub write: bool,
    /// The written value (writes only).
    #[serde(serialize_with = "crate::report::hex::hex_opt")]
    pub value: Option<u64>,
    /// The faulting instruction's address, or null where it cannot be known. For a **read**
    /// it is the RIP at the exit: KVM stops at the instruction and completes it (loads the
    /// data the VMM put in `kvm_run.mmio`, then advances RIP) on the next `KVM_RUN`. For a
    /// **write**, KVM's instruction emulator completes the write into `kvm_run.mmio` and
    /// advances RIP *before* the exit and reports no instruction length (KVM API doc,
    /// `KVM_EXIT_MMIO`; on PVM every access is emulated this way): the VMM decodes the bytes
    /// before `exit_rip` ([`crate::stage2::write_instruction`]) and reports the one instruction
    /// that ends there and writes `size` bytes to `gpa`, else null.
    #[serde(serialize_with = "crate::report::hex::hex_opt")]
    pub rip: Option<u64>,
    /// How `rip` is known: `exit` (a read: RIP at the exit), `decoded` (a write: decoded
    /// back from `exit_rip`), or null (unknown).
    pub rip_source: Option<&'static str>,
    /// The guest RIP at the exit (`KVM_GET_REGS`; null if KVM refused): for a read the faulting
    /// instruction (= `rip`), for a write the instruction after it.
    #[serde(serialize_with = "crate::report::hex::hex_opt")]
    pub exit_rip: Option<u64>,
    /// The GPA was in a declared lazy range: the VMM added a memslot and completed the access.
    pub lazy_backed: bool,
}

/// vCPU registers at a crash (JSON: hex strings).
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Registers {
    /// RIP.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub rip: u64,
    /// RSP.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub rsp: u64,
    /// RFLAGS.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub rflags: u64,
    /// RAX.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub rax: u64,
    /// CR0.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub cr0: u64,
    /// CR2.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub cr2: u64,
    /// CR3.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub cr3: u64,
    /// CR4.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub cr4: u64,
    /// EFER.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub efer: u64,
}

impl Registers {
    /// Read from the vCPU (None if KVM refuses).
    pub fn read(vcpu: &VcpuFd) -> Option<Self> {
        let r = vcpu.get_regs().ok()?;
        let s = vcpu.get_sregs().ok()?;
        Some(Registers {
            rip: r.rip,
            rsp: r.rsp,
            rflags: r.rflags,
            rax: r.rax,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        })
    }
}

/// Timings in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Timings {
    /// VMM start → ready to enter the guest.
    pub setup_us: u64,
    /// Time spent in KVM_SET_USER_MEMORY_REGION for guest RAM.
    pub memslot_us: u64,
    /// VMM start → first KVM_RUN.
    pub first_entry_us: u64,
    /// VMM start → the guest's first instruction (its `out` to the null port, seen by the
    /// VMM); None if the guest never got there.
    pub first_guest_instruction_us: Option<u64>,
    /// Guest run time.
    pub run_us: u64,
    /// Whole run.
    pub total_us: u64,
}

/// An e820 entry in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct E820Json {
    /// First GPA.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// `ram` or `reserved`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// A zone in JSON (frames are 4 KiB).
#[derive(Debug, Clone, Serialize)]
pub struct ZoneJson {
    /// DMA, DMA32, Normal, HighMem.
    pub name: &'static str,
    /// First GPA of the zone's span.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub start: u64,
    /// One past the last GPA of the span.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub end: u64,
    /// Frames of RAM in the span.
    pub present_frames: u64,
    /// Frames the allocator manages (present minus reserved).
    pub managed_frames: u64,
    /// Free frames.
    pub free_frames: u64,
    /// Successful allocations.
    pub allocations: u64,
    /// Allocations served here for a higher zone.
    pub fallbacks_in: u64,
    /// Requests for this zone served by a lower one.
    pub fallbacks_out: u64,
    /// Failed allocations.
    pub failures: u64,
}

/// Page-table summary in JSON.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PageTablesJson {
    /// The CR3 value: GPA of the PML4, or of the PML5 under 5-level paging.
    #[serde(serialize_with = "crate::report::hex::hex")]
    pub cr3: u64,
    /// Paging levels the guest booted with: 4, or 5 (CR4.LA57 = 1, CR3 a PML5).
    pub paging_levels: u8,
    /// Table frames in use (the PML5 included).
    pub table_frames: u64,
    /// PDPT / PD / PT frames.
    pub pdpt_tables: u64,
    /// PD frames.
    pub pd_tables: u64,
    /// PT frames.
    pub pt_tables: u64,
    /// 2 MiB pool chunks.
    pub pool_chunks: u64,
    /// First GPA of each pool chunk (every page-table frame lies in one of these 2 MiB runs).
    #[serde(serialize_with = "crate::report::hex::hex_vec")]
    pub pool_chunk_gpas: Vec<u64>,
    /// Leaf mappings by size.
    pub mappings_4k: u64,
    /// 2 MiB leaves.
    pub mappings_2m: u64,
    /// 1 GiB leaves.
    pub mappings_1g: u64,
}

/// A scenario's own section of the [`Report`](super::Report), filled by its host side in
/// [`Scenario::finish`](crate::scenario::Scenario::finish) (the fault matrix's totals are one).
/// The report serializes it in place (under the key `matrix`, the shape
/// `docs/report.schema.json` gives it) and asks it whether it passed; the scenario's own code
/// gets its type back with [`as_any`](Self::as_any).
pub trait ScenarioSection: erased_serde::Serialize + std::fmt::Debug + Send + Sync {
    /// False if the section records a failure ([`Report::success`](super::Report::success)
    /// is then false even when the guest exited with 0).
    fn passed(&self) -> bool;
    /// Its lines of the text report (ending in a newline).
    fn to_text(&self) -> String;
    /// A boxed copy (the report is `Clone`).
    fn clone_box(&self) -> Box<dyn ScenarioSection>;
    /// The section as [`std::any::Any`], to downcast to its type.
    fn as_any(&self) -> &dyn std::any::Any;
    /// The section as mutable [`std::any::Any`], to downcast to its type.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

erased_serde::serialize_trait_object!(ScenarioSection);

impl Clone for Box<dyn ScenarioSection> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}
