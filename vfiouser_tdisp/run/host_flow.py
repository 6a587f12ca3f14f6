"""The host-side TSM flow the `run` job performs while the guest holds.

Over the device's spdm-emu socket (the DOE mailbox of the same device the
guest sees): authenticate (chain anchored in the device's root CA, signed
challenge and measurements), open a secured session, key an IDE stream with
IDE_KM, then for every function LOCK its TDI, read the interface report and
check its ranges against the BARs the guest kernel assigned, START it (RUN),
STOP it, and end the session.
"""

from __future__ import annotations

from cryptography import x509

from ..doe.emu_socket import SpdmEmuClient
from ..spdm.requester import SpdmRequester
from ..tdisp import messages as t
from ..tsm.core import IdeKmRequester, PciSigChannel, TdispRequester, parse_report

IDE_STREAM_ID = 1


class HostFlowError(Exception):
    pass


def guest_bars(console: str) -> dict[int, dict[int, tuple[int, int]]]:
    """function number -> BAR index -> (start, size), from the guest's functions check."""
    line = next((ln for ln in console.splitlines()
                 if ln.startswith("VTDISP-RESULT functions PASS")), None)
    if line is None:
        raise HostFlowError("the guest did not report its functions and BARs")
    out: dict[int, dict[int, tuple[int, int]]] = {}
    for item in line.split()[4:]:
        bdf, _, bars = item.rpartition(":")
        fn = int(bdf.rsplit(".", 1)[1])
        out[fn] = {}
        for bar in filter(None, bars.split(",")):
            name, _, span = bar.partition("=")
            start, _, size = span.partition("+")
            out[fn][int(name[3:])] = (int(start, 16), int(size, 16))
    return out


def report_bars(report: t.TDI_REPORT_STRUCTURE) -> dict[int, tuple[int, int]]:
    """BAR index -> (start, size) covered by a report's ranges (page-number encoding)."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for r in report.mmio_range:
        spans.setdefault(r.range_id, []).append((r.first_page << 12, r.number_of_pages << 12))
    return {i: (min(s for s, _ in v), sum(n for _, n in v)) for i, v in spans.items()}


def tsm_flow(port: int, console: str, root: x509.Certificate | None = None,
             host: str = "127.0.0.1") -> str:
    bars = guest_bars(console)
    client = SpdmEmuClient(host, port)
    steps: list[str] = []
    try:
        spdm = SpdmRequester(client.doe)
        spdm.authenticate(root, summary_hash_type=0xFF)
        conn = spdm.conn
        assert conn.hash is not None and conn.asym is not None
        blocks = spdm.get_measurements().blocks
        steps.append(f"SPDM {conn.version >> 4}.{conn.version & 0xF} {conn.asym.name}/"
                     f"{conn.hash.name}, {len(blocks)} signed measurements")
        session = spdm.start_session()
        channel = PciSigChannel(spdm, session)
        ide_km, tdisp = IdeKmRequester(channel), TdispRequester(channel)
        ide_km.query()
        ide_km.program_stream(IDE_STREAM_ID)
        steps.append(f"session {session.session_id:#010x}, IDE stream {IDE_STREAM_ID} keyed")
        for fn, fn_bars in sorted(bars.items()):
            fid = t.make_function_id(0, fn)
            nonce = tdisp.lock(fid, default_stream_id=IDE_STREAM_ID)
            got = report_bars(parse_report(tdisp.report(fid)))
            if got != fn_bars:
                raise HostFlowError(f"fn{fn}: report ranges {got} != guest BARs {fn_bars}")
            tdisp.start(fid, nonce)
            if tdisp.state(fid) is not t.TdiState.RUN:
                raise HostFlowError(f"fn{fn}: not RUN after START")
            tdisp.stop(fid)
            steps.append(f"fn{fn} LOCK/report ({len(got)} BARs = guest's)/START/STOP")
        ide_km.stop_stream(IDE_STREAM_ID)
        spdm.end_session(session)
    finally:
        client.close()
    return "; ".join(steps)
