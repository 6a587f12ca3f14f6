# SPDM from inside the guest, through the DSM's DOE registers (config writes and
# reads that QEMU forwards to the device): GET_VERSION, then GET_CAPABILITIES
# 1.2, then GET_VERSION again to leave the connection reset for the host.
byte() {  # byte $2 of little-endian dword $1
    echo $(( ($1 >> (8 * $2)) & 255 ))
}
doe=$(find_ext_cap "$BDF" 46)
if [ -z "$doe" ]; then
    result doe_spdm FAIL "no DOE capability"
else
    # DOE header: vendor 0x0001, type 1 (CMA/SPDM); 3 dwords; GET_VERSION 10 84 00 00
    set -- $(doe_exchange "$BDF" "$doe" $((0x00010001)) 3 $((0x00008410)))
    if [ $# -lt 4 ] || [ "$(byte "$3" 1)" -ne 4 ]; then
        result doe_spdm FAIL "no VERSION: $*"
    else
        count=$(byte "$4" 1)
        versions="$(byte "$4" 3)"
        [ $# -ge 5 ] && versions="$versions $(byte "$5" 1) $(byte "$5" 3)"
        [ $# -ge 6 ] && versions="$versions $(byte "$6" 1)"
        # GET_CAPABILITIES 1.2: CTExponent 12, CERT|CHAL, DataTransferSize = Max = 4096
        set -- $(doe_exchange "$BDF" "$doe" $((0x00010001)) 7 $((0x0000E112)) \
            $((0x00000C00)) 6 4096 4096)
        if [ $# -lt 7 ] || [ "$(byte "$3" 1)" -ne $((0x61)) ]; then
            result doe_spdm FAIL "no CAPABILITIES: $*"
        else
            flags=$5
            doe_exchange "$BDF" "$doe" $((0x00010001)) 3 $((0x00008410)) >/dev/null
            need=$(( 0x2 | 0x4 | 0x10 | 0x200 ))  # CERT CHAL MEAS(sig) KEY_EX
            if [ $((flags & need)) -eq $need ]; then
                result doe_spdm PASS "VERSION entries=$count ($(for v in $versions; do printf '%x ' "$v"; done| sed 's/ $//')) CAPABILITIES 1.2 flags=$(printf 0x%x "$flags") dts=$6"
            else
                result doe_spdm FAIL "CAPABILITIES flags $(printf 0x%x "$flags")"
            fi
        fi
    fi
fi
