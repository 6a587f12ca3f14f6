"""``vfiouser-tdisp tsm --platform sev-tio STEP...``: the SEV-TIO sequences without a guest.

The PSP emulator, the host driver (ccp + hypervisor) and the SNP guest driver run in this
process; the device is reached over the DMTF spdm-emu socket (``--spdm HOST:PORT``) or
built in process with its BARs assigned.  One line per step; exit 0 only if every step
passed.  After a failure the remaining steps are skipped and the device is released.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..steps import main_steps, run_steps_noting
from .abi import (
    PAGE_SIZE,
    MmioValidateStatus,
    SevRet,
    SpdmDobjId,
    TioMsgType,
)
from .host import Evidence, SevTioError, SevTioHost, SnpGuest, tee_ranges
from .psp import Psp

STEPS = ("connect", "lock", "certificates", "measurements", "report", "status", "accept",
         "mmio_validate_rejects", "guest_msg_replay", "roll_key", "unlock", "disconnect")
DEFAULT_STEPS = ("connect", "lock", "accept", "unlock", "disconnect")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options only sev-tio has (steps, --spdm, --profile ... come from the shared parser)."""
    g = p.add_argument_group(
        "sev-tio", f"steps: {', '.join(STEPS)} (default: {' '.join(DEFAULT_STEPS)}); "
        "--spdm, --root, --profile, --cache-dir, --events and --verbose apply as well")
    g.add_argument("--device-id", type=lambda s: int(s, 0), default=0x0100, metavar="RID",
                   help="sev-tio: the device's routing id for TIO_DEV_CREATE (default: 0x100)")
    g.add_argument("--function-id", type=lambda s: int(s, 0), default=0, metavar="RID",
                   help="sev-tio: the TDI's TDISP function id (default: 0)")
    g.add_argument("--guest-rid", type=lambda s: int(s, 0), default=0x0100, metavar="RID",
                   help="sev-tio: the TDI's RID in the guest (guest_device_id; default 0x100)")
    g.add_argument("--stream-id", type=int, default=1, metavar="N",
                   help="sev-tio: IDE stream id for traffic class 0 (default: 1)")


def main_tsm(args: argparse.Namespace) -> int:
    return main_steps(args, STEPS, DEFAULT_STEPS, ("psp.", "sev_host.", "snp_guest."),
                      lambda steps, transport, where, root:
                      run_steps(args, steps, transport, where, root))


class Session:
    """One PSP with its host and guest, and what the steps learned."""

    def __init__(self, transport: Any, device_id: int, function_id: int, guest_rid: int,
                 stream_id: int) -> None:
        self.psp = Psp()
        self.host = SevTioHost(self.psp, transport, device_id=device_id, stream_id=stream_id)
        self.host.init()
        self.guest = SnpGuest(self.psp, self.host.mem, self.host.create_guest())
        self.rid = guest_rid
        self.host.assign(guest_rid, function_id)
        self.evidence: Evidence | None = None

    def need_evidence(self) -> Evidence:
        if self.evidence is None:
            raise SevTioError("no evidence: run lock first")
        return self.evidence

    def mmio_validate_rejects(self) -> str:
        """Three requests the PSP must refuse, each with its own status."""
        ev = self.need_evidence()
        r = tee_ranges(ev)[0]
        base = r.first_page * PAGE_SIZE
        cases = [
            ("past the range", dict(base=base, pages=r.number_of_pages + 1,
                                    range_id=r.range_id), MmioValidateStatus.OUT_OF_RANGE),
            ("wrong range_id", dict(base=base, pages=1, range_id=0x7F),
             MmioValidateStatus.NOT_REPORTED),
            ("not 4K-aligned", dict(base=base + 0x800, pages=1, range_id=r.range_id),
             MmioValidateStatus.NOT_4K),
        ]
        got = []
        for what, kw, want in cases:
            rsp = self.guest.mmio_validate(self.rid, kw["base"], kw["pages"], kw["range_id"])
            if rsp.status != want:
                raise SevTioError(f"{what}: status {rsp.status}, expected {want.name}")
            got.append(f"{what} -> {want.name} ({int(want)})")
        return "; ".join(got)

    def guest_msg_replay(self) -> str:
        """The relay sends the guest's last sealed message again: refused, counters intact."""
        self.guest.tdi_info(self.rid)
        replayed = self.guest.relay(self.guest.last_sealed, self.rid)
        if replayed[0] != SevRet.INVALID_PARAM:
            raise SevTioError(f"replay answered {SevRet(replayed[0]).name}")
        self.guest.tdi_info(self.rid)   # the guest's next message still goes through
        return (f"replayed {TioMsgType.TIO_MSG_TDI_INFO_REQ.name} -> "
                f"{SevRet.INVALID_PARAM.name}; next message accepted")


def run_steps(args: argparse.Namespace, steps: list[str], transport: Any, where: str,
              root: Any = None) -> int:
    s = Session(transport, args.device_id, args.function_id, args.guest_rid, args.stream_id)
    host, guest, rid = s.host, s.guest, s.rid

    def connect() -> str:
        host.connect()
        ev = host.evidence
        return (f"device CONNECTED, IDE stream {args.stream_id} keyed; certificates "
                f"{len(ev[SpdmDobjId.CERTIFICATE])} B, measurements "
                f"{len(ev[SpdmDobjId.MEASUREMENT])} B ({host.objects_sent} objects, {where})")

    def lock() -> str:
        s.evidence = ev = guest.lock(rid, root)
        return (f"TDI bound (LOCKED); evidence: certificates {len(ev.certificates)} B, "
                f"measurements {len(ev.measurements)} B, report {len(ev.report)} B "
                f"({len(ev.ranges)} ranges); SHA-384 digests match TDI_INFO"
                + ("; chain anchored" if root is not None else ""))

    def certificates() -> str:
        return f"certificate chain {len(host.certificates())} B (unchanged)"

    def measurements() -> str:
        return f"measurements {len(host.measurements())} B"

    def report() -> str:
        return f"report {len(host.report(rid))} B"

    def status() -> str:
        d = host.dev_status()
        out = f"device state {d.state}, {d.tdi_count} TDI(s), stream {d.stream_id}"
        if rid in host.tdis:
            ts = host.tdi_status(rid)
            out += f"; TDI state {ts.state}, guest status {ts.guest_status}, " \
                f"{ts.report_count} report(s)"
        return out

    def accept() -> str:
        n = guest.accept(rid, s.need_evidence())
        return f"RUN; sDTE written; {n} TEE range(s) validated"

    def roll_key() -> str:
        host.roll_key()
        return "IDE keys rolled to the other key set"

    def unlock() -> str:
        guest.unlock(rid, s.need_evidence())
        s.evidence = None
        return "STOP, sDTE and MMIO invalidated, TDI unbound and reclaimed"

    def disconnect() -> str:
        host.disconnect()
        return "device disconnected, context reclaimed"

    table: dict[str, Callable[[], str]] = {
        "connect": connect, "lock": lock, "certificates": certificates,
        "measurements": measurements, "report": report, "status": status, "accept": accept,
        "mmio_validate_rejects": s.mmio_validate_rejects,
        "guest_msg_replay": s.guest_msg_replay, "roll_key": roll_key, "unlock": unlock,
        "disconnect": disconnect}
    failed = not run_steps_noting(steps, table, "psp.device_failed", "PSP", width=22)
    if failed and host.dev_ctx is not None:   # release what the steps took
        try:
            host.disconnect(force=True)
        except SevTioError:
            pass
    return 1 if failed else 0
