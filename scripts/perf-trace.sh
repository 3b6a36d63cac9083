#!/usr/bin/env bash
# Run a memvisor scenario under `perf stat` with the KVM tracepoints that work on this host and
# check that perf's counts agree exactly with the VMM's own counters.
#
#   scripts/perf-trace.sh [--record] [memvisor run args...]     e.g. --scenario demo
#   scripts/perf-trace.sh --compare PERF_CSV REPORT_JSON        compare saved output only
#
# Compared (each must agree): port-IO exits (kvm:kvm_pio), MMIO exits (kvm:kvm_mmio, types 0
# and 2), userspace exits (kvm:kvm_userspace_exit) and memslot deletions
# (kvmmmu:kvm_mmu_zap_all_fast: KVM drops all shadow pages when a memslot is deleted; the
# VMM's side is its shadow flushes plus the memslots the stage-2 scenario removed). A counter
# whose tracepoint perf lacks is shown as `-` and named as not compared.
# --record also runs `perf record` (cpu-clock) on the VMM and prints the top-10 host functions.
# Exit codes: 0 counters agree; 1 one differs (named) or the run failed; 2 setup problem;
# 77 skipped: the KVM tracepoints are not readable here (the reason is printed).
# MEMVISOR_BIN selects the binary; by default it is release/memvisor in cargo's target
# directory (`cargo metadata`: CARGO_TARGET_DIR or build.target-dir), built if missing.
# --compare takes `perf stat -x,` output and a `memvisor run --json` report (for re-analysis
# and tests).
set -euo pipefail
cd "$(dirname "$0")/.."

compare() {
python3 - "$1" "$2" <<'PY'
import csv, json, sys
perf = {}
with open(sys.argv[1]) as f:
    for row in csv.reader(f):
        if len(row) < 3 or row[0].startswith('#') or not row[0].strip():
            continue
        try:
            perf[row[2]] = (perf.get(row[2]) or 0) + float(row[0])
        except ValueError:
            # "<not counted>" / "<not supported>": no value.
            perf.setdefault(row[2], None)
rep = json.load(open(sys.argv[2]))
ex = rep.get('exits', {})
vmm_pio = ex.get('io_out', 0) + ex.get('io_in', 0) + ex.get('pf_assist', 0)
vmm_mmio = ex.get('mmio', 0) + ex.get('doorbell', 0) + ex.get('null_doorbell', 0)
s2 = rep.get('stage2_report') or {}
removed = sum(1 for op in s2.get('slot_ops', []) if op.startswith('remove'))
vmm_zaps = rep.get('shadow_flushes', 0) + removed
print(f"scenario {rep.get('scenario')}: outcome {rep.get('outcome')}, guest exit code {rep.get('guest_exit_code')}")
print(f"{'counter':<50}{'perf':>10}{'memvisor':>10}")
rows = [('port-IO exits (kvm:kvm_pio)', 'kvm:kvm_pio', vmm_pio),
        ('MMIO exits (kvm:kvm_mmio, type!=1)', 'kvm:kvm_mmio', vmm_mmio),
        ('userspace exits (kvm:kvm_userspace_exit)', 'kvm:kvm_userspace_exit', sum(ex.values())),
        ('memslot deletions (kvmmmu:kvm_mmu_zap_all_fast)', 'kvmmmu:kvm_mmu_zap_all_fast', vmm_zaps)]
differ, missing = [], []
for name, event, v in rows:
    p = perf.get(event)
    ps = '-' if p is None else f"{p:.0f}"
    print(f"{name:<50}{ps:>10}{v:>10}")
    if p is None:
        missing.append(event)
    elif p != v:
        differ.append(f"{name}: perf {ps}, memvisor {v}")
print(f"  (memvisor's memslot deletions: {rep.get('shadow_flushes', 0)} shadow flushes + {removed} stage-2 slot removals)")
for k in sorted(perf):
    if perf[k] is not None and ((k.startswith('kvmmmu:') and perf[k]) or k in ('kvm:kvm_page_fault', 'task-clock', 'page-faults')):
        print(f"{k:<50}{perf[k]:>10.0f}")
if missing:
    print("not compared (perf lacks the tracepoint): " + ", ".join(missing))
if 'kvm:kvm_pio' in missing or 'kvm:kvm_mmio' in missing:
    differ.append("the exit tracepoints kvm:kvm_pio / kvm:kvm_mmio were not counted")
if differ:
    for d in differ:
        print(f"COUNTER DIFFERS: {d}")
    sys.exit(1)
print(f"counters agree ({len(rows) - len(missing)} compared)")
PY
}

if [ "${1:-}" = "--compare" ]; then
    if [ $# -ne 3 ]; then
        echo "perf-trace: usage: scripts/perf-trace.sh --compare PERF_CSV REPORT_JSON" >&2
        exit 2
    fi
    set +e
    compare "$2" "$3"
    exit $?
fi

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

if [ -n "${MEMVISOR_BIN:-}" ]; then
    bin="$MEMVISOR_BIN"
else
    # Where cargo puts its output: CARGO_TARGET_DIR, build.target-dir or ./target.
    target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null \
        || echo "${CARGO_TARGET_DIR:-target}")
    bin="$target_dir/release/memvisor"
    if [ ! -x "$bin" ]; then
        cargo build --release --quiet || { echo "perf-trace: cargo build --release failed" >&2; exit 2; }
    fi
fi
if [ ! -x "$bin" ]; then
    echo "perf-trace: no memvisor binary at $bin (set MEMVISOR_BIN)" >&2
    exit 2
fi
echo "perf-trace: binary $bin"

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

set +e
compare "$tmp/perf.csv" "$tmp/report.json"
agree=$?
set -e

if [ "$record" = 1 ]; then
    perf record -q -e cpu-clock -g -o "$tmp/perf.data" -- "$bin" run "$@" >/dev/null 2>&1 || true
    echo "top-10 host functions (cpu-clock):"
    perf report -q -i "$tmp/perf.data" --stdio --no-children -g none --sort symbol 2>/dev/null \
        | grep '%' | head -10 || true
fi
exit $agree
