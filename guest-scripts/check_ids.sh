# IDs, class and revision as the guest kernel sees them.
if [ -n "$BDF" ]; then
    d=/sys/bus/pci/devices/$BDF
    result ids PASS "vendor=$(cat $d/vendor) device=$(cat $d/device) class=$(cat $d/class)" \
        "revision=$(cat $d/revision) subsystem=$(cat $d/subsystem_vendor):$(cat $d/subsystem_device)"
else
    result ids FAIL "device missing"
fi
