"""A client that sends bytes that are no request: refused clearly, and the node's log cannot
be filled with them (issue 11: "Each undecodable request writes an ERROR line plus a
traceback (~726 B) into node.log ... 0.7 MB/s from one client with no account", and
"Undecodable requests answer UNKNOWN 'Unexpected <class ...DecodeError'>', not
INVALID_ARGUMENT")."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.node.conftest import NodeProcesses

pytestmark = pytest.mark.cluster

GARBAGE = b"\xff\xff\xff\xff\x0f"  # a varint that never ends: no protobuf message decodes it
FLOOD = 10_000


def _raw(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(
        f"/chatbooth.chat.Chat/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )


def test_an_undecodable_request_is_invalid_argument(nodes: NodeProcesses) -> None:
    nodes.start_all()

    async def scenario() -> None:
        leader = await nodes.wait_leader()
        async with nodes.channel(leader) as ch:
            for method in ("Login", "Send", "Status"):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await _raw(ch, method)(GARBAGE, timeout=5)
                assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, method
                assert "not a valid" in (caught.value.details() or "")

    asyncio.run(scenario())


def test_ten_thousand_undecodable_requests_leave_the_log_under_a_megabyte(
    nodes: NodeProcesses,
) -> None:
    nodes.start_all()

    async def scenario() -> None:
        leader = await nodes.wait_leader()
        before = len(nodes.log(leader).encode())
        async with nodes.channel(leader) as ch:
            call = _raw(ch, "Login")

            async def one() -> grpc.StatusCode:
                try:
                    await call(GARBAGE, timeout=10)
                except grpc.aio.AioRpcError as err:
                    return err.code()
                return grpc.StatusCode.OK

            codes: list[grpc.StatusCode] = []
            for start in range(0, FLOOD, 500):
                codes += await asyncio.gather(*(one() for _ in range(min(500, FLOOD - start))))
        assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
        grown = len(nodes.log(leader).encode()) - before
        assert grown < 1 << 20, f"node.log grew {grown} bytes"
        assert "Traceback" not in nodes.log(leader)
        # The node is still well: it serves and leads.
        assert await nodes.status(leader) is not None

    asyncio.run(scenario())
