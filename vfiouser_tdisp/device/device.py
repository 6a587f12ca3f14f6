"""Assemble a TDISP-capable device from a profile: functions, capabilities, DOE.

Function 0 is the DSM: it carries the DOE mailbox (at 0x100, version 2) that
the SPDM/IDE_KM/TDISP layers hang off, and the IDE capability whose streams
IDE_KM keys.  Every function carries PM, PCI
Express (Endpoint, FLR, TEE-IO) and DSN; the personality adds the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
from ..pci.function import PciFunction
from ..spdm.algorithms import DEFAULT_AEADS, DEFAULT_ASYMS, DEFAULT_DHES, DEFAULT_HASHES
from ..spdm.identity import DeviceIdentity
from ..spdm.messages import REGISTRY_ID_PCISIG, version_byte
from ..spdm.responder import ResponderConfig, SpdmResponder, VendorError
from ..tdisp.report import FirstPageEncoding
from ..tdisp.responder import TdispResponder, pci_sig_vendor_handler
from .backend import FunctionBackend
from .identity import identity_for_device
from .measurements import DeviceMeasurements
from .personality import Personality, get_personality


@dataclass
class DeviceProfile:
    """What the device is; selected by name with ``--profile``."""

    name: str
    personality: str
    functions: int = 1
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
    # HeartbeatPeriod (seconds) announced in KEY_EXCHANGE_RSP; 0 = no HEARTBEAT.
    spdm_heartbeat_period: int = 60
    # Offer HANDSHAKE_IN_THE_CLEAR_CAP (FINISH/FINISH_RSP outside the secured record);
    # used only when the requester sets it too (DMTF's requester does by default).
    spdm_handshake_in_the_clear: bool = True
    firmware_version: str = "1.0.0"
    # TDISP device interface report: how mmio_range.first_page is encoded
    # ("page-number" as the Linux kernel parses it, or "byte-address" as in libspdm).
    tdisp_first_page: str = "page-number"
    description: str = ""
    extra: dict[str, object] = field(default_factory=dict)


PROFILES: dict[str, DeviceProfile] = {
    "virtio-rng": DeviceProfile(
        "virtio-rng", "virtio-rng",
        description="modern virtio-pci entropy device (virtio_rng binds in the guest)"),
    "dma-test": DeviceProfile(
        "dma-test", "dma-test",
        description="transport test device (scratch register, DMA engine, memory BAR)"),
    "virtio-rng-2fn": DeviceProfile(
        "virtio-rng-2fn", "virtio-rng", functions=2,
        description="two virtio-rng functions behind one DSM (function 0 holds DOE)"),
}


def get_profile(name: str) -> DeviceProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None


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
        multifunction = profile.functions > 1
        for fn_no in range(profile.functions):
            pers = pcls()
            fn = PciFunction(
                name=f"{profile.name}.{instance}.fn{fn_no}",
                vendor_id=pcls.VENDOR_ID, device_id=pcls.DEVICE_ID,
                class_code=pcls.CLASS_CODE, revision=pcls.REVISION,
                subsystem_vendor_id=pcls.SUBSYSTEM_VENDOR_ID,
                subsystem_id=pcls.SUBSYSTEM_ID,
                multifunction=multifunction, devfn=fn_no, lock=self.lock,
            )
            fn.config.add_capability(PmCapability())
            pcie = PcieCapability(tee_io=profile.tee_io)
            fn.config.add_capability(pcie)
            fn.pcie = pcie
            pers.function = fn
            pers.build(fn)
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


def _flr_handler(fn: PciFunction):  # type: ignore[no-untyped-def]
    def on_flr() -> None:
        fn.reset("flr")
    return on_flr
