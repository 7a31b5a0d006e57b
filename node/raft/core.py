"""RaftCore: one Raft participant as a deterministic value machine (etcd's raft, in Python).

Time is `tick()`; input is `step(message)`, `propose(data)`, `read_index(request)`,
`transfer_leadership(target)`; output is a `Ready` that the driver carries out and acknowledges
with `advance(ready)`. It implements leader election with PreVote and CheckQuorum, log
replication with fast backtracking and flow control, commitment of current-term entries only,
ReadIndex, leader transfer, snapshots and single-server membership changes with learners
(node.raft.membership; every majority is counted by node.raft.quorum). Section numbers cite
the Raft paper (§) and Ongaro's thesis.

Must not import asyncio, grpc, time, os, random (a seeded random.Random is passed in), or
anything else that does I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from random import Random

from node.raft import quorum
from node.raft.errors import InvariantError, NotLeaderError, ProposalDroppedError, RaftError
from node.raft.log import RaftLog
from node.raft.membership import (
    ConfChangeBusyError,
    apply_change,
    decode_conf,
    encode_conf,
)
from node.raft.progress import Progress, ProgressState
from node.raft.quorum import VoteResult
from node.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
    Term,
)

logger = logging.getLogger(__name__)

MT = MessageType

# Sent by a leader; they may go out before the leader's own disk write completes (thesis
# §10.2.1). Every other message promises something about this node's persisted state (a vote,
# a term, an appended suffix) and waits for it to be durable.
_SEND_BEFORE_PERSIST = frozenset({MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT, MT.TIMEOUT_NOW})


@dataclass(frozen=True, slots=True)
class RaftConfig:
    node_id: NodeId
    heartbeat_ticks: int = 1
    election_ticks_min: int = 10  # also the CheckQuorum period and the follower's lease
    election_ticks_max: int = 20  # randomized timeout is drawn from [min, max)
    max_append_bytes: int = 1 << 20  # one AppendEntries carries at most this much
    max_inflight: int = 256  # unacknowledged AppendEntries per follower
    pre_vote: bool = True
    check_quorum: bool = True
    # The bootstrap hint: on a fresh cluster this node campaigns at once, and again every
    # election_ticks_min, until it first sees a leader.
    preferred_leader: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_ticks < self.election_ticks_min < self.election_ticks_max:
            raise RaftError(
                "need 0 < heartbeat_ticks < election_ticks_min < election_ticks_max, got "
                f"{self.heartbeat_ticks}, {self.election_ticks_min}, {self.election_ticks_max}"
            )


@dataclass(frozen=True, slots=True)
class _PendingRead:
    round: int  # the heartbeat round that must be acknowledged by a majority
    request: int
    index: LogIndex


class RaftCore:
    def __init__(
        self,
        config: RaftConfig,
        rng: Random,
        *,
        conf: ConfState,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: Iterable[Entry] = (),
    ) -> None:
        hs = hard_state or HardState()
        self.id = config.node_id
        self.config = config
        self._rng = rng
        self.log = RaftLog(snapshot, list(entries), hs.commit)
        # Thesis §4.1: a server uses the latest configuration in its log, committed or not.
        # _base_conf is the one at the snapshot (or the bootstrap one); _confs the CONFIG
        # entries above it, as (index, term, conf), in log order.
        self._base_conf = snapshot.conf if snapshot else conf
        self._confs: list[tuple[LogIndex, Term, ConfState]] = []
        self.conf = self._base_conf
        self.term: Term = hs.term
        self.vote: NodeId | None = hs.vote
        self.role = Role.FOLLOWER
        self.leader: NodeId | None = None

        self._election_elapsed = 0  # ticks since the last election or valid leader contact
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_ticks_min
        self._votes: dict[NodeId, bool] = {}
        self._progress: dict[NodeId, Progress] = {}
        self._needs_append: set[NodeId] = set()  # peers owed an append, even an empty one
        self._flushed_last = 0  # the last index when appends were last flushed
        self._transferee: NodeId | None = None

        self._read_round = 0
        self._pending_reads: list[_PendingRead] = []
        self._postponed_reads: list[int] = []  # until the leader commits in its own term
        self._read_states: list[ReadState] = []

        self._msgs: list[Message] = []
        self._persisted_msgs: list[Message] = []
        self._pending_snapshot: SnapshotMeta | None = None
        self._handed_hs = hs
        self._handed_soft = SoftState(Role.FOLLOWER, None, hs.term)

        self._bootstrapping = (
            config.preferred_leader and self.term == 0 and self.log.last_index() == 0
        )
        self._become_follower(self.term, None)
        self._note_confs(self.log.all_entries())
        if self._bootstrapping:
            self._election_elapsed = self._randomized_timeout - 1  # campaign on the first tick

    # ------------------------------------------------------------------ queries

    @property
    def voters(self) -> tuple[NodeId, ...]:
        return self.conf.voters

    @property
    def bootstrapping(self) -> bool:
        """A fresh cluster's configured leader that has not yet seen a leader."""
        return self._bootstrapping and self.role is not Role.LEADER

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader, self.term)

    @property
    def pending_snapshot(self) -> SnapshotMeta | None:
        """A snapshot from the leader the next Ready will ask the driver to install."""
        return self._pending_snapshot

    def progress(self, peer: NodeId) -> Progress | None:
        return self._progress.get(peer)

    def conf_at(self, index: LogIndex) -> ConfState:
        """The configuration in force once the log up to `index` is applied (what a
        snapshot at `index` carries). `index` must not be below the snapshot."""
        if index < self.log.snapshot_index():
            raise RaftError(f"index {index} is below the snapshot ({self.log.snapshot_index()})")
        conf = self._base_conf
        for at, _, c in self._confs:
            if at > index:
                break
            conf = c
        return conf

    def pending_conf_index(self) -> LogIndex:
        """The index of the latest CONFIG entry if it is not yet committed, else 0."""
        if self._confs and self._confs[-1][0] > self.log.committed:
            return self._confs[-1][0]
        return LogIndex(0)

    def _peers(self) -> list[NodeId]:
        """The other voters: whom a candidate asks for votes."""
        return [v for v in self.conf.voters if v != self.id]

    def _replicas(self) -> list[NodeId]:
        """Every other member, learners included: whom a leader replicates to."""
        return [v for v in self.conf.members() if v != self.id]

    def _promotable(self) -> bool:
        """May this node campaign? A voter may. So may a voter that a not-yet-committed
        change removes (hashicorp/raft's rule): it still counts in the configuration before
        that change, which may be the only one that can elect anyone (a leader that removed
        itself and lost its lease before the change committed, in a cluster of two voters,
        is the only one with the longest log). It counts only the new voters' votes, so this
        is as safe as any election; once the change is committed it stays quiet."""
        if self.id in self.conf.voters:
            return True
        pending = self.pending_conf_index()
        return bool(pending) and self.id in self.conf_at(LogIndex(pending - 1)).voters

    # ------------------------------------------------------------------ role changes

    def _reset(self, term: Term) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self._votes = {}
        self._transferee = None
        self._pending_reads.clear()
        self._postponed_reads.clear()
        self._needs_append.clear()
        self._progress = {}

    def _reset_randomized_timeout(self) -> None:
        lo, hi = self.config.election_ticks_min, self.config.election_ticks_max
        self._randomized_timeout = lo if self._bootstrapping else self._rng.randrange(lo, hi)

    def _become_follower(self, term: Term, leader: NodeId | None) -> None:
        old_role, old_term = self.role, self.term
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader
        if leader is not None:
            self._bootstrapping = False
        if old_role is not Role.FOLLOWER or old_term != term:
            logger.info("%s became follower at term %d", self.id, self.term)

    def _become_pre_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise InvariantError("a leader cannot become a pre-candidate")
        # PreVote (thesis §9.6): ask first, without touching the term or the vote.
        self._votes = {}
        self._election_elapsed = 0
        self._reset_randomized_timeout()
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        logger.info("%s became pre-candidate at term %d", self.id, self.term)

    def _become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise InvariantError("a leader cannot become a candidate")
        self._reset(Term(self.term + 1))
        self.vote = self.id
        self.role = Role.CANDIDATE
        logger.info("%s became candidate at term %d", self.id, self.term)

    def _become_leader(self) -> None:
        if self.role is not Role.CANDIDATE:
            raise InvariantError("only a candidate can become leader")
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self._bootstrapping = False
        last = self.log.last_index()
        for peer in self._replicas():
            self._progress[peer] = Progress(last + 1, self.config.max_inflight)
        self._self_progress_init(last)
        # §5.4.2 / §8: a no-op of the new term lets the leader commit what earlier terms left
        # (and, committed, lets it propose a membership change: node.raft.membership).
        self.log.append([Entry(self.term, LogIndex(last + 1), EntryKind.NOOP)])
        self._needs_append.update(self._replicas())
        self._maybe_commit()  # a single-node cluster commits once its own write is stable
        logger.info("%s became leader at term %d", self.id, self.term)

    def _self_progress_init(self, last: int) -> None:
        pr = Progress(last + 1, self.config.max_inflight)
        pr.match = self.log.stable
        pr.state = ProgressState.REPLICATE
        pr.recent_active = True
        self._progress[self.id] = pr

    # ------------------------------------------------------------------ elections

    def campaign(self) -> None:
        """Start an election now (the driver's bootstrap or a test), with PreVote if enabled."""
        self._campaign(pre_vote=self.config.pre_vote, transfer=False)

    def _campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        """transfer: started by TimeoutNow, so voters grant it despite their lease."""
        if not self._promotable() or self.role is Role.LEADER:
            return
        if pre_vote:
            self._become_pre_candidate()
            vote_type, term = MT.PRE_VOTE, Term(self.term + 1)
        else:
            self._become_candidate()
            vote_type, term = MT.VOTE, self.term
        if self._poll(self.id, True):
            return  # a single-node cluster
        for peer in self._peers():
            self._send(
                Message(
                    vote_type,
                    self.id,
                    peer,
                    term,
                    log_term=self.log.last_term(),
                    index=self.log.last_index(),
                    transfer=transfer,
                )
            )

    def _poll(self, voter: NodeId, granted: bool) -> bool:
        """Record a (pre-)vote; returns True when the election is decided."""
        self._votes.setdefault(voter, granted)
        result = quorum.vote_result(self.conf.voters, self._votes)
        if result is VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False, transfer=False)  # won the pre-vote: now vote
            else:
                self._become_leader()
            return True
        if result is VoteResult.LOST:
            self._become_follower(self.term, None)
            return True
        return False

    def _in_lease(self) -> bool:
        """A node that heard from a leader within the minimum election timeout keeps it
        (thesis §4.2.3): it neither grants (pre-)votes nor lets a disruptive term in."""
        return (
            self.config.check_quorum
            and self.leader is not None
            and self._election_elapsed < self.config.election_ticks_min
        )

    # ------------------------------------------------------------------ time

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self._campaign(pre_vote=self.config.pre_vote, transfer=False)

    def _tick_leader(self) -> None:
        if self._maybe_step_down_removed():
            return
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_ticks_min:
            self._election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                logger.info(
                    "%s stepped down at term %d: no majority heard within an election timeout",
                    self.id,
                    self.term,
                )
                self._become_follower(self.term, None)
                return
            if self._transferee is not None:
                logger.info("%s aborted leader transfer to %s", self.id, self._transferee)
                self._transferee = None
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        """CheckQuorum: did a majority of the voters (this leader included, if it is one)
        answer this period? Resets the period."""
        active = {p for p, pr in self._progress.items() if p == self.id or pr.recent_active}
        for peer, pr in self._progress.items():
            pr.recent_active = peer == self.id
        return quorum.has_quorum(self.conf.voters, active)

    # ------------------------------------------------------------------ input

    def step(self, m: Message) -> None:
        if m.to != self.id:
            raise InvariantError(f"{self.id} got a message addressed to {m.to}")
        # Thesis §4.1: "servers process incoming RPC requests without consulting their
        # current configurations": a new member takes appends from a leader it does not yet
        # know, and a lagging voter votes for a member it has not heard of. A leader ignores
        # answers from outside its configuration (no Progress); the lease below and PreVote
        # keep removed members from disrupting (§4.2.3).
        if m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE) and not m.transfer and self._in_lease():
                return  # §4.2.3: ignore a disruptive candidate while the leader is alive
            if m.type is MT.PRE_VOTE or (m.type is MT.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change terms; a granted one carries our next term
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.sender)
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if m.type in (MT.APPEND, MT.HEARTBEAT) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A stale leader (e.g. back from a partition): our term makes it step down.
                self._send(Message(MT.APPEND_RESP, self.id, m.sender, self.term))
            elif m.type is MT.PRE_VOTE:
                self._send(Message(MT.PRE_VOTE_RESP, self.id, m.sender, self.term, reject=True))
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _handle_vote_request(self, m: Message) -> None:
        resp_type = MT.VOTE_RESP if m.type is MT.VOTE else MT.PRE_VOTE_RESP
        can_vote = (
            self.vote == m.sender
            or (self.vote is None and self.leader is None)
            or (m.type is MT.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # §5.2, §5.4.1. The response carries the requested term (a granted pre-vote
            # speaks of the candidate's next term).
            self._send(Message(resp_type, self.id, m.sender, m.term))
            if m.type is MT.VOTE:
                self._election_elapsed = 0
                self.vote = m.sender
        else:
            self._send(Message(resp_type, self.id, m.sender, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        expected = MT.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MT.VOTE_RESP
        if m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            self._become_follower(m.term, m.sender)  # §5.2: a leader of this term exists
            self._step_follower(m)
        elif m.type is expected:
            self._poll(m.sender, not m.reject)

    def _step_follower(self, m: Message) -> None:
        if m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            self._election_elapsed = 0
            self.leader = m.sender
            self._bootstrapping = False
            if m.type is MT.APPEND:
                self._handle_append(m)
            elif m.type is MT.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif m.type is MT.TIMEOUT_NOW:
            # Thesis §3.10: the leader asks us to take over; skip PreVote and the lease.
            logger.info("%s got TimeoutNow from %s at term %d", self.id, m.sender, self.term)
            self._campaign(pre_vote=False, transfer=True)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(
                Message(MT.APPEND_RESP, self.id, m.sender, self.term, index=self.log.committed)
            )
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._note_confs(m.entries)
            self._send(Message(MT.APPEND_RESP, self.id, m.sender, self.term, index=last_new))
            return
        # §5.3 with the thesis' optimization: point the leader at the last index whose term
        # is no later than the leader's, so it skips a whole conflicting term per round trip.
        hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self._send(
            Message(
                MT.APPEND_RESP,
                self.id,
                m.sender,
                self.term,
                index=m.index,
                reject=True,
                reject_hint=hint,
                hint_term=self.log.term(hint) or Term(0),
                context=m.context,  # the leader's probe id, so it can tell a stale rejection
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends min(our match, its commit), so this never passes our log.
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(Message(MT.HEARTBEAT_RESP, self.id, m.sender, self.term, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        meta = m.snapshot
        if meta is None:
            raise RaftError(f"snapshot message from {m.sender} without a snapshot")
        if meta.index <= self.log.committed:
            pass  # old news
        elif self.log.match_term(meta.index, meta.term):
            self.log.commit_to(meta.index)  # we already have it: just fast-forward
        else:
            logger.info(
                "%s restoring snapshot at index %d term %d from %s",
                self.id,
                meta.index,
                meta.term,
                m.sender,
            )
            self.log.restore(meta)
            self._base_conf, self._confs = meta.conf, []
            self._conf_changed()
            self._pending_snapshot = meta
        self._send(Message(MT.APPEND_RESP, self.id, m.sender, self.term, index=self.log.committed))

    def _step_leader(self, m: Message) -> None:
        pr = self._progress.get(m.sender)
        if pr is None:
            return
        if m.type is MT.APPEND_RESP:
            pr.recent_active = True
            if m.reject:
                self._handle_append_reject(m, pr)
            else:
                self._handle_append_ack(m, pr)
        elif m.type is MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and len(pr.inflight) >= pr.max_inflight:
                pr.inflight.popleft()  # a lost append must not stall the follower forever
            if pr.match < self.log.last_index():
                self._needs_append.add(m.sender)
            if m.context > pr.read_ack:
                pr.read_ack = m.context
                self._release_reads()

    def _handle_append_reject(self, m: Message, pr: Progress) -> None:
        hint = m.reject_hint
        if m.hint_term > 0:
            hint = self.log.find_conflict_by_term(m.reject_hint, m.hint_term)
        if m.index <= pr.match:
            if pr.state is ProgressState.SNAPSHOT:
                return  # the snapshot under way settles where the follower is
            if pr.state is ProgressState.REPLICATE:
                # Probably stale (an old rejection duplicated or reordered), but a follower
                # that lost its disk answers like this too: ask it once, at its match.
                pr.become_probe()
                self._needs_append.add(m.sender)
                return
            if m.index != pr.next - 1 or m.context == 0 or m.context != pr.probe_id:
                return  # stale: not the answer to the probe outstanding
            # Our probe at the follower's recorded match was refused: it no longer holds
            # entries it acknowledged. Storage syncs before it acks, so this means a lost
            # disk. etcd drops such a rejection as stale (MaybeDecrTo), and the follower then
            # stalls forever at match+1; we log it and probe from what the follower has. The
            # commit index never moves back; a lower match only makes commits wait for others.
            hint = LogIndex(min(hint, m.index - 1))
            logger.error(
                "%s: follower %s refused entry %d, at or below its recorded match %d: it has "
                "lost acknowledged entries (a lost disk?); probing again from index %d",
                self.id,
                m.sender,
                m.index,
                pr.match,
                hint + 1,
            )
            pr.reset_below_match(hint)
            self._needs_append.add(m.sender)
            return
        if pr.maybe_decrease_to(m.index, hint):
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            self._needs_append.add(m.sender)

    def _handle_append_ack(self, m: Message, pr: Progress) -> None:
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            if old_paused and not pr.is_paused():
                self._needs_append.add(m.sender)
            return
        caught_up = pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot
        if pr.state is ProgressState.PROBE or caught_up:
            pr.become_replicate()
        if self._maybe_commit():
            self._needs_append.update(self._replicas())  # tell followers the new commit index
        elif pr.match < self.log.last_index():
            self._needs_append.add(m.sender)
        if m.sender == self._transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.sender)

    # ------------------------------------------------------------------ leader output

    def _maybe_commit(self) -> bool:
        """§5.3/§5.4.2: commit the highest index stored on a majority of the voters, only if
        of this term. A leader outside its configuration does not count itself (§4.2.2)."""
        matches = {peer: pr.match for peer, pr in self._progress.items()}
        candidate = quorum.committed_index(self.conf.voters, matches)
        if candidate > self.log.committed and self.log.term(candidate) == self.term:
            self.log.commit_to(candidate)
            if self._postponed_reads:
                postponed, self._postponed_reads = self._postponed_reads, []
                for request in postponed:
                    self.read_index(request)
            self._maybe_step_down_removed()
            return True
        return False

    def _maybe_step_down_removed(self) -> bool:
        """Thesis §4.2.2: a leader that is not in its configuration steps down once that
        configuration's entry is committed, handing over (TimeoutNow) to the voter with the
        longest log if it has everything."""
        if self.role is not Role.LEADER or self.id in self.conf.voters:
            return False
        if self.pending_conf_index():
            return False
        last = self.log.last_index()
        best = max(
            (v for v in self.conf.voters if v in self._progress),
            key=lambda v: (self._progress[v].match, v),
            default=None,
        )
        logger.info("%s stepped down at term %d: removed from the cluster", self.id, self.term)
        if best is not None and self._progress[best].match == last:
            self._send_timeout_now(best)
        self._become_follower(self.term, None)
        return True

    def _note_confs(self, entries: Iterable[Entry]) -> None:
        """`entries` were just written to the log (or truncated it): track its CONFIG
        entries, and switch to the latest one (thesis §4.1: in force once in the log)."""
        changed = False
        while self._confs and not self.log.match_term(self._confs[-1][0], self._confs[-1][1]):
            self._confs.pop()  # truncated by a new leader: the configuration reverts
            changed = True
        for e in entries:
            if e.kind is not EntryKind.CONFIG:
                continue
            if (not self._confs or e.index > self._confs[-1][0]) and self.log.match_term(
                e.index, e.term
            ):
                try:
                    conf = decode_conf(e.data)
                except RaftError as exc:
                    raise InvariantError(f"entry {e.index}: {exc}") from None
                self._confs.append((e.index, e.term, conf))
                changed = True
        if changed:
            self._conf_changed()

    def _conf_changed(self) -> None:
        old = self.conf
        self.conf = self._confs[-1][2] if self._confs else self._base_conf
        if self.conf == old:
            return
        logger.info(
            "%s now uses configuration voters=%s learners=%s",
            self.id,
            ",".join(self.conf.voters),
            ",".join(self.conf.learners),
        )
        if self.role is not Role.LEADER:
            return
        last = self.log.last_index()
        for peer in self._replicas():
            if peer not in self._progress:
                self._progress[peer] = Progress(last + 1, self.config.max_inflight)
                self._needs_append.add(peer)
        for peer in [p for p in self._progress if p != self.id and p not in self.conf]:
            del self._progress[peer]
            self._needs_append.discard(peer)
        if self._transferee is not None and self._transferee not in self.conf.voters:
            logger.info("%s aborted leader transfer to %s: removed", self.id, self._transferee)
            self._transferee = None
        if self._maybe_commit() and self.role is Role.LEADER:  # fewer voters: a majority?
            self._needs_append.update(self._replicas())
        self._release_reads()

    def _send(self, m: Message) -> None:
        if m.type in _SEND_BEFORE_PERSIST:
            self._msgs.append(m)
        else:
            self._persisted_msgs.append(m)

    def _send_append(self, peer: NodeId, *, send_if_empty: bool) -> bool:
        """Send the follower what it lacks (or a snapshot); True if a message was sent."""
        pr = self._progress[peer]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            self._send_snapshot(peer, pr)
            return True
        entries = self.log.slice(pr.next, self.log.last_index() + 1, self.config.max_append_bytes)
        if not entries and not send_if_empty:
            return False
        probe = 0
        if pr.state is ProgressState.PROBE:
            pr.probe_id += 1  # echoed in the answer: a stale rejection cannot pass for it
            probe = pr.probe_id
        self._send(
            Message(
                MT.APPEND,
                self.id,
                peer,
                self.term,
                log_term=prev_term,
                index=LogIndex(prev),
                entries=tuple(entries),
                commit=self.log.committed,
                context=probe,
            )
        )
        pr.sent(entries[-1].index if entries else prev)
        return True

    def _send_snapshot(self, peer: NodeId, pr: Progress) -> None:
        meta = self.log.snapshot
        if meta is None:
            raise InvariantError(f"entry {pr.next - 1} is gone but there is no snapshot")
        logger.info("%s sending snapshot at index %d to %s", self.id, meta.index, peer)
        pr.become_snapshot(meta.index)
        self._send(Message(MT.SNAPSHOT, self.id, peer, self.term, snapshot=meta))

    def _flush_appends(self) -> None:
        """Send every follower what it can take now: one batch per follower per Ready, so
        many proposals share one AppendEntries (and a proposal is never held for a tick)."""
        if self.role is not Role.LEADER:
            self._needs_append.clear()  # a leader that stepped down in this step owes none
            return
        last = self.log.last_index()
        self._flushed_last = last
        for peer in self._replicas():
            pr = self._progress[peer]
            forced = peer in self._needs_append
            if not forced and (pr.next > last or pr.state is not ProgressState.REPLICATE):
                continue
            sent_any = self._send_append(peer, send_if_empty=forced)
            while sent_any and pr.state is ProgressState.REPLICATE and pr.next <= last:
                sent_any = self._send_append(peer, send_if_empty=False)
        self._needs_append.clear()

    def _broadcast_heartbeat(self) -> None:
        for peer in self._replicas():
            pr = self._progress[peer]
            self._send(
                Message(
                    MT.HEARTBEAT,
                    self.id,
                    peer,
                    self.term,
                    commit=LogIndex(min(pr.match, self.log.committed)),
                    context=self._read_round,
                )
            )

    def _send_timeout_now(self, peer: NodeId) -> None:
        logger.info("%s sending TimeoutNow to %s at term %d", self.id, peer, self.term)
        self._send(Message(MT.TIMEOUT_NOW, self.id, peer, self.term))

    # ------------------------------------------------------------------ client requests

    def propose(self, data: bytes, kind: EntryKind = EntryKind.NORMAL) -> tuple[LogIndex, Term]:
        """Append a new entry; returns where it landed. It is committed if and when an entry
        with this index and term is applied. Raises NotLeaderError on a non-leader."""
        if kind is EntryKind.CONFIG:
            raise RaftError("membership changes go through propose_conf_change()")
        self._check_may_propose()
        index = LogIndex(self.log.last_index() + 1)
        self.log.append([Entry(self.term, index, kind, data)])
        return index, self.term

    def _check_may_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if self._transferee is not None:
            raise ProposalDroppedError(f"leadership is moving to {self._transferee}")

    def propose_conf_change(self, change: ConfChange) -> tuple[LogIndex, Term]:
        """Propose one single-server membership change (node.raft.membership); returns where
        its CONFIG entry landed. It is in force here at once, and everywhere as soon as it is
        in their logs. ConfChangeBusyError while this leader may not change membership yet
        (retry later); ConfChangeError if the change itself is impossible."""
        self._check_may_propose()
        if self.log.term(self.log.committed) != self.term:
            raise ConfChangeBusyError(
                f"{self.id} has not yet committed an entry of its term {self.term}"
            )
        pending = self.pending_conf_index()
        if pending:
            raise ConfChangeBusyError(
                f"the membership change at index {pending} is not yet committed"
            )
        at = LogIndex(self.log.last_index() + 1)  # where _append_conf puts it
        return self._append_conf(apply_change(self.conf, change, at))

    def _append_conf(self, conf: ConfState) -> tuple[LogIndex, Term]:
        index = LogIndex(self.log.last_index() + 1)
        entry = Entry(self.term, index, EntryKind.CONFIG, encode_conf(conf))
        self.log.append([entry])
        self._note_confs([entry])
        return index, self.term

    def read_index(self, request: int) -> None:
        """Ask for a linearizable read (thesis §6.4): a ReadState(request, index) comes out in
        a later Ready once a majority confirmed this leader after the request."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if self.log.term(self.log.committed) != self.term:
            self._postponed_reads.append(request)  # §6.4 step 1: commit in our term first
            return
        self._read_round += 1
        self._pending_reads.append(_PendingRead(self._read_round, request, self.log.committed))
        self._release_reads()  # a single voter confirms itself
        if self._pending_reads:
            self._broadcast_heartbeat()

    def _release_reads(self) -> None:
        if not self._pending_reads:
            return
        acks = {peer: pr.read_ack for peer, pr in self._progress.items()}
        acks[self.id] = self._read_round
        confirmed = quorum.committed_index(self.conf.voters, acks)
        while self._pending_reads and self._pending_reads[0].round <= confirmed:
            r = self._pending_reads.pop(0)
            self._read_states.append(ReadState(r.request, r.index))

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to `target` (thesis §3.10): catch it up, then TimeoutNow."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if target == self.id:
            return
        if target not in self.conf.voters:
            raise RaftError(f"{target} is not a voter of the cluster")
        logger.info("%s transferring leadership to %s at term %d", self.id, target, self.term)
        self._transferee = target
        self._election_elapsed = 0  # the transfer must finish within an election timeout
        if self._progress[target].match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._needs_append.add(target)

    def report_snapshot(self, peer: NodeId, *, ok: bool) -> None:
        """The driver's word on an InstallSnapshot it streamed to `peer`."""
        pr = self._progress.get(peer)
        if self.role is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = LogIndex(0)
        pr.become_probe()
        pr.probe_sent = ok  # on success, wait for the follower's answer before probing
        if not ok:
            self._needs_append.add(peer)

    def report_unreachable(self, peer: NodeId) -> None:
        """The transport lost its connection to `peer`: stop streaming optimistically."""
        pr = self._progress.get(peer)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def compact(self, index: LogIndex) -> SnapshotMeta:
        """The state machine durably saved a snapshot at `index`: drop the log up to it.
        Returns the new snapshot's metadata, whose configuration is conf_at(index)."""
        term = self.log.term(index)
        if term is None:
            raise RaftError(f"cannot compact to {index}: not in the log")
        self._base_conf = self.conf_at(index)
        self._confs = [c for c in self._confs if c[0] > index]
        self.log.compact(index, term, self._base_conf)
        meta = self.log.snapshot
        if meta is None:
            raise InvariantError("compaction left no snapshot")
        logger.info("%s compacted its log to index %d at term %d", self.id, index, self.term)
        return meta

    # ------------------------------------------------------------------ output

    def has_ready(self) -> bool:
        hs, soft = self._handed_hs, self._handed_soft
        return bool(
            self._msgs
            or self._persisted_msgs
            or self._needs_append
            or self._read_states
            or self._pending_snapshot
            or self.log.has_unhanded()
            or self.log.has_committed()
            or hs.term != self.term
            or hs.vote != self.vote
            or hs.commit != self.log.committed
            or soft.role is not self.role
            or soft.leader != self.leader
            or (self.role is Role.LEADER and self.log.last_index() > self._flushed_last)
        )

    def ready(self) -> Ready:
        """Everything the driver must do now; acknowledge it with advance() once persisted."""
        self._flush_appends()
        hs = self.hard_state()
        hard_state = hs if hs != self._handed_hs else None
        must_sync = hard_state is not None and (
            hs.term != self._handed_hs.term or hs.vote != self._handed_hs.vote
        )
        self._handed_hs = hs
        soft = self.soft_state()
        soft_state = soft if soft != self._handed_soft else None
        self._handed_soft = soft
        entries = self.log.take_unhanded()
        snapshot, self._pending_snapshot = self._pending_snapshot, None
        rd = Ready(
            soft_state=soft_state,
            hard_state=hard_state,
            snapshot=snapshot,
            entries=tuple(entries),
            committed_entries=tuple(self.log.take_committed()),
            messages=tuple(self._msgs),
            persisted_messages=tuple(self._persisted_msgs),
            read_states=tuple(self._read_states),
            must_sync=must_sync or bool(entries) or snapshot is not None,
        )
        self._msgs, self._persisted_msgs, self._read_states = [], [], []
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver has durably written everything `rd` asked to persist."""
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if self.role is Role.LEADER:
            me = self._progress[self.id]
            if self.log.stable > me.match:
                me.match = self.log.stable
                # thesis §10.2.1: the leader counts itself only once its own write is synced
                if self._maybe_commit():
                    self._needs_append.update(self._replicas())
