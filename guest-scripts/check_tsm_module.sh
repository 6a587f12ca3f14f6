# The guest module (vtfw.ko) against the kernel's own PCI/TSM core:
# insmod binds the firmware port and registers a link TSM, tsm/ appears on the
# DSM; tsm/connect runs the core and its DOE driver through the firmware;
# with vtdisp.bind=1, bind and unbind the TDI through the kernel's
# pci_tsm_bind()/pci_tsm_unbind() (the module's tdi_bind/tdi_unbind trigger:
# 7.3 has no caller) and read tsm/bound; disconnect; rmmod makes tsm/
# disappear (Documentation/ABI/testing/sysfs-bus-pci).
# Results: tsm_module, tsm_connect, [tsm_bind, tsm_unbind,] tsm_disconnect, tsm_rmmod.
d=/sys/bus/pci/devices/$BDF

# centiseconds since boot, and the time since $1 of them as "t=S.CCs"
now_cs() {
    cut -d' ' -f1 /proc/uptime | tr -d .
}
took() {
    cs=$(( $(now_cs) - $1 ))
    printf 't=%d.%02ds' $((cs / 100)) $((cs % 100))
}

# errno of a write, as busybox reports it ("write error: <strerror>")
write_err() {  # file value
    echo "$2" 2>&1 > "$1" | sed -n 's/.*write error: //p'
}

# The TVM side (vtdisp.tvm=1): the module's tvm/ files with the proposed
# tsm/lock and tsm/accept preconditions. Results: tvm_lock_busy,
# tvm_accept_unlocked, tvm_lock, tvm_evidence, tvm_accept, tvm_probe, tvm_unlock.
# Before the host binds (and locks) the TDI: lock must refuse while a driver
# is bound, and the driver goes (unbinding it later would clear Bus Master
# Enable of a locked TDI, which TDISP turns into ERROR).
tvm_pre() {
    t=$d/tvm
    e=$(write_err $t/lock 1)
    if [ "$e" = "Device or resource busy" ]; then
        result tvm_lock_busy PASS "lock with $(basename "$(readlink $d/driver)") bound: $e"
    else
        result tvm_lock_busy FAIL "lock with a driver bound: '${e:-accepted}'"
    fi
    echo "$BDF" > $d/driver/unbind
}

tvm_flow() {
    e=$(write_err $t/accept 1)
    if [ "$e" = "Invalid argument" ]; then
        result tvm_accept_unlocked PASS "accept before lock: $e"
    else
        result tvm_accept_unlocked FAIL "accept before lock: '${e:-accepted}'"
    fi
    t0=$(now_cs)
    e=$(write_err $t/lock 1)
    t1=$(took $t0)
    if [ -z "$e" ] && [ "$(cat $t/state)" = locked ]; then
        result tvm_lock PASS "state=$(cat $t/state) $t1"
    else
        result tvm_lock FAIL "'$e' state=$(cat $t/state): $(dmesg | grep vtfw | tail -n 3 | tr '\n' '|')"
    fi
    sizes=""
    for f in certificate vca measurements report; do
        sizes="$sizes $f=$(cat $t/$f | wc -c)"
    done
    if [ "$(cat $t/certificate | wc -c)" -gt 500 ] && [ "$(cat $t/report | wc -c)" -gt 16 ]; then
        result tvm_evidence PASS "$sizes"
    else
        result tvm_evidence FAIL "$sizes"
    fi
    t0=$(now_cs)
    e=$(write_err $t/accept 1)
    t1=$(took $t0)
    if [ -z "$e" ] && [ "$(cat $t/state)" = run ]; then
        result tvm_accept PASS "state=$(cat $t/state) $t1"
    else
        result tvm_accept FAIL "'$e' state=$(cat $t/state): $(dmesg | grep vtfw | tail -n 3 | tr '\n' '|')"
    fi
    echo "$BDF" > /sys/bus/pci/drivers_probe
    if [ -e $d/driver ]; then
        result tvm_probe PASS "driver=$(basename "$(readlink $d/driver)")"
    else
        result tvm_probe FAIL "no driver bound after drivers_probe"
    fi
    [ -e $d/driver ] && echo "$BDF" > $d/driver/unbind
    e=$(write_err $t/unlock 1)
    if [ -z "$e" ] && [ "$(cat $t/state)" = unlocked ]; then
        result tvm_unlock PASS "state=$(cat $t/state)"
    else
        result tvm_unlock FAIL "'$e' state=$(cat $t/state)"
    fi
}

if [ -z "$BDF" ]; then
    result tsm_module FAIL "device missing"
elif [ -e "$d/tsm" ]; then
    result tsm_module FAIL "tsm/ present before any TSM registered"
elif ! load_module vtfw; then
    result tsm_module FAIL "insmod vtfw failed: $(dmesg | grep vtfw | tail -n 3)"
else
    tsm=$(ls /sys/class/tsm 2>/dev/null | head -n 1)
    port=$(basename "$(readlink -f /sys/bus/pci/drivers/vtfw/*:*)" 2>/dev/null)
    if [ -d "$d/tsm" ] && [ -n "$tsm" ] && [ -e "$d/authenticated" ]; then
        result tsm_module PASS "tsm=$tsm port=$port attrs=$(ls $d/tsm | tr '\n' ' ')"
    else
        result tsm_module FAIL "tsm/ not on $BDF (class tsm: '$tsm', port: '$port')"
    fi
    t0=$(now_cs)
    if echo "$tsm" > "$d/tsm/connect" 2>/tmp/connect.err; then
        t1=$(took $t0)
        c=$(cat $d/tsm/connect) a=$(cat $d/authenticated) s=$(cat $d/tsm/dsm)
        if [ "$c" = "$tsm" ] && [ "$a" = "$tsm" ] && [ "$s" = "$BDF" ]; then
            result tsm_connect PASS "connect=$c authenticated=$a dsm=$s $t1"
        else
            result tsm_connect FAIL "connect='$c' authenticated='$a' dsm='$s'"
        fi
        if echo "$tsm" > "$d/tsm/connect" 2>/dev/null; then
            result tsm_connect FAIL "a second connect was accepted"
        fi
        # the core probes the DSM's other functions: they get tsm/dsm too
        for f in $BDFS; do
            [ "$f" = "$BDF" ] && continue
            fd=/sys/bus/pci/devices/$f
            if [ "$(cat $fd/tsm/dsm 2>/dev/null)" = "$BDF" ] && [ -e $fd/authenticated ]; then
                result tsm_function PASS "$f dsm=$(cat $fd/tsm/dsm)"
            else
                result tsm_function FAIL "$f: $(ls $fd | grep -e tsm -e auth | tr '\n' ' ')"
            fi
        done
        if [ "$(cmdline_opt bind)" = 1 ]; then
            p=/sys/bus/pci/devices/$port
            [ "$(cmdline_opt tvm)" = 1 ] && tvm_pre
            t0=$(now_cs)
            if echo "$BDF" > "$p/tdi_bind" 2>/tmp/bind.err && [ "$(cat $d/tsm/bound)" = "$tsm" ]; then
                result tsm_bind PASS "bound=$(cat $d/tsm/bound) $(took $t0)"
            else
                result tsm_bind FAIL "$(cat /tmp/bind.err) bound='$(cat $d/tsm/bound)':" \
                    "$(dmesg | grep -i vtfw | tail -n 3 | tr '\n' '|')"
            fi
            [ "$(cmdline_opt tvm)" = 1 ] && tvm_flow
            echo "$BDF" > "$p/tdi_unbind"
            if [ -z "$(cat $d/tsm/bound)" ]; then
                result tsm_unbind PASS "bound empty"
            else
                result tsm_unbind FAIL "bound='$(cat $d/tsm/bound)'"
            fi
        fi
        t0=$(now_cs)
        echo "$tsm" > "$d/tsm/disconnect"
        t1=$(took $t0)
        c=$(cat $d/tsm/connect) a=$(cat $d/authenticated) s=$(cat $d/tsm/dsm)
        if [ -z "$c$a$s" ]; then
            result tsm_disconnect PASS "connect, authenticated and dsm empty $t1"
        else
            result tsm_disconnect FAIL "connect='$c' authenticated='$a' dsm='$s'"
        fi
    else
        result tsm_connect FAIL "$(cat /tmp/connect.err): $(dmesg | grep -i vtfw | tail -n 4 | tr '\n' '|')"
    fi
    if rmmod vtfw && [ ! -e "$d/tsm" ] && [ ! -e "$d/authenticated" ] \
            && [ -z "$(ls /sys/class/tsm 2>/dev/null)" ]; then
        result tsm_rmmod PASS "tsm/ and authenticated gone"
    else
        result tsm_rmmod FAIL "after rmmod: $(ls $d | grep -e tsm -e authenticated | tr '\n' ' ')"
    fi
fi
