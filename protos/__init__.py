"""The wire contract: raft.proto (node to node) and chat.proto (client to node).

The *_pb2*.py modules here are generated at install time by setup.py (grpcio-tools) and are not
committed. This package imports nothing else from chatbooth.
"""
