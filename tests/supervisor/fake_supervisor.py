"""`python -m tests.supervisor.fake_supervisor up ...`: the real supervisor, running the fake
node (tests/supervisor/fake_node.py) instead of `python -m node`, for fast end-to-end tests."""

from __future__ import annotations

import sys
from pathlib import Path

from supervisor.__main__ import main

FAKE_NODE = [sys.executable, str(Path(__file__).with_name("fake_node.py"))]

if __name__ == "__main__":
    sys.exit(main(node_command=FAKE_NODE))
