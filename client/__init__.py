"""The chat client: `client.api.ChatClient` (leader finding, failover, retries with request ids,
subscriptions that survive failover) and `python -m client`, its REPL (client/repl.py).

Import from the submodules: client.api, client.errors, client.stub, client.repl. The client
imports nothing of node/ but node.config (the cluster.yaml loader).
"""
