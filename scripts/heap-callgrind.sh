#!/bin/sh
# Instructions and cache misses of the memvisor heap and of talc on an allocation trace, as
# deterministic figures (they do not depend on the host's load, unlike timings of a 1 ms pass).
#
#   scripts/heap-callgrind.sh [--pollute N] TRACE...
#
# Runs the host replay example (guest/heaps/examples/replay.rs; 1 checked and 7 timed passes
# of each heap) under `valgrind --tool=callgrind --cache-sim=yes` with a 2 MiB last-level
# cache, collecting inside the heaps' entry points only (the replay's page source is left
# out). With --pollute N (default 300) the example writes a 4 MiB buffer every N events,
# outside the heaps, as each exit of a guest on a PVM host does to the caches (a guest replay
# exits about every 300 events); --pollute 0 turns it off. Prints one line per trace and heap:
# instructions, L1 data misses, and last-level misses (instruction and data), all summed over
# the 8 passes (with address-space randomisation off where `setarch -R` works, so that a
# rerun gives the same figures to 0.01 %). Needs valgrind (Debian: apt-get install
# valgrind). Exit status 2 on a usage error or a missing tool, 1 if a run fails.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
pollute=300
while [ $# -gt 0 ]; do
    case "$1" in
        --pollute) pollute=${2:?}; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        --) shift; break ;;
        -*) echo "heap-callgrind: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "heap-callgrind: no trace given (usage: $0 [--pollute N] TRACE...)" >&2; exit 2; }
command -v valgrind >/dev/null 2>&1 || { echo "heap-callgrind: valgrind not found (apt-get install valgrind)" >&2; exit 2; }
cargo build -q --manifest-path "$here/Cargo.toml" -p memvisor-heaps --features host --release --example replay
bin="$here/target/release/examples/replay"
# Without address-space randomisation the figures repeat exactly (the heaps' choices depend
# on addresses).
norand=""
if setarch "$(uname -m)" -R true 2>/dev/null; then norand="setarch $(uname -m) -R"; fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for t in "$@"; do
    [ -r "$t" ] || { echo "heap-callgrind: cannot read $t" >&2; exit 2; }
    for heap in memvisor talc; do
        if [ "$heap" = memvisor ]; then
            on="--toggle-collect=memvisor_heaps::memvisor::MemvisorHeap<S>::alloc --toggle-collect=memvisor_heaps::memvisor::MemvisorHeap<S>::dealloc --toggle-collect=*MemvisorHeap<S>>::realloc"
        else
            on="--toggle-collect=talc::talc::Talc<O>::malloc --toggle-collect=talc::talc::Talc<O>::free --toggle-collect=talc::talc::Talc<O>::grow* --toggle-collect=talc::talc::Talc<O>::shrink*"
        fi
        # shellcheck disable=SC2086 # $on is a list of options
        POLLUTE=$pollute $norand valgrind --tool=callgrind --cache-sim=yes --LL=2097152,16,64 \
            --collect-atstart=no $on '--toggle-collect=<replay::Shared*' \
            --callgrind-out-file="$out/cg" "$bin" "$t" >"$out/log" 2>&1 ||
            { cat "$out/log" >&2; exit 1; }
        # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
        awk -v t="$(basename "$t" .trace)" -v h="$heap" '/^summary:/ {
            printf "%-16s %-9s instructions %12d  L1d misses %9d  LL misses %9d\n",
                t, h, $2, $6 + $7, $8 + $9 + $10 }' "$out/cg"
    done
done
