"""Guest-less drivers for the RMM emulator: the host side and the realm side, in Python.

:class:`CcaHost` runs the host kernel's CCA sequence (firmware-abi.md C.8: connect,
bind, unbind, disconnect) against an :class:`~.rmm.Rmm`, relaying every object the
RMM asks for to the device (the spdm-emu socket or a DOE mailbox in process) and
keeping the object cache; it also serves the realm's RHI host calls, as the host's
``pci_tsm_guest_req()`` path does.  :class:`CcaRealm` plays the TVM kernel: lock,
evidence with the digest and nonce checks, accept (VALIDATE_MAPPING, RUN,
DMA_ENABLE), unlock -- through RSI and RHI only.  The guest module in the VM runs the
same sequences in C; this is the same thing for tests and interop without QEMU.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ...doe.protocols import PCI_DOE_FEATURE_CMA, PCI_DOE_FEATURE_SSESSION
from ...events import emit
from ...firmware import CallClass, FirmwareCall, GuestMemoryError
from ...tdisp import messages as t
from ...wire import DecodeError
from ..platform import ByteArrayMemory, DoeTransport, spdm_chain_certificates
from . import model
from .abi import (
    GRANULE_SIZE,
    REC_NR_GPRS,
    RHI_DA_FEATURES,
    RHI_DA_OBJECT_READ,
    RHI_DA_OBJECT_SIZE,
    RHI_DA_VDEV_ABORT,
    RHI_DA_VDEV_CONTINUE,
    RHI_DA_VDEV_SET_TDI_STATE,
    RHI_DA_VERSION,
    RHI_DA_VERSION_1_0,
    RHI_NOT_SUPPORTED,
    RMI_ADDR_DESC_COUNT_SHIFT,
    RMI_DEV_COMM_EXIT_OFFSET,
    RMI_DONATE_COUNT_MASK,
    RMI_DONATE_COUNT_SHIFT,
    RMI_DONATE_STATE_UNDELEGATED,
    RMI_OP_MEM_REQ_DONATE,
    RMI_OP_MEM_REQ_NONE,
    RMI_PDEV_FLAGS_CATEGORY_SHIFT,
    RMI_PDEV_FLAGS_SPDM,
    RMI_REC_RUN_ENTER_GPRS,
    RMI_REC_RUN_EXIT,
    RMI_STREAM_PARAMS_ADDR_RANGE_OFFSET,
    RMI_VDEV_MEASURE_FLAGS_RAW,
    RMI_VDEV_PARAMS_ADDR_RANGE_OFFSET,
    RSI_ACCEPT,
    RecExitHostCall,
    RhiDaStatus,
    RhiTdiState,
    RmiAddressRange,
    RmiDevCommEnter,
    RmiDevCommEnterStatus,
    RmiDevCommExit,
    RmiDevCommExitFlags,
    RmiDevCommObject,
    RmiDevCommProtocol,
    RmiFid,
    RmiHashAlgo,
    RmiPdevCategory,
    RmiPdevParams,
    RmiPdevState,
    RmiPdevStreamParams,
    RmiPublicKeyParams,
    RmiRecExitReason,
    RmiSignatureAlgorithm,
    RmiStatus,
    RmiStreamType,
    RmiVdevMeasureParams,
    RmiVdevParams,
    RmiVdevState,
    RsiFid,
    RsiHostCall,
    RsiStatus,
    RsiVdevInfo,
    RsiVdevState,
)
from .rhi import CACHE_OBJECT, LAYOUTS, RhiLayout, RhiObject
from .rmm import Rmm


class CcaError(Exception):
    """A step of the host or realm sequence failed (the message says which and why)."""


def _chain_certificates(chain: bytes) -> list[x509.Certificate]:
    """:func:`spdm_chain_certificates`, a chain that is none being a failed CCA step."""
    try:
        return spdm_chain_certificates(chain)
    except ValueError as exc:
        raise CcaError(str(exc)) from None


def leaf_key_params(chain: bytes) -> tuple[RmiPublicKeyParams, Any]:
    """The leaf key of an SPDM certificate chain as rmi_public_key_params (what the Linux
    host hands RMI_PDEV_SET_PUBKEY), and the leaf certificate."""
    certs = _chain_certificates(chain)
    leaf = certs[-1]
    key = leaf.public_key()
    meta = b""
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1",
                                                                         "secp384r1"):
        algo = (RmiSignatureAlgorithm.RMI_SIGNATURE_ALGORITHM_ECDSA_P256
                if key.curve.name == "secp256r1"
                else RmiSignatureAlgorithm.RMI_SIGNATURE_ALGORITHM_ECDSA_P384)
        raw = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    elif isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072:
        algo = RmiSignatureAlgorithm.RMI_SIGNATURE_ALGORITHM_RSASSA_3072
        nums = key.public_numbers()
        raw = nums.n.to_bytes(384, "big")
        meta = nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")
    else:
        raise CcaError(f"leaf key {type(key).__name__} has no RMI signature algorithm")
    return RmiPublicKeyParams(key=raw.ljust(1024, b"\0"), metadata=meta.ljust(1024, b"\0"),
                              key_len=len(raw), metadata_len=len(meta), algo=algo), leaf


@dataclass
class HostVdev:
    vdev_id: int
    addr: int
    cache: dict[RmiDevCommObject, bytes] = field(default_factory=dict)
    handle: int | None = None


class CcaHost:
    """The host kernel's side: connect / bind / unbind / disconnect and RHI serving."""

    def __init__(self, rmm: Rmm, transport: DoeTransport, mem: ByteArrayMemory | None = None,
                 *, layout: str | RhiLayout = "rhi-1.0-bet1", pdev_id: int = 0,
                 tdi_id: int | None = None, ide_sid: int = 1, hash_algo: int = 0,
                 id_index: int = 0) -> None:
        self.rmm = rmm
        self.transport = transport
        self.mem = mem or ByteArrayMemory()
        self.layout = LAYOUTS[layout] if isinstance(layout, str) else layout
        # pdev_id: the DSM's RID (BDF); tdi_id: the TDI's RID, inside [pdev_id, pdev_id+8)
        self.pdev_id, self.ide_sid = pdev_id, ide_sid
        self.tdi_id = pdev_id if tdi_id is None else tdi_id
        self.hash_algo, self.id_index = hash_algo, id_index
        self.comm = self.mem.alloc()
        self.req, self.resp = (self.mem.alloc(model.DEV_COMM_BUFFER_SIZE),
                               self.mem.alloc(model.DEV_COMM_BUFFER_SIZE))
        self.params = self.mem.alloc()
        self.run = self.mem.alloc()
        self.pdev = self.rp = self.rd = self.rec = 0
        self.stream = 0
        self.pdev_cache: dict[RmiDevCommObject, bytes] = {}
        self.vdevs: dict[int, HostVdev] = {}
        self.objects_sent = 0
        self.sro_granules: list[int] = []   # donated to PDEVs: undelegated after destroy
        self._handles = itertools.count(1)

    # -- calls --------------------------------------------------------------------------------
    def rmi(self, fid: RmiFid, *args: int) -> tuple[int, ...]:
        return self.rmm.call(FirmwareCall(CallClass.HOST, fid, tuple(args)), self.mem)

    def rmi_ok(self, fid: RmiFid, *args: int) -> tuple[int, ...]:
        out = self.rmi(fid, *args)
        if out[0] != RmiStatus.RMI_SUCCESS:
            raise CcaError(f"{fid.name} -> {RmiStatus(out[0]).name}")
        return out

    def _delegated(self) -> int:
        addr = self.mem.alloc()
        self.rmi_ok(RmiFid.RMI_GRANULE_DELEGATE, addr)
        return addr

    def _params(self, head: bytes, extra: dict[int, bytes] | None = None) -> int:
        page = bytearray(GRANULE_SIZE)
        page[:len(head)] = head
        for off, data in (extra or {}).items():
            page[off:off + len(data)] = data
        self.mem.write(self.params, bytes(page))
        return self.params

    def pdev_state(self, pdev: int) -> RmiPdevState:
        return RmiPdevState(self.rmi_ok(RmiFid.RMI_PDEV_GET_STATE, pdev)[1])

    def vdev_state(self, vdev: int) -> RmiVdevState:
        return RmiVdevState(self.rmi_ok(RmiFid.RMI_VDEV_GET_STATE, vdev)[1])

    # -- the COMMUNICATE loop -----------------------------------------------------------------
    def communicate(self, fid: RmiFid, args: tuple[int, ...],
                    cache: dict[RmiDevCommObject, bytes],
                    on_stream_wait: Callable[[], None] | None = None) -> None:
        """Call COMMUNICATE until the operation ends, carrying each object to the device."""
        status, resp_len = RmiDevCommEnterStatus.NONE, 0
        for _ in range(10000):
            self.mem.write(self.comm, RmiDevCommEnter(status=status, req_addr=self.req,
                                                      resp_addr=self.resp,
                                                      resp_len=resp_len).pack())
            self.rmi_ok(fid, *args, self.comm)
            ex = RmiDevCommExit.unpack(self.mem.read(self.comm + RMI_DEV_COMM_EXIT_OFFSET,
                                                     RmiDevCommExit.fixed_size()))
            flags = RmiDevCommExitFlags(ex.flags)
            status, resp_len = RmiDevCommEnterStatus.NONE, 0
            if flags & RmiDevCommExitFlags.RSP_RESET:
                cache.pop(RmiDevCommObject(ex.cache_obj_id), None)
            if flags & RmiDevCommExitFlags.RSP_CACHE:
                obj = RmiDevCommObject(ex.cache_obj_id)
                piece = self.mem.read(self.resp + ex.cache_rsp_offset, ex.cache_rsp_len)
                cache[obj] = cache.get(obj, b"") + piece
            if flags & RmiDevCommExitFlags.REQ_SEND:
                request = self.mem.read(self.req, ex.req_len)
                secured = ex.protocol == RmiDevCommProtocol.SECURE_SPDM
                try:
                    response = self.transport(
                        PCI_DOE_FEATURE_SSESSION if secured else PCI_DOE_FEATURE_CMA, request)
                except Exception as exc:
                    emit("cca_host.doe_error", error=repr(exc))
                    status = RmiDevCommEnterStatus.ERROR
                    continue
                self.objects_sent += 1
                if len(response) > model.DEV_COMM_BUFFER_SIZE:
                    status = RmiDevCommEnterStatus.ERROR
                    continue
                self.mem.write(self.resp, response)
                status, resp_len = RmiDevCommEnterStatus.RESPONSE, len(response)
                continue
            if flags & RmiDevCommExitFlags.STREAM_WAIT:
                if on_stream_wait is None:
                    raise CcaError(f"{fid.name}: STREAM_WAIT with no peer to drive")
                on_stream_wait()
                continue
            if flags & (RmiDevCommExitFlags.MULTI | RmiDevCommExitFlags.RSP_WAIT):
                continue
            return
        raise CcaError(f"{fid.name}: operation did not end")

    def _pdev_comm(self, pdev: int, peer: int | None = None) -> None:
        wait = (lambda: self._pdev_comm(peer)) if peer is not None else None
        self.communicate(RmiFid.RMI_PDEV_COMMUNICATE, (pdev,), self.pdev_cache, wait)

    def _vdev_comm(self, v: HostVdev) -> None:
        self.communicate(RmiFid.RMI_VDEV_COMMUNICATE, (self.rd, self.pdev, v.addr), v.cache)

    # -- connect / disconnect (link TSM) --------------------------------------------------------
    def connect(self) -> None:
        """PDEV_CREATE -> NEEDS_KEY -> SET_PUBKEY -> READY; root port; IDE stream."""
        self.pdev_create()
        self.pdev_identity()
        self.pdev_set_pubkey()
        self.pdev_session()
        self.rp_create()
        self.stream_connect()

    def pdev_create(self) -> None:
        self.pdev = self._delegated()
        flags = RMI_PDEV_FLAGS_SPDM | \
            (RmiPdevCategory.EP_OFF_CHIP << RMI_PDEV_FLAGS_CATEGORY_SHIFT)
        out = self.rmi(RmiFid.RMI_PDEV_CREATE, self.pdev, self._params(RmiPdevParams(
            flags=flags, pdev_id=self.pdev_id, routing_id=self.pdev_id,
            id_index=self.id_index, rid_base=self.pdev_id, rid_top=self.pdev_id + 8,
            hash_algo=self.hash_algo).pack()))
        if out[0] == RmiStatus.RMI_INCOMPLETE:
            out = self.sro(out[1], out[2:4])
        if out[0] != RmiStatus.RMI_SUCCESS:
            raise CcaError(f"RMI_PDEV_CREATE -> {RmiStatus(out[0]).name}")

    def sro(self, handle: int, request: tuple[int, ...]) -> tuple[int, ...]:
        """A stateful RMI operation to its end (firmware-abi.md C.8: "RMI_INCOMPLETE ->
        OP_MEM_DONATE / OP_CONTINUE until done"): delegate and donate the granules it asks
        for, one address descriptor each, then continue it."""
        kind, req = request
        for _ in range(64):
            if kind == RMI_OP_MEM_REQ_DONATE:
                count = (req & RMI_DONATE_COUNT_MASK) >> RMI_DONATE_COUNT_SHIFT
                if req & (RMI_DONATE_STATE_UNDELEGATED | 0b11) or not 0 < count <= 64:
                    raise CcaError(f"SRO donate request {req:#x} not supported")
                granules = [self._delegated() for _ in range(count)]
                self.sro_granules += granules
                descs = [g | 1 << RMI_ADDR_DESC_COUNT_SHIFT for g in granules]
                self.mem.write(self.params, struct.pack(f"<{count}Q", *descs))
                out = self.rmi(RmiFid.RMI_OP_MEM_DONATE, handle, self.params, count)
            elif kind == RMI_OP_MEM_REQ_NONE:
                out = self.rmi(RmiFid.RMI_OP_CONTINUE, handle, 0)
            else:
                self.rmi(RmiFid.RMI_OP_CANCEL, handle)
                raise CcaError(f"SRO memory request kind {kind} not supported")
            if out[0] != RmiStatus.RMI_INCOMPLETE:
                return out
            kind, req = out[2], out[3]
        raise CcaError("the stateful RMI operation did not end")

    def _expect_pdev(self, pdev: int, want: RmiPdevState, step: str) -> None:
        state = self.pdev_state(pdev)
        if state is not want:
            raise CcaError(f"{step}: PDEV {state.name}, expected {want.name}")

    def pdev_identity(self) -> None:
        """COMMUNICATE until NEEDS_KEY: VCA and certificate chain cached."""
        self._pdev_comm(self.pdev)
        self._expect_pdev(self.pdev, RmiPdevState.NEEDS_KEY, "identity")

    def pdev_set_pubkey(self) -> None:
        """The leaf key, parsed by the host from the cached chain (as Linux does)."""
        key, _leaf = leaf_key_params(self.pdev_cache.get(RmiDevCommObject.CERTIFICATE, b""))
        self.rmi_ok(RmiFid.RMI_PDEV_SET_PUBKEY, self.pdev, self._params(key.pack()))

    def pdev_session(self) -> None:
        self._pdev_comm(self.pdev)
        self._expect_pdev(self.pdev, RmiPdevState.READY, "session")

    def rp_create(self) -> None:
        """The root port's PDEV (category RP, no SPDM), driven to READY."""
        self.rp = self._delegated()
        self.rmi_ok(RmiFid.RMI_PDEV_CREATE, self.rp, self._params(RmiPdevParams(
            flags=RmiPdevCategory.RP << RMI_PDEV_FLAGS_CATEGORY_SHIFT, pdev_id=0,
            rid_base=0, rid_top=0x100, hash_algo=self.hash_algo).pack()))
        self._pdev_comm(self.rp)
        self._expect_pdev(self.rp, RmiPdevState.READY, "root port")

    def stream_connect(self) -> None:
        """STREAM_CONNECT, the endpoint's COMMUNICATE (driving the root port at
        STREAM_WAIT), STREAM_COMPLETE."""
        params = RmiPdevStreamParams(stream_type=RmiStreamType.NCOH, pdev_1=self.pdev,
                                     pdev_2=self.rp, ide_sid=self.ide_sid, num_addr_range=1)
        rng = RmiAddressRange(base=0, top=1 << 48).pack()
        self.stream = self.rmi_ok(RmiFid.RMI_PDEV_STREAM_CONNECT, self._params(
            params.pack(), {RMI_STREAM_PARAMS_ADDR_RANGE_OFFSET: rng}))[1]
        self._pdev_comm(self.pdev, peer=self.rp)
        self._expect_pdev(self.pdev, RmiPdevState.READY, "IDE stream")
        self.rmi_ok(RmiFid.RMI_PDEV_STREAM_COMPLETE, self.stream)

    def disconnect(self) -> None:
        for vdev_id in list(self.vdevs):
            self.unbind(vdev_id)
        if self.stream:
            if self.rmi(RmiFid.RMI_PDEV_STREAM_DISCONNECT, self.stream)[0] == RmiStatus.RMI_SUCCESS:
                self._pdev_comm(self.pdev)
            self.stream = 0
        for pdev in (self.pdev, self.rp):
            if not pdev:
                continue
            if self.rmi(RmiFid.RMI_PDEV_STOP, pdev)[0] == RmiStatus.RMI_SUCCESS:
                self._pdev_comm(pdev)
            self.rmi_ok(RmiFid.RMI_PDEV_DESTROY, pdev)
            self.rmi_ok(RmiFid.RMI_GRANULE_UNDELEGATE, pdev)
        for g in self.sro_granules:   # back from the destroyed PDEV, delegated and free
            self.rmi_ok(RmiFid.RMI_GRANULE_UNDELEGATE, g)
        self.sro_granules.clear()
        self.pdev = self.rp = 0
        self.pdev_cache.clear()

    # -- bind / unbind ------------------------------------------------------------------------
    def ensure_realm(self) -> None:
        if self.rd:
            return
        self.rd = self._delegated()
        self.rmi_ok(RmiFid.RMI_REALM_CREATE, self.rd, self._params(b""))
        self.rec = self._delegated()
        self.rmi_ok(RmiFid.RMI_REC_CREATE, self.rd, self.rec, self._params(b""))

    def bind(self, vdev_id: int, ranges: list[tuple[int, int]] | None = None,
             lock: bool = True) -> HostVdev:
        """VDEV_CREATE -> UNLOCKED, then (the newest host) VDEV_LOCK -> LOCKED."""
        self.ensure_realm()
        v = HostVdev(vdev_id, self._delegated())
        ranges = ranges or []
        params = RmiVdevParams(vdev_id=vdev_id, tdi_id=self.tdi_id,
                               num_addr_range=len(ranges))
        table = b"".join(RmiAddressRange(base=b, top=e).pack() for b, e in ranges)
        self.rmi_ok(RmiFid.RMI_VDEV_CREATE, self.rd, self.pdev, v.addr,
                    self._params(params.pack(), {RMI_VDEV_PARAMS_ADDR_RANGE_OFFSET: table}))
        self.vdevs[vdev_id] = v
        self._vdev_comm(v)
        if self.vdev_state(v.addr) is not RmiVdevState.UNLOCKED:
            raise CcaError(f"VDEV {self.vdev_state(v.addr).name} after create")
        if lock:
            self.vdev_op(v, RmiFid.RMI_VDEV_LOCK, RmiVdevState.LOCKED)
        return v

    def vdev_op(self, v: HostVdev, fid: RmiFid, want: RmiVdevState, *extra: int) -> None:
        self.rmi_ok(fid, self.rd, self.pdev, v.addr, *extra)
        self._vdev_comm(v)
        state = self.vdev_state(v.addr)
        if state is not want:
            raise CcaError(f"{fid.name}: VDEV {state.name}, expected {want.name}")

    def unbind(self, vdev_id: int) -> None:
        v = self.vdevs[vdev_id]
        if self.vdev_state(v.addr) in (RmiVdevState.LOCKED, RmiVdevState.STARTED,
                                       RmiVdevState.ERROR):
            self.vdev_op(v, RmiFid.RMI_VDEV_UNLOCK, RmiVdevState.UNLOCKED)
        self.rmi_ok(RmiFid.RMI_VDEV_DESTROY, self.rd, self.pdev, v.addr)
        self.rmi_ok(RmiFid.RMI_GRANULE_UNDELEGATE, v.addr)
        del self.vdevs[vdev_id]

    def measure(self, v: HostVdev, raw: bool = False, nonce: bytes = bytes(32)) -> None:
        page = RmiVdevMeasureParams(flags=RMI_VDEV_MEASURE_FLAGS_RAW if raw else 0,
                                    nonce=nonce).pack()
        state = self.vdev_state(v.addr)
        self.vdev_op(v, RmiFid.RMI_VDEV_GET_MEASUREMENTS, state, self._params(page))

    def report(self, v: HostVdev) -> None:
        self.vdev_op(v, RmiFid.RMI_VDEV_GET_INTERFACE_REPORT, self.vdev_state(v.addr))

    # -- serving the realm's host calls (guest_req) ---------------------------------------------
    def serve_host_call(self) -> None:
        """RMI_REC_ENTER: take the HOST_CALL exit, answer the RHI call, enter again."""
        self.rmi_ok(RmiFid.RMI_REC_ENTER, self.rec, self.run)
        ex = RecExitHostCall.unpack(self.mem.read(self.run + RMI_REC_RUN_EXIT,
                                                  RecExitHostCall.fixed_size()))
        if ex.exit_reason != RmiRecExitReason.RMI_EXIT_HOST_CALL:
            raise CcaError(f"REC exit {ex.exit_reason}, expected HOST_CALL")
        gprs = struct.unpack(f"<{REC_NR_GPRS}Q", ex.gprs)
        answer = self.rhi(gprs[0], gprs[1:])
        out = list(answer) + [0] * (REC_NR_GPRS - len(answer))
        self.mem.write(self.run + RMI_REC_RUN_ENTER_GPRS, struct.pack(f"<{REC_NR_GPRS}Q", *out))
        self.rmi_ok(RmiFid.RMI_REC_ENTER, self.rec, self.run)

    def rhi(self, fid: int, a: tuple[int, ...]) -> tuple[int, ...]:
        lay = self.layout
        handlers: dict[int, Callable[[tuple[int, ...]], tuple[int, ...]]] = {
            RHI_DA_VERSION: lambda a: (RHI_DA_VERSION_1_0,),
            RHI_DA_FEATURES: lambda a: (lay.base_features,),
            RHI_DA_OBJECT_SIZE: self.rhi_object_size,
            RHI_DA_OBJECT_READ: self.rhi_object_read,
            RHI_DA_VDEV_CONTINUE: self.rhi_continue,
            RHI_DA_VDEV_SET_TDI_STATE: self.rhi_set_tdi_state,
            RHI_DA_VDEV_ABORT: self.rhi_abort,
            lay.get_measurements: self.rhi_get_measurements,
            lay.get_interface_report: self.rhi_get_interface_report,
        }
        handler = handlers.get(fid)
        out = handler(a) if handler else (RHI_NOT_SUPPORTED,)
        emit("cca_host.rhi", layout=lay.name, fid=f"{fid:#x}",
             status=RhiDaStatus(out[0]).name if out[0] < 16 else f"{out[0]:#x}")
        return out

    def _object(self, a: tuple[int, ...]) -> tuple[bytes | None, int]:
        v = self.vdevs.get(a[0])
        if v is None:
            return None, RhiDaStatus.INVALID_VDEV_ID
        obj = self.layout.objects.get(a[1])
        if obj is None:
            return None, RhiDaStatus.INVALID_OBJECT
        if obj is RhiObject.EXTENSION_EVIDENCE:
            return None, RhiDaStatus.OBJECT_UNSUPPORTED
        cache_obj = CACHE_OBJECT[obj]
        store = self.pdev_cache if cache_obj in (RmiDevCommObject.VCA,
                                                 RmiDevCommObject.CERTIFICATE) else v.cache
        data = store.get(cache_obj)
        if data is None:
            return None, RhiDaStatus.DATA_NOT_AVAILABLE
        return data, RhiDaStatus.SUCCESS

    def rhi_object_size(self, a: tuple[int, ...]) -> tuple[int, ...]:
        data, status = self._object(a)
        return (status, len(data)) if data is not None else (status,)

    def rhi_object_read(self, a: tuple[int, ...]) -> tuple[int, ...]:
        data, status = self._object(a)
        if data is None:
            return (status,)
        lay = self.layout
        buf, max_len, offset = a[lay.read_buffer - 1], a[lay.read_max_len - 1], \
            a[lay.read_offset - 1]
        if buf == 0:
            return (RhiDaStatus.ACCESS_FAILED,)
        if offset >= len(data):
            return (RhiDaStatus.INVALID_OFFSET,)
        chunk = data[offset:offset + max_len]
        try:
            self.mem.write(buf, chunk)
        except GuestMemoryError:
            return (RhiDaStatus.ACCESS_FAILED,)
        return (RhiDaStatus.SUCCESS, len(chunk))

    def _start(self, v: HostVdev, fid: RmiFid, *extra: int) -> tuple[int, ...]:
        if v.handle is not None:
            return (RhiDaStatus.BUSY,)
        status = self.rmi(fid, self.rd, self.pdev, v.addr, *extra)[0]
        if status == RmiStatus.RMI_BUSY:
            return (RhiDaStatus.BUSY,)
        if status != RmiStatus.RMI_SUCCESS:
            return (RhiDaStatus.DEVICE,)
        v.handle = next(self._handles)
        return (RhiDaStatus.INCOMPLETE, v.handle)

    def rhi_get_interface_report(self, a: tuple[int, ...]) -> tuple[int, ...]:
        v = self.vdevs.get(a[0])
        if v is None:
            return (RhiDaStatus.INVALID_VDEV_ID,)
        return self._start(v, RmiFid.RMI_VDEV_GET_INTERFACE_REPORT)

    def rhi_get_measurements(self, a: tuple[int, ...]) -> tuple[int, ...]:
        v = self.vdevs.get(a[0])
        if v is None:
            return (RhiDaStatus.INVALID_VDEV_ID,)
        cls = self.layout.measure_params
        try:
            params: Any = cls.unpack(self.mem.read(a[1], cls.fixed_size()))
        except (GuestMemoryError, DecodeError):
            return (RhiDaStatus.ACCESS_FAILED,)
        raw = bool(params.flags & self.layout.measure_raw_bit)
        page = RmiVdevMeasureParams(flags=RMI_VDEV_MEASURE_FLAGS_RAW if raw else 0,
                                    nonce=params.nonce).pack()
        return self._start(v, RmiFid.RMI_VDEV_GET_MEASUREMENTS, self._params(page))

    def rhi_set_tdi_state(self, a: tuple[int, ...]) -> tuple[int, ...]:
        v = self.vdevs.get(a[0])
        if v is None:
            return (RhiDaStatus.INVALID_VDEV_ID,)
        if a[1] not in RhiTdiState._value2member_map_:
            return (RhiDaStatus.INVALID_OBJECT,)
        target, state = RhiTdiState(a[1]), self.vdev_state(v.addr)
        want = {RhiTdiState.CONFIG_UNLOCKED: RmiVdevState.UNLOCKED,
                RhiTdiState.CONFIG_LOCKED: RmiVdevState.LOCKED,
                RhiTdiState.RUN: RmiVdevState.STARTED}[target]
        if state is want:
            return (RhiDaStatus.SUCCESS,)
        fid = {RhiTdiState.CONFIG_UNLOCKED: RmiFid.RMI_VDEV_UNLOCK,
               RhiTdiState.CONFIG_LOCKED: RmiFid.RMI_VDEV_LOCK,
               RhiTdiState.RUN: RmiFid.RMI_VDEV_START}[target]
        return self._start(v, fid)

    def rhi_continue(self, a: tuple[int, ...]) -> tuple[int, ...]:
        v = self.vdevs.get(a[0])
        if v is None:
            return (RhiDaStatus.INVALID_VDEV_ID,)
        if v.handle is None or v.handle != a[1]:
            return (RhiDaStatus.DEVICE,)
        v.handle = None
        try:
            self._vdev_comm(v)
        except CcaError:
            return (RhiDaStatus.DEVICE,)
        if self.vdev_state(v.addr) is RmiVdevState.ERROR:
            return (RhiDaStatus.DEVICE,)
        return (RhiDaStatus.SUCCESS,)

    def rhi_abort(self, a: tuple[int, ...]) -> tuple[int, ...]:
        v = self.vdevs.get(a[0])
        if v is None:
            return (RhiDaStatus.INVALID_VDEV_ID,)
        if v.handle is None:
            return (RhiDaStatus.ABORTED_OPERATION_HAD_COMPLETED,)
        v.handle = None
        self.rmi_ok(RmiFid.RMI_VDEV_ABORT, v.addr)
        return (RhiDaStatus.SUCCESS,)


@dataclass
class Evidence:
    """What the realm read and checked at lock time (CCA: the guest's evidence objects)."""

    info: RsiVdevInfo
    certificate: bytes
    vca: bytes
    report: bytes
    measurements: bytes

    @property
    def ranges(self) -> list[tuple[int, int]]:
        rep = t.TDI_REPORT_STRUCTURE.unpack(self.report)
        return [(r.first_page << model.REPORT_PAGE_SHIFT,
                  (r.first_page + r.number_of_pages) << model.REPORT_PAGE_SHIFT)
                for r in rep.mmio_range]


class CcaRealm:
    """The TVM kernel's side: RSI calls, and RHI calls through RSI_HOST_CALL."""

    def __init__(self, host: CcaHost) -> None:
        self.host, self.rmm, self.mem, self.layout = host, host.rmm, host.mem, host.layout
        self.hc = self.mem.alloc(GRANULE_SIZE)
        self.info_page = self.mem.alloc(GRANULE_SIZE)
        self.bounce = self.mem.alloc(GRANULE_SIZE)
        self.meas_params = self.mem.alloc(GRANULE_SIZE)
        self.evidence: dict[int, Evidence] = {}

    def rsi(self, fid: RsiFid, *args: int) -> tuple[int, ...]:
        return self.rmm.call(FirmwareCall(CallClass.GUEST, fid, tuple(args)), self.mem)

    def rhi(self, fid: int, *args: int) -> tuple[int, ...]:
        """An RHI call: rsi_host_call in realm memory, RSI_HOST_CALL, the host answers."""
        gprs = [fid, *args] + [0] * (REC_NR_GPRS - 1 - len(args))
        self.mem.write(self.hc, RsiHostCall(imm=0, gprs=struct.pack(f"<{REC_NR_GPRS}Q",
                                                                     *gprs)).pack())
        status = self.rsi(RsiFid.RSI_HOST_CALL, self.hc)[0]
        if status != RsiStatus.RSI_INCOMPLETE:
            raise CcaError(f"RSI_HOST_CALL -> {RsiStatus(status).name}")
        self.host.serve_host_call()
        answer = RsiHostCall.unpack(self.mem.read(self.hc, RsiHostCall.fixed_size()))
        return struct.unpack(f"<{REC_NR_GPRS}Q", answer.gprs)

    def rhi_wait(self, fid: int, vdev_id: int, *args: int) -> None:
        """A device operation: INCOMPLETE + handle, then VDEV_CONTINUE until done."""
        out = self.rhi(fid, vdev_id, *args)
        while out[0] == RhiDaStatus.INCOMPLETE:
            out = self.rhi(RHI_DA_VDEV_CONTINUE, vdev_id, out[1])
        if out[0] != RhiDaStatus.SUCCESS:
            raise CcaError(f"RHI {fid:#x} -> {RhiDaStatus(out[0]).name}")

    def get_info(self, vdev_id: int) -> RsiVdevInfo:
        status = self.rsi(RsiFid.RSI_VDEV_GET_INFO, vdev_id, self.info_page)[0]
        if status != RsiStatus.RSI_SUCCESS:
            raise CcaError(f"RSI_VDEV_GET_INFO -> {RsiStatus(status).name}")
        return RsiVdevInfo.unpack(self.mem.read(self.info_page, RsiVdevInfo.fixed_size()))

    def read_object(self, vdev_id: int, obj: RhiObject) -> bytes:
        oid = self.layout.object_id(obj)
        out = self.rhi(RHI_DA_OBJECT_SIZE, vdev_id, oid)
        if out[0] != RhiDaStatus.SUCCESS:
            raise CcaError(f"OBJECT_SIZE {obj.name} -> {RhiDaStatus(out[0]).name}")
        size, data = out[1], bytearray()
        while len(data) < size:
            regs = [0] * 3
            regs[self.layout.read_buffer - 3] = self.bounce
            regs[self.layout.read_max_len - 3] = GRANULE_SIZE
            regs[self.layout.read_offset - 3] = len(data)
            out = self.rhi(RHI_DA_OBJECT_READ, vdev_id, oid, *regs)
            if out[0] != RhiDaStatus.SUCCESS or out[1] == 0:
                raise CcaError(f"OBJECT_READ {obj.name} -> {RhiDaStatus(out[0]).name}")
            data += self.mem.read(self.bounce, out[1])
        return bytes(data)

    def lock(self, vdev_id: int, nonce: bytes | None = None) -> Evidence:
        """cca_device_lock + evidence: the sequence of firmware-abi.md C.8 (guest).
        ``nonce``: the 32 bytes the device signs its measurements over (random if None)."""
        nonce = os.urandom(32) if nonce is None else nonce
        self.rhi_wait(RHI_DA_VDEV_SET_TDI_STATE, vdev_id, RhiTdiState.CONFIG_LOCKED)
        first = self.get_info(vdev_id)
        if first.state != RsiVdevState.LOCKED:
            raise CcaError(f"VDEV state {RsiVdevState(first.state).name} after lock")
        self.rhi_wait(self.layout.get_interface_report, vdev_id)
        params = self.layout.measure_params(nonce=nonce)  # type: ignore[call-arg]
        self.mem.write(self.meas_params, params.pack())
        self.rhi_wait(self.layout.get_measurements, vdev_id, self.meas_params)
        ev = Evidence(self.get_info(vdev_id),
                      self.read_object(vdev_id, RhiObject.CERTIFICATE),
                      self.read_object(vdev_id, RhiObject.VCA),
                      self.read_object(vdev_id, RhiObject.INTERFACE_REPORT),
                      self.read_object(vdev_id, RhiObject.MEASUREMENT))
        check_evidence(ev, lock_nonce=first.lock_nonce)
        self.evidence[vdev_id] = ev
        return ev

    def accept(self, vdev_id: int) -> None:
        """Validate every report range, RUN, then DMA_ENABLE with the three nonces."""
        ev = self.evidence.get(vdev_id)
        if ev is None:
            raise CcaError("accept before lock")
        info = self.get_info(vdev_id)
        if info.lock_nonce != ev.info.lock_nonce:
            raise CcaError("the device was re-locked since the evidence was read")
        nonces = (info.lock_nonce, info.meas_nonce, info.report_nonce)
        for base, top in ev.ranges:
            ipa = base
            while ipa < top:
                out = self.rsi(RsiFid.RSI_VDEV_VALIDATE_MAPPING, vdev_id, ipa, top,
                               base + (ipa - base), 0, *nonces)
                if out[0] != RsiStatus.RSI_SUCCESS or out[2] != RSI_ACCEPT:
                    raise CcaError(f"VALIDATE_MAPPING {ipa:#x}-{top:#x} -> "
                                   f"{RsiStatus(out[0]).name}/{out[2:3]}")
                ipa = out[1]
        self.rhi_wait(RHI_DA_VDEV_SET_TDI_STATE, vdev_id, RhiTdiState.RUN)
        out = self.rsi(RsiFid.RSI_VDEV_DMA_ENABLE, vdev_id, 0, 0, *nonces)
        if out[0] != RsiStatus.RSI_SUCCESS:
            self.rhi_wait(RHI_DA_VDEV_SET_TDI_STATE, vdev_id, RhiTdiState.CONFIG_UNLOCKED)
            raise CcaError(f"RSI_VDEV_DMA_ENABLE -> {RsiStatus(out[0]).name}")

    def unlock(self, vdev_id: int) -> None:
        self.rsi(RsiFid.RSI_VDEV_DMA_DISABLE, vdev_id)
        self.rhi_wait(RHI_DA_VDEV_SET_TDI_STATE, vdev_id, RhiTdiState.CONFIG_UNLOCKED)
        self.evidence.pop(vdev_id, None)


def check_evidence(ev: Evidence, *, lock_nonce: int,
                   root: x509.Certificate | None = None) -> None:
    """The realm's checks: the firmware-attested digests match the objects read through
    the (untrusted) host, and the lock has not moved underneath."""
    info = ev.info
    algo = {0: "sha256", 1: "sha512"}.get(info.hash_algo)
    if algo is None:
        raise CcaError(f"rsi_vdev_info.hash_algo {info.hash_algo} not SHA-256/512")
    size = hashlib.new(algo).digest_size
    if info.lock_nonce != lock_nonce:
        raise CcaError("lock_nonce changed while the evidence was read")
    for name, data, digest in (("certificate", ev.certificate, info.cert_digest),
                               ("VCA", ev.vca, info.vca_digest),
                               ("interface report", ev.report, info.report_digest),
                               ("measurements", ev.measurements, info.meas_digest)):
        if hashlib.new(algo, data).digest() != digest[:size]:
            raise CcaError(f"{name} does not match the digest the RMM attested")
    if root is not None:
        certs = _chain_certificates(ev.certificate)
        if certs[0] != root:
            raise CcaError("the device chain does not start at the trusted root")
        for parent, child in zip(certs, certs[1:], strict=False):
            try:
                child.verify_directly_issued_by(parent)
            except Exception as exc:
                raise CcaError(f"chain link broken at {child.subject}: {exc}") from None


__all__ = ["CcaError", "CcaHost", "CcaRealm", "Evidence", "RmiHashAlgo", "check_evidence",
           "leaf_key_params"]
