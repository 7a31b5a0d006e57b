"""Conversion between the Raft core's values (node.raft.types) and raft.proto messages.

Imports node.raft.types and protos only: no grpc, no asyncio.
"""

from __future__ import annotations

from node.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    LogIndex,
    Message,
    MessageType,
    NodeId,
    SnapshotMeta,
    Term,
)
from protos import raft_pb2

_TYPE_TO_PB = {
    MessageType.VOTE: raft_pb2.REQUEST_VOTE,
    MessageType.VOTE_RESP: raft_pb2.REQUEST_VOTE_RESPONSE,
    MessageType.PRE_VOTE: raft_pb2.PRE_VOTE,
    MessageType.PRE_VOTE_RESP: raft_pb2.PRE_VOTE_RESPONSE,
    MessageType.APPEND: raft_pb2.APPEND_ENTRIES,
    MessageType.APPEND_RESP: raft_pb2.APPEND_ENTRIES_RESPONSE,
    MessageType.HEARTBEAT: raft_pb2.HEARTBEAT,
    MessageType.HEARTBEAT_RESP: raft_pb2.HEARTBEAT_RESPONSE,
    MessageType.SNAPSHOT: raft_pb2.INSTALL_SNAPSHOT,
    MessageType.TIMEOUT_NOW: raft_pb2.TIMEOUT_NOW,
}
_TYPE_FROM_PB = {v: k for k, v in _TYPE_TO_PB.items()}
_KIND_TO_PB = {
    EntryKind.NORMAL: raft_pb2.ENTRY_NORMAL,
    EntryKind.NOOP: raft_pb2.ENTRY_NOOP,
    EntryKind.CONFIG: raft_pb2.ENTRY_CONFIG,
}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()}


class WireError(ValueError):
    """A raft.proto message that does not describe a valid core message."""


def snapshot_meta_to_pb(meta: SnapshotMeta) -> raft_pb2.SnapshotMeta:
    conf = raft_pb2.ConfState(
        voters=list(meta.conf.voters),
        learners=list(meta.conf.learners),
        incarnations=dict(meta.conf.incarnations),
    )
    return raft_pb2.SnapshotMeta(index=meta.index, term=meta.term, conf=conf)


def snapshot_meta_from_pb(pb: raft_pb2.SnapshotMeta) -> SnapshotMeta:
    voters = tuple(NodeId(v) for v in pb.conf.voters)
    learners = tuple(NodeId(v) for v in pb.conf.learners)
    incarnations = tuple(sorted((NodeId(n), i) for n, i in pb.conf.incarnations.items()))
    for name, incarnation in incarnations:
        if name not in voters + learners or incarnation == 0:
            raise WireError(
                f"snapshot configuration gives {name!r} incarnation {incarnation}: only a "
                "member's, and only one that is not 0, is listed"
            )
    return SnapshotMeta(
        LogIndex(pb.index), Term(pb.term), ConfState(voters, learners, incarnations)
    )


def message_to_pb(m: Message) -> raft_pb2.RaftMessage:
    pb = raft_pb2.RaftMessage(
        type=_TYPE_TO_PB[m.type],
        sender=m.sender,
        to=m.to,
        term=m.term,
        log_term=m.log_term,
        index=m.index,
        entries=[
            raft_pb2.Entry(term=e.term, index=e.index, kind=_KIND_TO_PB[e.kind], data=e.data)
            for e in m.entries
        ],
        commit=m.commit,
        reject=m.reject,
        reject_hint=m.reject_hint,
        hint_term=m.hint_term,
        context=m.context,
        transfer=m.transfer,
    )
    if m.snapshot is not None:
        pb.snapshot.CopyFrom(snapshot_meta_to_pb(m.snapshot))
    return pb


def message_from_pb(pb: raft_pb2.RaftMessage) -> Message:
    try:
        mtype = _TYPE_FROM_PB[pb.type]
        entries = tuple(
            Entry(Term(e.term), LogIndex(e.index), _KIND_FROM_PB[e.kind], e.data)
            for e in pb.entries
        )
    except KeyError as exc:
        raise WireError(f"unknown message or entry type {exc.args[0]!r}") from None
    if not pb.sender or not pb.to:
        raise WireError("a raft message needs a sender and a recipient")
    for k, e in enumerate(entries):
        if e.index != pb.index + 1 + k:
            raise WireError(f"entries are not contiguous after index {pb.index}")
    snapshot = None
    if mtype is MessageType.SNAPSHOT:
        if not pb.HasField("snapshot"):
            raise WireError("an InstallSnapshot message without snapshot metadata")
        snapshot = snapshot_meta_from_pb(pb.snapshot)
    return Message(
        type=mtype,
        sender=NodeId(pb.sender),
        to=NodeId(pb.to),
        term=Term(pb.term),
        log_term=Term(pb.log_term),
        index=LogIndex(pb.index),
        entries=entries,
        commit=LogIndex(pb.commit),
        reject=pb.reject,
        reject_hint=LogIndex(pb.reject_hint),
        hint_term=Term(pb.hint_term),
        context=pb.context,
        transfer=pb.transfer,
        snapshot=snapshot,
    )
