# The IDE extended capability (0x30) on the DSM, as the guest reads it.
off=$(find_ext_cap "$BDF" 48)
if [ -n "$off" ]; then
    result ide_cap PASS "offset=$(printf 0x%x "$off") cap=$(printf 0x%08x "$(cfg_read "$BDF" $((off + 4)) 4)")"
else
    result ide_cap FAIL "no IDE capability"
fi
