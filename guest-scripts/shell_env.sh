# Sourced by /init before `run --shell` / `--shell-only` hands the console to a
# shell (vtdisp.shell=1): the guest module loaded (as check_platform.sh loads
# it: lock_at_bind=0, the RHI layout the host chose) and the helper commands
# vt-connect, vt-bind, vt-lock, vt-evidence, vt-accept, vt-unlock, vt-state,
# vt-disconnect on PATH (all links to /guest-scripts/vt).
load_module virtio_rng
load_module vtfw
[ -e /sys/module/vtfw/parameters/lock_at_bind ] \
    && echo 0 > /sys/module/vtfw/parameters/lock_at_bind 2>/dev/null
[ -n "$(cmdline_opt rhi_layout)" ] \
    && echo "$(cmdline_opt rhi_layout)" > /sys/module/vtfw/parameters/rhi_layout 2>/dev/null
mkdir -p /usr/local/bin
for c in connect bind lock evidence accept unlock state disconnect; do
    ln -sf /guest-scripts/vt /usr/local/bin/vt-$c
done
export PATH=/usr/local/bin:$PATH
export PS1='vtdisp-guest# '
echo "VTDISP-SHELL device ${BDF:-absent}; commands: vt-connect vt-bind vt-lock vt-evidence vt-accept vt-unlock vt-state vt-disconnect; exit powers off"
