# svm.sh: AMD SVM + NPT on QEMU TCG (sourced by scripts/hostvm.sh): pure emulation, no
# -enable-kvm; -kernel / -initrd boot. The CPU model has SMEP, SMAP, PKU, 1 GiB pages, LA57;
# --phys-bits sets MAXPHYADDR (default 48). Known deviation: TCG reports a reserved-bit #PF with
# RSVD but without P (memvisor --known-deviation qemu-tcg-rsvd-p).
PLAT=svm
CACHE=${HOSTVM_CACHE:-/tmp/hostvm-cache}/svm
KVM_MOD=kvm-amd
KVM_OPTS=${KVM_OPTS:-npt=1}
MODS_KVM="virt/lib/irqbypass arch/x86/kvm/kvm drivers/crypto/ccp/ccp arch/x86/kvm/kvm-amd"
MODS_EXTRA="fs/netfs/netfs fs/fscache/fscache net/9p/9pnet drivers/virtio/virtio_ring drivers/virtio/virtio
  drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci
  net/9p/9pnet_virtio fs/9p/9p"
DRAIN=0
HOST_TOOLS=(qemu-system-x86_64:qemu-system-x86 cpio:cpio gzip:gzip strip:binutils)

plat_check_opts() {
  PHYS_BITS=${PHYS_BITS:-48}
  [[ "$PHYS_BITS" =~ ^[0-9]+$ ]] && [ "$PHYS_BITS" -ge 36 ] && [ "$PHYS_BITS" -le 52 ] \
    || die "--phys-bits takes 36..52"
  CPU_MODEL=${CPU_MODEL:-EPYC,+svm,+npt,+pku,+la57}
  case "$CPU_MODEL" in *phys-bits=*) ;; *) CPU_MODEL="$CPU_MODEL,phys-bits=$PHYS_BITS" ;; esac
  [[ "$MEM_MB" =~ ^[0-9]+$ ]] || die "--mem takes MiB as a plain number"
}

plat_prepare() { :; }

plat_diagnose() { sed 's/^/hostvm(svm): qemu: /' "$RUN/qemu.err" >&2; }

plat_boot() {
  cat "$BASE" "$RUN/ov.cpio.gz" > "$RUN/initrd.gz"   # concatenated archives unpack in order
  local q=(-accel tcg -cpu "$CPU_MODEL" -smp 1 -m "${MEM_MB}M" -nodefaults -display none -no-reboot
    -kernel "$VMLINUZ" -initrd "$RUN/initrd.gz" -append "console=ttyS0 quiet loglevel=4 panic=-1"
    -serial "file:$RUN/console" -serial "file:$RUN/stdout" -serial "file:$RUN/stderr")
  [ -n "$SHARE" ] && q+=(-virtfs "local,path=$SHARE,mount_tag=host,security_model=none,id=host0")
  timeout "$VM_TIMEOUT" qemu-system-x86_64 "${q[@]}" 2> >(grep -v "TCG doesn't support requested feature" > "$RUN/qemu.err") &
  EPID=$!; wait "$EPID"; local rc=$?; EPID=''
  return $rc
}
