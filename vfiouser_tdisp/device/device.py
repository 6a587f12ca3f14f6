"""Assemble a TDISP-capable device from a profile: functions, capabilities, DOE.

Function 0 is the DSM: it carries the DOE mailbox (at 0x100, version 2) that
the SPDM/IDE_KM/TDISP layers hang off, and the IDE capability whose streams
IDE_KM keys.  Every function carries PM, PCI
Express (Endpoint, FLR, TEE-IO) and DSN; the personality adds the rest.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..doe.mailbox import DoeCapability
from ..doe.protocols import (
    PCI_DOE_FEATURE_CMA,
    PCI_DOE_FEATURE_SSESSION,
    PCI_SIG_VENDOR_ID,
    DoeDispatcher,
)
from ..events import emit
from ..ide.capability import IdeCapability
from ..ide.km import IdeKmResponder
from ..locks import DeviceLock
from ..pci.caps import DsnCapability, PcieCapability, PmCapability
from ..pci.function import Bar, BarKind, MemoryArea, PciFunction, RegisterArea
from ..spdm.algorithms import (
    AEADS,
    ASYMS,
    DEFAULT_AEADS,
    DEFAULT_ASYMS,
    DEFAULT_DHES,
    DEFAULT_HASHES,
    DHES,
    HASHES,
)
from ..spdm.identity import DeviceIdentity
from ..spdm.messages import REGISTRY_ID_PCISIG, SUPPORTED_VERSIONS, version_byte
from ..spdm.responder import ResponderConfig, SpdmResponder, VendorError
from ..tdisp.report import FirstPageEncoding
from ..tdisp.responder import TdispResponder, pci_sig_vendor_handler
from .backend import FunctionBackend
from .identity import identity_for_device
from .measurements import DeviceMeasurements
from .personality import Personality, get_personality
from .profile import ProfileError, from_table, read_toml

PAGE_SIZE = 4096


@dataclass(frozen=True)
class BarSpec:
    """A BAR the profile adds to every function, beside the personality's own.

    It is plain memory (mmap-able when it is whole pages; RAM-like registers
    otherwise) unless ``[msix]`` places the MSI-X table in it.
    """

    index: int
    size: int
    kind: str = "mem32"   # "mem32", "mem64" or "io" (BarKind values)
    prefetchable: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.index <= 5:
            raise ProfileError("a BAR index is 0..5", "index")
        if self.kind not in {k.value for k in BarKind}:
            raise ProfileError(f"unknown BAR kind {self.kind!r}; known: "
                               f"{', '.join(k.value for k in BarKind)}", "kind")
        if self.size <= 0 or self.size & (self.size - 1):
            raise ProfileError(f"{self.size:#x} is not a power of two", "size")


@dataclass(frozen=True)
class MsixSpec:
    """An MSI-X capability (PCIe r6.2 §7.7.2) for a personality that declares none."""

    vectors: int
    bar: int                    # table and PBA BAR (BIR)
    table_offset: int = 0
    pba_offset: int = -1        # -1: right after the table, 8-byte aligned

    def __post_init__(self) -> None:
        if not 1 <= self.vectors <= 2048:
            raise ProfileError("MSI-X has 1..2048 vectors (Table Size is 11 bits)", "vectors")
        if self.table_offset % 8:
            raise ProfileError("the table offset is QWORD aligned (BIR takes bits 2:0)",
                               "table_offset")
        if self.pba_offset != -1 and self.pba_offset % 8:
            raise ProfileError("the PBA offset is QWORD aligned", "pba_offset")

    @property
    def pba(self) -> int:
        if self.pba_offset != -1:
            return self.pba_offset
        return self.table_offset + -(-self.vectors * 16 // 8) * 8


# DMTF measurement types (DSP0274 Table "DMTFSpecMeasurementValueType")
DMTF_MEASUREMENT_TYPES = {
    "immutable-rom": 0x00, "mutable-firmware": 0x01, "hardware-configuration": 0x02,
    "firmware-configuration": 0x03, "measurement-manifest": 0x04, "device-mode": 0x05,
    "firmware-version": 0x06, "firmware-security-version": 0x07,
    "hash-extended": 0x08, "informational": 0x09,
}
FIRST_PROFILE_MEASUREMENT = 5    # 1..4 are the device's own (measurements.py)
LAST_PROFILE_MEASUREMENT = 0xEF  # 0xF0.. are reserved or defined by DSP0274


@dataclass(frozen=True)
class MeasurementSpec:
    """One more SPDM measurement block (DSP0274 §10.11.1, DMTF format).

    ``value`` (text, UTF-8) or ``value_hex`` (bytes) is the measured data; it
    is sent as a digest in the negotiated hash unless ``raw`` (a raw bit stream).
    """

    index: int
    type: str = "informational"   # a DMTF_MEASUREMENT_TYPES name
    value: str = ""
    value_hex: str = ""
    raw: bool = False
    tcb: bool = False             # counted in the TCB measurement summary hash

    def __post_init__(self) -> None:
        if not FIRST_PROFILE_MEASUREMENT <= self.index <= LAST_PROFILE_MEASUREMENT:
            raise ProfileError(f"profile measurements use indices {FIRST_PROFILE_MEASUREMENT}"
                               f"..{LAST_PROFILE_MEASUREMENT:#x}", "index")
        if self.type not in DMTF_MEASUREMENT_TYPES:
            raise ProfileError(f"unknown measurement type {self.type!r}; known: "
                               f"{', '.join(DMTF_MEASUREMENT_TYPES)}", "type")
        if bool(self.value) == bool(self.value_hex):
            raise ProfileError("give exactly one of value and value_hex", "value")
        try:
            _ = self.data
        except ValueError:
            raise ProfileError("not hexadecimal", "value_hex") from None

    @property
    def data(self) -> bytes:
        return bytes.fromhex(self.value_hex) if self.value_hex else self.value.encode()

    @property
    def value_type(self) -> int:
        return DMTF_MEASUREMENT_TYPES[self.type]


@dataclass(frozen=True)
class FunctionIds:
    """The IDs every function of a device carries (PCI header, PCI Local Bus 3.0 §6.2.1)."""

    vendor_id: int
    device_id: int
    class_code: int
    revision: int
    subsystem_vendor_id: int
    subsystem_id: int


@dataclass
class DeviceProfile:
    """What the device is; selected with ``--profile`` (a built-in name or a TOML file).

    The built-in profiles are TOML files too (``device/profiles/``); the loader
    takes every field from this declaration (see :mod:`.profile`), so a field
    added here can be set in a file at once.
    """

    name: str
    personality: str
    # A Python file (path relative to the profile file) that registers the
    # personality (``@register``); imported before the personality is looked up.
    personality_file: str = ""
    functions: int = 1
    # PCI IDs; unset ones are the personality's.
    vendor_id: int | None = None
    device_id: int | None = None
    class_code: int | None = None
    revision: int | None = None
    subsystem_vendor_id: int | None = None
    subsystem_id: int | None = None
    serial: int = 0x5644_5450_0000_0001  # "VDTP" + index
    tee_io: bool = True
    ide_link_streams: int = 0
    ide_selective_streams: int = 2
    ide_assoc_blocks: int = 1
    # SPDM algorithms the device offers, most preferred first (names as in
    # vfiouser_tdisp.spdm.algorithms); negotiation picks the first one the
    # requester also offers.
    spdm_versions: tuple[str, ...] = ("1.0", "1.1", "1.2", "1.3")
    spdm_hash: tuple[str, ...] = DEFAULT_HASHES
    spdm_asym: tuple[str, ...] = DEFAULT_ASYMS
    spdm_dhe: tuple[str, ...] = DEFAULT_DHES
    spdm_aead: tuple[str, ...] = DEFAULT_AEADS
    # Largest SPDM message the device takes in one transfer; bigger requests and
    # responses go through CHUNK_SEND / CHUNK_GET.
    spdm_data_transfer_size: int = 4096
    spdm_max_message_size: int = 65536
    # HeartbeatPeriod (seconds) announced in KEY_EXCHANGE_RSP; 0 = no HEARTBEAT.  A
    # session silent for twice this long is terminated (DSP0274 HEARTBEAT); 255, the
    # largest, lets platform flows hold a session idle for 8.5 minutes.
    spdm_heartbeat_period: int = 255
    # Offer HANDSHAKE_IN_THE_CLEAR_CAP (FINISH/FINISH_RSP outside the secured record);
    # used only when the requester sets it too (DMTF's requester does by default).
    spdm_handshake_in_the_clear: bool = True
    firmware_version: str = "1.0.0"
    # TDISP device interface report: how mmio_range.first_page is encoded
    # ("page-number" as the Linux kernel parses it, or "byte-address" as in libspdm).
    tdisp_first_page: str = "page-number"
    # BARs and MSI-X added to each function beside the personality's own.
    bars: tuple[BarSpec, ...] = ()
    msix: MsixSpec | None = None
    # SPDM measurement blocks after the device's own four.
    measurements: tuple[MeasurementSpec, ...] = ()
    description: str = ""
    # Free-form settings for the personality (it reads ``self.profile.extra``).
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.personality_file:
            load_personality_file(self.personality_file)
        for name, check in PROFILE_CHECKS.items():
            try:
                check(getattr(self, name))
            except ValueError as exc:
                raise ProfileError(str(exc), name) from None
        indices = [m.index for m in self.measurements]
        dup = next((i for i in indices if indices.count(i) > 1), None)
        if dup is not None:
            raise ProfileError(f"index {dup} given twice", "measurements")
        seen: set[int] = set()
        for bar in self.bars:
            taken = {bar.index, bar.index + 1} if bar.kind == "mem64" else {bar.index}
            if taken & seen:
                raise ProfileError(f"BAR{bar.index} overlaps another profile BAR", "bars")
            seen |= taken
        if self.msix is not None and self.msix.bar not in {b.index for b in self.bars}:
            raise ProfileError(f"BAR{self.msix.bar} is not among the profile's bars", "msix")

    def ids(self) -> FunctionIds:
        """The IDs the functions carry: the profile's, else the personality's."""
        p = get_personality(self.personality)

        def pick(own: int | None, default: int) -> int:
            return default if own is None else own

        return FunctionIds(
            pick(self.vendor_id, p.VENDOR_ID), pick(self.device_id, p.DEVICE_ID),
            pick(self.class_code, p.CLASS_CODE), pick(self.revision, p.REVISION),
            pick(self.subsystem_vendor_id, p.SUBSYSTEM_VENDOR_ID),
            pick(self.subsystem_id, p.SUBSYSTEM_ID))


def _names_in(table: dict[str, Any], what: str) -> Any:
    def check(names: tuple[str, ...]) -> None:
        if not names:
            raise ValueError(f"at least one {what}")
        for n in names:
            if n not in table:
                raise ValueError(f"unknown {what} {n!r}; known: {', '.join(table)}")
    return check


def _in_range(low: int, high: int, fmt: str = "d") -> Any:
    def check(value: int | None) -> None:
        if value is not None and not low <= value <= high:
            raise ValueError(f"{value:{fmt}} is outside {low:{fmt}}..{high:{fmt}}")
    return check


def _id_range(high: int) -> Any:
    return _in_range(0, high, "#x")


def _check_versions(versions: tuple[str, ...]) -> None:
    known = {f"{v >> 4}.{v & 0xF}": v for v in SUPPORTED_VERSIONS}
    if not versions:
        raise ValueError("at least one version")
    for v in versions:
        if v not in known:
            raise ValueError(f"unsupported SPDM version {v!r}; known: {', '.join(known)}")


def _check_first_page(value: str) -> None:
    known = [e.value for e in FirstPageEncoding]
    if value not in known:
        raise ValueError(f"unknown encoding {value!r}; known: {', '.join(known)}")


def _check_personality(name: str) -> None:
    try:
        get_personality(name)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None


# Value checks beyond the type, by field name (types are checked by the loader).
PROFILE_CHECKS: dict[str, Any] = {
    "personality": _check_personality,
    "functions": _in_range(1, 8),
    # 0xFFFF reads as "no device" (PCI Local Bus 3.0 §6.2.1): not a vendor ID
    "vendor_id": _id_range(0xFFFE), "device_id": _id_range(0xFFFF),
    "class_code": _id_range(0xFFFFFF), "revision": _id_range(0xFF),
    "subsystem_vendor_id": _id_range(0xFFFF), "subsystem_id": _id_range(0xFFFF),
    "ide_link_streams": _in_range(0, 8),
    "ide_selective_streams": _in_range(0, 255),
    "ide_assoc_blocks": _in_range(0, 15),
    "spdm_versions": _check_versions,
    "spdm_hash": _names_in(HASHES, "hash algorithm"),
    "spdm_asym": _names_in(ASYMS, "signature algorithm"),
    "spdm_dhe": _names_in(DHES, "DHE group"),
    "spdm_aead": _names_in(AEADS, "AEAD"),
    "spdm_data_transfer_size": _in_range(42, 0xFFFF_FFFF),
    "spdm_max_message_size": _in_range(42, 0xFFFF_FFFF),
    "tdisp_first_page": _check_first_page,
}

# Tables in a profile file whose keys are field-name suffixes (``[spdm] hash``
# sets ``spdm_hash``); listed for documentation only: the loader finds them
# from the field names.
PROFILE_SECTIONS = ("ide", "spdm", "tdisp")


def load_personality_file(path: str) -> None:
    """Import a personality module from a file (once per file per process)."""
    resolved = Path(path).resolve()
    module_name = "vfiouser_tdisp_personality_" + hashlib.sha256(
        str(resolved).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None or not resolved.is_file():
        raise ProfileError(f"no Python file {str(resolved)!r}", "personality_file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ProfileError(f"importing {resolved} failed: {type(exc).__name__}: {exc}",
                           "personality_file") from None


def profile_from_toml(data: dict[str, Any], source: str | os.PathLike[str],
                      default_name: str) -> DeviceProfile:
    """A profile from a parsed TOML table; errors name ``source`` and the key."""
    data = dict(data)
    data.setdefault("name", default_name)
    pf = data.get("personality_file")
    if isinstance(pf, str) and pf:  # relative to the file, not to the current directory
        data["personality_file"] = str((Path(source).parent / pf).resolve())
    try:
        return from_table(DeviceProfile, data)
    except ProfileError as exc:
        raise ProfileError(f"{source}: {exc}") from None


def load_profile_file(path: str | os.PathLike[str], *, check: bool = True) -> DeviceProfile:
    """Load a profile file; with ``check``, also build its device once, so BAR and
    MSI-X clashes with the personality are a ProfileError naming the file too."""
    profile = profile_from_toml(read_toml(path), path, Path(path).stem)
    if check:
        try:
            trial = Device(profile)
        except ProfileError as exc:
            raise ProfileError(f"{path}: {exc}") from None
        for fn in trial.functions:  # the trial device is dropped: give back its memfds
            for bar in fn.bars:
                if bar is None:
                    continue
                for _, area in bar.mmap_areas():
                    if area.mem is not None:
                        area.mem.close()  # mmap holds a dup of the memfd
                if bar.backing_fd is not None:
                    os.close(bar.backing_fd)
                    bar.backing_fd = None
    return profile


def _builtin_profiles() -> dict[str, DeviceProfile]:
    """The shipped profiles: ``device/profiles/*.toml``, loaded like any file."""
    out = {}
    folder = importlib.resources.files(__package__).joinpath("profiles")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            stem = entry.name[:-len(".toml")]
            with importlib.resources.as_file(entry) as path:
                profile = profile_from_toml(read_toml(path), f"(built-in) {entry.name}", stem)
            out[profile.name] = profile
    return out


PROFILES: dict[str, DeviceProfile] = _builtin_profiles()


def is_profile_path(text: str) -> bool:
    return text.endswith(".toml") or os.sep in text


def get_profile(name: str) -> DeviceProfile:
    """A built-in profile by name, or a profile file (a path ending in .toml or with a /)."""
    if name in PROFILES:
        return PROFILES[name]
    if is_profile_path(name):
        return load_profile_file(name, check=False)  # the command line checked it
    raise KeyError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))} "
                   "(or a path to a .toml profile file)")


class Device:
    """One physical device: a DSM (function 0) plus optional further functions."""

    def __init__(self, profile: DeviceProfile, instance: int = 0, *,
                 identity: DeviceIdentity | None = None,
                 identity_options: dict[str, Any] | None = None,
                 debug_ide_keys: bool = False) -> None:
        self.profile = profile
        self.instance = instance
        self.doe = DoeDispatcher(name=f"{profile.name}.{instance}.doe")
        # The DSM is a CMA device: its mailbox carries CMA/SPDM (type 1) and
        # secured CMA/SPDM (type 2).  The SPDM responder (and the identity it
        # needs, which may take a key generation) is built on first use.
        self._identity = identity
        self._identity_options = identity_options or {}
        self._spdm: SpdmResponder | None = None
        self.doe.register(PCI_SIG_VENDOR_ID, PCI_DOE_FEATURE_CMA,
                          lambda payload: self.spdm.handle_cma(payload))
        self.doe.register(PCI_SIG_VENDOR_ID, PCI_DOE_FEATURE_SSESSION,
                          lambda payload: self.spdm.handle_secured(payload))
        # Every transport (vfio-user connections of each function, the
        # spdm-emu socket) takes this lock around a request: functions of one
        # device share the DSM's state.
        self.lock = DeviceLock()
        self.functions: list[PciFunction] = []
        self.personalities: list[Personality] = []
        pcls = get_personality(profile.personality)
        ids = profile.ids()
        multifunction = profile.functions > 1
        for fn_no in range(profile.functions):
            pers = pcls()
            pers.profile = profile
            fn = PciFunction(
                name=f"{profile.name}.{instance}.fn{fn_no}",
                vendor_id=ids.vendor_id, device_id=ids.device_id,
                class_code=ids.class_code, revision=ids.revision,
                subsystem_vendor_id=ids.subsystem_vendor_id,
                subsystem_id=ids.subsystem_id,
                multifunction=multifunction, devfn=fn_no, lock=self.lock,
            )
            fn.config.add_capability(PmCapability())
            pcie = PcieCapability(tee_io=profile.tee_io)
            fn.config.add_capability(pcie)
            fn.pcie = pcie
            pers.function = fn
            pers.build(fn)
            _add_profile_bars(fn, profile)
            if fn_no == 0:
                fn.config.add_capability(DoeCapability(self.doe, name=self.doe.name))
                self.ide = IdeCapability(profile.ide_link_streams, profile.ide_selective_streams,
                                         profile.ide_assoc_blocks, function_name=fn.name)
                fn.config.add_capability(self.ide)
                self.ide_km = IdeKmResponder([self.ide], devfn=fn.devfn, function_name=fn.name,
                                             debug_keys=debug_ide_keys)
            fn.config.add_capability(DsnCapability(profile.serial + (instance << 8) + fn_no))
            pcie.on_flr = _flr_handler(fn)
            fn.reset_hooks.append(pers.reset)
            self.functions.append(fn)
            self.personalities.append(pers)
        self.tdisp = TdispResponder.for_device(
            self, encoding=FirstPageEncoding(profile.tdisp_first_page))
        self.measurements = DeviceMeasurements(self)
        emit("device.created", profile=profile.name, instance=instance,
             functions=[f.name for f in self.functions])

    def backend(self, fn_no: int) -> FunctionBackend:
        """Function ``fn_no`` as the vfio-user transport sees it."""
        return FunctionBackend(self.functions[fn_no])

    @property
    def dsm(self) -> PciFunction:
        return self.functions[0]

    @property
    def identity(self) -> DeviceIdentity:
        if self._identity is None:
            self._identity = identity_for_device(self, **self._identity_options)
        return self._identity

    @property
    def spdm(self) -> SpdmResponder:
        """The DSM's SPDM responder, with IDE_KM and TDISP behind PCI-SIG vendor requests."""
        if self._spdm is None:
            p = self.profile
            config = ResponderConfig(
                identity=self.identity,
                versions=tuple(version_byte(v) for v in p.spdm_versions),
                hashes=p.spdm_hash, asyms=p.spdm_asym, dhes=p.spdm_dhe, aeads=p.spdm_aead,
                data_transfer_size=p.spdm_data_transfer_size,
                max_spdm_msg_size=p.spdm_max_message_size, measurements=self.measurements,
                heartbeat_period=p.spdm_heartbeat_period,
                handshake_in_the_clear=p.spdm_handshake_in_the_clear)
            spdm = SpdmResponder(config, name=f"{p.name}.{self.instance}.spdm")
            spdm.register_vendor_protocol(
                REGISTRY_ID_PCISIG, PCI_SIG_VENDOR_ID.to_bytes(2, "little"),
                pci_sig_vendor_handler(self.tdisp.handle, self.ide_km.handle,
                                       vendor_error=VendorError))
            self._spdm = spdm
        return self._spdm


def _add_profile_bars(fn: PciFunction, profile: DeviceProfile) -> None:
    """The profile's own BARs (plain memory) and MSI-X, after the personality's."""
    for i, spec in enumerate(profile.bars):
        try:
            bar = fn.add_bar(Bar(spec.index, spec.size, BarKind(spec.kind),
                                 prefetchable=spec.prefetchable))
        except ValueError as exc:
            raise ProfileError(f"{exc} (personality {profile.personality} has "
                               f"{_bar_list(fn)})", f"bars[{i}]") from None
        if profile.msix is not None and profile.msix.bar == spec.index:
            continue  # the MSI-X table and PBA are this BAR's registers
        if spec.kind != "io" and spec.size % PAGE_SIZE == 0:
            bar.add(0, MemoryArea(spec.size, f"{fn.name}-bar{spec.index}"))
        else:
            bar.add(0, _ram_registers(spec.size))
    if profile.msix is not None:
        m = profile.msix
        if fn.msix is not None:
            raise ProfileError(f"personality {profile.personality} declares its own MSI-X",
                               "msix")
        try:
            fn.add_msix(m.vectors, m.bar, m.table_offset, m.bar, m.pba)
        except ValueError as exc:
            raise ProfileError(str(exc), "msix") from None


def _bar_list(fn: PciFunction) -> str:
    taken = [f"BAR{b.index}" for b in fn.bars if b is not None]
    return ", ".join(taken) if taken else "no BARs"


def _ram_registers(size: int) -> RegisterArea:
    """Bytes that read back what was written (a BAR too small to mmap, or I/O)."""
    ram = bytearray(size)

    def read(off: int, n: int) -> bytes:
        return bytes(ram[off:off + n])

    def write(off: int, data: bytes) -> None:
        ram[off:off + len(data)] = data

    return RegisterArea(size, read, write)


def _flr_handler(fn: PciFunction):  # type: ignore[no-untyped-def]
    def on_flr() -> None:
        fn.reset("flr")
    return on_flr
