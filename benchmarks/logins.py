"""What logins cost at the production scrypt cost: `python -m benchmarks.logins` prints JSON.

Issue 11 sets OWASP's figure (n=2^17, r=8, p=1: 128 MiB a hash) as the default and has each
node compute one hash at a time, so that memory stays bounded; the price is latency under a
burst. This starts a real 3-node cluster (the repository's cluster.yaml relocated to free
ports and a temporary directory, at the default cost), registers N users, then logs all N in at
once, and reports each login's latency and the leader's peak RSS while they ran.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.cluster import bench_cluster
from node.config import ScryptCost
from supervisor.bench import percentile
from supervisor.cluster import Cluster
from supervisor.sender import Sender


def run(users: int, cost: ScryptCost) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="chatbooth-logins-") as tmp:
        config = dataclasses.replace(bench_cluster(Path(tmp)), scrypt=cost)
        with Cluster(config, links=False) as cluster:
            leader = cluster.wait_leader()
            addresses = {n: cluster.address(n) for n in cluster.node_ids}
            tls = cluster.credentials
            process = psutil.Process(cluster.pid(leader))
            peak = [process.memory_info().rss]
            base_rss = peak[0]
            stop = threading.Event()

            def watch() -> None:
                while not stop.wait(0.02):
                    peak[0] = max(peak[0], process.memory_info().rss)

            async def scenario() -> tuple[list[float], float, int]:
                async with Sender(addresses, leader=leader, call_timeout_s=120, tls=tls) as setup:
                    for i in range(users):
                        await setup.register(f"user{i}", "pw", timeout_s=120)

                async def one(i: int) -> float:
                    async with Sender(addresses, leader=leader, call_timeout_s=300, tls=tls) as s:
                        started = time.monotonic()
                        await s.login(f"user{i}", "pw", timeout_s=300)
                        return time.monotonic() - started

                watcher = threading.Thread(target=watch, daemon=True)
                watcher.start()
                started = time.monotonic()
                latencies = await asyncio.gather(*(one(i) for i in range(users)))
                return list(latencies), time.monotonic() - started, base_rss

            latencies, wall, base = asyncio.run(scenario())
            stop.set()
    return {
        "scrypt": dataclasses.asdict(cost),
        "concurrent_logins": users,
        "login_latency_s": {
            "p50": round(statistics.median(latencies), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "max": round(max(latencies), 3),
        },
        "seconds_for_all": round(wall, 3),
        "per_hash_s": round(wall / users, 3),
        "leader_rss_mb": {"before": round(base / 2**20, 1), "peak": round(peak[0] / 2**20, 1)},
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.logins", description=__doc__)
    p.add_argument("--users", type=int, default=64, help="concurrent logins (default 64)")
    p.add_argument("--n", type=int, default=ScryptCost().n, help="scrypt n (default 2^17)")
    args = p.parse_args()
    print(json.dumps(run(args.users, ScryptCost(n=args.n)), indent=1))


if __name__ == "__main__":
    main()
