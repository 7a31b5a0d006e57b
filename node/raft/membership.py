"""Membership rules: what a single-server change may do, and how a ConfState is encoded in a
CONFIG entry.

chatbooth changes membership one server at a time (Ongaro's thesis, chapter 4), not by joint
consensus: any majority of the old voters and any majority of the new ones then overlap, so
no two leaders can be elected in one term by disjoint majorities, provided
- a configuration takes effect on a server as soon as its entry is in that server's log,
  committed or not (§4.1), and reverts if the entry is truncated away;
- a leader proposes a change only when no earlier change is uncommitted (§4.1); and
- a leader proposes one only after it has committed an entry of its own term (the fix to the
  single-server algorithm, thesis §4.1 and the raft-dev post of 2015-07-10), which its no-op
  provides.
Why not joint consensus: every change chatbooth needs (add, promote, remove, replace = remove
then add) is one server at a time, and single-server changes keep one configuration in every
rule; etcd's joint configurations buy atomic multi-server swaps, which nobody here asks for.

New servers join as learners (they receive the log, they do not vote), and are promoted once
caught up, so an empty new voter never stalls commitment (thesis §4.2.1).

Pure: imports only node.raft.types and node.raft.errors.
"""

from __future__ import annotations

import json

from node.raft.errors import RaftError
from node.raft.types import ConfChange, ConfChangeOp, ConfState, NodeId

MAX_VOTERS = 7


class ConfChangeError(RaftError):
    """A membership change that cannot be made (it names what is wrong with it)."""


class ConfChangeBusyError(ConfChangeError):
    """A membership change that may not be proposed yet: an earlier one is uncommitted, or the
    leader has not yet committed an entry of its term. Retrying later may succeed."""


def apply_change(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after `change`, or ConfChangeError naming what is wrong with it."""
    node = change.node
    if change.op is ConfChangeOp.ADD_LEARNER:
        if node in conf.voters:
            raise ConfChangeError(f"{node} is already a voter")
        if node in conf.learners:
            raise ConfChangeError(f"{node} is already a learner")
        return ConfState(conf.voters, (*conf.learners, node))
    if change.op is ConfChangeOp.PROMOTE:
        if node in conf.voters:
            raise ConfChangeError(f"{node} is already a voter")
        if node not in conf.learners:
            raise ConfChangeError(f"{node} is not a learner: add it first")
        if len(conf.voters) >= MAX_VOTERS:
            raise ConfChangeError(
                f"{node} cannot become a voter: the cluster has {len(conf.voters)} voters "
                f"(at most {MAX_VOTERS})"
            )
        return ConfState((*conf.voters, node), tuple(n for n in conf.learners if n != node))
    if change.op is ConfChangeOp.REMOVE:
        if node in conf.learners:
            return ConfState(conf.voters, tuple(n for n in conf.learners if n != node))
        if node not in conf.voters:
            raise ConfChangeError(f"{node} is not a member")
        if len(conf.voters) == 1:
            raise ConfChangeError(f"{node} is the only voter: the cluster cannot remove it")
        return ConfState(tuple(n for n in conf.voters if n != node), conf.learners)
    raise ConfChangeError(f"unknown membership change {change.op!r}")


def encode_conf(conf: ConfState) -> bytes:
    """A CONFIG entry's data: canonical JSON, the same bytes on every replica."""
    return json.dumps(
        {"learners": list(conf.learners), "voters": list(conf.voters)},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def decode_conf(data: bytes) -> ConfState:
    """The ConfState in a CONFIG entry; RaftError if it is not one."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RaftError(f"a CONFIG entry is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"learners", "voters"}:
        raise RaftError(f"a CONFIG entry must hold exactly voters and learners, got {doc!r}")
    lists = []
    for key in ("voters", "learners"):
        names = doc[key]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise RaftError(f"a CONFIG entry's {key} must be a list of node ids, got {names!r}")
        lists.append(tuple(NodeId(n) for n in names))
    voters, learners = lists
    if len(set(voters + learners)) != len(voters) + len(learners):
        raise RaftError(f"a CONFIG entry names a node twice: {doc!r}")
    return ConfState(voters, learners)
