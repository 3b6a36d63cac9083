//! The step-wise host API: create a VM, shape its memory from the host, run the guest until
//! its next [`Exit`], assert, run again (KVM selftests' `vm_create_with_one_vcpu`, `virt_map`,
//! `vcpu_run` + `get_ucall`, in Rust).
//!
//! ```no_run
//! use memvisor::vm::{Exit, Ucall, Vm, VmOptions};
//!
//! let elf = std::fs::read("my-guest.elf")?;          // a guest built on memvisor-guest-sdk
//! let mut vm = Vm::new(elf, VmOptions::default())?;
//! let page = vm.mmap(4096, memvisor_abi::Prot::USER_RW, memvisor_abi::Zone::ANY,
//!                    memvisor_abi::MapFlags::POPULATE)?;
//! vm.write_gva(page, &7u64.to_le_bytes())?;
//! assert_eq!(vm.run()?, Exit::Ucall(Ucall::Sync(vec![page])));
//! assert_eq!(vm.run()?, Exit::Ucall(Ucall::Done));
//! assert!(vm.check_invariants().is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same vCPU loop (`crate::vmm`) serves `memvisor_cli::registry::run` (the built-in scenarios and
//! the CLI) and [`Vm::run`]; the difference is only where it stops: a built-in scenario runs
//! to its end, a `Vm` stops at every ucall and every MMIO exit.

mod exit;
mod host_ops;
mod snapshot;
mod watchdog;

pub use exit::{Exit, GuestFault, Ucall};
pub use host_ops::{MemslotKind, VmOpError};
pub use snapshot::{RestoreOptions, SnapError, SnapshotInfo, SAVED_MSRS, STATE_VERSION};

use crate::backend::{FlushSlot, HostInfo};
use crate::boot::{self, cpuid::Features};
use crate::frames::ZonePreset;
use crate::hypercall::Hypercalls;
use crate::layout::BOOT_STACK_TOP;
use crate::memory::{Memslot, Memslots};
use crate::report::{ExitLatency, Outcome, Registers, Report, RunRecord, Stage2Fault, Timings};
use crate::space::{AddressSpace, SpaceError};
use crate::stage2::Stage2;
use crate::vmm::{VmConfig, VmmError};
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryBackend;

/// How to create a [`Vm`].
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Guest RAM in bytes (a multiple of 4 KiB; default 256 MiB).
    pub mem_bytes: u64,
    /// Zone layout (default Linux x86-64: DMA < 16 MiB, DMA32 < 4 GiB, Normal).
    pub zones: ZonePreset,
    /// The guest's CPUID (default: what KVM supports, `KVM_GET_SUPPORTED_CPUID`); the host's
    /// page-size and NX choices follow it.
    pub cpuid: Option<CpuId>,
    /// Wall-clock limit of each [`Vm::run`] call (default 30 s): past it the run ends with
    /// [`Exit::Timeout`].
    pub timeout: Duration,
    /// Check the host invariants after every hypercall batch and #PF assist (default on).
    pub check_invariants: bool,
    /// Echo the guest's console on stdout (default off; it is kept for the report anyway).
    pub echo_console: bool,
    /// Back guest RAM through userfaultfd (default off; [`crate::uffd`]): first touches are
    /// served by a VMM handler thread, counted in the report's `uffd` section.
    pub uffd: bool,
    /// RAM backing and the uffd ranges (default: anonymous RAM, all of it registered with
    /// `uffd`; [`crate::uffd::RamOptions`]).
    pub ram: crate::uffd::RamOptions,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            mem_bytes: crate::layout::DEFAULT_MEM_SIZE,
            zones: ZonePreset::X86_64,
            cpuid: None,
            timeout: Duration::from_secs(30),
            check_invariants: true,
            echo_console: false,
            uffd: false,
            ram: crate::uffd::RamOptions::default(),
        }
    }
}

/// A VM with one vCPU, its guest booted to its ELF entry but not yet run.
pub struct Vm {
    /// A restore's deferred RAM memslots (`snapshot::Deferred`); first, so it is dropped
    /// (its thread joined) before guest RAM.
    pub(crate) deferred: snapshot::Deferred,
    pub(crate) cfg: VmConfig,
    pub(crate) vm: std::sync::Arc<VmFd>,
    pub(crate) vcpu: VcpuFd,
    pub(crate) features: Features,
    pub(crate) phys_bits: u8,
    /// KVM's MMU backend and MAXPHYADDR (in the report).
    pub(crate) host: HostInfo,
    pub(crate) space: AddressSpace,
    pub(crate) memslots: Vec<Memslot>,
    pub(crate) slots: Memslots,
    pub(crate) flush_slot: FlushSlot,
    pub(crate) s2ctl: Option<Stage2>,
    /// The scenario's host side (default hooks for a user's guest).
    pub(crate) hooks: Box<dyn crate::scenario::Scenario>,
    pub(crate) hc: Hypercalls,
    pub(crate) sync_regs: bool,
    pub(crate) tsc_khz: u64,
    pub(crate) watchdog: watchdog::Watchdog,
    /// Stop at every ucall and MMIO exit ([`Vm::run`]) rather than run to the end.
    pub(crate) stepwise: bool,
    /// What the vCPU loop counts, logs and times.
    pub(crate) run_state: RunState,
    pub(crate) host_backing: Vec<(u32, vm_memory::mmap::MmapRegion)>,
    pub(crate) t_start: Instant,
    pub(crate) setup_us: u64,
    pub(crate) memslot_us: u64,
    /// The last [`Vm::run`] returned `Ucall(Sync)`: a snapshot may be taken.
    pub(crate) at_sync: bool,
    /// Snapshot bookkeeping (`snapshot/`).
    pub(crate) snap: snapshot::Track,
}

/// Turn on `KVM_CAP_SYNC_REGS` for `vcpu` where KVM has it for both the GPRs and the sregs
/// (KVM API doc, capability `KVM_CAP_SYNC_REGS` and section 5, `kvm_run`'s `kvm_valid_regs` /
/// `kvm_dirty_regs`): KVM then copies them into `kvm_run` on
/// every exit, so the #PF assist exit reads RSP and CR2 without a `KVM_GET_REGS` /
/// `KVM_GET_SREGS` ioctl (each costs ~7 µs on PVM) and sets RIP through `kvm_dirty_regs`.
/// Returns whether it is on.
pub(crate) fn enable_sync_regs(kvm: &kvm_ioctls::Kvm, vcpu: &mut VcpuFd) -> bool {
    use kvm_bindings::{KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
    let both = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
    let on = kvm.check_extension_int(kvm_ioctls::Cap::SyncRegs) as u32 & both == both;
    if on {
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
    }
    on
}

/// What the vCPU loop counts, logs and times in a [`Vm`]: empty for a booted VM, and for a
/// restored one until the snapshot's bookkeeping is put back (`snapshot/restore.rs`).
pub(crate) struct RunState {
    pub(crate) exits: BTreeMap<String, u64>,
    pub(crate) stage2: Vec<Stage2Fault>,
    pub(crate) stage2_total: u64,
    pub(crate) inv_checks: u64,
    pub(crate) latency: ExitLatency,
    pub(crate) last_exit: Option<(String, Instant)>,
    /// Size of an MMIO read the guest waits on (its data goes in before the next KVM_RUN).
    pub(crate) pending_mmio_read: Option<usize>,
    pub(crate) mmio_read_value: u64,
    /// How the run ended, once it has.
    pub(crate) finished: Option<Exit>,
    pub(crate) first_entry_us: Option<u64>,
    /// Time from `t_start` to the first return of `KVM_RUN` (the guest has run).
    pub(crate) first_exit_us: Option<u64>,
    pub(crate) first_guest_us: Option<u64>,
    pub(crate) run_time: Duration,
}

impl Default for RunState {
    fn default() -> Self {
        RunState {
            exits: BTreeMap::new(),
            stage2: Vec::new(),
            stage2_total: 0,
            inv_checks: 0,
            latency: ExitLatency::default(),
            last_exit: None,
            pending_mmio_read: None,
            mmio_read_value: u64::MAX,
            finished: None,
            first_entry_us: None,
            first_exit_us: None,
            first_guest_us: None,
            run_time: Duration::ZERO,
        }
    }
}

impl Vm {
    /// Create a VM for the guest ELF `kernel` (built on the guest SDK, or any executable
    /// keeping the boot contract of `memvisor-guest-sdk`'s crate docs), with `opts`.
    ///
    /// # Errors
    /// [`VmmError`] when KVM is missing or the guest cannot be built (bad ELF, too little
    /// RAM).
    pub fn new(kernel: Vec<u8>, opts: VmOptions) -> Result<Vm, VmmError> {
        let cfg = VmConfig {
            mem_bytes: opts.mem_bytes,
            kernel,
            scenario: "sdk".into(),
            timeout: opts.timeout,
            zone_preset: opts.zones,
            echo_console: if opts.echo_console {
                crate::hypercall::ConsoleEcho::Stdout
            } else {
                crate::hypercall::ConsoleEcho::Off
            },
            check_invariants: opts.check_invariants,
            uffd: opts.uffd,
            ram: opts.ram,
            ..VmConfig::default()
        };
        let mut vm = Vm::create(&cfg, crate::scenario::default_hooks(), opts.cpuid)?;
        vm.stepwise = true;
        Ok(vm)
    }

    /// Create and boot (registers at the ELF entry) as [`crate::vmm::run_scenario`] needs,
    /// with `hooks` (the scenario's host side) prepared; `cpuid` replaces KVM's supported
    /// CPUID when given. The VM runs to its end on [`Vm::run`] unless
    /// [`Vm::set_stepwise`] is on ([`Vm::new`] turns it on).
    ///
    /// # Errors
    /// [`VmmError`] when KVM is missing, the guest cannot be built (bad ELF, too little RAM)
    /// or the scenario's `prepare` fails.
    pub fn create(
        cfg: &VmConfig,
        mut hooks: Box<dyn crate::scenario::Scenario>,
        cpuid: Option<CpuId>,
    ) -> Result<Vm, VmmError> {
        let extras = &cfg.stage2_extras;
        let t_start = Instant::now();
        let kvm = Kvm::new().map_err(|source| VmmError::NoKvm { source })?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let cpuid = match cpuid {
            Some(c) => c,
            None => kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?,
        };
        let features = Features::from_cpuid(&cpuid);
        let host = HostInfo::new(
            crate::backend::Backend::detect(),
            crate::backend::maxphyaddr(&cpuid),
        );
        let phys_bits = host.maxphyaddr;
        let phys = crate::layout::PhysLayout::for_maxphyaddr(host.maxphyaddr);
        if cfg.mem_bytes > phys.max_mem {
            return Err(VmmError::Space(SpaceError::Memory(
                crate::memory::MemoryError::BeyondMaxPhyAddr {
                    bytes: cfg.mem_bytes,
                    end: crate::layout::PhysLayout::ram_end(cfg.mem_bytes),
                    maxphyaddr: host.maxphyaddr,
                    max: phys.max_mem,
                },
            )));
        }
        log::debug!("setup: KVM VM + CPUID after {:?}", t_start.elapsed());
        let mut space = AddressSpace::build_with_ram(
            cfg.mem_bytes,
            &cfg.kernel,
            cfg.zone_preset,
            features,
            crate::space::BuildOptions {
                no_nx: hooks.no_nx(),
                uffd: cfg.uffd,
            },
            &cfg.ram,
        )?;
        // The vCPU exists before the scenario's prepare so that a 5-level boot can be tried:
        // KVM checks CR4.LA57 against the vCPU's CPUID (KVM_SET_CPUID2 first).
        let mut vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        if hooks.five_level()
            && features.la57
            && boot::accepts_la57(&vcpu, space.cr3(), features.nx)
        {
            space.enable_la57()?;
        }
        let mut boot_arg = cfg.arg;
        hooks.prepare(crate::scenario::Prepare {
            space: &mut space,
            phys: &phys,
            phys_bits,
            boot_arg: &mut boot_arg,
        })?;
        let t_slots = Instant::now();
        let memslots = space.ram.register(&vm).map_err(mem_err)?;
        let mut slots = Memslots::new(kvm.get_nr_memslots());
        for m in &memslots {
            let hva = space
                .ram
                .mem
                .get_host_address(vm_memory::GuestAddress(m.gpa))
                .map(|p| p as u64)
                .unwrap_or(0);
            slots.track(*m, hva);
        }
        let memslot_us = t_slots.elapsed().as_micros() as u64;
        let flush_slot = FlushSlot::new(&vm, &mut slots, host.shadow_paging).map_err(mem_err)?;
        let s2ctl = if hooks.stage2_layout() || !extras.is_empty() {
            Some(Stage2::setup(
                &kvm, &vm, &mut slots, &mut space, extras, &phys,
            )?)
        } else {
            None
        };
        log::debug!("setup: memslots registered after {:?}", t_start.elapsed());
        let sync_regs = enable_sync_regs(&kvm, &mut vcpu);
        // TSC frequency: CPUID 0x15 if it has it, else KVM_GET_TSC_KHZ, else calibrate.
        let tsc_khz = if features.tsc_khz != 0 {
            features.tsc_khz
        } else {
            match vcpu.get_tsc_khz() {
                Ok(k) if k > 0 => k as u64,
                _ => boot::cpuid::calibrate_tsc_khz(),
            }
        };
        let scenario_id = memvisor_abi::scenario::id(&cfg.scenario);
        let boot_gva = space.write_boot_info(scenario_id, cfg.flags, boot_arg, tsc_khz)?;
        let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        boot::setup_sregs(&mut sregs, space.cr3(), features.nx, space.la57());
        vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        let regs = boot::entry_regs(space.kernel.entry, BOOT_STACK_TOP, boot_gva);
        vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        let watchdog = watchdog::Watchdog::start()
            .map_err(|e| kvm_err("signal handler")(kvm_ioctls::Error::new(e.errno())))?;
        let hc = Hypercalls {
            echo: cfg.echo_console,
            ..Hypercalls::default()
        };
        Ok(Vm {
            deferred: Default::default(),
            cfg: cfg.clone(),
            vm: std::sync::Arc::new(vm),
            vcpu,
            features,
            phys_bits,
            host,
            space,
            memslots,
            slots,
            flush_slot,
            s2ctl,
            hooks,
            hc,
            sync_regs,
            tsc_khz,
            watchdog,
            stepwise: false,
            run_state: RunState::default(),
            host_backing: Vec::new(),
            setup_us: t_start.elapsed().as_micros() as u64,
            t_start,
            memslot_us,
            at_sync: false,
            snap: snapshot::Track::default(),
        })
    }

    /// Run the guest until its next [`Exit`]. After an exit that ends the run (anything but
    /// `Ucall(Sync)` and `Mmio`), further calls return the same exit again.
    ///
    /// # Errors
    /// None today (KVM failures are [`Exit::Stopped`]); the `Result` leaves room for them.
    pub fn run(&mut self) -> Result<Exit, VmmError> {
        if let Some(done) = &self.run_state.finished {
            return Ok(done.clone());
        }
        self.watchdog.arm(self.cfg.timeout);
        let t0 = Instant::now();
        let exit = self.run_loop();
        self.run_state.run_time += t0.elapsed();
        self.watchdog.disarm();
        self.at_sync = matches!(exit, Exit::Ucall(Ucall::Sync(_)));
        if !exit.resumable() {
            self.run_state.finished = Some(exit.clone());
        }
        Ok(exit)
    }

    /// Set the four words the guest reads as `memvisor_guest_sdk::boot().arg` (boot info):
    /// values the host chose (addresses, sizes) for the guest code. Only before the first
    /// [`Vm::run`].
    ///
    /// # Errors
    /// [`VmOpError::Range`] once the guest has started.
    pub fn set_args(&mut self, arg: [u64; 4]) -> Result<(), VmOpError> {
        if self.run_state.first_entry_us.is_some() {
            return Err(VmOpError::Range {
                start: 0,
                len: 0,
                why: "the guest has started: boot arguments are read once",
            });
        }
        self.cfg.arg = arg;
        self.space
            .write_boot_info(
                memvisor_abi::scenario::id(&self.cfg.scenario),
                self.cfg.flags,
                arg,
                self.tsc_khz,
            )
            .map_err(|_| VmOpError::Status {
                status: memvisor_abi::Status::Fault,
            })?;
        Ok(())
    }

    /// Stop at every ucall and MMIO exit on [`Vm::run`] (`true`), or run to the end
    /// (`false`, the default of [`Vm::create`]).
    pub fn set_stepwise(&mut self, on: bool) {
        self.stepwise = on;
    }

    /// The guest's address space (read access: its RAM, zones, page tables, regions).
    pub fn space(&self) -> &AddressSpace {
        &self.space
    }

    /// The value the guest's pending (or next) MMIO read returns, little-endian, truncated to
    /// the access size (default all-ones, like an unclaimed bus).
    pub fn set_mmio_read(&mut self, value: u64) {
        self.run_state.mmio_read_value = value;
    }

    /// The host's fault log: faults served by demand paging (`kind` "lazy") and those the
    /// guest reported ("reported": caught by `expect_fault`, or unexpected), in order.
    pub fn faults(&self) -> &[crate::space::FaultRecord] {
        &self.space.faults
    }

    /// Exits so far by reason (`io_out`, `mmio`, `doorbell`, `pf_assist`, ...).
    pub fn exit_counts(&self) -> &BTreeMap<String, u64> {
        &self.run_state.exits
    }

    /// The guest's console output so far.
    pub fn console(&self) -> &str {
        &self.hc.console
    }

    /// Check every host invariant now (frames, page tables, regions; `crate::invariants`).
    ///
    /// # Errors
    /// The violations found.
    pub fn check_invariants(
        &self,
    ) -> Result<crate::invariants::InvariantReport, Vec<crate::invariants::Violation>> {
        crate::invariants::check(&self.space)
    }

    /// The guest's MAXPHYADDR (CPUID 0x8000_0008 EAX\[7:0\]).
    pub fn phys_bits(&self) -> u8 {
        self.phys_bits
    }

    /// The CPU features the guest sees (NX, 1 GiB pages, ...).
    pub fn features(&self) -> Features {
        self.features
    }

    /// `[start, end)` GVAs of the guest ELF's symbol `name` (`#[no_mangle]` functions keep
    /// their names), if its symbol table has it with a size.
    pub fn symbol(&self, name: &str) -> Option<std::ops::Range<u64>> {
        use object::{Object, ObjectSymbol};
        let file = object::File::parse(&*self.cfg.kernel).ok()?;
        let sym = file.symbols().find(|s| s.name() == Ok(name))?;
        Some(sym.address()..sym.address().checked_add(sym.size().max(1))?)
    }

    /// The full report (memslots, zones, page tables, fault log, stage-2 exits, exit counts,
    /// hypercalls, invariants at the end): consumes the VM.
    pub fn report(mut self) -> Report {
        let outcome = match self.run_state.finished.as_ref().and_then(Exit::outcome) {
            Some(o) => o,
            None => Outcome::UnexpectedExit("the host stopped before the guest ended".into()),
        };
        let registers = match outcome {
            Outcome::Exited(_) => None,
            _ => Registers::read(&self.vcpu),
        };
        let hc = std::mem::take(&mut self.hc);
        let mut report = Report::collect(RunRecord {
            scenario: self.cfg.scenario.clone(),
            mem_bytes: self.cfg.mem_bytes,
            timeout: self.cfg.timeout,
            space: &self.space,
            memslots: std::mem::take(&mut self.memslots),
            cpu: self.features,
            hypercalls: hc,
            exits: std::mem::take(&mut self.run_state.exits),
            exit_latency: std::mem::take(&mut self.run_state.latency),
            stage2: (
                std::mem::take(&mut self.run_state.stage2),
                self.run_state.stage2_total,
            ),
            stage2_report: self.s2ctl.take().map(|s| s.report),
            shadow_flushes: self.flush_slot.count,
            outcome,
            registers,
            timings: Timings {
                setup_us: self.setup_us,
                memslot_us: self.memslot_us,
                first_entry_us: self.run_state.first_entry_us.unwrap_or(self.setup_us),
                first_guest_instruction_us: self.run_state.first_guest_us,
                run_us: self.run_state.run_time.as_micros() as u64,
                total_us: self.t_start.elapsed().as_micros() as u64,
            },
            tsc_khz: self.tsc_khz,
            backend: Some(self.host),
        });
        report.restore = self.restore_stats();
        self.hooks.finish(&mut report);
        crate::invariants::finish(
            &mut report,
            &mut self.space,
            self.cfg.check_invariants,
            self.run_state.inv_checks,
        );
        report
    }
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

fn mem_err(e: crate::memory::MemoryError) -> VmmError {
    VmmError::Space(SpaceError::Memory(e))
}
