"""ChatClient and client sessions registered in the log (issue 9, Raft thesis §6.3), against
the fake cluster, whose state machine is the real one:
- the first write registers a client session (RegisterClient) and every write carries its id;
- a write refused as "client-expired" that had been sent only once under that id cannot
  have happened: it is sent again under a newly registered id;
- a write sent more than once before its session expired may or may not have been applied:
  it fails with OutcomeUnknownError and is never sent again; later writes go on.
Issue 11 ("Request ids bound to what they asked"): a chat session's writes go under a client
session bound to it (RegisterClient with the token), Register and Login under an unbound one.
"""

from __future__ import annotations

import pytest

from client.errors import OutcomeUnknownError
from node.chat.errors import Reason
from protos import vocabulary
from tests.client import fakechat
from tests.client.conftest import logged_in, make_client
from tests.client.fakechat import FakeCluster, Fault


def client_ids(cluster: FakeCluster, method: str) -> list[int]:
    return [r.request_id[0] for r in cluster.calls(method) if r.request_id is not None]


def test_the_fake_speaks_the_servers_reason_vocabulary() -> None:
    """The fake must refuse an expired client exactly as a node does, or these tests prove
    nothing about a real cluster."""
    assert fakechat.REASON_KEY is vocabulary.REASON_KEY
    # node/chat may not import protos: its reasons must be values of the wire's vocabulary
    assert {r.value for r in Reason} <= {r.value for r in vocabulary.Reason}


async def test_the_first_write_registers_a_client_session_and_reads_do_not() -> None:
    """§6.3, Fig. 6.1: 'RegisterClient RPC: Invoked by new clients to open new session'; its
    id is 'the log index of this register command'."""
    async with FakeCluster() as cluster:
        client = make_client(cluster)
        try:
            assert client.client_id is None
            await client.status("a")  # a read needs no session
            assert cluster.calls("RegisterClient") == []
            await client.register("carol", "pw")
            assert [r.method for r in cluster.received if r.method != "Status"] == [
                "RegisterClient",
                "Register",
            ]
            assert client.client_id == 1  # the first entry of the fake's log
            await client.login("carol", "pw")
            assert len(cluster.calls("RegisterClient")) == 1  # once, not per write
            assert client_ids(cluster, "Register") == client_ids(cluster, "Login") == [1]
        finally:
            await client.close()


async def test_a_lost_register_client_answer_costs_an_unused_session_only() -> None:
    """RegisterClient is not deduplicated itself (protos/chat.proto): a retry opens another
    session, and the client uses the one it was told about."""
    async with FakeCluster() as cluster:
        client = make_client(cluster, call_timeout_s=0.3)
        try:
            cluster.script("a", "RegisterClient", Fault.APPLY_THEN_UNKNOWN)
            await client.register("dora", "pw")
            assert len(cluster.calls("RegisterClient")) >= 2
            assert cluster.state.client_count >= 2  # the first one, unused, expires in time
            assert client.client_id is not None and client.client_id > 1
            assert client_ids(cluster, "Register") == [client.client_id]
        finally:
            await client.close()


async def test_an_expired_session_met_by_a_first_attempt_is_sent_again_under_a_new_id() -> None:
    """Issue 9: 'a write that had been sent only once under that id is sent again under a
    newly registered id (nothing can have happened)'."""
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice")
        try:
            first = await alice.send("alice", "first")  # registers the session's client
            [old_id] = client_ids(cluster, "Send")
            assert old_id != alice.client_id  # not the one of Register and Login (issue 11)
            cluster.client_expiry()  # alice was idle longer than client_idle_s
            pending = alice.start_send("alice", "hello")
            result = await pending.wait()
            new_id = pending.request_id[0]
            assert client_ids(cluster, "Send") == [old_id, old_id, new_id]
            assert new_id is not None and new_id > old_id
            # Register and Login's client, the session's, the session's again after expiry.
            assert len(cluster.calls("RegisterClient")) == 3
            assert cluster.queued("alice") == [first.message_id, result.message_id]
            assert [m.text for m in cluster.state.queue("alice")] == ["first", "hello"]  # once
            assert alice.pending_writes == []
        finally:
            await alice.close()


@pytest.mark.parametrize(
    "fault",
    [Fault.APPLY_THEN_SILENCE, Fault.HANG_THEN_SILENCE],
    ids=["applied-then-unknown", "hung"],
)
async def test_a_write_sent_twice_before_its_session_expired_fails_as_outcome_unknown(
    fault: Fault,
) -> None:
    """Issue 9: 'a write that was attempted more than once fails with OutcomeUnknownError
    and is not resent'. The first attempt's outcome was unknown (applied, or not); the client
    was then cut off past client_idle_s, so its retry meets an expired session: the cluster
    can no longer say whether the first attempt was applied, and resending it under a new id
    could apply it twice."""
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice", call_timeout_s=0.3)
        try:
            cluster.script("a", "Send", fault)
            with pytest.raises(OutcomeUnknownError, match="may or may not have been applied"):
                await alice.send("alice", "maybe")
            sends = cluster.calls("Send")
            assert {r.request_id for r in sends} == {sends[0].request_id}  # one id throughout
            old_id = client_ids(cluster, "Send")[0]
            # ... the id of the client bound to alice's session (issue 11), not the login's
            assert old_id != alice.client_id
            registered = cluster.calls("RegisterClient")
            assert [r.request.token for r in registered] == ["", sends[0].request.token]
            assert len([r for r in sends if r.node == "a"]) == 2  # first attempt, then refused
            applied = ["maybe"] if fault is Fault.APPLY_THEN_SILENCE else []
            assert [m.text for m in cluster.state.queue("alice")] == applied  # never twice
            assert alice.pending_writes == []

            # Not sent again, and the client goes on under a new session.
            after = await alice.send("alice", "after")
            later = cluster.calls("Send")[len(sends) :]
            assert [r.request.text for r in later] == ["after"]
            assert later[0].request_id is not None and later[0].request_id[0] != old_id
            assert len(cluster.calls("RegisterClient")) == 3  # a new one for the session
            assert cluster.queued("alice")[-1] == after.message_id
            assert [m.text for m in cluster.state.queue("alice")] == [*applied, "after"]
        finally:
            await alice.close()


async def test_session_writes_use_a_client_bound_to_it_register_and_login_the_unbound_one() -> None:
    """Issue 11, item 3: 'Request ids bound to what they asked': the client registers a client
    session bound to its chat session (RegisterClientRequest with the token) before that
    session's first write and sends, acks and logs out under it; Register and Login go under
    the unbound client, and a new login gets a newly bound client."""
    async with FakeCluster() as cluster:
        client = make_client(cluster)
        try:
            await client.register("erin", "pw")
            await client.login("erin", "pw")
            unbound = client.client_id
            assert unbound is not None
            assert [r.request.token for r in cluster.calls("RegisterClient")] == [""]

            pending = client.start_send("erin", "hi")
            sent = await pending.wait()
            await client.ack(sent.message_id)
            [send] = cluster.calls("Send")
            token = send.request.token
            bound = pending.request_id[0]
            assert [r.request.token for r in cluster.calls("RegisterClient")] == ["", token]
            assert bound is not None and bound != unbound
            assert send.request_id is not None and send.request_id[:2] == pending.request_id
            assert client_ids(cluster, "Ack") == [bound]

            await client.logout()
            await client.login("erin", "pw")
            await client.send("erin", "again")
            assert client_ids(cluster, "Logout") == [bound]
            assert client_ids(cluster, "Register") == [unbound]
            assert client_ids(cluster, "Login") == [unbound, unbound]
            second = cluster.calls("Send")[-1]
            assert second.request.token != token
            registered = cluster.calls("RegisterClient")
            assert [r.request.token for r in registered] == ["", token, second.request.token]
            assert client_ids(cluster, "Send")[-1] not in (unbound, bound)
        finally:
            await client.close()
