#!/usr/bin/env bash
# suite.sh: memvisor's reduced test suite inside one emulated host (one VM boot):
#   scripts/hostvm/suite.sh --platform vmx|svm [--cpu MODEL] [--phys-bits N] [--timeout S]
#   scripts/hostvm/suite.sh --platform svm --full     every test binary of `cargo test` (QEMU)
#
# Reduced suite (in this order; each step with its own time limit, its log kept in the VM and
# only its tail printed on failure, since Bochs's UARTs carry ~10 KB/s):
#   demo (exit 0; the report's backend is vmx-ept / svm-npt; 0 shadow flushes), stage2 (CLI
#   and the stage2 test binary: exact GPAs for this MAXPHYADDR), --mem beyond MAXPHYADDR refused
#   (exit 2, when MAXPHYADDR < 42), the crash paths (crash test binary), the TLB-flush test, the
#   fault matrix (every variant the platform has; on svm with --known-deviation
#   qemu-tcg-rsvd-p and qemu-tcg-1g-a: 0 fail), the frames (svm only: KVM-independent host logic, 213 emulated
#   seconds on Bochs) / paging / heaps tests, and a shortened hostile run (--quick: 10^5 calls).
# Builds on the host first: `cargo build --release` (the memvisor the CLI steps run; with
# `--bin test`, the `target/debug/memvisor` that `cargo test` builds instead, as .ci/run does) and
# `cargo test --no-run` (debug test binaries, as .ci/run's `cargo test` builds them).
# --full (svm only): shares the checkout over 9p and runs every test binary `cargo test` runs
#   (not the doc tests), with MEMVISOR_TIME_SCALE for the slow host and
#   MEMVISOR_KNOWN_DEVIATION=qemu-tcg-rsvd-p,qemu-tcg-1g-a,qemu-tcg-implicit-ac for tests/fault_matrix.rs; 12-20 min.
# Options: --platform, --cpu, --phys-bits, --timeout (whole VM; default 900), --kvm-opts, -v as
#   for scripts/hostvm.sh; --full; --bin release|test (which memvisor the CLI steps run:
#   target/release/memvisor, the default, or the test-profile target/debug/memvisor that
#   `cargo test` built: no release build; the fault matrix takes the same time with either).
# Exit: 0 if every step passed; 1 if one failed (named on stdout); 124 / 125 from hostvm.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PLATFORM='' FULL=0 VM_TIMEOUT=900 PASS=() BIN=release
while [ $# -gt 0 ]; do
  case "$1" in
    --platform) PLATFORM=${2:-}; shift 2 ;;
    --full) FULL=1; shift ;;
    --bin) BIN=${2:-}; shift 2 ;;
    --timeout) VM_TIMEOUT=${2:-}; shift 2 ;;
    --cpu|--phys-bits|--kvm-opts) PASS+=("$1" "${2:-}"); shift 2 ;;
    -v|--verbose) PASS+=("$1"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "suite: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$PLATFORM" in vmx|svm) ;; *) echo "suite: --platform vmx|svm is required" >&2; exit 2 ;; esac
case "$BIN" in release) MEMVISOR="$ROOT/target/release/memvisor" ;; test) MEMVISOR="$ROOT/target/debug/memvisor" ;;
  *) echo "suite: --bin release|test" >&2; exit 2 ;; esac
[ "$FULL" = 0 ] || [ "$PLATFORM" = svm ] || { echo "suite: --full needs --platform svm (9p share)" >&2; exit 2; }
cd "$ROOT"

# Emulated hosts are slower than the development host (TCG / Bochs interpret every
# instruction): time limits of the tests scale by this factor (see memvisor::backend::time_scale).
# PROPTEST_CASES: the host-logic property tests (frames, paging) need no KVM; in the slow
# emulators they run with fewer cases (their full runs are the host's `cargo test`).
case "$PLATFORM" in vmx) SCALE=20 PCASES=16 ;; svm) SCALE=8 PCASES=64 ;; esac

if [ "$BIN" = release ]; then
  echo "suite($PLATFORM): building (cargo build --release; cargo test --no-run)" >&2
  cargo build --release -q 2>&1 | tail -20 >&2
else
  echo "suite($PLATFORM): building (cargo test --no-run)" >&2
fi
bins() { cargo test --no-run --message-format=json "$@" 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p'; }

if [ "$FULL" = 1 ]; then
  mapfile -t ALL < <(bins | grep '/deps/')
  [ ${#ALL[@]} -gt 0 ] || { echo "suite: cargo test --no-run gave no test binaries" >&2; exit 1; }
  cmd="fails=0"
  for b in "${ALL[@]}"; do
    cmd+="; echo \"== ${b##*/}\"; \"$b\" -q >/tmp/t.log 2>&1 && grep -E '^test result' /tmp/t.log || { fails=\$((fails+1)); echo \"FAIL ${b##*/}\"; tail -40 /tmp/t.log; }"
  done
  cmd+='; echo "suite: $fails test binaries failed"; [ $fails = 0 ]'
  exec "$ROOT/scripts/hostvm.sh" --platform svm --share "$ROOT" --timeout "$((VM_TIMEOUT > 2400 ? VM_TIMEOUT : 2400))" \
    --env CI=true --env MEMVISOR_TIME_SCALE=$SCALE --env MEMVISOR_KNOWN_DEVIATION=qemu-tcg-rsvd-p,qemu-tcg-1g-a,qemu-tcg-implicit-ac \
    ${PASS[@]+"${PASS[@]}"} --sh "$cmd" \
    "$ROOT/target/debug/memvisor"   # copied with its shared libraries, which the tests need too
fi

declare -A T
for t in stage2 crash tlb_flush paging heaps frames_model; do
  T[$t]=$(bins --test "$t" | grep "/deps/$t-" | head -1)
  [ -n "${T[$t]}" ] || { echo "suite: no test binary for tests/$t.rs" >&2; exit 1; }
done
case "$PLATFORM" in
  vmx) WANT=vmx-ept; DEV='--known-deviation bochs-implicit-ac' ;;   # Skylake-X models (SMAP)
  svm) WANT=svm-npt; DEV='--known-deviation qemu-tcg-rsvd-p --known-deviation qemu-tcg-1g-a --known-deviation qemu-tcg-implicit-ac' ;;
esac
files=()
for t in "${!T[@]}"; do files+=(--file "${T[$t]}"); done
files+=(--file "$ROOT/target/debug/memvisor")   # tests that run the CLI use this path
files+=(--file "$ROOT/tests/data")               # tests read it relative to the checkout

# The in-VM runner: step NAME EXPECTED_RC LIMIT_S CMD...
cat > /tmp/suite-$$.sh <<EOF2
export PATH=/bin CI=true MEMVISOR_TIME_SCALE=$SCALE PROPTEST_CASES=$PCASES
cd "$ROOT" || exit 1   # as cargo runs test binaries: in the package directory
fails=0; n=0
step() {
  name=\$1 want=\$2 lim=\$3; shift 3; n=\$((n+1))
  t0=\$(date +%s)
  timeout \$lim "\$@" >/tmp/\$name.log 2>&1; rc=\$?
  dt=\$((\$(date +%s)-t0))
  if [ \$rc = \$want ]; then echo "ok   \$name (\${dt} s)"
  else fails=\$((fails+1)); echo "FAIL \$name: exit \$rc, expected \$want (\${dt} s)"; tail -25 /tmp/\$name.log; fi
}
check() {  # check NAME PATTERN FILE: a step that passes if FILE has PATTERN
  n=\$((n+1)); if grep -q -E "\$2" "\$3"; then echo "ok   \$1"; else fails=\$((fails+1)); echo "FAIL \$1: no /\$2/ in \$3"; fi
}
echo "host: \$(grep -m1 '^address sizes' /proc/cpuinfo)"
step demo 0 120 memvisor run --scenario demo --json
check demo-backend '"name": "$WANT"' /tmp/demo.log
check demo-no-shadow-flush '"shadow_flushes": 0,' /tmp/demo.log
step stage2-cli 0 120 memvisor run --scenario stage2
grep -m1 'unbacked GPA' /tmp/stage2-cli.log
# (memslot_overlap_and_limit_are_refused is registry bookkeeping of 32k slots, KVM-independent
# and minutes long under emulation: the host's cargo test runs it.)
step stage2-tests 0 600 ${T[stage2]} --test-threads 1 --skip memslot_overlap_and_limit
bits=\$(sed -n 's/.*address sizes[^0-9]*\([0-9]*\) bits physical.*/\1/p' /proc/cpuinfo | head -1)
if [ "\$bits" -lt 42 ]; then
  step mem-beyond-maxphyaddr 2 60 memvisor run --mem 1T
  check mem-beyond-maxphyaddr-line 'MAXPHYADDR' /tmp/mem-beyond-maxphyaddr.log
fi
step crash-tests 0 600 ${T[crash]} --test-threads 1
step tlb-flush-test 0 300 ${T[tlb_flush]}
step fault-matrix 0 1200 memvisor run --scenario fault-matrix $DEV
grep -E '^-- fault matrix|^   (skipped|deviation)' /tmp/fault-matrix.log
if [ "$PLATFORM" = svm ]; then   # host logic only; 213 emulated s on Bochs even at 16 cases
  step frames-tests 0 900 ${T[frames_model]}
fi
step paging-tests 0 900 ${T[paging]}
if [ "$PLATFORM" = svm ]; then
  step heaps-tests 0 900 ${T[heaps]} --test-threads 1
else   # Bochs: without the trace replays of every heap (every_sample_trace_replays_on_every_heap,
       # the_memvisor_heap_meets_the_efficiency_targets_on_every_trace: the same VM paths as the
       # CLI replay test, 10x the time; QEMU and the host run them)
  step heaps-tests 0 900 ${T[heaps]} --test-threads 1 --skip every_sample_trace --skip efficiency
fi
step hostile-quick 0 600 memvisor run --scenario hostile --quick --timeout \$((30*$SCALE))
grep -E 'shadow page-table flushes' /tmp/hostile-quick.log
echo "suite($PLATFORM): \$((n-fails)) of \$n steps passed"
[ \$fails = 0 ]
EOF2
trap 'rm -f /tmp/suite-$$.sh' EXIT
echo "suite($PLATFORM): test binaries resolved, starting the VM" >&2   # (.ci/run waits for this line)
"$ROOT/scripts/hostvm.sh" --platform "$PLATFORM" --timeout "$VM_TIMEOUT" ${PASS[@]+"${PASS[@]}"} \
  "${files[@]}" --file "/tmp/suite-$$.sh:/suite.sh" --sh 'sh /suite.sh' "$MEMVISOR"
