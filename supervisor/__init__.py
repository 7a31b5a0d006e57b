"""The supervisor: runs a whole cluster from cluster.yaml and breaks it on purpose.

Not built yet (issue 4). It will own node processes and the link proxies between nodes, and
never reach into a node to fake a fault.
"""
