"""One line per step for the guest-less ``tsm`` sequences (platform-neutral).

``run_steps`` runs named steps in order and prints ``STEP PASS|FAIL seconds detail``,
stopping at the first failure; ``chosen_steps`` turns the command line's STEP list into
the steps to run; ``load_root`` reads the relying party's root certificate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def load_root(path: str | None) -> Any:
    """The relying party's root certificate (PEM or DER), or None."""
    if not path:
        return None
    from pathlib import Path

    from cryptography import x509
    data = Path(path).read_bytes()
    return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data \
        else x509.load_der_x509_certificate(data)


def chosen_steps(requested: Sequence[str], known: Sequence[str],
                 default: Sequence[str]) -> list[str]:
    """The steps to run (``all`` or none: ``default``); ValueError names an unknown one."""
    unknown = [s for s in requested if s not in (*known, "all")]
    if unknown:
        raise ValueError(f"unknown step {unknown[0]!r}; steps: {', '.join(known)}")
    if list(requested) in (["all"], []):
        return list(default)
    return [s for s in requested if s != "all"]


def run_steps(steps: Iterable[str], table: dict[str, Callable[[], str]],
              why: Callable[[], str | None] = lambda: None, out: Any = None) -> bool:
    """Run each step; one line each.  Stops at the first failure; ``why`` may add the
    firmware's own reason.  True if all passed."""
    out = out or sys.stdout
    for step in steps:
        start = time.monotonic()
        try:
            detail = table[step]()
        except Exception as exc:  # one line per step, whatever went wrong
            reason = why()
            print(f"{step:<16} FAIL {time.monotonic() - start:6.3f}s {exc}"
                  + (f" ({reason})" if reason else ""), file=out)
            return False
        print(f"{step:<16} PASS {time.monotonic() - start:6.3f}s {detail}", file=out)
    return True
