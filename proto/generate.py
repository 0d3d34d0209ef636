"""Regenerate the Python stubs of proto/equiprune/v1 into client/equiprune/v1.

The stubs are committed because both the torch-free client and the service import them;
tests/test_proto_stubs.py fails when this script would change them. Run it after editing a
.proto file:  .venv/bin/python proto/generate.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = ROOT / "client"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "equiprune" / "v1").glob("*.proto"))


def generate(out_root: Path = DEFAULT_OUT) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py under out_root/equiprune/v1."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    (out_root / "equiprune" / "v1").mkdir(parents=True, exist_ok=True)
    # -I at the proto root, files named by their package path: the generated imports are
    # then absolute (`from equiprune.v1 import artifacts_pb2`), which the Serve proxy needs.
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}"]
    args += [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / "equiprune" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
