# The kernel log of DOE discovery.
lines=$(dmesg | grep 'DOE: \[' | grep 'Found feature' | sed 's/^\[[^]]*\] //' | tr '\n' ';')
if echo "$lines" | grep -q 'vid: 1 type: 1' && echo "$lines" | grep -q 'vid: 1 type: 2'; then
    result doe_dmesg PASS "$lines"
else
    result doe_dmesg FAIL "${lines:-no DOE feature lines}"
fi
