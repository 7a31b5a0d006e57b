"""Subscriptions against the fake cluster: queued then live delivery, the ack point, and
streams that end, repeat themselves or freeze.

DESIGN.md, "Chat semantics": Ack(up_to_id) is cumulative and a message leaves the queue only
when acked, so a crash between delivery and display loses nothing; the client drops
duplicates by message id; after a stream ends it resubscribes from the last acked id.
"""

from __future__ import annotations

import asyncio

import pytest

from client.api import Message, Subscription
from client.errors import UnauthenticatedError
from tests.client.conftest import eventually, logged_in
from tests.client.fakechat import FakeCluster


async def next_message(subscription: Subscription, timeout_s: float = 5.0) -> Message:
    return await asyncio.wait_for(anext(subscription), timeout_s)


async def test_queued_messages_come_first_then_live_ones_and_are_acked_once_handled() -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice")
        bob = await logged_in(cluster, "bob")
        try:
            for text in ("q1", "q2"):
                await alice.send("bob", text)
            messages = bob.subscribe()
            got = [await next_message(messages) for _ in range(2)]
            assert [m.text for m in got] == ["q1", "q2"]
            assert all(m.sender == "alice" and m.recipient == "bob" for m in got)
            # q2 is handed out but not handled (the next one was not asked for): never acked.
            await asyncio.sleep(0.1)
            assert got[1].id in cluster.queued("bob")
            assert all(r.request.up_to_id < got[1].id for r in cluster.calls("Ack"))
            asking = asyncio.ensure_future(next_message(messages))  # handled q2: ack up to it
            await eventually(lambda: cluster.queued("bob") == [])
            await alice.send("bob", "live")
            live = await asking
            assert live.text == "live" and live.id > got[1].id
            assert messages.acked_id == got[1].id
            await messages.aclose(ack=True)  # the consumer is done with "live" too
            assert cluster.queued("bob") == []
            acks = [r.request.up_to_id for r in cluster.calls("Ack")]
            assert acks == sorted(acks) and acks[-1] == live.id
        finally:
            await alice.close()
            await bob.close()


async def test_a_message_handed_out_but_not_handled_is_delivered_again() -> None:
    """A crash between delivery and display: the message was never acked."""
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice")
        bob = await logged_in(cluster, "bob")
        try:
            await alice.send("bob", "do not lose me")
            messages = bob.subscribe()
            first = await next_message(messages)
            await bob.close()  # "crash": no next message asked for, nothing acked
            assert cluster.queued("bob") == [first.id]

            again = await logged_in(cluster, "bob")
            try:
                replay = await next_message(again.subscribe())
                assert (replay.id, replay.text) == (first.id, "do not lose me")
            finally:
                await again.close()
        finally:
            await alice.close()


async def test_a_stream_that_ends_is_reopened_from_the_last_ack_without_duplicates() -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice")
        bob = await logged_in(cluster, "bob")
        try:
            messages = bob.subscribe()
            for text in ("m1", "m2", "m3"):
                await alice.send("bob", text)
            got = [await next_message(messages) for _ in range(3)]
            # m1 and m2 handled (acked in the background), m3 handed out only.
            await eventually(lambda: messages.acked_id == got[1].id)
            # a steps down: its stream ends with UNAVAILABLE naming b, which sends the queue
            # again from after the last ack: m3, already handed out, must be dropped.
            cluster.set_leader("b")
            await alice.send("bob", "m4")
            after = await next_message(messages)
            assert after.text == "m4"
            assert messages.resubscribed == 1
            assert messages.duplicates_dropped == 1
            subscribes = cluster.calls("Subscribe")
            assert [(r.node, r.request.after_id) for r in subscribes] == [
                ("a", 0),
                ("b", got[1].id),
            ]
            # A stream that ends while the leader stays the same is simply opened again.
            cluster.end_streams()
            await alice.send("bob", "m5")
            assert (await next_message(messages)).text == "m5"
            assert messages.resubscribed >= 2
        finally:
            await alice.close()
            await bob.close()


async def test_duplicates_on_one_stream_are_dropped_by_id() -> None:
    async with FakeCluster() as cluster:
        cluster.duplicate_deliveries = True
        alice = await logged_in(cluster, "alice")
        bob = await logged_in(cluster, "bob")
        try:
            await alice.send("bob", "once")
            messages = bob.subscribe()
            await alice.send("bob", "twice")
            got = [await next_message(messages) for _ in range(2)]
            assert [m.text for m in got] == ["once", "twice"]
            await alice.send("bob", "thrice")
            assert (await next_message(messages)).text == "thrice"
            assert messages.duplicates_dropped == 2
        finally:
            await alice.close()
            await bob.close()


async def test_a_subscription_follows_the_leader_named_in_metadata() -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice")
        bob = await logged_in(cluster, "bob")
        try:
            cluster.set_leader("c")
            messages = bob.subscribe()
            await alice.send("bob", "to c")
            assert (await next_message(messages)).text == "to c"
            assert messages.node == "c"
            assert [r.node for r in cluster.calls("Subscribe")][-1] == "c"
        finally:
            await alice.close()
            await bob.close()


async def test_a_frozen_leader_is_noticed_by_the_watchdog_and_left() -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice")
        bob = await logged_in(cluster, "bob", watch_interval_s=0.2, call_timeout_s=0.3)
        try:
            messages = bob.subscribe()
            await alice.send("bob", "before")
            assert (await next_message(messages)).text == "before"
            cluster.pause("a")  # its stream goes silent; b leads
            await alice.send("bob", "after")
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert (await next_message(messages)).text == "after"
            assert loop.time() - started < 2.0
            assert messages.node == "b"
        finally:
            cluster.resume("a")
            await alice.close()
            await bob.close()


async def test_a_refused_subscription_ends_with_the_servers_reason() -> None:
    async with FakeCluster() as cluster:
        bob = await logged_in(cluster, "bob")
        other = await logged_in(cluster, "alice")
        try:
            messages = bob.subscribe()
            await other.send("bob", "hi")
            await next_message(messages)
            await bob.delete_account("pw")  # the session ends; the server ends the stream
            with pytest.raises(UnauthenticatedError):
                await next_message(messages)
            with pytest.raises(StopAsyncIteration):
                await next_message(messages)
        finally:
            await bob.close()
            await other.close()
