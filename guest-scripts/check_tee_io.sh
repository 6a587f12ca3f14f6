# PCIe DEVCAP bit 30 (TEE-IO supported) on every function.
ok=1; detail=""
for b in $BDFS; do
    cap=$(find_cap "$b" 16)
    if [ -z "$cap" ]; then ok=0; detail="$detail $b:no-pcie-cap"; continue; fi
    devcap=$(cfg_read "$b" $((cap + 4)) 4)
    if [ $((devcap & 0x40000000)) -ne 0 ]; then
        detail="$detail $b:devcap=$(printf 0x%08x "$devcap")"
    else
        ok=0; detail="$detail $b:tee-bit-clear($(printf 0x%08x "$devcap"))"
    fi
done
[ -n "$BDFS" ] && [ $ok -eq 1 ] && result tee_io PASS "$detail" || result tee_io FAIL "$detail"
