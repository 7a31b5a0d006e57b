"""supervisor/formation.py: the cluster id, whether the cluster formed, and the members added
after it formed, as data_dir records them."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, NodeAddress, load_config
from supervisor import formation
from tests.supervisor.conftest import write_config


def test_the_id_is_made_once_and_fresh_forgets_everything(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    first = formation.ensure_cluster_id(config)
    assert formation.ensure_cluster_id(config) == first == formation.read_cluster_id(config)
    assert not formation.is_formed(config)
    formation.record_formed(config, "a")
    assert formation.is_formed(config)
    added = {"d": formation.AddedMember(NodeAddress("d", "127.0.0.1", 7001, 7002))}
    formation.write_added(config, added)
    formation.wipe(config)
    assert formation.read_cluster_id(config) is None and not formation.is_formed(config)
    assert formation.read_added(config) == {}
    assert formation.ensure_cluster_id(config) != first


def test_added_members_round_trip_in_order(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    config.data_dir.mkdir(parents=True)
    added = {
        "e": formation.AddedMember(NodeAddress("e", "127.0.0.1", 7003, 7004), joined=True),
        "d": formation.AddedMember(NodeAddress("d", "127.0.0.1", 7001, 7002)),
    }
    formation.write_added(config, added)
    assert list(formation.read_added(config).items()) == list(added.items())


@pytest.mark.parametrize(
    "text, wrong",
    [
        ("{", "Expecting property name"),
        ('{"d": {"host": "h"}}', "KeyError\\('added'\\)"),
        ('{"added": {"d": {"host": "h"}}, "removed": []}', "KeyError\\('port'\\)"),
        (
            '{"added": {"d": {"host": "h", "port": "x", "peer_port": 1}}, "removed": []}',
            "invalid literal for int",
        ),
    ],
)
def test_a_damaged_members_file_is_named_with_what_is_wrong(
    tmp_path: Path, text: str, wrong: str
) -> None:
    config = load_config(write_config(tmp_path))
    config.data_dir.mkdir(parents=True)
    (config.data_dir / formation.ADDED_NAME).write_text(text)
    with pytest.raises(ConfigError, match=r"members\.json.*" + wrong):
        formation.read_added(config)


def test_an_empty_or_split_id_file_is_refused(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    config.data_dir.mkdir(parents=True)
    for text in ("", "two ids\n"):
        formation.id_file(config).write_text(text)
        with pytest.raises(ConfigError, match="must hold one cluster id"):
            formation.read_cluster_id(config)
