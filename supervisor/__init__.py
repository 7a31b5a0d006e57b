"""The supervisor: a library that runs a whole chatbooth cluster on one machine and breaks it
on purpose, with real faults only (processes killed, stopped and paused by signal; links cut or
slowed by TCP proxies between the nodes; never a fault faked inside a node), and the tools on
top of it.

The library, each module importing only those above it in this list:

    errors      SupervisorError, the root of every error the supervisor raises on purpose
    ports       free_port
    links       LinkNetwork: one proxy per directed link between nodes (partition, heal, slow)
    processes   NodeProcess, ProcessTable: spawn, signal and reap node processes
    events      EventFeed: what happened to a cluster (faults, exits, elections), timestamped
    nodeconfig  a ClusterConfig as cluster.yaml text, the way nodes are handed a relocated one
    formation   the cluster's id (data_dir/cluster.id) and whether it has formed
    certs       the cluster's CA and certificates (data_dir/tls), and channel credentials
    history     the history checker (pure data in, a Verdict out)
    report      one self-contained HTML file of a check or bench run, with its charts
    sender      Sender: leader-following chat calls over raw gRPC, request ids in one place
    load        bench's load from several client processes; CPU time per process (psutil)
    cluster     Cluster: the API tests, benchmarks and the tools use, from a cluster.yaml path
                or a ClusterConfig (relocate one with dataclasses.replace)
    membership  Membership: members, add, remove, replace on a running Cluster
    chaos       Chaos, ChaosRunner: one random fault per interval, at most a minority
    web         the live web page `up` serves: web.guard (secret, Host, Origin), web.observer
                (what the page shows, from rounds of Status), web.server (WebView: aiohttp on a
                thread and loop of its own); the page itself is web/static

The tools, which nothing in the library imports:

    repl        the fault REPL (prompt `cluster NAME> `)
    check       python -m supervisor check cluster.yaml   (random faults + the history check)
    bench       python -m supervisor bench cluster.yaml   (benchmarks/cluster.py wraps it)
    member_command  python -m supervisor member list|add-learner|promote|remove (other machines)
    __main__    python -m supervisor up cluster.yaml      (a cluster and its fault REPL)

The tools, the tests and the benchmarks import what they use from those modules
(`from supervisor.cluster import Cluster`); this package re-exports the Cluster API and its
errors for anyone else (`from supervisor import Cluster`). What a link proxy costs is measured
by benchmarks/links.py, not here.

Nothing in the supervisor imports node internals (only node.config, the shared loader) or
client (but for client.lines, the standard-library stdin reader the fault REPL shares with the
chat REPL); tests/test_layers.py holds the package to that and to the order above.
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
from supervisor.links import LinkError
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
    "SupervisorError",
    "UnknownNodeError",
    "majority_leader",
]
