"""Replay one simulator seed: python -m tests.simulator --seed S --nodes N --profile P."""

from __future__ import annotations

import sys

from tests.simulator.random_sim import main

if __name__ == "__main__":
    sys.exit(main())
