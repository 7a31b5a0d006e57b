"""Build step: generate protos/*_pb2*.py (and .pyi stubs) from protos/*.proto.

The generated files are written into protos/ itself (git-ignored), so an editable install sees
them too. The proto path is the repository root, so they import as `from protos import chat_pb2`.
"""

from __future__ import annotations

import glob
import os

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
    args = [
        "grpc_tools.protoc",
        f"--proto_path={ROOT}",
        f"--proto_path={include}",
        f"--python_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        f"--pyi_out={ROOT}",
        *[os.path.relpath(s, ROOT) for s in sources],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("setup.py: protoc failed on " + ", ".join(sources))


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
