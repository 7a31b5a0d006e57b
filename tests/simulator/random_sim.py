"""Randomized runs: a fault phase (the nemesis), then a calm phase that must reach liveness.

A run is fully determined by (seed, nodes, profile); a failure prints the command that
replays it: `python -m tests.simulator --seed S --nodes N --profile P`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from random import Random

from node.raft.types import NodeId
from tests.simulator.checker import SafetyViolation
from tests.simulator.harness import TICK, SimCluster

PROFILES = {
    # name: (drop, dup, partitions, crashes, pauses, compaction)
    "calm": (0.0, 0.0, False, False, False, False),
    "lossy": (0.10, 0.05, False, False, False, False),
    "partition": (0.02, 0.02, True, False, False, False),
    "crash": (0.02, 0.02, False, True, False, True),
    "pause": (0.0, 0.02, False, False, True, False),
    "snapshot": (0.05, 0.02, True, True, False, True),
    "all": (0.05, 0.03, True, True, True, True),
}

FAULT_TICKS = 120
LIVENESS_TICKS = 400  # after faults stop: a leader and every proposal applied everywhere


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
    drop, dup, partitions, crashes, pauses, compaction = PROFILES[profile]
    from tests.simulator.broken import patch_for

    patch, forget_vote = patch_for(broken)
    c = SimCluster(
        nodes,
        seed,
        trace=trace,
        core_patch=patch,
        forget_vote_on_restart=forget_vote,
        preferred_leader=NodeId("a") if seed % 2 == 0 else None,
        trace_lines=lines,
    )
    rng = Random(seed ^ 0x5EED)
    c.drop_rate, c.dup_rate = drop, dup
    ids = c.ids
    minority = (nodes - 1) // 2
    proposal_no = 0
    read_no = 0
    faulted: set[NodeId] = set()

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

    # ----- fault phase -----
    for step in range(FAULT_TICKS):
        c.run_for(1)
        if rng.random() < 0.3:
            propose_some()
        if rng.random() < 0.1:
            read_some()
        if compaction and rng.random() < 0.05:
            c.nodes[rng.choice(ids)].maybe_compact(keep=rng.randrange(0, 4))
        if step % 10 != 0:
            continue
        # one fault decision every 10 ticks: undo something or do something
        if faulted and rng.random() < 0.4:
            nid = rng.choice(sorted(faulted))
            faulted.discard(nid)
            if c.nodes[nid].core is None:
                c.restart(nid)
            elif c.nodes[nid].paused:
                c.resume(nid)
            continue
        choice = rng.random()
        if partitions and choice < 0.3:
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
        elif partitions and choice < 0.45:
            c.heal()
        elif crashes and choice < 0.75 and len(faulted) < minority + (rng.random() < 0.2):
            nid = rng.choice(ids)
            if nid not in faulted:
                c.crash(nid)
                faulted.add(nid)
        elif pauses and choice < 0.9 and len(faulted) < minority + (rng.random() < 0.2):
            nid = rng.choice(ids)
            if nid not in faulted:
                c.pause(nid)
                faulted.add(nid)

    # ----- calm phase: heal everything, then demand liveness -----
    c.drop_rate = c.dup_rate = 0.0
    c.heal()
    for nid in sorted(faulted):
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
    """Every proposal is known applied (at its acked index), and every node caught up."""
    if any(where is None for where in c.proposals.values()):
        return False
    target = c.checker.max_applied
    return all(n.sm.applied >= target for n in c.nodes.values())


def _describe(c: SimCluster) -> str:
    parts = []
    for n in c.nodes.values():
        if n.core is None:
            parts.append(f"{n.id}: down")
            continue
        core = n.core
        parts.append(
            f"{n.id}: {core.role.value} t{core.term} last {core.log.last_index()} "
            f"commit {core.log.committed} applied {n.sm.applied}"
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
