"""`python -m benchmarks.membership --quick` (issue 14's figures: add and replace under load) as a
real run: it exits 0, reports every figure, the added and the replaced member hold every message
sent, and the load's timeline places both changes on it."""

from __future__ import annotations

import json

import pytest

from benchmarks.membership import ADDED
from tests.test_scale_bench import _run

FIGURES = (
    "add_learner_s",
    "add_s",
    "replace_s",
    "baseline_sends_per_s",
    "during_add",
    "during_replace",
    "sends_per_s",
    "leader_changes",
)


@pytest.mark.cluster
@pytest.mark.slow  # about 40 s; .ci/run runs it
@pytest.mark.timeout(300)
def test_quick_membership_bench_adds_and_replaces_under_load() -> None:
    done = _run("benchmarks.membership", "--quick", "--json", timeout_s=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert [key for key in FIGURES if result.get(key) is None] == []
    assert result["add_node"] == ADDED and result["replace_node"] in ("a", "b", "c")
    assert sorted(result["members"]) == ["a", "b", "c", ADDED]
    assert 0 < result["add_learner_s"] < result["add_s"]
    assert result["add_at_s"] < result["add_end_s"] <= result["replace_at_s"]
    assert result["replace_at_s"] < result["replace_end_s"]
    assert 0 < sum(result["sends_per_s"]) <= result["load_sends"]  # whole seconds only
    assert result["baseline_sends_per_s"] > 0
    for during in ("during_add", "during_replace"):
        assert result[during]["sends_per_s"] > 0, result[during]
