# Every function of the device is enumerated (vtdisp.functions=N), each with
# the memory BARs the kernel assigned: "BDF:barI=START+SIZE,..." per function.
want=$(cmdline_opt functions)
n=0
report=""
for f in $BDFS; do
    n=$((n + 1))
    bars=""
    i=0
    # resource: one "start end flags" line per BAR (then ROM, bridge windows)
    while read -r start end flags && [ $i -lt 6 ]; do
        if [ $((start)) -ne 0 ] && [ $((flags & 0x200)) -ne 0 ]; then
            bars="$bars${bars:+,}bar$i=$(printf 0x%x $((start)))+$(printf 0x%x $((end - start + 1)))"
        fi
        i=$((i + 1))
    done < "/sys/bus/pci/devices/$f/resource"
    report="$report $f:$bars"
done
if [ -n "$want" ] && [ "$n" -ne "$want" ]; then
    result functions FAIL "found $n functions, expected $want:$report"
elif [ "$n" -eq 0 ]; then
    result functions FAIL "no function"
else
    result functions PASS "n=$n$report"
fi
