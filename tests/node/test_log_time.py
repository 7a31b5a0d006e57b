"""Log time on real nodes: expiry happens on time on a quiet cluster, and a client cut off for
longer than client_idle_s has its retry refused, never applied a second time (thesis §6.3).

Issue 9's reproductions: "With session_idle_s: 3 and no writes for 8 s, History, ListAccounts
and Subscribe still worked", and "A client cut off for longer than client_idle_s" had its
retried Send applied twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos import chat_pb2 as pb
from tests.node.conftest import NodeProcesses
from tests.node.test_node_process import Session, _drain

pytestmark = pytest.mark.cluster

IDLE_S = 3


def _cluster(tmp_path: Path, session_idle_s: int, client_idle_s: int) -> NodeProcesses:
    # Indented: these continue the chat section the writer starts (its scrypt cost).
    extra = f"  session_idle_s: {session_idle_s}\n  client_idle_s: {client_idle_s}\n"
    return NodeProcesses(tmp_path, extra_yaml=extra)


@pytest.fixture
def quick_sessions(tmp_path: Path) -> Iterator[NodeProcesses]:
    cluster = _cluster(tmp_path, session_idle_s=IDLE_S, client_idle_s=3600)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def quick_clients(tmp_path: Path) -> Iterator[NodeProcesses]:
    cluster = _cluster(tmp_path, session_idle_s=3600, client_idle_s=IDLE_S)
    try:
        yield cluster
    finally:
        cluster.close()


def test_sessions_expire_on_time_on_a_cluster_with_no_writes(
    quick_sessions: NodeProcesses,
) -> None:
    """DESIGN: "sessions idle past a configured time expire (measured in log time, not a
    node's clock)"; with no writes at all, log time must still move (the leader's Tick)."""
    nodes = quick_sessions
    nodes.start_all()

    async def scenario() -> None:
        s = await Session.open(nodes.channel(await nodes.wait_leader()))
        await s.register_and_login("quiet")
        logged_in = time.monotonic()
        reply = await s.stub.History(pb.HistoryRequest(token=s.token, other="quiet"), timeout=5)
        assert list(reply.messages) == []
        # No request of ours writes anything from here on; only the passing of time.
        while True:
            try:
                await s.stub.History(pb.HistoryRequest(token=s.token, other="quiet"), timeout=5)
            except grpc.aio.AioRpcError as err:
                assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err.details()
                break
            waited = time.monotonic() - logged_in
            assert waited < IDLE_S + 5, f"the session still works {waited:.1f} s after login"
            await asyncio.sleep(0.25)
        expired_after = time.monotonic() - logged_in
        # Not early either: log time never runs ahead of the leader's clocks.
        assert expired_after >= IDLE_S - 0.5, expired_after
        await s.close()

    asyncio.run(scenario())


def test_a_client_cut_off_past_client_idle_s_is_refused_not_applied_twice(
    quick_clients: NodeProcesses,
) -> None:
    """Thesis §6.3: "the server ... must be able to detect that a client session has expired
    and return an error, instead of executing the request again"."""
    nodes = quick_clients
    nodes.start_all()

    async def scenario() -> None:
        leader = await nodes.wait_leader()
        writer = await Session.open(nodes.channel(leader))
        await writer.register_and_login("writer")
        reader = await Session.open(nodes.channel(leader))
        await reader.register_and_login("reader")
        first = await writer.send("reader", "hello")
        # A retry while the client is remembered is answered from the table.
        again = await writer.send("reader", "hello", seq=writer.seq)
        assert again.message_id == first.message_id
        # Then the writer is cut off: it sends nothing for longer than client_idle_s (the
        # wait is the scenario; log time moves on with the leader's Ticks meanwhile).
        await asyncio.sleep(IDLE_S + 2.5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await writer.send("reader", "hello", seq=writer.seq)
        refusal = caught.value
        assert refusal.code() is grpc.StatusCode.FAILED_PRECONDITION, refusal.details()
        assert "client session expired" in (refusal.details() or "")
        reasons = [v for k, v in refusal.trailing_metadata() or () if k == "x-chatbooth-reason"]
        assert reasons == ["client-expired"]
        got = await _drain(nodes.channel(await nodes.wait_leader()), reader.token)
        assert [m.text for m in got] == ["hello"]
        await writer.close()
        await reader.close()

    asyncio.run(scenario())
