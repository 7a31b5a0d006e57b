"""Attacks against real nodes: the node tests' cluster (tests/node/conftest.py), one per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.conftest import NodeProcesses


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeProcesses]:
    cluster = NodeProcesses(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
        leftover = [p.pid for p in cluster.raw if p.poll() is None]
        assert not leftover, leftover
        os.sync()
