//! What kind of KVM the VMM runs on: its MMU backend (shadow paging or two-dimensional paging)
//! and the guest-physical address width (MAXPHYADDR), and the one thing that depends on the
//! backend: the shadow flush ([`FlushSlot`]).
//!
//! - **Backend**: read from the loaded KVM vendor module's sysfs entries (Linux
//!   `arch/x86/kvm/vmx/vmx.c` `enable_ept` → `/sys/module/kvm_intel/parameters/ept`,
//!   `arch/x86/kvm/svm/svm.c` `npt_enabled` → `/sys/module/kvm_amd/parameters/npt`; KVM-PVM
//!   is `/sys/module/kvm_pvm` and always shadow-pages). With none of them readable the backend
//!   is `unknown` and treated as shadow paging (the flush is then done: correct, only slower).
//! - **MAXPHYADDR**: CPUID 0x8000_0008 EAX\[7:0\] of `KVM_GET_SUPPORTED_CPUID` (SDM Vol. 2A,
//!   CPUID; 36 if the leaf is absent). KVM refuses memslots at or above 2^MAXPHYADDR on a TDP
//!   host (`kvm_mmu_max_gfn`), and the guest's PTEs reserve bits MAXPHYADDR..51 (SDM Vol. 3A
//!   §4.5, Table 4-15 ff.).

use crate::memory::{MemoryError, Memslots};
use crate::paging::ShadowFlush;
use kvm_ioctls::VmFd;
use serde::Serialize;
use std::path::Path;

/// The MMU backend of the host's KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// KVM-PVM: software shadow paging, guest CPL 0 emulated.
    Pvm,
    /// kvm_intel with EPT (two-dimensional paging).
    VmxEpt,
    /// kvm_intel with `ept=0`: shadow paging.
    VmxShadow,
    /// kvm_amd with NPT (two-dimensional paging).
    SvmNpt,
    /// kvm_amd with `npt=0`: shadow paging.
    SvmShadow,
    /// No known vendor module found: treated as shadow paging.
    Unknown,
}

impl Backend {
    /// Name as in the report (`pvm`, `vmx-ept`, `vmx-shadow`, `svm-npt`, `svm-shadow`,
    /// `unknown`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Pvm => "pvm",
            Backend::VmxEpt => "vmx-ept",
            Backend::VmxShadow => "vmx-shadow",
            Backend::SvmNpt => "svm-npt",
            Backend::SvmShadow => "svm-shadow",
            Backend::Unknown => "unknown",
        }
    }

    /// True if KVM builds shadow page tables from the guest's (so the VMM's userspace edits
    /// of guest page tables need a shadow flush).
    pub fn shadow_paging(self) -> bool {
        !matches!(self, Backend::VmxEpt | Backend::SvmNpt)
    }

    /// Detect the backend from sysfs under `root` (`/` on a real host; a directory tree in
    /// tests).
    pub fn detect_in(root: &Path) -> Backend {
        let param = |module: &str, name: &str| {
            std::fs::read_to_string(
                root.join("sys/module")
                    .join(module)
                    .join("parameters")
                    .join(name),
            )
            .ok()
            .map(|s| matches!(s.trim(), "Y" | "y" | "1"))
        };
        if root.join("sys/module/kvm_pvm").is_dir() {
            return Backend::Pvm;
        }
        match param("kvm_intel", "ept") {
            Some(true) => return Backend::VmxEpt,
            Some(false) => return Backend::VmxShadow,
            None => {}
        }
        match param("kvm_amd", "npt") {
            Some(true) => Backend::SvmNpt,
            Some(false) => Backend::SvmShadow,
            None => Backend::Unknown,
        }
    }

    /// Detect the backend of this machine's KVM.
    pub fn detect() -> Backend {
        Backend::detect_in(Path::new("/"))
    }
}

/// MAXPHYADDR from CPUID 0x8000_0008 EAX\[7:0\] (36 if the leaf is absent or reports less;
/// at most 52), SDM Vol. 2A, CPUID.
pub fn maxphyaddr(cpuid: &kvm_bindings::CpuId) -> u8 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008 && e.index == 0)
        .map_or(36, |e| (e.eax & 0xff) as u8)
        .clamp(36, 52)
}

/// Ask this machine's KVM what a VM would get: the backend and the MAXPHYADDR-dependent layout
/// (for test authors who need the stage-2 window's GPAs before a run, e.g. for
/// `memvisor_cli::api::VmBuilder::lazy_range`).
///
/// # Errors
/// `/dev/kvm` cannot be opened or `KVM_GET_SUPPORTED_CPUID` fails.
pub fn probe() -> Result<(HostInfo, crate::layout::PhysLayout), kvm_ioctls::Error> {
    let kvm = kvm_ioctls::Kvm::new()?;
    let cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
    let host = HostInfo::new(Backend::detect(), maxphyaddr(&cpuid));
    Ok((
        host,
        crate::layout::PhysLayout::for_maxphyaddr(host.maxphyaddr),
    ))
}

/// How many times slower than the development host this machine runs guests, for default
/// time limits (`--timeout`'s defaults, the KVM tests' limits): `MEMVISOR_TIME_SCALE` if set
/// to a number in 1..=1000, else 10 inside a known CPU emulator (DMI system vendor `QEMU` or
/// `Bochs`: TCG and Bochs interpret every instruction; `scripts/hostvm/suite.sh` sets the
/// variable explicitly), else 1.
pub fn time_scale() -> f64 {
    if let Some(v) = std::env::var("MEMVISOR_TIME_SCALE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| (1.0..=1000.0).contains(v))
    {
        return v;
    }
    let vendor = std::fs::read_to_string("/sys/class/dmi/id/sys_vendor").unwrap_or_default();
    if matches!(vendor.trim(), "QEMU" | "Bochs") {
        10.0
    } else {
        1.0
    }
}

/// The host as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostInfo {
    /// The backend (see [`Backend::name`]).
    pub name: Backend,
    /// True for shadow paging (the VMM flushes KVM's shadow pages after reducing mappings).
    pub shadow_paging: bool,
    /// MAXPHYADDR of the guest CPUID.
    pub maxphyaddr: u8,
}

impl HostInfo {
    /// Combine a backend and a MAXPHYADDR.
    pub fn new(backend: Backend, maxphyaddr: u8) -> Self {
        HostInfo {
            name: backend,
            shadow_paging: backend.shadow_paging(),
            maxphyaddr,
        }
    }

    /// One line for the text report.
    pub fn line(&self) -> String {
        format!(
            "KVM backend {} ({}), MAXPHYADDR {}",
            self.name.name(),
            if self.shadow_paging {
                "shadow paging"
            } else {
                "two-dimensional paging"
            },
            self.maxphyaddr
        )
    }
}

/// GPA of the one-page flush slot (in the 32-bit MMIO hole, above the doorbell page; defined
/// in [`crate::layout`]).
pub use crate::layout::FLUSH_SLOT_GPA;

/// A one-page memslot whose deletion and re-registration makes KVM drop every shadow page
/// (`KVM_SET_USER_MEMORY_REGION` with size 0 → `kvm_arch_flush_shadow_memslot`, which zaps all
/// shadow pages under the default `KVM_X86_QUIRK_SLOT_ZAP_ALL`).
///
/// Why: with shadow paging (PVM, `ept=0`, `npt=0`), code running natively uses KVM's shadow
/// page tables, which are built from the guest's tables when a page is first touched and are
/// kept in sync by write-protecting the guest's table frames against *guest* writes. The VMM
/// edits those tables from userspace, which KVM does not see: a new mapping is picked up on the
/// next not-present fault, but a removed or reduced mapping (munmap, mprotect) would stay
/// usable through the stale shadow entry. After such edits the VMM flushes the shadow with this
/// slot before resuming the vCPU; the guest then flushes its TLB as usual.
///
/// With two-dimensional paging (EPT, NPT) the CPU walks the guest's own tables, so the guest's
/// TLB flush is all that is needed: there the slot is not registered and nothing is flushed
/// (a flush would only throw away the EPT / NPT tables: 7.9 ms per doorbell measured on
/// emulated NPT).
pub struct FlushSlot {
    slot: Option<(u32, vm_memory::mmap::MmapRegion)>,
    /// Flushes done.
    pub count: u64,
}

impl FlushSlot {
    /// Register the flush slot if `shadow_paging`.
    ///
    /// # Errors
    /// As [`Memslots::add`].
    pub fn new(vm: &VmFd, slots: &mut Memslots, shadow_paging: bool) -> Result<Self, MemoryError> {
        if !shadow_paging {
            return Ok(FlushSlot {
                slot: None,
                count: 0,
            });
        }
        let page = vm_memory::mmap::MmapRegion::new(4096).map_err(|_| MemoryError::BadSlot {
            gpa: FLUSH_SLOT_GPA,
            size: 4096,
        })?;
        // SAFETY: the page is owned by the returned FlushSlot, which the VMM keeps as long as
        // the VM.
        let slot = unsafe { slots.add(vm, FLUSH_SLOT_GPA, 4096, page.as_ptr() as u64, 0)? };
        Ok(FlushSlot {
            slot: Some((slot, page)),
            count: 0,
        })
    }

    /// Drop all of KVM's shadow pages (delete and re-add the slot); nothing without shadow
    /// paging.
    ///
    /// # Errors
    /// As [`Memslots::remove`] and [`Memslots::add`].
    pub fn flush(&mut self, vm: &VmFd, slots: &mut Memslots) -> Result<(), MemoryError> {
        let Some((slot, page)) = &mut self.slot else {
            return Ok(());
        };
        slots.remove(vm, *slot)?;
        // SAFETY: as in `new`.
        *slot = unsafe { slots.add(vm, FLUSH_SLOT_GPA, 4096, page.as_ptr() as u64, 0)? };
        self.count += 1;
        Ok(())
    }

    /// Flush if `owed` says so (a mapping was removed or reduced since the last flush; from
    /// [`crate::space::AddressSpace::take_shadow_flush`]), and the backend shadow-pages. The
    /// token is consumed: the owed flush happens here, once.
    ///
    /// # Errors
    /// As [`Self::flush`].
    pub fn flush_owed(
        &mut self,
        vm: &VmFd,
        slots: &mut Memslots,
        owed: ShadowFlush,
    ) -> Result<(), MemoryError> {
        if owed.take_needed() {
            self.flush(vm, slots)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile_dir::Dir {
        let d = tempfile_dir::Dir::new();
        for (p, v) in files {
            let f = d.0.join(p);
            std::fs::create_dir_all(f.parent().expect("has a parent")).expect("mkdir");
            if !v.is_empty() {
                std::fs::write(&f, v).expect("write");
            }
        }
        d
    }

    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "memvisor-backend-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).expect("mkdir");
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn detects_each_backend() {
        let cases: &[(&[(&str, &str)], Backend)] = &[
            (&[("sys/module/kvm_pvm/parameters/x", "")], Backend::Pvm),
            (
                &[("sys/module/kvm_intel/parameters/ept", "Y\n")],
                Backend::VmxEpt,
            ),
            (
                &[("sys/module/kvm_intel/parameters/ept", "N\n")],
                Backend::VmxShadow,
            ),
            (
                &[("sys/module/kvm_amd/parameters/npt", "1\n")],
                Backend::SvmNpt,
            ),
            (
                &[("sys/module/kvm_amd/parameters/npt", "0\n")],
                Backend::SvmShadow,
            ),
            (
                &[("sys/module/kvm/parameters/tdp_mmu", "Y\n")],
                Backend::Unknown,
            ),
        ];
        for (files, want) in cases {
            let d = tree(files);
            assert_eq!(Backend::detect_in(&d.0), *want, "{files:?}");
        }
    }

    #[test]
    fn only_tdp_skips_the_flush() {
        for b in [
            Backend::Pvm,
            Backend::VmxShadow,
            Backend::SvmShadow,
            Backend::Unknown,
        ] {
            assert!(b.shadow_paging(), "{b:?}");
        }
        assert!(!Backend::VmxEpt.shadow_paging());
        assert!(!Backend::SvmNpt.shadow_paging());
        assert_eq!(
            serde_json::to_string(&HostInfo::new(Backend::SvmNpt, 48)).expect("json"),
            r#"{"name":"svm-npt","shadow_paging":false,"maxphyaddr":48}"#
        );
    }
}
