"""``vfiouser-tdisp tsm --platform NAME``: hands the parsed arguments to the platform's
guest-less driver (each platform's ``cli.main_tsm``), imported only when chosen."""

from __future__ import annotations

import argparse
import importlib

PLATFORMS = {"cca": "vfiouser_tdisp.tsm.cca.cli", "sev-tio": "vfiouser_tdisp.tsm.sev_tio.cli"}


def main_tsm(args: argparse.Namespace) -> int:
    module = importlib.import_module(PLATFORMS[args.platform])
    return int(module.main_tsm(args))
