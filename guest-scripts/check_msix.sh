# The device's MSI-X vectors in /proc/interrupts.
lines=$(grep "PCI-MSIX-$BDF" /proc/interrupts)
n=$(echo "$lines" | grep -c MSIX)
if [ "$n" -ge 1 ]; then
    result msix PASS "$n vectors: $(echo "$lines" | awk '{print $1 $2 "," $NF}' | tr '\n' ' ')"
else
    result msix FAIL "no MSI-X lines for $BDF"
fi
