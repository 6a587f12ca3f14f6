# The device is enumerated (every function of it).
if [ -n "$BDF" ]; then
    result device PASS "$(echo $BDFS | tr '\n' ' ')"
else
    result device FAIL "no $VENDOR:$DEVICE function in /sys/bus/pci/devices"
fi
