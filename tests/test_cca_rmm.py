"""The RMM emulator call by call: every PDEV / VDEV / RSI call in every state of the
state machines (firmware-abi.md C.4, C.5, C.6), the status each must answer, the
dev_comm exit on bytes (DSP0274 GET_VERSION is the first object of a connect), the
nonce and digest rules, and the REC host-call model.

The device behind the RMM is the project's own, in process, reached through its DOE
mailbox registers; the expected statuses come from the tables in the reference
document (and, where it is silent, from docs/platform-cca.md "Modeled"), written out
here.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from tests.cca_support import Bench, bench
from vfiouser_tdisp.firmware import CallClass, FirmwareCall
from vfiouser_tdisp.tsm.cca import abi
from vfiouser_tdisp.tsm.cca.abi import RmiFid as F
from vfiouser_tdisp.tsm.cca.abi import RmiPdevState as PS
from vfiouser_tdisp.tsm.cca.abi import RmiStatus as RS
from vfiouser_tdisp.tsm.cca.abi import RmiVdevState as VS
from vfiouser_tdisp.tsm.cca.abi import RsiFid
from vfiouser_tdisp.tsm.cca.abi import RsiStatus as SS
from vfiouser_tdisp.tsm.platform import config_accessors

VDEV_ID = 0x10


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cca-identity")


# -- bringing objects into each state ------------------------------------------------------

def pdev_in(b: Bench, state: PS) -> int:
    h = b.host
    h.pdev_create()
    if state is PS.NEW:
        return h.pdev
    if state is PS.ERROR:
        comm_once(b, F.RMI_PDEV_COMMUNICATE, (h.pdev,))             # GET_VERSION out
        comm_once(b, F.RMI_PDEV_COMMUNICATE, (h.pdev,), status=2)   # transport failed
        return h.pdev
    h.pdev_identity()
    if state is PS.NEEDS_KEY:
        return h.pdev
    h.pdev_set_pubkey()
    if state is PS.HAS_KEY:
        return h.pdev
    h.pdev_session()
    if state is PS.READY:
        return h.pdev
    assert state is PS.STOPPED
    h.rmi_ok(F.RMI_PDEV_STOP, h.pdev)
    h._pdev_comm(h.pdev)
    return h.pdev


def vdev_in(b: Bench, state: VS) -> int:
    h = b.host
    h.connect()
    h.ensure_realm()
    if state is VS.NEW:
        addr = h._delegated()
        h.rmi_ok(F.RMI_VDEV_CREATE, h.rd, h.pdev, addr,
                 h._params(abi.RmiVdevParams(vdev_id=VDEV_ID, tdi_id=0).pack()))
        from vfiouser_tdisp.tsm.cca.host import HostVdev
        h.vdevs[VDEV_ID] = HostVdev(VDEV_ID, addr)
        return addr
    v = h.bind(VDEV_ID, lock=False)
    if state is VS.UNLOCKED:
        return v.addr
    if state is VS.ERROR:
        # PCIe r7.0 §11 LOCK_INTERFACE_REQUEST: a TDI whose memory decoding is off is
        # refused (INVALID_DEVICE_CONFIGURATION); the RMM's VDEV goes to ERROR
        read32, write32 = config_accessors(b.device.dsm)
        write32(0x04, read32(0x04) & ~0x2)
        h.rmi_ok(F.RMI_VDEV_LOCK, h.rd, h.pdev, v.addr)
        h._vdev_comm(v)
        write32(0x04, read32(0x04) | 0x2)
        assert h.vdev_state(v.addr) is VS.ERROR
        return v.addr
    h.vdev_op(v, F.RMI_VDEV_LOCK, VS.LOCKED)
    if state is VS.LOCKED:
        return v.addr
    h.vdev_op(v, F.RMI_VDEV_START, VS.STARTED)
    assert state is VS.STARTED
    return v.addr


def comm_once(b: Bench, fid: F, args: tuple[int, ...], status: int = 0,
              response: bytes = b"") -> abi.RmiDevCommExit:
    """One COMMUNICATE with the enter fields given; returns the exit."""
    h = b.host
    if response:
        h.mem.write(h.resp, response)
    h.mem.write(h.comm, abi.RmiDevCommEnter(status=status, req_addr=h.req, resp_addr=h.resp,
                                            resp_len=len(response)).pack())
    assert h.rmi(fid, *args, h.comm)[0] == RS.RMI_SUCCESS
    return abi.RmiDevCommExit.unpack(h.mem.read(h.comm + 0x800, abi.RmiDevCommExit.fixed_size()))


def pubkey_page(b: Bench) -> int:
    """The leaf key once the chain is cached; before that, a P-384 key of zeros."""
    from vfiouser_tdisp.tsm.cca.host import leaf_key_params
    key, _ = leaf_key_params(b.host.pdev_cache[abi.RmiDevCommObject.CERTIFICATE]) \
        if abi.RmiDevCommObject.CERTIFICATE in b.host.pdev_cache else (None, None)
    if key is None:
        key = abi.RmiPublicKeyParams(key=bytes(1024), metadata=bytes(1024), key_len=97,
                                     algo=2)
    return b.host._params(key.pack())


# -- PDEV: every call in every state ----------------------------------------------------------

S_, DEV, BUSY, INP = RS.RMI_SUCCESS, RS.RMI_ERROR_DEVICE, RS.RMI_BUSY, RS.RMI_ERROR_INPUT
# state -> call -> (status, state afterwards or None when unchanged)
PDEV_TABLE: dict[PS, dict[str, RS]] = {
    #            GET  COMM  SET_KEY STOP  DESTROY ABORT STREAM  VDEV_CREATE
    PS.NEW:       dict(get=S_, comm=S_, set_pubkey=DEV, stop=BUSY, destroy=DEV, abort=S_,
                       stream=BUSY, vdev_create=BUSY),
    PS.NEEDS_KEY: dict(get=S_, comm=DEV, set_pubkey=S_, stop=S_, destroy=DEV, abort=S_,
                       stream=DEV, vdev_create=DEV),
    PS.HAS_KEY:   dict(get=S_, comm=S_, set_pubkey=DEV, stop=BUSY, destroy=DEV, abort=S_,
                       stream=BUSY, vdev_create=BUSY),
    PS.READY:     dict(get=S_, comm=DEV, set_pubkey=DEV, stop=S_, destroy=DEV, abort=S_,
                       stream=S_, vdev_create=DEV),    # no IDE stream connected yet
    PS.STOPPED:   dict(get=S_, comm=DEV, set_pubkey=DEV, stop=DEV, destroy=S_, abort=S_,
                       stream=DEV, vdev_create=DEV),
    PS.ERROR:     dict(get=S_, comm=DEV, set_pubkey=DEV, stop=S_, destroy=DEV, abort=S_,
                       stream=DEV, vdev_create=DEV),
}
PDEV_AFTER = {  # state the PDEV is in once the call (and its COMMUNICATE loop) is done
    ("stop", PS.NEEDS_KEY): PS.STOPPED, ("stop", PS.READY): PS.STOPPED,
    ("stop", PS.ERROR): PS.STOPPED, ("set_pubkey", PS.NEEDS_KEY): PS.HAS_KEY,
    ("abort", PS.NEW): PS.ERROR, ("abort", PS.HAS_KEY): PS.ERROR,
    ("comm", PS.NEW): PS.NEW, ("comm", PS.HAS_KEY): PS.HAS_KEY,
}


def pdev_call(b: Bench, pdev: int, call: str) -> int:
    h = b.host
    if call == "get":
        out = h.rmi(F.RMI_PDEV_GET_STATE, pdev)
        return out[0]
    if call == "comm":
        h.mem.write(h.comm, abi.RmiDevCommEnter(req_addr=h.req, resp_addr=h.resp).pack())
        return h.rmi(F.RMI_PDEV_COMMUNICATE, pdev, h.comm)[0]
    if call == "set_pubkey":
        return h.rmi(F.RMI_PDEV_SET_PUBKEY, pdev, pubkey_page(b))[0]
    if call == "stop":
        return h.rmi(F.RMI_PDEV_STOP, pdev)[0]
    if call == "destroy":
        return h.rmi(F.RMI_PDEV_DESTROY, pdev)[0]
    if call == "abort":
        return h.rmi(F.RMI_PDEV_ABORT, pdev)[0]
    if call == "stream":
        if not h.rp:
            h.rp_create()
        params = abi.RmiPdevStreamParams(stream_type=abi.RmiStreamType.NCOH, pdev_1=pdev,
                                         pdev_2=h.rp, ide_sid=1)
        return h.rmi(F.RMI_PDEV_STREAM_CONNECT, h._params(params.pack()))[0]
    assert call == "vdev_create"
    h.ensure_realm()
    return h.rmi(F.RMI_VDEV_CREATE, h.rd, pdev, h._delegated(),
                 h._params(abi.RmiVdevParams(vdev_id=VDEV_ID, tdi_id=0).pack()))[0]


@pytest.mark.parametrize("state", list(PDEV_TABLE))
@pytest.mark.parametrize("call", list(PDEV_TABLE[PS.NEW]))
def test_pdev_call_in_state(cache: Path, state: PS, call: str) -> None:
    b = bench(cache)
    pdev = pdev_in(b, state)
    assert b.host.pdev_state(pdev) is state
    expected = PDEV_TABLE[state][call]
    assert RS(pdev_call(b, pdev, call)) is expected, (state.name, call)
    if call == "destroy" and expected is S_:
        assert b.host.rmi(F.RMI_PDEV_GET_STATE, pdev)[0] == RS.RMI_ERROR_INPUT  # gone
        return
    if call == "comm" and expected is S_:
        return  # one step of an operation in flight: the loop finishes elsewhere
    if call == "stop" and expected is S_:
        b.host._pdev_comm(pdev)
    want = PDEV_AFTER.get((call, state), state) if expected is S_ else state
    assert b.host.pdev_state(pdev) is want


def test_pdev_get_state_reports_value(cache: Path) -> None:
    b = bench(cache)
    pdev = pdev_in(b, PS.NEEDS_KEY)
    assert b.host.rmi(F.RMI_PDEV_GET_STATE, pdev) == (0, 1)
    assert b.host.rmi(F.RMI_PDEV_GET_STATE, pdev + 0x1000)[0] == RS.RMI_ERROR_INPUT


def test_pdev_create_inputs(cache: Path) -> None:
    b = bench(cache)
    h = b.host
    good = dict(flags=0b011, pdev_id=0, routing_id=0, id_index=0, rid_base=0, rid_top=8,
                hash_algo=0)

    def create(granule: int | None = None, **changes: int) -> int:
        page = h._params(abi.RmiPdevParams(**{**good, **changes}).pack())
        return h.rmi(F.RMI_PDEV_CREATE, granule if granule is not None else h._delegated(),
                     page)[0]
    assert create(granule=h.mem.alloc()) == INP             # not delegated
    assert create(granule=h._delegated() + 8) == INP        # not granule aligned
    assert create(hash_algo=2) == INP                       # SHA-384: not offered
    assert create(flags=0b001) == INP                       # SPDM endpoint with category RP
    assert create(flags=0b010) == INP                       # endpoint without SPDM
    assert create(flags=0b111) == INP                       # category 3 is reserved
    assert create(rid_base=8, rid_top=8) == INP
    assert create(id_index=8) == INP                        # 8 certificate slots
    assert create(routing_id=0x10000) == INP
    pdev = h._delegated()
    assert h.rmi(F.RMI_PDEV_CREATE, pdev, pdev)[0] == INP    # params in a delegated granule
    assert create() == RS.RMI_INCOMPLETE                    # an off-chip EP needs memory (SRO)
    assert create(flags=0b000, rid_top=0x100) == S_         # a root port does not


def test_set_pubkey_must_be_the_chain_leaf(cache: Path) -> None:
    b = bench(cache)
    h = b.host
    pdev = pdev_in(b, PS.NEEDS_KEY)
    from vfiouser_tdisp.tsm.cca.host import leaf_key_params
    key, _ = leaf_key_params(h.pdev_cache[abi.RmiDevCommObject.CERTIFICATE])
    wrong = bytearray(key.key)
    wrong[5] ^= 1

    def set_key(params: abi.RmiPublicKeyParams) -> int:
        return h.rmi(F.RMI_PDEV_SET_PUBKEY, pdev, h._params(params.pack()))[0]
    assert set_key(key.replace(key=bytes(wrong))) == INP
    assert set_key(key.replace(algo=1 if key.algo == 2 else 2)) == INP   # other curve
    assert set_key(key.replace(algo=3)) == INP                          # no such algorithm
    assert set_key(key.replace(key_len=0)) == INP
    assert h.pdev_state(pdev) is PS.NEEDS_KEY
    assert h.rmi(F.RMI_PDEV_SET_PUBKEY, pdev, h._params(key.pack()))[0] == S_
    assert h.pdev_state(pdev) is PS.HAS_KEY


# -- COMMUNICATE on bytes -------------------------------------------------------------------

def test_first_exchange_is_get_version_and_waits(cache: Path) -> None:
    """DSP0274 §10.3: GET_VERSION is SPDMVersion 0x10, code 0x84, Param1/2 = 0."""
    b = bench(cache)
    h = b.host
    h.pdev_create()
    ex = comm_once(b, F.RMI_PDEV_COMMUNICATE, (h.pdev,))
    assert ex.flags == 0x4 | 0x8                       # REQ_SEND | RSP_WAIT
    assert ex.protocol == 0 and ex.req_len == 4        # plain SPDM
    assert h.mem.read(h.req, 4) == bytes([0x10, 0x84, 0x00, 0x00])
    assert ex.timeout > 0
    # status NONE while the response is outstanding: keep waiting, send nothing new
    ex = comm_once(b, F.RMI_PDEV_COMMUNICATE, (h.pdev,))
    assert ex.flags == 0x8 and ex.req_len == 0
    # VERSION (§10.3): 0x10 0x04, reserved, count 1, entry 0x1200 -> SPDM 1.2
    ex = comm_once(b, F.RMI_PDEV_COMMUNICATE, (h.pdev,), status=1,
                   response=bytes([0x10, 0x04, 0, 0, 0, 1, 0x00, 0x12]))
    assert ex.flags == 0xC and ex.protocol == 0
    req = h.mem.read(h.req, ex.req_len)
    assert req[:2] == bytes([0x12, 0xE1])              # GET_CAPABILITIES at version 1.2
    assert h.pdev_state(h.pdev) is PS.NEW


def test_device_error_moves_pdev_to_error(cache: Path) -> None:
    b = bench(cache)
    h = b.host
    h.pdev_create()
    comm_once(b, F.RMI_PDEV_COMMUNICATE, (h.pdev,))
    # SPDM ERROR (code 0x7F), Unspecified (0x05): the RMM gives up on the connection
    ex = comm_once(b, F.RMI_PDEV_COMMUNICATE, (h.pdev,), status=1,
                   response=bytes([0x10, 0x7F, 0x05, 0x00]))
    assert ex.flags == 0
    assert h.pdev_state(h.pdev) is PS.ERROR
    assert h.rmi(F.RMI_PDEV_STOP, h.pdev)[0] == S_
    h._pdev_comm(h.pdev)
    assert h.pdev_state(h.pdev) is PS.STOPPED


def test_communicate_inputs(cache: Path) -> None:
    b = bench(cache)
    h = b.host
    h.pdev_create()

    def comm(data: int, **enter: int) -> int:
        fields = dict(req_addr=h.req, resp_addr=h.resp)
        fields.update(enter)
        h.mem.write(h.comm, abi.RmiDevCommEnter(**fields).pack())
        return h.rmi(F.RMI_PDEV_COMMUNICATE, h.pdev, data)[0]
    assert comm(h.comm + 8) == INP                       # dev_comm_data not aligned
    assert comm(h.comm, req_addr=h.req + 4) == INP       # buffer not aligned
    assert comm(h.comm, resp_addr=h.req) == INP          # request and response overlap
    assert comm(h.comm, status=3) == INP                 # no such enter status
    assert comm(h.comm, resp_len=1 << 20) == INP
    assert comm(h.pdev) == INP                           # data in a delegated granule
    assert h.rmi(F.RMI_PDEV_COMMUNICATE, h.pdev + 0x10000, h.comm)[0] == INP  # no PDEV
    assert comm(h.comm) == S_


def test_cache_pieces_and_objects(cache: Path) -> None:
    """VCA = the GET_VERSION..ALGORITHMS exchange; CERTIFICATE = the SPDM chain
    (DSP0274 §10.7.1: Length u16, reserved u16, RootHash, certificates)."""
    b = bench(cache)
    h = b.host
    h.pdev_create()
    h.pdev_identity()
    vca = h.pdev_cache[abi.RmiDevCommObject.VCA]
    assert vca[:4] == bytes([0x10, 0x84, 0, 0])         # GET_VERSION
    assert vca[5] == 0x04                                # VERSION
    assert bytes([0xE1]) in vca and bytes([0x63]) in vca  # GET_CAPABILITIES ... ALGORITHMS
    cert = h.pdev_cache[abi.RmiDevCommObject.CERTIFICATE]
    assert struct.unpack_from("<H", cert)[0] == len(cert)
    assert cert[4 + 48] == 0x30 or cert[4 + 32] == 0x30  # RootHash, then a DER SEQUENCE


# -- VDEV: every call in every state ----------------------------------------------------------

REC = RS.RMI_ERROR_REC
VDEV_TABLE: dict[VS, dict[str, RS]] = {
    VS.NEW:      dict(get=S_, comm=S_, lock=BUSY, report=BUSY, meas=BUSY, start=BUSY,
                      unlock=BUSY, destroy=S_, abort=S_, complete=REC),
    VS.UNLOCKED: dict(get=S_, comm=DEV, lock=S_, report=DEV, meas=DEV, start=DEV,
                      unlock=DEV, destroy=S_, abort=S_, complete=REC),
    VS.LOCKED:   dict(get=S_, comm=DEV, lock=DEV, report=S_, meas=S_, start=S_,
                      unlock=S_, destroy=DEV, abort=S_, complete=REC),
    VS.STARTED:  dict(get=S_, comm=DEV, lock=DEV, report=S_, meas=S_, start=DEV,
                      unlock=S_, destroy=DEV, abort=S_, complete=REC),
    VS.ERROR:    dict(get=S_, comm=DEV, lock=DEV, report=DEV, meas=DEV, start=DEV,
                      unlock=S_, destroy=DEV, abort=S_, complete=REC),
}
VDEV_AFTER = {
    ("lock", VS.UNLOCKED): VS.LOCKED, ("start", VS.LOCKED): VS.STARTED,
    ("unlock", VS.LOCKED): VS.UNLOCKED, ("unlock", VS.STARTED): VS.UNLOCKED,
    ("unlock", VS.ERROR): VS.UNLOCKED, ("abort", VS.NEW): VS.ERROR,
    ("comm", VS.NEW): VS.NEW,
}
VDEV_FIDS = {"lock": F.RMI_VDEV_LOCK, "report": F.RMI_VDEV_GET_INTERFACE_REPORT,
             "meas": F.RMI_VDEV_GET_MEASUREMENTS, "start": F.RMI_VDEV_START,
             "unlock": F.RMI_VDEV_UNLOCK, "destroy": F.RMI_VDEV_DESTROY}


def vdev_call(b: Bench, vdev: int, call: str) -> int:
    h = b.host
    if call == "get":
        return h.rmi(F.RMI_VDEV_GET_STATE, vdev)[0]
    if call == "comm":
        h.mem.write(h.comm, abi.RmiDevCommEnter(req_addr=h.req, resp_addr=h.resp).pack())
        return h.rmi(F.RMI_VDEV_COMMUNICATE, h.rd, h.pdev, vdev, h.comm)[0]
    if call == "abort":
        return h.rmi(F.RMI_VDEV_ABORT, vdev)[0]
    if call == "complete":
        return h.rmi(F.RMI_VDEV_COMPLETE, h.rec, vdev)[0]
    extra = (h._params(abi.RmiVdevMeasureParams().pack()),) if call == "meas" else ()
    return h.rmi(VDEV_FIDS[call], h.rd, h.pdev, vdev, *extra)[0]


@pytest.mark.parametrize("state", list(VDEV_TABLE))
@pytest.mark.parametrize("call", list(VDEV_TABLE[VS.NEW]))
def test_vdev_call_in_state(cache: Path, state: VS, call: str) -> None:
    b = bench(cache)
    vdev = vdev_in(b, state)
    h = b.host
    expected = VDEV_TABLE[state][call]
    assert RS(vdev_call(b, vdev, call)) is expected, (state.name, call)
    if call == "destroy" and expected is S_:
        assert h.rmi(F.RMI_VDEV_GET_STATE, vdev)[0] == RS.RMI_ERROR_INPUT
        assert h.rmi(F.RMI_GRANULE_UNDELEGATE, vdev)[0] == S_    # the granule is free again
        return
    if call == "comm":
        return
    if expected is S_ and call in ("lock", "report", "meas", "start", "unlock"):
        h._vdev_comm(h.vdevs[VDEV_ID])
    want = VDEV_AFTER.get((call, state), state) if expected is S_ else state
    assert h.vdev_state(vdev) is want


def test_vdev_calls_check_their_objects(cache: Path) -> None:
    b = bench(cache)
    h = b.host
    vdev = vdev_in(b, VS.UNLOCKED)
    other = h._delegated()
    assert h.rmi(F.RMI_REALM_CREATE, other, h._params(b""))[0] == S_
    for fid in (F.RMI_VDEV_LOCK, F.RMI_VDEV_START, F.RMI_VDEV_UNLOCK, F.RMI_VDEV_DESTROY):
        assert h.rmi(fid, other, h.pdev, vdev)[0] == INP       # another realm
        assert h.rmi(fid, h.rd, h.rp, vdev)[0] == INP          # another PDEV
        assert h.rmi(fid, h.rd, h.pdev, vdev + 0x1000)[0] == INP
    assert h.rmi(F.RMI_VDEV_GET_STATE, vdev)[1] == VS.UNLOCKED


def test_vdev_create_inputs(cache: Path) -> None:
    b = bench(cache)
    h = b.host
    h.connect()
    h.ensure_realm()

    def create(ranges: bytes = b"", **changes: int) -> int:
        fields = dict(vdev_id=VDEV_ID, tdi_id=0)
        fields.update(changes)
        page = h._params(abi.RmiVdevParams(**fields).pack(), {0x200: ranges})
        return h.rmi(F.RMI_VDEV_CREATE, h.rd, h.pdev, h._delegated(), page)[0]
    assert create(flags=1) == INP                       # flags must be 0
    assert create(tdi_id=8) == INP                      # outside [rid_base, rid_top)
    assert create(num_addr_range=9) == INP              # at most 8 ranges
    assert create(abi.RmiAddressRange(base=0x1000, top=0x1000).pack(), num_addr_range=1) == INP
    assert create(abi.RmiAddressRange(base=0x1800, top=0x3000).pack(), num_addr_range=1) == INP
    assert create() == S_
    assert create() == INP                              # vdev_id taken in this realm


def test_vdev_create_needs_connected_stream(cache: Path) -> None:
    b = bench(cache)
    h = b.host
    pdev_in(b, PS.READY)
    h.rp_create()
    params = abi.RmiPdevStreamParams(stream_type=abi.RmiStreamType.NCOH, pdev_1=h.pdev,
                                     pdev_2=h.rp, ide_sid=1)
    handle = h.rmi_ok(F.RMI_PDEV_STREAM_CONNECT, h._params(params.pack()))[1]
    h.ensure_realm()
    assert pdev_call(b, h.pdev, "vdev_create") == BUSY          # EP busy keying the stream
    h._pdev_comm(h.pdev, peer=h.rp)
    assert pdev_call(b, h.pdev, "vdev_create") == DEV           # keyed, not completed
    assert h.rmi(F.RMI_PDEV_STREAM_COMPLETE, handle)[0] == S_
    assert h.rmi(F.RMI_PDEV_STREAM_COMPLETE, handle)[0] == DEV  # only once
    assert pdev_call(b, h.pdev, "vdev_create") == S_
    # the stream cannot go while a VDEV uses it; the PDEV cannot stop with a stream
    assert h.rmi(F.RMI_PDEV_STREAM_DISCONNECT, handle)[0] in (DEV, BUSY)
    assert h.rmi(F.RMI_PDEV_STOP, h.pdev)[0] in (DEV, BUSY)


def test_stream_connect_inputs(cache: Path) -> None:
    b = bench(cache)
    h = b.host
    pdev_in(b, PS.READY)
    h.rp_create()

    def connect(**changes: int) -> int:
        fields = dict(stream_type=1, pdev_1=h.pdev, pdev_2=h.rp, ide_sid=1)
        fields.update(changes)
        return h.rmi(F.RMI_PDEV_STREAM_CONNECT,
                      h._params(abi.RmiPdevStreamParams(**fields).pack()))[0]
    assert connect(stream_type=0) == RS.RMI_ERROR_NOT_SUPPORTED    # NON_TEE
    assert connect(stream_type=2) == RS.RMI_ERROR_NOT_SUPPORTED    # COH
    assert connect(pdev_1=h.rp, pdev_2=h.pdev) == INP             # ends swapped
    assert connect(ide_sid=256) == INP
    assert connect(num_addr_range=17) == INP
    assert connect(flags=1) == INP
    assert h.rmi(F.RMI_PDEV_STREAM_KEY_REFRESH, h.pdev, h.rp, 1)[0] == \
        RS.RMI_ERROR_NOT_SUPPORTED
    assert h.rmi(F.RMI_PDEV_STREAM_KEY_PURGE, 1)[0] == RS.RMI_ERROR_NOT_SUPPORTED
    assert connect() == S_


def test_stream_keys_reach_the_endpoint(cache: Path) -> None:
    """IDE_KM (PCIe r6 §6.33.3): six KEY_PROG then six K_SET_GO on the endpoint."""
    b = bench(cache)
    from vfiouser_tdisp.events import LOG, Recorder
    rec = Recorder()
    unsubscribe = LOG.subscribe(rec)
    try:
        b.host.connect()
    finally:
        unsubscribe()
    flags = [e["flags"] for e in rec.of("rmm.communicate")]
    assert any("STREAM_WAIT" in f for f in flags)
    stream = b.rmm.streams[b.host.stream]
    assert stream.fsm.state.name == "CONNECTED"
    assert stream.keys.ep_programmed and stream.keys.rp_programmed


# -- RSI ---------------------------------------------------------------------------------------

def rsi(b: Bench, fid: RsiFid, *args: int) -> tuple[int, ...]:
    return b.rmm.call(FirmwareCall(CallClass.GUEST, fid, args), b.host.mem)


@pytest.mark.parametrize("state,rsi_state", [
    (VS.NEW, 0), (VS.UNLOCKED, 0), (VS.LOCKED, 1), (VS.STARTED, 2), (VS.ERROR, 3)])
def test_rsi_in_every_vdev_state(cache: Path, state: VS, rsi_state: int) -> None:
    b = bench(cache)
    vdev = vdev_in(b, state)
    v = b.rmm.vdevs[vdev]
    info = b.realm.get_info(VDEV_ID)
    assert info.state == rsi_state
    assert info.format_type == 1 and info.format_version == 0x10000   # TDISP 1.0
    assert info.hash_algo == 0 and info.cert_id == 0
    nonces = (v.lock_nonce, v.meas_nonce, v.report_nonce)
    dma = rsi(b, RsiFid.RSI_VDEV_DMA_ENABLE, VDEV_ID, 0, 0, *nonces)[0]
    assert SS(dma) is (SS.RSI_SUCCESS if state is VS.STARTED else SS.RSI_ERROR_DEVICE)
    assert rsi(b, RsiFid.RSI_VDEV_DMA_DISABLE, VDEV_ID)[0] == SS.RSI_SUCCESS
    base = b.bars[0][0]
    out = rsi(b, RsiFid.RSI_VDEV_VALIDATE_MAPPING, VDEV_ID, base, base + 0x1000, base, 0,
              *nonces)
    # no interface report has been read in any of these states: nothing to validate against
    assert SS(out[0]) is SS.RSI_ERROR_DEVICE


def test_rsi_input_errors(cache: Path) -> None:
    b = bench(cache)
    assert rsi(b, RsiFid.RSI_VDEV_GET_INFO, VDEV_ID, b.realm.info_page)[0] == \
        SS.RSI_ERROR_STATE                                  # no realm, no DA
    vdev_in(b, VS.UNLOCKED)
    page = b.realm.info_page
    assert rsi(b, RsiFid.RSI_VDEV_GET_INFO, VDEV_ID, page + 0x100)[0] == SS.RSI_ERROR_INPUT
    assert rsi(b, RsiFid.RSI_VDEV_GET_INFO, VDEV_ID + 1, page)[0] == SS.RSI_ERROR_INPUT
    assert rsi(b, RsiFid.RSI_VDEV_GET_INFO, VDEV_ID, 0x10)[0] == SS.RSI_ERROR_INPUT
    assert rsi(b, RsiFid.RSI_VDEV_DMA_ENABLE, VDEV_ID + 1, 0, 0, 0, 0, 0)[0] == \
        SS.RSI_ERROR_INPUT
    assert rsi(b, RsiFid.RSI_VDEV_DMA_ENABLE, VDEV_ID, 1, 0, 0, 0, 0)[0] == SS.RSI_ERROR_INPUT
    assert rsi(b, RsiFid.RSI_VDEV_DMA_DISABLE, VDEV_ID + 1)[0] == SS.RSI_ERROR_INPUT
    assert rsi(b, RsiFid.RSI_VDEV_VALIDATE_MAPPING, VDEV_ID, 0x1800, 0x3000, 0, 0, 0, 0, 0)[0] \
        == SS.RSI_ERROR_INPUT
    assert rsi(b, RsiFid.RSI_VDEV_VALIDATE_MAPPING, VDEV_ID, 0x2000, 0x1000, 0, 0, 0, 0, 0)[0] \
        == SS.RSI_ERROR_INPUT
    assert rsi(b, RsiFid.RSI_VDEV_VALIDATE_MAPPING, VDEV_ID, 0x1000, 0x2000, 0, 4, 0, 0, 0)[0] \
        == SS.RSI_ERROR_INPUT                               # flags: only COHERENT, LIMITED_ORDER
    assert rsi(b, RsiFid.RSI_FEATURES, 0) == (0, 1)         # DA
    assert rsi(b, RsiFid.RSI_FEATURES, 1) == (0, 0)
    assert rsi(b, 0xC40001FF)[0] == 0xFFFFFFFFFFFFFFFF       # SMCCC NOT_SUPPORTED
    assert b.host.rmi(0xC40001FF)[0] == 0xFFFFFFFFFFFFFFFF   # type: ignore[arg-type]


def test_nonce_and_digest_rules(cache: Path) -> None:
    b = bench(cache)
    h, realm = b.host, b.realm
    h.connect()
    v = h.bind(VDEV_ID)                        # the newest host locks at bind time
    ev = realm.lock(VDEV_ID)
    info = ev.info
    # every digest is SHA-256 (hash_algo 0) of the object the host hands out, zero-padded
    for obj, digest in ((ev.certificate, info.cert_digest), (ev.vca, info.vca_digest),
                        (ev.report, info.report_digest), (ev.measurements, info.meas_digest)):
        assert digest == hashlib.sha256(obj).digest() + bytes(32)
    assert ev.measurements[1] == 0x60          # MEASUREMENTS (DSP0274 §10.11)
    assert len({info.lock_nonce, info.meas_nonce, info.report_nonce}) == 3
    assert 0 not in (info.lock_nonce, info.meas_nonce, info.report_nonce)
    stale = (info.lock_nonce, info.meas_nonce, info.report_nonce)
    # a new measurement makes a new meas_nonce; the old triple is stale everywhere
    h.measure(v)
    fresh = realm.get_info(VDEV_ID)
    assert fresh.meas_nonce not in (0, info.meas_nonce)
    assert (fresh.lock_nonce, fresh.report_nonce) == (info.lock_nonce, info.report_nonce)
    base = ev.ranges[0][0]
    out = rsi(b, RsiFid.RSI_VDEV_VALIDATE_MAPPING, VDEV_ID, base, base + 0x1000, base, 0,
              *stale)
    assert out[0] == SS.RSI_ERROR_DEVICE
    current = (fresh.lock_nonce, fresh.meas_nonce, fresh.report_nonce)
    out = rsi(b, RsiFid.RSI_VDEV_VALIDATE_MAPPING, VDEV_ID, base, base + 0x1000, base, 0,
              *current)
    assert out == (0, base + 0x1000, 0)       # SUCCESS, next IPA, RSI_ACCEPT
    outside = b.bars[4][0] + b.bars[4][1]
    out = rsi(b, RsiFid.RSI_VDEV_VALIDATE_MAPPING, VDEV_ID, outside, outside + 0x1000,
              outside, 0, *current)
    assert out == (0, outside, 1)             # not in the report: RSI_REJECT
    h.vdev_op(v, F.RMI_VDEV_START, VS.STARTED)
    assert rsi(b, RsiFid.RSI_VDEV_DMA_ENABLE, VDEV_ID, 0, 0, *stale)[0] == SS.RSI_ERROR_DEVICE
    assert rsi(b, RsiFid.RSI_VDEV_DMA_ENABLE, VDEV_ID, 0, 0, *current)[0] == SS.RSI_SUCCESS
    assert b.rmm.vdevs[v.addr].dma.state.name == "ENABLED"
    # a report refresh changes report_nonce only
    h.report(v)
    again = realm.get_info(VDEV_ID)
    assert again.report_nonce not in (0, fresh.report_nonce)
    assert again.meas_nonce == fresh.meas_nonce and again.lock_nonce == fresh.lock_nonce
    # unlock and re-lock: a new lock_nonce, the old evidence digests are gone
    h.vdev_op(v, F.RMI_VDEV_UNLOCK, VS.UNLOCKED)
    assert b.rmm.vdevs[v.addr].dma.state.name == "DISABLED"
    h.vdev_op(v, F.RMI_VDEV_LOCK, VS.LOCKED)
    relocked = realm.get_info(VDEV_ID)
    assert relocked.lock_nonce not in (0, info.lock_nonce)
    assert relocked.report_digest == bytes(64) and relocked.meas_digest == bytes(64)


def test_sha512_digests(cache: Path) -> None:
    b = bench(cache, hash_algo=1)
    b.host.connect()
    b.host.bind(VDEV_ID)
    ev = b.realm.lock(VDEV_ID)
    assert ev.info.hash_algo == 1
    assert ev.info.report_digest == hashlib.sha512(ev.report).digest()
    assert ev.info.cert_digest == hashlib.sha512(ev.certificate).digest()


# -- the host-call model ---------------------------------------------------------------------

def test_host_call_round_trip_on_bytes(cache: Path) -> None:
    b = bench(cache)
    h = b.host
    h.ensure_realm()
    hc = b.realm.hc
    gprs = [abi.RHI_DA_VERSION] + [0] * 30
    h.mem.write(hc, abi.RsiHostCall(imm=0x55, gprs=struct.pack("<31Q", *gprs)).pack())
    assert rsi(b, RsiFid.RSI_HOST_CALL, hc + 0x80)[0] == SS.RSI_ERROR_INPUT   # not aligned
    assert rsi(b, RsiFid.RSI_HOST_CALL, hc) == (SS.RSI_INCOMPLETE,)
    assert rsi(b, RsiFid.RSI_HOST_CALL, hc)[0] == SS.RSI_ERROR_STATE   # one at a time
    # REC_ENTER reports the exit: reason HOST_CALL (5) @0x800, gprs @0xA00, imm @0xE00
    assert h.rmi(F.RMI_REC_ENTER, h.rec, h.run)[0] == S_
    run = h.mem.read(h.run, 0x1000)
    assert struct.unpack_from("<Q", run, 0x800)[0] == 5
    assert struct.unpack_from("<Q", run, 0xA00)[0] == 0xC500004A
    assert struct.unpack_from("<I", run, 0xE00)[0] == 0x55
    # the answer goes in enter.gprs @0x200 and lands in the realm's rsi_host_call
    h.mem.write(h.run + 0x200, struct.pack("<31Q", 0x10000, 7, *([0] * 29)))
    assert h.rmi(F.RMI_REC_ENTER, h.rec, h.run)[0] == S_
    assert struct.unpack_from("<Q", h.mem.read(h.run, 0x1000), 0x800)[0] == 1   # IRQ
    answer = h.mem.read(hc, 256)
    assert struct.unpack_from("<QQ", answer, 8) == (0x10000, 7)
    assert h.rmi(F.RMI_REC_ENTER, h.rec + 0x1000, h.run)[0] == INP
    assert h.rmi(F.RMI_VDEV_COMPLETE, h.rec, h.rec)[0] == INP


def test_granules_and_realms(cache: Path) -> None:
    b = bench(cache)
    h = b.host
    page = h.mem.alloc()
    assert h.rmi(F.RMI_GRANULE_DELEGATE, page + 4)[0] == INP
    assert h.rmi(F.RMI_GRANULE_DELEGATE, page)[0] == S_
    assert h.rmi(F.RMI_GRANULE_DELEGATE, page)[0] == INP
    assert h.rmi(F.RMI_GRANULE_UNDELEGATE, page)[0] == S_
    assert h.rmi(F.RMI_GRANULE_UNDELEGATE, page)[0] == INP
    h.ensure_realm()
    assert h.rmi(F.RMI_GRANULE_UNDELEGATE, h.rd)[0] == INP    # in use as an RD
    assert h.rmi(F.RMI_REALM_DESTROY, h.rd)[0] == RS.RMI_ERROR_REALM   # still has a REC
    assert h.rmi(F.RMI_REC_DESTROY, h.rec)[0] == S_
    assert h.rmi(F.RMI_REALM_DESTROY, h.rd)[0] == S_
    assert h.rmi(F.RMI_VERSION, 1 << 16)[:1] == (S_,)
    assert h.rmi(F.RMI_FEATURES, 2) == (S_, 1)                 # DA


def test_abort_in_flight_and_recover(cache: Path) -> None:
    b = bench(cache)
    h = b.host
    h.connect()
    v = h.bind(VDEV_ID, lock=False)
    h.rmi_ok(F.RMI_VDEV_LOCK, h.rd, h.pdev, v.addr)
    comm_once(b, F.RMI_VDEV_COMMUNICATE, (h.rd, h.pdev, v.addr))    # LOCK request out
    assert h.rmi(F.RMI_PDEV_STOP, h.pdev)[0] == BUSY
    assert h.rmi(F.RMI_VDEV_ABORT, v.addr)[0] == S_
    assert h.vdev_state(v.addr) is VS.ERROR
    # The abandoned LOCK was sealed but never carried: the session's sequence numbers no
    # longer agree (DSP0277), so the device cannot confirm STOP_INTERFACE -- unlocking
    # still withdraws the VDEV, and the host tears down and reconnects.
    from vfiouser_tdisp.events import LOG, Recorder
    rec = Recorder()
    unsubscribe = LOG.subscribe(rec)
    try:
        h.vdev_op(v, F.RMI_VDEV_UNLOCK, VS.UNLOCKED)
    finally:
        unsubscribe()
    unlocked = [e for e in rec.of("rmm.vdev.transition") if e["trigger"] == "unlocked"]
    assert unlocked and unlocked[0]["device_confirmed"] is False
    h.disconnect()
    h.connect()
    v = h.bind(VDEV_ID)
    assert h.vdev_state(v.addr) is VS.LOCKED




def test_report_refresh_exits_on_bytes(cache: Path) -> None:
    """VDEV_GET_INTERFACE_REPORT: secured TDISP requests go out (protocol SECURE_SPDM 1);
    the report comes back as one cached piece flagged RSP_CACHE|RSP_RESET, object 3."""
    b = bench(cache)
    h = b.host
    h.connect()
    v = h.bind(VDEV_ID)
    h.rmi_ok(F.RMI_VDEV_GET_INTERFACE_REPORT, h.rd, h.pdev, v.addr)
    exits = []
    status, response = 0, b""
    while True:
        ex = comm_once(b, F.RMI_VDEV_COMMUNICATE, (h.rd, h.pdev, v.addr), status=status,
                       response=response)
        exits.append(ex)
        if ex.flags & 0x2:
            piece = h.mem.read(h.resp + ex.cache_rsp_offset, ex.cache_rsp_len)
        if not ex.flags & 0x4:
            break
        assert ex.protocol == 1
        response = h.transport(2, h.mem.read(h.req, ex.req_len))
        status = 1
    cached = [ex for ex in exits if ex.flags & 0x2]
    assert len(cached) == 1 and cached[0].flags & 0x10 and cached[0].cache_obj_id == 3
    from vfiouser_tdisp.tdisp.messages import TDI_REPORT_STRUCTURE
    report = TDI_REPORT_STRUCTURE.unpack(piece)
    assert report.mmio_range_count == len(b.bars)
    assert exits[-1].flags == 0x2 | 0x10      # the last exit: cache only, operation over
    assert h.vdev_state(v.addr) is VS.LOCKED


def test_abi_id_is_the_port_fourcc() -> None:
    from vfiouser_tdisp.tsm.cca import Rmm, make_firmware
    assert Rmm.abi_id.to_bytes(4, "little") == b"CCA "     # docs/firmware-port.md
    assert isinstance(make_firmware(), Rmm)


@pytest.mark.parametrize("seed", range(3))
def test_random_calls_get_a_status_and_leave_the_rmm_serving(cache: Path, seed: int) -> None:
    """Every RMI/RSI call with random registers, from a connected, bound state: each gets a
    status of its own ABI (never an exception), and the sequence still works after."""
    import random
    rng = random.Random(seed)
    b = bench(cache)
    h = b.host
    vdev_in(b, VS.LOCKED)
    pages = [h.pdev, h.rp, h.rd, h.rec, h.comm, h.req, h.resp, h.params, h.run,
             b.realm.info_page, b.realm.hc, h.vdevs[VDEV_ID].addr]
    noise = h.mem.alloc()
    h.mem.write(noise, rng.randbytes(4096))

    def value() -> int:
        pick = rng.random()
        if pick < 0.5:
            return rng.choice(pages) + rng.choice((0, 0, 0, 8, 0x100))
        if pick < 0.7:
            return noise
        return rng.getrandbits(64) if pick < 0.85 else rng.randrange(16)
    rmi_status = {s.value for s in RS} | {0xFFFFFFFFFFFFFFFF}
    rsi_status = {s.value for s in SS} | {0xFFFFFFFFFFFFFFFF}
    destructive = {F.RMI_PDEV_DESTROY, F.RMI_PDEV_STOP, F.RMI_PDEV_ABORT, F.RMI_VDEV_ABORT,
                   F.RMI_VDEV_DESTROY, F.RMI_REALM_DESTROY, F.RMI_REC_DESTROY,
                   F.RMI_GRANULE_UNDELEGATE, F.RMI_PDEV_STREAM_DISCONNECT}
    for _ in range(300):
        if rng.random() < 0.6:
            fid = rng.choice([f for f in F if f not in destructive])
            out = h.rmi(fid, *(value() for _ in range(4)))
            assert out[0] in rmi_status, (fid.name, out)
        else:
            rfid = rng.choice(list(RsiFid))
            out = rsi(b, rfid, *(value() for _ in range(8)))
            assert out[0] in rsi_status, (rfid.name, out)
    # whatever state the random calls left, the RMM still answers and tears down
    for obj in list(b.rmm.vdevs.values()) + list(b.rmm.pdevs.values()):
        if obj.op is not None:
            fid = F.RMI_VDEV_ABORT if obj in b.rmm.vdevs.values() else F.RMI_PDEV_ABORT
            assert h.rmi(fid, obj.addr)[0] == S_
    assert h.rmi(F.RMI_PDEV_GET_STATE, h.pdev)[0] == S_


def _dmtf_value_types(measurements: bytes) -> list[int]:
    """DMTFSpecMeasurementValueType of every block of a MEASUREMENTS response, parsed by
    hand from DSP0274 §10.11: header 4 B, NumberOfBlocks u8, MeasurementRecordLength
    u24, then blocks {Index u8, MeasurementSpecification u8 (DMTF 0x01), MeasurementSize
    u16, {DMTFSpecMeasurementValueType u8 (bit 7 = raw bit stream), ValueSize u16, Value}}."""
    count = measurements[4]
    length = int.from_bytes(measurements[5:8], "little")
    record, pos, types = measurements[8:8 + length], 0, []
    for _ in range(count):
        assert record[pos + 1] == 0x01
        size = int.from_bytes(record[pos + 2:pos + 4], "little")
        types.append(record[pos + 4])
        pos += 4 + size
    assert pos == length
    return types


def test_measurement_params_raw_flag(cache: Path) -> None:
    """rmi_vdev_measure_params.flags RAW (bit 0) asks the device for raw bit streams."""
    b = bench(cache)
    h = b.host
    h.connect()
    v = h.bind(VDEV_ID)
    h.measure(v, raw=False)
    digests = _dmtf_value_types(v.cache[abi.RmiDevCommObject.MEASUREMENTS])
    h.measure(v, raw=True)
    raw = _dmtf_value_types(v.cache[abi.RmiDevCommObject.MEASUREMENTS])
    assert len(raw) == len(digests) and all(t & 0x80 for t in raw)
    assert not all(t & 0x80 for t in digests)
    # bits other than RAW are reserved
    page = h._params(abi.RmiVdevMeasureParams(flags=2).pack())
    assert h.rmi(F.RMI_VDEV_GET_MEASUREMENTS, h.rd, h.pdev, v.addr, page)[0] == INP


# -- PDEV_CREATE as a stateful RMI operation (firmware-abi.md C.2; model.py "PDEV memory") --

SRO_FIDS = dict(continue_=0xC4000203, donate=0xC4000208, reclaim=0xC4000209, cancel=0xC400020A)


def _ep_create(b: Bench) -> tuple[int, tuple[int, ...]]:
    h = b.host
    pdev = h._delegated()
    page = h._params(abi.RmiPdevParams(flags=0b011, pdev_id=0, routing_id=0, id_index=0,
                                       rid_base=0, rid_top=8, hash_algo=0).pack())
    return pdev, h.rmi(F.RMI_PDEV_CREATE, pdev, page)


def _donate(b: Bench, handle: int, descs: list[int]) -> tuple[int, ...]:
    lst = b.host.mem.alloc()
    b.host.mem.write(lst, struct.pack(f"<{len(descs)}Q", *descs))
    return b.rmm.call(FirmwareCall(CallClass.HOST, SRO_FIDS["donate"],
                                   (handle, lst, len(descs))), b.host.mem)


def _call(b: Bench, fid: int, *args: int) -> tuple[int, ...]:
    return b.rmm.call(FirmwareCall(CallClass.HOST, fid, args), b.host.mem)


def test_pdev_create_asks_for_memory_and_completes_after_donation(cache: Path) -> None:
    """RMI_INCOMPLETE (13) with an SRO handle and a DONATE (1) request for two 4 KiB
    delegated granules (count [15:2] = 2 -> 0x8); each OP_MEM_DONATE takes granules named
    by address descriptors (count [11:2], address [51:12]); OP_CONTINUE then creates the
    PDEV in NEW; PDEV_DESTROY gives the granules back delegated."""
    b = bench(cache)
    pdev, out = _ep_create(b)
    assert out[0] == 13 and out[2] == 1 and out[3] == 0x8
    handle = out[1]
    assert b.host.rmi(F.RMI_PDEV_GET_STATE, pdev)[0] == INP    # no PDEV yet
    assert _call(b, SRO_FIDS["continue_"], handle, 0)[1:] == (handle, 1, 0x8)  # still wants 2
    g1, g2 = b.host._delegated(), b.host._delegated()
    ns = b.host.mem.alloc()
    assert _donate(b, handle, [ns | 1 << 2])[0] == INP          # not delegated
    assert _donate(b, handle, [g1 | 1 << 2 | 1 << 63])[0] == INP  # undelegated state asked
    assert _donate(b, handle, [g1 | 1 << 2 | 1])[0] == INP      # not a 4 KiB granule size
    assert _donate(b, handle + 1, [g1 | 1 << 2])[0] == INP      # no such operation
    assert _donate(b, handle, [g1 | 1 << 2]) == (13, 1, 1, 0x4)  # one taken, one to go
    assert _donate(b, handle, [g1 | 1 << 2])[0] == INP          # g1 is the PDEV's now
    assert _donate(b, handle, [g2 | 1 << 2]) == (13, 1, 0, 0)   # all there: NONE, continue
    assert _donate(b, handle, [g2 | 1 << 2])[0] == INP          # nothing more to donate
    assert _call(b, SRO_FIDS["continue_"], handle, 1)[0] == INP  # flags must be 0
    assert _call(b, SRO_FIDS["continue_"], handle, 0) == (0,)
    assert b.host.pdev_state(pdev) is PS.NEW
    assert _call(b, SRO_FIDS["continue_"], handle, 0)[0] == INP  # the handle is spent
    assert b.host.rmi(F.RMI_GRANULE_UNDELEGATE, g1)[0] == INP   # the PDEV holds it
    assert _call(b, SRO_FIDS["reclaim"], handle, 0, 0)[0] == RS.RMI_ERROR_NOT_SUPPORTED
    b.host._pdev_comm(pdev)                                      # identity, as ever
    assert b.host.pdev_state(pdev) is PS.NEEDS_KEY
    assert b.host.rmi(F.RMI_PDEV_STOP, pdev)[0] == S_
    b.host._pdev_comm(pdev)
    assert b.host.rmi(F.RMI_PDEV_DESTROY, pdev)[0] == S_
    for g in (g1, g2, pdev):
        assert b.host.rmi(F.RMI_GRANULE_UNDELEGATE, g)[0] == S_


def test_pdev_create_cancelled(cache: Path) -> None:
    b = bench(cache)
    pdev, out = _ep_create(b)
    g = b.host._delegated()
    assert _donate(b, out[1], [g | 1 << 2])[:2] == (13, 1)
    assert _call(b, SRO_FIDS["cancel"], out[1])[0] == S_
    assert _call(b, SRO_FIDS["cancel"], out[1])[0] == INP
    assert b.host.rmi(F.RMI_PDEV_GET_STATE, pdev)[0] == INP
    for granule in (g, pdev):
        assert b.host.rmi(F.RMI_GRANULE_UNDELEGATE, granule)[0] == S_


def test_host_driver_donates_and_gives_the_granules_back(cache: Path) -> None:
    b = bench(cache)
    b.host.connect()
    assert len(b.host.sro_granules) == 2
    aux = list(b.host.sro_granules)
    b.host.disconnect()
    assert not any(g in b.rmm.granules for g in aux)   # undelegated again
    assert not b.rmm.granules
