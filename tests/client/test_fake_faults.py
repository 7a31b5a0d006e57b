"""ChatClient against scripted faults that only the fake cluster can stage on demand: answers
lost after the write was applied, hangs past the deadline, redirects, a node frozen mid-call.

The rules under test (DESIGN.md "Chat semantics", TRAPS.md "gRPC"):
- every write carries (client_id, seq, first_outstanding); seq grows by one per write and
  first_outstanding is the lowest seq still without an answer;
- a write whose outcome is unknown (deadline, lost connection, UNKNOWN, INTERNAL) is resent
  with the same id until answered, and the cluster applies it once;
- only a definite refusal fails a write, and it is not resent;
- UNAVAILABLE with the leader in trailing metadata sends the client to that leader;
- a pinned client never asks another node.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from client.api import ConnectionState, NodeCondition, SendResult
from client.errors import (
    ClientClosedError,
    InvalidArgumentError,
    NoMajorityError,
    NotFoundError,
    NotLoggedInError,
    UnauthenticatedError,
    UnavailableError,
)
from tests.client.conftest import eventually, logged_in, make_client
from tests.client.fakechat import FakeCluster, Fault

UNKNOWN_OUTCOMES = [
    Fault.APPLY_THEN_HANG,
    Fault.APPLY_THEN_UNKNOWN,
    Fault.APPLY_THEN_INTERNAL,
    Fault.APPLY_THEN_CRASH,
]


@pytest.mark.parametrize("fault", UNKNOWN_OUTCOMES, ids=lambda f: f.name.lower())
async def test_a_send_with_unknown_outcome_is_resent_with_its_id_and_applied_once(
    fault: Fault,
) -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice", call_timeout_s=0.3)
        bob = await logged_in(cluster, "bob")
        try:
            cluster.script("a", "Send", fault)
            pending = alice.start_send("bob", "exactly once")
            result = await pending.wait()

            sends = cluster.calls("Send")
            assert len(sends) >= 2  # the first attempt's answer was lost
            ids = {(r.request_id[0], r.request_id[1]) for r in sends if r.request_id}
            assert len(ids) == 1  # every attempt carried the same request id
            assert ids == {pending.request_id}  # the id of alice's session's client
            assert cluster.queued("bob") == [result.message_id]  # applied once
            history = await bob.history("alice")
            assert [(m.id, m.text) for m in history] == [(result.message_id, "exactly once")]
            assert alice.pending_writes == []
        finally:
            await alice.close()
            await bob.close()


async def test_a_retried_register_gets_the_first_answer_not_already_exists() -> None:
    async with FakeCluster() as cluster:
        client = make_client(cluster, call_timeout_s=0.3)
        try:
            cluster.script("a", "Register", Fault.APPLY_THEN_UNKNOWN)
            await client.register("carol", "pw")  # no AlreadyExistsError from the retry
            registers = cluster.calls("Register")
            assert len(registers) >= 2
            assert len({r.request_id for r in registers}) == 1
            cluster.script("a", "Login", Fault.APPLY_THEN_HANG)
            assert await client.login("CAROL", "pw") == "carol"
            logins = cluster.calls("Login")
            assert len(logins) >= 2
            assert len({r.request_id[:2] for r in logins if r.request_id}) == 1
            assert cluster.state.session_count == 1  # the retry got the first session back
        finally:
            await client.close()


async def test_retried_logout_and_delete_get_their_first_answer() -> None:
    """The session is gone after the first attempt: only the request id can answer."""
    async with FakeCluster() as cluster:
        client = await logged_in(cluster, "olga", call_timeout_s=0.3)
        try:
            cluster.script("a", "Logout", Fault.APPLY_THEN_UNKNOWN)
            await client.logout()
            assert len(cluster.calls("Logout")) >= 2
            await client.login("olga", "pw")
            cluster.script("a", "DeleteAccount", Fault.APPLY_THEN_INTERNAL)
            await client.delete_account("pw")
            assert len(cluster.calls("DeleteAccount")) >= 2
            assert cluster.state.registered_name("olga") is None
        finally:
            await client.close()


async def test_a_call_that_hangs_without_applying_is_resent_and_applied_once() -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice", call_timeout_s=0.3)
        try:
            cluster.script("a", "Send", Fault.HANG)
            result = await alice.send("alice", "hello")
            sends = cluster.calls("Send")
            assert len(sends) >= 2
            assert len({r.request_id for r in sends}) == 1
            assert cluster.queued("alice") == [result.message_id]
        finally:
            await alice.close()


async def test_request_ids_count_up_and_name_the_first_outstanding_write() -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice", call_timeout_s=0.3)
        try:
            login_seq = cluster.calls("Login")[-1].request_id
            assert login_seq is not None
            cluster.script("a", "Send", Fault.APPLY_THEN_UNKNOWN)
            pendings = [alice.start_send("alice", f"m{i}") for i in range(3)]
            assert [p.request_id[1] for p in pendings] == [login_seq[1] + 1 + i for i in range(3)]
            results = [await p.wait() for p in pendings]
            # The sends go under the client id of alice's session, not the login's (issue 11).
            session_client = pendings[0].request_id[0]
            assert session_client is not None and session_client != login_seq[0]
            assert [p.request_id for p in pendings] == [
                (session_client, login_seq[1] + 1 + i) for i in range(3)
            ]
            seen = [r.request_id for r in cluster.calls("Send")]
            first = login_seq[1] + 1
            # Writes go one at a time, in order; the first is resent after its lost answer;
            # each names itself as the lowest without an answer.
            assert seen[0] == seen[1] == (session_client, first, first)
            assert [rid for i, rid in enumerate(seen) if i == 0 or rid != seen[i - 1]] == [
                (session_client, first, first),
                (session_client, first + 1, first + 1),
                (session_client, first + 2, first + 2),
            ]
            assert [m.text for m in await alice.history("alice")] == ["m0", "m1", "m2"]
            assert [r.message_id for r in results] == sorted(r.message_id for r in results)
        finally:
            await alice.close()


async def test_unavailable_with_leader_metadata_sends_the_client_to_the_leader() -> None:
    async with FakeCluster() as cluster:
        cluster.set_leader("c")
        client = make_client(cluster)
        try:
            await client.register("dave", "pw")  # registers a client session first
            # (and, once served, asks the leader who the members are: a Status beside)
            assert [(r.node, r.method) for r in cluster.received if r.method != "Status"] == [
                ("a", "RegisterClient"),
                ("c", "RegisterClient"),  # b never asked
                ("c", "Register"),
            ]
            assert client.leader == "c"
            assert client.current_node == "c"
            await client.login("dave", "pw")
            calls = [r for r in cluster.received if r.method != "Status"]
            assert calls[-1].node == "c"  # remembered: straight to the leader
            assert len(calls) == 4
        finally:
            await client.close()


async def test_a_follower_that_forwards_serves_the_call() -> None:
    async with FakeCluster() as cluster:
        cluster.forward = True
        cluster.set_leader("c")
        client = make_client(cluster)
        try:
            await client.register("erin", "pw")
            calls = [(r.node, r.method) for r in cluster.received if r.method != "Status"]
            assert calls == [  # (and, in the background, a is asked who leads)
                ("a", "RegisterClient"),
                ("a", "Register"),
            ]
            assert client.state is ConnectionState.OK
        finally:
            await client.close()


async def test_the_no_majority_summary_names_every_node_and_comes_in_time() -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice", overall_timeout_s=3.0)
        try:
            await cluster.isolate("a", "b")
            await cluster.kill("c")
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(NoMajorityError) as caught:
                await alice.history("bob")
            assert loop.time() - started < 1.5  # the grace, not the whole deadline
            assert caught.value.summary == (
                "no leader: a, b answer 'no majority reachable'; c unreachable"
            )
            assert caught.value.pending is None  # a read: nothing left behind
            assert alice.state is ConnectionState.NO_MAJORITY
            assert {n.name: n.condition for n in alice.nodes} == {
                "a": NodeCondition.NO_MAJORITY,
                "b": NodeCondition.NO_MAJORITY,
                "c": NodeCondition.UNREACHABLE,
            }
        finally:
            await alice.close()


async def test_no_majority_leaves_a_write_pending_and_it_lands_once_after_heal() -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice")
        states: list[ConnectionState] = []
        alice.add_state_listener(states.append)
        try:
            await cluster.isolate("a", "b", "c")
            with pytest.raises(NoMajorityError) as caught:
                await alice.send("alice", "patience")
            pending = caught.value.pending
            assert pending is not None and not pending.done()
            assert [p.what for p in alice.pending_writes] == ["send to alice"]
            await cluster.heal()
            result = await pending
            assert isinstance(result, SendResult)
            ids = {r.request_id[:2] for r in cluster.calls("Send") if r.request_id}
            assert ids == {pending.request_id}
            assert cluster.queued("alice") == [result.message_id]
            assert ConnectionState.NO_MAJORITY in states and states[-1] is ConnectionState.OK
        finally:
            await alice.close()


async def test_a_pinned_client_never_fails_over() -> None:
    async with FakeCluster() as cluster:
        pinned = make_client(cluster, servers=["b"], pinned=True, overall_timeout_s=1.5)
        try:
            with pytest.raises(UnavailableError) as caught:
                await pinned.register("gina", "pw")
            assert not isinstance(caught.value, NoMajorityError)  # b knows a leader
            assert str(caught.value).startswith(
                "cannot reach the leader: b answers 'not the leader' (leader: a at "
            )
            assert "(pinned to b: no failover)" in str(caught.value)
            assert {r.node for r in cluster.received} == {"b"}
            assert pinned.leader == "a"  # known, shown, not used

        finally:
            await pinned.close()
        await cluster.kill("b")
        dead = make_client(cluster, servers=["b"], pinned=True)
        try:
            with pytest.raises(NoMajorityError) as caught_again:
                await dead.register("gina", "pw")
            assert (
                caught_again.value.summary == "no leader: b unreachable (pinned to b: no failover)"
            )
            assert {r.node for r in cluster.received} == {"b"}
        finally:
            await dead.close()


async def test_a_frozen_leader_is_left_after_the_call_deadline() -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice", call_timeout_s=0.3)
        try:
            assert alice.current_node == "a"
            cluster.pause("a")  # accepts calls, answers none; b takes over
            await alice.send("alice", "still here")
            assert alice.current_node == "b"
            await eventually(lambda: alice.leader == "b")  # asked b who leads
        finally:
            cluster.resume("a")
            await alice.close()


async def test_a_definite_refusal_fails_the_write_without_a_retry() -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice")
        try:
            with pytest.raises(NotFoundError, match="no account named 'nobody'"):
                await alice.send("nobody", "hello?")
            with pytest.raises(InvalidArgumentError, match="must not be empty"):
                await alice.send("alice", "")
            assert len(cluster.calls("Send")) == 2
            assert alice.pending_writes == []
            # The failed writes are answered: the next one names itself first outstanding.
            await alice.send("alice", "fine")
            last = cluster.calls("Send")[-1].request_id
            assert last is not None and last[1] == last[2]
        finally:
            await alice.close()


async def test_sessions_calls_and_errors_read_as_a_person_would_expect() -> None:
    async with FakeCluster() as cluster:
        client = make_client(cluster)
        try:
            with pytest.raises(NotLoggedInError, match="log in first"):
                await client.send("bob", "hi")
            for name in ("henry", "Ida", "jack", "kim", "lee", "max", "ned"):
                await client.register(name, "pw")
            with pytest.raises(UnauthenticatedError, match="wrong username or password"):
                await client.login("henry", "wrong")
            assert await client.login("HENRY", "pw") == "henry"
            assert client.username == "henry"
            # page_size is 3 in the fake: seven names take three pages, all followed
            assert await client.list_accounts() == [
                "henry",
                "Ida",
                "jack",
                "kim",
                "lee",
                "max",
                "ned",
            ]
            assert len(cluster.calls("ListAccounts")) == 3
            assert await client.list_accounts("[hj]*") == ["henry", "jack"]
            assert await client.list_accounts(limit=2) == ["henry", "Ida"]
            status = await client.status("b")
            assert (status.node_id, status.role, status.leader_id) == ("b", "follower", "a")
            await client.logout()
            assert not client.logged_in
            await client.login("jack", "pw")
            with pytest.raises(UnauthenticatedError, match="wrong password"):
                await client.delete_account("nope")
            await client.delete_account("pw")
            assert not client.logged_in
            assert cluster.state.registered_name("jack") is None
        finally:
            await client.close()


async def test_close_leaves_no_task_and_reports_what_stayed_pending(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FakeCluster() as cluster:
        alice = await logged_in(cluster, "alice")
        await cluster.isolate("a", "b", "c")
        pending = alice.start_send("alice", "never answered")
        await asyncio.sleep(0.1)
        with caplog.at_level(logging.INFO, logger="client.api"):
            await alice.close()
        assert "send to alice" in caplog.text
        with pytest.raises(ClientClosedError, match="outcome is unknown"):
            await pending
        assert alice.state is ConnectionState.CLOSED
        with pytest.raises(ClientClosedError):
            await alice.history("alice")
