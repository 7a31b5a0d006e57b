"""Randomized runs: a fault phase (the nemesis), then a calm phase that must reach liveness.

A run is fully determined by (seed, nodes, profile); a failure prints the command that
replays it: `python -m tests.simulator --seed S --nodes N --profile P`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from random import Random

from node.raft.types import ConfChange, ConfChangeOp, Message, MessageType, NodeId, Role
from tests.simulator.checker import SafetyViolation
from tests.simulator.harness import TICK, SimCluster


@dataclass(frozen=True, slots=True)
class Profile:
    """What the nemesis may do in one run. Every run also draws, from its seed, per-node
    clock rates and phases, per-node disk speeds (fsyncs slower than messages, and stalls),
    message delays and the append size."""

    drop: float = 0.0  # chance a message is lost
    dup: float = 0.0  # chance a message is delivered twice
    reorder: bool = False  # links reorder (else each directed link is one ordered stream)
    partitions: bool = False
    crashes: bool = False  # process crashes (SIGKILL): the page cache survives
    power: bool = False  # power cuts: the unsynced batch is lost, or survives whole
    pauses: bool = False
    compaction: bool = False
    fault_rate: float = 0.25  # chance per tick of a fault decision
    sizes: tuple[int, ...] | None = None  # cluster sizes of the default run (None: all)
    election_ticks: tuple[int, int] = (10, 20)
    message_delay: tuple[int, int] = (1, 6)  # a message takes this many time units
    appends: tuple[tuple[int, int], ...] = ()  # (max_append_bytes, max_inflight) choices
    election_strike: float = 0.6  # chance the nemesis strikes a new leader (or a follower)
    commit_strike: float = 0.05  # chance the nemesis strikes a leader that just committed
    vote_strike: float = 0.0  # chance a node that just granted a vote crashes at once
    fast_restart: int = 2 * TICK  # the latest a struck node comes back
    strike_delay: int = 60  # the latest a strike lands after its trigger
    isolate: float = 0.5  # chance a strike cuts its victim off, rather than crashing it
    isolate_alone: float = 0.0  # chance a cut-off victim is alone (else with a minority)
    # Membership: every run has SPARES machines beyond its initial voters; on a tick, this is
    # the chance that the leader is asked to add a learner, promote one or remove a member.
    membership: float = 0.03


# Aimed profiles: few or no random faults of their own (a low fault_rate), but strikes at the
# moments the subtle bugs need, on three nodes, where they need the fewest coincidences. None
# names a bug or a seed; each is a kind of bad luck a real cluster meets.
# - revote: a node crashes right after it grants a vote and is back within a tick, and a new
#   leader is soon cut off alone; a node that was cut off kept a low term (PreVote does not
#   raise it), so it may ask the restarted voter for a vote in a term that already has a
#   leader (§5.2: the vote must survive the crash).
# - figure8: a leader is cut off alone (or crashes) right after it takes over or commits,
#   with one entry per append, so entries of several terms sit on minorities at one index
#   and a leader cut off within one flight of its commit leaves only that commit behind
#   (§5.4.2, Figure 8).
# - powercut: the machine of a leader that just committed loses power within a flight or
#   two, often before its own write is synced (thesis §10.2.1).
AIMED = {
    "revote": Profile(
        dup=0.02,
        partitions=True,
        crashes=True,
        fault_rate=0.1,
        sizes=(3,),
        election_ticks=(10, 13),
        election_strike=0.9,
        vote_strike=1.0,
        fast_restart=TICK,
        strike_delay=20,
        isolate=0.9,
        isolate_alone=0.8,
    ),
    "figure8": Profile(
        dup=0.02,
        partitions=True,
        crashes=True,
        power=True,
        fault_rate=0.0,
        sizes=(3,),
        appends=((1, 8),),
        election_strike=0.6,
        commit_strike=0.9,
        fast_restart=TICK,
        strike_delay=20,
        isolate=0.9,
        isolate_alone=0.8,
    ),
    "powercut": Profile(
        dup=0.02,
        power=True,
        fault_rate=0.05,
        sizes=(3,),
        commit_strike=0.9,
        fast_restart=TICK,
        strike_delay=10,
    ),
    "membership": Profile(
        dup=0.02,
        partitions=True,
        crashes=True,
        fault_rate=0.1,
        sizes=(3,),
        membership=0.3,
        election_strike=0.6,
        fast_restart=TICK,
        strike_delay=20,
        isolate=0.9,
        isolate_alone=0.5,
    ),
}

PROFILES = {
    "calm": Profile(fault_rate=0.0),
    "lossy": Profile(drop=0.10, dup=0.05, reorder=True),
    "partition": Profile(drop=0.02, dup=0.02, partitions=True),
    "crash": Profile(drop=0.02, dup=0.02, crashes=True, power=True, compaction=True),
    "pause": Profile(dup=0.02, pauses=True),
    "snapshot": Profile(
        drop=0.05, dup=0.02, partitions=True, crashes=True, power=True, compaction=True
    ),
    "all": Profile(
        drop=0.05,
        dup=0.03,
        reorder=True,
        partitions=True,
        crashes=True,
        power=True,
        pauses=True,
        compaction=True,
    ),
    **AIMED,
}

SPARES = 2  # machines outside the first configuration, which membership changes may add
FAULT_TICKS = 200
LIVENESS_TICKS = 400  # after faults stop: a leader and every proposal applied everywhere

# Per-node disks: fsync latency ranges in time units (a message takes 1..6 by default).
DISKS = ((1, 4), (2, 12), (5, 40))
FSYNC_STALL = 0.03  # chance one fsync stalls for FSYNC_STALL_TIME more (fault phase only)
FSYNC_STALL_TIME = (20, 120)
VOTER_STRIKE = 0.6  # chance the nemesis crashes one of a new candidate's voters
SLOW_MESSAGES = 0.03  # chance a message is held up for SLOW_DELAY more (fault phase only)
SLOW_DELAY = (10, 80)
# (max_append_bytes, max_inflight): one entry per append, a few, or many at a time
APPENDS = ((1, 8), (60, 4), (4096, 1), (4096, 8))


@dataclass(frozen=True, slots=True)
class RunResult:
    seed: int
    nodes: int
    profile: str
    committed: int
    elections: int
    messages: int
    trace_digest: str


def replay_command(seed: int, nodes: int, profile: str) -> str:
    return f"python -m tests.simulator --seed {seed} --nodes {nodes} --profile {profile}"


class SimulationFailure(AssertionError):
    pass


def run_seed(
    seed: int,
    nodes: int,
    profile: str,
    *,
    trace: bool = False,
    broken: str | None = None,
) -> RunResult:
    """Run one seed; raise SimulationFailure (with the replay command) on any violation."""
    try:
        return _run(seed, nodes, profile, trace=trace, broken=broken)
    except (SafetyViolation, LivenessFailure) as exc:
        raise SimulationFailure(
            f"{exc}\n  seed {seed}, {nodes} nodes, profile {profile}"
            + (f", broken core {broken}" if broken else "")
            + f"\n  replay: {replay_command(seed, nodes, profile)}"
            + (f" --broken {broken}" if broken else "")
        ) from exc


class LivenessFailure(AssertionError):
    pass


def _run(
    seed: int,
    nodes: int,
    profile: str,
    *,
    trace: bool,
    broken: str | None,
    lines: list[str] | None = None,
) -> RunResult:
    prof = PROFILES[profile]
    from tests.simulator.broken import patch_for

    patch, forget_vote = patch_for(broken)
    rng = Random(seed ^ 0x5EED)  # the nemesis and the client; the cluster has its own
    periods = [rng.randint(TICK * 3 // 4, TICK * 4 // 3) for _ in range(nodes + SPARES)]
    append_bytes, inflight = rng.choice(prof.appends or APPENDS)
    c = SimCluster(
        nodes,
        seed,
        trace=trace,
        core_patch=patch,
        forget_vote_on_restart=forget_vote,
        preferred_leader=NodeId("a") if seed % 2 == 0 else None,
        trace_lines=lines,
        tick_periods=periods,
        max_append_bytes=append_bytes,
        max_inflight=inflight,
        election_ticks=prof.election_ticks,
        spares=SPARES,
    )
    c.drop_rate, c.dup_rate = prof.drop, prof.dup
    c.delay = prof.message_delay
    c.fifo = not prof.reorder
    c.slow_rate, c.slow_delay = SLOW_MESSAGES, SLOW_DELAY
    for node in c.nodes.values():
        node.fsync_range = rng.choice(DISKS)
        node.fsync_stall, node.fsync_stall_time = FSYNC_STALL, FSYNC_STALL_TIME
    c.trace(f"clocks {periods} disks {[n.fsync_range for n in c.nodes.values()]}")
    ids = c.ids
    minority = (nodes - 1) // 2
    proposal_no = 0
    read_no = 0

    def propose_some() -> None:
        nonlocal proposal_no
        for leader in c.leaders():
            for _ in range(rng.randrange(1, 4)):
                proposal_no += 1
                c.propose(leader, f"p{proposal_no}".encode())

    def read_some() -> None:
        nonlocal read_no
        for leader in c.leaders():
            read_no += 1
            c.read(leader, read_no)

    def change_membership() -> None:
        """The operator changes membership through the leader, one server at a time: add a
        machine as a learner, promote a learner (caught up or not), or remove a member (the
        leader itself included). A removed machine keeps running, unaware, until it is
        added again with its disk as it was."""
        leaders = c.leaders()
        if not leaders:
            return
        leader = leaders[0]
        conf = c.core(leader).conf
        outside = [n for n in ids if n not in conf]
        choices: list[ConfChange] = []
        if outside:
            choices.append(ConfChange(ConfChangeOp.ADD_LEARNER, rng.choice(outside)))
        if conf.learners:
            choices.append(ConfChange(ConfChangeOp.PROMOTE, rng.choice(conf.learners)))
        if len(conf.members()) > 1:
            choices.append(ConfChange(ConfChangeOp.REMOVE, rng.choice(conf.members())))
        if choices:
            c.change(leader, rng.choice(choices))

    def target() -> NodeId:
        leaders = c.leaders()
        if leaders and rng.random() < 0.5:
            return leaders[0]
        return rng.choice(ids)

    def nemesis() -> None:
        down = [n for n in ids if c.nodes[n].core is None]
        paused = [n for n in ids if c.nodes[n].paused]
        faulted = down + paused
        may_fault_more = len(faulted) < minority or rng.random() < 0.2
        choice = rng.random()
        if choice < 0.25 and (faulted or c.groups):
            if c.groups and (not faulted or rng.random() < 0.5):
                c.heal()
                return
            nid = rng.choice(faulted)
            if c.nodes[nid].core is None:
                c.restart(nid)
            else:
                c.resume(nid)
            return
        choice = rng.random()
        if prof.partitions and choice < 0.35:
            shuffled = ids[:]
            rng.shuffle(shuffled)
            if rng.random() < 0.5 and c.leaders():
                # the leader in the minority
                leader = c.leaders()[0]
                rest = [x for x in shuffled if x != leader]
                cut = rng.randrange(0, minority + 1)
                c.partition([leader, *rest[:cut]], rest[cut:])
            else:
                k = rng.randrange(1, len(ids))
                groups = [shuffled[:k], shuffled[k:]]
                if len(ids) >= 5 and rng.random() < 0.3:
                    groups = [shuffled[:1], shuffled[1:3], shuffled[3:]]
                c.partition(*groups)
        elif (prof.crashes or prof.power) and choice < 0.8:
            nid = target()
            power = prof.power and (not prof.crashes or rng.random() < 0.5)
            if c.nodes[nid].core is None:
                if power:
                    c.crash(nid, power=True)  # a down node loses its page cache too
                return
            if not may_fault_more:
                return
            c.crash(nid, power=power)
            if rng.random() < 0.7:  # a supervisor restarts it soon; else it stays down
                c.restart_later(nid, rng.randint(1, 3 * TICK))
        elif prof.pauses and may_fault_more:
            nid = target()
            if c.nodes[nid].core is not None and not c.nodes[nid].paused:
                c.pause(nid)
                if rng.random() < 0.6:
                    c.resume_later(nid, rng.randint(1, 4 * TICK))

    faulting = True

    def crash_soon(nid: NodeId) -> None:
        """Crash `nid` (process or power) and bring it back quickly."""
        if not faulting or c.nodes[nid].core is None:
            return
        down = sum(1 for n in ids if c.nodes[n].core is None or c.nodes[n].paused)
        if down >= minority and rng.random() >= 0.2:
            return
        c.crash(nid, power=prof.power and (not prof.crashes or rng.random() < 0.5))
        c.restart_later(nid, rng.randint(1, prof.fast_restart))

    def isolate_soon(nid: NodeId) -> None:
        if not faulting or not prof.partitions:
            return
        rest = [x for x in ids if x != nid]
        rng.shuffle(rest)
        cut = 0 if rng.random() < prof.isolate_alone else rng.randrange(0, minority + 1)
        c.partition([nid, *rest[:cut]], rest[cut:])

    def soon() -> int:
        """A delay from 1 to prof.strike_delay (60) time units, log-uniform: as often within
        one message's flight as within a round trip and an fsync."""
        return int(math.exp(rng.uniform(0.0, math.log(prof.strike_delay))))

    def on_role(nid: NodeId, role: Role) -> None:
        """Strike at elections, where the subtle bugs live: a voter crashes while a
        candidate collects votes; a new leader, or one of its followers, is cut off or
        crashes before its term's first entries are everywhere."""
        if not faulting:
            return
        if role is Role.CANDIDATE and can_crash and rng.random() < VOTER_STRIKE:
            victim = rng.choice([x for x in ids if x != nid])
            c.call_later(rng.randint(1, 2 * TICK), lambda: crash_soon(victim))
        elif role is Role.LEADER and rng.random() < prof.election_strike:
            victim = nid if rng.random() < 0.7 else rng.choice(ids)
            if prof.partitions and (not can_crash or rng.random() < prof.isolate):
                c.call_later(soon(), lambda: isolate_soon(victim))
            elif can_crash:
                c.call_later(soon(), lambda: crash_soon(victim))

    def on_commit(nid: NodeId) -> None:
        """Strike a leader just after it commits: whatever it counted had better be durable
        on a majority, and committed for good."""
        if faulting and rng.random() < prof.commit_strike:
            if prof.partitions and (not can_crash or rng.random() < prof.isolate):
                c.call_later(soon(), lambda: isolate_soon(nid))
            elif can_crash:
                c.call_later(soon(), lambda: crash_soon(nid))

    def on_send(m: Message) -> None:
        """A node whose granted vote is on its way crashes (its vote is on disk: the core
        sends a vote only once it is durable) and comes back before the election is over."""
        vote = m.type is MessageType.VOTE_RESP and not m.reject
        if faulting and vote and rng.random() < prof.vote_strike:
            c.call_later(soon(), lambda: crash_soon(m.sender))

    can_crash = prof.crashes or prof.power
    c.on_role = on_role
    c.on_commit = on_commit
    if prof.vote_strike:
        c.on_send = on_send

    # ----- fault phase -----
    for _ in range(FAULT_TICKS):
        end = c.now + TICK
        if rng.random() < prof.fault_rate:
            c.run_until(c.now + rng.randrange(TICK))  # faults strike between ticks too
            nemesis()
        c.run_until(end)
        if rng.random() < 0.4:
            propose_some()
        if rng.random() < 0.1:
            read_some()
        if rng.random() < prof.membership:
            change_membership()
        if prof.compaction and rng.random() < 0.05:
            c.nodes[rng.choice(ids)].maybe_compact(keep=rng.randrange(0, 4))

    # ----- calm phase: heal everything, then demand liveness -----
    faulting = False
    c.drop_rate = c.dup_rate = c.slow_rate = 0.0
    for node in c.nodes.values():
        node.fsync_stall = 0.0
    c.heal()
    for nid in ids:
        if c.nodes[nid].core is None:
            c.restart(nid)
        elif c.nodes[nid].paused:
            c.resume(nid)
    start = c.now
    deadline = start + LIVENESS_TICKS * TICK
    c.run_for(1)
    retried_at = -(10**9)
    final = f"p{proposal_no + 1}-final".encode()
    while True:
        leaders = c.leaders()
        if leaders and c.now - retried_at >= 40 * TICK:
            # a retrying client: everything not known committed is proposed again
            for data, where in sorted(c.proposals.items()):
                if where is None:
                    c.propose(leaders[0], data)
            c.propose(leaders[0], final)
            retried_at = c.now
        if final in c.proposals and _all_applied(c):
            break
        if c.now >= deadline:
            raise LivenessFailure(
                f"liveness: {LIVENESS_TICKS} ticks after the faults stopped, "
                + ("no leader" if not leaders else "proposals are not applied everywhere")
                + f" ({_describe(c)})"
            )
        c.run_for(1)
    elections = len(c.checker.leader_of_term)
    return RunResult(
        seed,
        nodes,
        profile,
        c.checker.max_applied,
        elections,
        c.messages_sent,
        c.trace_digest(),
    )


def _all_applied(c: SimCluster) -> bool:
    """Every proposal is known applied (at its acked index), and every member of the
    leader's configuration caught up (a removed machine, or one never added, need not be)."""
    if any(where is None for where in c.proposals.values()):
        return False
    target = c.checker.max_applied
    members = c.members()
    return all(n.sm.applied >= target for n in c.nodes.values() if n.id in members)


def _describe(c: SimCluster) -> str:
    parts = []
    for n in c.nodes.values():
        if n.core is None:
            parts.append(f"{n.id}: down")
            continue
        core = n.core
        parts.append(
            f"{n.id}: {core.role.value} t{core.term} last {core.log.last_index()} "
            f"commit {core.log.committed} applied {n.sm.applied} "
            f"voters {','.join(core.conf.voters) or '-'} "
            f"learners {','.join(core.conf.learners) or '-'}"
        )
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.simulator", description=__doc__)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--profile", choices=sorted(PROFILES), default="all")
    p.add_argument("--broken", default=None, help="run a deliberately broken core")
    p.add_argument("--trace", action="store_true", help="print the event trace")
    args = p.parse_args(argv)
    lines: list[str] = []
    try:
        result = _run(
            args.seed, args.nodes, args.profile, trace=True, broken=args.broken, lines=lines
        )
    except (SafetyViolation, LivenessFailure) as exc:
        if args.trace:
            print("\n".join(lines))
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    if args.trace:
        print("\n".join(lines))
    print(result)
    return 0
