"""The pure Raft core, in the manner of etcd's raft package.

It must not import asyncio, grpc, time, random, os, or anything that does I/O; a seeded
random.Random is passed in. Time is tick(), input is step()/propose(), output is a Ready.
Import from the submodules: node.raft.types (values), node.raft.core (RaftCore),
node.raft.errors.
"""
