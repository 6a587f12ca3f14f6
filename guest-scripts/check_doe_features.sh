# The kernel's DOE discovery result in sysfs: CMA/SPDM (1) and secured CMA (2).
dir=/sys/bus/pci/devices/$BDF/doe_features
if [ -d "$dir" ]; then
    list=$(ls "$dir" | tr '\n' ' ')
    if echo "$list" | grep -q '0001:01' && echo "$list" | grep -q '0001:02'; then
        result doe_features PASS "$list"
    else
        result doe_features FAIL "$list"
    fi
else
    result doe_features FAIL "no $dir"
fi
