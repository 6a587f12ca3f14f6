"""Shared pieces for the tests that boot the platform flow in a VM (CCA, TDX)."""

from __future__ import annotations

from vfiouser_tdisp.run.platform import PlatformRun


def step_detail(pr: PlatformRun, name: str) -> str:
    """The detail of the guest step ``name``, which must have been reported and passed
    (the console's tail in the failure message)."""
    got = {n: (ok, d) for n, ok, d in pr.results}
    assert name in got, f"{name} not reported"
    ok, detail = got[name]
    assert ok, f"{name}: {detail}\n{pr.main.run.console[-4000:]}"
    return detail
