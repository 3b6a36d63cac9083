//! Restoring a snapshot in this process: validate the files, decode the state, register RAM
//! with userfaultfd served from the files, build memslots and the vCPU, load its state.

use super::*;
use kvm_ioctls::VmFd;

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
        // Lazy restore: guest RAM is mapped and KVM's VM created now; RAM is cut into
        // `eager_chunk` chunks, and only the memslots of the chunks holding a page of the
        // files (everything the guest ever wrote: page tables, kernel image, descriptor
        // tables, stacks, data) are registered before the first KVM_RUN, on another thread
        // while this one verifies the pages, decodes the state, rebuilds the address space
        // and creates and loads the vCPU. A page-table walk or instruction fetch into a GPA
        // without a memslot is no exit the VMM can complete, so those chunks are eager; the
        // other chunks hold only never-written (zero) RAM and their memslots follow on a
        // background thread (`deferred`): KVM_SET_USER_MEMORY_REGION of a big slot
        // allocates KVM's per-memslot metadata (under shadow paging the rmap and
        // write-tracking arrays, ~10 bytes per 4 KiB page), the part of a restore that grows
        // with RAM. The files' headers, identity and index were validated above, and a file
        // error found here wins over a KVM error, so bad input is reported as before.
        let ram = GuestRam::new(mem_bytes)
            .map_err(|e| SnapError::Vmm(crate::vmm::VmmError::Space(e.into())))?;
        let kvm_vm = open_vm();
        log::debug!(
            "restore: RAM mapped, KVM VM created after {:?}",
            t_start.elapsed()
        );
        let limit = kvm_vm.as_ref().map_or(0, |(k, _)| k.get_nr_memslots());
        let held: Vec<u64> = layers.iter().flat_map(|l| l.gpas()).collect();
        let (eager, late) = super::deferred::lazy_plan(&ram, &held, opts.eager_chunk, limit);
        let shadow = crate::backend::Backend::detect().shadow_paging();
        let (prepared, vcpu, slots) = std::thread::scope(|s| {
            let thread = kvm_vm.as_ref().ok().map(|(kvm_fd, vm)| {
                std::thread::Builder::new()
                    .name("memvisor-memslots".into())
                    .spawn_scoped(s, || register_ram(kvm_fd, vm, &eager, &late, shadow))
            });
            let prepared = prepare(top, &layers, mem_bytes, ram, &opts, t_start);
            let vcpu = match (&prepared, &kvm_vm) {
                (Ok(p), Ok((kvm_fd, vm))) => Some(make_vcpu(kvm_fd, vm, &p.cpu)),
                _ => None,
            };
            log::debug!("restore: vCPU loaded after {:?}", t_start.elapsed());
            let slots = match (thread, &kvm_vm) {
                (Some(Ok(t)), _) => Some(t.join().unwrap_or(Err(SnapError::Unsupported {
                    what: "a failed memslot thread",
                }))),
                // No thread (out of threads): register here, after the rest.
                (Some(Err(e)), Ok((kvm_fd, vm))) => {
                    log::debug!("restore: memslots inline ({e})");
                    Some(register_ram(kvm_fd, vm, &eager, &late, shadow))
                }
                _ => None,
            };
            (prepared, vcpu, slots)
        });
        // On an error the VM is dropped before any KVM_RUN: KVM never touched the host ranges
        // of its memslots, which `prepare` may have unmapped already.
        let prepared = prepared?;
        let (_kvm, vm) = kvm_vm?;
        let (Some(vcpu), Some(slots)) = (vcpu, slots) else {
            return Err(SnapError::Unsupported {
                what: "no vCPU or memslots",
            });
        };
        let (vcpu, sync_regs) = vcpu?;
        let slots = slots?;
        log::debug!(
            "restore: eager memslots ready after {:?} ({:x?} in {} us on their thread; deferred {:x?})",
            t_start.elapsed(),
            eager.iter().map(|(m, _)| (m.gpa, m.size)).collect::<Vec<_>>(),
            slots.memslot_us,
            late.iter().map(|(m, _)| (m.gpa, m.size)).collect::<Vec<_>>(),
        );
        let vm = Arc::new(vm);
        // SAFETY: the deferred slots' host ranges are guest RAM's mappings, now owned by
        // `prepared.space`; the `Vm` built below owns both and drops `Deferred` (joining its
        // thread) before its address space.
        let deferred = unsafe { Deferred::new(vm.clone(), late, opts.defer_delay) };
        let early = EarlyVm {
            vm,
            vcpu,
            sync_regs,
            slots,
            deferred,
        };
        prepared.finish(kernel, opts, layers.len(), early, mem_bytes, t_start)
    }

    /// Microseconds from the start of [`Vm::restore`] (or [`Vm::new`]) to the first return
    /// of `KVM_RUN`: the guest has executed (an upper bound of "to the first guest
    /// instruction"); `None` before the first run.
    pub fn first_exit_us(&self) -> Option<u64> {
        self.run_state.first_exit_us
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
            deferred_accesses: self.deferred.accesses,
            frame_waits: self.deferred.frame_waits,
        })
    }
}

/// KVM's VM with guest RAM's eager memslots registered (the deferred ones on their way) and
/// the vCPU loaded.
struct EarlyVm {
    vm: Arc<VmFd>,
    vcpu: VcpuFd,
    /// `KVM_CAP_SYNC_REGS` is on for the vCPU.
    sync_regs: bool,
    slots: Slots,
    deferred: Deferred,
}

/// Open KVM and create the VM (no memslot, no vCPU yet).
fn open_vm() -> Result<(Kvm, VmFd), SnapError> {
    let kvm_fd = Kvm::new().map_err(|source| crate::vmm::VmmError::NoKvm { source })?;
    let vm = kvm_fd.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
    Ok((kvm_fd, vm))
}

/// The memslots of a restored VM: guest RAM's and the flush slot.
struct Slots {
    memslots: Vec<Memslot>,
    slots: Memslots,
    flush_slot: FlushSlot,
    /// Microseconds the RAM memslots took to register.
    memslot_us: u64,
}

/// Register the eager RAM memslots `plan` with `vm`, then the flush slot (with shadow
/// paging); the registry also lists the `deferred` slots (registered later by
/// [`Deferred`]), so no other slot takes their numbers or GPAs.
fn register_ram(
    kvm_fd: &Kvm,
    vm: &VmFd,
    plan: &[(Memslot, u64)],
    deferred: &[(Memslot, u64)],
    shadow_paging: bool,
) -> Result<Slots, SnapError> {
    let mem_err =
        |e: crate::memory::MemoryError| SnapError::Vmm(crate::vmm::VmmError::Space(e.into()));
    let t_slots = Instant::now();
    // SAFETY: the plan's host ranges are guest RAM's mappings. On success they belong to the
    // restored VM's address space, which the `Vm` drops after its KVM VM (as for a new VM);
    // on failure the VM is dropped before any KVM_RUN, and no vCPU run means KVM never
    // accesses a memslot's host range.
    let mut memslots = unsafe { crate::memory::register_plan(vm, plan) }.map_err(mem_err)?;
    let memslot_us = t_slots.elapsed().as_micros() as u64;
    let mut slots = Memslots::new(kvm_fd.get_nr_memslots());
    for &(m, hva) in plan.iter().chain(deferred) {
        slots.track(m, hva);
    }
    memslots.extend(deferred.iter().map(|(m, _)| *m));
    memslots.sort_by_key(|m| m.slot);
    let flush_slot = FlushSlot::new(vm, &mut slots, shadow_paging).map_err(mem_err)?;
    Ok(Slots {
        memslots,
        slots,
        flush_slot,
        memslot_us,
    })
}

/// Create vCPU 0 and load the saved state into it (its registers do not depend on the
/// memslots, which may still be registering: no KVM_RUN before they are).
fn make_vcpu(kvm_fd: &Kvm, vm: &VmFd, cpu: &CpuState) -> Result<(VcpuFd, bool), SnapError> {
    let cpuid = cpuid_of(cpu)?;
    let mut vcpu = vm.create_vcpu(0).map_err(kvm("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    let sync_regs = super::super::enable_sync_regs(kvm_fd, &mut vcpu);
    load_cpu(&vcpu, cpu)?;
    Ok((vcpu, sync_regs))
}

fn cpuid_of(cpu: &CpuState) -> Result<CpuId, SnapError> {
    CpuId::from_entries(&cpu.cpuid).map_err(|_| SnapError::State {
        path: String::new(),
        why: "CPUID table too large".into(),
    })
}

/// What a restore rebuilt from the files before the vCPU exists.
struct Prepared {
    config: ConfigState,
    cpu: CpuState,
    book: Book,
    space: AddressSpace,
    hc: Hypercalls,
    layer_pages: BTreeSet<u64>,
    newest_id: u64,
    counters: Arc<SourceCounters>,
}

/// Verify the layers' pages (if asked), decode the newest layer's state, register `ram` with
/// userfaultfd served from the layers and rebuild the address space on it.
fn prepare(
    top: &Path,
    layers: &[Arc<Snapshot>],
    mem_bytes: u64,
    mut ram: GuestRam,
    opts: &RestoreOptions,
    t_start: Instant,
) -> Result<Prepared, SnapError> {
    if opts.verify_pages {
        for l in layers {
            l.verify_pages()?;
        }
    }
    log::debug!("restore: files verified after {:?}", t_start.elapsed());
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
    let ranges: Vec<(u64, u64, u64)> = ram
        .mem
        .iter()
        .map(|r| (r.as_ptr() as u64, r.start_addr().0, r.len()))
        .collect();
    let source = SnapshotSource::new(layers.to_vec(), ranges);
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
    // The saved memslots inside each RAM range of this VM cover it (one slot per range, or
    // a lazy restore's eager and deferred chunks: KVM's slots never overlap).
    let covered = |g: u64, n: u64| {
        let end = g.saturating_add(n);
        let sum = state
            .memslots
            .iter()
            .filter(|m| m.1 >= g && m.1.checked_add(m.2).is_some_and(|e| e <= end))
            .fold(0u64, |acc, m| acc.saturating_add(m.2));
        sum == n
    };
    if !space.ram.ram.iter().all(|&(g, n)| covered(g.raw(), n)) {
        return Err(bad("RAM memslots differ from this VM's".into()));
    }
    log::debug!("restore: address space after {:?}", t_start.elapsed());
    Ok(Prepared {
        config: state.config,
        cpu: state.cpu,
        book: state.book,
        space,
        hc,
        layer_pages,
        newest_id: newest.id,
        counters,
    })
}

impl Prepared {
    /// Create the vCPU on `early`'s VM, load its state and the report's counters.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        self,
        kernel: Vec<u8>,
        opts: RestoreOptions,
        layers: usize,
        early: EarlyVm,
        mem_bytes: u64,
        t_start: Instant,
    ) -> Result<Vm, SnapError> {
        let Prepared {
            config,
            cpu,
            book,
            space,
            hc,
            layer_pages,
            newest_id,
            counters,
        } = self;
        let cfg = VmConfig {
            mem_bytes,
            kernel,
            scenario: config.scenario_name,
            flags: config.flags,
            arg: config.arg,
            timeout: opts.timeout,
            zone_preset: config.zone_preset,
            echo_console: opts.echo_console,
            check_invariants: config.check_invariants,
            uffd: true,
            ..VmConfig::default()
        };
        let hooks = (opts.hooks)(&cfg.scenario);
        let mut vm = build(cfg, space, hc, hooks, &cpu, early, t_start)?;
        vm.deferred.watch(&vm.space);
        vm.stepwise = config.stepwise;
        vm.run_state.exits = book.exits;
        vm.run_state.stage2 = book
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
        vm.run_state.stage2_total = book.stage2_total;
        vm.flush_slot.count += book.flushes;
        vm.run_state.inv_checks = book.inv_checks;
        vm.at_sync = true;
        vm.snap = Track {
            last_id: Some(newest_id),
            dirty_on: false,
            stashed: BTreeSet::new(),
            layer_page_count: layer_pages.len() as u64,
            layers: layers as u64,
            layer_pages,
            source: Some(counters),
        };
        vm.setup_us = t_start.elapsed().as_micros() as u64;
        Ok(vm)
    }
}

/// The restored VM around its address space, KVM VM and loaded vCPU (adds the flush slot).
fn build(
    cfg: VmConfig,
    space: AddressSpace,
    hc: Hypercalls,
    hooks: Box<dyn crate::scenario::Scenario>,
    cpu: &CpuState,
    early: EarlyVm,
    t_start: Instant,
) -> Result<Vm, SnapError> {
    let EarlyVm {
        vm,
        vcpu,
        sync_regs,
        deferred,
        slots:
            Slots {
                memslots,
                slots,
                flush_slot,
                memslot_us,
            },
    } = early;
    let cpuid = cpuid_of(cpu)?;
    // The features the VM was built with (what its report and page-table choices used).
    let features = space.features;
    let host = HostInfo::new(
        crate::backend::Backend::detect(),
        crate::backend::maxphyaddr(&cpuid),
    );
    let watchdog = crate::vm::watchdog::Watchdog::start()
        .map_err(|e| kvm("signal handler")(kvm_ioctls::Error::new(e.errno())))?;
    Ok(Vm {
        deferred,
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
        run_state: RunState::default(),
        host_backing: Vec::new(),
        t_start,
        setup_us: 0,
        memslot_us,
        at_sync: true,
        snap: Track::default(),
    })
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
