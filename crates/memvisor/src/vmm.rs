//! The VMM: the configuration of a run, [`run`] / [`run_scenario`] (a built-in scenario or any
//! kernel, run to its end, one [`Report`]), and the vCPU loop they share with the step-wise
//! [`crate::vm::Vm`] (which creates the VM and builds the guest's address space).
//!
//! Exits handled (KVM API doc §5, `struct kvm_run`): `KVM_EXIT_IO` (hypercall port, null
//! port, COM1), `KVM_EXIT_MMIO` (a GPA with no memslot: a stage-2 fault, reported with GPA,
//! size, direction and RIP; reads return all-ones), `KVM_EXIT_HLT`, `KVM_EXIT_SHUTDOWN`
//! (triple fault), `KVM_EXIT_FAIL_ENTRY`, `KVM_EXIT_INTERNAL_ERROR`. A watchdog kicks a
//! runaway vCPU out of `KVM_RUN` with a signal after `timeout`.

use crate::frames::ZonePreset;
use crate::hypercall::Flow;
use crate::report::{Outcome, Report, Stage2Fault};
use crate::space::{AddressSpace, SpaceError};
use crate::vm::{Exit, Vm};
use kvm_ioctls::VcpuExit;
use memvisor_abi::{ucall, PORT_HYPERCALL, PORT_NULL, PORT_PF_ASSIST, PORT_SERIAL};
use std::time::{Duration, Instant};
use thiserror::Error;

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

/// What to run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// The kernel ELF.
    pub kernel: Vec<u8>,
    /// Scenario name (`memvisor_cli::registry::REGISTRY`; the guest gets its
    /// [`memvisor_abi::scenario::id`]); `"sdk"` for a guest built on the SDK's entry macro.
    pub scenario: String,
    /// Boot flags (ABI `flags`).
    pub flags: u32,
    /// Scenario arguments.
    pub arg: [u64; 4],
    /// Wall-clock limit for the guest's run.
    pub timeout: Duration,
    /// Zone layout.
    pub zone_preset: ZonePreset,
    /// Echo the guest's console output live, and where (default off).
    pub echo_console: crate::hypercall::ConsoleEcho,
    /// Check the host invariants ([`crate::invariants::check`]) after every hypercall batch;
    /// a violation ends the run (outcome `invariant_violation`, exit code 1).
    pub check_invariants: bool,
    /// Back guest RAM through userfaultfd (`--uffd`; [`crate::uffd`]).
    pub uffd: bool,
    /// RAM backing (anonymous or shared memory), the GPA ranges userfaultfd serves with
    /// `uffd` (empty: all of RAM) and the shared-memory prefill (`--ram-backing`,
    /// `--uffd-range`, `--uffd-prefill`).
    pub ram: crate::uffd::RamOptions,
    /// Extra read-only and lazy guest-physical ranges in the stage-2 window
    /// ([`crate::stage2::Extras`]; `VmBuilder::read_only_range`, `lazy_range`).
    pub stage2_extras: crate::stage2::Extras,
}

impl Default for VmConfig {
    /// 256 MiB, the `demo` scenario, the embedded guest, Linux x86-64 zones, 30 s timeout,
    /// quiet console, no invariant checks, no userfaultfd.
    fn default() -> Self {
        VmConfig {
            mem_bytes: crate::layout::DEFAULT_MEM_SIZE,
            kernel: crate::guest_image::GUEST_ELF.to_vec(),
            scenario: "demo".into(),
            flags: 0,
            arg: [0; 4],
            timeout: Duration::from_secs(30),
            zone_preset: ZonePreset::X86_64,
            echo_console: crate::hypercall::ConsoleEcho::Off,
            check_invariants: false,
            uffd: false,
            ram: crate::uffd::RamOptions::default(),
            stage2_extras: crate::stage2::Extras::default(),
        }
    }
}

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
    if let Err(e) = flush_slot.flush_owed(vm, slots, space.take_shadow_flush()) {
        return Some(Outcome::KvmError(e.to_string()));
    }
    None
}

/// Boot and run a guest with the default host side ([`crate::scenario::DefaultHooks`]: no
/// scenario-specific state); returns its report (also for guest failures: see
/// [`Report::outcome`]). A built-in scenario with a host side of its own (`fault-matrix`,
/// `stage2`, ...) runs through `memvisor_cli::registry::run`, or [`run_scenario`] with its hooks.
///
/// # Errors
/// [`VmmError`] when the VM cannot be created or the guest cannot be built.
pub fn run(cfg: &VmConfig) -> Result<Report, VmmError> {
    run_scenario(cfg, crate::scenario::default_hooks())
}

/// [`run`] with the scenario's host side given (e.g. carrying data for the guest, as
/// `memvisor replay` does): create the VM, run the loop to the guest's end, report.
///
/// # Errors
/// As [`run`]; a bad stage-2 range is a [`VmmError::Space`].
pub fn run_scenario(
    cfg: &VmConfig,
    hooks: Box<dyn crate::scenario::Scenario>,
) -> Result<Report, VmmError> {
    let mut vm = Vm::create(cfg, hooks, None)?;
    // Not step-wise: the loop runs to the end of the guest (sync points resume at once,
    // MMIO reads return all-ones).
    vm.run()?;
    Ok(vm.report())
}

/// A stage-2 access the loop saw: (GPA, size, write, value, served by a lazy memslot).
type Mmio = (u64, u32, bool, u64, bool);

impl Vm {
    /// The vCPU loop: run until the guest ends or, in step-wise mode, until a ucall or an
    /// MMIO exit the host should see.
    pub(crate) fn run_loop(&mut self) -> Exit {
        let stepwise = self.stepwise;
        if let Some(len) = self.run_state.pending_mmio_read.take() {
            let v = self.run_state.mmio_read_value.to_le_bytes();
            let n = len.min(8);
            // SAFETY: the last exit was KVM_EXIT_MMIO, so `mmio` is the active member of the
            // kvm_run exit union; KVM copies `data` into the guest's register at KVM_RUN.
            unsafe {
                self.vcpu.get_kvm_run().__bindgen_anon_1.mmio.data[..n].copy_from_slice(&v[..n])
            };
        }
        loop {
            if self.run_state.first_entry_us.is_none() {
                self.run_state.first_entry_us = Some(self.t_start.elapsed().as_micros() as u64);
            }
            if self.watchdog.timed_out() {
                return Exit::Timeout;
            }
            if let Some((reason, t)) = self.run_state.last_exit.take() {
                self.run_state.latency.record(&reason, t.elapsed());
            }
            // Frames handed out since the restore by a host edit the run loop did not see
            // (the `Vm` API's mmap between runs): wait for the deferred memslots first.
            if let Err(e) = self.deferred.after_host_edit(&self.space) {
                return Exit::Stopped(Outcome::KvmError(e.to_string()));
            }
            let exit = self.vcpu.run();
            let t_ret = Instant::now();
            if self.run_state.first_exit_us.is_none() {
                self.run_state.first_exit_us = Some(self.t_start.elapsed().as_micros() as u64);
                log::debug!("first exit after {:?} us", self.run_state.first_exit_us);
                // A restore's deferred RAM memslots: registered from now, beside the guest.
                self.deferred.start();
            }
            let exits = &mut self.run_state.exits;
            let last_exit = &mut self.run_state.last_exit;
            let mut bump = |name: &str| {
                *exits.entry(name.to_string()).or_default() += 1;
                *last_exit = Some((name.to_string(), t_ret));
            };
            let mut mmio: Option<Mmio> = None;
            // A request block to serve (port-IO hypercall from ring 0, doorbell from ring 3).
            let mut block: Option<u64> = None;
            // A not-present #PF the guest's entry sent straight to the host.
            let mut pf_assist = false;
            let stop = match exit {
                Ok(VcpuExit::IoOut(PORT_PF_ASSIST, _)) => {
                    bump("pf_assist");
                    pf_assist = true;
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    bump("io_out");
                    match port {
                        PORT_HYPERCALL if data.len() == 4 => {
                            let gpa =
                                u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as u64;
                            block = Some(gpa);
                        }
                        PORT_NULL => {
                            if self.run_state.first_guest_us.is_none() {
                                self.run_state.first_guest_us =
                                    Some(self.t_start.elapsed().as_micros() as u64);
                            }
                        }
                        PORT_SERIAL => {
                            let s = String::from_utf8_lossy(data).into_owned();
                            self.hc.console.push_str(&s);
                        }
                        _ => bump("io_out_unknown_port"),
                    }
                    None
                }
                Ok(VcpuExit::IoIn(_, data)) => {
                    bump("io_in");
                    data.fill(0xff);
                    None
                }
                // RAM whose memslot a restore is still registering: complete the access.
                Ok(VcpuExit::MmioRead(addr, data))
                    if self.deferred.covers(addr, data.len() as u64) =>
                {
                    match self.deferred.complete(&self.space.ram, addr, data, false) {
                        Ok(()) => continue,
                        Err(e) => Some(Outcome::KvmError(e.to_string())),
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data))
                    if self.deferred.covers(addr, data.len() as u64) =>
                {
                    let mut v = [0u8; 8];
                    let n = data.len().min(8);
                    v[..n].copy_from_slice(&data[..n]);
                    match self
                        .deferred
                        .complete(&self.space.ram, addr, &mut v[..n], true)
                    {
                        Ok(()) => continue,
                        Err(e) => Some(Outcome::KvmError(e.to_string())),
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    bump("mmio");
                    let lazy = match self.s2ctl.as_mut() {
                        Some(s) => s.on_mmio(&self.vm, &mut self.slots, addr, data, false),
                        None => Ok(false),
                    };
                    match lazy {
                        Ok(lazy) => {
                            if !lazy {
                                data.fill(0xff);
                            }
                            mmio = Some((addr, data.len() as u32, false, 0, lazy));
                            None
                        }
                        Err(e) => Some(Outcome::KvmError(e.to_string())),
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, _)) if addr == memvisor_abi::NULL_DOORBELL_GPA => {
                    bump("null_doorbell");
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data))
                    if addr == memvisor_abi::DOORBELL_GPA && data.len() == 8 =>
                {
                    bump("doorbell");
                    let mut v = [0u8; 8];
                    v.copy_from_slice(data);
                    block = Some(u64::from_le_bytes(v));
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    bump("mmio");
                    let mut v = [0u8; 8];
                    let n = data.len().min(8);
                    v[..n].copy_from_slice(&data[..n]);
                    let mut copy = v;
                    let lazy = match self.s2ctl.as_mut() {
                        Some(s) => s.on_mmio(&self.vm, &mut self.slots, addr, &mut copy[..n], true),
                        None => Ok(false),
                    };
                    match lazy {
                        Ok(lazy) => {
                            mmio =
                                Some((addr, data.len() as u32, true, u64::from_le_bytes(v), lazy));
                            None
                        }
                        Err(e) => Some(Outcome::KvmError(e.to_string())),
                    }
                }
                Ok(VcpuExit::Hlt) => {
                    bump("hlt");
                    Some(Outcome::Halted)
                }
                Ok(VcpuExit::Shutdown) => {
                    bump("shutdown");
                    Some(Outcome::TripleFault)
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    bump("fail_entry");
                    Some(Outcome::FailEntry { reason, cpu })
                }
                Ok(VcpuExit::InternalError) => {
                    bump("internal_error");
                    Some(Outcome::InternalError)
                }
                Ok(other) => {
                    bump("other");
                    Some(Outcome::UnexpectedExit(format!("{other:?}")))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    bump("intr");
                    continue;
                }
                Err(e) => Some(Outcome::KvmError(e.to_string())),
            };
            if let Some(o) = stop {
                return Exit::from_outcome(o);
            }
            if pf_assist {
                if let Err(e) =
                    crate::pf_assist::on_exit(&mut self.vcpu, self.sync_regs, &mut self.space)
                {
                    return Exit::Stopped(Outcome::KvmError(e.to_string()));
                }
                if let Some(stop) = self.after_host_edit() {
                    return Exit::from_outcome(stop);
                }
            }
            if let Some(gpa) = block {
                let mut side = crate::stage2::VmmSide {
                    vm: &self.vm,
                    slots: &mut self.slots,
                    stage2: self.s2ctl.as_mut(),
                    hooks: &mut *self.hooks,
                };
                let flow = self.hc.handle_with(&mut self.space, gpa, &mut side);
                if let Some(stop) = self.after_host_edit() {
                    return Exit::from_outcome(stop);
                }
                match flow {
                    Flow::Continue => {}
                    Flow::Exit(code) => return Exit::Exited(code),
                    Flow::Panic(msg) => return Exit::GuestPanic(msg),
                    Flow::Ucall(rec) => {
                        let exit = Exit::from_record(&rec);
                        if stepwise || rec.kind != ucall::SYNC {
                            return exit;
                        }
                    }
                }
            }
            if let Some((gpa, size, write, value, lazy_backed)) = mmio {
                self.run_state.stage2_total += 1;
                if self.run_state.stage2.len() < STAGE2_LOG_MAX {
                    // KVM has not yet completed a read (RIP is the instruction's); it has
                    // completed a write and advanced RIP past it (see `Stage2Fault::rip`).
                    let regs = self.vcpu.get_regs().ok();
                    let exit_rip = regs.map(|r| r.rip);
                    let (rip, rip_source) = match (write, regs) {
                        (false, Some(r)) => (Some(r.rip), Some("exit")),
                        (true, Some(r)) => {
                            match crate::stage2::write_instruction(&self.space, &r, gpa, size) {
                                Some(start) => (Some(start), Some("decoded")),
                                None => (None, None),
                            }
                        }
                        (_, None) => (None, None),
                    };
                    self.run_state.stage2.push(Stage2Fault {
                        gpa,
                        size,
                        write,
                        value: if write { Some(value) } else { None },
                        rip,
                        rip_source,
                        exit_rip,
                        lazy_backed,
                    });
                }
                if stepwise && !lazy_backed {
                    if !write {
                        self.run_state.pending_mmio_read = Some(size as usize);
                    }
                    return Exit::Mmio {
                        gpa,
                        size,
                        write,
                        data: if write { value } else { 0 },
                    };
                }
            }
        }
    }

    fn after_host_edit(&mut self) -> Option<Outcome> {
        if let Err(e) = self.deferred.after_host_edit(&self.space) {
            return Some(Outcome::KvmError(e.to_string()));
        }
        after_host_edit(
            self.cfg.check_invariants,
            &mut self.run_state.inv_checks,
            &mut self.flush_slot,
            &self.vm,
            &mut self.slots,
            &mut self.space,
        )
    }
}
