"""Regenerate the committed Python code for the agentmesh protos.

Writes `protos/python/agentmesh/<area>/v1/*_pb2.py`, `*_pb2_grpc.py` and typed stubs
(`*.pyi`, from mypy-protobuf) with `-I protos`, so imports read `from agentmesh.memory.v1 import
memory_pb2` and need no rewriting. The vendored googleapis protos are on the include path only:
their Python modules come from the `googleapis-common-protos` wheel.

`--check` regenerates into a temporary directory and exits 1 if anything differs from what is
committed (CI's drift check).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
THIRD_PARTY = PROTO_ROOT / "third_party" / "googleapis"
OUTPUT = PROTO_ROOT / "python"
PACKAGE = "agentmesh"


def _proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE).rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Generate code for every agentmesh proto into `out_dir/agentmesh/...`."""
    package_dir = out_dir / PACKAGE
    if package_dir.exists():
        shutil.rmtree(package_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    bin_dir = Path(sys.executable).parent
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{THIRD_PARTY}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet,generate_concrete_servicer_stubs:{out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in _proto_files()),
    ]
    subprocess.run(command, check=True, cwd=PROTO_ROOT)
    # Make every generated directory a regular, typed package.
    for directory in [package_dir, *(p for p in package_dir.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    (package_dir / "py.typed").touch()


def _differences(left: Path, right: Path) -> list[str]:
    comparison = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found: list[str] = []

    def walk(cmp: filecmp.dircmp[str], prefix: str) -> None:
        found.extend(f"{prefix}{name} (only in committed tree)" for name in cmp.left_only)
        found.extend(f"{prefix}{name} (missing from committed tree)" for name in cmp.right_only)
        for name in cmp.common_files:
            if (Path(cmp.left) / name).read_bytes() != (Path(cmp.right) / name).read_bytes():
                found.append(f"{prefix}{name} (differs)")
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(comparison, f"{PACKAGE}/")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code drifts")
    args = parser.parse_args()
    if not args.check:
        generate(OUTPUT)
        print(f"generated {len(_proto_files())} protos into {OUTPUT.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        generate(fresh)
        drift = _differences(OUTPUT / PACKAGE, fresh / PACKAGE)
    if drift:
        print("generated code is out of date; run `make protos`:", file=sys.stderr)
        for line in drift:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("generated code matches the protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
