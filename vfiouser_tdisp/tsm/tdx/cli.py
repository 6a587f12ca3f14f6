"""``vfiouser-tdisp tsm --platform tdx STEP...`` and ``vfiouser-tdisp tdx-blob``.

``tsm``: the TDX module emulator, the host driver and the TD driver run in this process;
the device is reached over the DMTF spdm-emu socket (``--spdm HOST:PORT``) or built in
process (tsm/platform.py).  One line per step, exit 0 only if every step passed; after a
failure the remaining steps are skipped and the device is released.

``tdx-blob``: writes a TDX module update image (tdx_image 0x200, "TDX-BLOB") signed with the
emulated P-SEAMLDR's lab key, or a deliberately broken one, for update tooling
(``/sys/class/firmware/tdx_module``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Only light imports here: `vfiouser-tdisp --help` builds the parsers.
STEPS = ("connect", "bind", "lock", "report", "measurements", "info", "accept", "heartbeat",
         "key_update", "seamldr_info", "module_update", "update_bad_image", "update_exhausted",
         "unlock", "unbind", "disconnect")
DEFAULT_STEPS = ("connect", "bind", "lock", "accept", "heartbeat", "key_update",
                 "seamldr_info", "module_update", "update_bad_image", "unlock", "unbind",
                 "disconnect")
DEFAULT_UPDATES = 4          # model.NUM_UPDATES (checked by a test)
DEFAULT_IMAGE_VERSION = "1.5.21"   # the boot module's (model.BOOT_MODULE_VERSION) next update


def add_platform_arguments(p: Any) -> None:
    """The TDX-only options of ``tsm`` (the steps, --spdm, --root ...: tsm/cca/cli.py)."""
    p.description = (f"tdx steps: {', '.join(STEPS)} (default: {' '.join(DEFAULT_STEPS)}); "
                     "docs/platform-tdx.md")
    p.add_argument("--updates", type=int, default=DEFAULT_UPDATES, metavar="N",
                   help=f"P-SEAMLDR num_remaining_updates at start (default: {DEFAULT_UPDATES})")
    p.add_argument("--image", metavar="FILE",
                   help="update image for module_update (default: one built for the next "
                        "update version)")
    p.add_argument("--preempt-every", type=int, default=0, metavar="N",
                   help="the module answers every N-th device-talking call "
                        "TDX_INTERRUPTED_RESUMABLE (default: never)")


def main_tsm(args: argparse.Namespace) -> int:
    from ..steps import main_steps

    def run(steps: list[str], transport: Any, where: str, root: Any) -> int:
        image = Path(args.image).read_bytes() if args.image else None
        return run_sequence(args, steps, transport, where, root, image)
    return main_steps(args, STEPS, DEFAULT_STEPS, ("tdx.", "tdx_host."), run)


def run_sequence(args: argparse.Namespace, steps: list[str], transport: Any, where: str,
                 root: Any, image: bytes | None) -> int:
    from ...events import LOG, Recorder
    from ..steps import run_steps
    from .host import TdxError, TdxHost, TdxTd
    from .module import TdxModule
    module = TdxModule(num_updates=args.updates, preempt_every=args.preempt_every)
    host = TdxHost(module, transport, func_id=args.pdev_id, tdi=args.tdi)
    td = TdxTd(host)
    table = sequence_steps(host, td, where, root, image)
    errors = Recorder()
    unsubscribe = LOG.subscribe(errors)

    def why() -> str | None:
        failed = errors.of("tdx.device_error")
        return f"module: {failed[-1]['failure']} {failed[-1]['error']}" if failed else None
    try:
        passed = run_steps(steps, table, why)
    finally:
        unsubscribe()
    if not passed:   # release what the steps took
        try:
            if module.tdis:
                host.unbind()
            host.disconnect()
        except TdxError:
            pass
    return 0 if passed else 1


def sequence_steps(host: Any, td: Any, where: str, root: Any,
                   image: bytes | None) -> dict[str, Callable[[], str]]:
    """Step name -> function returning the one-line detail (raises on failure)."""
    from . import model
    from .abi import SeamldrStatus, SpdmMngOp, TdcmOperation, TdiRdField
    from .blob import BREAKAGES, ImageError, build_image
    from .host import TdxError, split_dev_info, status_name
    from .model import TdiRdModelField
    module = host.module

    def connect() -> str:
        host.connect()
        head, chain, vca, meas = split_dev_info(host.link.dev_info)
        return (f"SPDM context {host.link.spdm_id:#x} connected, IDE stream "
                f"{host.link.stream_id} keyed ({host.objects_sent} DOE objects, {where}); "
                f"dev_info {len(host.link.dev_info)} B (chain {len(chain)}, VCA {len(vca)}, "
                f"measurements {len(meas)})")

    def bind() -> str:
        session = host.bind()
        tdi = module.tdis[host.tdi]
        return (f"TDI {host.tdi:#06x} LOCKED (TDH.TDI.BIND [MODEL], bind session {session}), "
                f"{len(tdi.ranges)} MMIO ranges mapped, DMAR added")

    def lock() -> str:
        td.lock(root)
        return (f"LOCKED; evidence: report {len(td.report)} B, dev_info {len(td.dev_info)} B, "
                f"hashes match TDG.TDI.RD" + ("; chain anchored" if root is not None else ""))

    def report() -> str:
        return f"report {len(td.tdcm(TdcmOperation.GET_TDI_REPORT))} B"

    def measurements() -> str:
        host.mng(SpdmMngOp.RECOLLECT)
        return f"TDH.SPDM.MNG(RECOLLECT): dev_info {len(host.link.dev_info)} B"

    def info() -> str:
        return (f"state {td.state().name} bind_session {td.rd(TdiRdField.BIND_SESSION_ID)} "
                f"tdisp_version {td.rd(TdiRdModelField.TDISP_VERSION):#x} report_hash "
                f"{td.rd_hash(TdiRdModelField.REPORT_HASH).hex()[:16]}...")

    def accept() -> str:
        td.accept()
        return "RUN: MMIO accepted, DMAR accepted, TDG.TDI.START + TDCM START_TDI"

    def heartbeat() -> str:
        host.mng(SpdmMngOp.HEARTBEAT)
        return "TDH.SPDM.MNG(HEARTBEAT)"

    def key_update() -> str:
        host.mng(SpdmMngOp.KEY_UPDATE)
        return "TDH.SPDM.MNG(KEY_UPDATE): session keys updated"

    def seamldr_info() -> str:
        i = host.seamldr_info()
        return (f"P-SEAMLDR {i.major}.{i.minor}.{i.reserved_0:02d}, num_remaining_updates "
                f"{i.num_remaining_updates}, module {'.'.join(map(str, host.module_version()))}")

    def module_update() -> str:
        before, left = host.module_version(), host.seamldr_info().num_remaining_updates
        state = module.td_view(host.tdi)
        blob = image or build_image((before[0], before[1], before[2] + 1))
        host.install(blob)
        after = host.module_version()
        now_left = host.seamldr_info().num_remaining_updates
        if now_left != left - 1:
            raise TdxError(f"num_remaining_updates {left} -> {now_left}")
        if module.td_view(host.tdi) != state:
            raise TdxError(f"TDI {state} before the update, {module.td_view(host.tdi)} after")
        if host.link.spdm_id:
            host.mng(SpdmMngOp.HEARTBEAT)     # the session survived: the device answers
        return (f"module {'.'.join(map(str, before))} -> {'.'.join(map(str, after))}, "
                f"updates left {left} -> {now_left}, TDI "
                f"{state.name if state is not None else 'unbound'} kept, session alive")

    def update_bad_image() -> str:
        version = host.module_version()
        left = host.seamldr_info().num_remaining_updates
        seen = []
        good = build_image((version[0], version[1], version[2] + 1))
        for name in ("bad-signature", "module-hash", "version"):
            try:
                host.install(BREAKAGES[name].make(good))
            except ImageError:
                seen.append(f"{name}: -EINVAL (kernel)")
                continue
            except TdxError as exc:
                seen.append(f"{name}: {status_name(exc.status or 0)}")
                continue
            raise TdxError(f"broken image {name!r} was installed")
        if host.module_version() != version or \
                host.seamldr_info().num_remaining_updates != left:
            raise TdxError("a refused image changed the module or the update counter")
        if host.link.spdm_id:
            host.mng(SpdmMngOp.HEARTBEAT)
        return "refused: " + ", ".join(seen) + "; module and counter unchanged"

    def update_exhausted() -> str:
        n = 0
        while host.seamldr_info().num_remaining_updates:
            v = host.module_version()
            host.install(build_image((v[0], v[1], v[2] + 1)))
            n += 1
        v = host.module_version()
        try:
            host.install(build_image((v[0], v[1], v[2] + 1)))
        except TdxError as exc:
            if exc.status != model.UPDATES_EXHAUSTED:
                raise
            return (f"{n} more updates, then SEAMLDR.INSTALL -> "
                    f"{SeamldrStatus(exc.status).name} at num_remaining_updates 0")
        raise TdxError("an update was accepted with num_remaining_updates 0")

    def unlock() -> str:
        td.unlock()
        return "TDCM UNBIND: TDI stopped and unbound"

    def unbind() -> str:
        bound = host.tdi in module.tdis
        host.unbind()
        return "TDH.TDI.STOP + TDH.TDI.UNBIND" if bound else "nothing bound"

    def disconnect() -> str:
        host.disconnect()
        return "IDE stream blocked, stopped, deleted; SPDM context disconnected, deleted"

    return {"connect": connect, "bind": bind, "lock": lock, "report": report,
            "measurements": measurements, "info": info, "accept": accept,
            "heartbeat": heartbeat, "key_update": key_update, "seamldr_info": seamldr_info,
            "module_update": module_update, "update_bad_image": update_bad_image,
            "update_exhausted": update_exhausted, "unlock": unlock, "unbind": unbind,
            "disconnect": disconnect}


# -- tdx-blob ------------------------------------------------------------------------------------
def add_tdx_blob_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="FILE", help="where to write the image")
    p.add_argument("--version", default=DEFAULT_IMAGE_VERSION, metavar="MAJOR.MINOR.UPDATE",
                   help="module version the image carries (default: the emulated boot "
                        "module's next update version)")
    p.add_argument("--module-pages", type=int, default=2, metavar="N",
                   help="module pages, 1..496 (default: 2)")
    p.add_argument("--break", dest="breakage", metavar="KIND",
                   help="write a deliberately broken image (--list-breakages names them)")
    p.add_argument("--list-breakages", action="store_true",
                   help="print each KIND, what it breaks and what refuses it")
    p.add_argument("--check", metavar="FILE",
                   help="check an image instead: the kernel's rules and the checksum")


def main_tdx_blob(args: argparse.Namespace) -> int:
    from .blob import BREAKAGES, ImageError, build_image, checksum_ok, parse_image
    if args.breakage is not None and args.breakage not in BREAKAGES:
        print(f"vfiouser-tdisp tdx-blob: no breakage {args.breakage!r}; one of: "
              f"{', '.join(sorted(BREAKAGES))}", file=sys.stderr)
        return 2
    if args.list_breakages:
        for name, b in sorted(BREAKAGES.items()):
            refused = b.refused_by if isinstance(b.refused_by, str) else \
                f"SEAMLDR.INSTALL {b.refused_by.name}"
            print(f"{name:<26} {refused:<32} {b.what}")
        return 0
    if args.check:
        image = Path(args.check).read_bytes()
        try:
            pieces = parse_image(image)
        except ImageError as exc:
            print(f"{args.check}: the kernel refuses it (-EINVAL): {exc}")
            return 1
        ok = checksum_ok(image)
        print(f"{args.check}: tdx_image 0x200, {pieces.header.sigstruct_nr_pages} sigstruct + "
              f"{pieces.header.module_nr_pages} module pages; checksum "
              f"{'ok' if ok else 'WRONG'}")
        return 0 if ok else 1
    if not args.out:
        print("vfiouser-tdisp tdx-blob: --out FILE (or --check / --list-breakages)",
              file=sys.stderr)
        return 2
    try:
        major, minor, update = (int(x) for x in args.version.split("."))
    except ValueError:
        print(f"vfiouser-tdisp tdx-blob: version {args.version!r} is not MAJOR.MINOR.UPDATE",
              file=sys.stderr)
        return 2
    if not 1 <= args.module_pages <= 496:
        print("vfiouser-tdisp tdx-blob: --module-pages must be 1..496", file=sys.stderr)
        return 2
    image = build_image((major, minor, update), module_pages=args.module_pages)
    if args.breakage:
        image = BREAKAGES[args.breakage].make(image)
    Path(args.out).write_bytes(image)
    what = f"broken ({args.breakage}: {BREAKAGES[args.breakage].what})" if args.breakage \
        else "valid"
    print(f"{args.out}: {len(image)} bytes, module {major}.{minor}.{update:02d}, {what}")
    return 0
