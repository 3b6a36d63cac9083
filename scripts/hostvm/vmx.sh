# vmx.sh: Intel VMX + EPT on Bochs 2.7 (sourced by scripts/hostvm.sh). Debian's Bochs emulates
# VMX level 2 (EPT, VPID, unrestricted guest); it BIOS-boots an isolinux ISO. MAXPHYADDR is 40
# (compiled into Bochs); the CPU model sets SMEP / SMAP / 1 GiB pages (no model has PKU or LA57).
PLAT=vmx
CACHE=${HOSTVM_CACHE:-/tmp/hostvm-cache}/vmx
CPU_MODEL=${CPU_MODEL:-corei7_haswell_4770}
KVM_MOD=kvm-intel
KVM_OPTS=${KVM_OPTS:-ept=1}
MODS_KVM="virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-intel"
MODS_EXTRA=""
DRAIN=2
HOST_TOOLS=(bochs-bin:bochs /usr/share/bochs/BIOS-bochs-latest:bochsbios
  /usr/share/bochs/VGABIOS-lgpl-latest:vgabios xorriso:xorriso cpio:cpio gzip:gzip strip:binutils)

plat_check_opts() {
  [ -z "$SHARE" ] || die "--share is not available on vmx (Bochs has no virtio / 9p); use --file"
  [ -z "$PHYS_BITS" ] || [ "$PHYS_BITS" = 40 ] || die "--phys-bits: Bochs's MAXPHYADDR is fixed at 40"
  [[ "$MEM_MB" =~ ^[0-9]+$ ]] || die "--mem takes MiB as a plain number"
}

plat_prepare() {
  fetch_pkg isolinux "$CACHE/isolinux"
  fetch_pkg syslinux-common "$CACHE/syslinux-common"
}

plat_diagnose() {
  tail -5 "$RUN/bochs.out" 2>/dev/null | sed 's/^/hostvm(vmx): bochs: /' >&2
  grep -E '\]( >>PANIC<<|.*(panic|error))' "$RUN/bochs.log" 2>/dev/null | tail -10 | sed 's/^/hostvm(vmx): bochs: /' >&2
}

# plat_boot: ISO (isolinux + kernel + base + overlay initramfs), Bochs with 1 CPU; COM1 console,
# COM2 stdout, COM3 stderr. Bochs's display is rfb with timeout=0 (no viewer awaited); its
# debugger gets "c" and stdin /dev/null, so a guest landing in it ends the run. Sound is the
# dummy driver: without ALSA devices Bochs's ALSA plugin aborts ("buffer overflow detected").
plat_boot() {
  local iso="$RUN/iso" isolinux_bin="$CACHE/isolinux/usr/lib/ISOLINUX/isolinux.bin"
  local ldlinux="$CACHE/syslinux-common/usr/lib/syslinux/modules/bios/ldlinux.c32"
  mkdir -p "$iso/isolinux"
  cp "$RUN/ov.cpio.gz" "$iso/run.gz"
  ln "$BASE" "$iso/base.gz" 2>/dev/null || cp "$BASE" "$iso/base.gz"
  ln "$VMLINUZ" "$iso/vmlinuz" 2>/dev/null || cp "$VMLINUZ" "$iso/vmlinuz"
  cp "$isolinux_bin" "$ldlinux" "$iso/isolinux/"
  cat > "$iso/isolinux/isolinux.cfg" <<CFG
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /base.gz,/run.gz
  APPEND console=ttyS0,115200 quiet loglevel=4 mitigations=off panic=-1
CFG
  xorriso -as mkisofs -quiet -o "$RUN/boot.iso" -b isolinux/isolinux.bin -c isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table "$iso" >/dev/null 2>&1 || die "xorriso failed"
  rm -rf "$iso"
  cat > "$RUN/bochsrc" <<RC
megs: ${MEM_MB}
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest
cpu: model=$CPU_MODEL, count=1, ips=100000000, reset_on_triple_fault=0, ignore_bad_msrs=1
pci: enabled=1, chipset=i440fx
ata0-master: type=cdrom, path=$RUN/boot.iso, status=inserted
boot: cdrom
display_library: rfb, options="timeout=0"
clock: sync=none, time0=local
com1: enabled=1, mode=file, dev=$RUN/console
com2: enabled=1, mode=file, dev=$RUN/stdout
com3: enabled=1, mode=file, dev=$RUN/stderr
mouse: enabled=0
sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy
speaker: enabled=0
log: $RUN/bochs.log
debugger_log: /dev/null
panic: action=fatal
error: action=report, cpu0=ignore
info: action=report
debug: action=ignore
RC
  echo c > "$RUN/cont.rc"
  ( cd "$RUN" && exec timeout "$VM_TIMEOUT" bochs-bin -q -f bochsrc -rc cont.rc </dev/null >"$RUN/bochs.out" 2>&1 ) &
  EPID=$!; wait "$EPID"; local rc=$?; EPID=''
  return $rc
}
