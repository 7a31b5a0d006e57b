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
caught up, so an empty new voter never stalls commitment (thesis §4.2.1). An added server's
incarnation is the index of the entry that added it (ConfState): replacing a machine that lost
its disk is remove then add, and the new one is another server under the same name.

Pure: imports only node.raft.types and node.raft.errors.
"""

from __future__ import annotations

import json

from node.raft.errors import RaftError
from node.raft.types import ConfChange, ConfChangeOp, ConfState, LogIndex, NodeId

MAX_VOTERS = 7
_CONF_KEYS = {"incarnations", "learners", "voters"}


class ConfChangeError(RaftError):
    """A membership change that cannot be made (it names what is wrong with it)."""


class ConfChangeBusyError(ConfChangeError):
    """A membership change that may not be proposed yet: an earlier one is uncommitted, or the
    leader has not yet committed an entry of its term. Retrying later may succeed."""


def _with_incarnation(
    conf: ConfState, node: NodeId, incarnation: int | None
) -> tuple[tuple[NodeId, int], ...]:
    """conf's incarnations with node's set to `incarnation` (None: node's dropped)."""
    kept = {n: i for n, i in conf.incarnations if n != node}
    if incarnation:
        kept[node] = incarnation
    return tuple(sorted(kept.items()))


def apply_change(conf: ConfState, change: ConfChange, at: LogIndex) -> ConfState:
    """The configuration after `change`, proposed in the CONFIG entry at index `at` (an added
    member's incarnation), or ConfChangeError naming what is wrong with it."""
    node = change.node
    if change.op is ConfChangeOp.ADD_LEARNER:
        if node in conf.voters:
            raise ConfChangeError(f"{node} is already a voter")
        if node in conf.learners:
            raise ConfChangeError(f"{node} is already a learner")
        if at < 1:
            raise ConfChangeError(f"an added member's entry index must be positive, not {at}")
        incarnations = _with_incarnation(conf, node, at)
        return ConfState(conf.voters, (*conf.learners, node), incarnations)
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
        return ConfState(
            (*conf.voters, node), tuple(n for n in conf.learners if n != node), conf.incarnations
        )
    if change.op is ConfChangeOp.REMOVE:
        incarnations = _with_incarnation(conf, node, None)
        if node in conf.learners:
            return ConfState(
                conf.voters, tuple(n for n in conf.learners if n != node), incarnations
            )
        if node not in conf.voters:
            raise ConfChangeError(f"{node} is not a member")
        if len(conf.voters) == 1:
            raise ConfChangeError(f"{node} is the only voter: the cluster cannot remove it")
        return ConfState(tuple(n for n in conf.voters if n != node), conf.learners, incarnations)
    raise ConfChangeError(f"unknown membership change {change.op!r}")


def encode_conf(conf: ConfState) -> bytes:
    """A CONFIG entry's data: canonical JSON, the same bytes on every replica. Incarnations
    appear only when some member's is not 0 (so a configuration of initial members only is
    encoded as it was before incarnations existed)."""
    doc: dict[str, object] = {"learners": list(conf.learners), "voters": list(conf.voters)}
    if conf.incarnations:
        doc["incarnations"] = dict(conf.incarnations)
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode_conf(data: bytes) -> ConfState:
    """The ConfState in a CONFIG entry; RaftError if it is not one."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RaftError(f"a CONFIG entry is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not {"learners", "voters"} <= set(doc) <= _CONF_KEYS:
        raise RaftError(
            f"a CONFIG entry must hold voters and learners (and incarnations), got {doc!r}"
        )
    lists = []
    for key in ("voters", "learners"):
        names = doc[key]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise RaftError(f"a CONFIG entry's {key} must be a list of node ids, got {names!r}")
        lists.append(tuple(NodeId(n) for n in names))
    voters, learners = lists
    if len(set(voters + learners)) != len(voters) + len(learners):
        raise RaftError(f"a CONFIG entry names a node twice: {doc!r}")
    raw = doc.get("incarnations", {})
    if (
        not isinstance(raw, dict)
        or (not raw and "incarnations" in doc)
        or not all(n in voters + learners and type(i) is int and i > 0 for n, i in raw.items())
    ):
        raise RaftError(
            f"a CONFIG entry's incarnations must map members to positive entry indexes, got {raw!r}"
        )
    return ConfState(voters, learners, tuple(sorted((NodeId(n), i) for n, i in raw.items())))
