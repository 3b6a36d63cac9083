//! VMM start → first guest instruction (the guest's first `out` to the null port, timestamped
//! by the VMM) for a 256 MiB guest, and the whole boot-and-exit, in one run.
//!
//! `cargo bench --bench boot`. Needs /dev/kvm (skips with a message otherwise).

use criterion::{criterion_group, criterion_main, Criterion};
use memvisor::frames::ZonePreset;
use memvisor::vmm::{self, VmConfig};
use std::time::Duration;

fn config() -> VmConfig {
    VmConfig {
        mem_bytes: 256 << 20,
        kernel: memvisor::guest_image::GUEST_ELF.to_vec(),
        scenario: memvisor_abi::scenario::BOOT,
        scenario_name: "boot".into(),
        flags: 0,
        arg: [0; 4],
        timeout: Duration::from_secs(30),
        zone_preset: ZonePreset::X86_64,
        echo_console: false,
        check_invariants: false,
        uffd: false,
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
