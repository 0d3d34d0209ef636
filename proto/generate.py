"""Regenerate the Python stubs of proto/equiprune/v1 into client/equiprune/v1, and the
descriptor set server reflection serves (client/equiprune/v1/equiprune.protoset).

The descriptor set is a FileDescriptorSet of our .proto files and their imports *with source
info*: the .proto comments travel with it, so a reflection client (grpcurl, Postman, a
foreign-language tool) shows the documentation. The generated *_pb2.py files drop comments,
which is why reflection cannot be served from them. It is committed as the binary file protoc
writes, declared as package data in pyproject.toml, so every install carries it and other
tools read it as it is (`grpcurl -protoset client/equiprune/v1/equiprune.protoset`).

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


# Binary FileDescriptorSet (a "protoset"): server reflection serves it, and tools in any language
# read it as it is (`grpcurl -protoset client/equiprune/v1/equiprune.protoset`).
DESCRIPTOR_SET = "equiprune.protoset"


def generate(out_root: Path = DEFAULT_OUT) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi, *_pb2_grpc.py and equiprune.protoset under out_root/equiprune/v1."""
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
    descriptor_set = write_descriptor_set(out_root / "equiprune" / "v1" / DESCRIPTOR_SET, well_known)
    return sorted((out_root / "equiprune" / "v1").glob("*_pb2*.py*")) + [descriptor_set]


def write_descriptor_set(target: Path, well_known: Path) -> Path:
    """protoc --include_imports --include_source_info: every descriptor with its .proto comments."""
    from grpc_tools import protoc

    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", "--include_imports", "--include_source_info",
            f"--descriptor_set_out={target}"] + [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (descriptor set)")
    return target


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
