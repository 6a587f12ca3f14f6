# The platform flow (issue 10; firmware-abi.md A.5 and C.8) in the guest,
# through the guest module (vtfw.ko) and the kernel's own PCI/TSM core:
#   insmod -> tsm/connect -> bind (pci_tsm_bind through the module's trigger)
#   -> unbind the driver -> tvm/lock -> read the evidence -> verify it as a
#   relying party (openssl) -> tvm/accept -> drivers_probe -> /dev/hwrng
#   -> unlock -> the negative paths -> unbind -> tsm/disconnect.
# The host hands the guest its trust anchor and reference values in
# /etc/vtdisp (root.pem, measurements.ref; see vfiouser_tdisp/run/platform.py).
# Nothing here speaks SPDM on the mailbox: the firmware holds the session.
#
# Results: tsm_module connect bind lock_busy accept_unlocked lock evidence
# verify accept probe hwrng unlock dma_held tdi_error unbind disconnect
# (vtdisp.platform=sev-tio adds mmio_validate_rejects and guest_msg_replay
# after accept); with
# vtdisp.tamper=1 (the device's evidence altered by `serve --tamper`) the
# flow stops after verify and reports: tsm_module connect bind lock evidence
# tamper disconnect.
# Each step also prints "VTDISP-INFO step_time <name> <seconds>".
# vtdisp.platform=tdx (guest-scripts/platform_tdx.sh): the TDX module runtime
# update steps seamldr_info module_update update_bad_image update_exhausted
# after hwrng.

d=/sys/bus/pci/devices/$BDF
t=$d/tvm
platform=$(cmdline_opt platform)
platform=${platform:-cca}
ETC=/etc/vtdisp
EV=/tmp/evidence
export OPENSSL_CONF=/dev/null
mkdir -p $EV
[ "$platform" = tdx ] && . /guest-scripts/platform_tdx.sh

pf_write_err() {  # file value: the error of a failed write ("" on success)
    echo "$2" 2>&1 > "$1" | sed -n 's/.*write error: //p'
}

pf_now() { cut -d' ' -f1 /proc/uptime; }

pf_t0=$(pf_now)
pf_step() {  # name PASS|FAIL detail: one result, and the time since the last one
    now=$(pf_now)
    echo "VTDISP-INFO step_time $1 $(awk -v a="$pf_t0" -v b="$now" 'BEGIN { printf "%.2f", b - a }')"
    pf_t0=$now
    result "$@"
}

pf_log() { dmesg | grep vtfw | tail -n "${1:-3}" | tr '\n' '|'; }
pf_state() { cat $t/state 2>/dev/null; }
pf_driver() { [ -e $d/driver ] && basename "$(readlink $d/driver)"; }
pf_unbind_driver() { [ -e $d/driver ] && echo "$BDF" > $d/driver/unbind; }

# hex of $3 bytes at offset $2 of file $1
pf_hex() { od -An -tx1 -v -j "$2" -N "$3" "$1" | tr -d ' \n'; }

# -- the relying party's checks (verify) ------------------------------------
# Sets VERIFY_OK (1/0) and VERIFY_WHY (what passed or failed, one item each).
pf_verify() {
    VERIFY_OK=1
    VERIFY_WHY=""
    pf_ok() { VERIFY_WHY="$VERIFY_WHY $1;"; }
    pf_bad() { VERIFY_OK=0; VERIFY_WHY="$VERIFY_WHY FAIL $1;"; }

    # 1. the certificate chain (DSP0274 cert chain: Length u16, Reserved u16,
    # RootHash, DER certificates) up to the device root the host handed us
    chain=$EV/certificate
    hlen=""
    for h in 48 32 64; do
        [ "$(pf_hex $chain $((4 + h)) 2)" = 3082 ] && { hlen=$h; break; }
    done
    if [ -z "$hlen" ]; then
        pf_bad "chain: no DER certificate after a RootHash"
        return
    fi
    total=$(wc -c < $chain)
    off=$((4 + hlen)); n=0
    rm -f $EV/cert*.der $EV/cert*.pem $EV/untrusted.pem
    while [ $off -lt "$total" ]; do
        len=$(od -An -tu1 -j $((off + 2)) -N 2 $chain | awk '{ print $1 * 256 + $2 + 4 }')
        dd if=$chain of=$EV/cert$n.der bs=1 skip=$off count="$len" 2>/dev/null
        openssl x509 -inform DER -in $EV/cert$n.der -out $EV/cert$n.pem 2>/dev/null \
            || { pf_bad "chain: certificate $n at $off is not X.509"; return; }
        off=$((off + len)); n=$((n + 1))
    done
    leaf=$EV/cert$((n - 1)).pem
    openssl x509 -in $ETC/root.pem -outform DER -out $EV/anchor.der
    if ! cmp -s $EV/anchor.der $EV/cert0.der; then
        pf_bad "chain: its root is not the trust anchor"
    else
        case $hlen in 32) alg=sha256 ;; 48) alg=sha384 ;; *) alg=sha512 ;; esac
        want=$(openssl dgst -$alg -binary $EV/anchor.der | od -An -tx1 -v | tr -d ' \n')
        [ "$(pf_hex $chain 4 $hlen)" = "$want" ] || pf_bad "chain: RootHash is not $alg(root)"
        i=1
        while [ $i -lt $((n - 1)) ]; do cat $EV/cert$i.pem >> $EV/untrusted.pem; i=$((i + 1)); done
        [ -s $EV/untrusted.pem ] || cp $EV/cert0.pem $EV/untrusted.pem
        if out=$(openssl verify -CAfile $ETC/root.pem -untrusted $EV/untrusted.pem $leaf 2>&1); then
            pf_ok "chain of $n to the anchor ($(openssl x509 -in $leaf -noout -subject | sed 's/^subject=//'))"
        else
            pf_bad "chain: $(echo "$out" | tr '\n' ' ')"
        fi
    fi

    # 2. the digests the firmware attests against the objects the untrusted
    # host handed over: rsi_vdev_info (firmware-abi.md C.6) or TDI_INFO (D.4)
    case $platform in
    sev-tio)
        info=$EV/tdi_info alg=sha384 dl=48
        digests="certificate:32 measurements:80 report:128"
        ;;
    tdx)
        info=$EV/tdi_info alg=sha384 dl=48
        tdx_dev_info
        digests="report:0 dev_info:48"
        ;;
    *)
        info=$EV/vdev_info
        case $(pf_hex $info 16 1) in
            00) alg=sha256; dl=32 ;;
            01) alg=sha512; dl=64 ;;
            *) pf_bad "vdev_info: hash_algo $(pf_hex $info 16 1)"; return ;;
        esac
        digests="vca:128 certificate:192 measurements:320 report:384"
        ;;
    esac
    bad=""
    for spec in $digests; do
        f=${spec%%:*}; o=${spec#*:}
        got=$(openssl dgst -$alg -binary $EV/$f | od -An -tx1 -v | tr -d ' \n')
        [ "$got" = "$(pf_hex $info $o $dl)" ] || bad="$bad $f"
    done
    if [ -z "$bad" ]; then
        pf_ok "$(echo $digests | wc -w) digests ($alg) as attested"
    else
        pf_bad "digest of$bad"
    fi

    # 3. measurements against the reference values (DSP0274 MEASUREMENTS:
    # NumberOfBlocks @4, MeasurementRecordLength u24 @5, blocks @8: Index,
    # MeasurementSpecification, MeasurementSize u16, DMTF type, size u16, value)
    od -An -tu1 -v $EV/measurements | awk '
        { for (i = 1; i <= NF; i++) b[n++] = $i }
        END {
            nb = b[4]; p = 8
            for (k = 0; k < nb && p + 7 <= n; k++) {
                idx = b[p]; size = b[p + 2] + 256 * b[p + 3]
                type = b[p + 4] % 128; vs = b[p + 5] + 256 * b[p + 6]
                v = ""
                for (j = 0; j < vs; j++) v = v sprintf("%02x", b[p + 7 + j])
                printf "%d %d %s\n", idx, type, v
                p += 4 + size
            }
        }' > $EV/measurements.txt
    matched=""; bad=""
    for idx in $(awk '!/^#/ && NF { print $1 }' $ETC/measurements.ref | sort -u); do
        # one reference line per hash algorithm the device may have used
        if grep "^$idx " $ETC/measurements.ref | while read -r i ty v; do
                grep -q "^$i $ty $v\$" $EV/measurements.txt && echo y
            done | grep -q y; then
            matched="$matched $idx"
        else
            bad="$bad $idx"
        fi
    done
    if [ -z "$bad" ]; then
        pf_ok "measurements$matched = reference"
    else
        pf_bad "measurement(s)$bad != reference (device:$(cut -d' ' -f1,3 $EV/measurements.txt | tr '\n' ','))"
    fi

    # 4. every interface report range (TDI_REPORT_STRUCTURE: mmio_range_count
    # u32 @12, ranges of 16 bytes @16: first_page u64 (4 KiB pages), pages u32)
    # inside a memory BAR of this function as sysfs `resource` shows it
    rep=$EV/report
    count=$(od -An -tu4 -j 12 -N 4 $rep | tr -d ' ')
    i=0; bad=""
    while [ $i -lt "$count" ]; do
        o=$((16 + 16 * i))
        first=$(od -An -tu8 -j $o -N 8 $rep | tr -d ' ')
        pages=$(od -An -tu4 -j $((o + 8)) -N 4 $rep | tr -d ' ')
        base=$((first * 4096)); end=$((base + pages * 4096 - 1))
        inside=""
        bar=0
        while read -r s e fl; do
            if [ $((fl & 0x200)) -ne 0 ] && [ $((s)) -le $base ] && [ $end -le $((e)) ] \
                    && [ $bar -lt 6 ]; then
                inside=$bar
            fi
            bar=$((bar + 1))
        done < $d/resource
        if [ -n "$inside" ]; then
            pf_ok "range $i $(printf '%#x-%#x' $base $end) in BAR$inside"
        else
            bad="$bad $(printf '%#x-%#x' $base $end)"
        fi
        i=$((i + 1))
    done
    [ -z "$bad" ] || pf_bad "report range(s)$bad outside every BAR"
    [ "$count" -gt 0 ] || pf_bad "report has no MMIO range"
}

# -- SEV-TIO only, after accept (firmware-abi.md D.4) -------------------------
pf_mmio() {  # range_id base(hex) pages offset: the MMIO_VALIDATE status, or the error
    e=$(pf_write_err $t/mmio_validate "$1 $2 $3 $4")
    if [ -z "$e" ]; then cat $t/mmio_validate; else echo "error: $e"; fi
}

pf_sev_steps() {
    # a TEE range of the report (16-byte ranges @16: first_page u64, pages u32,
    # attributes u16 (MSI-X table b0, PBA b1, non-TEE b2), range_id u16)
    rep=$EV/report
    count=$(od -An -tu4 -j 12 -N 4 $rep | tr -d ' ')
    i=0; id=""
    while [ $i -lt "$count" ] && [ -z "$id" ]; do
        o=$((16 + 16 * i))
        if [ $(($(od -An -tu2 -j $((o + 12)) -N 2 $rep) & 7)) -eq 0 ]; then
            first=$(od -An -tu8 -j $o -N 8 $rep | tr -d ' ')
            pages=$(od -An -tu4 -j $((o + 8)) -N 4 $rep | tr -d ' ')
            id=$(od -An -tu2 -j $((o + 14)) -N 2 $rep | tr -d ' ')
        fi
        i=$((i + 1))
    done
    if [ -z "$id" ]; then
        pf_step mmio_validate_rejects FAIL "no TEE range in the report"
    else
        # statuses: NOT_REPORTED 8, OUT_OF_RANGE 9, NOT_4K 10
        past=$(pf_mmio "$id" "$(printf %x $(((first + pages) * 4096)))" 1 "$pages")
        wrong=$(pf_mmio 32767 "$(printf %x $((first * 4096)))" "$pages" 0)
        odd=$(pf_mmio "$id" "$(printf %x $((first * 4096 + 2048)))" "$pages" 0)
        s=$(pf_state)
        if [ "$past" = 9 ] && [ "$wrong" = 8 ] && [ "$odd" = 10 ] && [ "$s" = run ]; then
            pf_step mmio_validate_rejects PASS "range $id past its $pages pages -> OUT_OF_RANGE ($past); range_id 32767 -> NOT_REPORTED ($wrong); base +0x800 -> NOT_4K ($odd); state=$s"
        else
            pf_step mmio_validate_rejects FAIL "past '$past' (want 9), wrong id '$wrong' (want 8), not 4K '$odd' (want 10), state=$s: $(pf_log)"
        fi
    fi

    # a relay sends the guest's last sealed message again: the PSP refuses it,
    # and the guest's next message (the next sequence number) still goes through
    s0=$(pf_state)
    e=$(pf_write_err $t/guest_msg_replay 1)
    s1=$(pf_state)
    if [ "$e" = "Permission denied" ] && [ "$s0" = run ] && [ "$s1" = run ]; then
        pf_step guest_msg_replay PASS "$(dmesg | grep 'replayed guest message' | tail -n 1 | sed 's/.*TVM: //') -> refused; next message: state=$s1"
    else
        pf_step guest_msg_replay FAIL "replay: '${e:-accepted}', state before '$s0' after '$s1': $(pf_log)"
    fi
}

# -- the flow ----------------------------------------------------------------
tamper=$(cmdline_opt tamper)
load_module virtio_rng
load_module vtfw
[ -e /sys/module/vtfw/parameters/lock_at_bind ] \
    && echo 0 > /sys/module/vtfw/parameters/lock_at_bind
# cca: the RHI layout `run --rhi-layout` chose (the RMM reads host calls in it)
[ -n "$(cmdline_opt rhi_layout)" ] \
    && echo "$(cmdline_opt rhi_layout)" > /sys/module/vtfw/parameters/rhi_layout
link=$(dmesg | sed -n 's/.*link TSM registered as \(tsm[0-9]*\).*/\1/p' | tail -n 1)
devsec=$(dmesg | sed -n 's/.*devsec TSM registered as \(tsm[0-9]*\).*/\1/p' | tail -n 1)
port=$(basename "$(readlink -f /sys/bus/pci/drivers/vtfw/*:*)" 2>/dev/null)
if [ -z "$BDF" ]; then
    pf_step tsm_module FAIL "device missing"
    return 0 2>/dev/null || exit 0
fi
if [ -d $d/tsm ] && [ -d $t ] && [ -n "$link" ] && [ -n "$devsec" ]; then
    pf_step tsm_module PASS "link TSM $link, devsec TSM $devsec, port $port; $BDF: tsm/ tvm/"
else
    pf_step tsm_module FAIL "link '$link' devsec '$devsec' tsm/ $(ls $d/tsm 2>&1 | tr '\n' ' ') tvm/ $(ls $t 2>&1 | tr '\n' ' '): $(pf_log)"
fi

e=$(pf_write_err $d/tsm/connect "$link")
c=$(cat $d/tsm/connect 2>/dev/null) a=$(cat $d/authenticated 2>/dev/null)
if [ -z "$e" ] && [ "$c" = "$link" ] && [ "$a" = "$link" ]; then
    pf_step connect PASS "connect=$c authenticated=$a dsm=$(cat $d/tsm/dsm): $(dmesg | grep 'connected through' | sed 's/.*vtfw: //')"
else
    pf_step connect FAIL "'$e' connect='$c': $(pf_log 4)"
fi

e=$(pf_write_err /sys/bus/pci/devices/$port/tdi_bind "$BDF")
b=$(cat $d/tsm/bound 2>/dev/null)
if [ -z "$e" ] && [ "$b" = "$link" ] && [ "$(pf_state)" = unlocked ]; then
    pf_step bind PASS "bound=$b tvm/state=$(pf_state)"
else
    pf_step bind FAIL "'$e' bound='$b' state='$(pf_state)': $(pf_log)"
fi

if [ "$tamper" != 1 ]; then
    drv=$(pf_driver)
    e=$(pf_write_err $t/lock "$devsec")
    if [ -n "$drv" ] && [ "$e" = "Device or resource busy" ] && [ "$(pf_state)" = unlocked ]; then
        pf_step lock_busy PASS "lock with $drv bound: $e; state=$(pf_state)"
    else
        pf_step lock_busy FAIL "driver '$drv': '${e:-lock accepted}' state=$(pf_state)"
    fi
fi
pf_unbind_driver

if [ "$tamper" != 1 ]; then
    e=$(pf_write_err $t/accept 1)
    if [ "$e" = "Invalid argument" ] && [ "$(pf_state)" = unlocked ]; then
        pf_step accept_unlocked PASS "accept before lock: $e; state=$(pf_state)"
    else
        pf_step accept_unlocked FAIL "accept before lock: '${e:-accepted}' state=$(pf_state)"
    fi
fi

e=$(pf_write_err $t/lock "$devsec")
if [ -z "$e" ] && [ "$(pf_state)" = locked ]; then
    pf_step lock PASS "state=$(pf_state): $(dmesg | grep 'TVM: evidence' | tail -n 1 | sed 's/.*TVM: //')"
else
    pf_step lock FAIL "'$e' state=$(pf_state): $(pf_log)"
fi

# the evidence files and the size of the firmware's attestation record
case $platform in
    sev-tio) evfiles="certificate measurements report" info=tdi_info infolen=192 ;;
    tdx) evfiles="certificate vca measurements report" info=tdi_info infolen=128 ;;
    *) evfiles="certificate vca measurements report" info=vdev_info infolen=512 ;;
esac
sizes="" missing=""
for f in $evfiles $info; do
    cat $t/$f > $EV/$f 2>/dev/null
    sizes="$sizes $f=$(wc -c < $EV/$f)"
    [ -s $EV/$f ] || missing="$missing $f"
done
if [ -z "$missing" ] && [ "$(wc -c < $EV/$info)" -eq $infolen ]; then
    pf_step evidence PASS "$sizes"
else
    pf_step evidence FAIL "$sizes"
fi

pf_verify
if [ "$tamper" = 1 ]; then
    if [ "$VERIFY_OK" = 0 ] && [ "$(pf_state)" = locked ]; then
        pf_step tamper PASS "refused:$(echo "$VERIFY_WHY" | tr ';' '\n' | grep FAIL | tr '\n' ';') not accepted (state=$(pf_state))"
    else
        pf_step tamper FAIL "the verifier accepted tampered evidence:$VERIFY_WHY state=$(pf_state)"
    fi
    pf_write_err $t/unlock "$devsec" > /dev/null
else
    if [ "$VERIFY_OK" = 1 ]; then
        pf_step verify PASS "$VERIFY_WHY"
    else
        pf_step verify FAIL "$VERIFY_WHY"
    fi

    # accept only what the relying party verified
    if [ "$VERIFY_OK" = 1 ]; then
        e=$(pf_write_err $t/accept 1)
    else
        e="not verified"
    fi
    if [ -z "$e" ] && [ "$(pf_state)" = run ]; then
        pf_step accept PASS "state=$(pf_state): $(dmesg | grep 'ranges validated\|TVM: accepted' | tail -n 1 | sed 's/.*TVM: //')"
    else
        pf_step accept FAIL "'$e' state=$(pf_state): $(pf_log)"
    fi

    [ "$platform" = sev-tio ] && pf_sev_steps

    echo "$BDF" > /sys/bus/pci/drivers_probe
    drv=$(pf_driver)
    n=0
    while [ $n -lt 50 ] && ! grep -q virtio_rng /sys/class/misc/hw_random/rng_current; do
        sleep 0.1; n=$((n + 1))
    done
    rng=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
    if [ "$drv" = virtio-pci ] && [ "${rng#virtio_rng}" != "$rng" ]; then
        pf_step probe PASS "driver=$drv rng_current=$rng"
    else
        pf_step probe FAIL "driver='$drv' rng_current='$rng'"
    fi

    bytes=$(timeout 10 dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
    if [ ${#bytes} -eq 64 ] && [ "$bytes" != "$(printf '%064d' 0)" ]; then
        pf_step hwrng PASS "$bytes"
    else
        pf_step hwrng FAIL "read '$bytes'"
    fi

    # TDX: the module's runtime update while the TDI runs and the driver uses it
    [ "$platform" = tdx ] && tdx_update_steps

    # teardown: the driver goes first (unlock refuses while one is bound)
    pf_unbind_driver
    e=$(pf_write_err $t/unlock "$devsec")
    if [ -z "$e" ] && [ "$(pf_state)" = unlocked ] && [ ! -s $t/report ]; then
        pf_step unlock PASS "state=$(pf_state), evidence dropped"
    else
        pf_step unlock FAIL "'$e' state=$(pf_state): $(pf_log)"
    fi

    # a driver that binds while the TDI is only locked gets no DMA
    e=$(pf_write_err $t/lock "$devsec")
    echo "$BDF" > /sys/bus/pci/drivers_probe
    drv=$(pf_driver)
    n=$(timeout 5 dd if=/dev/hwrng bs=16 count=1 2>/dev/null | wc -c)
    if [ -z "$e" ] && [ "$drv" = virtio-pci ] && [ "$n" -eq 0 ]; then
        pf_step dma_held PASS "locked, $drv bound, /dev/hwrng gave $n bytes in 5 s"
    else
        pf_step dma_held FAIL "lock '$e', driver '$drv', $n bytes from /dev/hwrng"
    fi
    pf_unbind_driver
    pf_write_err $t/unlock "$devsec" > /dev/null

    # a BAR moved while RUN: the device puts the TDI in ERROR, the firmware
    # finds out at its next exchange (refresh), its view says so (RSI_VDEV_GET_INFO,
    # TDG.TDI.RD), and unlock (TDISP STOP_INTERFACE) recovers it
    {
    e1=$(pf_write_err $t/lock "$devsec")
    e2=$(pf_write_err $t/accept 1)
    s1=$(pf_state)
    bar0=$(cfg_read "$BDF" 16 4)
    cfg_write32 "$BDF" 16 $((bar0 + 0x100000))
    e3=$(pf_write_err $t/refresh 1)
    s2=$(pf_state)
    cfg_write32 "$BDF" 16 "$bar0"
    e4=$(pf_write_err $t/unlock "$devsec")
    s3=$(pf_state)
    if [ -z "$e1$e2" ] && [ "$s1" = run ] && [ -n "$e3" ] && [ "$s2" = error ] \
            && [ -z "$e4" ] && [ "$s3" = unlocked ]; then
        pf_step tdi_error PASS "run; BAR0 $(printf '%#x' "$bar0") moved: refresh '$e3', state=$s2; unlock: state=$s3"
    else
        pf_step tdi_error FAIL "lock '$e1' accept '$e2' state $s1; refresh '$e3' state $s2; unlock '$e4' state $s3: $(pf_log)"
    fi
    }
fi

echo "$BDF" > /sys/bus/pci/devices/$port/tdi_unbind
if [ -z "$(cat $d/tsm/bound)" ]; then
    [ "$tamper" = 1 ] || pf_step unbind PASS "bound empty"
else
    pf_step unbind FAIL "bound='$(cat $d/tsm/bound)'"
fi
e=$(pf_write_err $d/tsm/disconnect "$link")
c=$(cat $d/tsm/connect) a=$(cat $d/authenticated) s=$(cat $d/tsm/dsm)
if [ -z "$e$c$a$s" ]; then
    pf_step disconnect PASS "connect, authenticated and dsm empty"
else
    pf_step disconnect FAIL "'$e' connect='$c' authenticated='$a' dsm='$s'"
fi
