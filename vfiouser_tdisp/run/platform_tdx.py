"""What `run --platform tdx` adds to the platform flow (run/platform.py).

The guest's steps (check_platform.sh with guest-scripts/platform_tdx.sh): the common ones,
``tdi_error`` included (the TD asks again with TDCM GET_TDI_STATE / GET_TDI_REPORT, the
[MODEL] TDH.TDI.STATE / TDH.TDI.REPORT ask the device, whose ERROR the module then shows
the TD), plus the runtime update of the TDX module through Linux v7.2's ABI while the TDI
runs: ``seamldr_info``, ``module_update``, ``update_bad_image``, ``update_exhausted``.

The update images come from the host (``tsm/tdx/blob.py``, the same code as ``tdx-blob``)
in /etc/vtdisp/tdx of the guest image.  The host checks read the TDX module's events:
the SPDM context, the module's TDI context and the module itself (a TD-preserving update
between two READY states while the TDI stays RUN); run/platform.py adds the common ones
(every object the module handed the guest kernel, TDX_SPDM_REQUEST, against what the
device answered; the device's TDI states; DMA held and flowing).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ..tsm.tdx import model
from ..tsm.tdx.abi import TdxStatus
from ..tsm.tdx.blob import BREAKAGES, build_image

if TYPE_CHECKING:
    from .platform import Boot

STEPS = ("tsm_module", "connect", "bind", "lock_busy", "accept_unlocked", "lock", "evidence",
         "verify", "accept", "probe", "hwrng", "seamldr_info", "module_update",
         "update_bad_image", "update_exhausted", "unlock", "dma_held", "tdi_error", "unbind",
         "disconnect")
# images for module_update and update_exhausted: one per update the P-SEAMLDR allows, and
# one more that it must refuse
BAD_IMAGES = ("bad-signature", "module-hash", "magic")
# the host's checks (firmware_checks, then run/platform.py's common ones)
HOST_STEPS = ("spdm_states", "tdi_fw_states", "module_updates", "doe_objects", "tdi_states",
              "dma_gate")
SPDM_PATH = ["CREATED", "CONNECTING", "CONNECTED", "DISCONNECTING", "DISCONNECTED"]
# the module's TDI: bound, started, stopped; later (tdi_error) RUN -> ERROR when the device
# says so, and stopped from ERROR
TDI_PATH = ["BINDING", "LOCKED", "STARTING", "RUN", "STOPPING", "UNLOCKED",
            "RUN", "ERROR", "STOPPING", "UNLOCKED"]
SPDM_REQUEST = f"{int(TdxStatus.TDX_SPDM_REQUEST):#018x}"


def update_versions() -> list[tuple[int, int, int]]:
    major, minor, update = model.BOOT_MODULE_VERSION
    return [(major, minor, update + i) for i in range(1, model.NUM_UPDATES + 2)]


def guest_files() -> dict[str, tuple[int, bytes]]:
    """/etc/vtdisp/tdx: valid update images for each allowed update (+1), broken ones."""
    files: dict[str, tuple[int, bytes]] = {}
    for version in update_versions():
        name = ".".join(str(v) for v in version)
        files[f"etc/vtdisp/tdx/update-{name}.bin"] = (0o644, build_image(version))
    base = build_image(update_versions()[0])
    for kind in BAD_IMAGES:
        files[f"etc/vtdisp/tdx/bad-{kind}.bin"] = (0o644, BREAKAGES[kind].make(base))
    return files


def _path(boot: Boot, machine: str) -> list[str]:
    moves = [(str(e["old"]), str(e["new"])) for e in boot.of(f"{machine}.transition")]
    return [moves[0][0]] + [n for o, n in moves if o != n] if moves else []


def _subsequence(want: list[str], got: list[str]) -> bool:
    it = iter(got)
    return all(any(w == g for g in it) for w in want)


def firmware_checks(boot: Boot) -> tuple[list[tuple[str, bool, str]], int]:
    """The TDX module's SPDM context, TDI context and updates; each TDX_SPDM_REQUEST is
    one object it handed to the guest kernel (run/platform.py adds doe_objects, tdi_states
    and dma_gate, the same for every platform)."""
    out: list[tuple[str, bool, str]] = []
    spdm = _path(boot, "tdx.spdm")
    out.append(("spdm_states", _subsequence(SPDM_PATH, spdm),
                "SPDM context " + " -> ".join(spdm) if spdm else "no SPDM context transitions"))
    tdi = _path(boot, "tdx.tdi")
    out.append(("tdi_fw_states", _subsequence(TDI_PATH, tdi),
                "module TDI " + " -> ".join(tdi) if tdi else "no module TDI transitions"))
    updates = [e for e in boot.of("tdx.module.transition") if e.get("trigger") == "update"]
    installs = Counter(str(e.get("status")) for e in boot.of("tdx.seamldr.install"))
    tdi_run = [boot.events.index(e) for e in boot.of("tdx.tdi.transition")
               if e.get("new") == "RUN"]
    stops = [boot.events.index(e) for e in boot.of("tdx.tdi.transition")
             if e.get("trigger") == "stop"]
    first_stop = min(stops, default=len(boot.events))
    while_run = [e for e in updates
                 if tdi_run and tdi_run[0] < boot.events.index(e) < first_stop]
    versions = [f"{e.get('from_version')}->{e.get('to_version')}" for e in updates
                if e.get("from_version") != e.get("to_version")]
    ok = len(versions) == model.NUM_UPDATES and len(while_run) == len(updates) \
        and all(installs.get(s) for s in ("EBADSIG", "EBADHASH", "EBADCALL"))
    out.append(("module_updates", ok,
                f"{len(versions)} TD-preserving updates ({', '.join(versions)}), "
                f"{len(while_run)} of {len(updates)} resumes while the TDI was RUN; "
                "SEAMLDR.INSTALL " + ", ".join(f"{k} {v}" for k, v in sorted(installs.items()))))
    relayed = sum(1 for e in boot.of("tdx.call") if e.get("status") == SPDM_REQUEST)
    return out, relayed


__all__ = ["HOST_STEPS", "STEPS", "firmware_checks", "guest_files", "update_versions"]
