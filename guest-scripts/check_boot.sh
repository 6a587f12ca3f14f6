# The guest itself: kernel, PCI enumeration, the initramfs's modules (no device needed).
kver=$(uname -r)
npci=$(ls /sys/bus/pci/devices | wc -l)
nmod=$(find /lib/modules/"$kver" -name '*.ko' 2>/dev/null | wc -l)
if [ "$npci" -ge 1 ] && [ -r /proc/interrupts ] && [ "$nmod" -ge 1 ]; then
    result boot PASS "kernel=$kver pci_functions=$npci modules=$nmod cpus=$(nproc)"
else
    result boot FAIL "kernel=$kver pci_functions=$npci modules=$nmod"
fi
