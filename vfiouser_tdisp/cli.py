"""`vfiouser-tdisp` command line: setup, serve, qemu-args, certs, dump, run.

Each subcommand's arguments are declared here; the work is done by the layer
that owns it (imported lazily so `--help` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Sequence

from .device.device import PROFILES

DEFAULT_PROFILE = "virtio-rng"
PLATFORMS = ("cca", "tdx", "sev-tio")  # server.PLATFORMS names their firmware emulators
PROFILE_HELP = (f"device profile: a built-in one ({', '.join(sorted(PROFILES))}) or a "
                f"TOML profile file (docs/profiles.md); default: {DEFAULT_PROFILE}")


def _profile(text: str) -> str:
    """``--profile``: a built-in name, or a profile file, loaded and checked now so a
    mistake is one line naming the key; a file is passed on as an absolute path."""
    from .device.device import get_profile, is_profile_path, load_profile_file
    from .device.profile import ProfileError

    try:
        if is_profile_path(text):
            load_profile_file(text)
        else:
            get_profile(text)
    except ProfileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except KeyError as exc:
        raise argparse.ArgumentTypeError(exc.args[0]) from None
    return os.path.abspath(text) if is_profile_path(text) else text


def _tcp_port(text: str) -> int:
    """A TCP port number, 0..65535 (0: the kernel picks one)."""
    try:
        port = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0..65535")
    return port


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", required=True, action="append", metavar="PATH",
                   help="UNIX socket to serve the device on; repeat for several devices "
                        "(each gets its own socket)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, type=_profile, metavar="PROFILE",
                   help=PROFILE_HELP)
    p.add_argument("--events", metavar="FILE",
                   help="append structured events (JSON lines) to FILE")
    _add_output_args(p)
    p.add_argument("--spdm-port", type=_tcp_port, metavar="PORT",
                   help="also serve the DOE mailbox over the DMTF spdm-emu TCP socket "
                        "protocol on PORT (device i on PORT+i; 0 picks a free port); up to "
                        "16 clients at once share the mailbox, one idle for 60 s is dropped")
    p.add_argument("--spdm-host", default="127.0.0.1", metavar="ADDR",
                   help="address for --spdm-port (default: 127.0.0.1, loopback only)")
    p.add_argument("--pcap", metavar="FILE",
                   help="capture every DOE object, both directions, as pcap with "
                        "LINKTYPE_PCI_DOE (292), readable by DMTF spdm_dump and "
                        "`vfiouser-tdisp dump`; device i > 0 writes FILE.i (mode 0600)")
    p.add_argument("--pcap-keys", metavar="FILE",
                   help="append SPDM session secrets (JSON lines, secret! mode 0600): each "
                        "session's ECDHE dhe_secret (spdm_dump --dhe_secret) and per-direction "
                        "keys; device i > 0 writes FILE.i")
    p.add_argument("--debug-ide-keys", action="store_true",
                   help="log IDE_KM keys in clear in the events (default: a fingerprint)")
    p.add_argument("--platform", choices=PLATFORMS,
                   help="also serve the firmware port with this platform's firmware "
                        "emulator behind it, on PATH.fwport of the first --socket "
                        "(docs/firmware-port.md)")
    p.add_argument("--tamper", action="append", choices=("measurements", "report"),
                   help="alter the device's own evidence for the verifier's negative path: "
                        "report another firmware's measurements, or an interface report "
                        "range outside the BAR (repeatable)")
    p.add_argument("--rhi-layout", choices=("rhi-1.0-bet1", "linux-rfc-v4"),
                   help="with --platform cca: the RHI layout the RMM reads the realm's host "
                        "calls in (default rhi-1.0-bet1; the guest module's rhi_layout "
                        "must match)")
    _add_identity_args(p)
    _add_fault_args(p)
    p.add_argument("--control", metavar="SOCK",
                   help="listen on UNIX socket SOCK (mode 0600) for `vfiouser-tdisp fault "
                        "--control SOCK`: arm, list and clear faults at run time")


def _fault(text: str) -> str:
    """``--fault NAME[:ARGS]``: parsed now so a mistake is one line."""
    from .faults import FaultError, parse_fault

    try:
        parse_fault(text)
    except FaultError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _module_param(text: str) -> str:
    """``NAME=VALUE`` of a module parameter: a C identifier, a value without spaces."""
    name, eq, value = text.partition("=")
    if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not value or \
            any(c.isspace() for c in value):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=VALUE (a parameter name, a value without spaces)")
    return text


FAULT_HELP = ("arm fault NAME with ARGS (a,b,key=value; docs/faults.md), repeatable; "
              "`vfiouser-tdisp fault --names` lists them")


def _add_fault_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fault", action="append", type=_fault, metavar="NAME[:ARGS]",
                   help=FAULT_HELP)


SCENARIOS = ("doe-busy", "doe-error", "doe-delay", "kp-ack", "dma-locked", "fw-busy",
             "spdm-busy", "spdm-not-ready", "measurements-change", "cert-change",
             "report-range", "tdi-error", "ide-fail")


def _add_scenario_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=SCENARIOS, metavar="NAME",
                   help="instead of the flow, one fault scenario: its faults armed, the "
                        "flow as far as they reach, PASS lines naming the kernel's and the "
                        f"guest's reaction (docs/faults.md): {', '.join(SCENARIOS)}")


def _add_fault_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("fault", help="arm, list or clear faults of a running `serve "
                                     "--control SOCK` (docs/faults.md)")
    p.add_argument("--control", metavar="SOCK", help="the server's control socket")
    p.add_argument("faults", nargs="*", type=_fault, metavar="NAME[:ARGS]",
                   help="faults to arm")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--list", action="store_true", help="the armed faults and their counts")
    g.add_argument("--clear", nargs="?", const="", metavar="NAME",
                   help="disarm every fault (or every NAME fault)")
    g.add_argument("--names", action="store_true",
                   help="every fault this version knows, its layer and effect (no socket)")
    p.set_defaults(handler="vfiouser_tdisp.control:main_fault")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """How much `serve` prints on stderr, rendered from its events (docs/events.md)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing (events still go to --events)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="every event, each with its fields (default: one concise line per "
                        "protocol exchange, state change or error)")


def _add_events_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("events", help="print an events.jsonl (serve --events, run's DIR) "
                                      "as serve prints it on a terminal")
    p.add_argument("file", metavar="FILE", help="the JSON-lines event file")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep reading as the file grows, waiting for it to appear and "
                        "starting over when it is replaced (like tail -F; Ctrl-C stops)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="every event, each with its fields")
    p.add_argument("--kind", action="append", metavar="PREFIX",
                   help="only events whose name starts with PREFIX (repeatable), e.g. "
                        "--kind tdisp. --kind spdm.session")
    p.set_defaults(handler="vfiouser_tdisp.render:main_events")


def _add_identity_args(p: argparse.ArgumentParser) -> None:
    """The device identity options, shared by serve and certs (same meaning)."""
    p.add_argument("--cert-chain", metavar="FILE",
                   help="present this certificate chain (PEM or DER; root first or leaf "
                        "first, ending in a self-signed root) instead of the generated "
                        "one; needs --cert-key")
    p.add_argument("--cert-key", metavar="FILE",
                   help="private key of the --cert-chain leaf (PEM or DER)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="cache for the generated device identity (default: "
                        "$VFIOUSER_TDISP_CACHE or ~/.cache/vfiouser-tdisp)")


def _version() -> str:
    try:
        return importlib.metadata.version("vfiouser-tdisp")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vfiouser-tdisp",
        description="A virtual TDISP-capable PCIe device for stock QEMU (vfio-user-pci).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("setup", help="provision QEMU >= 10.1, the guest kernel and busybox "
                                     "into the cache (idempotent)")
    p.add_argument("--qemu", metavar="PATH",
                   help="use this qemu-system-x86_64 (else $VFIOUSER_TDISP_QEMU, then PATH, "
                        "then a private build in the cache)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="cache directory (default: $VFIOUSER_TDISP_CACHE or "
                        "$XDG_CACHE_HOME/vfiouser-tdisp)")
    p.add_argument("--force", action="store_true", help="re-provision even if cached")
    p.set_defaults(handler="vfiouser_tdisp.run.provision:main_setup")

    p = sub.add_parser("serve", help="run the vfio-user server alone")
    _add_serve_args(p)
    p.set_defaults(handler="vfiouser_tdisp.server:main_serve")

    p = sub.add_parser("qemu-args", help="print a complete QEMU command (the provisioned "
                                         "QEMU and guest) that boots a guest with the device, "
                                         "or with --device-only the arguments to add to yours")
    p.add_argument("--socket", required=True, metavar="PATH", help="the server's socket")
    p.add_argument("--profile", default=DEFAULT_PROFILE, type=_profile, metavar="PROFILE",
                   help="profile the server runs, a name or a .toml file (multi-function "
                        "profiles need one -device per function)")
    p.add_argument("--platform", choices=PLATFORMS,
                   help="the server runs with --platform: also attach the firmware port")
    p.add_argument("--initrd", metavar="FILE",
                   help="guest image from `vfiouser-tdisp initramfs` (needed unless "
                        "--device-only)")
    p.add_argument("--checks", metavar="A,B",
                   help="guest checks to run (guest-scripts/check_<name>.sh; default: the "
                        "profile's)")
    p.add_argument("--append", metavar="ARGS", help="more kernel command line options")
    p.add_argument("--memory", default="1G", help="guest RAM (default: 1G)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="accelerator: auto uses the cached KVM probe (default: auto)")
    p.add_argument("--cache-dir", metavar="DIR", help="provisioned cache")
    p.add_argument("--device-only", action="store_true",
                   help="print only the arguments that attach the device to your own QEMU")
    p.add_argument("--bus", default="rp0",
                   help="with --device-only: root port id to attach to (default: rp0)")
    p.set_defaults(handler="vfiouser_tdisp.run.qemu:main_qemu_args")

    p = sub.add_parser("qemu", help="run the provisioned QEMU with your arguments "
                                    "(`vfiouser-tdisp qemu -- ARGS`)")
    p.add_argument("--cache-dir", metavar="DIR", help="provisioned cache")
    p.add_argument("qemu_args", nargs=argparse.REMAINDER, metavar="-- ARGS",
                   help="arguments for qemu-system-x86_64")
    p.set_defaults(handler="vfiouser_tdisp.run.qemu:main_qemu")

    p = sub.add_parser("initramfs", help="build the guest image (busybox, guest-scripts, "
                                         "kernel modules) for a QEMU command of your own")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the gzip'd cpio")
    p.add_argument("--cache-dir", metavar="DIR", help="provisioned cache")
    p.set_defaults(handler="vfiouser_tdisp.run.guest_image:main_initramfs")

    p = sub.add_parser("certs", help="write the root CA and SPDM certificate chain a device "
                                     "presents, so a verifier can trust it")
    p.add_argument("--profile", default=DEFAULT_PROFILE, type=_profile, metavar="PROFILE",
                   help=PROFILE_HELP)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="where to write root.pem, root.der, intermediate.pem, chain.der, "
                        "leaf.pem (and chain-<alg>.der, leaf-<alg>.pem per signature "
                        "algorithm)")
    p.add_argument("--asym", metavar="ALG",
                   help="signature algorithm of chain.der/leaf.pem (default: the profile's "
                        "first that the identity has)")
    p.add_argument("--hash", metavar="ALG",
                   help="hash for the chain's RootHash (default: the profile's first)")
    _add_identity_args(p)
    p.set_defaults(handler="vfiouser_tdisp.device.identity:main_certs")

    p = sub.add_parser("dump", help="print a --pcap capture: DOE objects, SPDM, IDE_KM and "
                                    "TDISP messages; secured records opened with --keys")
    p.add_argument("capture", metavar="CAPTURE", help="pcap file written by serve --pcap")
    p.add_argument("--keys", metavar="KEYS",
                   help="the key log written by serve --pcap-keys: opens secured records")
    p.add_argument("--json", action="store_true", help="one JSON object per DOE object")
    p.add_argument("--spdm-dump", action="store_true",
                   help="print the DMTF spdm_dump command line that decodes CAPTURE "
                        "(one --dhe_secret per session from --keys) instead")
    p.set_defaults(handler="vfiouser_tdisp.inspect.capture:main_dump")

    _add_events_command(sub)

    p = sub.add_parser("run", help="the main job: provision, serve the device and the "
                                   "platform firmware, boot a guest and run the TEE I/O flow "
                                   "(connect, bind, lock, evidence, verify, accept, probe, "
                                   "unlock and the paths that must fail) inside it")
    p.add_argument("--out", default="out", metavar="DIR",
                   help="output directory: report.html, flow/ and tamper/ (console.log, "
                        "events.jsonl, ...) (default: out)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, type=_profile, metavar="PROFILE",
                   help=PROFILE_HELP)
    p.add_argument("--qemu", metavar="PATH", help="qemu-system-x86_64 to use")
    p.add_argument("--cache-dir", metavar="DIR", help="cache directory")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="hard deadline for the guest in seconds (default: 180)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="accelerator: auto probes KVM with a deadline and falls back to TCG")
    p.add_argument("--platform", choices=PLATFORMS + ("all",), default="all",
                   help="platform firmware the flow runs against (default: all, every "
                        "platform in turn, one table; cca: the Arm CCA RMM; tdx adds "
                        "the TDX module runtime update steps; sev-tio: the AMD PSP, adds "
                        "mmio_validate_rejects and guest_msg_replay; with all, each "
                        "platform's boots are in DIR/<platform>/)")
    p.add_argument("--rhi-layout", choices=("rhi-1.0-bet1", "linux-rfc-v4"),
                   help="cca: the RHI layout of the RMM and the guest module "
                        "(default rhi-1.0-bet1)")
    p.add_argument("--kernel", metavar="IMAGE",
                   help="boot this x86 bzImage instead of the provisioned Debian kernel "
                        "(with --kernel-build)")
    p.add_argument("--kernel-build", metavar="DIR",
                   help="the kernel's build tree: the guest module is built there (make -C "
                        "DIR M=... modules, its own .config; needs Module.symvers and "
                        "CONFIG_PCI_TSM, CONFIG_PCI_DOE, CONFIG_TSM built in)")
    p.add_argument("--kernel-modules", metavar="MODDIR",
                   help="the kernel's installed modules (/lib/modules/RELEASE) for the "
                        "initramfs (default: the provisioned ones, same release only)")
    p.add_argument("--module-param", action="append", type=_module_param, default=[],
                   metavar="NAME=VALUE",
                   help="a parameter of the guest module vtfw.ko (docs/firmware-port.md: "
                        "lock_at_bind, rhi_layout, heartbeat_secs), repeatable; given on "
                        "the guest's kernel command line as vtfw.NAME=VALUE, which the "
                        "guest scripts pass to insmod")
    _add_fault_args(p)
    _add_scenario_arg(p)
    p.set_defaults(handler="vfiouser_tdisp.run.platform:main_run")

    _add_run_shell_args(p)
    _add_fault_command(sub)
    _add_tsm_parser(sub)
    _add_tdx_blob_parser(sub)
    _add_report_parser(sub)
    return parser


def _add_run_shell_args(p: argparse.ArgumentParser) -> None:
    """`run --shell` / `--shell-only`: the guest's console on this terminal."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shell", action="store_true",
                   help="after the flow, leave a shell in the guest on this terminal (the "
                        "module loaded, vt-connect, vt-lock, vt-evidence, vt-accept, "
                        "vt-unlock on PATH); exit or Ctrl-D powers the guest off; needs a "
                        "terminal on stdin")
    g.add_argument("--shell-only", action="store_true",
                   help="like --shell, but instead of the flow (only the module loaded)")


def _add_report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`report DIR`: (re)build DIR/report.html for a run directory."""
    p = sub.add_parser("report", help="(re)build DIR/report.html for a `run --out DIR`: "
                                      "steps, sequence diagram, evidence, timings")
    p.add_argument("dir", metavar="DIR", help="the run directory (holding flow/ and tamper/)")
    p.add_argument("--platform", choices=PLATFORMS,
                   help="the run's platform (default: read from DIR/flow/qemu-cmdline.txt)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, type=_profile, metavar="PROFILE",
                   help="the run's device profile (for the reference values shown)")
    p.set_defaults(handler="vfiouser_tdisp.run.report_html:main_report")


def _add_tsm_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`tsm`: a platform's firmware emulator driven by its guest-less host driver."""
    from .tsm.cca.cli import add_arguments
    from .tsm.sev_tio.cli import add_arguments as add_sev_tio_arguments
    from .tsm.tdx.cli import add_platform_arguments as add_tdx_arguments

    p = sub.add_parser("tsm", help="run a platform's connect / bind / lock / accept sequence "
                                   "against a device without a guest (firmware emulator + "
                                   "host driver in this process)")
    p.add_argument("--platform", required=True, choices=("cca", "tdx", "sev-tio"),
                   help="platform firmware to emulate (cca: Arm CCA RMM; tdx: Intel TDX "
                        "module with TDX Connect + P-SEAMLDR; sev-tio: AMD PSP with SEV-TIO)")
    add_arguments(p)
    add_tdx_arguments(p.add_argument_group("--platform tdx"))
    add_sev_tio_arguments(p)
    p.set_defaults(handler="vfiouser_tdisp.tsm.cli:main_tsm")


def _add_tdx_blob_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`tdx-blob`: TDX module update images (valid and deliberately broken)."""
    from .tsm.tdx.cli import add_tdx_blob_arguments

    p = sub.add_parser("tdx-blob", help="write a TDX module update image (\"TDX-BLOB\", "
                                        "valid or deliberately broken) for update tooling")
    add_tdx_blob_arguments(p)
    p.set_defaults(handler="vfiouser_tdisp.tsm.tdx.cli:main_tdx_blob")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name, func_name = args.handler.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
