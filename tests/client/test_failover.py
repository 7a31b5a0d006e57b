"""What the client promises while nodes die, written against any `ChatCluster` (only kill,
start, isolate, heal, wait_leader), so that the same tests run against the fake cluster now and
real nodes later (conftest.py: CLUSTER_KINDS).

DESIGN.md, "Chat semantics": a retried send is one message; a send whose outcome is unknown is
resent with the same id, never reported failed; with no majority the client says so clearly
and in time; a subscription survives failover and drops duplicates.
"""

from __future__ import annotations

import asyncio

import pytest

from client.api import ConnectionState, SendResult
from client.errors import NoMajorityError, UnavailableError
from tests.client.conftest import logged_in, make_client, open_cluster
from tests.client.fakechat import FakeCluster


async def test_sends_across_a_leader_kill_are_applied_once_and_in_order(cluster_kind: str) -> None:
    async with open_cluster(cluster_kind) as cluster:
        alice = await logged_in(cluster, "alice")
        bob = await logged_in(cluster, "bob")
        try:
            leader = await cluster.wait_leader()
            first = [alice.start_send("bob", f"m{i}") for i in range(10)]
            await first[2]
            await cluster.kill(leader)  # the rest are in flight, queued or not yet sent
            rest = [alice.start_send("bob", f"m{i}") for i in range(10, 20)]
            results: list[SendResult] = [await pending.wait() for pending in first + rest]

            ids = [result.message_id for result in results]
            assert ids == sorted(ids)
            assert len(set(ids)) == 20
            history = await bob.history("alice", 100)
            assert [m.text for m in history] == [f"m{i}" for i in range(20)]
            assert [m.id for m in history] == ids
            assert alice.state is ConnectionState.OK
        finally:
            await alice.close()
            await bob.close()


async def test_no_majority_is_one_clear_error_within_the_deadline(cluster_kind: str) -> None:
    async with open_cluster(cluster_kind) as cluster:
        alice = await logged_in(cluster, "alice", overall_timeout_s=4.0)
        try:
            await alice.send("alice", "before")
            await cluster.kill("b")
            await cluster.kill("c")
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(NoMajorityError) as caught:
                await alice.send("alice", "during")
            elapsed = loop.time() - started
            assert elapsed < 4.0
            error = caught.value
            assert str(error).startswith("no leader: ")
            assert error.summary.endswith("b, c unreachable")
            assert error.pending is not None  # not failed: still being resent
            assert "still pending" in str(error)
            assert alice.state is ConnectionState.NO_MAJORITY

            await cluster.start("b")
            await cluster.wait_leader()
            result = await error.pending  # the same write, answered at last
            assert isinstance(result, SendResult)
            history = await alice.history("alice", 10)
            assert [m.text for m in history] == ["before", "during"]
        finally:
            await alice.close()


async def test_a_pinned_client_on_the_minority_side_sees_no_majority(cluster_kind: str) -> None:
    async with open_cluster(cluster_kind) as cluster:
        free = await logged_in(cluster, "alice")
        pinned = make_client(cluster, servers=["a"], pinned=True)
        try:
            await cluster.isolate("a")
            await cluster.wait_leader()
            seen = len(cluster.received) if isinstance(cluster, FakeCluster) else 0
            with pytest.raises(UnavailableError) as caught:
                await pinned.register("bob", "pw")
            assert "(pinned to a: no failover)" in str(caught.value)
            assert pinned.current_node == "a"
            assert pinned.client_id is None  # a cannot reach the log to register a session
            if isinstance(cluster, FakeCluster):
                # free has its session: every call since the cut that is not a's is free's
                calls = [(r.node, r.method) for r in cluster.received[seen:]]
                assert calls and {node for node, _ in calls} == {"a"}
                assert {method for _, method in calls} == {"RegisterClient"}
            # The majority side goes on serving an unpinned client.
            await free.send("alice", "still working")
        finally:
            await pinned.close()
            await free.close()


async def test_a_subscription_survives_a_leader_kill(cluster_kind: str) -> None:
    async with open_cluster(cluster_kind) as cluster:
        alice = await logged_in(cluster, "alice")
        bob = await logged_in(cluster, "bob")
        try:
            messages = bob.subscribe()
            await alice.send("bob", "one")
            first = await asyncio.wait_for(anext(messages), 5)
            assert first.text == "one"
            await cluster.kill(await cluster.wait_leader())
            await alice.send("bob", "two")
            await alice.send("bob", "three")
            rest = [await asyncio.wait_for(anext(messages), 5) for _ in range(2)]
            assert [m.text for m in rest] == ["two", "three"]
            assert first.id < rest[0].id < rest[1].id
            await messages.aclose(ack=True)
            assert messages.acked_id == rest[1].id
        finally:
            await alice.close()
            await bob.close()
