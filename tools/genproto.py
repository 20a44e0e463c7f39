"""Generate the Python code for protos/*.proto into a package folder (default: generated/).

`make proto` runs this; tests/test_generated_fresh.py runs it into a temporary folder and compares, so a
stale generated/ fails the suite. grpcio-tools writes `import ai_service_pb2` in the *_grpc modules,
which only works with the folder on sys.path; we rewrite it to a relative import so that
`from generated import ai_service_pb2, ai_service_pb2_grpc` works from the repository root.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from google.rpc import status_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
INIT_TEXT = '"""Code generated from protos/ by `make proto`. Do not edit."""\n'
_ABSOLUTE_PB2_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(PROTO_DIR.glob("*.proto"))  # not protos/google/: a copy of googleapis, for buf only
    include = Path(protoc.__file__).parent / "_proto"
    # google/rpc/status.proto ships with googleapis-common-protos, whose Python modules we import at runtime.
    googleapis = Path(status_pb2.__file__).parent.parent.parent
    # The mypy-protobuf plugins are installed next to this interpreter, which may not be on PATH.
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{googleapis}",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in out_dir.glob("*_pb2*.py*"):
        text = path.read_text()
        fixed = _ABSOLUTE_PB2_IMPORT.sub(lambda m: f"from . import {m[1]}{m[2] or ''}", text)
        if fixed != text:
            path.write_text(fixed)
    (out_dir / "__init__.py").write_text(INIT_TEXT)
    (out_dir / "py.typed").write_text("")
    return sorted(p for p in out_dir.iterdir() if p.is_file())


def stale_files(committed: Path = ROOT / "generated") -> list[str]:
    """Names of the files in `committed` that differ from a fresh generation (missing or extra too)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in generate(Path(tmp) / "generated")}
    current = {p.name: p.read_bytes() for p in committed.iterdir() if p.is_file()} if committed.is_dir() else {}
    return sorted(name for name in fresh.keys() | current.keys() if fresh.get(name) != current.get(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "generated")
    parser.add_argument("--check", action="store_true", help="fail if --out is not what generation makes")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        if stale:
            print(f"{args.out} is stale ({', '.join(stale)}): run `make proto` and commit", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
