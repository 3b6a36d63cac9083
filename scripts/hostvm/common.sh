# common.sh: the part of scripts/hostvm.sh both emulated hosts share (sourced, not run).
# Host packages, the kernel / busybox cache, the initramfs, the per-run overlay, the exit code.
# The platform file (vmx.sh or svm.sh) sets PLAT, PKGS_NEEDED (command:package pairs), MODS_KVM,
# KVM_MOD, KVM_OPTS and defines plat_prepare (extra cache contents) and plat_boot RUNDIR.

die() { echo "hostvm($PLAT): $*" >&2; exit 125; }

# apt_locked CMD...: run an apt command while holding one lock file shared by every hostvm
# run of this machine. `.ci/run` starts the VMX and SVM suites side by side, and on a fresh
# machine both install packages at once: without the lock, one `apt-get update` fails on
# the other's lock and the install that follows finds no package lists.
APT_LOCK=${TMPDIR:-/tmp}/memvisor-hostvm-apt.lock
apt_locked() { flock "$APT_LOCK" "$@"; }

# install_host_tools CMD_OR_FILE:PACKAGE...: apt-get install the packages whose command / file is
# missing (Debian packages; apt-get update once, only if something is missing).
install_host_tools() {
  local need=() pair what pkg
  for pair in "$@"; do
    what=${pair%%:*}; pkg=${pair#*:}
    if [ "${what#/}" != "$what" ]; then [ -e "$what" ] || need+=("$pkg")
    else command -v "$what" >/dev/null || need+=("$pkg"); fi
  done
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "needs root to apt-get install ${need[*]}"
  echo "hostvm($PLAT): installing ${need[*]}" >&2
  apt_locked apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive apt_locked apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >&2 || die "apt-get install ${need[*]} failed"
}

# fetch_pkg PACKAGE DEST: apt-get download + dpkg-deb -x into DEST, once (never dpkg -i).
fetch_pkg() {
  local pkg=$1 dest=$2 dl="$CACHE/dl"
  [ -e "$dest/.done" ] && return 0
  mkdir -p "$dl" && chmod 777 "$dl"       # apt's _apt user downloads into it
  rm -rf "$dest"; mkdir -p "$dest"
  ( cd "$dl" && rm -f "${pkg}"_*.deb && apt_locked apt-get download -qq "$pkg" >&2 ) \
    || { apt_locked apt-get update -qq >&2; ( cd "$dl" && apt_locked apt-get download -qq "$pkg" >&2 ); } \
    || die "apt-get download $pkg failed"
  dpkg-deb -x "$dl/${pkg}"_*.deb "$dest" && touch "$dest/.done"
}

# prepare_cache: the stock Debian kernel (the versioned package behind linux-image-amd64;
# HOSTVM_KERNEL_PKG overrides), busybox-static, then the platform's extras. Sets KVER, KROOT, VMLINUZ.
prepare_cache() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"; flock 9
  local kpkg=${HOSTVM_KERNEL_PKG:-}
  if [ -z "$kpkg" ]; then
    kpkg=$(cat "$CACHE/kernel-pkg" 2>/dev/null || true)
    if [ -z "$kpkg" ]; then
      kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
      [ -n "$kpkg" ] || { apt_locked apt-get update -qq >&2; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); }
      [ -n "$kpkg" ] || die "cannot find the kernel package behind linux-image-amd64"
      echo "$kpkg" > "$CACHE/kernel-pkg"
    fi
  fi
  KROOT="$CACHE/$kpkg"
  fetch_pkg "$kpkg" "$KROOT"
  fetch_pkg busybox-static "$CACHE/busybox-static"
  plat_prepare
  KVER=$(ls "$KROOT/lib/modules" | head -1)
  VMLINUZ="$KROOT/boot/vmlinuz-$KVER"
  [ -f "$VMLINUZ" ] || die "no vmlinuz in $kpkg"
  build_base
  flock -u 9
}

# build_base: busybox + the kvm modules + /init, cached (key: kernel + common.sh + PLAT.sh).
# /init loads the modules, prints HOSTVM: lines (cpu flags, address sizes, kvm messages) on the
# console, runs /run.sh with stdout on ttyS1 and stderr on ttyS2 (raw), then HOSTVM_EXIT=rc.
build_base() {
  local key ird m
  key=$(cat "$HOSTVM_DIR/common.sh" "$HOSTVM_DIR/$PLAT.sh" "$VMLINUZ" | md5sum | cut -c1-12)
  BASE="$CACHE/base-$KVER-$key.cpio.gz"
  [ -f "$BASE" ] && return 0
  echo "hostvm($PLAT): building $BASE" >&2
  rm -f "$CACHE"/base-*.cpio.gz
  ird=$(mktemp -d /tmp/hostvm-ird.XXXXXX)
  mkdir -p "$ird"/{bin,proc,sys,dev,tmp,lib/modules}
  cp "$CACHE/busybox-static/bin/busybox" "$ird/bin/busybox"
  for m in $("$ird/bin/busybox" --list); do [ "$m" = busybox ] || ln -s busybox "$ird/bin/$m"; done
  for m in $MODS_KVM $MODS_EXTRA; do
    cp "$KROOT/lib/modules/$KVER/kernel/$m.ko" "$ird/lib/modules/" || die "module $m.ko missing"
  done
  echo "$MODS_KVM" > "$ird/lib/modules/kvm.order"
  echo $MODS_EXTRA > "$ird/lib/modules/extra.order"
  cat > "$ird/init" <<'INIT'
#!/bin/sh
export PATH=/bin HOME=/tmp
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
. /run.conf   # KVM_MOD KVM_OPTS SHARE SHARE_AT DRAIN
load() { for m in $(cat /lib/modules/$1.order); do
  n=${m##*/}; o=""; [ "$n" = "$KVM_MOD" ] && o="$KVM_OPTS"
  insmod /lib/modules/$n.ko $o || echo "HOSTVM: insmod $n failed"; done; }
load kvm
echo "HOSTVM: cpu flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -w -E 'vmx|svm|ept|npt|smep|smap|pku|pdpe1gb|la57|nx' | sort -u | tr '\n' ' ')"
echo "HOSTVM: $(grep -m1 '^address sizes' /proc/cpuinfo)"
for p in /sys/module/kvm_intel/parameters/ept /sys/module/kvm_amd/parameters/npt; do
  [ -f $p ] && echo "HOSTVM: $p=$(cat $p)"; done
dmesg | grep -iE 'kvm|vmx|svm' | sed 's/^/HOSTVM: /'
[ -c /dev/kvm ] || echo "HOSTVM: no /dev/kvm"
cd /tmp
if [ "$SHARE" = 1 ]; then
  load extra; mkdir -p "$SHARE_AT"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host "$SHARE_AT" && cd "$SHARE_AT"
fi
stty -F /dev/ttyS1 raw -echo; stty -F /dev/ttyS2 raw -echo
/bin/sh /run.sh >/dev/ttyS1 2>/dev/ttyS2; rc=$?
sync; sleep "$DRAIN"   # the UARTs drain (emulated time)
echo "HOSTVM_EXIT=$rc"
sleep 1
poweroff -f
INIT
  chmod +x "$ird/init"
  ( cd "$ird" && find . | cpio -o -H newc 2>/dev/null | gzip -1 ) > "$BASE.tmp" && mv "$BASE.tmp" "$BASE"
  rm -rf "$ird"
}

# add_file SRC [DEST]: copy SRC (and the shared libraries it needs) into the overlay at DEST
# (default: the same absolute path), debug info stripped from ELF files.
add_file() {
  local src=$1 dest=${2:-} lib
  [ -e "$src" ] || die "--file $src does not exist"
  [ -n "$dest" ] || dest=$(cd "$(dirname "$src")" && pwd)/$(basename "$src")
  mkdir -p "$OV$(dirname "$dest")"
  if [ -d "$src" ]; then cp -a "$src/." "$OV$dest/"; return 0; fi
  strip --strip-debug -o "$OV$dest" "$src" 2>/dev/null || cp "$src" "$OV$dest"
  chmod --reference="$src" "$OV$dest"
  { ldd "$src" 2>/dev/null || true; } | { grep -oE '/[^ ]+' || true; } | while read -r lib; do
    [ -e "$OV$lib" ] || { mkdir -p "$OV$(dirname "$lib")"; cp -L "$lib" "$OV$lib"; }
  done
}

quote() { local out='' a; for a in "$@"; do out+="'${a//\'/\'\\\'\'}' "; done; printf '%s' "$out"; }

# collect RC_OF_EMULATOR: print the command's stdout / stderr and exit with its exit code, or 124 /
# 125 with the console's tail when none came back.
collect() {
  local erc=$1 rc
  cat "$RUN/stdout"; cat "$RUN/stderr" >&2
  rc=$(tr -d '\r' < "$RUN/console" | sed -n 's/^HOSTVM_EXIT=\([0-9]*\)$/\1/p' | tail -1)
  if [ -z "$rc" ]; then
    echo "hostvm($PLAT): no exit code came back (emulator exit $erc$([ "$erc" = 124 ] && echo ", timed out after ${VM_TIMEOUT}s"))" >&2
    plat_diagnose
    tr -d '\r' < "$RUN/console" | tail -30 | sed "s/^/hostvm($PLAT): console: /" >&2
    [ "$erc" = 124 ] && exit 124 || exit 125
  fi
  exit "$rc"
}
