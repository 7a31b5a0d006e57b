"""node.raft.quorum, as tables (in the manner of etcd's quorum/testdata): each row is one
configuration and what its members acknowledged or voted, with the answer Raft requires."""

from __future__ import annotations

import pytest

from node.raft import quorum
from node.raft.quorum import VoteResult
from node.raft.types import NodeId


def ids(text: str) -> tuple[NodeId, ...]:
    return tuple(NodeId(c) for c in text)


# (voters, acknowledged index per node, the committed index)
COMMITTED = [
    ("", {}, 0),  # an empty configuration commits nothing
    ("a", {}, 0),
    ("a", {"a": 12}, 12),  # one voter is its own majority
    ("ab", {"a": 12}, 0),  # two voters need both
    ("ab", {"a": 12, "b": 7}, 7),
    ("abc", {"a": 12, "b": 7}, 7),  # 2 of 3: the second highest
    ("abc", {"a": 12, "b": 7, "c": 9}, 9),
    ("abc", {"a": 5, "b": 5, "c": 5}, 5),
    ("abcd", {"a": 12, "b": 7, "c": 9}, 7),  # 3 of 4
    ("abcd", {"a": 12, "b": 7, "c": 9, "d": 10}, 9),
    ("abcde", {"a": 12, "b": 7, "c": 9, "d": 10, "e": 1}, 9),  # 3 of 5
    ("abcde", {"a": 12, "b": 7}, 0),
    # acknowledgements from outside the configuration (a learner, a removed leader) count
    # for nothing, however high
    ("bc", {"a": 99, "b": 4, "c": 3}, 3),
    ("abc", {"a": 8, "x": 100, "y": 100}, 0),
    ("abcdefg", {c: i for i, c in enumerate("abcdefg", start=1)}, 4),  # 4 of 7
]


@pytest.mark.parametrize(("voters", "acked", "want"), COMMITTED)
def test_committed_index_is_the_highest_index_a_majority_reached(
    voters: str, acked: dict[str, int], want: int
) -> None:
    """§5.3: "A log entry is committed once the leader that created the entry has replicated
    it on a majority of the servers" (only voters count: learners never do)."""
    assert quorum.committed_index(ids(voters), {NodeId(k): v for k, v in acked.items()}) == want


# (voters, votes as node -> granted, the result)
VOTES = [
    ("", {}, VoteResult.LOST),
    ("a", {}, VoteResult.PENDING),
    ("a", {"a": True}, VoteResult.WON),
    ("a", {"a": False}, VoteResult.LOST),
    ("ab", {"a": True}, VoteResult.PENDING),
    ("ab", {"a": True, "b": False}, VoteResult.LOST),  # 2 of 2 needed
    ("abc", {"a": True}, VoteResult.PENDING),
    ("abc", {"a": True, "b": True}, VoteResult.WON),
    ("abc", {"a": True, "b": False}, VoteResult.PENDING),
    ("abc", {"a": False, "b": False}, VoteResult.LOST),
    ("abcd", {"a": True, "b": True}, VoteResult.PENDING),  # 3 of 4
    ("abcd", {"a": True, "b": True, "c": False}, VoteResult.PENDING),
    ("abcd", {"a": True, "b": False, "c": False}, VoteResult.LOST),
    ("abcde", {"a": True, "b": True, "c": True}, VoteResult.WON),
    ("abcde", {"a": False, "b": False, "c": False}, VoteResult.LOST),
    # votes from non-voters (a learner; a candidate that a pending change removes) count for
    # nothing: three grants from outside do not elect
    ("abc", {"x": True, "y": True, "z": True}, VoteResult.PENDING),
    ("bc", {"a": True, "b": True}, VoteResult.PENDING),
    ("bc", {"a": True, "b": True, "c": True}, VoteResult.WON),
]


@pytest.mark.parametrize(("voters", "votes", "want"), VOTES)
def test_vote_result_needs_a_majority_of_the_voters(
    voters: str, votes: dict[str, bool], want: VoteResult
) -> None:
    """§5.2: "A candidate wins an election if it receives votes from a majority of the servers
    in the full cluster for the same term"; it has lost once a majority refused."""
    got = quorum.vote_result(ids(voters), {NodeId(k): v for k, v in votes.items()})
    assert got is want


# (voters, the nodes heard from, whether that is a quorum)
ACTIVE = [
    ("", "", False),
    ("a", "a", True),
    ("abc", "a", False),
    ("abc", "ab", True),
    ("abc", "axyz", False),  # learners and strangers do not keep a leader in office
    ("abcd", "abc", True),
    ("abcd", "ab", False),
    ("bcd", "abc", True),  # a removed leader (a) does not count itself
]


@pytest.mark.parametrize(("voters", "active", "want"), ACTIVE)
def test_has_quorum_counts_only_voters(voters: str, active: str, want: bool) -> None:
    """Thesis §6.2 (CheckQuorum): a leader steps down if an election timeout passes without a
    successful round of heartbeats to a majority of its cluster."""
    assert quorum.has_quorum(ids(voters), set(ids(active))) is want


@pytest.mark.parametrize(("n", "want"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_majority(n: int, want: int) -> None:
    assert quorum.majority(ids("abcdefg"[:n])) == want
