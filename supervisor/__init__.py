"""The supervisor: runs a whole chatbooth cluster on one machine from cluster.yaml and breaks it
on purpose, with real faults only: processes killed, stopped and paused by signal, and links cut
or slowed by TCP proxies between the nodes. It never reaches into a node to fake a fault.

    from supervisor import Cluster            # the API tests and benchmarks use
    python -m supervisor up cluster.yaml      # the same machinery behind the fault REPL

Modules, each importing only those under it: errors <- links, processes <- cluster <- repl
<- __main__. None imports node internals (only node.config, the shared loader) or client.
"""

from __future__ import annotations

from supervisor.cluster import (
    Cluster,
    ClusterClosedError,
    ClusterError,
    NodeExitedError,
    NodeStatus,
    NoLeaderError,
    NotServingError,
    PortInUseError,
    UnknownNodeError,
    majority_leader,
)
from supervisor.errors import SupervisorError
from supervisor.links import LinkError, ProxyCost, measure_cost
from supervisor.processes import NodeExit, ProcessError, ProcessState

__all__ = [
    "Cluster",
    "ClusterClosedError",
    "ClusterError",
    "LinkError",
    "NoLeaderError",
    "NodeExit",
    "NodeExitedError",
    "NodeStatus",
    "NotServingError",
    "PortInUseError",
    "ProcessError",
    "ProcessState",
    "ProxyCost",
    "SupervisorError",
    "UnknownNodeError",
    "majority_leader",
    "measure_cost",
]
