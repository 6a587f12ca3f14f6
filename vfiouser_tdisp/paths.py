"""Where the project keeps its files: the cache directory and what lives in it.

A bottom-level module (no imports from the package) so every entry point can
resolve the same directories and hand them down to the layers that use them
(the provisioning in ``run/``, the device identity in ``spdm/identity.py``);
no layer looks the cache up by itself.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$VFIOUSER_TDISP_CACHE``, else ``$XDG_CACHE_HOME/vfiouser-tdisp``,
    else ``~/.cache/vfiouser-tdisp``."""
    if explicit:
        return Path(explicit).absolute()
    if os.environ.get("VFIOUSER_TDISP_CACHE"):
        return Path(os.environ["VFIOUSER_TDISP_CACHE"]).absolute()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).absolute() / "vfiouser-tdisp"


def identity_dir(explicit_cache: str | os.PathLike[str] | None = None) -> Path:
    """The generated device identities' cache (``<cache>/identity``)."""
    return cache_dir(explicit_cache) / "identity"
