# Hand over to the host for vtdisp.wait seconds (default 5): a host-side TSM
# acts on the device (lock, report, ...) while the guest holds its BARs.
wait=$(cmdline_opt wait)
echo "VTDISP-HOST-TURN"
sleep "${wait:-5}"
result wait_host PASS "waited ${wait:-5} s"
