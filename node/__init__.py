"""A chatbooth node: the Raft core, durable storage, the chat state machine and the gRPC server.

Layers, bottom up (each imports only those below it): config, raft (pure core), storage, chat,
driver, server. See DESIGN.md's layer map.
"""
