"""Build step: generate protos/*_pb2*.py (and .pyi stubs) from protos/*.proto.

The generated files are written into protos/ itself (git-ignored), so an editable install sees
them too. The proto path is the repository root, so they import as `from protos import chat_pb2`.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = os.path.dirname(os.path.abspath(__file__))


def generate_protos() -> None:
    from grpc_tools import protoc  # available: listed in [build-system] requires

    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    sources = sorted(glob.glob(os.path.join(ROOT, "protos", "*.proto")))
    if not sources:
        raise SystemExit("setup.py: no .proto files under protos/")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={ROOT}",
            f"--proto_path={include}",
            f"--python_out={ROOT}",
            f"--grpc_python_out={ROOT}",
            # typed stubs (mypy-protobuf) for the messages and the gRPC services
            f"--plugin=protoc-gen-mypy={_plugin(tmp, 'main')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin(tmp, 'grpc')}",
            f"--mypy_out={ROOT}",
            f"--mypy_grpc_out={ROOT}",
            *[os.path.relpath(s, ROOT) for s in sources],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("setup.py: protoc failed on " + ", ".join(sources))


def _plugin(tmp: str, entry: str) -> str:
    """An executable that runs mypy-protobuf's `entry` with this interpreter (protoc needs a
    path, and the build environment's scripts directory is not always on PATH)."""
    path = os.path.join(tmp, f"protoc-gen-{entry}")
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\nfrom mypy_protobuf.main import {entry}\n{entry}()\n")
    os.chmod(path, 0o755)
    return path


class GenerateProtos(Command):
    description = "generate gRPC code from protos/*.proto"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        generate_protos()


class BuildPy(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


class Develop(develop):
    def run(self) -> None:
        generate_protos()
        super().run()


setup(cmdclass={"build_py": BuildPy, "develop": Develop, "generate_protos": GenerateProtos})
