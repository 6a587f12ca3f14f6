# Shared helpers for the guest checks (busybox sh).
PASSED=0
FAILED=0

# The value of kernel command line option vtdisp.$1 (empty if absent).
cmdline_opt() {
    sed -n "s/.*vtdisp\.$1=\([^ ]*\).*/\1/p" /proc/cmdline
}

VENDOR=${VENDOR:-$(cmdline_opt vendor)}
DEVICE=${DEVICE:-$(cmdline_opt device)}

result() {  # name PASS|FAIL detail...
    name=$1; status=$2; shift 2
    echo "VTDISP-RESULT $name $status $*"
    if [ "$status" = PASS ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
}

# Load kernel module $1 and what it depends on (modules.dep in the initramfs).
# The parameters of module $1 on the kernel command line, MODULE.PARAM=VALUE (the
# convention kmod's modprobe follows; `run --module-param`), as insmod takes them.
module_params() {
    tr ' ' '\n' < /proc/cmdline | sed -n "s/^$(echo "$1" | tr - _)\.\([A-Za-z0-9_]*=\)/\1/p" |
        tr '\n' ' '
}

load_module() {
    grep -q "^$(echo "$1" | tr - _) " /proc/modules && return 0
    params=$(module_params "$1")
    [ -z "$params" ] && modprobe "$1" 2>/dev/null && return 0
    f=$(find /lib/modules -name "$1.ko" -o -name "$(echo "$1" | tr _ -).ko" | head -n 1)
    # shellcheck disable=SC2086
    [ -n "$f" ] && insmod "$f" $params
}

# All PCI functions with our vendor:device, one BDF per line.
find_functions() {
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor")" = "$VENDOR" ] && [ "$(cat "$d/device")" = "$DEVICE" ] \
            && basename "$d"
    done
}

# Read a little-endian value of $3 bytes at offset $2 of config space of BDF $1.
cfg_read() {
    od -An -tu"$3" -j "$2" -N "$3" "/sys/bus/pci/devices/$1/config" | tr -d ' '
}

# Write the 32-bit value $3 at config offset $2 (dword aligned) of BDF $1: one
# dword config write, as the kernel issues it for an aligned 4-byte sysfs write.
cfg_write32() {
    v=$3
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $((v & 255)) $(((v >> 8) & 255)) \
        $(((v >> 16) & 255)) $(((v >> 24) & 255)))" |
        dd of="/sys/bus/pci/devices/$1/config" bs=4 count=1 seek="$2" oflag=seek_bytes \
           conv=notrunc 2>/dev/null
}

# One DOE exchange on the mailbox at config offset $2 of BDF $1, driven through
# the registers like drivers/pci/doe.c: write the request dwords ($3...) to
# DOE_WRITE, set GO, wait for DATA_OBJECT_READY, read DOE_READ dword by dword
# (a write to DOE_READ advances).  Prints the response dwords (decimal).
doe_exchange() {
    bdf=$1; doe=$2; shift 2
    for dw in "$@"; do cfg_write32 "$bdf" $((doe + 16)) "$dw"; done
    cfg_write32 "$bdf" $((doe + 8)) $((0x80000000))
    n=0
    while [ $(( $(cfg_read "$bdf" $((doe + 12)) 4) & 0x80000000 )) -eq 0 ]; do
        n=$((n + 1))
        [ $n -gt 500 ] && return 1
        [ $(( $(cfg_read "$bdf" $((doe + 12)) 4) & 4 )) -ne 0 ] && return 1  # ERROR
        sleep 0.01
    done
    out=""
    while [ $(( $(cfg_read "$bdf" $((doe + 12)) 4) & 0x80000000 )) -ne 0 ]; do
        out="$out $(cfg_read "$bdf" $((doe + 20)) 4)"
        cfg_write32 "$bdf" $((doe + 20)) 0
    done
    echo $out
}

# Offset of standard capability id $2 (decimal) of BDF $1, or empty.
find_cap() {
    pos=$(cfg_read "$1" 52 1)
    n=0
    while [ "$pos" -ne 0 ] && [ $n -lt 48 ]; do
        id=$(cfg_read "$1" "$pos" 1)
        [ "$id" -eq "$2" ] && { echo "$pos"; return; }
        pos=$(cfg_read "$1" $((pos + 1)) 1)
        n=$((n + 1))
    done
}

# Offset of extended capability id $2 (decimal) of BDF $1, or empty.
find_ext_cap() {
    pos=256
    n=0
    while [ "$pos" -ne 0 ] && [ $n -lt 64 ]; do
        hdr=$(cfg_read "$1" "$pos" 4)
        [ "$hdr" -eq 0 ] && return
        [ $((hdr & 0xffff)) -eq "$2" ] && { echo "$pos"; return; }
        pos=$(( (hdr >> 20) & 0xffc ))
        n=$((n + 1))
    done
}

BDFS=$(find_functions)
BDF=$(echo "$BDFS" | head -n 1)
