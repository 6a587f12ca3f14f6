# /dev/hwrng returns bytes the device produced.
bytes=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
if [ ${#bytes} -eq 64 ] && [ "$bytes" != "0000000000000000000000000000000000000000000000000000000000000000" ]; then
    result hwrng PASS "$bytes"
else
    result hwrng FAIL "read '${bytes}'"
fi
