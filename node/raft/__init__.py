"""The pure Raft core, in the manner of etcd's raft package.

It must not import asyncio, grpc, time, random, os, or anything that does I/O; a seeded
random.Random is passed in. Time is tick(), input is step()/propose(), output is a Ready.
"""

from node.raft.core import RaftConfig, RaftCore
from node.raft.errors import (
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
)
from node.raft.types import (
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

__all__ = [
    "ConfState",
    "Entry",
    "EntryKind",
    "HardState",
    "LogIndex",
    "Message",
    "MessageType",
    "NodeId",
    "NotLeaderError",
    "ProposalDroppedError",
    "RaftConfig",
    "RaftCore",
    "RaftError",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotMeta",
    "SoftState",
    "Term",
]
