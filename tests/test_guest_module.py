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

import os
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
from vfiouser_tdisp.run.provision import Provisioned
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
    keying: int | None = None  # the IDE stream ID whose keys go next (stream connect)


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
    """Stream calls, accepted for two READY PDEVs; the endpoint's six keys go by IDE_KM
    KEY_PROG and K_SET_GO over the session at its next COMMUNICATE (PCIe r6.x §6.33.3),
    so the stream the module then enables reads SECURE."""

    def call(self, call: FirmwareCall, mem: GuestMemory) -> tuple[int, ...]:
        if call.fid == RMI_PDEV_STREAM_CONNECT:
            t = struct.unpack_from("<5Q", mem.read(call.args[0], 0x28))
            ep, rp = self.pdevs.get(t[2]), self.pdevs.get(t[3])
            if t[1] != 1 or ep is None or rp is None or READY not in (ep.state, rp.state):
                self.problems.append(f"STREAM_CONNECT params {t}")
                return (RMI_ERROR_INPUT,)
            self.log.append(("stream_connect", t))
            ep.keying = t[4]  # IDE_SID
            return (RMI_SUCCESS, 0x51)
        if call.fid in (RMI_PDEV_STREAM_COMPLETE, RMI_PDEV_STREAM_DISCONNECT):
            self.log.append(("stream", call.fid, call.args[0]))
            return (RMI_SUCCESS,) if call.args[0] == 0x51 else (RMI_ERROR_INPUT,)
        return super().call(call, mem)

    def _work(self, p: Pdev) -> Callable[[SpdmRequester], None] | None:
        if p.keying is None or self.session is None or p.stopping:
            return super()._work(p)
        stream_id, session, p.keying = p.keying, self.session, None

        def keys(r: SpdmRequester) -> None:
            from vfiouser_tdisp.ide.capability import KeyDirection, KeySubstream
            from vfiouser_tdisp.tsm.core import IdeKmRequester, PciSigChannel

            km = IdeKmRequester(PciSigChannel(r, session))
            slots = [(d, sub) for d in KeyDirection for sub in KeySubstream]
            for d, sub in slots:
                km.key_prog(stream_id, 0, d, sub, os.urandom(32), os.urandom(8))
            for d, sub in slots:
                km.k_set(True, stream_id, 0, d, sub)

        return keys


def test_module_builds_reproducibly(prov: Provisioned) -> None:
    ko = ensure_module(prov)
    started = time.monotonic()
    assert ensure_module(prov) == ko and time.monotonic() - started < 1  # cached
    elf = ko.read_bytes()
    assert elf[:4] == b"\x7fELF" and len(elf) < 500_000  # debug info stripped (else > 2 MB)
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


RMI_OP_CONTINUE, RMI_OP_MEM_DONATE, RMI_OP_CANCEL = 0xC4000203, 0xC4000208, 0xC400020A
RMI_INCOMPLETE, SRO_HANDLE = 13, 0x77


class MiniRmmWithSro(MiniRmmWithStreams):
    """PDEV_CREATE of an off-chip endpoint as a stateful RMI operation (firmware-abi.md
    C.2: "may return RMI_INCOMPLETE + SRO donate request ... continue with OP_MEM_DONATE /
    OP_CONTINUE"): INCOMPLETE, handle, DONATE (1), a request for two 4 KiB granules
    (count [15:2]; ``state`` b17: 1 asks for undelegated memory, which the module does not
    offer).  Each donated address descriptor is checked on bytes: size [1:0] 0 (4 KiB),
    count [11:2], address [51:12] a delegated granule, state b63 0 (delegated)."""

    def __init__(self, undelegated: bool = False) -> None:
        super().__init__()
        self.request = 2 << 2 | (1 << 17 if undelegated else 0)
        self.pending: tuple[int, int] | None = None
        self.aux: set[int] = set()

    def call(self, call: FirmwareCall, mem: GuestMemory) -> tuple[int, ...]:
        a = call.args
        if call.fid == RMI_PDEV_CREATE and self.pending is None:
            flags = struct.unpack("<Q", mem.read(a[1], 8))[0]
            if (flags >> 1) & 3 == 1:   # EP_OFF_CHIP: memory first
                self.pending = (a[0], a[1])
                self.params_copy = mem.read(a[1], 0x39)
                return (RMI_INCOMPLETE, SRO_HANDLE, 1, self.request)
        if call.fid == RMI_OP_MEM_DONATE:
            if a[0] != SRO_HANDLE or self.pending is None:
                return (RMI_ERROR_INPUT, 0)
            descs = struct.unpack(f"<{a[2]}Q", mem.read(a[1], 8 * a[2]))
            for d in descs:
                base = d & ((1 << 52) - 1) & ~0xFFF
                if d & 3 or (d >> 2) & 0x3FF != 1 or d >> 63 or base not in self.delegated \
                        or base in self.pdevs or base in self.aux:
                    self.problems.append(f"donate descriptor {d:#x}")
                    return (RMI_ERROR_INPUT, 0)
                self.aux.add(base)
            self.log.append(("donate", len(descs)))
            return (RMI_INCOMPLETE, len(descs), 0, 0)
        if call.fid == RMI_OP_CONTINUE:
            if a[:2] != (SRO_HANDLE, 0) or self.pending is None or len(self.aux) != 2:
                return (RMI_ERROR_INPUT,)
            pdev, _ = self.pending
            params = struct.unpack("<7QB", self.params_copy)
            self.pdevs[pdev] = Pdev(params[0], params)
            self.log.append(("create", params))
            self.pending = None
            return (RMI_SUCCESS,)
        if call.fid == RMI_OP_CANCEL:
            self.log.append(("cancel", a[0]))
            self.pending = None
            self.aux.clear()
            return (RMI_SUCCESS,)
        if call.fid == RMI_GRANULE_UNDELEGATE and a[0] in self.aux:
            if any(p.flags & 1 for p in self.pdevs.values()):   # the EP PDEV still holds it
                self.problems.append(f"granule {a[0]:#x} undelegated while the PDEV lives")
                return (RMI_ERROR_INPUT,)
            self.aux.discard(a[0])
        return super().call(call, mem)


@pytest.mark.parametrize("undelegated", [False, True])
def test_connect_feeds_a_pdev_create_that_needs_memory(prov: Provisioned, tmp_path: Path,
                                                       undelegated: bool) -> None:
    fw = MiniRmmWithSro(undelegated)
    run, console = boot_with_port(prov, tmp_path, fw, "device,tsm_module")
    got = run.result("tsm_connect")
    assert got is not None, console[-3000:]
    assert not fw.problems, fw.problems
    if not undelegated:
        assert got[0], f"{got}\n{console[-3000:]}"
        assert ("donate", 2) in fw.log
        assert "EP PDEV: 2 granules donated to the RMM (SRO)" in console
        assert "EP PDEV READY -> STOPPED" in console
    else:
        assert not got[0] and "Input/output error" in got[1]
        assert ("cancel", SRO_HANDLE) in fw.log and not any(e[0] == "donate" for e in fw.log)
        assert "EP PDEV: donate request 0x20008 not supported" in console
    assert not fw.delegated and not fw.aux   # every granule, donated ones too, undelegated


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
    rmm = platform_firmware("cca")
    run, console = boot_with_port(prov, tmp_path, rmm, "device,tsm_module",
                                  append="vtdisp.bind=1 vtdisp.tvm=1")
    for name in ("tsm_module", "tsm_connect", "tvm_lock_busy", "tsm_bind", "tvm_accept_unlocked",
                 "tvm_lock", "tvm_evidence", "tvm_accept", "tvm_probe", "tvm_unlock",
                 "tvm_scope", "tsm_unbind", "tsm_disconnect", "tsm_rmmod"):
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
    # bind, the TVM's lock / accept / unlock, then tvm_scope's STATE_CHANGE lock and unlock
    assert vdev_path == [("NEW", "UNLOCKED"), ("UNLOCKED", "LOCKED"), ("LOCKED", "STARTED"),
                         ("STARTED", "UNLOCKED"), ("UNLOCKED", "LOCKED"),
                         ("LOCKED", "UNLOCKED")]
    # pci_tsm_guest_req() scopes: the TSM refused the INFO-scoped state change and the
    # INFO-scoped CONTINUE of one (the DEBUG scope never reached it: the core's -EINVAL)
    assert "vtfw: RHI 0xc5000054 needs scope STATE_CHANGE, asked with INFO: refused" in console
    assert "vtfw: RHI 0xc5000051 needs scope STATE_CHANGE, asked with INFO: refused" in console
    assert "asked with DEBUG" not in console
    # PDEV_CREATE of the endpoint was a stateful operation: both granules donated in one
    # OP_MEM_DONATE, then OP_CONTINUE; after PDEV_DESTROY the module undelegated them
    assert _transitions(events, "rmm.sro.transition") == [("DONATE", "CONTINUE"),
                                                          ("CONTINUE", "DONE")]
    assert "EP PDEV: 2 granules donated to the RMM (SRO)" in console
    assert not rmm.granules   # every granule undelegated, the donated ones too
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


# -- the Kbuild's devsec detection and `run --kernel-build` against a tree (item 7) ------

DEVSEC_OPS_OFFSET = 56   # struct pci_tsm_ops: 7 link ops of 8 bytes, then the devsec ops


def _headers_copy(prov: Provisioned, name: str, op: str | None) -> Path:
    """A copy of Debian's split headers (linux-headers-<release> + -common) inside the
    private build tree, its pci-tsm.h given the proposed devsec ``op`` after unlock
    (firmware-abi.md A.3: [IO2] ``accept(pdev)``, [ISTG] ``run``, renamed) -- a tree as
    a user's kernel with those patches would have it."""
    import shutil
    src = Path(prov.cache) / "modbuild/usr/src"
    rel = prov.kernel_version
    common = f"linux-headers-{rel.rsplit('-', 1)[0]}-common"
    dst_arch, dst_common = src / f"{name}-{rel}", src / f"{name}-common"
    for d in (dst_arch, dst_common):
        shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(src / f"linux-headers-{rel}", dst_arch, symlinks=True)
    shutil.copytree(src / common, dst_common, symlinks=True)
    mk = dst_arch / "Makefile"
    mk.write_text(mk.read_text()
                  .replace(f"/usr/src/linux-headers-{rel}", f"/usr/src/{dst_arch.name}")
                  .replace(f"/usr/src/{common}", f"/usr/src/{dst_common.name}"))
    if op is not None:
        h = dst_common / "include/linux/pci-tsm.h"
        text = h.read_text()
        anchor = "\t\tvoid (*unlock)(struct pci_tsm *tsm);\n"
        assert anchor in text
        h.write_text(text.replace(anchor, anchor + f"\t\tint (*{op})(struct pci_dev *pdev);\n"))
    return dst_arch


def _devsec_slots(ko: Path) -> dict[int, str]:
    """Which functions fill the devsec slots of vtfw_devsec_ops (the TVM core's, for every
    platform), from the module's ELF
    (readelf: the .data relocations at the symbol's offset, section + addend resolved to
    the function symbol there): slot offset -> function name."""
    import re
    import subprocess

    def readelf(opt: str) -> list[str]:
        return subprocess.run(["readelf", opt, str(ko)], capture_output=True, text=True,
                              check=True).stdout.splitlines()
    sections = {m.group(2): int(m.group(1)) for line in readelf("-SW")
                if (m := re.match(r"\s*\[\s*(\d+)\]\s+(\S+)", line))}
    funcs: dict[tuple[int, int], str] = {}
    base = None
    for line in readelf("-sW"):
        f = line.split()
        if len(f) == 8 and f[0].endswith(":") and f[6].isdigit():
            if f[3] == "FUNC":
                funcs[(int(f[6]), int(f[1], 16))] = f[7]
            if f[7] == "vtfw_devsec_ops":
                base = int(f[1], 16)
    assert base is not None
    slots: dict[int, str] = {}
    section = ""
    for line in readelf("-rW"):
        if line.startswith("Relocation section"):
            section = line.split("'")[1]
            continue
        m = re.match(r"([0-9a-f]+)\s+[0-9a-f]+\s+\S+\s+[0-9a-f]+\s+(\S+) \+ ([0-9a-f]+)", line)
        if section != ".rela.data" or not m:
            continue
        off = int(m.group(1), 16) - base
        if DEVSEC_OPS_OFFSET <= off < DEVSEC_OPS_OFFSET + 24:
            target = m.group(2)
            name = funcs.get((sections.get(target, -1), int(m.group(3), 16)), target)
            slots[off - DEVSEC_OPS_OFFSET] = name
    return slots


@pytest.mark.parametrize("op", [None, "accept", "run"])
def test_devsec_operation_detected_at_build_time(prov: Provisioned, op: str | None) -> None:
    """Built with `run --kernel-build`'s path (ensure_user_module) against a copy of the
    Debian headers: stock 7.3.4 wires lock and unlock only; a pci-tsm.h with the proposed
    accept ([IO2]) or run ([ISTG]) devsec operation gets vtfw_devsec_accept in that slot."""
    import shutil

    from vfiouser_tdisp.run.module_build import ensure_user_module
    tree = _headers_copy(prov, f"vtfw-test-{op or 'stock'}", op)
    try:
        ko = ensure_user_module(prov, tree, prov.kernel_version)
        elf = ko.read_bytes()
        slots = _devsec_slots(ko)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
        shutil.rmtree(tree.with_name(f"vtfw-test-{op or 'stock'}-common"), ignore_errors=True)
    assert b"vermagic=" + prov.kernel_version.encode() in elf
    assert slots.get(0, "").startswith("vtfw_devsec_lock")
    assert slots.get(8, "").startswith("vtfw_devsec_unlock")
    if op is None:
        assert 16 not in slots and b"vtfw_devsec_ops=lock,unlock\0" in elf
    else:
        assert slots.get(16, "").startswith("vtfw_devsec_accept")
        assert f"vtfw_devsec_ops=lock,unlock,{op}\0".encode() in elf
