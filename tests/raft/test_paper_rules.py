"""The Raft core, one rule of the paper per test: each docstring quotes the rule it checks.

Scenarios run on the simulator with manual ticks and a one-unit network, so every step is
deterministic; the SafetyChecker watches every step as in the randomized runs.
"""

from __future__ import annotations

import pytest

from node.raft.core import RaftConfig, RaftCore
from node.raft.errors import NotLeaderError, ProposalDroppedError
from node.raft.progress import ProgressState
from node.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    Message,
    MessageType,
    NodeId,
    Role,
    Term,
)
from tests.simulator.checker import SafetyViolation
from tests.simulator.harness import SimCluster

MT = MessageType


def manual(n: int, **kw: object) -> SimCluster:
    c = SimCluster(n, seed=1, auto_tick=False, **kw)  # type: ignore[arg-type]
    c.delay = (1, 1)
    c.persist_delay = 0
    return c


def elect(c: SimCluster, nid: str) -> None:
    c.core(nid).campaign()
    c.settle()
    assert c.core(nid).role is Role.LEADER


def load_log(c: SimCluster, nid: str, terms: list[int], term: int) -> None:
    """Give node `nid` a log whose entry i+1 has term terms[i], and restart it."""
    node = c.nodes[NodeId(nid)]
    node.core = None
    node.disk.entries = [
        Entry(Term(t), LogIndex(i + 1), EntryKind.NORMAL, f"{i + 1}@{t}".encode())
        for i, t in enumerate(terms)
    ]
    node.disk.hard_state = HardState(Term(term), None, LogIndex(0))
    node.boot()


def expire_lease(c: SimCluster, *nids: str) -> None:
    """As if an election timeout passed on `nids` without word from the leader."""
    for nid in nids:
        c.core(nid)._election_elapsed = c.core(nid).config.election_ticks_min


def win(c: SimCluster, nid: str, *voters: str) -> None:
    """Campaign at `nid` until it leads (a failed pre-vote teaches it the newer term), and
    stop as soon as it does, before its first appends are delivered."""
    for _ in range(3):
        expire_lease(c, *voters)
        c.core(nid).campaign()
        if c.run_until_true(lambda: c.core(nid).role is Role.LEADER, strict=False):
            return
    raise AssertionError(f"{nid} did not win")


def log_terms(c: SimCluster, nid: str) -> list[int]:
    log = c.core(nid).log
    return [int(log.term(i) or 0) for i in range(1, log.last_index() + 1)]


def single_core(**kw: object) -> RaftCore:
    cfg = RaftConfig(node_id=NodeId("a"), **kw)  # type: ignore[arg-type]
    return RaftCore(cfg, __import__("random").Random(1), conf=ConfState((NodeId("a"),)))


# ---------------------------------------------------------------- elections (§5.2)


def test_candidate_with_majority_becomes_the_only_leader() -> None:
    """§5.2: "A candidate wins an election if it receives votes from a majority of the
    servers in the full cluster for the same term." """
    c = manual(5)
    elect(c, "c")
    assert c.leaders() == ["c"]
    assert all(c.core(n).term == 1 for n in "abcde")
    assert all(c.core(n).leader == "c" for n in "abcde")


def test_each_server_votes_at_most_once_per_term_even_across_restarts() -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis" — and Figure 2: votedFor is persistent state."""
    c = manual(3)
    c.partition(["a", "b"], ["c"])
    elect(c, "a")
    c.partition(["a"], ["b", "c"])
    c.crash(NodeId("b"), torn=False)
    c.restart(NodeId("b"))
    assert c.core("b").vote == "a"
    c.core("c").campaign()  # pre-vote at term 1 is refused by b, which voted for a
    c.settle()
    assert c.core("c").role is not Role.LEADER


def test_forgetting_the_vote_on_restart_is_caught_by_the_checker() -> None:
    """The checker is checked: a core that forgets its vote lets two leaders share a term."""
    c = manual(3, forget_vote_on_restart=True)
    c.partition(["a", "b"], ["c"])
    c.core("a").campaign()
    c.run_until_true(lambda: c.core("a").role is Role.LEADER)
    c.partition(["a"], ["b", "c"])  # before its no-op reaches b
    c.crash(NodeId("b"), torn=False)
    c.restart(NodeId("b"))
    c.core("c").campaign()
    with pytest.raises(SafetyViolation, match="election safety"):
        c.settle()


def test_vote_requires_an_up_to_date_log() -> None:
    """§5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the
    candidate ... If the logs have last entries with different terms, then the log with the
    later term is more up-to-date." """
    c = manual(3)
    load_log(c, "a", [1, 1], 2)
    load_log(c, "b", [1, 2], 2)
    load_log(c, "c", [1, 2, 2], 2)
    c.core("a").campaign()
    c.settle()
    assert c.core("a").role is not Role.LEADER
    elect(c, "c")


def test_votes_and_append_responses_wait_for_persistence() -> None:
    """Figure 2: persistent state is "updated on stable storage before responding to RPCs".
    The core puts every vote and append response in persisted_messages."""
    core = RaftCore(
        RaftConfig(node_id=NodeId("b")),
        __import__("random").Random(1),
        conf=ConfState((NodeId("a"), NodeId("b"), NodeId("c"))),
    )
    core.step(Message(MT.VOTE, NodeId("a"), NodeId("b"), Term(1), index=LogIndex(0)))
    rd = core.ready()
    assert rd.messages == ()
    assert [m.type for m in rd.persisted_messages] == [MT.VOTE_RESP]
    assert rd.hard_state == HardState(Term(1), NodeId("a"), LogIndex(0)) and rd.must_sync
    core.advance(rd)
    entry = Entry(Term(1), LogIndex(1), EntryKind.NOOP)
    core.step(Message(MT.APPEND, NodeId("a"), NodeId("b"), Term(1), entries=(entry,)))
    rd = core.ready()
    assert rd.entries == (entry,) and rd.messages == ()
    assert [m.type for m in rd.persisted_messages] == [MT.APPEND_RESP]


def test_leader_counts_itself_only_once_its_write_is_synced() -> None:
    """Thesis §10.2.1: "the leader can write to its disk in parallel with replicating to the
    followers" — its own vote toward commitment counts only once its entries are durable."""
    core = single_core(election_ticks_min=2, election_ticks_max=3, heartbeat_ticks=1)
    core.campaign()
    rd = core.ready()
    assert core.role is Role.LEADER and rd.entries and not rd.committed_entries
    assert core.log.committed == 0
    core.advance(rd)
    assert core.log.committed == 1
    assert [e.index for e in core.ready().committed_entries] == [1]


def test_bootstrap_hint_campaigns_on_the_first_tick_and_wins_term_1() -> None:
    """DESIGN: the configured leader of a fresh cluster campaigns at once and normally
    wins term 1; PreVote keeps failed tries from inflating the term."""
    c = manual(3, preferred_leader=NodeId("b"))
    c.tick(NodeId("b"))
    c.settle()
    assert c.leaders() == ["b"] and c.core("b").term == 1


def test_bootstrap_hint_retries_every_minimum_timeout_without_raising_the_term() -> None:
    """PreVote (thesis §9.6): a hinted node that cannot reach a majority keeps trying at the
    minimum election timeout, and its term does not grow."""
    c = manual(3, preferred_leader=NodeId("a"))
    c.partition(["a"], ["b", "c"])
    for _ in range(5):
        c.tick(NodeId("a"), 10)
        c.settle()
    assert c.core("a").term == 0 and c.core("a").role is Role.PRE_CANDIDATE
    c.heal()
    c.tick(NodeId("a"), 10)
    c.settle()
    assert c.leaders() == ["a"] and c.core("a").term == 1


# ---------------------------------------------------------------- replication (§5.3)


def test_figure_7_followers_converge_to_the_leaders_log() -> None:
    """§5.3, Figure 7: "the leader handles inconsistencies by forcing the followers' logs to
    duplicate its own" — missing entries (a, b), extra entries (c, d), and both (e, f)."""
    c = manual(7)
    load_log(c, "a", [1, 1, 1, 4, 4, 5, 5, 6, 6, 6], 7)  # the leader of term 8
    load_log(c, "b", [1, 1, 1, 4, 4, 5, 5, 6, 6], 7)  # (a)
    load_log(c, "c", [1, 1, 1, 4], 7)  # (b)
    load_log(c, "d", [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6], 7)  # (c)
    load_log(c, "e", [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], 7)  # (d)
    load_log(c, "f", [1, 1, 1, 4, 4, 4, 4], 7)  # (e)
    load_log(c, "g", [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], 7)  # (f)
    elect(c, "a")
    c.core("a").campaign  # noqa: B018 (the leader of term 8 appends its no-op)
    assert c.core("a").term == 8
    c.settle()
    want = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 8]
    for nid in "abcdefg":
        assert log_terms(c, nid) == want, nid
    assert c.core("a").log.committed == 11


def test_fast_backtracking_skips_a_conflicting_term_per_round_trip() -> None:
    """§5.3: "the follower can include the term of the conflicting entry and the first index
    it stores for that term" so the leader bypasses all conflicting entries in that term."""
    c = manual(3)
    load_log(c, "a", [1] + [3] * 30, 3)
    load_log(c, "b", [1] + [2] * 30, 3)
    load_log(c, "c", [1] + [3] * 30, 3)
    elect(c, "a")
    rejects = 0
    orig = c.send

    def counting(m: Message) -> None:
        nonlocal rejects
        rejects += m.type is MT.APPEND_RESP and m.reject and m.sender == "b"
        orig(m)

    c.send = counting  # type: ignore[method-assign]
    c.settle()
    assert log_terms(c, "b") == [1] + [3] * 30 + [4]
    assert rejects <= 2


def test_appends_are_bounded_in_bytes() -> None:
    """TRAPS: gRPC refuses messages over 4 MiB; AppendEntries batches are bounded by bytes."""
    c = manual(3, max_append_bytes=1000)
    elect(c, "a")
    sizes: list[int] = []
    orig = c.send

    def measuring(m: Message) -> None:
        if m.type is MT.APPEND and m.entries:
            sizes.append(sum(e.size() for e in m.entries))
        orig(m)

    c.send = measuring  # type: ignore[method-assign]
    for i in range(50):
        c.core("a").propose(b"x" * 100 + str(i).encode())
    c.nodes[NodeId("a")].drain()
    c.settle()
    assert sizes and max(sizes) <= 1000
    assert c.core("b").log.last_index() == 51


def test_inflight_appends_per_follower_are_bounded() -> None:
    """Flow control (etcd's MaxInflightMsgs): at most max_inflight unacknowledged appends."""
    c = manual(3, max_append_bytes=10, max_inflight=4)
    elect(c, "a")
    c.partition(["a"], ["b", "c"])  # nothing is acknowledged
    for i in range(40):
        c.core("a").propose(str(i).encode())
    c.nodes[NodeId("a")].drain()
    pr = c.core("a").progress(NodeId("b"))
    assert pr is not None and pr.state is ProgressState.REPLICATE
    assert len(pr.inflight) == 4


def test_a_proposal_is_sent_at_once_not_at_the_next_heartbeat() -> None:
    """DESIGN: "A proposal is sent to followers as soon as it is appended, never held for the
    next heartbeat." The Ready right after propose() carries the AppendEntries."""
    c = manual(3)
    elect(c, "a")
    core = c.core("a")
    core.propose(b"hello")
    rd = core.ready()
    appends = [m for m in rd.messages if m.type is MT.APPEND]
    assert {m.to for m in appends} == {"b", "c"}
    assert all(m.entries[-1].data == b"hello" for m in appends)


# ---------------------------------------------------------------- commitment (§5.4.2)


def _figure_8(broken: bool) -> SimCluster:
    from tests.simulator.broken import patch_for

    patch, _ = patch_for("commit-old-term" if broken else None)
    c = manual(5, max_append_bytes=1, core_patch=patch)
    a, b, c_, d, e = (NodeId(x) for x in "abcde")
    elect(c, "a")  # term 1, its no-op at index 1 everywhere
    c.settle()
    # (a) a replicates index 2 only to b
    c.partition([a, b], [c_, d, e])
    c.propose(a, b"x")
    c.settle()
    c.crash(a, torn=False)
    # (b) e wins term 2 with c and d, appends its no-op at index 2, and is cut off
    c.partition([b], [c_, d, e])
    win(c, "e", "c", "d")
    c.partition([b], [c_, d], [e])
    c.settle()
    c.crash(e, torn=False)
    # (c) a restarts and wins term 3 with b and c; its index 2 (term 1) reaches c, so it is
    # on a majority (a, b, c), and a is cut off before its own term-3 entry reaches c
    c.restart(a)
    c.partition([a, b, c_], [d])
    win(c, "a", "b", "c")
    leader = c.core("a")
    c.run_until_true(lambda: all(leader.progress(x).match >= 2 for x in (b, c_)))  # type: ignore[union-attr]
    c.partition([a], [b, c_, d, e])
    c.crash(a, torn=False)
    # (d) e restarts and wins term 4 with c and d (its last term, 2, beats theirs); it never
    # had a's index 2
    c.restart(e)
    win(c, "e", "b", "c", "d")
    return c


def test_figure_8_leader_never_commits_an_old_term_entry_by_counting_replicas() -> None:
    """§5.4.2: "Raft never commits log entries from previous terms by counting replicas.
    Only log entries from the leader's current term are committed by counting replicas."
    Figure 8: the entry of term 1 on a majority is not committed, so e may overwrite it."""
    c = _figure_8(broken=False)
    assert c.core("e").role is Role.LEADER
    c.settle()
    assert log_terms(c, "c")[:2] == [1, 2]  # overwritten, and no checker complained


def test_figure_8_with_a_broken_commit_rule_is_caught_by_the_checker() -> None:
    """The checker is checked: a core that commits an old-term entry by counting replicas
    lets a later leader lack a committed entry (leader completeness) — Figure 8 (d)."""
    with pytest.raises(SafetyViolation, match=r"leader completeness|state machine safety"):
        _figure_8(broken=True)


# ---------------------------------------------------------------- PreVote, CheckQuorum


def test_leader_isolated_with_a_minority_steps_down_and_cannot_commit() -> None:
    """Thesis §6.2 (CheckQuorum): "a leader steps down if an election timeout elapses
    without a successful round of heartbeats to a majority of its cluster"; its entries
    stay uncommitted and are replaced once the majority's leader takes over."""
    c = manual(5)
    elect(c, "a")
    c.partition(["a", "b"], ["c", "d", "e"])
    c.propose(NodeId("a"), b"lost")
    for _ in range(3):
        c.tick(NodeId("a"), 10)
        c.settle()
    assert c.core("a").role is Role.FOLLOWER
    assert c.core("a").log.committed == 1
    expire_lease(c, "c", "d", "e")
    c.core("c").campaign()
    c.settle()
    assert c.leaders() == ["c"]
    c.propose(NodeId("c"), b"kept")
    c.settle()
    c.heal()
    for _ in range(2):
        c.tick(NodeId("c"), 2)
        c.settle()
    for nid in "abcde":
        assert [e.data for e in c.core(nid).log.all_entries()][1:] == [b"", b"kept"], nid


def test_rejoining_node_does_not_disrupt_a_healthy_leader() -> None:
    """Thesis §9.6 (PreVote): "a candidate must first learn whether its log is up-to-date
    enough to win" before raising its term, so a node coming back from a partition does not
    depose a leader that the rest of the cluster still hears."""
    c = manual(3)
    elect(c, "a")
    c.partition(["a", "b"], ["c"])
    for _ in range(10):
        c.tick(NodeId("c"), 20)
        c.tick(NodeId("a"), 2)
        c.settle()
    assert c.core("c").term == 1  # pre-votes failed: the term did not grow
    c.heal()
    c.tick(NodeId("c"), 20)  # c tries once more right after the heal
    c.tick(NodeId("a"), 2)
    c.settle()
    assert c.leaders() == ["a"] and c.core("a").term == 1


def test_followers_ignore_a_higher_term_vote_while_they_hear_a_leader() -> None:
    """Thesis §4.2.3: "if a server receives a RequestVote request within the minimum election
    timeout of hearing from a current leader, it does not update its term or grant its vote"."""
    c = manual(3, pre_vote=False)
    elect(c, "a")
    c.core("b").step(
        Message(MT.VOTE, NodeId("c"), NodeId("b"), Term(9), log_term=Term(9), index=LogIndex(9))
    )
    assert c.core("b").term == 1 and c.core("b").vote == "a"


# ---------------------------------------------------------------- reads, transfer, snapshots


def test_read_index_is_answered_only_after_a_majority_confirms_the_leader() -> None:
    """Thesis §6.4: the leader records its commit index as the read index, then "sends a new
    round of heartbeats ... and waits for their acknowledgments" before answering."""
    c = manual(3)
    elect(c, "a")
    c.partition(["a"], ["b", "c"])
    c.read(NodeId("a"), 1)
    c.settle()
    assert 1 not in c.reads_done  # no majority: no answer
    c.heal()
    c.read(NodeId("a"), 2)
    c.settle()
    assert c.reads_done[2] == 1
    assert 1 in c.reads_done  # the earlier read is confirmed by the later round too


def test_read_index_waits_for_the_leader_to_commit_in_its_term() -> None:
    """Thesis §6.4 step 1: "If the leader has not yet marked an entry from its current term
    committed, it waits until it has done so." """
    c = manual(3)
    c.core("a").campaign()
    c.run_until_true(lambda: c.core("a").role is Role.LEADER)
    c.read(NodeId("a"), 7)
    assert 7 not in c.reads_done
    c.settle()
    assert c.reads_done[7] == 1


def test_reads_and_proposals_on_a_follower_name_the_leader() -> None:
    """Only the leader serves linearizable reads and accepts proposals; others redirect."""
    c = manual(3)
    elect(c, "a")
    with pytest.raises(NotLeaderError) as err:
        c.core("b").propose(b"x")
    assert err.value.leader_hint == "a"
    with pytest.raises(NotLeaderError):
        c.core("b").read_index(1)


def test_leader_transfer_with_timeout_now() -> None:
    """Thesis §3.10: "the prior leader sends its log entries to the target server", then "a
    TimeoutNow request to the target server", which "starts a new election" at once and wins;
    proposals are refused during the transfer."""
    c = manual(3)
    elect(c, "a")
    c.partition(["a", "c"], ["b"])
    c.propose(NodeId("a"), b"b lacks this")
    c.settle()
    c.heal()
    c.core("a").transfer_leadership(NodeId("b"))
    with pytest.raises(ProposalDroppedError):
        c.core("a").propose(b"refused")
    c.nodes[NodeId("a")].drain()
    c.settle()
    assert c.leaders() == ["b"] and c.core("b").term == 2
    assert b"b lacks this" in [e.data for e in c.core("b").log.all_entries()]


def test_leader_transfer_aborts_after_an_election_timeout() -> None:
    """Thesis §3.10: "if the transfer does not complete within an election timeout, the prior
    leader aborts the transfer and resumes accepting client requests"."""
    c = manual(3)
    elect(c, "a")
    c.partition(["a", "c"], ["b"])
    c.core("a").transfer_leadership(NodeId("b"))
    c.tick(NodeId("a"), 10)
    c.settle()
    assert c.core("a").role is Role.LEADER
    c.core("a").propose(b"accepted again")


def test_follower_behind_the_compacted_log_is_restored_by_snapshot() -> None:
    """§7: "the leader must occasionally send snapshots to followers that lag behind ... when
    the leader has already discarded the next log entry that it needs to send"."""
    c = manual(3)
    elect(c, "a")
    c.crash(NodeId("c"), torn=False)
    for i in range(20):
        c.propose(NodeId("a"), f"m{i}".encode())
        c.settle()
    for nid in "ab":
        c.nodes[NodeId(nid)].maybe_compact(keep=0)
    assert c.core("a").log.snapshot_index() == 21
    c.restart(NodeId("c"))
    c.tick(NodeId("a"), 2)
    c.settle()
    c.tick(NodeId("a"), 2)
    c.settle()
    node_c = c.nodes[NodeId("c")]
    assert node_c.disk.snapshot is not None and node_c.disk.snapshot.index == 21
    assert node_c.sm.applied == 21
    c.propose(NodeId("a"), b"after")
    c.settle()
    assert node_c.sm.base[-1][2] == b"after"


def test_non_members_are_ignored() -> None:
    """Membership is data (ConfState): a message from outside it changes nothing."""
    c = manual(3)
    elect(c, "a")
    c.core("b").step(Message(MT.VOTE, NodeId("z"), NodeId("b"), Term(5), index=LogIndex(9)))
    assert c.core("b").term == 1


def test_rejoining_node_with_a_higher_term_is_brought_back_without_losing_entries() -> None:
    """Thesis §9.6 with §3.3: a node that returns with a higher term (it campaigned before
    PreVote could stop it, e.g. an old version) answers the leader's heartbeats with that term;
    "if a server receives a request with a stale term number, it rejects the request" and the
    leader steps down. PreVote then elects a node with the up-to-date log: nothing committed is
    lost, and the returning node does not win with its shorter log."""
    c = manual(3)
    elect(c, "a")
    c.partition(["a", "b"], ["c"])
    for i in range(3):
        c.propose(NodeId("a"), f"m{i}".encode())
    c.settle()
    node_c = c.nodes[NodeId("c")]
    node_c.core = None
    node_c.disk.hard_state = HardState(Term(7), None, node_c.disk.hard_state.commit)
    node_c.boot()
    c.heal()
    c.tick(NodeId("a"), 2)  # a heartbeat reaches c, whose answer carries term 7
    c.settle()
    assert c.core("a").role is Role.FOLLOWER and c.core("a").term == 7
    expire_lease(c, "a", "b", "c")
    c.core("c").campaign()  # c's log is behind: its pre-vote fails
    c.settle()
    assert c.core("c").role is not Role.LEADER
    win(c, "b", "a", "c")
    c.settle()
    assert c.core("b").term == 8
    assert [e.data for e in c.core("c").log.all_entries()][1:4] == [b"m0", b"m1", b"m2"]
