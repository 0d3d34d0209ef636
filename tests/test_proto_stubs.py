"""The committed stubs are exactly what proto/generate.py makes from the .proto files."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "client" / "equiprune" / "v1"


def _generator():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regenerating_the_stubs_changes_nothing(tmp_path):
    generated = _generator().generate(tmp_path)
    assert generated, "the generator wrote nothing"
    fresh = {p.name: p.read_bytes() for p in generated}
    committed = {p.name: p.read_bytes() for p in COMMITTED.glob("*_pb2*.py*")}
    # The descriptor set server reflection serves (with the .proto comments) is generated too.
    committed["equiprune.protoset"] = (COMMITTED / "equiprune.protoset").read_bytes()
    assert sorted(fresh) == sorted(committed), "stub files differ: run .venv/bin/python proto/generate.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run .venv/bin/python proto/generate.py and commit"


def test_the_descriptor_set_carries_the_proto_comments():
    from google.protobuf import descriptor_pb2

    from equiprune.v1 import file_descriptor_set

    files = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(file_descriptor_set()).file}
    assert {"equiprune/v1/jobs.proto", "google/protobuf/timestamp.proto"} <= set(files)
    comments = " ".join(loc.leading_comments for loc in files["equiprune/v1/jobs.proto"].source_code_info.location)
    assert "JSON object as text" in comments


def test_every_proto_enum_starts_with_unspecified():
    from equiprune.v1 import artifacts_pb2, jobs_pb2, reports_pb2

    for module in (artifacts_pb2, jobs_pb2, reports_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            zero = enum.values_by_number[0].name
            assert zero.endswith("_UNSPECIFIED"), f"{enum.name}: zero value {zero}"


def test_every_rpc_has_its_own_request_and_response():
    from equiprune.v1 import artifacts_pb2, jobs_pb2

    for module in (artifacts_pb2, jobs_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert method.input_type.name == f"{method.name}Request", method.full_name
                assert method.output_type.name == f"{method.name}Response", method.full_name


def _declarations(text: str):
    """(line number, line, documented) for each message, enum, enum value, field and rpc.

    Documented: a `//` comment directly above, or directly above the group of consecutive
    declarations the line belongs to (fields documented together, e.g. a CI's low and high)."""
    import re

    decl = re.compile(r"^\s*(message|enum|service|rpc|oneof|optional|repeated|map<|[A-Za-z_][\w.]*\s+\w+\s*=|[A-Z][A-Z0-9_]*\s*=)")
    documented = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("//"):
            documented = True
        elif not stripped or stripped == "}":
            documented = False
        elif decl.match(line) and not stripped.startswith(("syntax", "package", "import")):
            yield number, stripped, documented
            if stripped.endswith("{"):
                documented = False


def test_every_proto_declaration_is_documented():
    undocumented = [f"{path.name}:{n}: {line}"
                    for path in sorted((ROOT / "proto" / "equiprune" / "v1").glob("*.proto"))
                    for n, line, ok in _declarations(path.read_text()) if not ok]
    assert not undocumented, "\n".join(undocumented)
