"""Random command sequences: replicas fed the same entries end identical (the same rows, the
same digest, and each digest kept by apply equal to a full scan's), a replica that installed a
copy of the database made mid-way catches up to the same state, and no acknowledged message is
lost or doubled along the way (checked against a plain model of every queue). The log carries
client registrations (RegisterClient) and the leader's Ticks among the writes; client sessions
expire, and a retry from an expired one is refused, never applied as new (thesis §6.3). As the
client library does (issue 11), a client writes Register and Login under a client session
without a chat session and each session's writes under one bound to it; now and then a write is
made under another session's client id, and is refused without touching that client."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hypothesis import event, given, settings
from hypothesis import strategies as st

from node.chat.commands import (
    Ack,
    Command,
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
    session_of,
)
from node.chat.errors import ChatError, ErrorCode, Reason
from node.chat.replies import ApplyResult, Outcome, RegisterClientReply, TickReply
from node.chat.state import ChatState
from node.config import ChatLimits

from .conftest import Node, assert_alike, copy_of, fast_hash

LIMITS = ChatLimits(
    queue_limit=4, history_per_pair=3, session_idle_s=20, client_idle_s=10, page_size=2
)
USERS = ["ann", "Ann", "bo", "cy"]
HASHES = [fast_hash("pw", f"salt-{i}".encode()) for i in range(2)]
CLIENTS = ["k1", "k2", "k3"]

ARGUMENTS = {
    "register": st.tuples(st.sampled_from(USERS), st.integers(0, 1)),  # which salt
    "login": st.tuples(st.sampled_from(USERS), st.integers(0, 3)),  # 0: a wrong password
    "logout": st.tuples(st.integers(0, 7)),  # which token
    "send": st.tuples(
        st.integers(0, 7), st.sampled_from([*USERS, "zz"]), st.sampled_from(["hi", "✓", "", "x"])
    ),
    "ack": st.tuples(st.integers(0, 7), st.integers(0, 40)),
    "delete": st.tuples(st.integers(0, 7)),
    # ms; now and then a client's silence past client_idle_s
    "advance": st.tuples(st.integers(0, 8_000) | st.just(LIMITS.client_idle_s * 1000 + 1)),
    "retry": st.tuples(st.integers(0, 50)),  # which earlier entry
    "late_retry": st.tuples(st.integers(0, 50)),  # the same, from a client cut off for long
    "noop": st.tuples(st.just(0)),
    "register_client": st.tuples(st.just(0)),  # the client starts a new session
    "tick": st.tuples(st.just(0)),  # the leader moves log time on a quiet cluster
    # a send with one session's token under another's client id (which one, its seq ahead)
    "foreign": st.tuples(st.integers(0, 7), st.integers(0, 20), st.integers(0, 5)),
}
# Sends and acks are the traffic; the rest is what disturbs it.
KINDS = ["send"] * 8 + ["ack"] * 3 + ["register", "login"] * 2
KINDS += ["logout", "delete", "advance", "advance", "retry", "retry", "noop"]
KINDS += ["register_client", "tick", "late_retry", "foreign"]
op = st.sampled_from(KINDS).flatmap(lambda k: ARGUMENTS[k].map(lambda args: (k, *args)))
Op = tuple[tuple[object, ...], str, int, int]  # (operation, client, lag, clock skew)
PRELUDE: list[Op] = [
    *((("register", name, 0), "k1", 0, 0) for name in ("ann", "bo", "cy")),
    *((("login", name, 1), "k2", 0, 0) for name in ("ann", "bo", "cy")),
]
programs = st.tuples(
    st.lists(
        st.tuples(op, st.sampled_from(CLIENTS), st.integers(0, 3), st.integers(-2000, 0)),
        min_size=10,
        max_size=80,
    ),
    st.integers(0, 90),
)


@dataclass
class Log:
    """Committed entries as the driver hands them out: (index, data), or (index, None)
    for an entry without chat data."""

    entries: list[tuple[int, bytes | None]] = field(default_factory=list)

    def apply_to(self, state: ChatState, start: int = 0) -> list[ApplyResult | None]:
        results: list[ApplyResult | None] = []
        for index, data in self.entries[start:]:
            if data is None:
                state.skip(index)
                results.append(None)
            else:
                results.append(state.apply(index, data))
        return results


@dataclass
class Model:
    """What a correct chat must hold: per user, the ids of its unacked messages in order."""

    queues: dict[str, list[int]] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)  # token -> user key
    last_id: int = 0
    first: dict[tuple[int, int], Outcome] = field(default_factory=dict)  # (client, seq) -> reply
    active_ms: dict[int, int] = field(default_factory=dict)  # live client id -> last use
    bound: dict[int, str] = field(default_factory=dict)  # client id -> its token ("": none)
    # client id -> the first_outstanding the state holds: below it, requests are stale
    outstanding: dict[int, int] = field(default_factory=dict)
    highest_client_id: int = 0

    def expire(self, now: int) -> None:
        for idle in [c for c, t in self.active_ms.items() if now - t > LIMITS.client_idle_s * 1000]:
            del self.active_ms[idle]
            self.first = {k: v for k, v in self.first.items() if k[0] != idle}

    def live(self, client_id: int | None, now: int) -> bool:
        """Whether the state will still know this client when an entry at `now` is applied."""
        self.expire(now)
        return client_id in self.active_ms

    def update(self, index: int, cmd: Command, result: ApplyResult, log_time_ms: int) -> None:
        if isinstance(cmd, RegisterClient):
            self.expire(log_time_ms)
            if cmd.session and not result.ok:  # bound to a session no longer live: refused
                assert isinstance(result.outcome, ChatError)
                assert result.outcome.code is ErrorCode.UNAUTHENTICATED
                return
            assert result.outcome == RegisterClientReply(index)  # the id is the log index
            self.active_ms[index] = log_time_ms
            self.bound[index] = cmd.session
            self.outstanding[index] = 0
            self.highest_client_id = index
            return
        self._check_once(cmd, result, log_time_ms)
        if result.duplicate or not result.ok:
            return
        if isinstance(cmd, Register):
            self.queues[cmd.username.lower()] = []
        elif isinstance(cmd, Login):
            self.owners[cmd.session] = cmd.username.lower()
        elif isinstance(cmd, Send):
            assert result.message is not None
            assert result.message.id > self.last_id  # ids only grow
            assert result.message.timestamp_ms == cmd.timestamp_ms  # the proposer's clock
            self.last_id = result.message.id
            self.queues[cmd.recipient.lower()].append(result.message.id)
        elif isinstance(cmd, Ack):
            user = self.owners[cmd.session]
            self.queues[user] = [i for i in self.queues[user] if i > cmd.up_to_id]
        elif isinstance(cmd, DeleteAccount):
            del self.queues[self.owners[cmd.session]]

    def _check_once(self, cmd: Command, result: ApplyResult, now: int) -> None:
        """§6.3: a request already applied is answered with its first reply (or, once the
        client said it has that reply, refused as stale). Once its client was idle past
        client_idle_s and forgotten, it is refused as expired and applies nothing: 'the
        outcome of earlier requests is unknown', never a new request."""
        if cmd.request is None:
            return
        client, seq = cmd.request.client_id, cmd.request.seq
        self.expire(now)
        key = (client, seq)
        if client not in self.active_ms:
            assert client <= self.highest_client_id  # the builder only uses issued ids
            assert isinstance(result.outcome, ChatError), "an expired client's request applied"
            assert result.outcome.code is ErrorCode.FAILED_PRECONDITION
            assert result.outcome.reason is Reason.CLIENT_EXPIRED
            assert not result.duplicate and result.message is None
        elif self.bound[client] != _session_used(cmd):
            # Issue 11: another session's client, refused before anything of it is touched
            # (not refreshed, nothing remembered, first_outstanding where it was).
            assert isinstance(result.outcome, ChatError), "a write used another's client"
            assert result.outcome.code is ErrorCode.INVALID_ARGUMENT
            assert result.outcome.message.startswith(f"client {client} ")
            assert not result.duplicate and result.message is None
        elif result.duplicate:
            assert result.outcome == self.first[key]
            self.active_ms[client] = now
        elif key in self.first:
            assert isinstance(result.outcome, ChatError), "a remembered request applied twice"
            assert "stale" in result.outcome.message
        elif seq < self.outstanding[client]:
            assert isinstance(result.outcome, ChatError), "a stale request applied"
            assert "stale" in result.outcome.message
        else:
            assert not (isinstance(result.outcome, ChatError) and "stale" in str(result.outcome))
            self.first[key] = result.outcome
            self.active_ms[client] = now
            fo = max(self.outstanding[client], cmd.request.first_outstanding)
            self.outstanding[client] = fo
            self.first = {k: v for k, v in self.first.items() if k[0] != client or k[1] >= fo}

    def check(self, state: ChatState) -> None:
        assert state.account_count == len(self.queues)
        for user, ids in self.queues.items():
            assert [m.id for m in state.queue(user)] == ids, user
            assert len(ids) <= LIMITS.queue_limit


def _session_used(cmd: Command) -> str:
    """The session a write is made with: its hash, or "" for Register and Login."""
    if isinstance(cmd, Register | Login):
        return ""
    return str(getattr(cmd, "session", ""))


def _expired(result: ApplyResult) -> bool:
    outcome = result.outcome
    return isinstance(outcome, ChatError) and outcome.reason is Reason.CLIENT_EXPIRED


def _foreign(result: ApplyResult) -> bool:
    outcome = result.outcome
    return isinstance(outcome, ChatError) and outcome.message.startswith("client ")


def _is_live(state: ChatState, token: str) -> bool:
    try:
        state.authenticate(token)
    except ChatError:
        return False
    return True


def build(ops: list[Op], cut: int) -> tuple[Log, list[ApplyResult | None], ChatState]:
    """Plays the accepting node on a leader's state: builds each command from what it reads,
    applies it, and checks every queue against the model after each entry. Returns the log,
    the leader's results and a replica that installed a copy of the leader's database at
    index `cut` (an empty state if the log is shorter)."""
    leader = ChatState(LIMITS)
    log = Log()
    model = Model()
    results: list[ApplyResult | None] = []
    tokens: list[str] = []
    seqs: dict[tuple[str, str], int] = {}
    # (client name, token or "" for Register and Login) -> the id of its current session
    client_ids: dict[tuple[str, str], int] = {}
    now = 1_000
    snapshot_at_cut: ChatState | None = None

    def append(cmd: Command | None) -> int:
        nonlocal snapshot_at_cut
        index = len(log.entries) + 1
        if cmd is None:  # an entry without chat data (a leader's no-op)
            log.entries.append((index, None))
            leader.skip(index)
            results.append(None)
        else:
            data = encode(cmd)
            log.entries.append((index, data))
            result = leader.apply(index, data)
            results.append(result)
            model.update(index, cmd, result, leader.log_time_ms)
        model.check(leader)
        if index == cut:
            snapshot_at_cut = copy_of(leader)
        return index

    def next_request(client: str, ts: int, lag: int, token: str = "") -> RequestId | None:
        """The client's next request id for writes made with `token`. Like the client
        library, it registers a client session (bound to the session `token`, if any) at
        its first such write, and when that one has expired; None if the cluster refused to
        bind one (the session is no longer live), so the write is never made."""
        key = (client, token)
        if not model.live(client_ids.get(key), max(ts, leader.log_time_ms)):
            cmd = RegisterClient(timestamp_ms=ts, log_time_ms=ts, session=token)
            index = append(cmd)
            result = results[-1]
            if result is None or not result.ok:
                client_ids.pop(key, None)
                return None
            client_ids[key] = index
        seqs[key] = seq = seqs.get(key, 0) + 1
        return RequestId(client_ids[key], seq, max(0, seq - lag))

    for step, (what, client, lag, skew) in enumerate(ops):
        kind = what[0]
        ts = max(0, now + skew)  # a node whose clock is a little behind (and not clamped)

        def token(i: object) -> str:
            """Mostly a live session's token (0-5), sometimes any token ever issued."""
            live = [t for t in tokens if _is_live(leader, t)]
            pool = live if int(str(i)) < 6 and live else tokens
            return pool[int(str(i)) % len(pool)] if pool else session_of("none")

        cmd: Command | None = None
        tok = token(what[1]) if kind in ("logout", "send", "ack", "delete", "foreign") else ""
        rid: RequestId | None = None
        if kind in ("register", "login", "logout", "send", "ack", "delete"):
            rid = next_request(client, ts, lag, tok)
            if rid is None:  # no client could be bound to that session: the write is not made
                continue
        if kind == "register":
            name, which = str(what[1]), int(str(what[2]))
            cmd = Register(
                timestamp_ms=ts,
                log_time_ms=ts,
                request=rid,
                username=name,
                password_hash=HASHES[which],
            )
        elif kind == "login":
            stored = leader.account_hash(str(what[1]))
            digest = stored.digest if stored and what[2] else b"\x00" * 32
            cmd = Login(
                timestamp_ms=ts,
                log_time_ms=ts,
                request=rid,
                username=str(what[1]),
                session=session_of(f"tok{step}"),
                verified_digest=digest,
            )
            tokens.append(cmd.session)
        elif kind == "logout":
            cmd = Logout(
                timestamp_ms=ts,
                log_time_ms=ts,
                request=rid,
                session=tok,
            )
        elif kind == "send":
            cmd = Send(
                timestamp_ms=ts,
                log_time_ms=ts,
                request=rid,
                session=tok,
                recipient=str(what[2]),
                text=str(what[3]),
            )
        elif kind == "ack":
            cmd = Ack(
                timestamp_ms=ts,
                log_time_ms=ts,
                request=rid,
                session=tok,
                up_to_id=int(str(what[2])),
            )
        elif kind == "delete":
            cmd = DeleteAccount(
                timestamp_ms=ts,
                log_time_ms=ts,
                request=rid,
                session=tok,
            )
        elif kind == "advance":
            now += int(str(what[1]))
            continue
        elif kind in ("retry", "late_retry"):  # a client's retry after a failover
            earlier = [d for _, d in log.entries if d is not None]
            if earlier:
                cmd = decode(earlier[-1 - int(str(what[1])) % len(earlier)])  # recent ones first
            if kind == "late_retry" and cmd is not None:
                # ... cut off for longer than client_idle_s, and stamped anew when it is sent
                now += LIMITS.client_idle_s * 1000 + 1
                cmd = replace(cmd, timestamp_ms=now, log_time_ms=now)
        elif kind == "register_client":  # a new session, whose answer may have been lost
            # (its client for Register and Login)
            client_ids[(client, "")] = append(RegisterClient(timestamp_ms=ts, log_time_ms=ts))
            continue
        elif kind == "tick":
            cmd = Tick(timestamp_ms=ts, log_time_ms=ts)
        elif kind == "foreign":  # issue 11: another session's client id, its seq ahead
            others = [key for key in client_ids if key[1] != tok]
            if not others:
                continue
            key = others[int(str(what[2])) % len(others)]
            seq = seqs.get(key, 0) + 1 + int(str(what[3]))
            cmd = Send(
                timestamp_ms=ts,
                log_time_ms=ts,
                request=RequestId(client_ids[key], seq, seq),  # would make the owner stale
                session=tok,
                recipient="ann",
                text="foreign",
            )
        append(cmd)
    return log, results, snapshot_at_cut or ChatState(LIMITS)


@settings(max_examples=150, deadline=None)
@given(programs)
def test_replicas_fed_the_same_entries_end_identical(
    program: tuple[list[Op], int],
) -> None:
    ops, cut = program
    log, leader_results, snapshot_at_cut = build(PRELUDE + ops, cut)
    applied = [r for r in leader_results if r is not None]
    event(f"messages: {min(4, sum(r.message is not None for r in applied))}+")
    for what, happened in [
        ("a duplicate answered", any(r.duplicate for r in applied)),
        ("a session ended", any(r.ended_sessions for r in applied)),
        ("a queue full", any(not r.ok and "undelivered" in str(r.outcome) for r in applied)),
        ("a stale request", any(not r.ok and "stale" in str(r.outcome) for r in applied)),
        ("an expired client refused", any(_expired(r) for r in applied)),
        ("a tick", any(isinstance(r.outcome, TickReply) for r in applied)),
        ("another's client refused", any(_foreign(r) for r in applied)),
    ]:
        event(f"{what}: {happened}")
    follower = ChatState(LIMITS)
    assert log.apply_to(follower) == leader_results
    restored = copy_of(follower)

    # A follower that fell behind: InstallSnapshot at the cut, then the rest of the log.
    late = snapshot_at_cut
    start = late.applied_index
    assert start == (cut if cut <= len(log.entries) else 0)
    assert log.apply_to(late, start) == leader_results[start:]

    # the same rows and digest everywhere, and each digest (kept by apply) the full scan's
    assert_alike(late, follower, restored)
    for state in (late, follower, restored):
        state.close()


def test_replicas_agree_on_a_log_with_registrations_ticks_and_an_expired_retry() -> None:
    """Issue 9: client sessions are registered in the log and expire in log time, so every
    replica that applies the same entries knows the same clients and refuses the same
    expired retry: same results, same digest, also from a snapshot taken half-way."""
    node = Node(LIMITS, log_clock=True)
    alice = node.user("ann")
    send = node.send_cmd(alice, "ann", "hello")
    node.apply(send)
    node.advance(1.5)
    node.tick()
    cut = node.index
    late_replica = copy_of(node.state)
    node.advance(LIMITS.client_idle_s + 1)
    node.tick()  # expires the client on a quiet cluster
    late = replace(send, timestamp_ms=node.now_ms, log_time_ms=node.log_time_ms())
    refused = node.apply(late)
    assert _expired(refused)
    node.sent(node.login("ann"), "ann", "again")  # under a newly registered client
    kinds = [decode(data).KIND.value for _, data in node.entries if data is not None]
    # Register and Login's client and the session's, then both again after the expiry
    assert kinds.count("register_client") == 4 and kinds.count("tick") == 2

    follower = ChatState(LIMITS)
    log = Log(list(node.entries))
    assert log.apply_to(follower) == node.results
    assert log.apply_to(late_replica, cut) == node.results[cut:]
    assert_alike(follower, late_replica, node.state)
    assert [m.text for m in follower.queue("ann")] == ["hello", "again"]
