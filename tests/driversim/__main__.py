"""Run or replay driver simulations: python -m tests.driversim --seed N [--nodes 3|5]
[--driver real|early-ack|...] [--seeds COUNT] [-v]."""

from __future__ import annotations

import argparse
import sys
import time

from tests.driversim.broken import DRIVERS
from tests.driversim.harness import SimFailure, run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.driversim")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds from --seed")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--driver", choices=sorted(DRIVERS), default="real")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the whole trace")
    args = parser.parse_args(argv)
    failed = 0
    started = time.perf_counter()
    for seed in range(args.seed, args.seed + args.seeds):
        try:
            outcome = run_seed(seed, args.nodes, args.driver)
        except SimFailure as exc:
            failed += 1
            print(f"seed {seed}: FAILED {exc}")
            continue
        print(
            f"seed {seed}: ok, {outcome.acked} acked, {outcome.unknown} unknown, "
            f"{outcome.crashes} crashes, final index {outcome.final_index}, "
            f"digest {outcome.digest[:16]}"
        )
        if args.verbose:
            print("\n".join(outcome.trace))
    elapsed = time.perf_counter() - started
    print(
        f"{args.seeds - failed}/{args.seeds} passed in {elapsed:.1f} s "
        f"({args.seeds / elapsed:.1f} seeds/s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
