"""supervisor/sender.py against the fake cluster's scripted faults (tests/client/fakechat.py):
the semantics the history check relies on.

- every write carries (client_id, seq, first_outstanding): seq +1 per write, first_outstanding
  the lowest seq still without an answer;
- a write whose outcome is unknown (deadline, lost connection, UNKNOWN, INTERNAL, UNAVAILABLE) is
  resent with the same id until answered, and the cluster applies it once; one never answered
  raises OutcomeUnknownError, and stays outstanding;
- only a definite refusal raises RefusedError, after one attempt;
- UNAVAILABLE with a leader in trailing metadata sends the next attempt to that leader;
- a drain reads every queued message once, across a stream that breaks.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from supervisor.sender import (
    NoAnswerError,
    OutcomeUnknownError,
    RefusedError,
    RequestIds,
    Sender,
    SenderError,
)
from tests.client.fakechat import FakeCluster, Fault

UNKNOWN_OUTCOMES = [
    Fault.APPLY_THEN_HANG,
    Fault.APPLY_THEN_UNKNOWN,
    Fault.APPLY_THEN_INTERNAL,
    Fault.APPLY_THEN_CRASH,
    Fault.NO_MAJORITY,
]


def sender_for(cluster: FakeCluster, **options: float) -> Sender:
    addresses = {name: cluster.address(name) for name in cluster.names}
    # The fake chat cluster serves plaintext (a node's TLS is tested against real nodes).
    timeout_s = options.pop("call_timeout_s", 0.5)
    return Sender(addresses, call_timeout_s=timeout_s, tls=None, **options)


async def session(cluster: FakeCluster, sender: Sender, *names: str) -> str:
    """Register every name; log in as the first; its token."""
    for name in names:
        await sender.register(name, "pw", timeout_s=5)
    return await sender.login(names[0], "pw", timeout_s=5)


def send_ids(cluster: FakeCluster) -> list[tuple[str, int, int]]:
    return [r.request_id for r in cluster.calls("Send") if r.request_id is not None]


def test_request_ids_come_from_one_place() -> None:
    ids = RequestIds()
    first, second = ids.begin(), ids.begin()
    assert (first, second) == (1, 2)
    with pytest.raises(SenderError, match="register the client first"):
        ids.request_id(first)  # the log assigns the client id (thesis §6.3)
    ids.client_ids[""] = 7
    assert ids.request_id(second).first_outstanding == 1  # 1 still has no answer
    ids.answered(first)
    rid = ids.request_id(second)
    assert (rid.client_id, rid.seq, rid.first_outstanding) == (7, 2, 2)


async def test_the_first_write_registers_a_client_session() -> None:
    async with FakeCluster() as cluster, sender_for(cluster) as sender:
        assert sender.ids.client_id is None
        token = await session(cluster, sender, "alice")
        assert len(cluster.calls("RegisterClient")) == 1
        assert sender.ids.client_id is not None
        assert {r.request_id[0] for r in cluster.calls("Register") if r.request_id} == {
            sender.ids.client_id
        }
        await sender.send(token, "alice", "hi", timeout_s=5)
        # The session's writes use a client id bound to it, registered with its token.
        assert [r.request.token for r in cluster.calls("RegisterClient")] == ["", token]
        assert {r.request_id[0] for r in cluster.calls("Send") if r.request_id} == {
            sender.ids.client_ids[token]
        }


@pytest.mark.parametrize("fault", UNKNOWN_OUTCOMES, ids=lambda f: f.name.lower())
async def test_an_unknown_outcome_is_resent_with_its_id_and_applied_once(fault: Fault) -> None:
    async with FakeCluster() as cluster, sender_for(cluster, call_timeout_s=0.3) as sender:
        token = await session(cluster, sender, "alice", "bob")
        cluster.script("a", "Send", fault)
        reply = await sender.send(token, "bob", "exactly once", timeout_s=10)
        attempts = send_ids(cluster)
        assert len(attempts) >= 2  # the first attempt's answer was lost
        assert {(c, s) for c, s, _ in attempts} == {(sender.ids.client_ids[token], attempts[0][1])}
        assert cluster.queued("bob") == [reply.message_id]  # applied once
        assert cluster.sent_texts("alice", "bob") == ["exactly once"]


async def test_a_definite_refusal_is_sent_once_and_answered() -> None:
    async with FakeCluster() as cluster, sender_for(cluster) as sender:
        token = await session(cluster, sender, "alice")
        with pytest.raises(RefusedError) as refused:
            await sender.send(token, "nobody", "hello?", timeout_s=5)
        assert refused.value.code is grpc.StatusCode.NOT_FOUND
        ((_, seq, _),) = send_ids(cluster)
        await session(cluster, sender, "bob")
        await sender.send(token, "bob", "hi", timeout_s=5)
        _, next_seq, first_outstanding = send_ids(cluster)[-1]
        assert next_seq > seq and first_outstanding == next_seq  # the refusal is settled


async def test_a_write_never_answered_is_unknown_and_stays_outstanding() -> None:
    async with FakeCluster() as cluster, sender_for(cluster, call_timeout_s=0.2) as sender:
        token = await session(cluster, sender, "alice", "bob")
        await sender.send(token, "bob", "first", timeout_s=5)  # the session's client exists
        for name in cluster.names:
            cluster.pause(name)  # every node takes calls and answers none
        with pytest.raises(OutcomeUnknownError, match="outcome unknown") as unknown:
            await sender.send(token, "bob", "lost in the fog", timeout_s=1.0)
        attempts = send_ids(cluster)[1:]  # after the first send
        assert len(attempts) >= 2 and {s for _, s, _ in attempts} == {unknown.value.seq}
        for name in cluster.names:
            cluster.resume(name)
        await sender.send(token, "bob", "after", timeout_s=5)
        _, seq, first_outstanding = send_ids(cluster)[-1]
        assert seq == unknown.value.seq + 1 and first_outstanding == unknown.value.seq


async def test_writes_follow_the_leader_named_in_the_answer() -> None:
    async with FakeCluster() as cluster:
        cluster.set_leader("c")
        async with sender_for(cluster) as sender:
            token = await session(cluster, sender, "alice", "bob")
            # The first call (RegisterClient) asks a, which names the leader c.
            assert [r.node for r in cluster.calls("RegisterClient")] == ["a", "c"]
            assert [r.node for r in cluster.calls("Register")] == ["c", "c"]
            await sender.send(token, "bob", "to the leader", timeout_s=5)
            assert [r.node for r in cluster.calls("Send")] == ["c"]  # remembered
            cluster.set_leader("b")
            await sender.send(token, "bob", "again", timeout_s=5)
            assert [r.node for r in cluster.calls("Send")] == ["c", "c", "b"]


async def test_one_write_at_a_time_in_the_order_asked() -> None:
    async with FakeCluster() as cluster, sender_for(cluster, call_timeout_s=0.3) as sender:
        token = await session(cluster, sender, "alice", "bob")
        cluster.script("a", "Send", Fault.APPLY_THEN_HANG)
        texts = [f"m{i}" for i in range(5)]
        await asyncio.gather(*(sender.send(token, "bob", t, timeout_s=10) for t in texts))
        assert cluster.sent_texts("alice", "bob") == texts


async def test_history_is_read_from_the_leader() -> None:
    async with FakeCluster() as cluster:
        cluster.set_leader("b")
        async with sender_for(cluster) as sender:
            token = await session(cluster, sender, "alice", "bob")
            await sender.send(token, "bob", "one", timeout_s=5)
            seen = await sender.history(token, "bob", timeout_s=5)
            assert [m.text for m in seen] == ["one"]
            await cluster.isolate("a", "b")  # no majority: no answer
            with pytest.raises(NoAnswerError):
                await sender.history(token, "bob", timeout_s=0.5)


async def test_a_drain_reads_every_message_once_across_a_broken_stream() -> None:
    async with FakeCluster() as cluster, sender_for(cluster) as sender:
        token = await session(cluster, sender, "alice", "bob")
        sent = [
            (await sender.send(token, "bob", f"m{i}", timeout_s=5)).message_id for i in range(3)
        ]
        bob = await sender.login("bob", "pw", timeout_s=5)
        cluster.duplicate_deliveries = True  # a redelivery is dropped by id

        async def break_then_send() -> None:
            while not cluster.streams:
                await asyncio.sleep(0.01)
            cluster.set_leader("b")  # ends a's streams: not the leader
            late = sender_for(cluster)
            try:
                sent.append((await late.send(token, "bob", "late", timeout_s=5)).message_id)
            finally:
                await late.close()

        helper = asyncio.create_task(break_then_send())
        received = await sender.messages(bob, idle_s=0.5, timeout_s=10)
        await helper
        assert [m.id for m in received] == sent
        assert [m.text for m in received] == ["m0", "m1", "m2", "late"]
        assert {r.node for r in cluster.calls("Subscribe")} == {"a", "b"}
        assert cluster.queued("bob") == sent  # nothing acked


async def test_a_write_whose_client_session_expired_is_sent_anew_or_reported_unknown() -> None:
    """Thesis §6.3: an expired client session is refused, never applied as new. A write sent
    once under it cannot have happened and is sent again under a new session; a write sent
    twice may have happened: it is reported unknown, not resent."""
    async with FakeCluster() as cluster, sender_for(cluster, call_timeout_s=0.3) as sender:
        token = await session(cluster, sender, "alice", "bob")
        await sender.send(token, "bob", "first", timeout_s=10)
        cluster.client_expiry()  # the sender's client sessions are forgotten
        await sender.send(token, "bob", "fresh", timeout_s=10)
        # Register/Login's client, the session's, and the session's again after the expiry.
        assert len(cluster.calls("RegisterClient")) == 3
        assert cluster.sent_texts("alice", "bob") == ["first", "fresh"]
        cluster.script("a", "Send", Fault.APPLY_THEN_SILENCE)
        with pytest.raises(OutcomeUnknownError):
            await sender.send(token, "bob", "maybe", timeout_s=10)
        assert cluster.sent_texts("alice", "bob") == ["first", "fresh", "maybe"]  # once
        await sender.send(token, "bob", "after", timeout_s=10)
        assert cluster.sent_texts("alice", "bob") == ["first", "fresh", "maybe", "after"]
