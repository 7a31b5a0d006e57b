"""Values the Raft core consumes and produces: ids, entries, messages, hard state, Ready.

Everything here is a frozen, slotted dataclass or an enum. This module imports nothing from the
rest of chatbooth and does no I/O; storage, the driver and the simulator all speak these types.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

NodeId = NewType("NodeId", str)
Term = NewType("Term", int)
LogIndex = NewType("LogIndex", int)

NO_NODE: NodeId | None = None


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.Enum):
    NORMAL = 0  # data for the state machine
    NOOP = 1  # appended by every new leader (Raft §5.4.2, §8); carries no data
    CONFIG = 2  # data is an encoded ConfState (membership; applied by the core's owner)


@dataclass(frozen=True, slots=True)
class Entry:
    term: Term
    index: LogIndex
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate encoded size in bytes, used to bound messages."""
        return len(self.data) + 24


@dataclass(frozen=True, slots=True)
class ConfState:
    """The cluster's membership: voters count in every majority (node.raft.quorum); learners
    receive the log and snapshots but never vote or campaign. Carried by snapshots and CONFIG
    entries (node.raft.membership), never a constant. Empty on a node that has not yet learnt
    the configuration (a member being added).

    A server is its name and its incarnation: an initial member is incarnation 0, a member
    added later the index of the CONFIG entry that added it. So a name that was removed and
    added again (a machine replaced after it lost its disk) is another server, and messages
    from or to the other incarnation are refused (node.transport): the single-server rules
    then hold as they do for servers with different names. `incarnations` lists the members
    whose incarnation is not 0, sorted by name (one canonical form per configuration)."""

    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...] = ()
    incarnations: tuple[tuple[NodeId, int], ...] = ()

    def __post_init__(self) -> None:
        names = [name for name, _ in self.incarnations]
        if names != sorted(set(names)):
            raise ValueError(f"incarnations must be sorted by name, once each: {self.incarnations}")
        for name, incarnation in self.incarnations:
            if name not in self or incarnation < 1:
                raise ValueError(
                    f"incarnations list members whose incarnation is not 0: {self.incarnations}"
                )

    def members(self) -> tuple[NodeId, ...]:
        return self.voters + self.learners

    def incarnation(self, node: NodeId) -> int:
        """The incarnation of member `node` (0 for an initial member)."""
        for name, incarnation in self.incarnations:
            if name == node:
                return incarnation
        return 0

    def __contains__(self, node: object) -> bool:
        return node in self.voters or node in self.learners


class ConfChangeOp(enum.Enum):
    ADD_LEARNER = "add-learner"  # a new member, which receives the log but does not vote
    PROMOTE = "promote"  # a learner (caught up) becomes a voter
    REMOVE = "remove"  # a voter or a learner leaves


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One single-server membership change (thesis §4.1): the core proposes the whole new
    ConfState as a CONFIG entry."""

    op: ConfChangeOp
    node: NodeId


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on stable storage before any message that depends on it is sent (§5.1)."""

    term: Term = Term(0)
    vote: NodeId | None = None
    commit: LogIndex = LogIndex(0)


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Identifies a snapshot: the state machine after applying every entry up to `index`."""

    index: LogIndex
    term: Term
    conf: ConfState


class MessageType(enum.Enum):
    VOTE = "vote"
    VOTE_RESP = "vote-resp"
    PRE_VOTE = "pre-vote"
    PRE_VOTE_RESP = "pre-vote-resp"
    APPEND = "append"
    APPEND_RESP = "append-resp"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat-resp"
    SNAPSHOT = "snapshot"  # InstallSnapshot; the bytes travel beside the message (driver)
    TIMEOUT_NOW = "timeout-now"  # leader transfer: campaign at once (thesis §3.10)


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message. Which fields matter depends on `type`:

    VOTE / PRE_VOTE: `index`, `log_term` are the candidate's last log index and term;
      `transfer` marks a campaign started by TIMEOUT_NOW, which voters grant despite a lease.
    *_RESP: `reject` says whether the request was refused.
    APPEND: `index`, `log_term` identify the entry preceding `entries`; `commit` is the
      leader's commit index. APPEND_RESP: `index` is the follower's last matching index; on
      reject, `reject_hint` / `hint_term` point the leader to the probable conflict (§5.3,
      fast backtracking).
    HEARTBEAT: `commit` is min(follower's match, leader commit); `context` is the ReadIndex round.
    APPEND in probe state: `context` is the probe's id, which a rejection echoes.
    SNAPSHOT: `snapshot` names the snapshot; its bytes are attached by the driver.
    """

    type: MessageType
    sender: NodeId
    to: NodeId
    term: Term
    log_term: Term = Term(0)
    index: LogIndex = LogIndex(0)
    entries: tuple[Entry, ...] = ()
    commit: LogIndex = LogIndex(0)
    reject: bool = False
    reject_hint: LogIndex = LogIndex(0)
    hint_term: Term = Term(0)
    context: int = 0
    transfer: bool = False
    snapshot: SnapshotMeta | None = None


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the driver wants to know about; not persisted."""

    role: Role
    leader: NodeId | None
    term: Term


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied `index`."""

    request: int
    index: LogIndex


@dataclass(frozen=True, slots=True)
class Ready:
    """What the core asks its driver to do, in this order:

    1. send `messages` now (the leader's appends may overlap its own disk write, thesis §10.2.1);
    2. persist `snapshot` (if any), then `entries` (replacing any stored entries at index >=
       entries[0].index), then `hard_state` (if any); fsync when `must_sync`;
    3. send `persisted_messages` (votes, vote and append responses: they promise what was
       just persisted), then call `advance(ready)`;
    4. apply `committed_entries` (already durable locally) and serve `read_states` once the
       state machine has applied their index.
    Readies must be persisted and advanced in the order they were handed out.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    snapshot: SnapshotMeta | None = None
    entries: tuple[Entry, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    persisted_messages: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    must_sync: bool = False

    def is_empty(self) -> bool:
        return not (
            self.soft_state
            or self.hard_state
            or self.snapshot
            or self.entries
            or self.committed_entries
            or self.messages
            or self.persisted_messages
            or self.read_states
        )
