"""The log's command encoding: versioned, canonical, strict."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.chat.commands import (
    COMMAND_FORMAT_VERSION,
    Ack,
    Command,
    CommandKind,
    DeleteAccount,
    Login,
    Logout,
    Register,
    RegisterClient,
    RequestId,
    Send,
    Tick,
    decode,
    encode,
)
from node.chat.errors import ChatError, ChatMachineError, CommandDecodeError

from .conftest import fast_hash

REQ = RequestId(7, 12, 10)
EXAMPLES: list[Command] = [
    Register(
        timestamp_ms=1,
        log_time_ms=11,
        request=REQ,
        username="Alice",
        password_hash=fast_hash("pw"),
    ),
    Login(
        timestamp_ms=2,
        log_time_ms=12,
        request=REQ,
        username="alice",
        session="t0k",
        verified_digest=b"\x00" * 32,
    ),
    Logout(timestamp_ms=3, log_time_ms=13, request=None, session="t0k"),
    Send(
        timestamp_ms=4,
        log_time_ms=14,
        request=REQ,
        session="t0k",
        recipient="bob",
        text='héllo\n"😀"\x00',
    ),
    Ack(timestamp_ms=5, log_time_ms=15, request=REQ, session="t0k", up_to_id=2**64 - 1),
    DeleteAccount(timestamp_ms=6, log_time_ms=16, request=REQ, session="t0k"),
    RegisterClient(timestamp_ms=7, log_time_ms=17),
    Tick(timestamp_ms=8, log_time_ms=2**63 - 1),
]


@pytest.mark.parametrize("cmd", EXAMPLES, ids=lambda c: type(c).__name__)
def test_every_command_round_trips(cmd: Command) -> None:
    data = encode(cmd)
    assert decode(data) == cmd
    assert encode(decode(data)) == data


def test_every_kind_has_an_example() -> None:
    assert {c.KIND for c in EXAMPLES} == set(CommandKind)


def test_encoding_is_a_version_byte_then_canonical_json() -> None:
    data = encode(EXAMPLES[3])
    assert data[0] == COMMAND_FORMAT_VERSION
    body = data[1:].decode("utf-8")
    obj = json.loads(body)
    assert body == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert obj["kind"] == "send"
    assert obj["request"] == {"client_id": 7, "seq": 12, "first_outstanding": 10}
    assert (obj["timestamp_ms"], obj["log_time_ms"]) == (4, 14)  # both travel in the entry


def test_equal_commands_give_equal_bytes() -> None:
    a = Send(
        timestamp_ms=4,
        log_time_ms=3,
        request=RequestId(1, 1, 1),
        session="t",
        recipient="b",
        text="x",
    )
    b = Send(
        text="x",
        recipient="b",
        session="t",
        request=RequestId(1, 1, 1),
        log_time_ms=3,
        timestamp_ms=4,
    )
    assert encode(a) == encode(b)


@given(
    text=st.text(st.characters(codec="utf-8"), max_size=50),
    ts=st.integers(0, 2**63 - 1),
    lt=st.integers(0, 2**63 - 1),
    client=st.integers(1, 2**63 - 1),
    seq=st.integers(0, 2**64 - 1),
)
def test_any_text_and_numbers_round_trip(
    text: str, ts: int, lt: int, client: int, seq: int
) -> None:
    cmd = Send(
        timestamp_ms=ts,
        log_time_ms=lt,
        request=RequestId(client, seq, seq),
        session="t",
        recipient="r",
        text=text,
    )
    assert decode(encode(cmd)) == cmd


def _tamper(cmd: Command, **changes: object) -> bytes:
    obj = json.loads(encode(cmd)[1:])
    for key, value in changes.items():
        if value is KeyError:
            del obj[key]
        else:
            obj[key] = value
    return bytes([COMMAND_FORMAT_VERSION]) + json.dumps(obj).encode()


SEND = EXAMPLES[3]
REGISTER_CLIENT = EXAMPLES[6]
TICK = EXAMPLES[7]
BAD = {
    "empty": b"",
    "newer version": bytes([COMMAND_FORMAT_VERSION + 1]) + encode(SEND)[1:],
    "not json": bytes([COMMAND_FORMAT_VERSION]) + b"{nope",
    "not utf-8": bytes([COMMAND_FORMAT_VERSION]) + b'"\xff"',
    "not an object": bytes([COMMAND_FORMAT_VERSION]) + b"[1,2]",
    "unknown kind": _tamper(SEND, kind="shout"),
    "kind not a string": _tamper(SEND, kind=3),
    "missing field": _tamper(SEND, text=KeyError),
    "extra field": _tamper(SEND, colour="red"),
    "bool as int": _tamper(SEND, timestamp_ms=True),
    "float as int": _tamper(SEND, timestamp_ms=1.0),
    "negative timestamp": _tamper(SEND, timestamp_ms=-1),
    "number as string": _tamper(SEND, text=5),
    "request not an object": _tamper(SEND, request=[1, 2, 3]),
    "missing log time": _tamper(SEND, log_time_ms=KeyError),
    "negative log time": _tamper(SEND, log_time_ms=-1),
    "log time over int64": _tamper(SEND, log_time_ms=2**63),
    "request missing seq": _tamper(SEND, request={"client_id": 7, "first_outstanding": 0}),
    "seq over uint64": _tamper(
        SEND, request={"client_id": 7, "seq": 2**64, "first_outstanding": 0}
    ),
    # version 1's random string ids: a client id is now the log index that registered it
    "client id a string": _tamper(
        SEND, request={"client_id": "client-7", "seq": 1, "first_outstanding": 0}
    ),
    "client id zero": _tamper(SEND, request={"client_id": 0, "seq": 1, "first_outstanding": 0}),
    "client id over int64": _tamper(
        SEND, request={"client_id": 2**63, "seq": 1, "first_outstanding": 0}
    ),
    "register_client with a request id": _tamper(
        REGISTER_CLIENT, request={"client_id": 7, "seq": 1, "first_outstanding": 0}
    ),
    "tick with a request id": _tamper(
        TICK, request={"client_id": 7, "seq": 1, "first_outstanding": 0}
    ),
    "tick with a field": _tamper(TICK, session="t0k"),
    "version 1": bytes([1]) + encode(SEND)[1:],
    "bad base64": _tamper(EXAMPLES[1], verified_digest="***"),
    "n not a power of two": _tamper(
        EXAMPLES[0],
        password_hash={"salt": "c2FsdA==", "n": 24, "r": 1, "p": 1, "digest": "A" * 44},
    ),
    "absurd cost": _tamper(
        EXAMPLES[0],
        password_hash={"salt": "c2FsdA==", "n": 2**24, "r": 64, "p": 1, "digest": "A" * 44},
    ),
    "short digest": _tamper(
        EXAMPLES[0],
        password_hash={"salt": "c2FsdA==", "n": 16, "r": 1, "p": 1, "digest": "AAAA"},
    ),
}


@pytest.mark.parametrize("data", BAD.values(), ids=list(BAD))
def test_anything_else_is_a_decode_error_not_a_chat_error(data: bytes) -> None:
    with pytest.raises(CommandDecodeError) as info:
        decode(data)
    assert not isinstance(info.value, ChatError)
    assert isinstance(info.value, ChatMachineError)
