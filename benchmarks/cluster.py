"""How fast is a real cluster? `python -m benchmarks.cluster` prints one JSON object.

A thin wrapper: it runs supervisor/bench.py on the repository's cluster.yaml relocated with
dataclasses.replace (`bench_cluster`: 3 nodes on free ports, data in a temporary directory, a
cheap scrypt cost; no file is written). The measuring logic lives in supervisor/bench.py, shared
with `python -m supervisor bench cluster.yaml`, whose docstring lists the figures. Options as
there, plus --table for the readable form; JSON is the default here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from node.config import ClusterConfig, NodeAddress, ScryptCost, load_config
from supervisor.bench import add_arguments, render_table, run_benchmark, settings_from
from supervisor.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BENCH_SCRYPT = ScryptCost(n=1024, r=8, p=1)  # logins are not what this measures


def bench_cluster(directory: Path, nodes: int = 3, source: Path | None = None) -> ClusterConfig:
    """The repository's cluster (or source's: its timings and limits) as `nodes` nodes a, b, ...
    on free 127.0.0.1 ports, data in directory/data, the first node the leader hint."""
    ids = [chr(ord("a") + i) for i in range(nodes)]
    ports: list[int] = []
    for _ in range(2 * len(ids)):  # a client port and a peer port each
        ports.append(free_port(avoid=ports))
    return dataclasses.replace(
        load_config(source or ROOT / "cluster.yaml"),
        cluster="bench",
        leader=ids[0],
        data_dir=directory / "data",
        cluster_key=None,
        cluster_key_file=None,
        scrypt=BENCH_SCRYPT,
        nodes=tuple(
            NodeAddress(n, "127.0.0.1", ports[2 * i], ports[2 * i + 1]) for i, n in enumerate(ids)
        ),
        warnings=(),
    )


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    add_arguments(p, config=False)
    p.add_argument("--table", action="store_true", help="the readable table instead of JSON")
    args = p.parse_args()
    try:
        settings = settings_from(args)
    except ValueError as error:
        p.error(str(error))
    with tempfile.TemporaryDirectory(prefix="chatbooth-bench-config-") as tmp:
        result = run_benchmark(bench_cluster(Path(tmp)), settings)
    print(render_table(result) if args.table else json.dumps(result, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
