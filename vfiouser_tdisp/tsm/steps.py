"""One line per step for the guest-less ``tsm`` sequences (platform-neutral).

``run_steps`` runs named steps in order and prints ``STEP PASS|FAIL seconds detail``,
stopping at the first failure; ``chosen_steps`` turns the command line's STEP list into
the steps to run; ``load_root`` reads the relying party's root certificate;
``cli_device`` sets up what every ``tsm --platform`` run has around its steps (the
--events / --verbose sinks and the device, over --spdm or in process); ``main_steps`` is
the whole command around a platform's steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
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
              why: Callable[[], str | None] = lambda: None, out: Any = None, *,
              width: int = 16, before: Callable[[], None] = lambda: None) -> bool:
    """Run each step; one line each, the step name in a ``width`` column.  Stops at the
    first failure; ``why`` may add the firmware's own reason (``before``, called as each
    step starts, can forget the reasons of the steps that passed).  True if all passed."""
    out = out or sys.stdout
    for step in steps:
        start = time.monotonic()
        before()
        try:
            detail = table[step]()
        except Exception as exc:  # one line per step, whatever went wrong
            reason = why()
            print(f"{step:<{width}} FAIL {time.monotonic() - start:6.3f}s {exc}"
                  + (f" ({reason})" if reason else ""), file=out)
            return False
        print(f"{step:<{width}} PASS {time.monotonic() - start:6.3f}s {detail}", file=out)
    return True


def run_steps_noting(steps: Iterable[str], table: dict[str, Callable[[], str]], kind: str,
                     label: str, *, width: int = 16) -> bool:
    """:func:`run_steps`, a failed step's reason being the ``error`` of the last ``kind``
    event the firmware emitted during that step, as ``(LABEL: error)``."""
    from ..events import LOG, Recorder
    seen = Recorder()
    unsubscribe = LOG.subscribe(seen)

    def why() -> str | None:
        failures = seen.of(kind)
        return f"{label}: {failures[-1]['error']}" if failures else None
    try:
        return run_steps(steps, table, why, width=width, before=seen.events.clear)
    finally:
        unsubscribe()


def main_steps(args: argparse.Namespace, known: Sequence[str], default: Sequence[str],
               verbose_kinds: tuple[str, ...],
               run: Callable[[list[str], Callable[[int, bytes], bytes], str, Any], int]) -> int:
    """What every ``tsm --platform`` command does around its steps: choose them, set up
    :func:`cli_device`, load ``--root``, then ``run(steps, transport, where, root)``.  A bad
    step name, file or address is one line on stderr and exit 2."""
    try:
        steps = chosen_steps(args.steps, known, default)
        with cli_device(args, verbose_kinds) as (transport, where):
            return run(steps, transport, where, load_root(args.root))
    except (OSError, ValueError) as exc:
        print(f"vfiouser-tdisp tsm: {exc}", file=sys.stderr)
        return 2


@contextmanager
def cli_device(args: argparse.Namespace, verbose_kinds: tuple[str, ...]
               ) -> Iterator[tuple[Callable[[int, bytes], bytes], str]]:
    """For one ``tsm --platform`` run: ``--events FILE`` (JSON lines appended) and
    ``--verbose`` (the platform's ``verbose_kinds`` events, readable) subscribed, and the
    device: over the spdm-emu socket (``--spdm HOST:PORT``) or built in process
    (``--profile``, identities cached under ``--cache-dir``).  Yields (DOE transport,
    where the device is); everything is released on exit."""
    from ..events import LOG, HumanSink, JsonLinesSink
    from ..paths import identity_dir
    from .platform import in_process_device, socket_transport
    with ExitStack() as stack:
        if args.events:
            events = stack.enter_context(open(args.events, "a", encoding="utf-8"))
            stack.callback(LOG.subscribe(JsonLinesSink(events)))
        if args.verbose:
            stack.callback(LOG.subscribe(HumanSink(kinds=verbose_kinds)))
        if args.spdm:
            from ..doe.emu_socket import SpdmEmuClient
            host_name, _, port = args.spdm.rpartition(":")
            client = SpdmEmuClient(host_name or "127.0.0.1", int(port))
            stack.callback(client.close)
            yield socket_transport(client), f"spdm-emu {args.spdm}"
        else:
            transport, _device = in_process_device(args.profile, identity_dir(args.cache_dir))
            yield transport, f"in-process {args.profile}"
