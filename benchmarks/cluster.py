"""How fast is a real cluster? `python -m benchmarks.cluster` prints one JSON object.

A thin wrapper: it writes a 3-node cluster.yaml of its own on free ports in a temporary
directory and runs supervisor/bench.py on it (the measuring logic lives there, shared with
`python -m supervisor bench cluster.yaml`, whose docstring lists the figures). Options as
there, plus --table for the readable form; JSON is the default here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from supervisor.bench import add_arguments, render_table, run_benchmark, settings_from
from supervisor.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def write_config(directory: Path, nodes: int = 3) -> Path:
    ids = [chr(ord("a") + i) for i in range(nodes)]
    lines = "\n".join(f"  {n}: {{host: 127.0.0.1, port: {free_port()}}}" for n in ids)
    path = directory / "cluster.yaml"
    path.write_text(
        "cluster: bench\n"
        "leader: a\n"
        "data_dir: ./data\n"
        "chat:\n  queue_limit: 10000000\n  scrypt: {n: 1024, r: 8, p: 1}\n"
        f"nodes:\n{lines}\n"
    )
    return path


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
        result = run_benchmark(write_config(Path(tmp)), settings)
    print(render_table(result) if args.table else json.dumps(result, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
