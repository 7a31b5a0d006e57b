"""Client sessions registered in the log and one log clock (issue 9, Raft thesis §6.3): an
expired client's retry is refused, never applied as new, and no single machine's wall clock
can expire a session early."""

from __future__ import annotations

from dataclasses import replace

import pytest

from node.chat import state as state_module
from node.chat.commands import RegisterClient, RequestId, Send, encode
from node.chat.errors import ChatError, ErrorCode, Reason
from node.chat.replies import RegisterClientReply, TickReply
from node.chat.state import ChatState

from .conftest import SMALL_LIMITS, Node, assert_alike, copy_of, read_rows

HOUR_S = 3600


def retry(node: Node, cmd: Send) -> Send:
    """The same request again, stamped anew by the node that accepts it this time."""
    return replace(cmd, timestamp_ms=node.now_ms, log_time_ms=node.log_time_ms())


def texts(node: Node, user: str) -> list[str]:
    return [m.text for m in node.state.queue(user)]


def expired(node: Node, cmd: Send) -> ChatError:
    err = node.refused(cmd, ErrorCode.FAILED_PRECONDITION)
    assert err.reason is Reason.CLIENT_EXPIRED
    assert err.message.startswith(
        "client session expired: the outcome of earlier requests is unknown"
    )
    return err


def test_register_client_hands_out_its_log_index() -> None:
    """§6.3, Fig. 6.1, RegisterClient: 'Reply OK with unique client identifier (the log index
    of this register command can be used)'."""
    node = Node()
    node.register("alice")  # the helper's client registers at index 1, the account at 2
    result = node.apply(RegisterClient(timestamp_ms=node.now_ms, log_time_ms=node.now_ms))
    assert result.outcome == RegisterClientReply(3) and result.request is None
    assert node.register_client() == 4
    assert node.state.client_count == 3


@pytest.mark.parametrize("how", ["its clock jumps", "a new leader's clock is ahead"])
def test_a_wall_clock_two_hours_ahead_does_not_expire_a_dedup_entry(how: str) -> None:
    """The review's reproduction (issue 9: 'log time = max(previous, min(wall, previous +
    monotonic elapsed since previous was set))'; TRAPS.md: 'never let an expiry turn a retry
    into a new request'). The Send's answer is lost; the leader's wall clock is then 2 h
    ahead (client_idle_s is 50 s here); the client's retry one second later must be answered
    from the table, not applied again."""
    node = Node(log_clock=True)
    alice = node.user("alice")
    send = node.send_cmd(alice, "alice", "hello")
    first = node.apply(send)
    assert first.ok
    before = node.state.log_time_ms
    if how == "its clock jumps":
        node.clock.jump_wall(2 * HOUR_S)
    else:
        node.new_leader(wall_ahead_s=2 * HOUR_S)
    node.advance(1)
    again = node.apply(retry(node, send))
    assert again.duplicate and again.outcome == first.outcome
    assert texts(node, "alice") == ["hello"]  # not ['hello', 'hello']
    assert node.state.log_time_ms - before <= 1_000  # moved by monotonic time only
    assert node.state.authenticate(alice) == "alice"  # the login session lives on, too


def test_a_client_cut_off_past_client_idle_s_is_refused_as_expired_not_applied_again() -> None:
    """§6.3, Fig. 6.1, ClientRequest: 'If expired session, reply SESSION_EXPIRED'. Issue 9: a
    request whose client id is not in the table but at or below the highest id ever issued
    is refused with FAILED_PRECONDITION, reason CLIENT_EXPIRED, 'never applied as new'."""
    node = Node(log_clock=True)
    alice = node.user("alice")
    send = node.send_cmd(alice, "alice", "hello")
    assert node.apply(send).ok  # ... and the answer is lost
    clients = node.state.client_count
    node.advance(SMALL_LIMITS.client_idle_s + 1)  # the client is cut off that long
    assert send.request is not None
    err = expired(node, retry(node, send))
    assert f"client {send.request.client_id}" in err.message
    assert texts(node, "alice") == ["hello"]  # the old code queued it a second time
    # Both of alice's clients (Register and Login's, her session's) idled out: forgotten, and
    # not brought back.
    assert clients == 2 and node.state.client_count == 0
    expired(node, retry(node, send))  # the refusal is not remembered as an outcome: again
    assert texts(node, "alice") == ["hello"]
    # A new session (the client library registers one) works.
    node.sent(node.login("alice"), "alice", "world")
    assert texts(node, "alice") == ["hello", "world"]


def test_at_exactly_client_idle_s_the_retry_is_still_answered_from_the_table() -> None:
    """Clients idle past client_idle_s are forgotten: not one that idled exactly that long."""
    node = Node(log_clock=True)
    alice = node.user("alice")
    send = node.send_cmd(alice, "alice", "hello")
    first = node.apply(send)
    node.advance(SMALL_LIMITS.client_idle_s)
    again = node.apply(retry(node, send))
    assert again.duplicate and again.outcome == first.outcome
    assert texts(node, "alice") == ["hello"]


def test_an_id_never_issued_is_invalid_and_not_taken_for_a_new_client() -> None:
    """Issue 9: 'an id above it gets INVALID_ARGUMENT "never registered"'."""
    node = Node()
    alice = node.user("alice")
    clients = node.state.client_count
    never = RequestId(node.index + 100, 1, 1)
    err = node.refused(node.send_cmd(alice, "alice", request=never), ErrorCode.INVALID_ARGUMENT)
    assert "never registered" in err.message and err.reason is None
    assert texts(node, "alice") == []
    assert node.state.client_count == clients
    assert node.state.remembered_replies(never.client_id) == 0
    node.refused(node.send_cmd(alice, "alice", request=never), ErrorCode.INVALID_ARGUMENT)
    assert texts(node, "alice") == []  # asked again: still refused, still nothing applied


def test_a_tick_moves_log_time_so_a_quiet_cluster_expires_sessions() -> None:
    """Issue 9: 'A new command Tick (no request id) only moves log time; the leader proposes
    one when log time has stood still for a second so sessions expire on a quiet cluster'."""
    node = Node(log_clock=True)
    alice = node.user("alice")
    send = node.send_cmd(alice, "alice", "hello")
    node.apply(send)
    accounts, queued = node.state.account_count, texts(node, "alice")
    node.advance(SMALL_LIMITS.session_idle_s + 1)  # past both idle times; nothing is written
    # alice's clients: the one of Register and Login, the one bound to her session
    assert node.state.client_count == 2 and node.state.session_count == 1
    result = node.tick()
    assert result.outcome == TickReply() and result.request is None
    assert result.ended_sessions == (alice,)  # the session ended at the Tick's log time
    assert node.state.client_count == 0 and node.state.session_count == 0
    assert node.state.log_time_ms == node.clock.wall  # moved on with the leader's clocks
    assert (node.state.account_count, texts(node, "alice")) == (accounts, queued)
    expired(node, retry(node, send))


def test_the_least_recently_used_client_expires_when_the_table_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 9: 'The table is bounded (MAX_CLIENTS, least recently used expires)' — and an
    evicted client is refused as expired like an idle one."""
    monkeypatch.setattr(state_module, "MAX_CLIENTS", 3)
    node = Node()
    alice = node.user("alice")  # client "client", for Register and Login
    old = node.send_cmd(alice, "alice", "old", request=node.request("old", alice))
    assert node.apply(old).ok
    node.send(alice, "alice", "refresh")  # "client" for alice's session, used after "old"
    node.client_id("b")  # a fourth client: "client" of Register and Login is evicted
    node.client_id("c")  # a fifth: "old" is the least recently used
    assert node.state.client_count == 3
    expired(node, retry(node, old))
    assert texts(node, "alice") == ["old", "refresh"]


def test_a_session_holds_a_bounded_number_of_clients_and_its_own_lru_one_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 11: 'The dedup table has a total bound and a per-session bound, and evicts the
    least recently used entry.' A session registering clients without end pushes out only its
    own, never another user's."""
    monkeypatch.setattr(state_module, "MAX_CLIENTS_PER_SESSION", 3)
    node = Node()
    alice, bob = node.user("alice"), node.user("bob")
    bobs = node.send_cmd(bob, "bob", "bob's", request=node.request("bob", bob))
    assert node.apply(bobs).ok
    first = node.send_cmd(alice, "alice", "first", request=node.request("a0", alice))
    assert node.apply(first).ok
    for name in ("a1", "a2", "a3"):  # three more of alice's: a0 is her least recently used
        node.client_id(name, alice)
    expired(node, retry(node, first))
    again = node.apply(retry(node, bobs))
    assert again.duplicate and again.ok  # bob's client is untouched
    assert node.state.client_count == 1 + 3 + 1  # unbound "client", alice's 3, bob's 1


def test_a_flood_of_clients_without_a_session_evicts_only_its_own_kind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Anyone may register a client for Register and Login: those are bounded apart, so a
    flood of them cannot expire a logged-in user's client."""
    monkeypatch.setattr(state_module, "MAX_UNBOUND_CLIENTS", 4)
    node = Node()
    alice = node.user("alice")
    send = node.send_cmd(alice, "alice", "kept", request=node.request("alice", alice))
    assert node.apply(send).ok
    for _ in range(50):
        node.register_client()
    assert node.state.client_count == 4 + 1
    again = node.apply(retry(node, send))
    assert again.duplicate and again.ok


def test_the_replies_held_in_all_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The total bound: past MAX_REPLIES the least recently used client goes with its
    replies, and its retry is refused as expired, never applied as new."""
    monkeypatch.setattr(state_module, "MAX_REPLIES", 6)
    node = Node(replace(SMALL_LIMITS, queue_limit=100))
    alice = node.user("alice")
    sends = []
    for client in ("c1", "c2", "c3"):
        rid = node.client_id(client, alice)
        for seq in (1, 2, 3):  # first_outstanding 1: every reply is kept
            cmd = node.send_cmd(alice, "alice", f"{client}-{seq}", request=RequestId(rid, seq, 1))
            assert node.apply(cmd).ok
            sends.append(cmd)
    assert sum(node.state.remembered_replies(c) for c in range(1, node.index + 1)) <= 6
    expired(node, retry(node, sends[0]))  # c1 went first
    assert node.apply(retry(node, sends[-1])).duplicate  # c3's replies are still held
    assert texts(node, "alice").count("c1-1") == 1


def test_evictions_are_alike_on_every_replica_and_survive_a_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state_module, "MAX_CLIENTS_PER_SESSION", 2)
    monkeypatch.setattr(state_module, "MAX_REPLIES", 5)
    node = Node()
    alice = node.user("alice")
    for i in range(24):
        node.apply(node.send_cmd(alice, "alice", f"m{i}", request=node.request(f"c{i % 4}", alice)))
    twin = copy_of(node.state)
    replica = ChatState(SMALL_LIMITS)
    for index, data in node.entries:
        assert data is not None
        replica.apply(index, data)
    assert_alike(twin, replica, node.state)
    # ... and they go on alike: a new client pushes out another of alice's
    node.apply(node.send_cmd(alice, "alice", "more", request=node.request("c9", alice)))
    for state in (twin, replica):
        for index, data in node.entries:
            if index > state.applied_index:
                assert data is not None
                state.apply(index, data)
    assert_alike(twin, replica, node.state)
    assert node.state.client_count == 1 + 2  # unbound "client", and alice's bound 2


def test_log_time_is_the_largest_applied_and_the_shown_time_the_proposers() -> None:
    """Issue 9: 'The state machine's log time is the max of applied log_time_ms, and all
    expiry uses it. The timestamp shown with a message ... is now the command's
    timestamp_ms (proposer's wall clock), not log time'."""
    node = Node(log_clock=True)
    alice = node.user("alice")
    node.clock.jump_wall(-600)  # the leader's wall clock falls ten minutes behind
    node.advance(2)
    before = node.state.log_time_ms
    message = node.sent(alice, "alice", "late")
    assert message.timestamp_ms == node.now_ms  # shown as that node's clock says
    assert node.state.log_time_ms == before  # a clock behind holds log time still
    assert node.state.authenticate(alice) == "alice"


def test_a_snapshot_keeps_the_highest_client_id_and_the_expired_refusal() -> None:
    """Issue 9: 'snapshot has "highest_client_id"': a replica restored from a snapshot taken
    after a client expired still refuses its retry as expired (not as never registered), and
    one above every issued id as never registered."""
    node = Node(log_clock=True)
    alice = node.user("alice")
    send = node.send_cmd(alice, "alice", "hello")
    node.apply(send)
    node.advance(SMALL_LIMITS.client_idle_s + 1)
    node.tick()  # the client is forgotten now, before the snapshot
    assert node.state.client_count == 0
    twin = copy_of(node.state)
    assert_alike(twin, node.state)
    [(highest,)] = read_rows(twin, "SELECT highest_client_id FROM meta")
    assert send.request is not None and highest == send.request.client_id  # the expired one
    late = retry(node, send)
    never = replace(late, request=RequestId(node.index + 1, 1, 1))
    for state in (node.state, twin):
        index = node.index
        for cmd, code in [
            (late, ErrorCode.FAILED_PRECONDITION),
            (never, ErrorCode.INVALID_ARGUMENT),
        ]:
            index += 1
            outcome = state.apply(index, encode(cmd)).outcome
            assert isinstance(outcome, ChatError) and outcome.code is code, outcome
    assert_alike(twin, node.state)
    assert [m.text for m in twin.queue("alice")] == ["hello"]


def test_admit_is_the_one_read_before_a_write_is_proposed() -> None:
    """Issue 11's refusal before the log, in one read (server._require_session): a live
    session passes; a retry the table answered passes whatever its session (the log gives
    its first reply); an unknown session is UNAUTHENTICATED; an expired client hears so
    (before anything about its session); an id never issued is INVALID_ARGUMENT."""
    node = Node(log_clock=True)
    alice = node.user("alice")
    send = node.send_cmd(alice, "alice", "hello")
    assert send.request is not None
    node.state.admit(send.request, alice)  # live
    with pytest.raises(ChatError) as unknown:
        node.state.admit(send.request, "f" * 64)
    assert unknown.value.code is ErrorCode.UNAUTHENTICATED
    assert node.apply(send).ok
    node.state.admit(send.request, "f" * 64)  # answered: a retry goes to the log
    node.advance(SMALL_LIMITS.client_idle_s + 1)
    node.apply(retry(node, node.send_cmd(node.user("bob"), "bob", "tick")))  # log time moves
    following = RequestId(send.request.client_id, send.request.seq + 1, send.request.seq + 1)
    with pytest.raises(ChatError) as gone:
        node.state.admit(following, "f" * 64)
    assert gone.value.reason is Reason.CLIENT_EXPIRED
    never = RequestId(client_id=10**6, seq=1, first_outstanding=1)
    with pytest.raises(ChatError) as invalid:
        node.state.admit(never, alice)
    assert invalid.value.code is ErrorCode.INVALID_ARGUMENT
