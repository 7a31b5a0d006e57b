"""node/chat imports node.config, its own modules and the standard library, nothing else:
no grpc, no asyncio, no protos, no clock or randomness inside the state machine. Only the
modules that keep the state on disk (the database and the state that owns its connections)
touch files and threads."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

CHAT = Path(__file__).resolve().parents[2] / "node" / "chat"
FORBIDDEN_STDLIB = {"asyncio", "random", "secrets", "time", "datetime", "os", "socket", "threading"}
# The database's files (os) and the readers' connections, one per thread (threading).
STORAGE_STDLIB = {"database.py": {"os"}, "state.py": {"threading"}}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted(CHAT.glob("*.py")), ids=lambda p: p.name)
def test_chat_modules_import_only_what_they_may(path: Path) -> None:
    for name in imports(path):
        top = name.split(".")[0]
        if top == "node":
            assert name == "node.config" or name.startswith("node.chat."), name
        else:
            assert top in sys.stdlib_module_names or top == "__future__", name
            assert top not in FORBIDDEN_STDLIB - STORAGE_STDLIB.get(path.name, set()), name


def test_every_chat_module_says_what_it_is_for() -> None:
    for path in CHAT.glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc and "import" in doc.lower(), path.name
