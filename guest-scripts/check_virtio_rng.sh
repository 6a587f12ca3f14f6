# virtio_pci (built in) + virtio_rng (module) bind to the device.
load_module virtio_rng
rng_current() {
    cat /sys/class/misc/hw_random/rng_current 2>/dev/null \
        || cat /sys/devices/virtual/misc/hw_random/rng_current 2>/dev/null
}
n=0
while [ $n -lt 50 ] && ! rng_current | grep -q virtio_rng; do
    sleep 0.1; n=$((n + 1))
done
drv=$(basename "$(readlink /sys/bus/pci/devices/$BDF/driver 2>/dev/null)" 2>/dev/null)
cur=$(rng_current)
if [ "$drv" = virtio-pci ] && echo "$cur" | grep -q virtio_rng; then
    result virtio_rng PASS "driver=$drv rng_current=$cur"
else
    result virtio_rng FAIL "driver=${drv:-none} rng_current=${cur:-none}" \
        "modules=$(cut -d' ' -f1 /proc/modules | tr '\n' ,)"
fi
