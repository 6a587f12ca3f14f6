# One fault scenario of `vfiouser-tdisp run --scenario NAME` (vfiouser_tdisp/run/
# scenarios.py, docs/faults.md): the server has the scenario's faults armed
# (serve --fault); this script runs the platform flow as far as the fault reaches
# and reports what the kernel and the guest module did, as PASS/FAIL lines named
# after the expected reaction:
#   connect_fails      tsm/connect fails (the errno the kernel returned, and the
#                      kernel's/module's log lines); then connect_recovers: the
#                      fault spent, a second connect succeeds (not for cert-change,
#                      whose change stays until cleared)
#   connect_succeeds   the fault is absorbed below the kernel (retries), connect works
#   lock_succeeds      connect, bind and lock work despite the fault; verify passes
#   verifier_refuses   the relying party refuses the evidence; accept is not written
#   tdi_error_state    after accept (RUN) the TDI ends in error (tvm/state), a
#                      refresh fails; unlock brings it back to unlocked
#   ide_fail_state     the same, and the endpoint's selective IDE stream Status
#                      register (which the module enabled at connect) reads
#                      INSECURE with IDE_FAIL (bit 31) once the TDI runs
# vtdisp.scenario=NAME picks the expectation (the table below).

d=/sys/bus/pci/devices/$BDF
t=$d/tvm
platform=$(cmdline_opt platform)
platform=${platform:-cca}
ETC=/etc/vtdisp
EV=/tmp/evidence
export OPENSSL_CONF=/dev/null
mkdir -p $EV
# The platform flow's helpers (pf_step, pf_write_err, pf_verify, ...), taken from
# check_platform.sh without running its flow: one copy of the relying party.
sed -n '/^pf_write_err() {/,/^# -- the flow/p' /guest-scripts/check_platform.sh > /tmp/pf_lib.sh
. /tmp/pf_lib.sh
# TDX's verifier rebuilds the dev_info the module hashed (tdx_dev_info)
[ "$platform" = tdx ] && . /guest-scripts/platform_tdx.sh

scenario=$(cmdline_opt scenario)
case $scenario in
    doe-busy|doe-error|doe-delay|kp-ack) expect=connect_fails ;;
    cert-change) expect=connect_fails no_recovery=1 ;;  # the change stays until cleared
    fw-busy) expect=connect_succeeds ;;
    spdm-not-ready|spdm-busy|dma-locked) expect=lock_succeeds ;;
    measurements-change|report-range) expect=verifier_refuses ;;
    tdi-error) expect=tdi_error_state ;;
    ide-fail) expect=ide_fail_state ;;
    *) expect=unknown ;;
esac
# the errno tsm/connect must fail with: pci_doe() returns -EIO on a timeout or ERROR,
# which the module passes on for CCA; for TDX the module reports it to the TDX module,
# which ends TDH.SPDM.CONNECT with TDX_DEVICE_ERROR, and the module returns -EPROTO
case $scenario:$platform in
    doe-*:tdx) want_err="Protocol error" ;;
    doe-*) want_err="Input/output error" ;;
    *) want_err="" ;;
esac
echo "VTDISP-INFO scenario $scenario expect $expect"

load_module virtio_rng
load_module vtfw
[ -e /sys/module/vtfw/parameters/lock_at_bind ] \
    && echo 0 > /sys/module/vtfw/parameters/lock_at_bind
[ -n "$(cmdline_opt rhi_layout)" ] \
    && echo "$(cmdline_opt rhi_layout)" > /sys/module/vtfw/parameters/rhi_layout
link=$(dmesg | sed -n 's/.*link TSM registered as \(tsm[0-9]*\).*/\1/p' | tail -n 1)
devsec=$(dmesg | sed -n 's/.*devsec TSM registered as \(tsm[0-9]*\).*/\1/p' | tail -n 1)
port=$(basename "$(readlink -f /sys/bus/pci/drivers/vtfw/*:*)" 2>/dev/null)
if [ -z "$BDF" ] || [ -z "$link" ] || [ -z "$devsec" ]; then
    pf_step tsm_module FAIL "device '$BDF' link '$link' devsec '$devsec': $(pf_log)"
    return 0 2>/dev/null || exit 0
fi
pf_step tsm_module PASS "link TSM $link, devsec TSM $devsec, port $port"

# the endpoint's selective IDE stream 0 Status register (PCIe r6.x 7.9.26: the
# selective blocks follow the link blocks, LINK_TC_NUM+1 of 8 bytes if LINK)
fc_ide_sts() {
    ide=$(find_ext_cap "$BDF" 48)
    [ -n "$ide" ] || { echo none; return; }
    cap=$(cfg_read "$BDF" $((ide + 4)) 4)
    sel=$((ide + 12))
    [ $((cap & 1)) -ne 0 ] && sel=$((sel + 8 * (((cap >> 13) & 7) + 1)))
    cfg_read "$BDF" $((sel + 8)) 4
}

fc_kernel_log() {  # what the kernel's DOE/TSM code and the module logged
    dmesg | grep -i 'doe\|vtfw\|tsm\|ide' | tail -n "${1:-4}" | sed 's/^\[[ 0-9.]*\] //' | tr '\n' '|'
}

e=$(pf_write_err $d/tsm/connect "$link")
c=$(cat $d/tsm/connect 2>/dev/null)
if [ "$expect" = connect_fails ]; then
    if [ -n "$e" ] && [ -z "$c" ] && [ -z "$want_err" -o "$e" = "$want_err" ]; then
        pf_step connect_fails PASS "tsm/connect: '$e'; connect='$c'; kernel: $(fc_kernel_log)"
    else
        pf_step connect_fails FAIL "connect '${e:-succeeded}' connect='$c': $(fc_kernel_log)"
    fi
    [ "$no_recovery" = 1 ] && { return 0 2>/dev/null || exit 0; }
    e=$(pf_write_err $d/tsm/connect "$link")
    c=$(cat $d/tsm/connect 2>/dev/null)
    if [ -z "$e" ] && [ "$c" = "$link" ]; then
        pf_step connect_recovers PASS "the fault spent, a second connect: connect=$c"
    else
        pf_step connect_recovers FAIL "second connect '$e' connect='$c': $(fc_kernel_log)"
    fi
else
    if [ -z "$e" ] && [ "$c" = "$link" ]; then
        if [ "$expect" = connect_succeeds ]; then
            retried=$(dmesg | grep '[A-Z_]* [0-9]* times, called again' | tail -n 1 | sed 's/.*vtfw: //')
            if [ -n "$retried" ]; then
                pf_step connect_succeeds PASS "connect=$c; the module: $retried"
            else
                pf_step connect_succeeds FAIL "connect=$c but no retry logged: $(fc_kernel_log)"
            fi
        fi
    else
        pf_step ${expect} FAIL "connect '$e' connect='$c': $(fc_kernel_log)"
        expect=done
    fi
fi

case $expect in
    lock_succeeds|verifier_refuses|tdi_error_state|ide_fail_state)
        e=$(pf_write_err /sys/bus/pci/devices/$port/tdi_bind "$BDF")
        pf_unbind_driver
        e2=$(pf_write_err $t/lock "$devsec")
        ls=$(pf_state)
        for f in certificate vca measurements report vdev_info tdi_info; do
            cat $t/$f > $EV/$f 2>/dev/null
        done
        if [ -n "$e$e2" ] || [ "$ls" != locked ]; then
            pf_step $expect FAIL "bind '$e' lock '$e2' state=$ls: $(fc_kernel_log)"
        else
            pf_verify
            case $expect in
                lock_succeeds)
                    if [ "$VERIFY_OK" = 1 ]; then
                        pf_step lock_succeeds PASS "state=$ls, evidence verified:$VERIFY_WHY"
                    else
                        pf_step lock_succeeds FAIL "state=$ls but:$VERIFY_WHY"
                    fi ;;
                verifier_refuses)
                    if [ "$VERIFY_OK" = 0 ]; then
                        pf_step verifier_refuses PASS "refused:$(echo "$VERIFY_WHY" | tr ';' '\n' | grep FAIL | tr '\n' ';') accept not written (state=$(pf_state))"
                    else
                        pf_step verifier_refuses FAIL "the verifier accepted:$VERIFY_WHY"
                    fi ;;
                tdi_error_state|ide_fail_state)
                    # ide_fail_state also reads the IDE stream's Status: locked, then run
                    [ "$expect" = ide_fail_state ] && sts0=$(fc_ide_sts)
                    e3=$(pf_write_err $t/accept 1)
                    s1=$(pf_state)
                    [ "$expect" = ide_fail_state ] && sts=$(fc_ide_sts)
                    e4=$(pf_write_err $t/refresh 1)
                    s2=$(pf_state)
                    e5=$(pf_write_err $t/unlock "$devsec")
                    s3=$(pf_state)
                    what="accept '${e3:-ok}' state=$s1; refresh '${e4:-ok}' state=$s2; unlock '${e5:-ok}' state=$s3"
                    ok=0
                    [ "$s2" = error ] && [ -n "$e3$e4" ] && [ "$s3" = unlocked ] && ok=1
                    if [ "$expect" = ide_fail_state ]; then
                        what="IDE Status $(printf 0x%08x "$sts0") while locked, $(printf 0x%08x "$sts") after accept; $what"
                        { [ "$sts0" = 2 ] && [ "$sts" = 2147483648 ]; } || ok=0
                    fi
                    if [ "$ok" = 1 ]; then
                        pf_step $expect PASS "$what"
                    else
                        pf_step $expect FAIL "$what: $(fc_kernel_log)"
                    fi ;;
            esac
        fi
        [ "$(pf_state)" = unlocked ] || pf_write_err $t/unlock "$devsec" > /dev/null
        echo "$BDF" > /sys/bus/pci/devices/$port/tdi_unbind 2>/dev/null ;;
esac

if [ -n "$(cat $d/tsm/connect 2>/dev/null)" ]; then
    e=$(pf_write_err $d/tsm/disconnect "$link")
    c=$(cat $d/tsm/connect)
    if [ -z "$e$c" ]; then
        pf_step disconnect PASS "connect empty"
    else
        pf_step disconnect FAIL "'$e' connect='$c'"
    fi
fi
