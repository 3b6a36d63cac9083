#!/usr/bin/env bash
# hostvm.sh: run memvisor (or any command, e.g. a test binary) inside an emulated host whose KVM
# has hardware-style virtualization, so memvisor meets a two-dimensional-paging KVM instead of
# this machine's KVM-PVM (shadow paging):
#   --platform vmx   Intel VMX + EPT: Bochs 2.7 loading Debian's kvm_intel (ept=1); MAXPHYADDR 40
#   --platform svm   AMD SVM + NPT: QEMU TCG loading Debian's kvm_amd (npt=1); phys-bits settable
# The emulator boots Debian's stock kernel with a small initramfs (busybox-static + kvm modules),
# runs the command, powers off, and this script prints the command's stdout / stderr and exits
# with its exit code. Nothing is installed into /boot; emulators are apt-installed if missing
# (as root), the kernel / busybox / isolinux packages are unpacked into a cache.
#
# Usage:
#   scripts/hostvm.sh --platform vmx|svm [options] MEMVISOR_BIN [MEMVISOR_ARGS...]
#   scripts/hostvm.sh --platform vmx|svm [options] --sh 'CMD' [MEMVISOR_BIN]
# MEMVISOR_BIN is copied to /bin/memvisor in the VM (on PATH).
# Examples:
#   scripts/hostvm.sh --platform svm target/debug/memvisor run --scenario stage2
#   scripts/hostvm.sh --platform svm --phys-bits 39 target/debug/memvisor run --scenario stage2
#   scripts/hostvm.sh --platform vmx --file target/debug/deps/paging-HASH --sh 'paging-HASH'
#   scripts/hostvm.sh --platform svm --share . --sh 'cargo-less commands ...'
#   scripts/hostvm/suite.sh --platform svm     (the reduced CI suite; see its --help)
#   scripts/hostvm.sh --platform vmx --prepare (install and cache only; .ci/run does this
#                                               for both platforms while `cargo test` runs)
#
# Options:
#   --platform P      vmx or svm (required)
#   --prepare         only install the emulator's packages and build the cache (kernel,
#                     busybox, initramfs base), then exit 0: no VM boots, nothing to run
#   --sh CMD          run CMD with /bin/sh instead of memvisor's arguments
#   --file SRC[:DEST] copy SRC into the VM at DEST (default: the same absolute path), with the
#                     shared libraries it needs (repeatable; files or directories)
#   --share DIR       svm only: share DIR read-write over 9p at the same absolute path (the
#                     command starts there)
#   --env NAME=VALUE  export NAME=VALUE for the command (repeatable)
#   --mem MB          RAM of the emulated machine in MiB (default 2048; the initramfs lives in it)
#   --cpu MODEL       Bochs cpu model (vmx; default corei7_haswell_4770, corei7_skylake_x adds
#                     SMAP) or QEMU -cpu (svm; default EPYC,+svm,+npt,+pku,+la57)
#   --phys-bits N     svm: MAXPHYADDR of the emulated CPU (default 48); vmx: only 40
#   --kvm-opts OPTS   kvm_intel / kvm_amd parameters (default ept=1 / npt=1; ept=0 / npt=0 give
#                     KVM's shadow paging on that host)
#   --timeout SECS    wall-clock limit for the whole VM (default 1800)
#   --console FILE    keep the VM's console (kernel log, HOSTVM: lines) in FILE
#   -v, --verbose     stream the VM's console to stderr while running
#
# Exit: the command's exit code; 124 if the VM hit --timeout, 125 for an infrastructure failure
# (no exit code came back; the console's tail and the emulator's errors on stderr), 2 for bad
# options. Speed (this 2-core machine): vmx ~80 s to the initramfs, ~10 KB/s of output over the
# emulated UARTs (keep output small; no --share); svm ~3 s to a shell.
# Cache: /tmp/hostvm-cache/{vmx,svm} (HOSTVM_CACHE overrides the parent), rebuilt when these
# scripts or the kernel change.
set -euo pipefail
HOSTVM_DIR=$(cd "$(dirname "$0")/hostvm" && pwd)

usage_die() { echo "hostvm: $*" >&2; exit 2; }
PLATFORM='' SHELL_CMD='' SHARE='' SHARE_AT='' MEM_MB=2048 CPU_MODEL='' PHYS_BITS='' KVM_OPTS=''
VM_TIMEOUT=1800 CONSOLE_OUT='' VERBOSE=0 FILES=() ENVS=() PREPARE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --platform) PLATFORM=${2:-}; shift 2 ;;
    --prepare) PREPARE=1; shift ;;
    --sh) SHELL_CMD=${2:-}; shift 2 ;;
    --file) FILES+=("${2:-}"); shift 2 ;;
    --share) SHARE=${2:-}; shift 2 ;;
    --env) ENVS+=("${2:-}"); shift 2 ;;
    --mem) MEM_MB=${2:-}; shift 2 ;;
    --cpu) CPU_MODEL=${2:-}; shift 2 ;;
    --phys-bits) PHYS_BITS=${2:-}; shift 2 ;;
    --kvm-opts) KVM_OPTS=${2:-}; shift 2 ;;
    --timeout) VM_TIMEOUT=${2:-}; shift 2 ;;
    --console) CONSOLE_OUT=${2:-}; shift 2 ;;
    -v|--verbose) VERBOSE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) usage_die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
case "$PLATFORM" in
  vmx|svm) ;;
  '') usage_die "--platform vmx|svm is required (see --help)" ;;
  *) usage_die "--platform $PLATFORM: expected vmx or svm" ;;
esac
[[ "$VM_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || usage_die "--timeout takes whole seconds"
BIN=''
if [ $# -ge 1 ]; then BIN=$1; shift; fi
[ -n "$BIN" ] || [ -n "$SHELL_CMD" ] || [ "$PREPARE" = 1 ] || usage_die "nothing to run: MEMVISOR_BIN or --sh CMD (see --help)"
[ -z "$BIN" ] || [ -x "$BIN" ] || usage_die "$BIN is not an executable file"
if [ -n "$SHARE" ]; then
  [ -d "$SHARE" ] || usage_die "--share $SHARE is not a directory"
  SHARE=$(cd "$SHARE" && pwd); SHARE_AT=$SHARE
fi
for e in ${ENVS[@]+"${ENVS[@]}"}; do [[ "$e" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_die "--env $e: expected NAME=VALUE"; done

# shellcheck source=hostvm/common.sh
. "$HOSTVM_DIR/common.sh"
# shellcheck source=/dev/null
. "$HOSTVM_DIR/$PLATFORM.sh"
plat_check_opts
install_host_tools "${HOST_TOOLS[@]}"
prepare_cache
if [ "$PREPARE" = 1 ]; then echo "hostvm($PLAT): prepared ($CACHE)" >&2; exit 0; fi

RUN=$(mktemp -d /tmp/hostvm-run.XXXXXX)
EPID='' TPID=''
cleanup() { [ -n "$TPID" ] && kill "$TPID" 2>/dev/null; [ -n "$EPID" ] && kill "$EPID" 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT
OV="$RUN/ov"; mkdir -p "$OV/bin"
[ -z "$BIN" ] || add_file "$BIN" /bin/memvisor
for f in ${FILES[@]+"${FILES[@]}"}; do
  case "$f" in *:*) add_file "${f%%:*}" "${f#*:}" ;; *) add_file "$f" ;; esac
done
{
  for e in ${ENVS[@]+"${ENVS[@]}"}; do printf 'export %s\n' "$(quote "$e")"; done
  if [ -n "$SHELL_CMD" ]; then printf '%s\n' "$SHELL_CMD"
  else printf 'exec /bin/memvisor %s\n' "$(quote "$@")"; fi
} > "$OV/run.sh"
printf 'KVM_MOD=%s\nKVM_OPTS=%s\nSHARE=%s\nSHARE_AT=%s\nDRAIN=%s\n' "$KVM_MOD" "$(quote "$KVM_OPTS")" \
  "$([ -n "$SHARE" ] && echo 1 || echo 0)" "$(quote "$SHARE_AT")" "$DRAIN" > "$OV/run.conf"
( cd "$OV" && find . | cpio -o -H newc 2>/dev/null | gzip -1 ) > "$RUN/ov.cpio.gz"
rm -rf "$OV"
: > "$RUN/console"; : > "$RUN/stdout"; : > "$RUN/stderr"
if [ "$VERBOSE" = 1 ]; then tail -f "$RUN/console" >&2 & TPID=$!; fi
set +e
plat_boot; erc=$?
set -e
[ -n "$TPID" ] && { sleep 1; kill "$TPID" 2>/dev/null; TPID=''; }
[ -z "$CONSOLE_OUT" ] || cp "$RUN/console" "$CONSOLE_OUT"
collect "$erc"
