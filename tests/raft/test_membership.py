"""Membership changes in the core: the rules of node.raft.membership, what a restarted or
compacting core makes of its CONFIG entries, and the simulator catching the two classic
single-server-change bugs. The rules as step-by-step transcripts:
tests/raft/testdata/membership/*.txt."""

from __future__ import annotations

import logging
from random import Random

import pytest

from node.raft.core import RaftConfig, RaftCore
from node.raft.errors import RaftError
from node.raft.membership import (
    MAX_VOTERS,
    ConfChangeBusyError,
    ConfChangeError,
    apply_change,
    decode_conf,
    encode_conf,
)
from node.raft.types import (
    ConfChange,
    ConfChangeOp,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    NodeId,
    Role,
    Term,
)
from tests.simulator.random_sim import SimulationFailure, run_seed

ADD, PROMOTE, REMOVE = ConfChangeOp.ADD_LEARNER, ConfChangeOp.PROMOTE, ConfChangeOp.REMOVE


def conf(voters: str, learners: str = "", **incarnations: int) -> ConfState:
    return ConfState(
        tuple(NodeId(c) for c in voters),
        tuple(NodeId(c) for c in learners),
        tuple(sorted((NodeId(n), i) for n, i in incarnations.items())),
    )


AT = LogIndex(9)  # the index of the CONFIG entry the table's changes are proposed in


@pytest.mark.parametrize(
    ("before", "op", "node", "after"),
    [
        (conf("abc"), ADD, "d", conf("abc", "d", d=9)),
        (conf("abc", "d", d=4), ADD, "e", conf("abc", "de", d=4, e=9)),
        (conf("abc", "d", d=4), PROMOTE, "d", conf("abcd", d=4)),
        (conf("abc", "de", e=5), PROMOTE, "e", conf("abce", "d", e=5)),
        (conf("abc"), REMOVE, "b", conf("ac")),
        (conf("abc", "d", d=4), REMOVE, "d", conf("abc")),
        (conf("abcd", d=4), REMOVE, "d", conf("abc")),
        (conf("ab"), REMOVE, "a", conf("b")),
        # Replace b (it lost its disk): remove it, then add it, as another incarnation.
        (conf("ac"), ADD, "b", conf("ac", "b", b=9)),
    ],
)
def test_one_server_at_a_time(
    before: ConfState, op: ConfChangeOp, node: str, after: ConfState
) -> None:
    """Thesis §4.1: changes "add or remove a single server at a time"; a server joins as a
    learner and is promoted once caught up (§4.2.1). An added server's incarnation is the
    index of the entry that added it; a removed one's is forgotten."""
    assert apply_change(before, ConfChange(op, NodeId(node)), AT) == after


@pytest.mark.parametrize(
    ("before", "op", "node", "reason"),
    [
        (conf("abc"), ADD, "a", "a is already a voter"),
        (conf("abc", "d"), ADD, "d", "d is already a learner"),
        (conf("abc"), PROMOTE, "d", "d is not a learner: add it first"),
        (conf("abc"), PROMOTE, "a", "a is already a voter"),
        (conf("abc"), REMOVE, "z", "z is not a member"),
        (conf("a", "b"), REMOVE, "a", "a is the only voter"),
        (
            conf("abcdefg", "h"),
            PROMOTE,
            "h",
            f"the cluster has 7 voters \\(at most {MAX_VOTERS}\\)",
        ),
    ],
)
def test_impossible_changes_are_refused_saying_why(
    before: ConfState, op: ConfChangeOp, node: str, reason: str
) -> None:
    with pytest.raises(ConfChangeError, match=reason):
        apply_change(before, ConfChange(op, NodeId(node)), AT)


def test_config_entries_are_canonical_and_checked() -> None:
    c = conf("cab", "d")
    data = encode_conf(c)
    assert data == b'{"learners":["d"],"voters":["c","a","b"]}'
    assert decode_conf(data) == c
    d = conf("ab", "d", d=12)
    assert encode_conf(d) == b'{"incarnations":{"d":12},"learners":["d"],"voters":["a","b"]}'
    assert decode_conf(encode_conf(d)) == d
    for bad in (
        b'{"incarnations":{},"learners":[],"voters":["a"]}',
        b'{"incarnations":{"z":3},"learners":[],"voters":["a"]}',
        b'{"incarnations":{"a":0},"learners":[],"voters":["a"]}',
        b'{"incarnations":{"a":true},"learners":[],"voters":["a"]}',
        b'{"incarnations":[],"learners":[],"voters":["a"]}',
        b'{"extra":1,"learners":[],"voters":["a"]}',
    ):
        with pytest.raises(RaftError):
            decode_conf(bad)
    for bad in (
        b"",
        b"[]",
        b'{"voters":["a"]}',
        b'{"learners":[],"voters":["a","a"]}',
        b'{"learners":[],"voters":[1]}',
        b'{"learners":[],"voters":[""]}',
    ):
        with pytest.raises(RaftError):
            decode_conf(bad)


def core_with_log(node: str, entries: list[Entry], *, commit: int, boot: ConfState) -> RaftCore:
    return RaftCore(
        RaftConfig(node_id=NodeId(node)),
        Random(1),
        conf=boot,
        hard_state=HardState(Term(1), None, LogIndex(commit)),
        entries=entries,
    )


def config_entry(index: int, c: ConfState, term: int = 1) -> Entry:
    return Entry(Term(term), LogIndex(index), EntryKind.CONFIG, encode_conf(c))


def test_a_restarted_core_uses_the_latest_configuration_in_its_log() -> None:
    """Thesis §4.1: "a server always uses the latest configuration in its log, regardless of
    whether the entry is committed": the bootstrap configuration only counts while the log
    holds none."""
    log = [
        Entry(Term(1), LogIndex(1), EntryKind.NOOP),
        config_entry(2, conf("abc", "d")),
        config_entry(3, conf("abcd")),  # not committed
    ]
    core = core_with_log("a", log, commit=2, boot=conf("abc"))
    assert core.conf == conf("abcd")
    assert core.conf_at(LogIndex(1)) == conf("abc")
    assert core.conf_at(LogIndex(2)) == conf("abc", "d")
    assert core.pending_conf_index() == 3


def test_a_spare_with_no_configuration_never_campaigns() -> None:
    """A machine that has not been added knows no voters: it waits to hear from a leader."""
    core = core_with_log("d", [], commit=0, boot=ConfState(()))
    for _ in range(200):
        core.tick()
    assert core.role is Role.FOLLOWER and core.term == 1 and not core.ready().messages


def test_compaction_keeps_the_configuration_as_of_its_index() -> None:
    """Raft §7: the snapshot holds "the latest configuration as of the last included index";
    a later, uncommitted change stays in the log above it."""
    log = [
        Entry(Term(1), LogIndex(1), EntryKind.NOOP),
        config_entry(2, conf("abc", "d")),
        Entry(Term(1), LogIndex(3), EntryKind.NORMAL, b"x"),
        config_entry(4, conf("abcd")),
    ]
    core = core_with_log("a", log, commit=3, boot=conf("abc"))
    core.ready()  # hand the committed entries out (applied)
    meta = core.compact(LogIndex(3))
    assert meta.conf == conf("abc", "d")
    assert core.conf == conf("abcd")
    with pytest.raises(RaftError, match="below the snapshot"):
        core.conf_at(LogIndex(2))


def test_membership_goes_through_propose_conf_change_only() -> None:
    core = core_with_log("a", [], commit=0, boot=conf("a"))
    core.campaign()
    assert core.role is Role.LEADER
    with pytest.raises(RaftError, match="propose_conf_change"):
        core.propose(encode_conf(conf("ab")), EntryKind.CONFIG)


def test_a_single_voter_adds_a_learner_once_its_noop_is_committed() -> None:
    """The leader commits an entry of its term before it changes membership; with one voter
    that is as soon as its own no-op is stable."""
    core = core_with_log("a", [], commit=0, boot=conf("a"))
    core.campaign()
    with pytest.raises(ConfChangeBusyError, match="not yet committed an entry of its term"):
        core.propose_conf_change(ConfChange(ADD, NodeId("b")))
    core.advance(core.ready())
    index, _ = core.propose_conf_change(ConfChange(ADD, NodeId("b")))
    assert core.conf == conf("a", "b", b=index) and core.pending_conf_index() == index


# The broken cores (tests/simulator/broken.py) on the "membership" profile: each must be caught
# by a safety violation (not only a stall) within SEEDS seeds; the real core passes them.
SEEDS = 60


def _first_safety_violation(broken: str) -> str | None:
    logging.disable(logging.CRITICAL)
    try:
        for seed in range(SEEDS):
            try:
                run_seed(seed, 3, "membership", broken=broken)
            except SimulationFailure as exc:
                if "liveness" not in str(exc):
                    return str(exc)
    finally:
        logging.disable(logging.NOTSET)
    return None


@pytest.mark.parametrize("broken", ["two-changes-at-once", "change-before-committing-in-term"])
def test_the_simulator_catches_a_broken_membership_rule(broken: str) -> None:
    found = _first_safety_violation(broken)
    assert found is not None, f"{broken}: no safety violation in {SEEDS} seeds"
    assert any(
        kind in found
        for kind in ("election safety", "log matching", "leader completeness", "state machine")
    ), found


def test_the_real_core_passes_the_membership_profile() -> None:
    logging.disable(logging.CRITICAL)
    try:
        for seed in range(SEEDS):
            run_seed(seed, 3, "membership")
    finally:
        logging.disable(logging.NOTSET)
