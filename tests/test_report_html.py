"""report.html (issue 13 item 2): built from a run directory, rendered in a real browser.

The run directories are built from real event streams: `vfiouser-tdisp tsm --platform
cca --events` runs the RMM emulator, the guest-less host and realm drivers and the
device in one process (a passing sequence; a failing one where the realm trusts another
root, so lock fails); the step lines that command printed become the guest's console
lines.  A `-m vm` test renders the page of one real `run`.  Headless Chromium (Debian's
`chromium`, installed here when missing) renders each page: its screenshot must not be
blank, the header must be the verdict's colour, and the page must report no script error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vfiouser_tdisp.run import report_html as rh

from .conftest import PROVISIONED_CACHE

TSM_LINE = re.compile(r"^(\w+)\s+(PASS|FAIL)\s+([\d.]+)s (.*)$")


def _tsm_run(tmp: Path, name: str, *extra: str) -> Path:
    """A run directory (DIR/flow) from a real `tsm --platform cca` sequence."""
    run_dir = tmp / name
    flow = run_dir / "flow"
    flow.mkdir(parents=True)
    ev = flow / "events.jsonl"
    p = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "tsm", "--platform", "cca",
                        "--events", str(ev), *extra], capture_output=True, text=True,
                       timeout=120)
    lines = ["VTDISP-INFO kernel guest-less (tsm --platform cca)",
             "VTDISP-INFO device 0x1af4:0x1044 0000:00:00.0"]
    passed = failed = 0
    for line in p.stdout.splitlines():
        m = TSM_LINE.match(line.strip())
        if m:
            lines.append(f"VTDISP-INFO step_time {m.group(1)} {m.group(3)}")
            lines.append(f"VTDISP-RESULT {m.group(1)} {m.group(2)} {m.group(4)}")
            passed += m.group(2) == "PASS"
            failed += m.group(2) == "FAIL"
    assert passed, p.stdout + p.stderr
    lines.append(f"VTDISP-DONE {passed} {failed}")
    (flow / "console.log").write_text("\n".join(lines) + "\n")
    (flow / "qemu-cmdline.txt").write_text("qemu ... -append 'vtdisp.platform=cca'\n")
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("report")
    good = _tsm_run(tmp, "pass")
    # another device identity's root: the realm refuses the device's chain at lock
    certs = tmp / "other-certs"
    subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "certs", "--out", str(certs),
                    "--cache-dir", str(tmp / "other-identity")], check=True,
                   capture_output=True, timeout=120)
    bad = _tsm_run(tmp, "fail", "--root", str(certs / "root.pem"))
    # a fault as the fault injector reports it (fault.fired: name, target, args)
    evpath = bad / "flow" / "events.jsonl"
    lock = next(e for e in map(json.loads, evpath.read_text().splitlines())
                if e["event"] == "tdisp.request")
    with evpath.open("a") as f:  # just before the first TDISP request
        f.write(json.dumps({"time": lock["time"] - 1e-4, "event": "fault.fired",
                            "name": "doe-busy", "target": "doe", "args": {"count": 3}}) + "\n")
    return {"pass": good, "fail": bad}


def _results(run_dir: Path) -> list[tuple[str, bool, str]]:
    from vfiouser_tdisp.run.job import parse_console

    return parse_console((run_dir / "flow" / "console.log").read_text()).results


def test_diagram_rows_from_real_events(runs: dict[str, Path]) -> None:
    rows = rh.diagram_rows(rh.load_boot(runs["pass"] / "flow"))
    arrows = [(r.src, r.dst, r.label) for r in rows if r.kind != "step"]
    k, m, fw, dev = rh.KERNEL, rh.MODULE, rh.FIRMWARE, rh.DEVICE
    # DSP0274: VCA first, then the session; the firmware's calls and the device's answers
    i_ver = arrows.index((dev, k, "SPDM VERSION"))
    i_kx = arrows.index((dev, k, "SPDM KEY_EXCHANGE_RSP"))
    assert i_ver < i_kx < arrows.index((dev, k, "SPDM FINISH_RSP"))
    assert (m, fw, "RMI_PDEV_CREATE") in arrows
    assert (m, fw, "RSI_VDEV_GET_INFO") in arrows
    # TDISP (PCIe r7.0 §11.3): LOCK_INTERFACE answered by LOCK_INTERFACE_RESPONSE
    assert (k, dev, "TDISP LOCK_INTERFACE → LOCK_INTERFACE_RESPONSE") in arrows
    assert any(lbl.startswith("IDE_KM KEY_PROG") for s, d, lbl in arrows if (s, d) == (k, dev))
    # state changes as notes on their owner's lifeline: RMM PDEV (firmware-abi C.4),
    # the device's TDI (TDISP)
    assert (fw, fw, "rmm.pdev: NEW → NEEDS_KEY") in arrows
    assert (dev, dev, "tdi: CONFIG_LOCKED → RUN") in arrows
    # the step dividers follow the sequence's steps, in order
    steps = [r.label for r in rows if r.kind == "step"]
    assert steps == ["connect", "bind", "lock", "accept", "unlock", "unbind", "disconnect"]


def test_failing_run_page(runs: dict[str, Path]) -> None:
    page = rh.build_html(runs["fail"], _results(runs["fail"]), platform="cca",
                         boots=[rh.load_boot(runs["fail"] / "flow")])
    assert "FAILED" in page and 'class="failed"' in page
    assert re.search(r'<tr class="bad"><td class="res bad">FAIL</td><td class="name">lock'
                     r'</td>.*?the device chain does not start at the trusted root', page)
    # the fault is marked on the device's lifeline, red, with its arguments
    rows = rh.diagram_rows(rh.load_boot(runs["fail"] / "flow"))
    faults = [r for r in rows if r.kind == "fault"]
    assert [(f.src, f.dst) for f in faults] == [(rh.DEVICE, rh.DEVICE)]
    assert faults[0].label == "⚡ fault doe-busy (doe) {'count': 3}"
    assert 'class="row note fault"' in page
    # the sequence stopped at the failed lock: no START_INTERFACE at the device
    assert "TDISP START_INTERFACE" not in page


def test_repeated_exchanges_collapse_and_the_diagram_is_capped() -> None:
    chunk = rh.Row("spdm", rh.KERNEL, rh.DEVICE, "SPDM CHUNK_GET")
    resp = rh.Row("spdm", rh.DEVICE, rh.KERNEL, "SPDM CHUNK_RESPONSE")
    rows = [rh.Row("fwcall", rh.MODULE, rh.FIRMWARE, "RMI_PDEV_COMMUNICATE")]
    rows += [chunk, resp] * 12 + [chunk]
    got = rh._compress(rows)
    assert [(r.label, n, s) for r, n, s in got] == [
        ("RMI_PDEV_COMMUNICATE", 1, 1), ("SPDM CHUNK_GET", 12, 2),
        ("SPDM CHUNK_RESPONSE", 12, 2), ("SPDM CHUNK_GET", 1, 1)]
    svg = rh.sequence_svg(rows)
    assert "SPDM CHUNK_GET ×12" in svg and svg.count("<g class=\"row arrow spdm\">") == 3
    many = [rh.Row("spdm", rh.KERNEL, rh.DEVICE, f"SPDM R{i}") for i in range(30)]
    capped = rh.sequence_svg(many, max_rows=10)
    assert capped.count('class="row arrow') == 10
    assert "… 20 more rows not drawn" in capped


def test_page_is_self_contained(runs: dict[str, Path]) -> None:
    path = rh.write_report(runs["pass"], _results(runs["pass"]), platform="cca")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "@import" not in page and "url(http" not in page
    assert not re.search(r"https?://", page)
    assert "<svg" in page and "<script>" in page and "<style>" in page


def test_report_command_rebuilds_a_run_directory(runs: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "copy"
    shutil.copytree(runs["fail"], target)
    p = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "report", str(target)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(target / "report.html")
    page = (target / "report.html").read_text()
    # results rebuilt: the guest's lines from console.log, the host checks on the events
    assert "the device chain does not start at the trusted root" in page
    assert ">pdev_states<" in page and ">doe_objects<" in page
    p = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "report", str(tmp_path / "no")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "not a directory" in p.stderr


# -- in a real browser --------------------------------------------------------------------

@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing (root only)."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"],
                       capture_output=True, timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed and `apt-get install -y chromium` was not "
                    "possible here (not root, or no apt)")
    return found


def _chromium(binary: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
                           f"--user-data-dir={page.parent / '.chromium'}", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=120)


def render(binary: str, page: Path) -> tuple[Path, str, str]:
    """Screenshot and serialized DOM of ``page``; chromium's log."""
    shot = page.with_suffix(".png")
    p = _chromium(binary, page, "--window-size=1400,2200", f"--screenshot={shot}")
    assert shot.exists(), p.stderr[-2000:]
    dom = _chromium(binary, page, "--dump-dom")
    return shot, dom.stdout, p.stderr + dom.stderr


def check_rendered(binary: str, page: Path, verdict: str) -> Path:
    from PIL import Image, ImageStat

    shot, dom, log = render(binary, page)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 2200)
    gray = img.convert("L")
    dark = sum(gray.histogram()[:200]) / (img.size[0] * img.size[1])
    assert dark > 0.03, f"screenshot nearly blank: {dark:.3f} non-white"
    assert ImageStat.Stat(gray).stddev[0] > 20
    # the header's colour is the verdict: blue for OK, red for FAILED
    r, g, b = img.getpixel((1390, 8))  # the gradient's bright end
    assert (b > r + 40) if verdict == "ok" else (r > b + 40), (r, g, b)
    # the page's script ran to its end and counted no error; chromium logged none
    assert 'data-ready="1"' in dom and 'data-script-errors="0"' in dom, dom[:400]
    assert "Uncaught" not in log, log[-2000:]
    return shot


def test_pages_render_in_chromium(chromium: str, runs: dict[str, Path]) -> None:
    good = rh.write_report(runs["pass"], _results(runs["pass"]), platform="cca")
    bad = rh.write_report(runs["fail"], None, platform="cca")
    check_rendered(chromium, good, "ok")
    check_rendered(chromium, bad, "failed")


def test_the_browser_check_sees_script_errors(chromium: str, tmp_path: Path) -> None:
    # the negative control: a page whose script throws is caught by the same checks
    page = tmp_path / "broken.html"
    html = (rh.build_html(tmp_path, [("x", True, "")], platform="cca", boots=[])
            .replace("<script>", "<script>window.noSuchFunction();</script><script>"))
    page.write_text(html)
    _shot, dom, log = render(chromium, page)
    assert "Uncaught" in log or 'data-script-errors="0"' not in dom


@pytest.mark.vm
def test_a_real_run_writes_its_report(chromium: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "run", "--platform", "cca",
                        "--out", str(out), "--timeout", "300",
                        "--cache-dir", str(PROVISIONED_CACHE)],
                       capture_output=True, text=True, timeout=900)
    assert f"report: {out / 'report.html'}" in p.stdout, p.stdout[-3000:] + p.stderr[-2000:]
    page = (out / "report.html").read_text()
    ok = p.returncode == 0
    assert ("OK" if ok else "FAILED") in page
    # the page shows the guest kernel's relays, RHI host calls, and both boots
    assert "RHI VDEV_GET_INTERFACE_REPORT" in page or "RHI " in page
    assert "(DOE)" in page and "flow: " in page and "tamper: " in page
    assert "chain of 3 to the anchor" in page
    check_rendered(chromium, out / "report.html", "ok" if ok else "failed")


def test_tdx_sequence_draws_the_modules_doe_requests(tmp_path: Path) -> None:
    flow = tmp_path / "flow"
    flow.mkdir()
    subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "tsm", "--platform", "tdx",
                    "--events", str(flow / "events.jsonl"), "connect"], check=True,
                   capture_output=True, timeout=120)
    rows = rh.diagram_rows(rh.load_boot(flow))
    arrows = [(r.src, r.dst, r.label) for r in rows]
    # TDH.SPDM.CONNECT answers TDX_SPDM_REQUEST ([TDXC1]) for every object the host
    # must carry to the device's DOE mailbox, then the device answers it
    relay = (rh.FIRMWARE, rh.KERNEL, "TDH.SPDM.CONNECT: SPDM object (DOE)")
    assert relay in arrows
    assert arrows.index(relay) < arrows.index((rh.DEVICE, rh.KERNEL, "SPDM VERSION"))
    assert (rh.MODULE, rh.FIRMWARE, "TDH.SPDM.CREATE") in arrows


def test_report_of_a_run_over_several_platforms(runs: dict[str, Path], tmp_path: Path) -> None:
    # `run --platform all` leaves DIR/<platform>/{flow,tamper}: one page each, an index
    top = tmp_path / "all"
    shutil.copytree(runs["pass"], top / "cca")
    shutil.copytree(runs["fail"], top / "tdx")
    p = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "report", str(top)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (top / "cca" / "report.html").exists() and (top / "tdx" / "report.html").exists()
    index = (top / "report.html").read_text()
    assert '<a href="cca/report.html">cca</a>' in index and "FAILED" in index
    assert re.search(r'<td class="name">lock</td><td class="res ok"[^>]*>PASS</td>'
                     r'<td class="res bad"[^>]*>FAIL</td>', index)


@pytest.mark.vm
def test_a_scenario_run_writes_its_report_with_the_fault_marked(chromium: str,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "scenario"
    p = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "run", "--platform", "sev-tio",
                        "--scenario", "ide-fail", "--out", str(out), "--timeout", "300",
                        "--cache-dir", str(PROVISIONED_CACHE)],
                       capture_output=True, text=True, timeout=900)
    page_path = out / "ide-fail" / "report.html"
    assert f"report: {page_path}" in p.stdout, p.stdout[-3000:] + p.stderr[-2000:]
    assert p.returncode == 0, p.stdout[-3000:]
    page = page_path.read_text()
    assert "scenario ide-fail (ide-fail)" in page
    assert "⚡ fault ide-fail" in page and "ide_fail_state" in page and "ide_failed" in page
    check_rendered(chromium, page_path, "ok")
    # `report DIR` rebuilds the same verdict from the recorded console and events: the
    # scenario's own lines, not the platform flow's
    page_path.unlink()
    r = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "report", str(out / "ide-fail")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rebuilt = page_path.read_text()
    assert "ide_failed" in rebuilt and "the guest did not report this step" not in rebuilt
