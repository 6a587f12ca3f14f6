"""The guest module (guest-module/, vtfw.ko) in a real guest, through the firmware port.

The module is built against Debian's headers in the private tree
(run/module_build.py), shipped in the initramfs and loaded in a stock 7.3.4
guest whose kernel runs its own PCI/TSM core and DOE driver.

Until the project's RMM emulator (tsm/cca) is merged, the firmware behind the
port here is ``MiniRmm``: a small RMI responder *in this test* that follows the
PDEV protocol of reference/firmware-abi.md §C (states, dev_comm_data enter/exit
offsets, REQ_SEND/RSP_CACHE flags, SET_PUBKEY key parameters) and whose SPDM
side is the project's real requester, driven one message at a time.  It checks
the RMI arguments the C code sends and compares the public key the module
extracted from the leaf certificate with the one ``cryptography`` reads.  It is
a test counterpart of the C loop, not the RMM.
"""

from __future__ import annotations

import queue
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vfiouser_tdisp.device.device import PROFILES, DeviceProfile
from vfiouser_tdisp.doe.protocols import PCI_SIG_VENDOR_ID, build_object, parse_object
from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.firmware import CallClass, FirmwareCall, GuestMemory
from vfiouser_tdisp.run.module_build import ensure_module
from vfiouser_tdisp.run.port_guest import boot_with_port
from vfiouser_tdisp.run.provision import Provisioned, ProvisionError, ensure_provisioned
from vfiouser_tdisp.server import platform_firmware
from vfiouser_tdisp.spdm.der import split_der_certificates
from vfiouser_tdisp.spdm.requester import SpdmRequester

pytestmark = pytest.mark.vm

# reference/firmware-abi.md §C.2-C.4, written out here, not imported from the module
RMI_VERSION, RMI_GRANULE_DELEGATE, RMI_GRANULE_UNDELEGATE = 0xC4000150, 0xC4000151, 0xC4000152
RMI_PDEV_COMMUNICATE, RMI_PDEV_CREATE, RMI_PDEV_DESTROY = 0xC4000175, 0xC4000176, 0xC4000177
RMI_PDEV_GET_STATE, RMI_PDEV_SET_PUBKEY, RMI_PDEV_STOP = 0xC4000178, 0xC400017B, 0xC400017C
RMI_PDEV_STREAM_CONNECT, RMI_PDEV_STREAM_DISCONNECT = 0xC4000204, 0xC4000205
RMI_PDEV_STREAM_COMPLETE = 0xC4000206
RMI_SUCCESS, RMI_ERROR_INPUT = 0, 1
SMCCC_NOT_SUPPORTED = 0xFFFF_FFFF_FFFF_FFFF
NEW, NEEDS_KEY, HAS_KEY, READY, STOPPED, ERROR = range(6)
REQ_CACHE, RSP_CACHE, REQ_SEND, RSP_WAIT = 1, 2, 4, 8
OBJ_VCA, OBJ_CERTIFICATE = 0, 1
SPDM_GET_VERSION, SPDM_GET_CAPABILITIES, SPDM_NEGOTIATE_ALGORITHMS = 0x84, 0xE1, 0xE3
SPDM_CERTIFICATE = 0x02
ECDSA_P256, ECDSA_P384, RSASSA_3072 = 1, 2, 0


class RelayedRequester:
    """The project's SPDM requester in a thread whose transport hands each DOE
    object out to the caller and waits for the relayed response."""

    def __init__(self) -> None:
        self.out: queue.Queue[tuple[str, int, bytes]] = queue.Queue()
        self.back: queue.Queue[bytes | None] = queue.Queue()
        self.requester = SpdmRequester(self._transport, name="mini-rmm")

    def _transport(self, obj: bytes) -> bytes:
        hdr, payload = parse_object(obj)
        self.out.put(("req", hdr.data_object_type, payload))
        rsp = self.back.get(timeout=60)
        if rsp is None:
            raise ConnectionError("the host reported a DOE failure")
        return build_object(PCI_SIG_VENDOR_ID, hdr.data_object_type,
                            rsp + bytes(-len(rsp) % 4))

    def start(self, work: Callable[[SpdmRequester], None]) -> tuple[str, int, bytes]:
        def run() -> None:
            try:
                work(self.requester)
                self.out.put(("done", 0, b""))
            except Exception as exc:  # reported as the PDEV's ERROR state
                self.out.put(("failed", 0, repr(exc).encode()))

        threading.Thread(target=run, daemon=True, name="mini-rmm-requester").start()
        return self.out.get(timeout=60)

    def respond(self, rsp: bytes | None) -> tuple[str, int, bytes]:
        self.back.put(rsp)
        return self.out.get(timeout=60)


@dataclass
class Pdev:
    flags: int
    params: tuple[int, ...]
    state: int = NEW
    stopping: bool = False
    busy: bool = False
    relay: RelayedRequester = field(default_factory=RelayedRequester)


class MiniRmm:
    abi_id = 0x20414343  # "CCA " (docs/firmware-port.md)
    abi_version = 0x0002_0000

    def __init__(self) -> None:
        self.delegated: set[int] = set()
        self.pdevs: dict[int, Pdev] = {}
        self.problems: list[str] = []
        self.log: list[tuple[str, Any]] = []
        self.session: Any = None
        self.key: tuple[int, bytes, bytes] | None = None

    def call(self, call: FirmwareCall, mem: GuestMemory) -> tuple[int, ...]:
        if call.cls is not CallClass.HOST:
            return (SMCCC_NOT_SUPPORTED,)
        a = call.args
        if call.fid == RMI_VERSION:
            return (RMI_SUCCESS, 0x20000, 0x20000)
        if call.fid == RMI_GRANULE_DELEGATE:
            if a[0] % 4096 or a[0] in self.delegated:
                return (RMI_ERROR_INPUT,)
            self.delegated.add(a[0])
            return (RMI_SUCCESS,)
        if call.fid == RMI_GRANULE_UNDELEGATE:
            if a[0] not in self.delegated or a[0] in self.pdevs:
                return (RMI_ERROR_INPUT,)
            self.delegated.discard(a[0])
            return (RMI_SUCCESS,)
        if call.fid == RMI_PDEV_CREATE:
            if a[0] not in self.delegated or a[0] in self.pdevs:
                return (RMI_ERROR_INPUT,)
            params = struct.unpack("<7QB", mem.read(a[1], 0x39))
            self.pdevs[a[0]] = Pdev(params[0], params)
            self.log.append(("create", params))
            return (RMI_SUCCESS,)
        p = self.pdevs.get(a[0])
        if p is None:
            return (RMI_ERROR_INPUT,)
        if call.fid == RMI_PDEV_GET_STATE:
            return (RMI_SUCCESS, p.state)
        if call.fid == RMI_PDEV_COMMUNICATE:
            return self._communicate(p, a[1], mem)
        if call.fid == RMI_PDEV_SET_PUBKEY:
            return self._set_pubkey(p, a[1], mem)
        if call.fid == RMI_PDEV_STOP:  # any state but STOPPED (TF-RMM pdev.c)
            if p.state == STOPPED:
                return (RMI_ERROR_INPUT,)
            p.stopping = True
            return (RMI_SUCCESS,)
        if call.fid == RMI_PDEV_DESTROY:
            if p.state != STOPPED:
                return (RMI_ERROR_INPUT,)
            del self.pdevs[a[0]]
            self.log.append(("destroy", p.flags))
            return (RMI_SUCCESS,)
        return (SMCCC_NOT_SUPPORTED,)

    def _set_pubkey(self, p: Pdev, params: int, mem: GuestMemory) -> tuple[int, ...]:
        if p.state != NEEDS_KEY:
            return (RMI_ERROR_INPUT,)
        raw = mem.read(params, 0x818)
        key_len, meta_len, algo = struct.unpack_from("<3Q", raw, 0x800)
        key, meta = raw[:key_len], raw[0x400:0x400 + meta_len]
        self.key = (algo, key, meta)
        chain = p.relay.requester.conn.cert_chain
        h = p.relay.requester.conn.hash
        assert h is not None
        leaf = split_der_certificates(chain[4 + h.size:])[-1].public_key()
        if isinstance(leaf, ec.EllipticCurvePublicKey):
            want_algo = {"secp256r1": ECDSA_P256, "secp384r1": ECDSA_P384}[leaf.curve.name]
            ok = algo == want_algo and key == leaf.public_bytes(
                Encoding.X962, PublicFormat.UncompressedPoint)
        elif isinstance(leaf, rsa.RSAPublicKey):
            n = leaf.public_numbers()
            ok = algo == RSASSA_3072 and key == n.n.to_bytes(384, "big") \
                and int.from_bytes(meta, "big") == n.e
        else:
            ok = False
        if not ok:
            self.problems.append(f"SET_PUBKEY algo {algo} key {key.hex()} is not the leaf's")
            return (RMI_ERROR_INPUT,)
        p.state = HAS_KEY
        return (RMI_SUCCESS,)

    def _communicate(self, p: Pdev, comm: int, mem: GuestMemory) -> tuple[int, ...]:
        status, req_addr, resp_addr, resp_len = struct.unpack("<4Q", mem.read(comm, 32))
        flags = cache_obj = 0
        cache = (0, 0, 0, 0)
        category = (p.flags >> 1) & 3
        if category == 0:  # root port: no SPDM here, nothing to exchange
            if p.stopping:
                p.state, p.stopping = STOPPED, False
            elif p.state == NEW:
                p.state = READY
            ev = None
        elif p.busy:
            rsp = mem.read(resp_addr, resp_len) if status == 1 else None
            if rsp is not None and len(rsp) > 1 and rsp[1] in (0x04, 0x61, 0x63):
                flags |= RSP_CACHE
                cache = (0, 0, 0, len(rsp))
            elif rsp is not None and len(rsp) > 8 and rsp[1] == SPDM_CERTIFICATE:
                flags |= RSP_CACHE
                cache_obj = OBJ_CERTIFICATE
                cache = (0, 0, 8, struct.unpack_from("<H", rsp, 4)[0])
            ev = p.relay.respond(rsp)
        else:
            work = self._work(p)
            ev = p.relay.start(work) if work else None
            p.busy = work is not None
        if ev is not None:
            kind, obj_type, payload = ev
            if kind == "req":
                mem.write(req_addr, payload)
                flags |= REQ_SEND | RSP_WAIT
                if obj_type == 1 and payload[1] in (SPDM_GET_VERSION, SPDM_GET_CAPABILITIES,
                                                    SPDM_NEGOTIATE_ALGORITHMS):
                    flags |= REQ_CACHE
                    cache = (0, len(payload), cache[2], cache[3])
                self.log.append(("send", obj_type, payload[:2].hex()))
            else:
                p.busy = False
                if kind == "failed":
                    self.problems.append(payload.decode())
                    p.state = ERROR
                else:
                    p.state = {NEW: NEEDS_KEY, HAS_KEY: READY}.get(p.state, p.state)
                    if p.stopping:
                        p.state, p.stopping = STOPPED, False
            protocol = 1 if ev[1] == 2 else 0
            req_len = len(payload) if kind == "req" else 0
        else:
            protocol = req_len = 0
        mem.write(comm + 0x800, struct.pack("<6Q", flags, *cache, cache_obj)
                  + struct.pack("<QQQ", protocol, 0, req_len))
        return (RMI_SUCCESS,)

    def _work(self, p: Pdev) -> Callable[[SpdmRequester], None] | None:
        if p.stopping and self.session is not None:
            session = self.session
            self.session = None
            return lambda r: r.end_session(session)
        if p.stopping:
            p.state, p.stopping = STOPPED, False
            return None
        if p.state == NEW:
            return lambda r: (r.init_connection(), r.get_digests(), r.get_certificate(),
                              None)[-1]

        def session(r: SpdmRequester) -> None:
            r.verify_certificate_chain()
            self.session = r.start_session()

        return session if p.state == HAS_KEY else None


class MiniRmmWithStreams(MiniRmm):
    """Stream calls: accepted for two READY PDEVs (IDE_KM is not exercised here)."""

    def call(self, call: FirmwareCall, mem: GuestMemory) -> tuple[int, ...]:
        if call.fid == RMI_PDEV_STREAM_CONNECT:
            t = struct.unpack_from("<5Q", mem.read(call.args[0], 0x28))
            ep, rp = self.pdevs.get(t[2]), self.pdevs.get(t[3])
            if t[1] != 1 or ep is None or rp is None or READY not in (ep.state, rp.state):
                self.problems.append(f"STREAM_CONNECT params {t}")
                return (RMI_ERROR_INPUT,)
            self.log.append(("stream_connect", t))
            return (RMI_SUCCESS, 0x51)
        if call.fid in (RMI_PDEV_STREAM_COMPLETE, RMI_PDEV_STREAM_DISCONNECT):
            self.log.append(("stream", call.fid, call.args[0]))
            return (RMI_SUCCESS,) if call.args[0] == 0x51 else (RMI_ERROR_INPUT,)
        return super().call(call, mem)


@pytest.fixture(scope="module")
def prov() -> Provisioned:
    try:
        return ensure_provisioned()
    except ProvisionError as exc:
        pytest.fail(f"not provisioned: {exc}")


def test_module_builds_reproducibly(prov: Provisioned) -> None:
    ko = ensure_module(prov)
    started = time.monotonic()
    assert ensure_module(prov) == ko and time.monotonic() - started < 1  # cached
    elf = ko.read_bytes()
    assert elf[:4] == b"\x7fELF" and len(elf) < 400_000  # debug info stripped (2.2 MB with it)
    assert b"vermagic=" + prov.kernel_version.encode() + b" SMP preempt mod_unload" in elf
    assert b"license=GPL" in elf and b"alias=pci:v00001AF4d000010FC" in elf


def test_module_connects_through_the_firmware_port(prov: Provisioned, tmp_path: Path) -> None:
    fw = MiniRmmWithStreams()
    run, console = boot_with_port(prov, tmp_path, fw, "device,tsm_module")
    for name in ("device", "tsm_module", "tsm_connect", "tsm_disconnect", "tsm_rmmod"):
        got = run.result(name)
        assert got is not None and got[0], f"{name}: {got}\n{console[-4000:]}"
    assert not fw.problems, fw.problems
    assert "connect=tsm0 authenticated=tsm0" in (run.result("tsm_connect") or ("", ""))[1]
    # the module's own log lines (pci_info) in the guest console
    assert re.search(r"vtfw .*firmware port 1\.0, platform ABI CCA  2\.0", console)
    assert re.search(r"EP PDEV NEW -> NEEDS_KEY, \d+ DOE exchanges", console)
    assert "EP PDEV HAS_KEY -> READY" in console and "RP PDEV NEW -> READY" in console
    assert "EP PDEV READY -> STOPPED" in console
    # the RMI arguments the C code built (rmi_pdev_params, firmware-abi.md §C.3)
    creates = [e[1] for e in fw.log if e[0] == "create"]
    ep, rp = creates
    assert ep[0] == 0b011 and rp[0] == 0  # SPDM | EP_OFF_CHIP << 1; RP category, no SPDM
    assert ep[3] == ep[2] & 0xFFFF and ep[5] == ep[3] & ~7 and ep[6] == ep[5] + 8
    assert ep[7] == 0  # SHA-256
    # objects of both DOE types crossed the kernel's DOE driver
    sent = {(e[1], e[2]) for e in fw.log if e[0] == "send"}
    assert (1, "1084") in sent and any(t == 2 for t, _ in sent)
    assert [e[1] for e in fw.log if e[0] == "destroy"] == [0, 3] and not fw.pdevs
    assert not fw.delegated  # every granule returned
    assert fw.key is not None and fw.key[0] == ECDSA_P384


class MiniRmmRefusingKeys(MiniRmmWithStreams):
    """Refuses every SET_PUBKEY (as an RMM does for a key that is not the leaf's)."""

    def call(self, call: FirmwareCall, mem: GuestMemory) -> tuple[int, ...]:
        if call.fid == RMI_PDEV_SET_PUBKEY:
            self.log.append(("refused_key", call.args[0]))
            return (RMI_ERROR_INPUT,)
        return super().call(call, mem)


def test_failed_connect_unwinds(prov: Provisioned, tmp_path: Path) -> None:
    """A connect the firmware refuses half-way fails with the RMI status's errno, leaves
    tsm/connect empty, and the module gives every PDEV and granule back."""
    fw = MiniRmmRefusingKeys()
    run, console = boot_with_port(prov, tmp_path, fw, "device,tsm_module")
    got = run.result("tsm_connect")
    assert got is not None and not got[0], console[-3000:]
    assert "Invalid argument" in got[1]  # RMI_ERROR_INPUT -> -EINVAL
    assert "vtfw: RMI_PDEV_SET_PUBKEY: RMI status 0x1" in console
    assert "vtfw: connect failed: -22" in console
    assert ("refused_key", next(iter(e[1] for e in fw.log if e[0] == "refused_key"))) in fw.log
    # the EP PDEV was stopped and destroyed, its granule undelegated
    assert not fw.pdevs and not fw.delegated
    assert [e[1] for e in fw.log if e[0] == "destroy"] == [0b011]
    rmmod = run.result("tsm_rmmod")
    assert rmmod is not None and rmmod[0]


@pytest.mark.parametrize(("asym", "algo"), [("ecdsa-p256", ECDSA_P256),
                                            ("rsassa-3072", RSASSA_3072)])
def test_module_takes_the_key_of_other_leaf_algorithms(
        prov: Provisioned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        asym: str, algo: int) -> None:
    """The module's own DER walk (vtfw-der.c) to the leaf's SubjectPublicKeyInfo, for a
    device that signs with another algorithm: the key it hands SET_PUBKEY must be the
    one `cryptography` reads from the same certificate (MiniRmm checks)."""
    name = f"virtio-rng-{asym}"
    monkeypatch.setitem(PROFILES, name, DeviceProfile(name, "virtio-rng", spdm_asym=(asym,)))
    fw = MiniRmmWithStreams()
    run, console = boot_with_port(prov, tmp_path, fw, "device,tsm_module", profile=name)
    got = run.result("tsm_connect")
    assert got is not None and got[0], f"{got}\n{console[-3000:]}"
    assert not fw.problems, fw.problems
    assert fw.key is not None and fw.key[0] == algo
    assert len(fw.key[1]) == {ECDSA_P256: 65, RSASSA_3072: 384}[algo]


def _transitions(rec: Recorder, kind: str) -> list[tuple[str, str]]:
    return [(e["old"], e["new"]) for e in rec.of(kind)]


def test_module_connects_binds_locks_and_accepts_through_the_rmm(
        prov: Provisioned, tmp_path: Path, events: Recorder) -> None:
    """The project's RMM emulator behind the port (what `serve --platform cca` serves):
    host side (connect, bind) and TVM side (lock, evidence, accept, probe, unlock)."""
    run, console = boot_with_port(prov, tmp_path, platform_firmware("cca"), "device,tsm_module",
                                  append="vtdisp.bind=1 vtdisp.tvm=1")
    for name in ("tsm_module", "tsm_connect", "tvm_lock_busy", "tsm_bind", "tvm_accept_unlocked",
                 "tvm_lock", "tvm_evidence", "tvm_accept", "tvm_probe", "tvm_unlock",
                 "tsm_unbind", "tsm_disconnect", "tsm_rmmod"):
        got = run.result(name)
        assert got is not None and got[0], f"{name}: {got}\n{console[-4000:]}"
    assert (run.result("tsm_bind") or ("", ""))[1].startswith("bound=tsm0 t=")
    # the proposed ABI's errnos (firmware-abi.md A.5): EBUSY with a driver bound,
    # EINVAL for accept before lock
    assert (run.result("tvm_lock_busy") or ("", ""))[1].endswith("Device or resource busy")
    assert (run.result("tvm_accept_unlocked") or ("", ""))[1].endswith("Invalid argument")
    assert (run.result("tvm_probe") or ("", ""))[1] == "driver=virtio-pci"
    # the endpoint PDEV went the whole way, the VDEV through bind, lock, run, unlock
    eps = {e["pdev"] for e in events.of("rmm.pdev.created") if e["category"] == "EP_OFF_CHIP"}
    ep_path = [(e["old"], e["new"]) for e in events.of("rmm.pdev.transition") if e["pdev"] in eps]
    assert ep_path == [("NEW", "NEEDS_KEY"), ("NEEDS_KEY", "HAS_KEY"), ("HAS_KEY", "READY"),
                       ("READY", "STOPPED")]
    vdev_path = [t for t in _transitions(events, "rmm.vdev.transition") if t[0] != t[1]]
    assert vdev_path == [("NEW", "UNLOCKED"), ("UNLOCKED", "LOCKED"), ("LOCKED", "STARTED"),
                         ("STARTED", "UNLOCKED")]
    assert _transitions(events, "rmm.vdev_dma.transition") == [("DISABLED", "ENABLED"),
                                                               ("ENABLED", "DISABLED")]
    assert events.of("rmm.host_call")  # RHI went through RSI_HOST_CALL and REC_ENTER
    # IDE_KM keyed the endpoint's stream through the kernel's DOE path
    assert len(events.of("ide_km.key_prog")) == 6 and len(events.of("ide_km.k_set_go")) == 6
    assert "vtfw: VDEV UNLOCKED -> LOCKED (RMI_VDEV_LOCK)" in console
    assert "digests match" in console and "TVM: accepted" in console


def test_connect_reaches_the_dsms_other_functions(prov: Provisioned, tmp_path: Path) -> None:
    """virtio-rng-2fn: after connect the kernel's core probes function 1 through the link
    TSM (pci_tsm_link_constructor), which then shows its DSM in tsm/dsm."""
    run, console = boot_with_port(prov, tmp_path, MiniRmmWithStreams(), "device,tsm_module",
                                  profile="virtio-rng-2fn")
    for name in ("tsm_connect", "tsm_function", "tsm_disconnect", "tsm_rmmod"):
        got = run.result(name)
        assert got is not None and got[0], f"{name}: {got}\n{console[-3000:]}"
    assert (run.result("tsm_function") or ("", ""))[1] == "0000:01:00.1 dsm=0000:01:00.0"
