#!/usr/bin/env bash
# Run a memvisor scenario under `perf stat` with the KVM tracepoints that work on this host and
# check that perf's port-IO and MMIO exit counts agree exactly with the VMM's own counters.
#
#   scripts/perf-trace.sh [--record] [memvisor run args...]     e.g. --scenario demo
#
# --record also runs `perf record` (cpu-clock) on the VMM and prints the top-10 host functions.
# Exit codes: 0 counters agree; 1 they disagree (or the run failed); 2 setup problem;
# 77 skipped: the KVM tracepoints are not readable here (the reason is printed).
# MEMVISOR_BIN selects the binary (default: target/release/memvisor, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

record=0
if [ "${1:-}" = "--record" ]; then record=1; shift; fi

if ! command -v perf >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "perf-trace: perf is missing; installing Debian's linux-perf"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
    else
        echo "perf-trace: perf is missing: install it as root with 'apt-get install linux-perf'" >&2
        exit 2
    fi
fi

bin="${MEMVISOR_BIN:-target/release/memvisor}"
if [ ! -x "$bin" ]; then
    cargo build --release --quiet
fi

if ! perf stat -e kvm:kvm_pio -- true >/dev/null 2>&1; then
    paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo '?')
    echo "perf-trace: skipped: KVM tracepoints are not readable (perf_event_paranoid=$paranoid; run as root or set it to -1, and mount tracefs at /sys/kernel/tracing)"
    exit 77
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

events="kvm:kvm_pio,kvm:kvm_userspace_exit,kvm:kvm_page_fault,task-clock,page-faults"
# (capture first: `perf list | grep -q` would SIGPIPE perf and fail under pipefail)
tracepoints=$(perf list 2>/dev/null || true)
if grep -q 'kvmmmu:' <<<"$tracepoints"; then
    events="$events,kvmmmu:*"
fi
# kvm_mmio fires twice for an MMIO read that goes to userspace (type 0 "unsatisfied" at the
# exit, type 1 when the read completes) and once for a write (type 2): count types 0 and 2,
# one event per exit.
set +e
perf stat -x, -o "$tmp/perf.csv" -e "$events" -e kvm:kvm_mmio --filter 'type != 1' \
    -- "$bin" run --json "$@" >"$tmp/report.json" 2>"$tmp/stderr"
status=$?
set -e
if [ ! -s "$tmp/report.json" ]; then
    echo "perf-trace: memvisor produced no report (exit $status):" >&2
    cat "$tmp/stderr" >&2
    exit 1
fi

python3 - "$tmp/perf.csv" "$tmp/report.json" <<'PY'
import csv, json, sys
perf = {}
with open(sys.argv[1]) as f:
    for row in csv.reader(f):
        if len(row) < 3 or row[0].startswith('#') or not row[0].strip():
            continue
        try:
            perf[row[2]] = perf.get(row[2], 0) + float(row[0])
        except ValueError:
            perf[row[2]] = float('nan')
rep = json.load(open(sys.argv[2]))
ex = rep.get('exits', {})
vmm_pio = ex.get('io_out', 0) + ex.get('io_in', 0) + ex.get('pf_assist', 0)
vmm_mmio = ex.get('mmio', 0) + ex.get('doorbell', 0) + ex.get('null_doorbell', 0)
print(f"scenario {rep.get('scenario')}: outcome {rep.get('outcome')}, guest exit code {rep.get('guest_exit_code')}")
print(f"{'counter':<46}{'perf':>10}{'memvisor':>10}")
rows = [('port-IO exits (kvm:kvm_pio)', perf.get('kvm:kvm_pio'), vmm_pio),
        ('MMIO exits (kvm:kvm_mmio, type!=1)', perf.get('kvm:kvm_mmio'), vmm_mmio),
        ('userspace exits (kvm:kvm_userspace_exit)', perf.get('kvm:kvm_userspace_exit'), sum(ex.values())),
        ('shadow flushes (kvmmmu:kvm_mmu_zap_all_fast)', perf.get('kvmmmu:kvm_mmu_zap_all_fast'), rep.get('shadow_flushes', 0))]
for name, p, v in rows:
    ps = '-' if p is None else f"{p:.0f}"
    print(f"{name:<46}{ps:>10}{v:>10}")
for k in sorted(perf):
    if (k.startswith('kvmmmu:') and perf[k]) or k in ('kvm:kvm_page_fault', 'task-clock', 'page-faults'):
        print(f"{k:<46}{perf[k]:>10.0f}")
ok = perf.get('kvm:kvm_pio') == vmm_pio and perf.get('kvm:kvm_mmio') == vmm_mmio
print("counters agree" if ok else "COUNTERS DISAGREE")
sys.exit(0 if ok else 1)
PY
agree=$?

if [ "$record" = 1 ]; then
    perf record -q -e cpu-clock -g -o "$tmp/perf.data" -- "$bin" run "$@" >/dev/null 2>&1 || true
    echo "top-10 host functions (cpu-clock):"
    perf report -q -i "$tmp/perf.data" --stdio --no-children -g none --sort symbol 2>/dev/null \
        | grep '%' | head -10 || true
fi
exit $agree
