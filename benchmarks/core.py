"""How fast is the pure Raft core? `python -m benchmarks.core` prints JSON.

- committed_entries_per_s: 100-byte entries proposed in batches to the leader of a 3-node
  cluster whose cores talk through an in-memory transport with instant "disks"; counts
  entries applied on the leader per second of wall time.
- simulated_ticks_per_s: ticks of a whole idle 3-node cluster (elections and heartbeats
  included) per second, on the simulator's virtual clock and network.
Target (issue 2): at least 100,000 committed entries/s, so the core never limits a node.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import deque
from random import Random

from node.raft.core import RaftConfig, RaftCore
from node.raft.types import ConfState, Message, NodeId, Role


class InMemoryCluster:
    """Cores wired directly: every Ready is persisted at once and its messages delivered."""

    def __init__(self, n: int = 3) -> None:
        ids = [NodeId(chr(ord("a") + i)) for i in range(n)]
        conf = ConfState(tuple(ids))
        self.cores = {
            nid: RaftCore(
                RaftConfig(node_id=nid, max_inflight=64, preferred_leader=nid == ids[0]),
                Random(i),
                conf=conf,
            )
            for i, nid in enumerate(ids)
        }
        self.inbox: deque[Message] = deque()
        self.applied = 0

    def pump(self) -> None:
        busy = True
        while busy:
            busy = False
            for core in self.cores.values():
                while core.has_ready():
                    busy = True
                    rd = core.ready()
                    self.inbox.extend(rd.messages)
                    self.inbox.extend(rd.persisted_messages)
                    core.advance(rd)
                    if core.role is Role.LEADER:
                        self.applied += len(rd.committed_entries)
            while self.inbox:
                busy = True
                m = self.inbox.popleft()
                self.cores[m.to].step(m)

    def elect(self) -> RaftCore:
        first = next(iter(self.cores.values()))
        first.tick()
        self.pump()
        if first.role is not Role.LEADER:
            raise RuntimeError("no leader")
        return first


def bench_commit(total: int, batch: int) -> dict[str, float]:
    c = InMemoryCluster()
    leader = c.elect()
    c.applied = 0
    payload = b"x" * 100
    start = time.perf_counter()
    sent = 0
    while sent < total:
        for _ in range(batch):
            leader.propose(payload)
        sent += batch
        c.pump()
    elapsed = time.perf_counter() - start
    if c.applied < total:
        raise RuntimeError(f"only {c.applied} of {total} applied")
    return {"committed_entries_per_s": round(total / elapsed), "batch": batch}


def bench_ticks(ticks: int) -> dict[str, float]:
    from tests.simulator.harness import SimCluster

    c = SimCluster(3, seed=1)
    start = time.perf_counter()
    c.run_for(ticks)
    elapsed = time.perf_counter() - start
    return {"simulated_ticks_per_s": round(ticks / elapsed)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.core", description=__doc__)
    p.add_argument("--entries", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--ticks", type=int, default=20_000)
    args = p.parse_args()
    result: dict[str, object] = {
        "benchmark": "raft-core",
        "python": platform.python_version(),
        "entry_bytes": 100,
        "nodes": 3,
    }
    result.update(bench_commit(args.entries, args.batch))
    result.update(bench_ticks(args.ticks))
    result["target_committed_entries_per_s"] = 100_000
    print(json.dumps(result))


if __name__ == "__main__":
    main()
