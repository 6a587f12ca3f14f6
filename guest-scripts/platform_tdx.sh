# Intel TDX additions to check_platform.sh (sourced with vtdisp.platform=tdx).
#
# verify: the TD's relying party checks the module's hashes (tvm/tdi_info,
# 128 bytes: TDG.TDI.RD REPORT_HASH @0, DEVICE_INFO_HASH @48, both SHA-384,
# then the [MODEL] dev_info header @96: version, hash, slot, chain/VCA/
# measurements lengths) against the report and the device info rebuilt from
# the evidence files (tdx_dev_info: header + certificate + vca + measurements).
#
# tdx_update_steps, while the TDI runs and virtio-rng uses it: the runtime
# update ABI of Linux v7.2 (firmware-abi.md B.2) driven as userspace does:
#   seamldr_info      /sys/devices/faux/tdx_host/{version,seamldr_version,
#                     num_remaining_updates} with the kernel's modes, and
#                     /sys/class/firmware/tdx_module/{loading,data,status,
#                     error,remaining_size,cancel}
#   module_update     echo 1 > loading; cat image > data; echo 0 > loading;
#                     status back to idle, error empty: version is the
#                     image's, num_remaining_updates one less, the TDI still
#                     RUN and /dev/hwrng still delivers bytes
#   update_bad_image  a bad signature (EBADSIG), a changed module page
#                     (EBADHASH), a header the kernel refuses (-EINVAL):
#                     error "transferring:firmware-invalid" each time (the
#                     kernel maps every install error to FW_INVALID), version
#                     and counter unchanged
#   update_exhausted  updates until num_remaining_updates is 0, then one more:
#                     refused (EBADCALL [MODEL]), version unchanged
# The images come from the host (vfiouser_tdisp/tsm/tdx/blob.py) in
# /etc/vtdisp/tdx: update-M.m.u.bin, bad-<kind>.bin.
#
# tdi_error (check_platform.sh, as for CCA): tvm/refresh asks again with TDCM
# GET_TDI_STATE and GET_TDI_REPORT; the host serves them with the [MODEL]
# TDH.TDI.STATE / TDH.TDI.REPORT, which ask the device over the SPDM session;
# the device in ERROR makes the module's TDI ERROR: refresh fails (EIO),
# TDG.TDI.RD reads 3 (tvm/state error), TDCM UNBIND (STOP) recovers it.

TH=/sys/devices/faux/tdx_host
FW=/sys/class/firmware/tdx_module
IMG=$ETC/tdx

# dev_info as the module hashed it: the [MODEL] header (tdi_info @96), then the
# certificate chain, the VCA and the measurements (check_platform.sh hashes it)
tdx_dev_info() {
    dd if=$EV/tdi_info of=$EV/dev_info bs=1 skip=96 count=32 2>/dev/null
    cat $EV/certificate $EV/vca $EV/measurements >> $EV/dev_info
}

tdx_version() { cat $TH/version 2>/dev/null; }
tdx_remaining() { cat $TH/num_remaining_updates 2>/dev/null; }

# upload one image as the kernel documents it; prints the error file ("" = ok)
tdx_upload() {
    echo 1 > $FW/loading
    cat "$1" > $FW/data
    echo 0 > $FW/loading
    n=0
    while [ "$(cat $FW/status)" != idle ] && [ $n -lt 600 ]; do
        sleep 0.1; n=$((n + 1))
    done
    cat $FW/error
}

tdx_rng() {  # 32 bytes of /dev/hwrng, hex
    timeout 10 dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n'
}

tdx_update_steps() {
    # seamldr_info
    v=$(tdx_version) sv=$(cat $TH/seamldr_version 2>/dev/null) r=$(tdx_remaining)
    modes=$(stat -c %a $TH/version $TH/seamldr_version $TH/num_remaining_updates 2>&1 | tr "\n" " " | sed "s/ $//")
    files=""
    for f in loading data status error remaining_size cancel; do
        [ -e $FW/$f ] && files="$files $f"
    done
    if [ -n "$v" ] && [ -n "$sv" ] && [ -n "$r" ] && [ "$modes" = "444 400 400" ] \
            && [ "$files" = " loading data status error remaining_size cancel" ] \
            && [ -d $TH/firmware/tdx_module ] && [ "$(cat $FW/status)" = idle ]; then
        pf_step seamldr_info PASS "version=$v seamldr_version=$sv num_remaining_updates=$r (modes $modes) $FW:$files"
    else
        pf_step seamldr_info FAIL "version='$v' seamldr_version='$sv' remaining='$r' modes '$modes' $FW:'$files' $(ls $TH 2>&1 | tr '\n' ' ')"
    fi

    # module_update: while RUN, the driver bound
    v0=$(tdx_version) r0=$(tdx_remaining)
    img=$(ls $IMG/update-*.bin | head -n 1)
    want=$(basename "$img" .bin); want=${want#update-}
    err=$(tdx_upload "$img")
    v1=$(tdx_version) r1=$(tdx_remaining) st=$(pf_state)
    bytes=$(tdx_rng)
    if [ -z "$err" ] && [ "$v1" = "$want" ] && [ "$r1" -eq $((r0 - 1)) ] && [ "$st" = run ] \
            && [ ${#bytes} -eq 64 ] && [ "$bytes" != "$(printf '%064d' 0)" ]; then
        pf_step module_update PASS "$v0 -> $v1, num_remaining_updates $r0 -> $r1, TDI $st, hwrng $bytes"
    else
        pf_step module_update FAIL "error '$err' version $v0 -> '$v1' (want $want), remaining $r0 -> '$r1', state $st, hwrng '$bytes': $(pf_log)"
    fi

    # update_bad_image: refused, nothing changed
    v0=$(tdx_version) r0=$(tdx_remaining) why="" ok=1
    for spec in bad-signature:EBADSIG module-hash:EBADHASH magic:TDX-BLOB; do
        kind=${spec%%:*} want=${spec#*:}
        err=$(tdx_upload $IMG/bad-$kind.bin)
        log=$(dmesg | tail -n 5 | grep -c "$want")
        if [ "$err" = "transferring:firmware-invalid" ] && [ "$log" -gt 0 ] \
                && [ "$(tdx_version)" = "$v0" ] && [ "$(tdx_remaining)" = "$r0" ]; then
            why="$why $kind: $err ($want);"
        else
            ok=0; why="$why FAIL $kind: '$err', $want logged $log, version $(tdx_version), remaining $(tdx_remaining);"
        fi
    done
    bytes=$(tdx_rng)
    if [ $ok = 1 ] && [ "$(pf_state)" = run ] && [ ${#bytes} -eq 64 ]; then
        pf_step update_bad_image PASS "$why version $v0, remaining $r0, TDI run"
    else
        pf_step update_bad_image FAIL "$why state $(pf_state), hwrng '$bytes'"
    fi

    # update_exhausted: use the counter up, then one more
    v0=$(tdx_version) r0=$(tdx_remaining) done_=""
    for img in $(ls $IMG/update-*.bin | tail -n +2); do
        [ "$(tdx_remaining)" -gt 0 ] || break
        err=$(tdx_upload "$img")
        [ -z "$err" ] || break
        done_="$done_ $(tdx_version)"
    done
    v1=$(tdx_version) r1=$(tdx_remaining)
    err=$(tdx_upload "$img")
    log=$(dmesg | tail -n 5 | grep -c EBADCALL)
    if [ "$r1" = 0 ] && [ "$err" = "transferring:firmware-invalid" ] && [ "$log" -gt 0 ] \
            && [ "$(tdx_version)" = "$v1" ] && [ "$(tdx_remaining)" = 0 ] \
            && [ "$(pf_state)" = run ]; then
        pf_step update_exhausted PASS "$v0 ->$done_, num_remaining_updates $r0 -> 0; next: $err (EBADCALL), version $v1"
    else
        pf_step update_exhausted FAIL "updates$done_, remaining $r0 -> '$r1'; next: '$err', EBADCALL logged $log, version $(tdx_version): $(pf_log)"
    fi
}
