"""Guest-less drivers for the TDX module emulator: the host kernel and the TD, in Python.

:class:`TdxHost` runs the Linux tdx-host sequences (firmware-abi.md B.4, [TDXC1]/[ITDX]):
connect = TDH.SPDM.CREATE, TDH.SPDM.CONNECT looping on TDX_SPDM_REQUEST (each object in
the request page carried to the device, the answer put in the response page),
TDH.IDE.STREAM.CREATE, TDH.IDE.STREAM.KM(SETUP) loop; disconnect in reverse; the
[MODEL] TDI bind / start / stop / unbind and MMIO/DMAR mapping; the TDCM VMCALLs of the TD
(TDH.VP.ENTER, served as the VMM would); and the TD-preserving update through the
P-SEAMLDR exactly as Linux ``seamldr.c`` orders it (SHUTDOWN, INSTALL per CPU, LP.INIT
per CPU, TDH.SYS.UPDATE).  :class:`TdxTd` plays the TD's kernel ([ISTG] connect.c):
lock (TDCM CHECK_TEEIO_SUPP, BIND, TDG.TDI.RD, GET_TDI_REPORT, GET_DEV_INFO, hashes
checked), accept (TDG.MMIO.ACCEPT per range, TDG.DMAR.ACCEPT, TDG.TDI.START, TDCM
START_TDI), refresh (TDCM GET_TDI_STATE and GET_TDI_REPORT, which the host serves with
the [MODEL] TDH.TDI.STATE / GET_REPORT: the module asks the device again), unlock
(TDCM UNBIND).  The guest module does the same in C.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...doe.protocols import PCI_SIG_VENDOR_ID, DoeError, DoeHeader, build_object, parse_object
from ...events import emit
from ...firmware import CallClass, FirmwareCall, GuestMemoryError
from ...wire import DecodeError
from ..core import parse_report
from ..platform import ByteArrayMemory, DoeTransport
from . import model
from .abi import (
    EXIT_REASON_TDCALL,
    NO_PAGE,
    PAGE_SIZE,
    SEAMLDR_INFO_SIZE,
    TDCM_HEADER_SIZE,
    TDG_VP_VMCALL_TDCM,
    VMM_SPDM_CAP_HBEAT,
    VMM_SPDM_CAP_KEY_UPD,
    IdeStreamKmOp,
    SeamcallLeaf,
    SeamldrInfo,
    SeamldrLeaf,
    SeamldrParams,
    SeamldrScenario,
    SeamldrStatus,
    SpdmConfigInfo,
    SpdmMngOp,
    SysMetadataField,
    TdcallLeaf,
    TdcmError,
    TdcmOperation,
    TdcmStatus,
    TdiRdField,
    TdTdiState,
    TdvmcallTdcm,
    TdxStatus,
    VmcallStatus,
    hpa_array,
    spec_name,
)
from .blob import ImageError, parse_image
from .model import DevInfoHeader, HostTdiLeaf, TdiRdModelField
from .module import TdxModule

Leaf = SeamcallLeaf | HostTdiLeaf | SeamldrLeaf | TdcallLeaf
# The host maps at most this much of a TD's TDCM buffer (header + a 16-page report + slack).
MAX_TDCM_BUFFER = 32 * PAGE_SIZE


class TdxError(Exception):
    """A step failed: which call, its status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def status_name(status: int) -> str:
    for enum_type in (TdxStatus, SeamldrStatus):
        try:
            return enum_type(status).name
        except ValueError:
            pass
    base, low = status & 0xFFFF_FFFF_0000_0000, status & 0xFFFF_FFFF
    for enum_type in (TdxStatus,):
        try:
            return f"{enum_type(base).name}|{low:#x}"
        except ValueError:
            pass
    names = {model.TDX_DEVICE_ERROR: "TDX_DEVICE_ERROR[MODEL]",
             model.TDX_OBJECT_STATE_INCORRECT: "TDX_OBJECT_STATE_INCORRECT[MODEL]",
             model.TDX_MODULE_SHUT_DOWN: "TDX_MODULE_SHUT_DOWN[MODEL]"}
    if base in names:
        return f"{names[base]}|{low:#x}"
    return f"{status:#018x}"


@dataclass
class Link:
    """What the host keeps per connected device (Linux: struct tdx_link)."""

    func_id: int
    spdm_id: int = 0
    stream_id: int = 0
    dev_info: bytes = b""
    bound: dict[int, int] = field(default_factory=dict)   # TDI func_id -> bind session id


class TdxHost:
    """The host kernel's side (tdx-host + KVM's VMCALL handling), against a TdxModule."""

    def __init__(self, module: TdxModule, transport: DoeTransport,
                 mem: ByteArrayMemory | None = None, *, func_id: int = 0, tdi: int | None = None,
                 stream_id: int = 1, cpus: int = 2) -> None:
        self.module, self.transport = module, transport
        self.mem = mem or ByteArrayMemory(8 << 20)
        self.link = Link(func_id)
        self.tdi = func_id if tdi is None else tdi
        self.stream_ctrl = stream_id << 24      # IDE Stream Control: Stream ID in 31:24
        self.cpus = cpus
        self.td = 0x1000                         # [MODEL] any non-zero TD handle
        self.req, self.rsp = self.mem.alloc(), self.mem.alloc()
        self.conf = self.mem.alloc()
        self.out = self.mem.alloc(4 * PAGE_SIZE)
        self.out_root = self.mem.alloc()
        self.mem.write(self.out_root, b"".join((self.out + i * PAGE_SIZE).to_bytes(8, "little")
                                               for i in range(4)))
        self.spdm_mt, self.stream_mt, self.iommu_mt = (self.mem.alloc(), self.mem.alloc(),
                                                       self.mem.alloc())
        self.iommu_id = 0
        self.objects_sent = 0
        self.calls: list[tuple[str, int]] = []

    # -- calls ----------------------------------------------------------------------------------
    def seamcall(self, leaf: Leaf, *args: int) -> tuple[int, ...]:
        out = self.module.call(FirmwareCall(CallClass.HOST, int(leaf), tuple(args)), self.mem)
        self.calls.append((spec_name(leaf), out[0]))
        return out

    def ok(self, leaf: Leaf, *args: int) -> tuple[int, ...]:
        out = self.seamcall(leaf, *args)
        if out[0] != TdxStatus.TDX_SUCCESS:
            raise TdxError(f"{spec_name(leaf)} -> {status_name(out[0])}", out[0])
        return out

    def _exchange(self, length: int) -> None:
        """Carry the DOE object in the request page to the device; answer into rsp."""
        obj = self.mem.read(self.req, length)
        try:
            hdr, payload = parse_object(obj)
            response = self.transport(hdr.data_object_type, payload)
            answer = build_object(PCI_SIG_VENDOR_ID, hdr.data_object_type, response)
            if len(answer) > PAGE_SIZE:
                raise DoeError("response larger than the page")
        except Exception as exc:   # the module learns it from an invalid response page
            emit("tdx_host.doe_error", error=repr(exc))
            answer = bytes(8)
        self.objects_sent += 1
        self.mem.write(self.rsp, answer)

    def loop(self, leaf: Leaf, *args: int) -> tuple[int, ...]:
        """Call ``leaf`` until it stops asking (TDX_SPDM_REQUEST, INTERRUPTED_RESUMABLE);
        on SESSION_KEY_REQUIRE_REFRESH run MNG(KEY_UPDATE) and call again ([TDXC1])."""
        for _ in range(100000):
            out = self.seamcall(leaf, *args)
            if out[0] == TdxStatus.TDX_SPDM_REQUEST:
                self._exchange(out[1])
                continue
            if out[0] == TdxStatus.TDX_INTERRUPTED_RESUMABLE:
                continue
            if out[0] == TdxStatus.TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH:
                self.key_update()
                continue
            if out[0] != TdxStatus.TDX_SUCCESS:
                raise TdxError(f"{spec_name(leaf)} -> {status_name(out[0])}", out[0])
            return out
        raise TdxError(f"{spec_name(leaf)} did not end")

    # -- link TSM: connect / disconnect ---------------------------------------------------------
    def iommu_setup(self, vtbar: int = 0xFED9_0000) -> None:
        if not self.iommu_id:
            self.iommu_id = self.ok(SeamcallLeaf.TDH_IOMMU_SETUP, vtbar,
                                    hpa_array(self.iommu_mt))[1]

    def connect(self, slot_mask: int = 0xFF) -> None:
        self.iommu_setup()
        self.link.spdm_id = self.ok(SeamcallLeaf.TDH_SPDM_CREATE, self.link.func_id,
                                    hpa_array(self.spdm_mt))[1]
        conf = SpdmConfigInfo(vmm_spdm_cap=VMM_SPDM_CAP_HBEAT | VMM_SPDM_CAP_KEY_UPD,
                              certificate_slot_mask=slot_mask)
        self.mem.write(self.conf, conf.pack().ljust(PAGE_SIZE, b"\0"))
        out = self.loop(SeamcallLeaf.TDH_SPDM_CONNECT, self.link.spdm_id, self.conf, self.rsp,
                        self.req, hpa_array(self.out_root, 4))
        self.link.dev_info = self.mem.read(self.out, out[1])
        self.link.stream_id = self.ok(SeamcallLeaf.TDH_IDE_STREAM_CREATE, 1 << 8,
                                      self.link.spdm_id, hpa_array(self.stream_mt),
                                      self.stream_ctrl, 0, 0, 0, 0, 0)[1]
        self.loop(SeamcallLeaf.TDH_IDE_STREAM_KM, self.link.spdm_id, self.link.stream_id,
                  IdeStreamKmOp.SETUP, self.rsp, self.req)

    def disconnect(self) -> None:
        for func_id in list(self.link.bound):
            self.unbind(func_id)
        if self.link.stream_id or (self.link.spdm_id, self.link.stream_id) in \
                self.module.streams:
            self.ok(SeamcallLeaf.TDH_IDE_STREAM_BLOCK, self.link.spdm_id, self.link.stream_id)
            self.loop(SeamcallLeaf.TDH_IDE_STREAM_KM, self.link.spdm_id, self.link.stream_id,
                      IdeStreamKmOp.STOP, self.rsp, self.req)
            self.ok(SeamcallLeaf.TDH_IDE_STREAM_DELETE, self.link.spdm_id, self.link.stream_id,
                    hpa_array(self.stream_mt))
            self.link.stream_id = 0
        if self.link.spdm_id:
            self.loop(SeamcallLeaf.TDH_SPDM_DISCONNECT, self.link.spdm_id, self.rsp, self.req)
            self.ok(SeamcallLeaf.TDH_SPDM_DELETE, self.link.spdm_id, hpa_array(self.spdm_mt))
            self.link.spdm_id = 0

    def mng(self, op: SpdmMngOp) -> tuple[int, ...]:
        out = NO_PAGE if op != SpdmMngOp.RECOLLECT else hpa_array(self.out_root, 4)
        result = self.loop(SeamcallLeaf.TDH_SPDM_MNG, self.link.spdm_id, op, NO_PAGE, self.rsp,
                           self.req, out)
        if op == SpdmMngOp.RECOLLECT:
            self.link.dev_info = self.mem.read(self.out, result[1])
        return result

    def key_update(self) -> None:
        self.mng(SpdmMngOp.KEY_UPDATE)

    # -- [MODEL] TDI binding ----------------------------------------------------------------------
    def bind(self, func_id: int | None = None) -> int:
        """TDH.TDI.BIND (the device locks the TDI), then map its MMIO and DMA for the TD."""
        func_id = self.tdi if func_id is None else func_id
        session = self.loop(HostTdiLeaf.TDH_TDI_BIND, self.link.spdm_id, func_id, self.td,
                            self.rsp, self.req, self.link.stream_id)[1]
        self.link.bound[func_id] = session
        tdi = self.module.tdis[func_id]
        for hpa, pages in tdi.ranges:   # GPA = HPA: the guest-less TD maps BARs 1:1
            self.ok(HostTdiLeaf.TDH_MMIO_MAP, func_id, hpa, hpa, pages)
        self.ok(HostTdiLeaf.TDH_DMAR_ADD, func_id)
        return session

    def start(self, func_id: int) -> None:
        self.loop(HostTdiLeaf.TDH_TDI_START, self.link.spdm_id, func_id, self.rsp, self.req)

    def unbind(self, func_id: int | None = None) -> None:
        func_id = self.tdi if func_id is None else func_id
        if func_id not in self.module.tdis:
            self.link.bound.pop(func_id, None)
            return
        if self.module.td_view(func_id) is not TdTdiState.UNLOCKED or \
                self.module.tdis[func_id].fsm.state.name == "ERROR":
            self.loop(HostTdiLeaf.TDH_TDI_STOP, self.link.spdm_id, func_id, self.rsp, self.req)
        self.ok(HostTdiLeaf.TDH_TDI_UNBIND, self.link.spdm_id, func_id)
        self.link.bound.pop(func_id, None)

    # -- the TD's TDCM VMCALLs, as KVM + pci_tsm_guest_req() would serve them ----------------------
    def serve_vmcall(self) -> TdcmOperation | None:
        """TDH.VP.ENTER; if the TD made a TDCM VMCALL, serve it into its shared buffer."""
        out = self.seamcall(SeamcallLeaf.TDH_VP_ENTER, self.td)
        if out[0] != EXIT_REASON_TDCALL:
            return None
        r11, device, gpa, size = out[6], out[7], out[8], out[9]
        if r11 != TDG_VP_VMCALL_TDCM:
            return None
        try:   # the TD's buffer is untrusted: too small or unmapped -> not served
            if not TDCM_HEADER_SIZE <= size <= MAX_TDCM_BUFFER:
                raise DecodeError(f"TDCM buffer of {size} bytes")
            req = TdvmcallTdcm.unpack(self.mem.read(gpa, size), exact=False)
        except (DecodeError, GuestMemoryError) as exc:
            emit("tdx_host.tdcm_refused", gpa=f"{gpa:#x}", size=size, error=str(exc))
            return None
        data = req.data[:req.data_length]
        try:
            op = TdcmOperation(req.operation)
        except ValueError:
            self._tdcm_answer(gpa, size, req, TdcmStatus.ERROR, TdcmError.INVALID_STATE)
            return None
        status, error, payload = self._tdcm(op, device, data)
        self._tdcm_answer(gpa, size, req, status, error, payload)
        emit("tdx_host.tdcm", operation=op.name, status=TdcmStatus(status).name,
             error=TdcmError(error).name, data_length=len(payload))
        return op

    def _tdcm_answer(self, gpa: int, size: int, req: TdvmcallTdcm, status: TdcmStatus,
                     error: TdcmError, payload: bytes = b"") -> None:
        if TDCM_HEADER_SIZE + len(payload) > size:
            status, error, payload = TdcmStatus.ERROR, TdcmError.INVALID_STATE, b""
        self.mem.write(gpa, req.replace(version=model.TDCM_VERSION, status=status, error=error,
                                        data_length=len(payload), data=payload).pack())

    def _tdcm(self, op: TdcmOperation, device: int, data: bytes
              ) -> tuple[TdcmStatus, TdcmError, bytes]:
        done = TdcmStatus.COMPLETED, TdcmError.NONE
        try:
            if op is TdcmOperation.CHECK_TEEIO_SUPP:
                supported = device == self.tdi and self.link.spdm_id != 0
                return (*done, struct.pack("<I", int(supported)))
            if op is TdcmOperation.GET_TDI_STATE:
                if self.module.td_view(device) is None:
                    return TdcmStatus.ERROR, TdcmError.INVALID_STATE, b""
                # [MODEL] TDH.TDI.STATE: the module asks the device, then answers
                view = self.loop(HostTdiLeaf.TDH_TDI_STATE, self.link.spdm_id, device,
                                 self.rsp, self.req)[1]
                return (*done, struct.pack("<I", view))
            if op is TdcmOperation.BIND:
                if device not in self.link.bound:
                    if not self.link.spdm_id:
                        return TdcmStatus.ERROR, TdcmError.INVALID_STATE, b""
                    self.bind(device)
                return (*done, b"")
            if device not in self.link.bound:
                return TdcmStatus.ERROR, TdcmError.INVALID_STATE, b""
            if op is TdcmOperation.GET_DEV_INFO:
                return (*done, self.link.dev_info)
            if op is TdcmOperation.GET_TDI_REPORT:
                # [MODEL] TDH.TDI.REPORT: read from the device again, not a copy
                n = self.loop(HostTdiLeaf.TDH_TDI_REPORT, self.link.spdm_id, device,
                              self.rsp, self.req, hpa_array(self.out_root, 4))[1]
                return (*done, self.mem.read(self.out, n))
            if op is TdcmOperation.START_TDI:
                self.start(device)
                return (*done, b"")
            self.unbind(device)                         # UNBIND
            return (*done, b"")
        except TdxError as exc:
            status = exc.status or 0
            if status >> 32 == model.TDX_DEVICE_ERROR >> 32:
                kind: dict[int, TdcmError] = {
                    model.DeviceErrorKind.SPDM: TdcmError.SPDM_MESSAGE,
                    model.DeviceErrorKind.IDE_KM: TdcmError.IDE_KM_MESSAGE,
                    model.DeviceErrorKind.TDISP: TdcmError.TDISP_MESSAGE}
                return TdcmStatus.ERROR, kind.get(status & 0xFF, TdcmError.TDXIO_DEVICE), b""
            if status >> 32 == model.TDX_OBJECT_STATE_INCORRECT >> 32:
                return TdcmStatus.ERROR, TdcmError.INVALID_STATE, b""
            return TdcmStatus.ERROR, TdcmError.TDX_MODULE, b""

    # -- P-SEAMLDR and the TD-preserving update ---------------------------------------------------
    def seamldr_info(self) -> SeamldrInfo:
        buf = self.mem.alloc(SEAMLDR_INFO_SIZE, SEAMLDR_INFO_SIZE)
        out = self.seamcall(SeamldrLeaf.SEAMLDR_INFO, buf)
        if out[0] != SeamldrStatus.SEAMLDR_SUCCESS:
            raise TdxError(f"SEAMLDR.INFO -> {status_name(out[0])}", out[0])
        return SeamldrInfo.unpack(self.mem.read(buf, SEAMLDR_INFO_SIZE))

    def module_version(self) -> tuple[int, int, int]:
        def rd(f: SysMetadataField) -> int:
            return self.ok(SeamcallLeaf.TDH_SYS_RD, 0, f)[3]
        return (rd(SysMetadataField.MAJOR_VERSION), rd(SysMetadataField.MINOR_VERSION),
                rd(SysMetadataField.UPDATE_VERSION))

    def install(self, image: bytes) -> None:
        """seamldr_install_module(): the kernel's image checks, then stop_machine's steps.
        ImageError: refused by the kernel (-EINVAL); TdxError: by a SEAMCALL."""
        pieces = parse_image(image)
        sig_pages = [self.mem.alloc() for _ in range(pieces.header.sigstruct_nr_pages)]
        mod_pages = [self.mem.alloc() for _ in range(pieces.header.module_nr_pages)]
        for page, i in zip(sig_pages, range(len(sig_pages)), strict=True):
            self.mem.write(page, pieces.sigstruct[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
        for page, i in zip(mod_pages, range(len(mod_pages)), strict=True):
            self.mem.write(page, pieces.module[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
        params = SeamldrParams(version=0, scenario=SeamldrScenario.UPDATE,
                               sigstruct_pa=sig_pages[0] if sig_pages else 0,
                               num_module_pages=len(mod_pages),
                               mod_pages_pa_list=SeamldrParams.page_list(mod_pages))
        params_pa = self.mem.alloc()
        self.mem.write(params_pa, params.pack())
        self.ok(SeamcallLeaf.TDH_SYS_SHUTDOWN, 0)
        for _cpu in range(self.cpus):
            out = self.seamcall(SeamldrLeaf.SEAMLDR_INSTALL, params_pa)
            if out[0] != SeamldrStatus.SEAMLDR_SUCCESS:
                # [MODEL] the old module resumes from its handoff data
                self.ok(SeamcallLeaf.TDH_SYS_UPDATE)
                raise TdxError(f"SEAMLDR.INSTALL -> {status_name(out[0])}", out[0])
        for _cpu in range(self.cpus):
            self.ok(SeamcallLeaf.TDH_SYS_LP_INIT)
        self.ok(SeamcallLeaf.TDH_SYS_UPDATE)


class TdxTd:
    """The TD's kernel: TDCM through TDG.VP.VMCALL, TDG.TDI.*, TDG.MMIO/DMAR.ACCEPT."""

    def __init__(self, host: TdxHost, func_id: int | None = None,
                 buffer_pages: int = 20) -> None:
        self.host, self.module, self.mem = host, host.module, host.mem
        self.func_id = host.tdi if func_id is None else func_id
        self.size = buffer_pages * PAGE_SIZE
        self.buffer = self.mem.alloc(self.size)
        self.hash_page = self.mem.alloc()
        self.bind_session = 0
        self.report = b""
        self.dev_info = b""
        self.vmm: Callable[[], object] = host.serve_vmcall

    def tdcall(self, leaf: TdcallLeaf, *args: int) -> tuple[int, ...]:
        return self.module.call(FirmwareCall(CallClass.GUEST, int(leaf), tuple(args)), self.mem)

    def tdcall_ok(self, leaf: TdcallLeaf, *args: int) -> tuple[int, ...]:
        out = self.tdcall(leaf, *args)
        if out[0] != TdxStatus.TDX_SUCCESS:
            raise TdxError(f"{spec_name(leaf)} -> {status_name(out[0])}", out[0])
        return out

    def tdcm(self, op: TdcmOperation, data: bytes = b"") -> bytes:
        """One TDCM request: buffer, TDG.VP.VMCALL<TDCM>, the host serves it, answer."""
        self.mem.write(self.buffer, TdvmcallTdcm(operation=op, version=model.TDCM_VERSION,
                                                 status=TdcmStatus.WAIT, data_length=len(data),
                                                 data=data).pack())
        out = self.tdcall(TdcallLeaf.TDG_VP_VMCALL, 0xFC00, 0, 0, 0, 0, TDG_VP_VMCALL_TDCM,
                          self.func_id, self.buffer, self.size, 0)
        if out[0] != TdxStatus.TDX_SUCCESS or out[5] != VmcallStatus.TDG_VP_VMCALL_SUCCESS:
            raise TdxError(f"TDG.VP.VMCALL<TDCM {op.name}> -> R10 {out[5]:#x}")
        self.vmm()   # the VCPU exits; the VMM serves the request
        head = TdvmcallTdcm.unpack(self.mem.read(self.buffer, TDCM_HEADER_SIZE))
        if head.status != TdcmStatus.COMPLETED:
            raise TdxError(f"TDCM {op.name}: status {TdcmStatus(head.status).name}, error "
                           f"{TdcmError(head.error).name}")
        return self.mem.read(self.buffer + TDCM_HEADER_SIZE, head.data_length)

    def rd(self, field_id: int) -> int:
        return self.tdcall_ok(TdcallLeaf.TDG_TDI_RD, self.func_id, field_id, self.hash_page)[1]

    def rd_hash(self, field_id: int) -> bytes:
        n = self.rd(field_id)
        return self.mem.read(self.hash_page, n)

    def state(self) -> TdTdiState:
        return TdTdiState(self.rd(TdiRdField.TDISP_STATE))

    def lock(self, root: Any = None) -> None:
        """[ISTG] lock: CHECK_TEEIO_SUPP, BIND, bind session, report + dev info, checks."""
        if struct.unpack("<I", self.tdcm(TdcmOperation.CHECK_TEEIO_SUPP)[:4])[0] != 1:
            raise TdxError("TDCM CHECK_TEEIO_SUPP: the device is not TEE-IO capable")
        self.tdcm(TdcmOperation.BIND)
        self.bind_session = self.rd(TdiRdField.BIND_SESSION_ID)
        self.report = self.tdcm(TdcmOperation.GET_TDI_REPORT)
        self.dev_info = self.tdcm(TdcmOperation.GET_DEV_INFO)
        if self.state() is not TdTdiState.LOCKED:
            raise TdxError(f"TDI {self.state().name} after BIND, expected LOCKED")
        check_evidence(self.report, self.dev_info, self.rd_hash(TdiRdModelField.REPORT_HASH),
                       self.rd_hash(TdiRdModelField.DEVICE_INFO_HASH), root)
        if self.rd(TdiRdField.BIND_SESSION_ID) != self.bind_session:
            raise TdxError("bind session changed while the evidence was read")

    def accept(self) -> None:
        """[ISTG] accept: MMIO ranges, DMA, TDG.TDI.START, TDCM START_TDI -> RUN."""
        ranges = parse_report(self.report).mmio_range
        for index, r in enumerate(ranges):
            gpa = r.first_page << model.REPORT_PAGE_SHIFT      # BARs 1:1 here
            self.tdcall_ok(TdcallLeaf.TDG_MMIO_ACCEPT, gpa, index, self.func_id,
                           r.number_of_pages)
        self.tdcall_ok(TdcallLeaf.TDG_DMAR_ACCEPT, self.func_id, 0)
        self.tdcall_ok(TdcallLeaf.TDG_TDI_START, self.func_id, self.bind_session)
        self.tdcm(TdcmOperation.START_TDI)
        if self.state() is not TdTdiState.RUN:
            raise TdxError(f"TDI {self.state().name} after START_TDI, expected RUN")

    def refresh(self, root: Any = None) -> None:
        """The evidence again under the same lock (tvm/refresh): TDCM GET_TDI_STATE (the
        module asks the device), the module's own view (TDG.TDI.RD) still LOCKED or RUN,
        then GET_TDI_REPORT (the module reads it from the device again) and GET_DEV_INFO,
        checked against the module's hashes as at lock."""
        self.tdcm(TdcmOperation.GET_TDI_STATE)     # the host's answer is not trusted
        state = self.state()
        if state not in (TdTdiState.LOCKED, TdTdiState.RUN):
            raise TdxError(f"TDI {state.name} (TDG.TDI.RD), evidence not refreshed")
        report = self.tdcm(TdcmOperation.GET_TDI_REPORT)
        dev_info = self.tdcm(TdcmOperation.GET_DEV_INFO)
        check_evidence(report, dev_info, self.rd_hash(TdiRdModelField.REPORT_HASH),
                       self.rd_hash(TdiRdModelField.DEVICE_INFO_HASH), root)
        self.report, self.dev_info = report, dev_info

    def unlock(self) -> None:
        self.tdcm(TdcmOperation.UNBIND)


def split_dev_info(dev_info: bytes) -> tuple[DevInfoHeader, bytes, bytes, bytes]:
    """([MODEL] dev_info) -> header, certificate chain, VCA, measurements."""
    head = DevInfoHeader.unpack(dev_info[:DevInfoHeader.fixed_size()])
    rest = dev_info[DevInfoHeader.fixed_size():]
    a, b = head.cert_chain_len, head.cert_chain_len + head.vca_len
    if len(rest) != b + head.meas_len:
        raise TdxError("dev_info lengths do not add up")
    return head, rest[:a], rest[a:b], rest[b:]


def check_evidence(report: bytes, dev_info: bytes, report_hash: bytes, info_hash: bytes,
                   root: Any = None) -> None:
    """The TD's checks: what the untrusted host handed over matches the module's hashes;
    the report parses; the chain starts at ``root`` when one is given."""
    if hashlib.new(model.HASH, report).digest() != report_hash:
        raise TdxError("interface report does not match TDG.TDI.RD(REPORT_HASH)")
    if hashlib.new(model.HASH, dev_info).digest() != info_hash:
        raise TdxError("device info does not match TDG.TDI.RD(DEVICE_INFO_HASH)")
    parse_report(report)
    _head, chain, _vca, _meas = split_dev_info(dev_info)
    if root is not None:
        from ..platform import spdm_chain_certificates
        certs = spdm_chain_certificates(chain)
        if certs[0] != root:
            raise TdxError("the device chain does not start at the trusted root")
        for parent, child in zip(certs, certs[1:], strict=False):
            child.verify_directly_issued_by(parent)


def parse_doe_page(page: bytes) -> tuple[DoeHeader, bytes]:
    """A request/response page's DOE object (header + payload), for tests and tools."""
    hdr = DoeHeader.unpack(page[:8])
    return parse_object(page[:hdr.length_dw * 4])


__all__ = ["ImageError", "Link", "TdxError", "TdxHost", "TdxTd", "check_evidence",
           "parse_doe_page", "split_dev_info", "status_name"]
