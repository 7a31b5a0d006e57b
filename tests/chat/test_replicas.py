"""Random command sequences: replicas fed the same entries end identical, a replica restored
from a mid-way snapshot catches up to the same state, and no acknowledged message is lost or
doubled along the way (checked against a plain model of every queue)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, given, settings
from hypothesis import strategies as st

from node.chat.commands import (
    Ack,
    Command,
    DeleteAccount,
    Login,
    Logout,
    Register,
    RequestId,
    Send,
    decode,
    encode,
)
from node.chat.errors import ChatError
from node.chat.replies import ApplyResult, Outcome
from node.chat.state import ChatState
from node.config import ChatLimits

from .conftest import fast_hash

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
    "advance": st.tuples(st.integers(0, 8_000)),  # ms
    "retry": st.tuples(st.integers(0, 50)),  # which earlier entry
    "noop": st.tuples(st.just(0)),
}
# Sends and acks are the traffic; the rest is what disturbs it.
KINDS = ["send"] * 8 + ["ack"] * 3 + ["register", "login"] * 2
KINDS += ["logout", "delete", "advance", "advance", "retry", "retry", "noop"]
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
    first: dict[tuple[str, int], Outcome] = field(default_factory=dict)  # (client, seq) -> reply
    active_ms: dict[str, int] = field(default_factory=dict)  # client -> last applied write

    def update(self, cmd: Command, result: ApplyResult, log_time_ms: int) -> None:
        self._check_once(cmd, result, log_time_ms)
        if result.duplicate or not result.ok:
            return
        if isinstance(cmd, Register):
            self.queues[cmd.username.lower()] = []
        elif isinstance(cmd, Login):
            self.owners[cmd.token] = cmd.username.lower()
        elif isinstance(cmd, Send):
            assert result.message is not None
            assert result.message.id > self.last_id  # ids only grow
            self.last_id = result.message.id
            self.queues[cmd.recipient.lower()].append(result.message.id)
        elif isinstance(cmd, Ack):
            user = self.owners[cmd.token]
            self.queues[user] = [i for i in self.queues[user] if i > cmd.up_to_id]
        elif isinstance(cmd, DeleteAccount):
            del self.queues[self.owners[cmd.token]]

    def _check_once(self, cmd: Command, result: ApplyResult, now: int) -> None:
        """§6.3: a request already applied is answered with its first reply (or, once the
        client said it has that reply, refused as stale); it applies again only if its client
        was idle past client_idle_s and forgotten."""
        if cmd.request is None:
            return
        client, seq = cmd.request.client_id, cmd.request.seq
        for idle in [c for c, t in self.active_ms.items() if now - t > LIMITS.client_idle_s * 1000]:
            del self.active_ms[idle]
            self.first = {k: v for k, v in self.first.items() if k[0] != idle}
        key = (client, seq)
        if result.duplicate:
            assert result.outcome == self.first[key]
            self.active_ms[client] = now
        elif key in self.first:
            assert isinstance(result.outcome, ChatError), "a remembered request applied twice"
            assert "stale" in result.outcome.message
        elif isinstance(result.outcome, ChatError) and "stale" in result.outcome.message:
            pass
        else:
            self.first[key] = result.outcome
            self.active_ms[client] = now

    def check(self, state: ChatState) -> None:
        assert state.account_count == len(self.queues)
        for user, ids in self.queues.items():
            assert [m.id for m in state.queue(user)] == ids, user
            assert len(ids) <= LIMITS.queue_limit


def _is_live(state: ChatState, token: str) -> bool:
    try:
        state.authenticate(token)
    except ChatError:
        return False
    return True


def build(ops: list[Op], cut: int) -> tuple[Log, list[ApplyResult | None], bytes]:
    """Plays the accepting node on a leader's state: builds each command from what it reads,
    applies it, and checks every queue against the model after each entry. Returns the log,
    the leader's results and its snapshot at index `cut`."""
    leader = ChatState(LIMITS)
    log = Log()
    model = Model()
    results: list[ApplyResult | None] = []
    tokens: list[str] = []
    seqs = dict.fromkeys(CLIENTS, 0)
    now = 1_000
    snapshot_at_cut = leader.snapshot()
    for step, (what, client, lag, skew) in enumerate(ops):
        kind = what[0]
        seqs[client] += 1
        seq = seqs[client]
        request = RequestId(client, seq, max(0, seq - lag))
        ts = max(0, now + skew)  # a node whose clock is a little behind

        def token(i: object) -> str:
            """Mostly a live session's token (0-5), sometimes any token ever issued."""
            live = [t for t in tokens if _is_live(leader, t)]
            pool = live if int(str(i)) < 6 and live else tokens
            return pool[int(str(i)) % len(pool)] if pool else "none"

        cmd: Command | None = None
        if kind == "register":
            name, which = str(what[1]), int(str(what[2]))
            cmd = Register(
                timestamp_ms=ts, request=request, username=name, password_hash=HASHES[which]
            )
        elif kind == "login":
            stored = leader.account_hash(str(what[1]))
            digest = stored.digest if stored and what[2] else b"\x00" * 32
            cmd = Login(
                timestamp_ms=ts,
                request=request,
                username=str(what[1]),
                token=f"tok{step}",
                verified_digest=digest,
            )
            tokens.append(cmd.token)
        elif kind == "logout":
            cmd = Logout(timestamp_ms=ts, request=request, token=token(what[1]))
        elif kind == "send":
            cmd = Send(
                timestamp_ms=ts,
                request=request,
                token=token(what[1]),
                recipient=str(what[2]),
                text=str(what[3]),
            )
        elif kind == "ack":
            cmd = Ack(
                timestamp_ms=ts, request=request, token=token(what[1]), up_to_id=int(str(what[2]))
            )
        elif kind == "delete":
            cmd = DeleteAccount(timestamp_ms=ts, request=request, token=token(what[1]))
        elif kind == "advance":
            now += int(str(what[1]))
            continue
        elif kind == "retry":  # the same entry again: a client's retry after a failover
            earlier = [d for _, d in log.entries if d is not None]
            if earlier:
                cmd = decode(earlier[int(str(what[1])) % len(earlier)])

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
            model.update(cmd, result, leader.log_time_ms)
        model.check(leader)
        if index == cut:
            snapshot_at_cut = leader.snapshot()
    return log, results, snapshot_at_cut


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
        ("a session ended", any(r.ended_tokens for r in applied)),
        ("a queue full", any(not r.ok and "undelivered" in str(r.outcome) for r in applied)),
        ("a stale request", any(not r.ok and "stale" in str(r.outcome) for r in applied)),
    ]:
        event(f"{what}: {happened}")
    follower = ChatState(LIMITS)
    assert log.apply_to(follower) == leader_results
    restored = ChatState(LIMITS)
    restored.restore(follower.snapshot())

    # A follower that fell behind: InstallSnapshot at the cut, then the rest of the log.
    late = ChatState(LIMITS)
    late.restore(snapshot_at_cut)
    start = late.applied_index
    assert log.apply_to(late, start) == leader_results[start:]

    assert late.digest() == follower.digest() == restored.digest()
    assert late.snapshot() == follower.snapshot()
