//! VMM start → first guest instruction (the guest's first `out` to the null port, timestamped
//! by the VMM) for a 256 MiB guest, and the whole boot-and-exit, in one run.
//!
//! `cargo bench --bench boot`. Needs /dev/kvm (skips with a message otherwise).

use criterion::{criterion_group, criterion_main, Criterion};
use memvisor::vmm::{self, VmConfig};
use std::time::Duration;

fn config() -> VmConfig {
    VmConfig {
        mem_bytes: 256 << 20,
        scenario: "boot".into(),
        ..VmConfig::default()
    }
}

fn boot(c: &mut Criterion) {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("skipped boot bench: /dev/kvm unavailable");
        return;
    }
    let cfg = config();
    let mut g = c.benchmark_group("boot_256MiB");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    g.bench_function("vmm_start_to_first_guest_instruction", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let r = vmm::run(&cfg).expect("boot");
                let us = r.timings.first_guest_instruction_us.expect("guest ran");
                total += Duration::from_micros(us);
            }
            total
        })
    });
    g.bench_function("vmm_start_to_guest_exit", |b| {
        b.iter(|| {
            let r = vmm::run(&cfg).expect("boot");
            assert_eq!(r.guest_exit_code, Some(0));
        })
    });
    g.finish();
}

criterion_group!(benches, boot);
criterion_main!(benches);
