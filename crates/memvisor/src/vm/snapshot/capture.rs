//! Taking a snapshot: vCPU state after completing the pending exit, the pages to save, the
//! STATE section, the file (see the parent module's docs).

use super::*;

impl Vm {
    /// Write a full snapshot of the VM to `path` (temporary file + rename): its state and
    /// every RAM page ever written (see the module docs). Turns on dirty logging so that
    /// [`Vm::snapshot_incremental`] can follow.
    ///
    /// # Errors
    /// [`SnapError::NotAtSync`], [`SnapError::Unsupported`], [`SnapError::Kvm`],
    /// [`SnapError::File`] (I/O).
    pub fn snapshot(&mut self, path: &Path) -> Result<SnapshotInfo, SnapError> {
        let t0 = Instant::now();
        self.settle_slots()?;
        self.check_snapshottable()?;
        let cpu = self.capture_cpu()?;
        let mut gpas: BTreeSet<u64> = self.resident_pages();
        gpas.extend(self.snap.layer_pages.iter().copied());
        let pages = self.read_pages(&gpas, true)?;
        if let Some(h) = self.space.ram.uffd.as_ref() {
            h.take_touched();
        }
        // Start (or restart) the dirty log: the next incremental holds what changes from now.
        self.reset_dirty_log()?;
        self.write_snapshot(path, None, cpu, pages, t0)
    }

    /// Write an incremental snapshot to `path`: the state and the pages dirtied since the
    /// last snapshot of this VM (or its restore), layered on that snapshot.
    ///
    /// # Errors
    /// As [`Vm::snapshot`], and [`SnapError::NoBase`].
    pub fn snapshot_incremental(&mut self, path: &Path) -> Result<SnapshotInfo, SnapError> {
        let t0 = Instant::now();
        self.settle_slots()?;
        self.check_snapshottable()?;
        let Some(base) = self.snap.last_id else {
            return Err(SnapError::NoBase);
        };
        let cpu = self.capture_cpu()?;
        let gpas = if self.snap.dirty_on {
            let dirty = crate::stage2::read_dirty(&self.vm, &self.slots, &self.space)
                .map_err(|e| SnapError::Vmm(crate::vmm::VmmError::Space(e.into())))?;
            let mut gpas: BTreeSet<u64> = std::mem::take(&mut self.snap.stashed);
            gpas.extend(dirty.merged);
            gpas
        } else {
            // Restored and not yet snapshotted: every page the uffd handler served (or saw
            // discarded) since the restore; the others still equal the files below.
            self.uffd_touched()
        };
        let pages = self.read_pages(&gpas, false)?;
        self.reset_dirty_log()?;
        self.write_snapshot(path, Some(base), cpu, pages, t0)
    }

    /// Wait for a restore's deferred RAM memslots (the dirty log walks every RAM slot).
    fn settle_slots(&mut self) -> Result<(), SnapError> {
        self.deferred
            .settle()
            .map_err(|e| SnapError::Vmm(crate::vmm::VmmError::Space(e.into())))
    }

    fn check_snapshottable(&self) -> Result<(), SnapError> {
        if self.s2ctl.is_some() {
            return Err(SnapError::Unsupported {
                what: "stage-2 test ranges (per-page memslots)",
            });
        }
        if !self.host_backing.is_empty() {
            return Err(SnapError::Unsupported {
                what: "extra host memslots",
            });
        }
        if !self.hooks.snapshot_safe() {
            return Err(SnapError::Unsupported {
                what: "this scenario's host-side state",
            });
        }
        if !self.at_sync
            || self.run_state.finished.is_some()
            || self.run_state.pending_mmio_read.is_some()
        {
            return Err(SnapError::NotAtSync);
        }
        Ok(())
    }

    /// Complete the pending exit (immediate_exit), then read every vCPU register we restore.
    fn capture_cpu(&mut self) -> Result<CpuState, SnapError> {
        self.vcpu.set_kvm_immediate_exit(1);
        let r = self.vcpu.run().map(|_| ());
        self.vcpu.set_kvm_immediate_exit(0);
        match r {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                return Err(SnapError::Kvm {
                    what: "KVM_RUN (immediate exit)",
                    source: e,
                })
            }
            Ok(()) => {
                return Err(SnapError::Unsupported {
                    what: "a kernel that runs the guest despite kvm_run.immediate_exit",
                })
            }
        }
        let v = &self.vcpu;
        let regs = v.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = v.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let xsave = v.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        let xcrs = v.get_xcrs().ok();
        let events = v.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        let debugregs = v.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        let mp_state = v.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
        let cpuid = v
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let mut msrs = Vec::new();
        for index in SAVED_MSRS {
            let Ok(mut m) = Msrs::from_entries(&[kvm_msr_entry {
                index,
                ..Default::default()
            }]) else {
                continue;
            };
            if v.get_msrs(&mut m) == Ok(1) {
                msrs.push((index, m.as_slice()[0].data));
            }
        }
        Ok(CpuState {
            regs,
            sregs,
            xsave,
            xcrs,
            msrs,
            events,
            debugregs,
            mp_state,
            cpuid,
            tsc_khz: self.tsc_khz,
        })
    }

    /// GPAs of the pages the uffd handler served or saw discarded since the last call.
    fn uffd_touched(&self) -> BTreeSet<u64> {
        let Some(h) = self.space.ram.uffd.as_ref() else {
            return BTreeSet::new();
        };
        let hvas = h.take_touched();
        let mut out = BTreeSet::new();
        for r in self.space.ram.mem.iter() {
            let (h0, len, g0) = (r.as_ptr() as u64, r.len(), r.start_addr().0);
            out.extend(
                hvas.iter()
                    .filter(|&&h| h >= h0 && h - h0 < len)
                    .map(|&h| g0 + (h - h0)),
            );
        }
        out
    }

    /// GPAs of the RAM pages resident in the host mapping (`mincore`).
    fn resident_pages(&self) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for r in self.space.ram.mem.iter() {
            let pages = (r.len() / crate::uffd::PAGE) as usize;
            let mut vec = vec![0u8; pages];
            // SAFETY: [as_ptr, as_ptr + len) is one live mapping owned by guest RAM; mincore
            // only reads the page tables of it and writes `pages` bytes into `vec`.
            let rc =
                unsafe { libc::mincore(r.as_ptr().cast(), r.len() as usize, vec.as_mut_ptr()) };
            let base = r.start_addr().0;
            for (i, v) in vec.iter().enumerate() {
                // On failure, take every page (correct, only larger).
                if rc != 0 || v & 1 != 0 {
                    out.insert(base + i as u64 * crate::uffd::PAGE);
                }
            }
        }
        out
    }

    fn read_pages(&self, gpas: &BTreeSet<u64>, skip_zero: bool) -> Result<Pages, SnapError> {
        let mut out = Vec::with_capacity(gpas.len());
        for &gpa in gpas {
            let mut page = Box::new([0u8; 4096]);
            self.space
                .ram
                .mem
                .read_slice(&mut page[..], GuestAddress(gpa))
                .map_err(|_| SnapError::Read { gpa })?;
            if skip_zero && is_zero(&page[..]) {
                continue;
            }
            out.push((gpa, page));
        }
        Ok(out)
    }

    /// Turn on dirty logging (first time) or read and drop the log (later).
    fn reset_dirty_log(&mut self) -> Result<(), SnapError> {
        let e =
            |e: crate::memory::MemoryError| SnapError::Vmm(crate::vmm::VmmError::Space(e.into()));
        self.snap.stashed.clear();
        if self.snap.dirty_on {
            crate::stage2::read_dirty(&self.vm, &self.slots, &self.space).map_err(e)?;
        } else {
            crate::stage2::start_dirty(&self.vm, &mut self.slots, &self.space).map_err(e)?;
            self.snap.dirty_on = true;
        }
        Ok(())
    }

    fn write_snapshot(
        &mut self,
        path: &Path,
        base: Option<u64>,
        cpu: CpuState,
        pages: Pages,
        t0: Instant,
    ) -> Result<SnapshotInfo, SnapError> {
        let state = VmStateOut {
            version: STATE_VERSION,
            config: ConfigState {
                mem_bytes: self.cfg.mem_bytes,
                scenario_name: self.cfg.scenario.clone(),
                flags: self.cfg.flags,
                arg: self.cfg.arg,
                zone_preset: self.cfg.zone_preset,
                check_invariants: self.cfg.check_invariants,
                stepwise: self.stepwise,
            },
            cpu,
            // Every memslot as KVM has it now (flags show dirty logging; the flush slot too).
            memslots: self
                .slots
                .slots()
                .map(|m| (m.slot, m.gpa, m.size, m.flags))
                .collect(),
            space: self.space.save_state(),
            book: self.book(),
        };
        let mut blob = Vec::new();
        ciborium::into_writer(&state, &mut blob).map_err(|e| SnapError::State {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        let refs: Vec<(u64, &[u8; 4096])> = pages.iter().map(|(g, p)| (*g, &**p)).collect();
        let id = Identity::of(self.cfg.mem_bytes, &self.cfg.kernel);
        let new_id = snapshot::write(path, id, base, &blob, &refs)?;
        self.snap.last_id = Some(new_id);
        Ok(SnapshotInfo {
            id: new_id,
            base_id: base,
            pages: pages.len() as u64,
            state_bytes: blob.len() as u64,
            elapsed: t0.elapsed(),
        })
    }

    fn book(&self) -> Book {
        let hc = &self.hc;
        Book {
            by_call: hc
                .by_call
                .iter()
                .map(|(k, s)| (k.to_string(), s.count, s.errors, s.total_ns))
                .collect(),
            by_status: hc
                .by_status
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            bad_blocks: hc.bad_blocks,
            blocks: hc.blocks,
            console: hc.console.clone(),
            records: hc.records.clone(),
            exits: self.run_state.exits.clone(),
            stage2: self
                .run_state
                .stage2
                .iter()
                .map(|f| Stage2State {
                    gpa: f.gpa,
                    size: f.size,
                    write: f.write,
                    value: f.value,
                    rip: f.rip,
                    rip_source: f.rip_source.map(str::to_string),
                    exit_rip: f.exit_rip,
                    lazy_backed: f.lazy_backed,
                })
                .collect(),
            stage2_total: self.run_state.stage2_total,
            flushes: self.flush_slot.count,
            inv_checks: self.run_state.inv_checks,
            first_guest_us: self.run_state.first_guest_us,
        }
    }
}
