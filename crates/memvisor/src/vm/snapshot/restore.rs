//! Restoring a snapshot in this process: validate the files, decode the state, register RAM
//! with userfaultfd served from the files, build memslots and the vCPU, load its state.

use super::*;

/// `name` as one of the `&'static str` names `names` yields.
fn intern(name: &str, names: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    names.into_iter().find(|n| *n == name)
}

fn call_names() -> impl Iterator<Item = &'static str> {
    (0..=255u32)
        .filter_map(memvisor_abi::Call::from_u32)
        .map(memvisor_abi::Call::name)
        .chain(["unknown"])
}

fn status_names() -> impl Iterator<Item = &'static str> {
    (-255..=255i32)
        .filter_map(memvisor_abi::Status::from_i32)
        .map(memvisor_abi::Status::name)
}

impl Book {
    fn take_hypercalls(&mut self, echo: crate::hypercall::ConsoleEcho) -> Option<Hypercalls> {
        let mut hc = Hypercalls {
            bad_blocks: self.bad_blocks,
            blocks: self.blocks,
            console: std::mem::take(&mut self.console),
            records: std::mem::take(&mut self.records),
            echo,
            ..Hypercalls::default()
        };
        for (k, count, errors, total_ns) in std::mem::take(&mut self.by_call) {
            hc.by_call.insert(
                intern(&k, call_names())?,
                CallStats {
                    count,
                    errors,
                    total_ns,
                },
            );
        }
        for (k, v) in std::mem::take(&mut self.by_status) {
            hc.by_status.insert(intern(&k, status_names())?, v);
        }
        Some(hc)
    }
}

impl Vm {
    /// Restore a VM from the snapshot `top` (a full snapshot, or an incremental layer on
    /// `base`) for the guest kernel `kernel`, in this process: guest RAM is registered with
    /// userfaultfd and each page is read from the files on its first touch (the newest layer
    /// holding it wins; pages in no layer are zero). The VM continues from the sync point at
    /// the next [`Vm::run`]. Everything is validated before the vCPU exists.
    ///
    /// # Errors
    /// [`SnapError::File`] for a truncated, corrupt, wrong-version, wrong-size or
    /// other-kernel file (or a layer on another base), [`SnapError::State`],
    /// [`SnapError::NoUffd`] without userfaultfd, [`SnapError::Kvm`] / [`SnapError::Vmm`].
    pub fn restore(
        top: &Path,
        base: Option<&Path>,
        kernel: Vec<u8>,
        opts: RestoreOptions,
    ) -> Result<Vm, SnapError> {
        let t_start = Instant::now();
        let mem_bytes = match opts.mem_bytes {
            Some(m) => m,
            None => snapshot::read_identity(base.unwrap_or(top))?.mem_bytes,
        };
        let want = Identity::of(mem_bytes, &kernel);
        let layers: Vec<Arc<Snapshot>> = match base {
            None => vec![Arc::new(Snapshot::open(top, want)?)],
            Some(b) => {
                let b = Snapshot::open(b, want)?;
                let t = Snapshot::open_layer(top, want, b.id)?;
                vec![Arc::new(b), Arc::new(t)]
            }
        };
        if opts.verify_pages {
            for l in &layers {
                l.verify_pages()?;
            }
        }
        log::debug!(
            "restore: files open and verified after {:?}",
            t_start.elapsed()
        );
        let Some(newest) = layers.last().cloned() else {
            return Err(SnapError::NoBase);
        };
        let bad = |why: String| SnapError::State {
            path: top.display().to_string(),
            why,
        };
        let mut state: VmState =
            ciborium::from_reader(&newest.state[..]).map_err(|e| bad(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(bad(format!(
                "state version {}, this memvisor reads {STATE_VERSION}",
                state.version
            )));
        }
        if state.config.mem_bytes != mem_bytes {
            return Err(bad("RAM size differs from the header's".into()));
        }
        log::debug!("restore: state decoded after {:?}", t_start.elapsed());
        let mut ram = GuestRam::new(mem_bytes)
            .map_err(|e| SnapError::Vmm(crate::vmm::VmmError::Space(e.into())))?;
        let ranges: Vec<(u64, u64, u64)> = ram
            .mem
            .iter()
            .map(|r| (r.as_ptr() as u64, r.start_addr().0, r.len()))
            .collect();
        let source = SnapshotSource::new(layers.clone(), ranges);
        let counters = source.counters.clone();
        ram.attach_uffd(Box::new(source))
            .map_err(SnapError::NoUffd)?;
        if let Some(h) = ram.uffd.as_ref() {
            // An incremental snapshot of the restored VM needs every page served since now.
            h.track_touched();
        }
        log::debug!("restore: RAM + uffd after {:?}", t_start.elapsed());
        let layer_pages: BTreeSet<u64> = layers.iter().flat_map(|l| l.gpas()).collect();
        let hc = state
            .book
            .take_hypercalls(opts.echo_console)
            .ok_or_else(|| bad("unknown hypercall or status name".into()))?;
        let space = AddressSpace::from_state(ram, state.space)
            .ok_or_else(|| bad("unknown fault-log kind".into()))?;
        // Every RAM range of this VM is one of the saved memslots (same GPA and size).
        let saved: Vec<(u64, u64)> = state.memslots.iter().map(|m| (m.1, m.2)).collect();
        if !space
            .ram
            .ram
            .iter()
            .all(|&(g, n)| saved.contains(&(g.raw(), n)))
        {
            return Err(bad("RAM memslots differ from this VM's".into()));
        }
        let cfg = VmConfig {
            mem_bytes,
            kernel,
            scenario: state.config.scenario_name,
            flags: state.config.flags,
            arg: state.config.arg,
            timeout: opts.timeout,
            zone_preset: state.config.zone_preset,
            echo_console: opts.echo_console,
            check_invariants: state.config.check_invariants,
            uffd: true,
            ..VmConfig::default()
        };
        let hooks = (opts.hooks)(&cfg.scenario);
        let mut vm = build(cfg, space, hc, hooks, &state.cpu, t_start)?;
        vm.stepwise = state.config.stepwise;
        vm.exits = state.book.exits;
        vm.stage2 = state
            .book
            .stage2
            .into_iter()
            .map(|f| Stage2Fault {
                gpa: f.gpa,
                size: f.size,
                write: f.write,
                value: f.value,
                rip: f.rip,
                rip_source: f
                    .rip_source
                    .and_then(|s| intern(&s, ["exit", "decoded"].into_iter())),
                exit_rip: f.exit_rip,
                lazy_backed: f.lazy_backed,
            })
            .collect();
        vm.stage2_total = state.book.stage2_total;
        vm.flush_slot.count += state.book.flushes;
        vm.inv_checks = state.book.inv_checks;
        vm.at_sync = true;
        vm.snap = Track {
            last_id: Some(newest.id),
            dirty_on: false,
            stashed: BTreeSet::new(),
            layer_page_count: layer_pages.len() as u64,
            layers: layers.len() as u64,
            layer_pages,
            source: Some(counters),
        };
        vm.setup_us = t_start.elapsed().as_micros() as u64;
        Ok(vm)
    }

    /// Microseconds from the start of [`Vm::restore`] (or [`Vm::new`]) to the first return
    /// of `KVM_RUN`: the guest has executed (an upper bound of "to the first guest
    /// instruction"); `None` before the first run.
    pub fn first_exit_us(&self) -> Option<u64> {
        self.first_exit_us
    }

    /// What this VM read from its snapshot files so far (a restored VM), else `None`.
    pub fn restore_stats(&self) -> Option<RestoreStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let c = self.snap.source.as_ref()?;
        Some(RestoreStats {
            pages_read: c.pages_read.load(Relaxed),
            file_pages: self.snap.layer_page_count,
            corrupt_pages: c.corrupt.load(Relaxed),
            layers: self.snap.layers,
            restore_us: self.setup_us,
        })
    }
}

/// Create the KVM VM and vCPU around a restored address space and load the vCPU state.
fn build(
    cfg: VmConfig,
    space: AddressSpace,
    hc: Hypercalls,
    hooks: Box<dyn crate::scenario::Scenario>,
    cpu: &CpuState,
    t_start: Instant,
) -> Result<Vm, SnapError> {
    let kvm_fd = Kvm::new().map_err(|source| crate::vmm::VmmError::NoKvm { source })?;
    let vm = kvm_fd.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
    let cpuid = CpuId::from_entries(&cpu.cpuid).map_err(|_| SnapError::State {
        path: String::new(),
        why: "CPUID table too large".into(),
    })?;
    // The features the VM was built with (what its report and page-table choices used).
    let features = space.features;
    let host = HostInfo::new(
        crate::backend::Backend::detect(),
        crate::backend::maxphyaddr(&cpuid),
    );
    let mem_err =
        |e: crate::memory::MemoryError| SnapError::Vmm(crate::vmm::VmmError::Space(e.into()));
    let t_slots = Instant::now();
    let memslots: Vec<Memslot> = space.ram.register(&vm).map_err(mem_err)?;
    let mut slots = Memslots::new(kvm_fd.get_nr_memslots());
    for m in &memslots {
        let hva = space
            .ram
            .mem
            .get_host_address(GuestAddress(m.gpa))
            .map(|p| p as u64)
            .unwrap_or(0);
        slots.track(*m, hva);
    }
    let memslot_us = t_slots.elapsed().as_micros() as u64;
    log::debug!("restore: memslots after {:?}", t_start.elapsed());
    let flush_slot = FlushSlot::new(&vm, &mut slots, host.shadow_paging).map_err(mem_err)?;
    let mut vcpu = vm.create_vcpu(0).map_err(kvm("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    let sync_regs = enable_sync_regs(&kvm_fd, &mut vcpu);
    load_cpu(&vcpu, cpu)?;
    log::debug!("restore: vCPU loaded after {:?}", t_start.elapsed());
    let watchdog = crate::vm::watchdog::Watchdog::start()
        .map_err(|e| kvm("signal handler")(kvm_ioctls::Error::new(e.errno())))?;
    Ok(Vm {
        cfg,
        vm,
        vcpu,
        features,
        phys_bits: host.maxphyaddr,
        host,
        space,
        memslots,
        slots,
        flush_slot,
        s2ctl: None,
        hc,
        hooks,
        sync_regs,
        tsc_khz: cpu.tsc_khz,
        watchdog,
        stepwise: false,
        exits: BTreeMap::new(),
        stage2: Vec::new(),
        stage2_total: 0,
        inv_checks: 0,
        latency: ExitLatency::default(),
        last_exit: None,
        pending_mmio_read: None,
        mmio_read_value: u64::MAX,
        finished: None,
        host_backing: Vec::new(),
        t_start,
        setup_us: 0,
        memslot_us,
        first_entry_us: None,
        first_exit_us: None,
        first_guest_us: None,
        run_time: Duration::ZERO,
        at_sync: true,
        snap: Track::default(),
    })
}

fn enable_sync_regs(kvm_fd: &Kvm, vcpu: &mut VcpuFd) -> bool {
    use kvm_bindings::{KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
    let mask = kvm_fd.check_extension_int(kvm_ioctls::Cap::SyncRegs) as u32;
    let ok =
        mask & (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS) == (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
    if ok {
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
    }
    ok
}

/// Load the saved vCPU state (Firecracker's order: MSRs after CPUID, then registers, special
/// registers, XSAVE, XCRs, debug registers, MP state, events).
fn load_cpu(vcpu: &VcpuFd, cpu: &CpuState) -> Result<(), SnapError> {
    let entries: Vec<kvm_msr_entry> = cpu
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    if !entries.is_empty() {
        let msrs = Msrs::from_entries(&entries).map_err(|_| SnapError::State {
            path: String::new(),
            why: "too many MSRs".into(),
        })?;
        let n = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if n != entries.len() {
            return Err(SnapError::Kvm {
                what: "KVM_SET_MSRS (an MSR was refused)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
    }
    vcpu.set_sregs(&cpu.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&cpu.regs).map_err(kvm("KVM_SET_REGS"))?;
    // SAFETY: `kvm_xsave` is the legacy 4 KiB XSAVE area KVM_GET_XSAVE returned (the
    // `xsave2` variant with a larger area is not used), so KVM reads no more than its size.
    unsafe { vcpu.set_xsave(&cpu.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    if let Some(x) = &cpu.xcrs {
        vcpu.set_xcrs(x).map_err(kvm("KVM_SET_XCRS"))?;
    }
    vcpu.set_debug_regs(&cpu.debugregs)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    vcpu.set_mp_state(cpu.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    vcpu.set_vcpu_events(&cpu.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
