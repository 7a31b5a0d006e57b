"""Attacks against real nodes: the node tests' cluster (tests/node/conftest.py), one per test,
through the same fixture."""

from __future__ import annotations

from tests.node.conftest import nodes

__all__ = ["nodes"]
