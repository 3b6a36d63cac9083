//! Guest CPUID: KVM_GET_SUPPORTED_CPUID as-is (KVM API doc §4.46), and the feature bits the
//! guest and the reports care about. A feature missing here is reported as
//! "skipped: unsupported by host", never as a pass.

use kvm_bindings::CpuId;
use serde::Serialize;

/// Paging-related features of the guest CPUID.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Features {
    /// CPUID.80000001H:EDX.NX\[20\].
    pub nx: bool,
    /// CPUID.80000001H:EDX.Page1GB\[26\].
    pub page_1g: bool,
    /// CPUID.07H:EBX.SMEP\[7\].
    pub smep: bool,
    /// CPUID.07H:EBX.SMAP\[20\].
    pub smap: bool,
    /// CPUID.07H:ECX.PKU\[3\].
    pub pku: bool,
    /// CPUID.07H:ECX.LA57\[16\].
    pub la57: bool,
    /// CPUID.01H:EDX.PSE\[3\] (2 MiB pages under PAE/4-level paging).
    pub pse: bool,
    /// TSC frequency in kHz from leaf 0x15/0x16 or 0x4000_0010 if present, else 0.
    pub tsc_khz: u64,
}

fn leaf(cpuid: &CpuId, function: u32, index: u32) -> Option<(u32, u32, u32, u32)> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
        .map(|e| (e.eax, e.ebx, e.ecx, e.edx))
}

impl Features {
    /// Read the features from a CPUID table.
    pub fn from_cpuid(cpuid: &CpuId) -> Self {
        let mut f = Features::default();
        if let Some((_, _, _, edx)) = leaf(cpuid, 1, 0) {
            f.pse = edx & (1 << 3) != 0;
        }
        if let Some((_, ebx, ecx, _)) = leaf(cpuid, 7, 0) {
            f.smep = ebx & (1 << 7) != 0;
            f.smap = ebx & (1 << 20) != 0;
            f.pku = ecx & (1 << 3) != 0;
            f.la57 = ecx & (1 << 16) != 0;
        }
        if let Some((_, _, _, edx)) = leaf(cpuid, 0x8000_0001, 0) {
            f.nx = edx & (1 << 20) != 0;
            f.page_1g = edx & (1 << 26) != 0;
        }
        if let Some((eax, ebx, ecx, _)) = leaf(cpuid, 0x15, 0) {
            if eax != 0 && ebx != 0 && ecx != 0 {
                f.tsc_khz = (ecx as u64 * ebx as u64 / eax as u64) / 1000;
            }
        }
        if f.tsc_khz == 0 {
            if let Some((eax, _, _, _)) = leaf(cpuid, 0x4000_0010, 0) {
                f.tsc_khz = eax as u64;
            }
        }
        f
    }

    /// The ABI feature bits for the boot info.
    pub fn abi_bits(&self) -> u64 {
        use memvisor_abi::feature::*;
        let mut b = 0;
        for (on, bit) in [
            (self.nx, NX),
            (self.page_1g, PAGE_1G),
            (self.smep, SMEP),
            (self.smap, SMAP),
            (self.pku, PKU),
            (self.la57, LA57),
        ] {
            if on {
                b |= bit;
            }
        }
        b
    }
}

/// TSC frequency in kHz measured on the host against CLOCK_MONOTONIC over ~10 ms (used when
/// CPUID does not report it; the host TSC and the guest TSC tick at the same rate under KVM
/// unless TSC scaling is set, which memvisor never does).
pub fn calibrate_tsc_khz() -> u64 {
    let t0 = std::time::Instant::now();
    let c0 = rdtsc();
    while t0.elapsed() < std::time::Duration::from_millis(10) {
        std::hint::spin_loop();
    }
    let c1 = rdtsc();
    let ns = t0.elapsed().as_nanos() as u64;
    if ns == 0 {
        return 0;
    }
    (c1.wrapping_sub(c0)).saturating_mul(1_000_000) / ns
}

/// Read the host TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; it is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}
