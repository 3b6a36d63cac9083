#!/bin/sh
# Record the allocation trace of a command (format: tests/data/traces/README.md).
#
#   scripts/trace-recorder.sh [--max-events N] [--skip N] [--exe NAME] OUT.trace -- COMMAND [ARGS...]
#
# Builds scripts/trace-recorder.c with gcc into $MEMVISOR_RECORDER_DIR (default
# target/trace-recorder) when the source is newer, then runs COMMAND with the interposer in
# LD_PRELOAD. The trace holds at most N events (default 200000) and at most 8 MiB - 64 KiB;
# --skip N leaves out the first N events (a program's start-up). Only one process records:
# the first one, or with --exe NAME the first whose executable's base name is NAME (behind a
# wrapper script); programs it execs and children it forks are not recorded.
# --build-only builds the interposer and prints its path. Exit status: COMMAND's; 2 on a
# usage or build error.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
max_events=200000
skip=0
while [ $# -gt 0 ]; do
    case "$1" in
        --max-events) max_events=${2:?}; shift 2 ;;
        --skip) skip=${2:?}; shift 2 ;;
        --exe) export MEMVISOR_TRACE_EXE=${2:?}; shift 2 ;;
        --build-only) build_only=1; shift ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
done
dir=${MEMVISOR_RECORDER_DIR:-$here/../target/trace-recorder}
so=$dir/libmemvisor-trace.so
mkdir -p "$dir"
if [ ! -f "$so" ] || [ "$here/trace-recorder.c" -nt "$so" ]; then
    gcc -O2 -Wall -Wextra -Werror -fPIC -shared -o "$so.tmp.$$" "$here/trace-recorder.c" -ldl -lpthread \
        || { echo "trace-recorder: gcc failed" >&2; exit 2; }
    mv -f "$so.tmp.$$" "$so"
fi
if [ "${build_only:-0}" = 1 ]; then echo "$so"; exit 0; fi
if [ $# -lt 3 ] || [ "$2" != "--" ]; then
    echo "usage: $0 [--max-events N] [--skip N] [--exe NAME] OUT.trace -- COMMAND [ARGS...]" >&2
    exit 2
fi
out=$1
shift 2
case "$out" in /*) ;; *) out=$(pwd)/$out ;; esac
MEMVISOR_TRACE_OUT=$out MEMVISOR_TRACE_MAX_EVENTS=$max_events MEMVISOR_TRACE_SKIP=$skip \
    LD_PRELOAD=$so${LD_PRELOAD:+:$LD_PRELOAD} exec "$@"
