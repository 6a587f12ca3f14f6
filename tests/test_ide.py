"""IDE capability registers and the IDE_KM responder, on bytes."""

from __future__ import annotations

import struct

import pytest

from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.ide.capability import (
    PCI_IDE_CAP_IDE_KM,
    PCI_IDE_CAP_SELECTIVE,
    PCI_IDE_CAP_TEE_LIMITED,
    IdeCapability,
    IdeStreamState,
)
from vfiouser_tdisp.ide.km import (
    K_SET,
    KEY_PROG,
    KP_ACK,
    QUERY,
    QUERY_RESP,
    IdeKmError,
    IdeKmObject,
    IdeKmResponder,
    KpAckStatus,
)
from vfiouser_tdisp.pci.config import ConfigSpace

STREAM_ID = 5


@pytest.fixture
def ide() -> tuple[ConfigSpace, IdeCapability, IdeKmResponder]:
    space = ConfigSpace()
    cap = IdeCapability(link_streams=1, selective_streams=2, assoc_blocks=1,
                        function_name="t.fn0")
    space.add_capability(cap, offset=0x200)
    return space, cap, IdeKmResponder([cap], bus=1, devfn=0)


def r32(space: ConfigSpace, off: int) -> int:
    return int(struct.unpack("<I", space.read(off, 4))[0])


def w32(space: ConfigSpace, off: int, value: int) -> None:
    space.write(off, struct.pack("<I", value))


def sel_ctl(cap: IdeCapability, i: int) -> int:
    return cap.offset + cap.sel_base(i) + 4


def program_all_keys(km: IdeKmResponder, stream_id: int = STREAM_ID, key_set: int = 0) -> None:
    for sub in range(3):
        for direction in range(2):
            kss = key_set | (direction << 1) | (sub << 4)
            ack = KP_ACK.unpack(km.handle(KEY_PROG(IdeKmObject.KEY_PROG, 0, stream_id, 0, kss, 0,
                                                   bytes([sub * 2 + direction]) * 32,
                                                   bytes(8)).pack()))
            assert ack.status == KpAckStatus.SUCCESS and ack.stream_id == stream_id
            rsp = K_SET.unpack(km.handle(K_SET(IdeKmObject.K_SET_GO, 0, stream_id, 0, kss,
                                               0).pack()))
            assert rsp.object_id == IdeKmObject.K_GOSTOP_ACK and rsp.key_sub_stream == kss


def test_capability_register_layout(ide) -> None:  # type: ignore[no-untyped-def]
    space, cap, _km = ide
    assert r32(space, 0x200) & 0xFFFF == 0x30 and (r32(space, 0x200) >> 16) & 0xF == 1
    value = r32(space, 0x204)
    assert value & PCI_IDE_CAP_SELECTIVE and value & PCI_IDE_CAP_IDE_KM
    assert value & 1 and (value >> 13) & 7 == 0  # one link stream
    assert (value >> 16) & 0xFF == 1  # two selective streams
    assert value & PCI_IDE_CAP_TEE_LIMITED
    for i in range(2):  # every selective stream reports the same ASSOC_NUM
        assert r32(space, cap.offset + cap.sel_base(i)) & 0xF == 1
    w32(space, 0x204, 0)  # capability register is read-only
    assert r32(space, 0x204) == value
    rid2 = cap.offset + cap.sel_base(0) + 0x10
    w32(space, rid2, 0xFFFFFFFF)
    assert r32(space, rid2) == 0xFFFFFF01


def test_linux_stream_enable_flow_reads_secure(ide) -> None:  # type: ignore[no-untyped-def]
    space, cap, km = ide
    ctl = sel_ctl(cap, 0)
    w32(space, ctl, STREAM_ID << 24)  # pci_ide_stream_setup: ID, EN=0
    program_all_keys(km)
    w32(space, ctl, (STREAM_ID << 24) | 1)  # pci_ide_stream_enable
    assert r32(space, ctl + 4) & 0xF == 2  # SECURE immediately
    assert cap.stream_state(STREAM_ID) is IdeStreamState.SECURE


def test_enable_without_keys_stays_insecure(ide) -> None:  # type: ignore[no-untyped-def]
    space, cap, km = ide
    ctl = sel_ctl(cap, 1)
    w32(space, ctl, (STREAM_ID << 24) | 1)
    assert r32(space, ctl + 4) & 0xF == 0
    program_all_keys(km)  # keys arriving while enabled make it secure
    assert r32(space, ctl + 4) & 0xF == 2


def test_partial_keys_stay_insecure(ide) -> None:  # type: ignore[no-untyped-def]
    space, cap, km = ide
    km.handle(KEY_PROG(IdeKmObject.KEY_PROG, 0, STREAM_ID, 0, 0, 0, bytes(32), bytes(8)).pack())
    km.handle(K_SET(IdeKmObject.K_SET_GO, 0, STREAM_ID, 0, 0, 0).pack())
    w32(space, sel_ctl(cap, 0), (STREAM_ID << 24) | 1)
    assert r32(space, sel_ctl(cap, 0) + 4) & 0xF == 0


def test_stop_and_disable_return_to_insecure_and_notify(ide) -> None:  # type: ignore[no-untyped-def]
    space, cap, km = ide
    seen: list[int] = []
    cap.insecure_listeners.append(seen.append)
    ctl = sel_ctl(cap, 0)
    w32(space, ctl, STREAM_ID << 24)
    program_all_keys(km)
    w32(space, ctl, (STREAM_ID << 24) | 1)
    km.handle(K_SET(IdeKmObject.K_SET_STOP, 0, STREAM_ID, 0, 0x10, 0).pack())
    assert r32(space, ctl + 4) & 0xF == 0 and seen == [STREAM_ID]
    program_all_keys(km)
    assert r32(space, ctl + 4) & 0xF == 2
    w32(space, ctl, STREAM_ID << 24)  # EN cleared
    assert r32(space, ctl + 4) & 0xF == 0 and seen == [STREAM_ID, STREAM_ID]


def test_reset_drops_keys(ide) -> None:  # type: ignore[no-untyped-def]
    space, cap, km = ide
    seen: list[int] = []
    cap.insecure_listeners.append(seen.append)
    w32(space, sel_ctl(cap, 0), STREAM_ID << 24)
    program_all_keys(km)
    w32(space, sel_ctl(cap, 0), (STREAM_ID << 24) | 1)
    space.reset()
    assert seen == [STREAM_ID] and cap.keys == {}
    w32(space, sel_ctl(cap, 0), (STREAM_ID << 24) | 1)
    assert r32(space, sel_ctl(cap, 0) + 4) & 0xF == 0


def test_query_resp_dumps_the_registers(ide) -> None:  # type: ignore[no-untyped-def]
    space, cap, km = ide
    rsp = QUERY_RESP.unpack(km.handle(QUERY(IdeKmObject.QUERY, 0, 0).pack()))
    assert (rsp.object_id, rsp.port_index, rsp.bus_num, rsp.max_port_index) == (1, 0, 1, 0)
    assert rsp.ide_registers == space.read(0x204, cap.size - 4)
    assert struct.unpack_from("<I", rsp.ide_registers)[0] == r32(space, 0x204)
    with pytest.raises(IdeKmError):
        km.handle(QUERY(IdeKmObject.QUERY, 0, 3).pack())


@pytest.mark.parametrize("mutate,status", [
    (lambda m: m[:-1], KpAckStatus.INCORRECT_LENGTH),
    (lambda m: m + b"\0", KpAckStatus.INCORRECT_LENGTH),
    (lambda m: m[:6] + b"\x02" + m[7:], KpAckStatus.UNSUPPORTED_PORT_INDEX),
    (lambda m: m[:5] + b"\x30" + m[6:], KpAckStatus.UNSUPPORTED_VALUE),  # sub-stream 3
    (lambda m: m[:5] + b"\x04" + m[6:], KpAckStatus.UNSUPPORTED_VALUE),  # reserved bit
])
def test_key_prog_status_codes(ide, mutate, status) -> None:  # type: ignore[no-untyped-def]
    _space, cap, km = ide
    msg = KEY_PROG(IdeKmObject.KEY_PROG, 0, STREAM_ID, 0, 0, 0, bytes(32), bytes(8)).pack()
    ack = KP_ACK.unpack(km.handle(mutate(msg)))
    assert ack.status == status
    assert STREAM_ID not in cap.keys  # nothing stored on failure


def test_malformed_and_unknown_objects(ide) -> None:  # type: ignore[no-untyped-def]
    _space, _cap, km = ide
    for bad in (b"", b"\x00", b"\x04\x00", b"\x09\x00\x00", b"\x01" + bytes(10)):
        with pytest.raises(IdeKmError):
            km.handle(bad)


def test_keys_are_not_logged_in_clear(ide, events: Recorder) -> None:  # type: ignore[no-untyped-def]
    _space, _cap, km = ide
    key = bytes(range(32))
    km.handle(KEY_PROG(IdeKmObject.KEY_PROG, 0, STREAM_ID, 0, 0, 0, key, bytes(8)).pack())
    text = repr(events.events)
    assert key.hex() not in text and "ide_km.key_prog" in text
