"""The chat client: `client.api.ChatClient` (leader finding, failover, retries with request ids,
subscriptions that survive failover) and `python -m client`, its REPL (client/repl.py).

The library, bottom first: client.values (messages, statuses, addresses), client.router (the
nodes, the leader, rounds and verdicts: pure functions of code, reason and leader metadata),
client.writes (the write pipeline: request ids, client sessions, resends), client.subscription
(streams that resume), and client.api, the facade (import from there). Beside them:
client.errors, client.stub (the typed stub), client.escape (what a terminal may be shown),
client.lines (a threaded line reader). The client imports nothing of node/ but node.config
(the cluster.yaml loader); the wire's words are protos.vocabulary's.
"""
