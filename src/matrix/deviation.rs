//! Known deviations of emulated hosts from the SDM (`memvisor run --known-deviation NAME`).
//!
//! The oracle stays the SDM: by default a deviating case is a failure. Naming a known
//! deviation re-classifies exactly the failing cases that differ in the documented way — every
//! other observation equal — as `deviation`, counted apart from pass, fail and skipped. Any
//! other mismatch stays a failure.

use super::oracle;
use super::passes::PassSpec;
use super::results::{CaseResult, CaseStatus, MatrixReport};
use super::tables::TestVa;
use memvisor_abi::matrix::NOT_FAULTED;
use std::sync::Arc;
use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviationError {
    /// The name is not a known deviation.
    #[error("unknown deviation {name:?} (known: {known})")]
    Unknown {
        /// The name given.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
}

/// A documented departure of an emulated CPU from the SDM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownDeviation {
    /// QEMU TCG (7.2) reports a reserved-bit #PF with error code RSVD but without P (e.g.
    /// 0x8 where SDM Vol. 3A §4.7 gives 0x9: a reserved bit is only checked in a present
    /// entry, so P is always 1). Re-classified: the oracle's error code has P and RSVD, the
    /// guest saw exactly that code without P, and CR2, the record and the leaf afterwards
    /// match.
    QemuTcgRsvdP,
    /// QEMU TCG (7.2) sets the accessed flag in a 1 GiB leaf (a PDPTE with PS = 1) when
    /// the access then faults on its rights: its walk sets A in each PDPTE before it knows
    /// the entry is a leaf (`mmu_translate`), while the SDM's and hardware's leaf is left as
    /// it was on a fault (what kvm-unit-tests' `access.c` checks too). Re-classified: a
    /// 1 GiB-leaf case whose oracle says protection fault (P = 1, RSVD = 0, leaf unchanged),
    /// with the error code, CR2 and record as expected and the leaf afterwards equal to the
    /// leaf before with exactly A added.
    QemuTcg1gA,
    /// QEMU TCG (7.2) lets an implicit supervisor-mode read at CPL 0 with RFLAGS.AC = 1
    /// under CR4.SMAP reach a user-mode page (`cpu_mmu_index_kernel`: CPL < 3 with AC set
    /// picks the no-SMAP MMU index), while SDM Vol. 3A §4.6.1 forbids implicit reads of
    /// user-mode addresses whatever AC says. Re-classified: an implicit-read case
    /// ([`oracle::Access::Desc`]) of a CPL 0 pass with SMAP and AC whose oracle says fault,
    /// observed exactly as the oracle expects an *explicit* CPL 0 read with AC = 1 (no
    /// fault, the leaf afterwards with A added), record as expected.
    QemuTcgImplicitAc,
    /// Bochs (2.7) lets an implicit supervisor-mode read under CR4.SMAP reach a user-mode
    /// page whenever RFLAGS.AC = 1, at CPL 0 and at CPL 3 (its page walk skips the SMAP
    /// check when AC is set, without asking whether the access is implicit); SDM Vol. 3A
    /// §4.6.1 forbids implicit reads of user-mode addresses whatever AC says. The same rule
    /// as [`KnownDeviation::QemuTcgImplicitAc`], at either CPL.
    BochsImplicitAc,
}

impl KnownDeviation {
    /// Every known deviation.
    pub const ALL: [KnownDeviation; 4] = [
        KnownDeviation::QemuTcgRsvdP,
        KnownDeviation::QemuTcg1gA,
        KnownDeviation::QemuTcgImplicitAc,
        KnownDeviation::BochsImplicitAc,
    ];

    /// Its option value.
    pub fn name(self) -> &'static str {
        match self {
            KnownDeviation::QemuTcgRsvdP => "qemu-tcg-rsvd-p",
            KnownDeviation::QemuTcg1gA => "qemu-tcg-1g-a",
            KnownDeviation::QemuTcgImplicitAc => "qemu-tcg-implicit-ac",
            KnownDeviation::BochsImplicitAc => "bochs-implicit-ac",
        }
    }

    /// One line saying what it is (the `deviation_by` key).
    pub fn what(self) -> &'static str {
        match self {
            KnownDeviation::QemuTcgRsvdP => {
                "qemu-tcg-rsvd-p: reserved-bit #PF reported without P (QEMU TCG; SDM Vol. 3A §4.7 sets P)"
            }
            KnownDeviation::QemuTcg1gA => {
                "qemu-tcg-1g-a: A set in a 1 GiB leaf by an access that faults on its rights (QEMU TCG; SDM Vol. 3A §4.8 leaves the leaf)"
            }
            KnownDeviation::QemuTcgImplicitAc => {
                "qemu-tcg-implicit-ac: implicit supervisor read of a user page allowed at CPL 0 with RFLAGS.AC = 1 under CR4.SMAP (QEMU TCG; SDM Vol. 3A §4.6.1 faults whatever AC says)"
            }
            KnownDeviation::BochsImplicitAc => {
                "bochs-implicit-ac: implicit supervisor read of a user page allowed with RFLAGS.AC = 1 under CR4.SMAP, CPL 0 or 3 (Bochs; SDM Vol. 3A §4.6.1 faults whatever AC says)"
            }
        }
    }

    /// Parse an option value.
    ///
    /// # Errors
    /// [`DeviationError::Unknown`].
    pub fn parse(name: &str) -> Result<Self, DeviationError> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| DeviationError::Unknown {
                name: name.to_string(),
                known: Self::ALL.map(|d| d.name()).join(", "),
            })
    }

    /// True if failing case `r` (test VA `t` in pass `spec`, leaf `leaf_raw` as built, at
    /// MAXPHYADDR `phys_bits`) deviates exactly this way.
    pub fn explains_case(
        self,
        t: &TestVa,
        spec: &PassSpec,
        phys_bits: u8,
        leaf_raw: u64,
        r: &CaseResult,
    ) -> bool {
        let (w, n) = t.walk();
        let walk = &w[..n];
        let expected =
            oracle::expect_walk(walk, n as u8, spec.access, spec.cpl, spec.mode, phys_bits);
        let any_cpl = match self {
            KnownDeviation::QemuTcgImplicitAc => false,
            KnownDeviation::BochsImplicitAc => true,
            _ => return self.explains(t.leaf_level, t.va, &expected, leaf_raw, r),
        };
        if spec.access != oracle::Access::Desc
            || (spec.cpl != 0 && !any_cpl)
            || !(spec.mode.smap && spec.mode.ac)
            || expected.fault.is_none()
            || !r.record_ok
        {
            return false;
        }
        let explicit =
            oracle::expect_walk(walk, n as u8, oracle::Access::Read, 0, spec.mode, phys_bits);
        explicit.fault.is_none()
            && r.err == NOT_FAULTED
            && r.cr2 == NOT_FAULTED
            && r.pte_after == leaf_raw | (explicit.leaf_after & 0x60)
    }

    /// True if a failing case deviates exactly this way (the rules that need only the
    /// oracle's answer; the `*-implicit-ac` ones need the pass: [`Self::explains_case`]).
    /// `leaf_level` is the test VA's leaf level, `expected` the oracle's answer for it,
    /// `leaf_raw` its leaf as built; `va` its VA; `r` what the guest and host observed.
    pub fn explains(
        self,
        leaf_level: u8,
        va: u64,
        expected: &oracle::Expect,
        leaf_raw: u64,
        r: &CaseResult,
    ) -> bool {
        const P: u64 = 1;
        const RSVD: u64 = 1 << 3;
        const A: u64 = 0x20;
        if !r.record_ok || r.cr2 != va {
            return false;
        }
        let leaf_as_expected = r.pte_after == leaf_raw | (expected.leaf_after & 0x60);
        match self {
            KnownDeviation::QemuTcgRsvdP => {
                leaf_as_expected
                    && expected
                        .fault
                        .is_some_and(|e| e & (P | RSVD) == (P | RSVD) && r.err == e & !P)
            }
            KnownDeviation::QemuTcg1gA => {
                leaf_level == 3
                    && expected
                        .fault
                        .is_some_and(|e| e & (P | RSVD) == P && r.err == e)
                    && leaf_raw & A == 0
                    && expected.leaf_after & 0x60 == 0
                    && r.pte_after == leaf_raw | A
            }
            KnownDeviation::QemuTcgImplicitAc | KnownDeviation::BochsImplicitAc => false,
        }
    }
}

impl MatrixReport {
    /// Re-classify the failing cases `dev` explains as [`CaseStatus::Deviation`] and update
    /// the totals (`fail` down, `deviation` up, `deviation_by`, the first failures).
    pub fn apply_known_deviation(&mut self, dev: KnownDeviation) {
        let phys_bits = self.summary.phys_bits;
        let data = Arc::make_mut(&mut self.data);
        let mut moved = 0u64;
        let cases: Vec<(usize, usize)> = data.cases().collect();
        for (r, &(p, k)) in data.results.iter_mut().zip(&cases) {
            if r.status != CaseStatus::Fail {
                continue;
            }
            let (t, spec) = (&data.vas[k], &data.passes[p]);
            let Some(&raw) = data.leaf_raw.get(k) else {
                continue;
            };
            if dev.explains_case(t, spec, phys_bits, raw, r) {
                r.status = CaseStatus::Deviation;
                moved += 1;
            }
        }
        if moved == 0 {
            return;
        }
        let s = &mut data.summary;
        s.fail -= moved;
        s.deviation += moved;
        *s.deviation_by.entry(dev.what().to_string()).or_default() += moved;
        let failures = data
            .rows()
            .filter(|r| r.status == CaseStatus::Fail)
            .take(20)
            .map(|r| r.to_tsv())
            .collect();
        data.summary.failures = failures;
        self.summary = data.summary.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_the_exact_rule() {
        assert_eq!(
            KnownDeviation::parse("qemu-tcg-rsvd-p"),
            Ok(KnownDeviation::QemuTcgRsvdP)
        );
        assert!(KnownDeviation::parse("qemu").is_err());
        assert_eq!(
            KnownDeviation::parse("qemu-tcg-1g-a"),
            Ok(KnownDeviation::QemuTcg1gA)
        );
        let d = KnownDeviation::QemuTcgRsvdP;
        let va = 0x2000_0000_0000;
        let leaf = 0x0131_4007;
        let seen = |err: u64, pte_after: u64| CaseResult {
            cr2: va,
            err,
            pte_after,
            record_ok: true,
            status: CaseStatus::Fail,
        };
        let fault = |e: u64| oracle::Expect {
            fault: Some(e),
            leaf_after: leaf,
        };
        let ok = |e: &oracle::Expect, err: u64| d.explains(1, va, e, leaf, &seen(err, leaf));
        // P | RSVD (| W | U | I/D) seen without P: explained.
        assert!(ok(&fault(0x9), 0x8));
        assert!(ok(&fault(0x1f), 0x1e));
        // Anything else is not.
        assert!(!ok(&fault(0x9), 0x9)); // a pass, not a deviation
        assert!(!ok(&fault(0x9), 0xa)); // another bit differs too
        assert!(!ok(&fault(0x9), 0x0));
        assert!(!ok(&fault(0x7), 0x6)); // not a reserved-bit fault
        let none = oracle::Expect {
            fault: None,
            leaf_after: leaf | 0x20,
        };
        assert!(!ok(&none, 0x8));
        assert!(!d.explains(1, va, &fault(0x9), leaf, &seen(0x8, leaf | 0x20))); // leaf differs

        // A 1 GiB leaf with A set by a faulting access: explained only for a 1 GiB leaf, a
        // protection fault with the exact error code, and exactly A added.
        let d = KnownDeviation::QemuTcg1gA;
        let g = 0x85; // P | US | PS
        let e = oracle::Expect {
            fault: Some(0x7),
            leaf_after: g,
        };
        assert!(d.explains(3, va, &e, g, &seen(0x7, g | 0x20)));
        assert!(!d.explains(1, va, &e, g, &seen(0x7, g | 0x20))); // a 4 KiB leaf
        assert!(!d.explains(3, va, &e, g, &seen(0x5, g | 0x20))); // error code differs
        assert!(!d.explains(3, va, &e, g, &seen(0x7, g | 0x60))); // D too
        assert!(!d.explains(3, va, &e, g, &seen(0x7, g))); // a pass
        let rsvd = oracle::Expect {
            fault: Some(0xf),
            leaf_after: g,
        };
        assert!(!d.explains(3, va, &rsvd, g, &seen(0xf, g | 0x20))); // reserved-bit fault
        let mut wrong_cr2 = seen(0x7, g | 0x20);
        wrong_cr2.cr2 = va + 1;
        assert!(!d.explains(3, va, &e, g, &wrong_cr2));
    }

    #[test]
    fn implicit_ac_rule() {
        use oracle::{Access, Mode};
        let d = KnownDeviation::QemuTcgImplicitAc;
        assert_eq!(KnownDeviation::parse("qemu-tcg-implicit-ac"), Ok(d));
        let user = TestVa {
            va: 0x2f80_0000_0008,
            entries: [7, 7, 7, 7],
            rsvd_level: None,
            leaf_level: 1,
            pml5e: None,
        };
        let sup = TestVa {
            entries: [7, 7, 7, 3],
            ..user
        };
        let leaf = 0x0131_4007;
        let smap_ac = Mode {
            wp: true,
            smap: true,
            ac: true,
            ..Mode::default()
        };
        let pass = |access, cpl, mode| PassSpec { access, cpl, mode };
        let seen = |err: u64, cr2: u64, pte_after: u64| CaseResult {
            cr2,
            err,
            pte_after,
            record_ok: true,
            status: CaseStatus::Fail,
        };
        let nf = NOT_FAULTED;
        let allowed = seen(nf, nf, leaf | 0x20);
        let p = pass(Access::Desc, 0, smap_ac);
        // The oracle faults (P, U/S = 0); QEMU allowed the read and set A: explained.
        assert!(d.explains_case(&user, &p, 48, leaf, &allowed));
        // Not at CPL 3, not with AC = 0, not for an explicit read, not without SMAP.
        assert!(!d.explains_case(&user, &pass(Access::Desc, 3, smap_ac), 48, leaf, &allowed));
        let ac0 = Mode {
            ac: false,
            ..smap_ac
        };
        assert!(!d.explains_case(&user, &pass(Access::Desc, 0, ac0), 48, leaf, &allowed));
        assert!(!d.explains_case(&user, &pass(Access::Read, 0, smap_ac), 48, leaf, &allowed));
        // Any other observation differs: A not set, D set too, a fault, a bad record.
        assert!(!d.explains_case(&user, &p, 48, leaf, &seen(nf, nf, leaf)));
        assert!(!d.explains_case(&user, &p, 48, leaf, &seen(nf, nf, leaf | 0x60)));
        assert!(!d.explains_case(&user, &p, 48, leaf, &seen(0x1, user.va, leaf)));
        let mut bad = allowed;
        bad.record_ok = false;
        assert!(!d.explains_case(&user, &p, 48, leaf, &bad));
        // A supervisor page: the oracle expects no fault, nothing to explain.
        assert!(!d.explains_case(&sup, &p, 48, leaf, &allowed));
        // The other rules go through explains_case unchanged.
        let r = KnownDeviation::QemuTcgRsvdP;
        let rsvd = TestVa {
            entries: [7 | (1 << 48), 7, 7, 7],
            rsvd_level: Some(4),
            ..user
        };
        let p3 = pass(Access::Desc, 3, smap_ac);
        assert!(r.explains_case(&rsvd, &p3, 48, leaf, &seen(0x8, user.va, leaf)));
        assert!(!d.explains_case(&rsvd, &p3, 48, leaf, &seen(0x8, user.va, leaf)));
        // Bochs: the same at CPL 0 and CPL 3; still only with SMAP and AC, and only the exact
        // explicit-read observation.
        let b = KnownDeviation::BochsImplicitAc;
        assert_eq!(KnownDeviation::parse("bochs-implicit-ac"), Ok(b));
        for cpl in [0, 3] {
            let p = pass(Access::Desc, cpl, smap_ac);
            assert!(b.explains_case(&user, &p, 48, leaf, &allowed));
            assert!(!b.explains_case(&user, &p, 48, leaf, &seen(nf, nf, leaf)));
            assert!(!b.explains_case(&sup, &p, 48, leaf, &allowed));
            let p0 = pass(Access::Desc, cpl, ac0);
            assert!(!b.explains_case(&user, &p0, 48, leaf, &allowed));
        }
        assert!(!b.explains_case(&user, &pass(Access::Read, 0, smap_ac), 48, leaf, &allowed));
    }
}
