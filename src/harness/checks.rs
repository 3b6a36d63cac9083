//! The checks after every step: the host's invariants, the host's regions, mapped pages and
//! protection against the model's, and the kernel's read-only segments byte for byte.

use super::{Harness, HarnessError};
use memvisor::addr::{Gva, PAGE_SIZE};
use memvisor::invariants::check;
use memvisor::layout::{MMAP_WINDOW_END, MMAP_WINDOW_START};
use std::collections::BTreeSet;
use vm_memory::{Bytes, GuestAddress};

impl Harness {
    pub(super) fn window_pages(&self) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        let len = MMAP_WINDOW_END - MMAP_WINDOW_START;
        if let Ok(leaves) = self.space.page_tables().leaves_in_range(
            &self.space.ram().mem,
            Gva::new(MMAP_WINDOW_START),
            len,
        ) {
            for l in leaves {
                let mut g = l.gva.raw();
                while g < l.gva.raw() + l.size.bytes() {
                    out.insert(g);
                    g += PAGE_SIZE;
                }
            }
        }
        out
    }

    /// Checks after every step: invariants, and the model against the host (the kernel's
    /// read-only segments are compared in [`Self::finish`]).
    ///
    /// # Errors
    /// What broke.
    pub fn after_step(&mut self) -> Result<(), HarnessError> {
        self.steps += 1;
        // Every step must leave KVM's shadow flush decision to the VMM; here (no KVM) the owed
        // flush is discarded.
        self.space.take_shadow_flush().discard();
        if let Err(v) = check(&self.space) {
            let lines: Vec<String> = v.iter().take(8).map(|x| x.to_string()).collect();
            return Err(format!("invariants broken:\n  {}", lines.join("\n  ")));
        }
        // Model: the same regions, the same mapped pages, the same protection.
        let host: Vec<(u64, u64)> = self
            .space
            .regions()
            .values()
            .map(|r| (r.start, r.end))
            .collect();
        let model: Vec<(u64, u64)> = self
            .model
            .regions
            .iter()
            .map(|(&s, r)| (s, r.end))
            .collect();
        if host != model {
            return Err(format!(
                "regions differ: host {host:#x?}, model {model:#x?}"
            ));
        }
        let pages = self.window_pages();
        if pages != self.model.backed {
            let extra: Vec<_> = pages.difference(&self.model.backed).take(4).collect();
            let missing: Vec<_> = self.model.backed.difference(&pages).take(4).collect();
            return Err(format!(
                "mapped pages differ: host-only {extra:#x?}, model-only {missing:#x?}"
            ));
        }
        for (s, r) in &self.model.regions {
            let Some(h) = self.space.regions().get(s) else {
                continue;
            };
            for &g in self.model.backed.range(*s..r.end) {
                if h.prot_at(g).bits() != r.prot_at(g) {
                    return Err(format!(
                        "protection at {g:#x}: host {:#x}, model {:#x}",
                        h.prot_at(g).bits(),
                        r.prot_at(g)
                    ));
                }
            }
        }
        Ok(())
    }

    /// The kernel's read-only segments are unchanged since the harness was built.
    ///
    /// # Errors
    /// Which segment changed.
    pub fn kernel_intact(&self) -> Result<(), HarnessError> {
        for (gpa, bytes) in &self.ro_image {
            let mut now = vec![0u8; bytes.len()];
            let same = self
                .space
                .ram()
                .mem
                .read_slice(&mut now, GuestAddress(*gpa))
                .is_ok()
                && now == *bytes;
            if !same {
                return Err(format!(
                    "the kernel's read-only segment at GPA {gpa:#x} changed"
                ));
            }
        }
        Ok(())
    }
}
