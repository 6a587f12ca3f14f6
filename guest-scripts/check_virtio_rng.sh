# virtio_pci (built in) + virtio_rng (module) bind to the device.
insmod /lib/modules/virtio-rng.ko 2>/dev/null
sleep 1
drv=$(basename "$(readlink /sys/bus/pci/devices/$BDF/driver 2>/dev/null)" 2>/dev/null)
cur=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
if [ "$drv" = virtio-pci ] && echo "$cur" | grep -q virtio_rng; then
    result virtio_rng PASS "driver=$drv rng_current=$cur"
else
    result virtio_rng FAIL "driver=${drv:-none} rng_current=${cur:-none}"
fi
