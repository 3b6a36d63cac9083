//! The scenario-level API (the CLI's, and simple tests'): configure a guest, pick a built-in
//! scenario, run it to its end, and assert on the typed [`Report`] (faults, exits, stage-2
//! events, dirty pages, zones). It runs on [`memvisor::vm::Vm`], the step-wise API that tests
//! with their own guest code use (README "Writing your own test").
//!
//! ```no_run
//! use memvisor_cli::api::VmBuilder;
//!
//! let report = VmBuilder::new()
//!     .mem("512M")?                        // guest RAM (K/M/G suffixes)
//!     .scenario("stage2")?                 // see `memvisor_cli::registry::REGISTRY`
//!     .lazy_range(1 << 40 | 0x40_0000, 0x4000)
//!     .run()?;
//! assert_eq!(report.guest_exit_code, Some(0));
//! assert!(report.stage2.iter().any(|f| f.write && f.size == 8));
//! assert!(report.faults.iter().all(|f| f.vector == 14));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use memvisor::frames::ZonePreset;
use memvisor::report::Report;
use memvisor::vmm::{VmConfig, VmmError};
use std::time::Duration;
use thiserror::Error;

/// Errors of the builder.
#[derive(Debug, Error)]
pub enum ApiError {
    /// A size string that does not parse.
    #[error("{0}")]
    Size(String),
    /// An unknown scenario name.
    #[error("unknown scenario '{name}' (known: {known})")]
    Scenario {
        /// The name asked for.
        name: String,
        /// The known names.
        known: String,
    },
    /// The VMM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

/// Builds and runs one guest.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    cfg: VmConfig,
}

impl Default for VmBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl VmBuilder {
    /// 256 MiB, the `demo` scenario, the embedded guest, Linux x86-64 zones, 30 s timeout,
    /// quiet console.
    pub fn new() -> Self {
        VmBuilder {
            cfg: VmConfig::default(),
        }
    }

    /// Guest RAM in bytes (a multiple of 4 KiB).
    pub fn mem_bytes(mut self, bytes: u64) -> Self {
        self.cfg.mem_bytes = bytes;
        self
    }

    /// Guest RAM as a size string (`256M`, `4G`, ...).
    ///
    /// # Errors
    /// [`ApiError::Size`].
    pub fn mem(self, size: &str) -> Result<Self, ApiError> {
        let b = memvisor::memory::parse_size(size).map_err(ApiError::Size)?;
        Ok(self.mem_bytes(b))
    }

    /// The guest scenario to run, by name.
    ///
    /// # Errors
    /// [`ApiError::Scenario`] for an unknown name.
    pub fn scenario(mut self, name: &str) -> Result<Self, ApiError> {
        let entry = crate::registry::by_name(name).ok_or_else(|| ApiError::Scenario {
            name: name.into(),
            known: crate::registry::names(),
        })?;
        self.cfg.scenario = entry.name.into();
        Ok(self)
    }

    /// Zone layout.
    pub fn zones(mut self, preset: ZonePreset) -> Self {
        self.cfg.zone_preset = preset;
        self
    }

    /// Wall-clock limit for the guest.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.cfg.timeout = t;
        self
    }

    /// Quick mode (fewer iterations in benchmark-like scenarios).
    pub fn quick(mut self, on: bool) -> Self {
        if on {
            self.cfg.flags |= memvisor_abi::flags::QUICK;
        } else {
            self.cfg.flags &= !memvisor_abi::flags::QUICK;
        }
        self
    }

    /// Another guest kernel ELF instead of the embedded one.
    ///
    /// The boot contract (documented once, in the crate docs of `memvisor-guest-sdk`,
    /// `guest/sdk/src/lib.rs`): an ELF64 x86-64 executable whose `PT_LOAD` segments are linked
    /// at GVA = GPA + `memvisor_abi::KERNEL_VIRT_OFFSET` from GPA `KERNEL_PHYS_BASE` (2 MiB)
    /// (the SDK's `link.ld`), entered at its ELF entry in 64-bit mode at CPL 0 with paging on
    /// the host-built tables (CR0 = PE MP ET NE WP PG, CR4 = PAE PGE OSFXSR OSXMMEXCPT, EFER =
    /// LME LMA, NXE with NX; Intel SDM Vol. 3A §10.8.5), interrupts off, `rsp` = top of the
    /// boot stack (a guard page below it) and `rdi` = GVA of the `memvisor_abi::BootInfo`
    /// (check its `magic`). The kernel reaches the VMM through the hypercall port or the
    /// MMIO doorbell (`memvisor_abi`), and demand paging needs the symbol
    /// `memvisor_pf_assist_done` (the SDK provides it). A kernel built on the SDK's `entry!`
    /// keeps all of this without writing any of it.
    pub fn kernel(mut self, elf: Vec<u8>) -> Self {
        self.cfg.kernel = elf;
        self
    }

    /// Check the host invariants after every hypercall batch.
    pub fn check_invariants(mut self, on: bool) -> Self {
        self.cfg.check_invariants = on;
        self
    }

    /// Echo the guest console on stdout.
    pub fn echo_console(mut self, on: bool) -> Self {
        self.cfg.echo_console = if on {
            memvisor::hypercall::ConsoleEcho::Stdout
        } else {
            memvisor::hypercall::ConsoleEcho::Off
        };
        self
    }

    /// Add a KVM_MEM_READONLY memslot `[gpa, gpa + bytes)` (in the stage-2 window at 1 TiB;
    /// mapped for the guest at `stage2::GVA_BASE + (gpa - stage2::GPA_BASE)`).
    pub fn read_only_range(mut self, gpa: u64, bytes: u64) -> Self {
        self.cfg.stage2_extras.read_only.push((gpa, bytes));
        self
    }

    /// Declare `[gpa, gpa + bytes)` lazily backed: the first access to each page exits and the
    /// VMM adds a memslot for it (in the stage-2 window, mapped like `read_only_range`).
    pub fn lazy_range(mut self, gpa: u64, bytes: u64) -> Self {
        self.cfg.stage2_extras.lazy.push((gpa, bytes));
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// Boot and run; the report also describes guest failures (see [`Report::outcome`]).
    ///
    /// # Errors
    /// [`ApiError::Vmm`] if the VM cannot be created or the guest cannot be built.
    pub fn run(self) -> Result<Report, ApiError> {
        Ok(crate::registry::run(&self.cfg)?)
    }
}
