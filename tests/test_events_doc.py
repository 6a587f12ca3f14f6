"""docs/events.md catalogues every event the package emits, with the fields each
`emit` passes by name, and names no event the code no longer emits.

The events are found by reading the source (ast), not by running it: a new
`emit("x.y", a=...)` anywhere in the package fails this test until the page lists it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vfiouser_tdisp"
DOC = ROOT / "docs" / "events.md"
TRANSITION_FIELDS = {"trigger", "old", "new", "forced"}  # fsm.py's own


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and (
                    getattr(node.func, "id", None) == name
                    or getattr(node.func, "attr", None) == name):
                found.append((path, node))
    return found


def _names(arg: ast.expr) -> list[str] | None:
    """The event names a first argument can take; None when not written out."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.IfExp):
        body, other = _names(arg.body), _names(arg.orelse)
        if body is not None and other is not None:
            return body + other
    return None


def emitted() -> dict[str, set[str]]:
    """Event name -> the fields its emit calls pass by name."""
    events: dict[str, set[str]] = {}
    for path, call in _calls("emit"):
        rel = path.relative_to(PACKAGE).as_posix()
        if not call.args:
            continue
        names = _names(call.args[0])
        if names is None:
            # Only the log itself (events.py) and the state machine (fsm.py, below)
            # may compute a name; anything else must be written out to be catalogued.
            assert rel in ("events.py", "fsm.py"), (
                f"{rel}:{call.lineno}: emit() with a computed event name")
            continue
        for n in names:
            events.setdefault(n, set()).update(k.arg for k in call.keywords if k.arg)
    for path, call in _calls("StateMachine"):
        if path.name == "fsm.py" or not call.args:
            continue
        names = _names(call.args[0])
        assert names is not None, f"{path}:{call.lineno}: StateMachine name not written out"
        context = {k.arg for k in call.keywords if k.arg}
        for n in names:
            events.setdefault(f"{n}.transition", set()).update(context | TRANSITION_FIELDS)
    return events


def documented() -> dict[str, set[str]]:
    rows: dict[str, set[str]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`([a-z0-9_.]+)`\s*\|([^|]*)\|", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} catalogued twice"
            rows[m.group(1)] = set(re.findall(r"`([a-z0-9_]+)`", m.group(2)))
    return rows


def test_the_scan_sees_events_of_every_layer() -> None:
    events = emitted()
    # a few written out by hand from the code, so an empty scan cannot pass
    for name in ("server.ready", "spdm.response", "tdisp.request", "ide_km.k_set_go",
                 "ide_km.k_set_stop", "vfio_user.connect", "tdi.transition",
                 "doe.transition"):
        assert name in events, name
    assert {"endpoint", "request", "response", "session_id"} <= events["spdm.response"]
    assert len(events) > 60


def test_every_emitted_event_and_field_is_catalogued() -> None:
    docs = documented()
    missing = sorted(set(emitted()) - set(docs))
    assert missing == [], f"not in docs/events.md: {missing}"
    unlisted = {n: sorted(f - docs[n]) for n, f in emitted().items() if f - docs[n]}
    assert unlisted == {}, f"fields missing from docs/events.md: {unlisted}"


def test_the_catalogue_names_no_event_the_code_does_not_emit() -> None:
    stale = sorted(set(documented()) - set(emitted()))
    assert stale == [], f"docs/events.md lists events nothing emits: {stale}"


def test_renderer_words_are_for_real_events() -> None:
    from vfiouser_tdisp.render import DETAIL_ONLY, FORMATS

    events = emitted()
    assert sorted(set(FORMATS) - set(events)) == []
    assert sorted(DETAIL_ONLY - set(events)) == []
    # the page's *detail* marks are the renderer's DETAIL_ONLY set
    marked = {n for n, line in ((m.group(1), m.group(0)) for m in re.finditer(
        r"^\|\s*`([a-z0-9_.]+)`.*$", DOC.read_text(), re.M)) if "*detail*" in line}
    assert marked == set(DETAIL_ONLY)
