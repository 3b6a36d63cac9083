//! The VMM: create the VM, build the guest's address space, run the vCPU loop, and collect
//! a [`Report`].
//!
//! Exits handled (KVM API doc §5, `struct kvm_run`): `KVM_EXIT_IO` (hypercall port, null
//! port, COM1), `KVM_EXIT_MMIO` (a GPA with no memslot: a stage-2 fault, reported with GPA,
//! size, direction and RIP; reads return all-ones), `KVM_EXIT_HLT`, `KVM_EXIT_SHUTDOWN`
//! (triple fault), `KVM_EXIT_FAIL_ENTRY`, `KVM_EXIT_INTERNAL_ERROR`. A watchdog kicks a
//! runaway vCPU out of `KVM_RUN` with a signal after `timeout`.

use crate::boot::{self, cpuid::Features};
use crate::frames::ZonePreset;
use crate::hypercall::{Flow, Hypercalls};
use crate::layout::BOOT_STACK_TOP;
use crate::report::{Outcome, Registers, Report, Stage2Fault};
use crate::space::{AddressSpace, SpaceError};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuExit};
use memvisor_abi::{PORT_HYPERCALL, PORT_NULL, PORT_PF_ASSIST, PORT_SERIAL};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use vm_memory::GuestMemoryBackend;

/// Most stage-2 faults kept in the report (later ones are counted).
pub const STAGE2_LOG_MAX: usize = 1024;

/// Errors that stop the VMM before or outside the guest's run.
#[derive(Debug, Error)]
pub enum VmmError {
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm: {source} (fix: load the kvm module and make sure this user can read and write /dev/kvm, e.g. add it to the 'kvm' group)")]
    NoKvm {
        /// The open error.
        source: kvm_ioctls::Error,
    },
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// Building the guest failed.
    #[error(transparent)]
    Space(#[from] SpaceError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// The kernel ELF.
    pub kernel: Vec<u8>,
    /// Scenario number (ABI `scenario`).
    pub scenario: u32,
    /// Scenario name for the report.
    pub scenario_name: String,
    /// Boot flags (ABI `flags`).
    pub flags: u32,
    /// Scenario arguments.
    pub arg: [u64; 4],
    /// Wall-clock limit for the guest's run.
    pub timeout: Duration,
    /// Zone layout.
    pub zone_preset: ZonePreset,
    /// Echo the guest's console output live (stdout, or stderr in JSON mode).
    pub echo_console: bool,
    /// Check the host invariants ([`crate::invariants::check`]) after every hypercall batch;
    /// a violation ends the run (outcome `invariant_violation`, exit code 1).
    pub check_invariants: bool,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Signal used to kick the vCPU out of KVM_RUN.
/// After the VMM edited the guest's memory or page tables (a hypercall batch, a #PF assist):
/// check the invariants if asked, and flush KVM's shadow pages if a mapping was removed or
/// reduced. `Some` is how the run ends when either fails.
fn after_host_edit(
    check_invariants: bool,
    inv_checks: &mut u64,
    flush_slot: &mut crate::backend::FlushSlot,
    vm: &kvm_ioctls::VmFd,
    slots: &mut crate::memory::Memslots,
    space: &mut AddressSpace,
) -> Option<Outcome> {
    if let Err(v) = crate::invariants::after_batch(check_invariants, space, inv_checks) {
        return Some(Outcome::InvariantViolation(v));
    }
    if let Err(e) = flush_slot.flush_if_needed(vm, slots, space) {
        return Some(Outcome::KvmError(e.to_string()));
    }
    None
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// Boot and run a guest; returns its report (also for guest failures: see
/// [`Report::outcome`]).
///
/// # Errors
/// [`VmmError`] when the VM cannot be created or the guest cannot be built.
pub fn run(cfg: &VmConfig) -> Result<Report, VmmError> {
    run_with(cfg, &crate::stage2::Extras::default())
}

/// [`run`] with extra read-only and lazy guest-physical ranges (see
/// [`crate::stage2::Extras`]).
///
/// # Errors
/// As [`run`]; a bad range is a [`VmmError::Space`].
pub fn run_with(cfg: &VmConfig, extras: &crate::stage2::Extras) -> Result<Report, VmmError> {
    let t_start = Instant::now();
    let kvm = Kvm::new().map_err(|source| VmmError::NoKvm { source })?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let features = Features::from_cpuid(&cpuid);
    let host = crate::backend::HostInfo::new(
        crate::backend::Backend::detect(),
        crate::backend::maxphyaddr(&cpuid),
    );
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
    let fault_matrix = cfg.scenario == memvisor_abi::scenario::FAULT_MATRIX;
    let mut space = AddressSpace::build_with(
        cfg.mem_bytes,
        &cfg.kernel,
        cfg.zone_preset,
        features,
        crate::space::BuildOptions {
            no_nx: fault_matrix,
        },
    )?;
    let mut boot_arg = cfg.arg;
    let matrix = if fault_matrix {
        let (run, plan_gva) = crate::matrix::setup(&mut space, host.maxphyaddr)?;
        boot_arg[0] = plan_gva;
        Some(run)
    } else {
        None
    };
    let t_slots = Instant::now();
    let memslots = space
        .ram
        .register(&vm)
        .map_err(|e| VmmError::Space(SpaceError::Memory(e)))?;
    let mut slots = crate::memory::Memslots::new(kvm.get_nr_memslots());
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
    let mut flush_slot = crate::backend::FlushSlot::new(&vm, &mut slots, host.shadow_paging)
        .map_err(|e| VmmError::Space(SpaceError::Memory(e)))?;
    let mut s2ctl = if cfg.scenario == memvisor_abi::scenario::STAGE2 || !extras.is_empty() {
        Some(crate::stage2::Stage2::setup(
            &kvm, &vm, &mut slots, &mut space, extras, &phys,
        )?)
    } else {
        None
    };
    log::debug!("setup: memslots registered after {:?}", t_start.elapsed());
    use kvm_bindings::{KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
    let mut vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    // KVM_CAP_SYNC_REGS: KVM copies the GPRs and sregs into kvm_run on every exit, so the #PF
    // assist exit reads RSP and CR2 without a KVM_GET_REGS / KVM_GET_SREGS ioctl (each costs
    // ~7 µs on PVM) and sets RIP through kvm_dirty_regs.
    let sync_mask = kvm.check_extension_int(kvm_ioctls::Cap::SyncRegs) as u32;
    let sync_regs = sync_mask & (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS)
        == (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
    if sync_regs {
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
    }
    // TSC frequency: CPUID 0x15 if it has it, else KVM_GET_TSC_KHZ, else calibrate.
    let tsc_khz = if features.tsc_khz != 0 {
        features.tsc_khz
    } else {
        match vcpu.get_tsc_khz() {
            Ok(k) if k > 0 => k as u64,
            _ => boot::cpuid::calibrate_tsc_khz(),
        }
    };
    if cfg.scenario == memvisor_abi::scenario::STAGE2 {
        boot_arg[1] = phys.stage2_base;
    }
    let boot_gva = space.write_boot_info(cfg.scenario, cfg.flags, boot_arg, tsc_khz)?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    boot::setup_sregs(&mut sregs, space.cr3(), features.nx);
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let regs = boot::entry_regs(space.kernel.entry, BOOT_STACK_TOP, boot_gva);
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;

    // Watchdog: after the timeout, kick the vCPU thread until the loop notices.
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
        .map_err(|e| kvm_err("signal handler")(kvm_ioctls::Error::new(e.errno())))?;
    let timed_out = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let watchdog = {
        let (timed_out, done, timeout) = (timed_out.clone(), done.clone(), cfg.timeout);
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !done.load(Ordering::SeqCst) {
                if t0.elapsed() >= timeout {
                    timed_out.store(true, Ordering::SeqCst);
                    // SAFETY: `me` is the vCPU thread, alive until `done` is set; the signal
                    // has a no-op handler installed, so it only interrupts KVM_RUN.
                    unsafe { libc::pthread_kill(me, kick_signal()) };
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let setup_us = t_start.elapsed().as_micros() as u64;
    let mut hc = Hypercalls {
        echo: cfg.echo_console,
        matrix,
        ..Hypercalls::default()
    };
    let mut exits: BTreeMap<String, u64> = BTreeMap::new();
    let mut stage2: Vec<Stage2Fault> = Vec::new();
    let mut stage2_total = 0u64;
    let mut inv_checks = 0u64;
    let mut latency = crate::report::ExitLatency::default();
    let mut last_exit: Option<(String, Instant)> = None;
    let t_run = Instant::now();
    let mut first_entry_us = None;
    let mut first_guest_us = None;
    let outcome = loop {
        if first_entry_us.is_none() {
            first_entry_us = Some(t_start.elapsed().as_micros() as u64);
        }
        if timed_out.load(Ordering::SeqCst) {
            break Outcome::Timeout;
        }
        if let Some((reason, t)) = last_exit.take() {
            latency.record(&reason, t.elapsed());
        }
        let exit = vcpu.run();
        let t_ret = Instant::now();
        let mut bump = |name: &str| {
            *exits.entry(name.to_string()).or_default() += 1;
            last_exit = Some((name.to_string(), t_ret));
        };
        let mut mmio: Option<(u64, u32, bool, u64, bool)> = None;
        // A request block to serve (port-IO hypercall from ring 0, doorbell from ring 3).
        let mut block: Option<u64> = None;
        // A not-present #PF the guest's entry sent straight to the host.
        let mut pf_assist = false;
        match exit {
            Ok(VcpuExit::IoOut(PORT_PF_ASSIST, _)) => {
                bump("pf_assist");
                pf_assist = true;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                bump("io_out");
                match port {
                    PORT_HYPERCALL if data.len() == 4 => {
                        let gpa = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as u64;
                        block = Some(gpa);
                    }
                    PORT_NULL => {
                        if first_guest_us.is_none() {
                            first_guest_us = Some(t_start.elapsed().as_micros() as u64);
                        }
                    }
                    PORT_SERIAL => {
                        let s = String::from_utf8_lossy(data).into_owned();
                        hc.console.push_str(&s);
                    }
                    _ => bump("io_out_unknown_port"),
                }
            }
            Ok(VcpuExit::IoIn(_, data)) => {
                bump("io_in");
                data.fill(0xff);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                bump("mmio");
                let lazy = match s2ctl.as_mut() {
                    Some(s) => match s.on_mmio(&vm, &mut slots, addr, data, false) {
                        Ok(h) => h,
                        Err(e) => break Outcome::KvmError(e.to_string()),
                    },
                    None => false,
                };
                if !lazy {
                    data.fill(0xff);
                }
                mmio = Some((addr, data.len() as u32, false, 0, lazy));
            }
            Ok(VcpuExit::MmioWrite(addr, _)) if addr == memvisor_abi::NULL_DOORBELL_GPA => {
                bump("null_doorbell");
            }
            Ok(VcpuExit::MmioWrite(addr, data))
                if addr == memvisor_abi::DOORBELL_GPA && data.len() == 8 =>
            {
                bump("doorbell");
                let mut v = [0u8; 8];
                v.copy_from_slice(data);
                block = Some(u64::from_le_bytes(v));
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                bump("mmio");
                let mut v = [0u8; 8];
                let n = data.len().min(8);
                v[..n].copy_from_slice(&data[..n]);
                let mut copy = v;
                let lazy = match s2ctl.as_mut() {
                    Some(s) => match s.on_mmio(&vm, &mut slots, addr, &mut copy[..n], true) {
                        Ok(h) => h,
                        Err(e) => break Outcome::KvmError(e.to_string()),
                    },
                    None => false,
                };
                mmio = Some((addr, data.len() as u32, true, u64::from_le_bytes(v), lazy));
            }
            Ok(VcpuExit::Hlt) => {
                bump("hlt");
                break Outcome::Halted;
            }
            Ok(VcpuExit::Shutdown) => {
                bump("shutdown");
                break Outcome::TripleFault;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                bump("fail_entry");
                break Outcome::FailEntry { reason, cpu };
            }
            Ok(VcpuExit::InternalError) => {
                bump("internal_error");
                break Outcome::InternalError;
            }
            Ok(other) => {
                bump("other");
                break Outcome::UnexpectedExit(format!("{other:?}"));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                bump("intr");
                continue;
            }
            Err(e) => break Outcome::KvmError(e.to_string()),
        }
        if pf_assist {
            match crate::pf_assist::on_exit(&mut vcpu, sync_regs, &mut space) {
                Ok(_) => {}
                Err(e) => break Outcome::KvmError(e.to_string()),
            }
            if let Some(stop) = after_host_edit(
                cfg.check_invariants,
                &mut inv_checks,
                &mut flush_slot,
                &vm,
                &mut slots,
                &mut space,
            ) {
                break stop;
            }
        }
        if let Some(gpa) = block {
            let mut side = crate::stage2::VmmSide {
                vm: &vm,
                slots: &mut slots,
                stage2: s2ctl.as_mut(),
            };
            let flow = hc.handle_with(&mut space, gpa, &mut side);
            if let Some(stop) = after_host_edit(
                cfg.check_invariants,
                &mut inv_checks,
                &mut flush_slot,
                &vm,
                &mut slots,
                &mut space,
            ) {
                break stop;
            }
            match flow {
                Flow::Continue => {}
                Flow::Exit(code) => break Outcome::Exited(code),
                Flow::Panic(msg) => break Outcome::Panicked(msg),
            }
        }
        if let Some((gpa, size, write, value, lazy_backed)) = mmio {
            stage2_total += 1;
            if stage2.len() < STAGE2_LOG_MAX {
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                stage2.push(Stage2Fault {
                    gpa,
                    size,
                    write,
                    value: if write { Some(value) } else { None },
                    rip,
                    lazy_backed,
                });
            }
        }
    };
    let run_us = t_run.elapsed().as_micros() as u64;
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    let registers = match outcome {
        Outcome::Exited(_) => None,
        _ => Registers::read(&vcpu),
    };
    let mut report = Report::collect(
        cfg,
        &space,
        memslots,
        features,
        hc,
        exits,
        stage2,
        stage2_total,
        flush_slot.count,
        outcome,
        registers,
        crate::report::Timings {
            setup_us,
            memslot_us,
            first_entry_us: first_entry_us.unwrap_or(setup_us),
            first_guest_instruction_us: first_guest_us,
            run_us,
            total_us: t_start.elapsed().as_micros() as u64,
        },
        tsc_khz,
        latency,
        s2ctl.map(|s| s.report),
    );
    report.backend = Some(host);
    crate::invariants::finish(&mut report, &mut space, cfg.check_invariants, inv_checks);
    Ok(report)
}
