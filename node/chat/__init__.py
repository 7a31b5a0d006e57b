"""The chat state machine: accounts, sessions, queues and histories built from committed commands.

Deterministic: `apply` reads no clock, draws no random numbers and uses no salt of its own;
timestamps, salts, password hashes and tokens are made by the node that accepts a request and
travel inside the command. This package imports only node.config and the standard library:
no grpc, no asyncio, no protos, nothing else from chatbooth.

Import from the submodules: node.chat.errors, node.chat.validation, node.chat.passwords,
node.chat.commands, node.chat.replies, node.chat.state.
"""
