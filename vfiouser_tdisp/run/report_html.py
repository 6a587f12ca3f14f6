"""`DIR/report.html`: one self-contained page per `run` (issue 13 item 2).

Built only from what the run directory holds: each boot's ``events.jsonl`` (the
server's events), ``console.log`` (the guest's VTDISP lines) and
``doe-objects.txt``.  The page has the step table (PASS/FAIL, the guest's step times,
details), per boot a sequence diagram (lifelines guest kernel, guest module, firmware,
device: SPDM / IDE_KM / TDISP objects, firmware calls, the RMM's RHI exits and DOE
relays, state changes and fired faults as notes), the evidence the guest verified and
the timings.  No network: CSS, SVG and the few lines of JS are inline.

`run` writes it at its end (run/platform.py); ``vfiouser-tdisp report DIR`` rebuilds it
for an existing run directory, taking the results from the guest's console and running
the host checks again on the recorded events.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .job import parse_console
from .platform_tdx import SPDM_REQUEST as _TDX_SPDM_REQUEST  # the module asks for a DOE

if TYPE_CHECKING:
    from .scenarios import Scenario

LANES = ("guest kernel", "guest module", "firmware", "device")
KERNEL, MODULE, FIRMWARE, DEVICE = range(4)
MAX_ROWS = 500  # diagram rows per boot; the rest is named in a note
STEP_TIME_RE = re.compile(r"VTDISP-INFO step_time (\S+) ([\d.]+)")
# machines whose moves are drawn (DOE and chunk moves are per object: too many)
_QUIET_MACHINES = ("doe", "spdm.chunk", "rmm.sro")
_FIRMWARE_PREFIXES = ("rmm.", "tdx.", "psp.")
_ERRORS = {"rmm.comm_failed", "tdisp.error", "doe.error", "spdm.session.finish_failed",
           "spdm.secured.rejected", "psp.refused", "psp.device_failed", "tdx.device_error",
           "firmware_port.error", "tdisp.dma_held", "virtio.dma_blocked", "virtio.needs_reset",
           "rmm.memory_error", "tdx.memory_error", "tdisp.internal_error"}

Result = tuple[str, bool, str]


@dataclass(frozen=True)
class Row:
    """One line of the sequence diagram: an arrow (src != dst), or a note on one
    lifeline (src == dst), or a step divider (kind "step")."""

    kind: str  # spdm, idekm, tdisp, fwcall, relay, rhi, state, fault, error, step
    src: int
    dst: int
    label: str

    def key(self) -> tuple[str, int, int, str]:
        return (self.kind, self.src, self.dst, self.label)


@dataclass
class BootData:
    name: str
    directory: Path
    events: list[dict[str, object]] = field(default_factory=list)
    console: str = ""
    doe_objects: list[str] = field(default_factory=list)
    step_times: dict[str, float] = field(default_factory=dict)


def load_boot(directory: Path) -> BootData:
    boot = BootData(directory.name, directory)
    try:
        lines = (directory / "events.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            boot.events.append(ev)
    # threads write events; the diagram follows the clock
    boot.events.sort(key=lambda e: float(e.get("time", 0) or 0))  # type: ignore[arg-type]
    try:
        boot.console = (directory / "console.log").read_text(errors="replace")
    except OSError:
        pass
    try:
        boot.doe_objects = (directory / "doe-objects.txt").read_text().splitlines()
    except OSError:
        pass
    boot.step_times = {m.group(1): float(m.group(2))
                       for m in STEP_TIME_RE.finditer(boot.console)}
    return boot


def detect_platform(run_dir: Path) -> str:
    """The platform the run used, from the guest's kernel command line."""
    for sub in ("flow", "."):
        try:
            text = (run_dir / sub / "qemu-cmdline.txt").read_text()
        except OSError:
            continue
        m = re.search(r"vtdisp\.platform=([\w-]+)", text)
        if m:
            return m.group(1)
    return "cca"


# -- events -> diagram rows -----------------------------------------------------------------

def _lane_of_machine(kind: str) -> int:
    return FIRMWARE if kind.startswith(_FIRMWARE_PREFIXES) else DEVICE


def _lane_of_target(target: str) -> int:
    t = target.lower()
    if any(w in t for w in ("firmware", "rmm", "tdx", "psp", "fw", "rmi", "rsi", "call")):
        return FIRMWARE
    return DEVICE


def event_row(e: dict[str, object]) -> Row | None:
    """The diagram row an event draws, or None (detail the diagram leaves out)."""
    kind = str(e.get("event", ""))
    g = e.get
    if kind == "spdm.request":
        label = str(g("request")) + (" (secured)" if g("session_id") else "")
        return Row("spdm", KERNEL, DEVICE, "SPDM " + label)
    if kind == "spdm.response":
        resp = str(g("response"))
        if resp == "ERROR":
            return Row("error", DEVICE, KERNEL, f"SPDM ERROR {g('error')}")
        return Row("spdm", DEVICE, KERNEL, "SPDM " + resp)
    if kind.startswith("ide_km.") and kind not in ("ide_km.key_fingerprint", "ide_km.key_debug"):
        name = kind.removeprefix("ide_km.").upper()
        status = g("status")
        return Row("idekm", KERNEL, DEVICE, f"IDE_KM {name}"
                   + (f" → {status}" if status not in (None, 0, "0", "SUCCESS") else ""))
    if kind == "tdisp.request":
        return Row("tdisp", KERNEL, DEVICE,
                   f"TDISP {str(g('message')).removesuffix('_REQUEST')} → {g('result')}")
    if kind == "rmm.call":
        status = str(g("status"))
        # INCOMPLETE / BUSY are part of the protocol (stateful operations); errors are red
        return Row("error" if "ERROR" in status else "fwcall", MODULE, FIRMWARE,
                   str(g("call")) + ("" if status.endswith("SUCCESS") else f" → {status}"))
    if kind == "tdx.call":
        status = str(g("status"))
        if status == _TDX_SPDM_REQUEST:  # the module hands the host an object for the DOE
            return Row("relay", FIRMWARE, KERNEL, f"{g('leaf')}: SPDM object (DOE)")
        ok = set(status.removeprefix("0x")) <= {"0"}
        return Row("fwcall", MODULE, FIRMWARE, str(g("leaf")) + ("" if ok else f" → {status}"))
    if kind == "psp.command" and g("status") == "SPDM_REQUEST":
        return Row("relay", FIRMWARE, KERNEL, f"{g('cmd')}: SPDM object (DOE)")
    if kind == "psp.command":
        return Row("fwcall", MODULE, FIRMWARE, f"{g('cmd')} → {g('status')}")
    if kind == "rmm.communicate" and g("req_len"):
        return Row("relay", FIRMWARE, KERNEL,
                   f"{g('protocol')} object {g('req_len')} B (DOE)")
    if kind == "rmm.host_call" and g("op") == "exit":
        return Row("rhi", FIRMWARE, KERNEL, f"RHI {g('rhi') or g('fid')}")
    if kind == "fault.fired":
        args = g("args")
        return Row("fault", _lane_of_target(str(g("target"))), _lane_of_target(str(g("target"))),
                   f"⚡ fault {g('name')}" + (f" ({g('target')})" if g("target") else "")
                   + (f" {args}" if args not in (None, "", [], {}) else ""))
    if kind.endswith(".transition"):
        machine = kind.removesuffix(".transition")
        if g("role"):  # both ends of an SPDM session report their moves
            machine += f" ({g('role')})"
        if machine in _QUIET_MACHINES or g("old") == g("new"):
            return None
        lane = _lane_of_machine(kind)
        return Row("error" if g("new") == "ERROR" else "state", lane, lane,
                   f"{machine}: {g('old')} → {g('new')}")
    if kind in _ERRORS:
        lane = _lane_of_machine(kind)
        why = g("error") or g("why") or g("reason") or g("state") or ""
        return Row("error", lane, lane, f"{kind} {why}".strip())
    return None


def _compress(rows: Sequence[Row]) -> list[tuple[Row, int, int]]:
    """Collapse repeated exchanges: a run of the same 1..6 rows repeated is drawn once
    with its count.  Returns (row, count, group size) with count > 1 on a group's rows."""
    out: list[tuple[Row, int, int]] = []
    i = 0
    keys = [r.key() for r in rows]
    while i < len(rows):
        best_p, best_n = 1, 1
        for p in range(1, 7):  # 5: relay, call, request, IDE_KM/TDISP, response
            if rows[i].kind == "step":
                break
            n = 1
            while keys[i + n * p:i + (n + 1) * p] == keys[i:i + p]:
                n += 1
            if n > 1 and n * p > best_n * best_p:
                best_p, best_n = p, n
        for r in rows[i:i + best_p]:
            out.append((r, best_n, best_p))
        i += best_p * best_n
    return out


def diagram_rows(boot: BootData) -> list[Row]:
    """Rows in time order, with the guest's steps as dividers.  The guest reports step
    durations on its own clock; they are laid on the host's by starting `connect` at
    the first object the device was asked for (the connect step's first DOE object)."""
    timed: list[tuple[float, Row]] = []
    for e in boot.events:
        row = event_row(e)
        if row is not None:
            timed.append((float(e.get("time", 0) or 0), row))  # type: ignore[arg-type]
    steps = list(boot.step_times.items())
    first_obj = next((t for t, r in timed if r.kind in ("spdm", "relay")), None)
    names = [n for n, _s in steps]
    if first_obj is not None and "connect" in names:
        start = first_obj - 0.02 - sum(s for n, s in steps[:names.index("connect")])
        bounds = []
        acc = start
        for n, s in steps:
            bounds.append((acc, n))
            acc += s
        for t0, n in bounds:
            timed.append((t0, Row("step", KERNEL, DEVICE, n)))
        timed.sort(key=lambda tr: (tr[0], tr[1].kind != "step"))
    rows = [r for _t, r in timed]
    # the response that carried an IDE_KM / TDISP answer is already in that row's label
    return [r for i, r in enumerate(rows)
            if not (r.label == "SPDM VENDOR_DEFINED_RESPONSE" and i
                    and rows[i - 1].kind in ("idekm", "tdisp"))]


# -- HTML -----------------------------------------------------------------------------------

_COLORS = {"spdm": "#2563eb", "idekm": "#7c3aed", "tdisp": "#0d9488", "fwcall": "#6b7280",
           "relay": "#d97706", "rhi": "#b45309", "state": "#15803d", "fault": "#dc2626",
           "error": "#dc2626", "step": "#334155"}
_LEGEND = (("spdm", "SPDM"), ("idekm", "IDE_KM"), ("tdisp", "TDISP"),
           ("fwcall", "firmware call"), ("relay", "DOE object relayed"),
           ("rhi", "host call (RHI)"), ("state", "state change"),
           ("fault", "fault / error"))
LANE_X0, LANE_DX, ROW_H, TOP = 110, 230, 20, 56


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def sequence_svg(rows: Sequence[Row], max_rows: int = MAX_ROWS) -> str:
    items = _compress(rows)
    note = ""
    if len(items) > max_rows:  # firmware calls go first: the protocol is the story
        calls = sum(1 for r, _n, _s in items if r.kind == "fwcall")
        items = _compress([r for r in rows if r.kind != "fwcall"])
        note = f"{calls} firmware-call rows left out to stay under {max_rows} rows"
    dropped = max(0, len(items) - max_rows)
    items = items[:max_rows]
    if dropped:
        note += ("; " if note else "") + f"… {dropped} more rows not drawn"
    if note:
        note += "; every event is in events.jsonl"
    width = LANE_X0 + LANE_DX * (len(LANES) - 1) + 300
    height = TOP + ROW_H * (len(items) + 1) + (ROW_H if note else 0) + 10
    x = [LANE_X0 + i * LANE_DX for i in range(len(LANES))]
    parts = [f'<svg class="seq" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
             '<defs>' + "".join(
                 f'<marker id="ah-{k}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
                 f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
                 f'fill="{c}"/></marker>' for k, c in _COLORS.items()) + '</defs>']
    for i, name in enumerate(LANES):
        parts.append(f'<rect x="{x[i] - 62}" y="8" width="124" height="28" rx="6" '
                     f'class="lane-head"/><text x="{x[i]}" y="27" class="lane-name">'
                     f'{_esc(name)}</text>'
                     f'<line x1="{x[i]}" y1="36" x2="{x[i]}" y2="{height - 6}" class="life"/>')
    y = TOP
    group_start = -1
    for idx, (row, count, size) in enumerate(items):
        c = _COLORS.get(row.kind, "#111")
        title = f"<title>{_esc(row.label)}{f' ×{count}' if count > 1 else ''}</title>"
        if count > 1 and (group_start < 0 or idx - group_start >= size):
            group_start = idx
            parts.append(f'<rect x="{x[0] - 90}" y="{y - 13}" width="{x[-1] - x[0] + 180}" '
                         f'height="{ROW_H * size - 2}" class="rep"/>'
                         f'<text x="{x[-1] + 80}" y="{y + 1}" class="rep-n">×{count}</text>')
        elif count == 1:
            group_start = -1
        if row.kind == "step":
            parts.append(f'<g class="row step">{title}<line x1="{x[0] - 100}" y1="{y}" '
                         f'x2="{x[-1] + 100}" y2="{y}" class="step-line"/>'
                         f'<text x="{x[0] - 98}" y="{y - 3}" class="step-name">'
                         f'▸ {_esc(row.label)}</text></g>')
        elif row.src == row.dst:
            lx = x[row.src]
            w = min(7.0 * len(row.label) + 14, LANE_DX * 2 - 20)
            parts.append(f'<g class="row note {row.kind}">{title}<rect x="{lx - w / 2:.0f}" '
                         f'y="{y - 12}" width="{w:.0f}" height="16" rx="4" '
                         f'fill="{c}" class="note-box"/><text x="{lx}" y="{y}" '
                         f'class="note-text">{_esc(_clip(row.label, int(w / 6.6)))}</text></g>')
        else:
            x1, x2 = x[row.src], x[row.dst]
            x2a = x2 - 4 if x2 > x1 else x2 + 4
            mid = (x1 + x2) / 2
            parts.append(f'<g class="row arrow {row.kind}">{title}<line x1="{x1}" y1="{y}" '
                         f'x2="{x2a}" y2="{y}" stroke="{c}" stroke-width="1.6" '
                         f'marker-end="url(#ah-{row.kind})"/><text x="{mid}" y="{y - 4}" '
                         f'fill="{c}" class="arrow-label">'
                         f'{_esc(_clip(row.label, int(abs(x2 - x1) / 6.4)))}'
                         f'{f" ×{count}" if count > 1 else ""}</text></g>')
        y += ROW_H
    if note:
        parts.append(f'<text x="{x[0] - 98}" y="{y}" class="cap-note">{_esc(note)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[:max(n - 1, 1)] + "…"


def evidence_items(boot: BootData, profile: str = "virtio-rng") -> list[tuple[str, str]]:
    """What the guest verified, as it reported it (verify / tamper lines), with the
    ranges the firmware and the device recorded."""
    run = parse_console(boot.console)
    out: list[tuple[str, str]] = []
    for name in ("verify", "tamper", "lock", "evidence"):
        res = run.result(name)
        if res is None:
            continue
        if name in ("lock", "evidence"):  # what the kernel / module checked, as one line
            out.append((f"{name} step", res[1].strip()))
            continue
        for part in (p.strip() for p in res[1].split(";")):
            if not part:
                continue
            if part.startswith("chain"):
                out.append(("certificate chain", part))
            elif "digest" in part:
                out.append(("attested digests", part))
            elif "measurement" in part:
                out.append(("measurements", part))
            elif part.startswith(("range", "FAIL report")):
                out.append(("report range vs BAR", part))
            elif part.startswith("FAIL"):
                out.append(("refused", part))
            else:
                out.append((name, part))
    for e in boot.events:
        kind = e.get("event")
        if kind == "spdm.requester.negotiated":
            out.append(("SPDM negotiated", f"version {e.get('version')}, {e.get('hash')}, "
                                           f"{e.get('asym')}, {e.get('dhe')}, {e.get('aead')}"))
        elif kind == "spdm.session.opened":
            out.append(("SPDM session", f"{e.get('session_id')}: {e.get('dhe')}, "
                                        f"{e.get('aead')}, {e.get('hash')}"))
        elif kind == "rmm.vdev.created" and e.get("ranges"):
            out.append(("VDEV ranges (RMM)", ", ".join(map(str, e.get("ranges") or []))))  # type: ignore[call-overload]
        elif kind == "spdm.measurements":
            out.append(("measurement blocks signed", f"{e.get('blocks')} blocks (operation "
                                                     f"{e.get('operation')})"))
    out = list(dict.fromkeys(out))  # each lock signs the same blocks: say it once
    try:
        from .platform import reference_measurements
        ref = [ln for ln in reference_measurements(profile).splitlines()
               if ln and not ln.startswith("#")]
        if ref:
            out.append(("reference values (/etc/vtdisp/measurements.ref)", "\n".join(ref)))
    except Exception:  # noqa: BLE001 - a profile the page cannot rebuild: leave it out
        pass
    return out


_CSS = """
:root{--ok:#15803d;--bad:#dc2626;--ink:#0f172a;--mute:#64748b;--line:#e2e8f0}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);
 margin:0;background:#f8fafc}
header{padding:18px 28px;color:#fff;background:linear-gradient(90deg,#0f172a,#1e3a8a)}
header.failed{background:linear-gradient(90deg,#450a0a,#991b1b)}
header h1{margin:0 0 4px;font-size:22px}
header .sub{opacity:.85}
.badge{display:inline-block;padding:2px 10px;border-radius:999px;font-weight:700;
 font-size:13px;margin-left:8px;vertical-align:middle}
.badge.ok{background:#dcfce7;color:var(--ok)}.badge.bad{background:#fee2e2;color:var(--bad)}
main{padding:16px 28px 40px;max-width:1500px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 18px;
 margin:16px 0;box-shadow:0 1px 2px #0000000d}
h2{font-size:17px;margin:0 0 10px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--mute)}
td.res{font-weight:700;width:52px}td.res.ok{color:var(--ok)}td.res.bad{color:var(--bad)}
tr.bad{background:#fef2f2}
td.name{font-family:ui-monospace,monospace;white-space:nowrap}
td.time{white-space:nowrap;font-variant-numeric:tabular-nums;width:150px}
.bar{display:inline-block;height:8px;background:#93c5fd;border-radius:4px;margin-left:6px;
 vertical-align:middle}
td.detail{font-size:13px;color:#334155;word-break:break-word}
.mono{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;word-break:break-all}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:4px;
 vertical-align:-2px}
.seq-wrap{overflow-x:auto;border:1px solid var(--line);border-radius:8px}
svg.seq{font:11px ui-monospace,monospace;background:#fff}
svg .lane-head{fill:#1e293b}svg .lane-name{fill:#fff;text-anchor:middle;font:600 12px system-ui}
svg .life{stroke:#cbd5e1;stroke-dasharray:4 4}
svg .arrow-label{text-anchor:middle}
svg .note-text{fill:#fff;text-anchor:middle;font-size:10.5px}
svg .note-box{opacity:.9}
svg .step-line{stroke:#94a3b8;stroke-width:1}
svg .step-name{fill:#334155;font:600 11px system-ui}
svg .rep{fill:#fef3c7;opacity:.55}
svg .rep-n{fill:#b45309;font-weight:700}
svg .cap-note{fill:#b45309;font-style:italic}
svg.hide-fw .fwcall{display:none}
details summary{cursor:pointer;font-weight:600;margin:6px 0}
.controls{margin:6px 0 10px;font-size:13px}
.kv td:first-child{width:230px;color:var(--mute)}
footer{color:var(--mute);font-size:12px;padding:0 28px 20px}
"""

_JS = """
(function(){
  var errs=0;
  window.addEventListener('error',function(){errs++;document.body.dataset.scriptErrors=errs;});
  function toggle(cb){
    document.querySelectorAll('svg.seq').forEach(function(s){
      s.classList.toggle('hide-fw',!cb.checked);});
  }
  var cb=document.getElementById('show-fw');
  if(cb){cb.addEventListener('change',function(){toggle(cb);});toggle(cb);}
  var only=document.getElementById('only-failed');
  if(only){only.addEventListener('change',function(){
    document.querySelectorAll('#steps tbody tr').forEach(function(tr){
      tr.style.display=(only.checked&&!tr.classList.contains('bad'))?'none':'';});});}
  document.body.dataset.scriptErrors=errs;
  document.body.dataset.ready='1';
})();
"""


def build_html(run_dir: Path, results: Sequence[Result], *, platform: str,
               boots: Sequence[BootData], title_note: str = "",
               profile: str = "virtio-rng") -> str:
    ok = bool(results) and all(r[1] for r in results)
    passed = sum(1 for r in results if r[1])
    times: dict[str, float] = {}
    for b in boots:
        for k, v in b.step_times.items():
            if b.name == "flow" or k == "tamper":
                times.setdefault(k, v)
    tmax = max(times.values(), default=1.0) or 1.0
    main = boots[0] if boots else None
    info = parse_console(main.console).info if main else {}
    h: list[str] = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width\">",
        f"<title>vfiouser-tdisp run: {'OK' if ok else 'FAILED'} ({_esc(platform)})</title>",
        f"<style>{_CSS}</style></head><body data-script-errors=\"0\">",
        f"<header class=\"{'ok' if ok else 'failed'}\"><h1>vfiouser-tdisp run — platform "
        f"{_esc(platform)}<span class=\"badge {'ok' if ok else 'bad'}\">"
        f"{'OK' if ok else 'FAILED'}</span></h1><div class=\"sub\">{passed} passed, "
        f"{len(results) - passed} failed · guest kernel {_esc(info.get('kernel', '?'))} · "
        f"device {_esc(info.get('device', '?'))} · {_esc(run_dir)}{_esc(title_note)}</div>"
        "</header><main>"]
    # steps
    h.append("<section><h2>Steps</h2><div class=\"controls\"><label><input type=\"checkbox\" "
             "id=\"only-failed\"> only failures</label></div><table id=\"steps\"><thead><tr>"
             "<th>result</th><th>step</th><th>time</th><th>detail</th></tr></thead><tbody>")
    for name, good, detail in results:
        t = times.get(name)
        bar = (f"{t:6.2f} s<span class=\"bar\" style=\"width:{max(2, 90 * t / tmax):.0f}px\">"
               "</span>") if t is not None else ""
        h.append(f"<tr class=\"{'ok' if good else 'bad'}\"><td class=\"res "
                 f"{'ok' if good else 'bad'}\">{'PASS' if good else 'FAIL'}</td>"
                 f"<td class=\"name\">{_esc(name)}</td><td class=\"time\">{bar}</td>"
                 f"<td class=\"detail\">{_esc(detail)}</td></tr>")
    h.append("</tbody></table></section>")
    # timings
    h.append("<section><h2>Timings</h2><table class=\"kv\"><tbody>")
    for b in boots:
        ts = [float(e.get("time", 0) or 0) for e in b.events]  # type: ignore[arg-type]
        span = (max(ts) - min(ts)) if ts else 0.0
        guest = sum(b.step_times.values())
        h.append(f"<tr><td>{_esc(b.name)}</td><td>server up {span:.1f} s (first to last "
                 f"event), guest steps {guest:.2f} s, {len(b.events)} events, "
                 f"{len(b.doe_objects)} lines in doe-objects.txt</td></tr>")
    slow = sorted(times.items(), key=lambda kv: -kv[1])[:5]
    if slow:
        h.append("<tr><td>slowest steps</td><td>" + ", ".join(
            f"{_esc(k)} {v:.2f} s" for k, v in slow) + "</td></tr>")
    h.append("</tbody></table></section>")
    # evidence
    for b in boots:
        items = evidence_items(b, profile)
        if not items:
            continue
        h.append(f"<section><h2>Evidence the guest verified — {_esc(b.name)}</h2>"
                 "<table class=\"kv\"><tbody>")
        for label, text in items:
            cls = ' class="bad"' if "FAIL" in text else ''
            h.append(f"<tr{cls}><td>{_esc(label)}</td>"
                     f"<td class=\"mono\">{_esc(text)}</td></tr>")
        h.append("</tbody></table></section>")
    # diagrams
    h.append("<section><h2>Sequence</h2><div class=\"legend\">" + "".join(
        f"<span><i style=\"background:{_COLORS[k]}\"></i>{_esc(v)}</span>"
        for k, v in _LEGEND) + "</div><div class=\"controls\"><label><input type=\"checkbox\" "
        "id=\"show-fw\" checked> firmware calls</label> · repeated exchanges are drawn once "
        "with their count (×N); hover an arrow for its full name; step dividers: the "
        "guest's step times laid on the host clock from connect's first DOE object</div>")
    for i, b in enumerate(boots):
        rows = diagram_rows(b)
        h.append(f"<details{' open' if i == 0 else ''}><summary>{_esc(b.name)}: "
                 f"{len(rows)} rows</summary><div class=\"seq-wrap\">{sequence_svg(rows)}"
                 "</div></details>")
    h.append("</section></main><footer>Built by vfiouser-tdisp from the run directory "
             "(events.jsonl, console.log, doe-objects.txt); rebuild with "
             f"<code>vfiouser-tdisp report {_esc(run_dir)}</code>.</footer>")
    h.append(f"<script>{_JS}</script></body></html>")
    return "".join(h)


def boot_dirs(run_dir: Path) -> list[Path]:
    """The boots of a run directory: flow/ then tamper/ (or the directory itself)."""
    subs = [run_dir / n for n in ("flow", "tamper") if (run_dir / n / "events.jsonl").exists()
            or (run_dir / n / "console.log").exists()]
    return subs or [run_dir]


def write_report(run_dir: Path, results: Sequence[Result] | None = None, *,
                 platform: str | None = None, profile: str = "virtio-rng",
                 title_note: str = "") -> Path:
    """Write ``run_dir/report.html``; without ``results``, rebuild them from the
    guest consoles and the host checks on the recorded events."""
    platform = platform or detect_platform(run_dir)
    boots = [load_boot(d) for d in boot_dirs(run_dir)]
    if results is None:
        results = rebuild_results(boots, platform)
    page = build_html(run_dir, results, platform=platform, boots=boots,
                      title_note=title_note, profile=profile)
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def rebuild_results(boots: Sequence[BootData], platform: str) -> list[Result]:
    """The step lines `run` printed, from the recorded guest consoles and events."""
    from . import platform as pf

    results: list[Result] = []
    for b in boots:
        run = parse_console(b.console)
        boot = pf.Boot(run, b.events, b.step_times)
        if b.name == "tamper":
            results += [r for r in pf._guest_results(boot, pf.TAMPER_STEPS)
                        if r[0] == "tamper" or not r[1]]
            results += pf.tamper_checks(boot)
        elif (scenario := _scenario_of(run.console)) is not None:
            from .scenarios import scenario_results
            results += scenario_results(boot, scenario)
        else:
            steps = pf.PLATFORM_STEPS.get(platform, pf.GUEST_STEPS)
            results += pf._guest_results(boot, steps)
            if b.events and platform in pf.FIRMWARE_CHECKS:
                results += pf.host_checks(boot, platform)
    return results


def _scenario_of(console: str) -> Scenario | None:
    """The fault scenario a boot ran (check_fault.sh's ``VTDISP-INFO scenario NAME``)."""
    from .scenarios import SCENARIOS

    m = re.search(r"VTDISP-INFO scenario (\S+)", console)
    return SCENARIOS.get(m.group(1)) if m else None


def report_after_run(run_dir: Path, results: Sequence[Result], platform: str,
                     profile: str, title_note: str = "") -> Path | None:
    """`run`'s last act: DIR/report.html from the results it printed.  A page that
    cannot be built is reported, never allowed to change the run's verdict."""
    try:
        path = write_report(run_dir, results, platform=platform, profile=profile,
                            title_note=title_note)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"report: not written: {exc}", file=sys.stderr)
        return None
    print(f"report: {path}")
    return path


def build_index(run_dir: Path, runs: Mapping[str, Sequence[Result]]) -> str:
    """DIR/report.html of a run over several platforms (``run --platform all``): a row per
    step, a column per platform, each platform's own page (DIR/<platform>/report.html)
    linked by a relative path (nothing leaves the directory)."""
    ok = all(bool(r) and all(x[1] for x in r) for r in runs.values())
    names: list[str] = []
    for res in runs.values():
        for n, _ok, _d in res:
            if n not in names:
                names.append(n)
    h = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
         f"<title>vfiouser-tdisp run: {'OK' if ok else 'FAILED'}</title>",
         f"<style>{_CSS}</style></head><body data-script-errors=\"0\">",
         f"<header class=\"{'ok' if ok else 'failed'}\"><h1>vfiouser-tdisp run — "
         f"{len(runs)} platforms<span class=\"badge {'ok' if ok else 'bad'}\">"
         f"{'OK' if ok else 'FAILED'}</span></h1><div class=\"sub\">{_esc(run_dir)}</div>"
         "</header><main><section><h2>Platforms</h2><table><thead><tr><th>step</th>"
         + "".join(f"<th><a href=\"{_esc(p)}/report.html\">{_esc(p)}</a></th>" for p in runs)
         + "</tr></thead><tbody>"]
    for n in names:
        cells = []
        for res in runs.values():
            got = {x[0]: x for x in res}
            if n not in got:
                cells.append("<td>–</td>")
            else:
                good = got[n][1]
                cells.append(f"<td class=\"res {'ok' if good else 'bad'}\" "
                             f"title=\"{_esc(got[n][2])}\">{'PASS' if good else 'FAIL'}</td>")
        h.append(f"<tr><td class=\"name\">{_esc(n)}</td>{''.join(cells)}</tr>")
    h.append("</tbody></table></section></main>"
             "<script>document.body.dataset.ready='1';</script></body></html>")
    return "".join(h)


def report_after_runs(run_dir: Path, runs: Mapping[str, Sequence[Result]], profile: str,
                      where: Mapping[str, Path]) -> Path | None:
    """`run --platform all`: each platform's page in its directory, and the index."""
    if len(runs) == 1:
        return report_after_run(run_dir, next(iter(runs.values())), next(iter(runs)), profile)
    for platform, results in runs.items():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            write_report(where[platform], results, platform=platform, profile=profile)
    path = run_dir / "report.html"
    path.write_text(build_index(run_dir, runs))
    print(f"report: {path}")
    return path


def main_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.dir)
    if not run_dir.is_dir():
        print(f"vfiouser-tdisp report: {run_dir}: not a directory", file=sys.stderr)
        return 2
    subs = {p.name: p for p in sorted(run_dir.iterdir())
            if (p / "flow").is_dir() and not (run_dir / "flow").is_dir()}
    if subs and args.platform is None:  # run --platform all: DIR/<platform>/
        runs = {}
        for name, sub in subs.items():
            boots = [load_boot(d) for d in boot_dirs(sub)]
            runs[name] = rebuild_results(boots, detect_platform(sub))
        report_after_runs(run_dir, runs, args.profile, subs)
        return 0
    if not any((d / "events.jsonl").exists() or (d / "console.log").exists()
               for d in boot_dirs(run_dir)):
        print(f"vfiouser-tdisp report: {run_dir}: no events.jsonl or console.log (a `run "
              "--out` directory holds flow/ and tamper/)", file=sys.stderr)
        return 2
    out = write_report(run_dir, platform=args.platform, profile=args.profile)
    print(out)
    return 0


__all__ = ["BootData", "Row", "build_html", "diagram_rows", "event_row", "load_boot",
           "main_report", "rebuild_results", "report_after_run",
           "report_after_runs", "sequence_svg", "write_report"]
