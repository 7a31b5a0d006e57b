"""Majority arithmetic over one configuration's voters (etcd's quorum/ package, single config).

Every rule that asks "does a majority agree?" asks it here, of the configuration the core is
using now: the commit index (§5.3, the highest index stored on a majority), the vote tally
(§5.2, won, lost or still open), CheckQuorum (did a majority answer this period?) and
ReadIndex (the highest heartbeat round a majority acknowledged, thesis §6.4). Learners are
never passed in: only voters count.

Pure functions of their arguments: imports only node.raft.types.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from node.raft.types import NodeId


class VoteResult(enum.Enum):
    PENDING = "pending"  # neither a majority of grants nor of refusals yet
    WON = "won"
    LOST = "lost"


def majority(voters: Collection[NodeId]) -> int:
    """How many of `voters` make a majority: n // 2 + 1 (1 of 1, 2 of 3, 3 of 4 or 5)."""
    return len(voters) // 2 + 1


def committed_index(voters: Collection[NodeId], acked: Mapping[NodeId, int]) -> int:
    """The highest value that a majority of `voters` have reached, where `acked` maps a voter
    to what it acknowledged (a match index, a heartbeat round); a voter missing from `acked`
    counts as 0, and anyone in `acked` who is not a voter does not count. 0 with no voters:
    an empty configuration commits nothing."""
    if not voters:
        return 0
    values = sorted((acked.get(v, 0) for v in voters), reverse=True)
    return values[majority(voters) - 1]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """WON once a majority of `voters` granted, LOST once so many refused that the rest cannot
    make a majority, else PENDING. Votes from non-voters are ignored. No voters: LOST."""
    granted = sum(1 for v in voters if votes.get(v) is True)
    refused = sum(1 for v in voters if votes.get(v) is False)
    need = majority(voters)
    if not voters:
        return VoteResult.LOST
    if granted >= need:
        return VoteResult.WON
    if len(voters) - refused < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[NodeId], active: Collection[NodeId]) -> bool:
    """Whether the `active` nodes include a majority of `voters` (CheckQuorum, and whether a
    configuration could commit with only the reachable nodes)."""
    if not voters:
        return False
    return sum(1 for v in voters if v in active) >= majority(voters)
