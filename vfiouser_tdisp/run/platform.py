"""`vfiouser-tdisp run --platform cca|sev-tio`: the whole TEE I/O flow in a real guest.

One `serve --platform P` process serves the device and the firmware port with the
platform firmware (the Arm CCA RMM or the AMD PSP emulator) behind it; QEMU boots the stock guest
kernel with both; the guest loads the guest module (vtfw.ko) and runs
guest-scripts/check_platform.sh: connect through the kernel's PCI/TSM core and DOE
driver, bind, lock, evidence, the relying party's verification (openssl), accept,
driver probe, /dev/hwrng, unlock, and the paths that must fail.  A second, short boot
against `serve --tamper measurements --tamper report` checks that the verifier refuses
evidence the device altered and that the TDI is never accepted.

The host hands the guest its trust anchor (the device identity's root certificate)
and reference values (the device's TCB measurements) in the initramfs, under
/etc/vtdisp; the guest gets openssl and its libraries from the private module build
tree (run/guest_tools.py).

Beyond the guest's own results, the host checks the server's events: the firmware's
own objects (CCA: the endpoint PDEV's path NEW -> NEEDS_KEY -> HAS_KEY -> READY ->
STOPPED, the VDEV's NEW -> UNLOCKED -> LOCKED -> STARTED -> UNLOCKED; SEV-TIO: the PSP's
device and TDI contexts), each SPDM / secured SPDM / IDE_KM / TDISP object the device
answered (all of them came through the guest kernel's DOE driver: the firmware never
touches the device), DMA refused while the TDI was only locked and the virtio-rng queue
used once it ran.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from ..device.device import Device, get_profile
from ..device.identity import identity_for_device
from ..device.personality import get_personality
from ..paths import identity_dir
from ..server import PLATFORMS as SERVER_PLATFORMS
from ..server import firmware_port_path, function_socket_path
from ..spdm.algorithms import HASHES
from ..spdm.identity import IdentityError
from . import platform_tdx
from . import shell as term
from .guest_tools import ensure_openssl
from .initramfs import build_initramfs
from .job import GuestRun, ServerProcess, _remove, parse_console, socket_dir
from .module_build import check_user_kernel, ensure_module, ensure_user_module
from .provision import Provisioned, ProvisionError, ensure_provisioned
from .qemu import QemuCommand, accel_decision, firmware_port_args, run_with_deadline

# the guest's steps, in the order it runs them (check_platform.sh)
GUEST_STEPS = ("tsm_module", "connect", "bind", "lock_busy", "accept_unlocked", "lock",
               "evidence", "verify", "accept", "probe", "hwrng", "unlock", "dma_held",
               "tdi_error", "unbind", "disconnect")
# per platform: the same steps, and what a platform adds (after accept)
_AFTER_ACCEPT = GUEST_STEPS.index("accept") + 1
PLATFORM_STEPS = {
    "cca": GUEST_STEPS,
    "sev-tio": GUEST_STEPS[:_AFTER_ACCEPT] + ("mmio_validate_rejects", "guest_msg_replay")
    + GUEST_STEPS[_AFTER_ACCEPT:],
}
TAMPER_STEPS = ("tamper",)
HOST_STEPS = ("rhi_layout", "pdev_states", "vdev_states", "tdi_states", "doe_objects",
              "dma_gate")
# SEV-TIO: the PSP's device context (CREATED -> CONNECTING -> CONNECTED -> DISCONNECTING ->
# CREATED) and TDI context (bound, started, stopped) instead of PDEV and VDEV
SEV_HOST_STEPS = ("dev_ctx_states", "tdi_ctx_states", "tdi_states", "doe_objects",
                  "dma_gate", "guest_msgs")
DEV_CTX_PATH = ["CREATED", "CONNECTING", "CONNECTED", "DISCONNECTING", "CREATED"]
TDI_CTX_PATH = ["UNBOUND", "BINDING", "LOCKED", "STARTING", "RUN", "UNBINDING", "UNBOUND"]
STEP_TIME_RE = re.compile(r"VTDISP-INFO step_time (\S+) ([\d.]+)")
TCB_INDICES = (1, 2, 3)  # measurement indices that do not change with configuration
PDEV_PATH = [("NEW", "NEEDS_KEY"), ("NEEDS_KEY", "HAS_KEY"), ("HAS_KEY", "READY"),
             ("READY", "STOPPED")]
VDEV_PATH = ["NEW", "UNLOCKED", "LOCKED", "STARTED", "UNLOCKED"]


@dataclass
class Boot:
    """One guest boot of the flow: the guest's report, the server's events."""

    run: GuestRun
    events: list[dict[str, object]] = field(default_factory=list)
    step_times: dict[str, float] = field(default_factory=dict)

    def of(self, kind: str) -> list[dict[str, object]]:
        return [e for e in self.events if e.get("event") == kind]


def reference_measurements(profile_name: str) -> str:
    """The device's TCB measurements (indices 1-3) as the relying party expects them:
    ``index type value`` per line, one line per hash the device may measure with."""
    dev = Device(get_profile(profile_name))
    lines = ["# index DMTFSpecMeasurementValueType(6:0) value (vfiouser-tdisp run)"]
    for name in dev.profile.spdm_hash:
        for block in dev.measurements.measurement_blocks(HASHES[name], False):
            if block.index in TCB_INDICES:
                lines.append(f"{block.index} {block.value_type} {block.value.hex()}")
    return "\n".join(dict.fromkeys(lines)) + "\n"


def guest_files(prov: Provisioned, profile_name: str, cache_dir: str | None,
                platform: str = "cca") -> dict[str, tuple[int, bytes]]:
    """What the host hands the guest besides the scripts: trust anchor, reference
    values, openssl with its libraries, and what the platform adds (PLATFORM_FILES)."""
    device = Device(get_profile(profile_name))
    old_umask = os.umask(0o077)  # the identity cache is private (keys), whatever the umask
    try:
        root = identity_for_device(device, identity_dir=identity_dir(cache_dir)).root
    finally:
        os.umask(old_umask)
    files = {path: (0o755, data) for path, data in ensure_openssl(prov).items()}
    files["etc/vtdisp/root.pem"] = (0o644, root.public_bytes(Encoding.PEM))
    files["etc/vtdisp/measurements.ref"] = (0o644,
                                            reference_measurements(profile_name).encode())
    files.update(PLATFORM_FILES.get(platform, dict)())
    return files


def boot_platform(prov: Provisioned, out: Path, *, profile: str = "virtio-rng",
                  platform: str = "cca", timeout: float = 300, accel: str = "auto",
                  tamper: Sequence[str] = (), cache_dir: str | None = None,
                  log: bool = True, rhi_layout: str | None = None,
                  module: Path | None = None, shell: str = "", faults: Sequence[str] = (),
                  scenario: str | None = None, module_params: Sequence[str] = ()) -> Boot:
    """Serve the device and the firmware port, boot the guest with check_platform.sh
    (with ``scenario``: check_fault.sh, run/scenarios.py); ``faults`` are armed in the
    server (serve --fault, docs/faults.md).
    ``module``: a vtfw.ko built for ``prov``'s kernel elsewhere (run --kernel-build);
    ``rhi_layout``: the RHI layout of RMM and guest module (default: theirs);
    ``shell``: "after" / "only" the flow, a shell on this terminal (run/shell.py);
    ``module_params``: ``NAME=VALUE`` parameters of vtfw.ko (kernel command line
    ``vtfw.NAME=VALUE``, passed to insmod by guest-scripts/lib.sh)."""
    out.mkdir(parents=True, exist_ok=True)
    console = out / "console.log"
    console.write_text("")
    events = out / "events.jsonl"
    with contextlib.suppress(FileNotFoundError):
        events.unlink()
    ko = module or ensure_module(prov)
    initrd = build_initramfs(prov.busybox, prov.modules, out / "initrd.gz",
                             extra_modules=[ko],
                             extra_files=guest_files(prov, profile, cache_dir, platform))
    prof = get_profile(profile)
    pers = get_personality(prof.personality)
    extra = ["--platform", platform] + [a for k in tamper for a in ("--tamper", k)]
    extra += [a for f in faults for a in ("--fault", f)]
    if rhi_layout:
        extra += ["--rhi-layout", rhi_layout]
    if cache_dir:
        extra += ["--cache-dir", cache_dir]
    with socket_dir(out, ".fwport") as sockdir:
        sock = str(sockdir / "vfio-user.sock")
        fn_socks = [function_socket_path(sock, fn) for fn in range(prof.functions)]
        fw_sock = firmware_port_path(sock)
        _remove(fn_socks + [fw_sock])
        server = ServerProcess(sock, profile, str(events), str(out / "server.log"), extra)
        try:
            server.wait_ready(fn_socks + [fw_sock])
            append = ("console=ttyS0 panic=-1 loglevel=7"
                      f" vtdisp.vendor=0x{pers.VENDOR_ID:04x}"
                      f" vtdisp.device=0x{pers.DEVICE_ID:04x}"
                      f" vtdisp.functions={prof.functions}"
                      + (f" vtdisp.checks=fault vtdisp.scenario={scenario}" if scenario
                         else " vtdisp.checks=platform")
                      + f" vtdisp.platform={platform}"
                      + (" vtdisp.tamper=1" if tamper else "")
                      + (f" vtdisp.rhi_layout={rhi_layout}" if rhi_layout else "")
                      + "".join(f" vtfw.{p}" for p in module_params))
            if shell:
                append = term.shell_append(append, shell)
            chosen, why = accel_decision(prov.qemu, prov.kernel, accel, prov.cache)
            qc = QemuCommand(kernel=prov.kernel, initrd=str(initrd), append=append,
                             sockets=[fn_socks], accel=chosen, console_log=str(console),
                             extra=firmware_port_args(fw_sock))
            (out / "qemu-cmdline.txt").write_text(qc.shell(prov.qemu) + "\n")
            if log:
                print(f"run: booting the guest ({chosen}: {why}; deadline {timeout:.0f} s)"
                      + (f", device tampered: {', '.join(tamper)}" if tamper else ""),
                      file=sys.stderr, flush=True)
            started = time.monotonic()
            if shell:
                rc, err = term.run_on_terminal(
                    term.console_on_stdio(qc.command(prov.qemu), str(console)),
                    prov.qemu.environ())
            else:
                rc, err = run_with_deadline(qc.command(prov.qemu), prov.qemu.environ(),
                                            timeout)
            (out / "qemu.log").write_bytes(err)
            text = console.read_text(errors="replace")
            run = parse_console(text)
            run.exit_code, run.seconds, run.accel = rc, time.monotonic() - started, chosen
            if rc is None:
                run.results.append(("qemu", False, f"stopped at the {timeout:.0f} s deadline"))
            elif rc != 0:
                run.results.append(("qemu", False, f"exit {rc}"))
            if server.proc.poll() is not None:
                run.results.append(("server", False, f"exited: {server.output(800)}"))
        finally:
            server.stop()
            _remove(fn_socks + [fw_sock])
    boot = Boot(run)
    with contextlib.suppress(OSError):
        for line in events.read_text().splitlines():
            with contextlib.suppress(ValueError):
                boot.events.append(json.loads(line))
    boot.step_times = {m.group(1): float(m.group(2)) for m in STEP_TIME_RE.finditer(text)}
    (out / "doe-objects.txt").write_text("".join(f"{line}\n" for line in doe_objects(boot)))
    return boot


def doe_objects(boot: Boot) -> list[str]:
    """Each object the firmware handed the guest kernel, in order, with what the device
    made of it: the record behind the `doe_objects` check (DIR/*/doe-objects.txt)."""
    lines = []
    for e in boot.events:
        kind = str(e.get("event"))
        if kind == "rmm.communicate" and e.get("req_len"):
            lines.append(f"{e.get('operation')}: {e.get('protocol')} object, "
                         f"{e.get('req_len')} bytes -> guest kernel DOE")
        elif kind == "psp.command" and e.get("status") == "SPDM_REQUEST":
            lines.append(f"{e.get('cmd')}: SPDM_REQUEST, object -> guest kernel DOE")
        elif kind == "spdm.request":
            lines.append(f"  device SPDM {e.get('request')}"
                         + (f" (session {e['session_id']})" if e.get("session_id") else ""))
        elif kind.startswith("ide_km.") and kind != "ide_km.key_fingerprint":
            lines.append(f"    IDE_KM {kind.removeprefix('ide_km.')}")
        elif kind == "tdisp.request":
            lines.append(f"    TDISP {e.get('message')} -> {e.get('result')}")
        elif kind == "tdx.call" and e.get("status") == platform_tdx.SPDM_REQUEST:
            lines.append(f"{e.get('leaf')}: TDX_SPDM_REQUEST, object -> guest kernel DOE")
    return lines


def _subsequence(want: Sequence[object], got: Sequence[object]) -> bool:
    it = iter(got)
    return all(any(w == g for g in it) for w in want)


def rhi_layout_check(boot: Boot, layout: str) -> tuple[str, bool, str]:
    """The realm's host calls as the RMM read them in ``layout`` (rmm.host_call events):
    GET_MEASUREMENTS with a parameter page, GET_INTERFACE_REPORT without one, every
    OBJECT_READ with a page-aligned buffer and a known object.  A guest module in the
    other layout fails this: the two swap the GET_* numbers, the VCA's object id and the
    OBJECT_READ buffer and offset registers (firmware-abi.md C.7)."""
    calls = [e for e in boot.of("rmm.host_call") if e.get("op") == "exit"]
    seen = Counter(str(e.get("rhi")) for e in calls)
    bad = []
    for e in calls:
        rhi = e.get("rhi")
        if e.get("layout") != layout:
            bad.append(f"read in {e.get('layout')}")
        elif rhi == "VDEV_GET_MEASUREMENTS" and (int(str(e.get("params")), 16) == 0
                                                 or int(str(e.get("params")), 16) % 4096):
            bad.append(f"GET_MEASUREMENTS with parameters at {e.get('params')}")
        elif rhi == "VDEV_GET_INTERFACE_REPORT" and e.get("arg") != "0x0":
            bad.append(f"GET_INTERFACE_REPORT with argument {e.get('arg')}")
        elif rhi == "OBJECT_READ" and (not isinstance(e.get("object"), str)
                                       or int(str(e.get("buffer")), 16) == 0
                                       or int(str(e.get("buffer")), 16) % 4096):
            bad.append(f"OBJECT_READ of {e.get('object')} into {e.get('buffer')}")
    ok = not bad and all(seen.get(n) for n in ("VDEV_GET_MEASUREMENTS",
                                                "VDEV_GET_INTERFACE_REPORT", "OBJECT_READ"))
    return ("rhi_layout", ok,
            f"{len(calls)} host calls read in {layout}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
            + (f"; wrong: {'; '.join(sorted(set(bad)))}" if bad else ""))


def _cca_checks(boot: Boot) -> tuple[list[tuple[str, bool, str]], int]:
    """The RMM's PDEV and VDEV paths; the objects it handed to the guest kernel."""
    out: list[tuple[str, bool, str]] = []
    eps = {e["pdev"] for e in boot.of("rmm.pdev.created") if e.get("category") == "EP_OFF_CHIP"}
    ep_path = [(e["old"], e["new"]) for e in boot.of("rmm.pdev.transition")
               if e.get("pdev") in eps]
    out.append(("pdev_states", ep_path == PDEV_PATH,
                "EP PDEV " + " -> ".join([str(ep_path[0][0])] + [str(n) for _o, n in ep_path])
                if ep_path else "no endpoint PDEV transitions"))
    vdev = [(e["old"], e["new"]) for e in boot.of("rmm.vdev.transition")]
    vstates = [str(vdev[0][0])] + [str(n) for o, n in vdev if o != n] if vdev else []
    out.append(("vdev_states", _subsequence(VDEV_PATH, vstates),
                "VDEV " + " -> ".join(vstates) if vstates else "no VDEV transitions"))
    return out, sum(1 for e in boot.of("rmm.communicate") if e.get("req_len"))


def _path(events: list[dict[str, object]]) -> list[str]:
    return [str(events[0]["old"])] + [str(e["new"]) for e in events] if events else []


def _sev_checks(boot: Boot) -> tuple[list[tuple[str, bool, str]], int]:
    """The PSP's device and TDI contexts; each SPDM_REQUEST is one object it handed to
    the guest kernel; the guest's sealed messages and the replay it refused."""
    out: list[tuple[str, bool, str]] = []
    dev = _path(boot.of("psp.dev.transition"))
    out.append(("dev_ctx_states", dev == DEV_CTX_PATH,
                "device context " + " -> ".join(dev) if dev else "no device transitions"))
    tdi = _path(boot.of("psp.tdi.transition"))
    out.append(("tdi_ctx_states", _subsequence(TDI_CTX_PATH, tdi),
                "TDI context " + " -> ".join(tdi) if tdi else "no TDI transitions"))
    msgs = Counter(str(e.get("type")) for e in boot.of("psp.guest_message"))
    refused = [e for e in boot.of("psp.refused") if e.get("cmd") == "TIO_GUEST_REQUEST"]
    replays = [e for e in refused if "replayed" in str(e.get("why"))]
    need = ("TIO_MSG_TDI_INFO_REQ", "TIO_MSG_SDTE_WRITE_REQ", "TIO_MSG_MMIO_VALIDATE_REQ")
    out.append(("guest_msgs", all(msgs.get(n) for n in need) and len(replays) == 1
                and len(refused) == 1,
                "sealed guest messages the PSP opened: "
                + ", ".join(f"{k} {v}" for k, v in sorted(msgs.items()))
                + f"; refused: {len(refused)} ({'; '.join(str(e.get('why')) for e in refused)})"))
    relayed = sum(1 for e in boot.of("psp.command") if e.get("status") == "SPDM_REQUEST")
    return out, relayed


FIRMWARE_CHECKS = {"cca": _cca_checks, "sev-tio": _sev_checks}


def host_checks(boot: Boot, platform: str = "cca",
                rhi_layout: str | None = None) -> list[tuple[str, bool, str]]:
    """What the server saw: the firmware's state machines and the device's traffic."""
    out, relayed = FIRMWARE_CHECKS[platform](boot)
    if platform == "cca":  # the RHI layout guest module and RMM agreed on
        out.insert(0, rhi_layout_check(boot, rhi_layout or "rhi-1.0-bet1"))
    spdm = Counter(str(e["request"]) + ("(secured)" if e.get("session_id") else "")
                   for e in boot.of("spdm.request"))
    tdisp = Counter(str(e["message"]) for e in boot.of("tdisp.request"))
    ide = Counter(str(e["event"]).removeprefix("ide_km.") for e in boot.events
                  if str(e.get("event", "")).startswith("ide_km."))
    # every data object the device's mailbox took (the kernel's discovery included)
    mailbox = sum(1 for e in boot.of("doe.transition") if e.get("trigger") == "go_ok")
    need = ("GET_VERSION", "KEY_EXCHANGE", "FINISH(secured)")
    ok = all(spdm.get(n) for n in need) and tdisp.get("LOCK_INTERFACE_REQUEST", 0) > 0 \
        and tdisp.get("START_INTERFACE_REQUEST", 0) > 0 and ide.get("key_prog", 0) > 0 \
        and relayed == sum(spdm.values()) and mailbox >= relayed
    out.append(("doe_objects", ok,
                f"{relayed} objects the firmware handed to the guest kernel's DOE path, "
                f"{mailbox} through the device's DOE mailbox, "
                f"{sum(spdm.values())} SPDM requests at the device (in order: "
                "doe-objects.txt): "
                + ", ".join(f"{k} {v}" for k, v in sorted(spdm.items()))
                + "; IDE_KM " + ", ".join(f"{k} {v}" for k, v in sorted(ide.items()))
                + "; TDISP " + ", ".join(f"{k} {v}" for k, v in sorted(tdisp.items()))))
    # the device's own TDISP state machine (PCIe r7.0 §11): locked, run, and the BAR
    # moved while RUN taking it to ERROR
    tdi = boot.of("tdi.transition")
    path = [str(tdi[0]["old"])] + [str(e["new"]) + (f" ({e['trigger']})" if e["new"] == "ERROR"
                                                   else "") for e in tdi] if tdi else []
    ok = any(e["old"] == "CONFIG_LOCKED" and e["new"] == "RUN" for e in tdi) and \
        ("tdi_error" not in PLATFORM_STEPS[platform]
         or any(e["old"] == "RUN" and e["trigger"] == "bar_change" for e in tdi))
    out.append(("tdi_states", ok, "TDI " + " -> ".join(path) if path else "no TDI transitions"))
    # the device's DMA: held while the TDI was locked (or in ERROR), flowing while RUN
    held = used = 0
    running = False
    for e in boot.events:
        kind = e.get("event")
        if kind == "tdi.transition":
            running = e.get("new") == "RUN"
        elif kind in ("virtio.dma_blocked", "tdisp.dma_held"):
            held += 1
        elif kind == "virtio.used" and running:
            used += 1
    out.append(("dma_gate", held > 0 and used > 0,
                f"{held} DMA accesses held while the TDI was locked, {used} virtio-rng "
                "buffers filled while it ran"))
    return out


def tamper_checks(boot: Boot) -> list[tuple[str, bool, str]]:
    """The tampered device's TDI must never have been started."""
    started = [e for e in boot.of("tdisp.request")
               if e.get("message") == "START_INTERFACE_REQUEST"]
    tampered = [str(e.get("evidence")) for e in boot.of("device.tamper")]
    return [("tamper_host", not started and bool(tampered),
             f"device tampered ({', '.join(tampered)}); START_INTERFACE requests: "
             f"{len(started)}")]


# Intel TDX (run/platform_tdx.py): its steps, its firmware's checks, its guest files
PLATFORM_STEPS["tdx"] = platform_tdx.STEPS
FIRMWARE_CHECKS["tdx"] = platform_tdx.firmware_checks
PLATFORM_FILES: dict[str, Callable[[], dict[str, tuple[int, bytes]]]] = {
    "tdx": platform_tdx.guest_files,
}
# the flows whose firmware `serve --platform` has in this tree
PLATFORMS = tuple(p for p in PLATFORM_STEPS if p in SERVER_PLATFORMS)


@dataclass
class PlatformRun:
    main: Boot
    tampered: Boot | None
    results: list[tuple[str, bool, str]]

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(ok for _n, ok, _d in self.results)


def _guest_results(boot: Boot, steps: Sequence[str]) -> list[tuple[str, bool, str]]:
    results = list(boot.run.results)
    seen = {n for n, _ok, _d in results}
    for step in steps:
        if step not in seen:
            results.append((step, False, "the guest did not report this step"))
    if not boot.run.done:
        results.append(("guest", False, "VTDISP-DONE missing (see console.log)"))
    return results


def run_platform(prov: Provisioned, out: Path, *, profile: str = "virtio-rng",
                 platform: str = "cca", timeout: float = 300, accel: str = "auto",
                 cache_dir: str | None = None, tamper: bool = True,
                 log: bool = True, rhi_layout: str | None = None,
                 module: Path | None = None, shell: str = "",
                 faults: Sequence[str] = (), module_params: Sequence[str] = ()) -> PlatformRun:
    main = boot_platform(prov, out / "flow", profile=profile, platform=platform,
                         timeout=timeout, accel=accel, cache_dir=cache_dir, log=log,
                         rhi_layout=rhi_layout, module=module, shell=shell, faults=faults,
                         module_params=module_params)
    if shell == "only":  # no flow: only whether the session ended cleanly
        return PlatformRun(main, None, [r for r in main.run.results if not r[1]]
                           or [("shell", True, "the guest's shell ended, the guest powered off")])
    results = _guest_results(main, PLATFORM_STEPS[platform]) + host_checks(main, platform,
                                                                           rhi_layout)
    tampered = None
    if tamper and not shell:
        tampered = boot_platform(prov, out / "tamper", profile=profile, platform=platform,
                                 timeout=timeout, accel=accel, cache_dir=cache_dir,
                                 tamper=("measurements", "report"), log=log,
                                 rhi_layout=rhi_layout, module=module,
                                 module_params=module_params)
        results += [r for r in _guest_results(tampered, TAMPER_STEPS) if r[0] == "tamper"
                    or not r[1]]
        results += tamper_checks(tampered)
    return PlatformRun(main, tampered, results)


def summary(pr: PlatformRun, prov: Provisioned, platform: str, out: Path,
            note: str = "") -> list[str]:
    passed = sum(ok for _n, ok, _d in pr.results)
    times = dict(pr.main.step_times)
    if pr.tampered is not None:
        times.update({k: v for k, v in pr.tampered.step_times.items() if k == "tamper"})
    lines = [f"guest kernel {prov.kernel_version}{note}, QEMU {prov.qemu_version} "
             f"({pr.main.run.accel}), platform {platform}: flow {pr.main.run.seconds:.1f} s"
             + (f", tamper {pr.tampered.run.seconds:.1f} s" if pr.tampered else "")]
    for name, ok, detail in pr.results:
        t = f"{times[name]:6.2f}s" if name in times else "       "
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name:<22}{t}  {detail}")
    lines.append(f"{'OK' if pr.ok else 'FAILED'}: {passed} passed, "
                 f"{len(pr.results) - passed} failed")
    lines.append(f"console: {out / 'flow' / 'console.log'}   events: "
                 f"{out / 'flow' / 'events.jsonl'}")
    return lines


def table(runs: dict[str, PlatformRun], prov: Provisioned, out: Path) -> list[str]:
    """Several platforms in one table: a row per step, a column per platform (PASS/FAIL
    and the guest's time; "-" where a platform has no such step); what failed, with its
    detail, below.  Each platform's own summary is in DIR/<platform>/summary.txt."""
    names: list[str] = []
    for pr in runs.values():
        # a step one platform adds goes after the step it follows there
        prev = ""
        for n, _ok, _d in pr.results:
            if n not in names:
                names.insert(names.index(prev) + 1 if prev in names else len(names), n)
            prev = n
    width = max(12, *(len(p) for p in runs))
    accel = next(iter(runs.values())).main.run.accel
    lines = [f"guest kernel {prov.kernel_version}, QEMU {prov.qemu_version} ({accel}): "
             + ", ".join(f"{p} flow {pr.main.run.seconds:.1f} s"
                         + (f" + tamper {pr.tampered.run.seconds:.1f} s" if pr.tampered else "")
                         for p, pr in runs.items()),
             (f"  {'step':<22}" + "".join(f"  {p:<{width}}" for p in runs)).rstrip()]
    for name in names:
        cells = []
        for pr in runs.values():
            got = {n: ok for n, ok, _d in pr.results}
            times = {**pr.main.step_times,
                     **(pr.tampered.step_times if pr.tampered else {})}
            cell = "-" if name not in got else ("PASS" if got[name] else "FAIL") + \
                (f" {times[name]:5.2f}s" if name in times else "")
            cells.append(f"  {cell:<{width}}")
        lines.append((f"  {name:<22}" + "".join(cells)).rstrip())
    failed = [(p, n, d) for p, pr in runs.items() for n, ok, d in pr.results if not ok]
    lines += [f"  FAIL {p} {n}: {d}" for p, n, d in failed]
    total = sum(len(pr.results) for pr in runs.values())
    lines.append(f"{'OK' if not failed else 'FAILED'}: {total - len(failed)} passed, "
                 f"{len(failed)} failed; per platform: "
                 + ", ".join(f"{out / p / 'summary.txt'}" for p in runs))
    return lines


def _sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def identity_cache(provisioned: Path) -> Path:
    """The cache root for the device identity: the provisioned cache when this user
    may write to it, else the user's own cache (root provisioned a shared cache for
    everyone, docs/provisioning.md; keys are per user)."""
    if os.access(provisioned, os.W_OK):
        return provisioned
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).absolute() / "vfiouser-tdisp"


def user_kernel(prov: Provisioned, args: argparse.Namespace) -> tuple[Provisioned, Path]:
    """`run --kernel IMAGE --kernel-build DIR [--kernel-modules MODDIR]`: the provisioned
    setup with the user's kernel in place of Debian's, and vtfw.ko built against DIR.
    The initramfs takes the kernel's modules (virtio_rng) from MODDIR, or from the
    provisioned tree when the release is the same."""
    if not args.kernel or not args.kernel_build:
        raise ProvisionError("--kernel IMAGE and --kernel-build DIR go together")
    uk = check_user_kernel(Path(args.kernel), Path(args.kernel_build))
    modules = getattr(args, "kernel_modules", None)
    if modules is None:
        if uk.release != prov.kernel_version:
            raise ProvisionError(f"--kernel is release {uk.release}, not the provisioned "
                                 f"{prov.kernel_version}: give --kernel-modules "
                                 f"/lib/modules/{uk.release} (make modules_install "
                                 "INSTALL_MOD_PATH=...)")
        modules = prov.modules
    elif not (Path(modules) / "modules.dep").is_file():
        raise ProvisionError(f"--kernel-modules {modules}: no modules.dep (an installed "
                             f"/lib/modules/{uk.release} tree)")
    ko = ensure_user_module(prov, uk.build, uk.release)
    return replace(prov, kernel=str(uk.image), kernel_version=uk.release,
                   modules=str(modules)), ko


def main_run(args: argparse.Namespace) -> int:
    """`run`: the platform flow against ``args.platform`` (``all``: every platform, one
    table; each platform's boots in DIR/<platform>/; `--scenario`: one fault scenario
    instead, run/scenarios.py, on one platform: cca unless --platform names another)."""
    if getattr(args, "scenario", None):
        from .scenarios import main_scenario  # it builds on this module
        if args.platform == "all":
            args.platform = "cca"
        return main_scenario(args)
    if get_profile(args.profile).personality != "virtio-rng":
        # probe, hwrng and dma_held read /dev/hwrng through the device's driver
        print(f"vfiouser-tdisp run: the platform flow needs a virtio-rng profile "
              f"(virtio-rng, virtio-rng-2fn), not {args.profile}", file=sys.stderr)
        return 2
    shell = term.shell_mode(args)
    if shell and (why := term.terminal_problem()) is not None:
        print(f"vfiouser-tdisp run --shell: {why}; run it from a terminal, or without "
              "--shell", file=sys.stderr)
        return 2
    old = signal.signal(signal.SIGTERM, _sigterm)  # stop server and QEMU on SIGTERM too
    try:
        try:
            prov = ensure_provisioned(args.cache_dir, args.qemu)
        except ProvisionError as exc:
            print(f"vfiouser-tdisp run: {exc}", file=sys.stderr)
            return 1
        out = Path(args.out)
        state = identity_cache(Path(prov.cache))
        module, note = None, ""
        layout = getattr(args, "rhi_layout", None)
        try:
            if getattr(args, "kernel", None) or getattr(args, "kernel_build", None):
                prov, module = user_kernel(prov, args)
                note = f" (your kernel {prov.kernel}, module built against {args.kernel_build})"
        except ProvisionError as exc:
            print(f"vfiouser-tdisp run: {exc}", file=sys.stderr)
            return 2
        if shell and args.platform == "all":
            args.platform = "cca"  # one guest on the terminal: --platform picks another
        platforms = PLATFORMS if args.platform == "all" else (args.platform,)
        runs: dict[str, PlatformRun] = {}
        try:
            for platform in platforms:
                where = out / platform if args.platform == "all" else out
                runs[platform] = run_platform(prov, where, profile=args.profile,
                                              platform=platform, timeout=args.timeout,
                                              accel=args.accel, cache_dir=str(state),
                                              rhi_layout=layout if platform == "cca" else None,
                                              module=module, shell=shell,
                                              faults=getattr(args, "fault", None) or (),
                                              module_params=getattr(args, "module_param",
                                                                    None) or ())
                if args.platform == "all":
                    (where / "summary.txt").write_text(
                        "\n".join(summary(runs[platform], prov, platform, where, note)) + "\n")
        except IdentityError as exc:
            print(f"vfiouser-tdisp run: device identity in {identity_dir(state)}: {exc}",
                  file=sys.stderr)
            return 1
        except (RuntimeError, OSError, ProvisionError) as exc:
            print(f"vfiouser-tdisp run: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("vfiouser-tdisp run: interrupted; the server and QEMU were stopped",
                  file=sys.stderr)
            raise
        if args.platform == "all":
            print("\n".join(table(runs, prov, out)))
        else:
            print("\n".join(summary(runs[args.platform], prov, args.platform, out, note)))
        from .report_html import report_after_runs
        report_after_runs(out, {p: pr.results for p, pr in runs.items()}, args.profile,
                          {p: (out / p if args.platform == "all" else out) for p in runs})
        return 0 if all(pr.ok for pr in runs.values()) else 1
    finally:
        signal.signal(signal.SIGTERM, old)


__all__ = ["GUEST_STEPS", "PLATFORMS", "Boot", "PlatformRun", "boot_platform", "host_checks",
           "main_run", "reference_measurements", "rhi_layout_check", "run_platform",
           "user_kernel"]
