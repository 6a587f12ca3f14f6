"""`vfiouser-tdisp run --scenario NAME`: one fault, one boot, the kernel-visible reaction.

Each scenario arms faults in the server (serve --fault, docs/faults.md) and boots the
guest with guest-scripts/check_fault.sh, which runs the platform flow as far as the
fault reaches and prints PASS/FAIL lines named after the reaction expected of the
kernel and the guest (connect_fails + connect_recovers, connect_succeeds,
lock_succeeds, verifier_refuses, tdi_error_state, ide_fail_state).  The host adds
``fault_fired``:
the server's events show the fault really fired where it was meant to (a scenario
whose fault never fired proves nothing).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import identity_dir
from ..spdm.identity import IdentityError
from . import platform as pf
from .provision import Provisioned, ProvisionError, ensure_provisioned


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: tuple[str, ...]
    steps: tuple[str, ...]   # the guest's result lines (check_fault.sh)
    expect: str              # what the kernel/guest should do, in words
    min_fired: int = 1       # fault.fired events the server must show
    # faults that differ by platform (a firmware call's name), else ``faults``
    per_platform: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def faults_for(self, platform: str) -> tuple[str, ...]:
        return self.per_platform.get(platform, self.faults)


CONNECT_FAILS = ("tsm_module", "connect_fails", "connect_recovers", "disconnect")
VERIFIER = ("tsm_module", "verifier_refuses", "disconnect")
LOCKS = ("tsm_module", "lock_succeeds", "disconnect")

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    # type=1: the first SPDM object (GET_VERSION at connect), not the kernel's DOE
    # discovery at enumeration
    Scenario("doe-busy", ("doe-busy:type=1",), CONNECT_FAILS,
             "the kernel's DOE driver times out (1 s) on a BUSY mailbox, aborts it and "
             "connect fails; the next connect works"),
    Scenario("doe-error", ("doe-error:type=1",), CONNECT_FAILS,
             "the kernel's DOE driver sees ERROR, aborts and connect fails; the next "
             "connect works"),
    Scenario("doe-delay", ("doe-delay:seconds=1.5,type=1",), CONNECT_FAILS,
             "the response comes after the kernel's 1 s DOE timeout: the driver aborts, "
             "connect fails; the next connect works"),
    Scenario("kp-ack", ("kp-ack:status=4",), CONNECT_FAILS,
             "KP_ACK UNSPECIFIED_FAILURE: the firmware's IDE key programming fails, "
             "connect fails; the next connect works"),
    Scenario("dma-locked", ("dma-locked",), LOCKS,
             "the device tries DMA while its TDI is CONFIG_LOCKED: the TDISP gate holds "
             "it, nothing reaches guest memory, lock and verify succeed"),
    Scenario("fw-busy", ("fw-busy:PDEV_COMMUNICATE,count=3",),
             ("tsm_module", "connect_succeeds", "disconnect"),
             "the firmware busy three extra times on the connect call (RMI_BUSY, "
             "TDX_INTERRUPTED_RESUMABLE, EXPAND_BUFFER_LENGTH_REQUEST): the guest module "
             "calls again and connect succeeds", min_fired=3,
             per_platform={"tdx": ("fw-busy:TDH_SPDM_CONNECT,count=3",),
                           "sev-tio": ("fw-busy:TIO_DEV_CONNECT,count=3",)}),
    Scenario("spdm-busy", ("spdm-busy:GET_MEASUREMENTS,count=3",), LOCKS,
             "ERROR Busy three times on GET_MEASUREMENTS: the firmware's requester sends "
             "the request again through the kernel's DOE; lock succeeds", min_fired=3),
    Scenario("spdm-not-ready", ("spdm-not-ready:GET_MEASUREMENTS,rdt_exponent=10",), LOCKS,
             "ResponseNotReady on GET_MEASUREMENTS: the firmware's requester waits RDT "
             "and sends RESPOND_IF_READY through the kernel's DOE; lock succeeds"),
    Scenario("measurements-change", ("measurements-change:after=0",), VERIFIER,
             "the device's measurements differ from the reference values: the guest's "
             "verifier refuses"),
    Scenario("cert-change", ("cert-change:after=0",), ("tsm_module", "connect_fails"),
             "the device's certificate chain no longer verifies: the platform firmware, "
             "which reads it at connect, refuses it and connect fails"),
    Scenario("report-range", ("report-range",), VERIFIER,
             "a report range outside every BAR: the guest's verifier refuses"),
    Scenario("tdi-error", ("tdi-error",),
             ("tsm_module", "tdi_error_state", "disconnect"),
             "the TDI goes to ERROR on its own while RUN: tvm/state error, refresh "
             "fails, unlock recovers"),
    Scenario("ide-fail", ("ide-fail",),
             ("tsm_module", "ide_fail_state", "disconnect"),
             "the IDE stream the module enabled after the firmware keyed it fails while "
             "the TDI runs: its Status register reads INSECURE with IDE_FAIL, the TDI is "
             "in ERROR (tvm/state error), refresh fails, unlock recovers"),
)}


def fault_fired(boot: pf.Boot, scenario: Scenario) -> tuple[str, bool, str]:
    fired = [e for e in boot.of("fault.fired")]
    where = sorted({str(e.get("target")) for e in fired})
    return ("fault_fired", len(fired) >= scenario.min_fired,
            f"{len(fired)} x {', '.join(sorted({str(e.get('name')) for e in fired})) or '-'}"
            f" at {', '.join(where) or '-'}")


def kernel_doe_abort(boot: pf.Boot, timed_out: bool) -> tuple[str, bool, str]:
    """The kernel's DOE driver aborted the mailbox after the fault: 1 s later when it
    waited for a response that did not come (PCI_DOE_TIMEOUT, HZ), at once when the
    mailbox showed ERROR."""
    fired = boot.of("fault.fired")
    if not fired:
        return ("kernel_doe_abort", False, "the fault never fired")
    t0 = float(str(fired[0]["time"]))
    aborts = [float(str(e["time"])) - t0 for e in boot.of("doe.transition")
              if e.get("trigger") == "abort" and float(str(e["time"])) >= t0]
    if not aborts:
        return ("kernel_doe_abort", False, "no ABORT of the mailbox after the fault")
    after = aborts[0]
    ok = 0.95 <= after <= 3.0 if timed_out else after < 0.5
    why = "its 1 s timeout" if timed_out else "ERROR seen at once"
    return ("kernel_doe_abort", ok,
            f"the kernel's DOE driver aborted the mailbox {after:.3f} s after the fault "
            f"({why})")


def dma_held(boot: pf.Boot) -> tuple[str, bool, str]:
    """The device's DMA attempt while LOCKED was held by the TDISP gate."""
    refused = boot.of("tdisp.dma_refused")
    leaked = boot.of("tdisp.dma_leaked")
    return ("dma_held", bool(refused) and not leaked,
            f"{len(refused)} DMA attempt(s) while LOCKED held "
            f"({'; '.join(str(e.get('reason')) for e in refused) or '-'}), "
            f"{len(leaked)} let through")


# where each platform's firmware reports a device operation it gave up on
FIRMWARE_FAILED = ("rmm.comm_failed", "tdx.device_error", "psp.device_failed")


def firmware_refused_chain(boot: pf.Boot) -> tuple[str, bool, str]:
    """The platform firmware's requester refused the changed chain (its own check)."""
    why = [f"{name}: {e.get('error')}" for name in FIRMWARE_FAILED for e in boot.of(name)
           if "chain" in str(e.get("error"))]
    return ("firmware_refused", bool(why), why[0] if why else "no chain refusal in the events")


def busy_retried(boot: pf.Boot) -> tuple[str, bool, str]:
    """The firmware's requester sent GET_MEASUREMENTS again after each ERROR Busy."""
    answers = [str(e.get("error") or e.get("response")) for e in boot.of("spdm.response")
               if e.get("request") == "GET_MEASUREMENTS"]
    ok = answers[:4] == ["Busy", "Busy", "Busy", "MEASUREMENTS"]
    return ("busy_retried", ok, "GET_MEASUREMENTS -> " + ", ".join(answers[:6]))


def respond_if_ready(boot: pf.Boot) -> tuple[str, bool, str]:
    """The firmware's requester answered ResponseNotReady the DSP0274 way: after the
    ERROR it sent RESPOND_IF_READY, which got the real response."""
    events = [e for e in boot.of("spdm.response")]
    errs = [e for e in events if e.get("error") == "ResponseNotReady"]
    ready = [e for e in events if e.get("request") == "RESPOND_IF_READY"]
    ok = bool(errs) and bool(ready) and ready[0].get("response") == "MEASUREMENTS" and \
        float(str(ready[0]["time"])) > float(str(errs[0]["time"]))
    wait = float(str(ready[0]["time"])) - float(str(errs[0]["time"])) if ok else 0.0
    return ("respond_if_ready", ok,
            f"{errs[0].get('request') if errs else '-'} -> ResponseNotReady, then "
            f"RESPOND_IF_READY -> {ready[0].get('response') if ready else '-'} "
            f"{wait * 1000:.1f} ms later")


def ide_failed(boot: pf.Boot) -> tuple[str, bool, str]:
    """The device's side of ide-fail: the stream the module enabled went SECURE, left
    it by an IDE Fail only after the TDI bound to it ran, and that TDI went to ERROR
    because of it (PCIe r7.0 §11 with §6.33)."""
    streams = boot.of("ide_stream.transition")
    tdis = boot.of("tdi.transition")
    secure = [e for e in streams if e.get("new") == "SECURE"]
    failed = [e for e in streams if e.get("trigger") == "ide_fail"]
    run = [e for e in tdis if e.get("new") == "RUN"]
    errored = [e for e in tdis if e.get("trigger") == "ide_stream_insecure"]
    ok = bool(secure and failed and run and errored) and \
        float(str(run[0]["time"])) <= float(str(failed[0]["time"])) <= \
        float(str(errored[0]["time"]))
    if not ok:
        return ("ide_failed", False,
                f"{len(secure)} SECURE, {len(failed)} IDE Fail, {len(run)} RUN, "
                f"{len(errored)} TDI errored by the stream")
    return ("ide_failed", True,
            f"stream {failed[0].get('stream_id')} ({failed[0].get('stream')}) SECURE -> "
            f"INSECURE by IDE Fail while {run[0].get('function')} ran; the TDI "
            f"{errored[0].get('old')} -> {errored[0].get('new')} ({errored[0].get('cause')})")


HostCheck = Callable[[pf.Boot], tuple[str, bool, str]]

# each scenario's host check beyond fault_fired: the reaction where the events show it
HOST_CHECKS: dict[str, HostCheck] = {
    "doe-busy": lambda boot: kernel_doe_abort(boot, timed_out=True),
    "doe-delay": lambda boot: kernel_doe_abort(boot, timed_out=True),
    "doe-error": lambda boot: kernel_doe_abort(boot, timed_out=False),
    "cert-change": firmware_refused_chain,
    "dma-locked": dma_held,
    "spdm-not-ready": respond_if_ready,
    "spdm-busy": busy_retried,
    "ide-fail": ide_failed,
}


def run_scenario(prov: Provisioned, out: Path, scenario: Scenario, *,
                 profile: str = "virtio-rng", platform: str = "cca", timeout: float = 300,
                 accel: str = "auto", cache_dir: str | None = None,
                 module: Path | None = None, module_params: Sequence[str] = (),
                 log: bool = True) -> tuple[pf.Boot, list[tuple[str, bool, str]]]:
    boot = pf.boot_platform(prov, out / scenario.name, profile=profile, platform=platform,
                            timeout=timeout, accel=accel, cache_dir=cache_dir, log=log,
                            module=module, faults=scenario.faults_for(platform),
                            scenario=scenario.name, module_params=module_params)
    return boot, scenario_results(boot, scenario)


def scenario_results(boot: pf.Boot, scenario: Scenario) -> list[tuple[str, bool, str]]:
    """The guest's lines of ``scenario`` and the host's checks on the server's events
    (also what `vfiouser-tdisp report` rebuilds for a scenario's directory)."""
    results = pf._guest_results(boot, scenario.steps)
    results.append(fault_fired(boot, scenario))
    check = HOST_CHECKS.get(scenario.name)
    if check is not None:
        results.append(check(boot))
    return results


def main_scenario(args: argparse.Namespace) -> int:
    """`run --scenario NAME` (platform.main_run hands it over): the scenario's boot."""
    scenario = SCENARIOS[args.scenario]
    old = signal.signal(signal.SIGTERM, pf._sigterm)
    try:
        try:
            prov = ensure_provisioned(args.cache_dir, args.qemu)
        except ProvisionError as exc:
            print(f"vfiouser-tdisp run: {exc}", file=sys.stderr)
            return 1
        state = pf.identity_cache(Path(prov.cache))
        try:
            boot, results = run_scenario(prov, Path(args.out), scenario, profile=args.profile,
                                         platform=args.platform, timeout=args.timeout,
                                         accel=args.accel, cache_dir=str(state),
                                         module_params=getattr(args, "module_param",
                                                               None) or ())
        except IdentityError as exc:
            print(f"vfiouser-tdisp run: device identity in {identity_dir(state)}: {exc}",
                  file=sys.stderr)
            return 1
        except (RuntimeError, OSError, ProvisionError) as exc:
            print(f"vfiouser-tdisp run: {exc}", file=sys.stderr)
            return 1
        ok = bool(results) and all(r[1] for r in results)
        print(f"scenario {scenario.name} ({', '.join(scenario.faults_for(args.platform))}), "
              f"platform {args.platform}, {boot.run.accel} {boot.run.seconds:.1f} s: expected: "
              f"{scenario.expect}")
        for name, passed, detail in results:
            print(f"  {'PASS' if passed else 'FAIL'}  {name:<18}  {detail}")
        print(f"{'OK' if ok else 'FAILED'}: {sum(r[1] for r in results)} passed, "
              f"{sum(not r[1] for r in results)} failed")
        print(f"console: {Path(args.out) / scenario.name / 'console.log'}   events: "
              f"{Path(args.out) / scenario.name / 'events.jsonl'}")
        from .report_html import report_after_run
        report_after_run(Path(args.out) / scenario.name, results, args.platform, args.profile,
                         title_note=f" · scenario {scenario.name} "
                                    f"({', '.join(scenario.faults_for(args.platform))})")
        return 0 if ok else 1
    finally:
        signal.signal(signal.SIGTERM, old)


__all__ = ["FIRMWARE_FAILED", "HOST_CHECKS", "SCENARIOS", "Scenario", "busy_retried", "dma_held",
           "fault_fired", "firmware_refused_chain", "ide_failed", "kernel_doe_abort",
           "main_scenario", "respond_if_ready", "run_scenario", "scenario_results"]
