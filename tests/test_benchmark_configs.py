"""The benchmarks' relocated cluster is a valid configuration (it is built, not parsed)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.cluster import bench_cluster
from node.config import parse_config
from supervisor.nodeconfig import render


def test_the_bench_cluster_is_a_config_the_nodes_accept(tmp_path: Path) -> None:
    config = bench_cluster(tmp_path, nodes=3)
    ports = [p for n in config.nodes for p in (n.port, n.peer_port)]
    assert len(set(ports)) == 6  # a client port and a peer port each, all distinct
    again = parse_config(render(config), tmp_path / "cluster.yaml")
    assert again.nodes == config.nodes
