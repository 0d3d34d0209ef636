"""Auditing a .pt2 archive, and rebuilding it, before ``torch.export.load`` may read it.

(Nothing in this module calls a deserialiser: the loaders named below are what it protects,
called only by `io.load_exported` on the rebuilt archive, inside the sandbox.)

On the safety of ``torch.export.load`` (read in the torch 2.13 source, ``torch/export/
__init__.py``, ``torch/export/pt2_archive/_package.py``, ``torch/_export/serde/serialize.py``,
``torch/export/_unlift.py``): it is *not* safe for untrusted files. Its docstring says it uses
pickle, and concretely:
  * weights or constants whose payload config says ``use_pickle`` (tensor subclasses) are read
    with ``torch.load(weights_only=False)``; torchbind objects with
    ``torch._C._pickle_load_obj``; "opaque" objects with ``pickle.loads``;
  * the sample inputs are read with ``torch.load(weights_only=True)`` but on *any* failure it
    retries with ``weights_only=False``; legacy-layout archives take the same path;
  * AOTInductor artifacts under ``data/aotinductor/`` load a compiled shared library;
  * symbolic shape expressions (``expr_str``) go through ``sympy.sympify``, which calls eval;
  * ``guards_code`` strings are exec'ed when ``ExportedProgram.module()`` builds the module;
  * a graph node's target is any attribute path under ``torch``/``operator``/``math``
    (``torch.load`` would do), called when the module runs;
  * pytree specs may carry ``__enum__`` entries that make it import an arbitrary module.
Plain tensor weights are safe: raw bytes plus JSON metadata, no unpickling.

An audit is only worth anything if it reads what the loader will read. Python's ``zipfile``
and torch's reader (``PyTorchFileReader``, miniz) resolve an archive differently: given the
same entry name twice, one reads one copy and the other the other, so an audit through
``zipfile`` could approve a benign copy while torch unpickled the other. `audit_pt2_archive`
therefore (1) refuses anything ambiguous — a name listed twice, entries torch and ``zipfile``
do not both see, or see with different bytes, compressed or encrypted entries, more than one
top-level folder; (2) audits the entries *as torch's reader returns them*; (3) refuses any
entry outside the known layout, any payload stored as a pickle, and format versions this
torch does not know; and (4) returns a **new archive** that it wrote itself from the audited
entries. Only that rebuilt archive is ever handed to ``torch.export.load``, so the bytes
loaded are the bytes audited by construction, whatever trick the original zip played.

The sample inputs (``data/sample_inputs/<model>.pt``, a pickle in every archive
``torch.export.save`` writes) are never read: the rebuilt archive holds an empty record in
their place, which torch deserialises to "no sample inputs" without unpickling anything. The
input shape comes from the graph's own placeholders instead (`io._example_shape`).
"""

from __future__ import annotations

import io
import json
import re
import struct
import tokenize
import zipfile
from dataclasses import dataclass
from typing import Any

import torch
from torch._export.serde.schema import SCHEMA_VERSION
from torch.export.pt2_archive.constants import ARCHIVE_VERSION_VALUE

from equiprune.engine.errors import InvalidModelError
from equiprune.engine.models.sniff import describe_foreign_bytes, is_torch_save_zip

EXPORTED_FIELD = "model.exported_program"
MAX_ENTRIES = 10_000
MAX_JSON_ENTRY_BYTES = 64 * 2**20  # the program and payload configs; weights are raw and unbounded here
SAMPLE_INPUTS_ENTRY = "data/sample_inputs/model.pt"
# Written by torch's own writer when it rebuilds the archive; never copied from a client file.
_WRITER_RECORDS = (".data/serialization_id",)

_ALLOWED_ARCHIVE_ENTRIES = tuple(re.compile(p) for p in (
    r"archive_format", r"archive_version", r"byteorder", r"\.data/version", r"\.data/serialization_id",
    r"models/model\.json",
    r"data/weights/model_weights_config\.json", r"data/weights/weight_\d+",
    r"data/constants/model_constants_config\.json", r"data/constants/tensor_\d+",
    re.escape(SAMPLE_INPUTS_ENTRY),
    r"extra/[A-Za-z0-9_.\-]+",
))
_ALLOWED_TARGET = re.compile(
    r"torch\.ops\.(aten|prims)\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*"
    r"|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|eq|ne|lt|le|gt|ge|and_|or_|not_)"
    r"|torch\.sym_(max|min|not|float|int|ite)"
)
# ATen ops that touch the file system.
_DENIED_ATEN_OPS = frozenset({"from_file"})
# Names a symbolic shape expression may use: sympy constructors and torch's sympy functions.
_SAFE_EXPRESSION_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Mod", "Max", "Min", "Abs",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan",
    "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "true", "false", "True", "False",
    "oo", "zoo", "nan", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv",
    "CeilToInt", "FloorToInt", "CeilDiv", "Identity", "ToFloat", "TruncToFloat", "TruncToInt",
    "RoundToInt", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
    "zero", "nonzero", "even", "odd", "commutative", "precision",
})  # Pow and its torch variants are left out: Pow(10, 10**18) would exhaust memory.
_SAFE_EXPRESSION_OPERATORS = frozenset(
    {"(", ")", ",", "=", "+", "-", "*", "/", "//", "%", "<", ">", "<=", ">=", "==", "!="}
)
_SYMBOL_NAME = re.compile(r"'[A-Za-z_][A-Za-z0-9_]*'|\"[A-Za-z_][A-Za-z0-9_]*\"")
_MAX_EXPRESSION_LENGTH = 2000


@dataclass(frozen=True)
class AuditedArchive:
    """A .pt2 that passed the audit: `archive` is the rebuilt file to load (never the original),
    `dropped_sample_inputs` whether the original carried sample inputs that were left unread."""

    archive: bytes
    dropped_sample_inputs: bool


def audit_pt2_archive(data: bytes) -> AuditedArchive:
    """Refuse archives that are ambiguous, not plain torch.export programs, or could run code on
    load; return the rebuilt archive that torch may read."""
    entries = _entries_as_torch_reads_them(data)
    _require(entries.get("archive_format") == b"pt2",
             "not a torch.export .pt2 archive (no 'archive_format: pt2' entry)")
    _check_versions(entries)
    _require("models/model.json" in entries, "the archive holds no program named 'model' (models/model.json)")
    for name in entries:
        _require(any(p.fullmatch(name) for p in _ALLOWED_ARCHIVE_ENTRIES),
                 f"archive entry {name!r} is not allowed (only plain exported programs are accepted: "
                 "no AOTInductor libraries, pickled objects, other programs or legacy layouts)")
    _check_payload_config(entries, "data/weights/model_weights_config.json", "data/weights/", "weight_", "weights")
    _check_payload_config(entries, "data/constants/model_constants_config.json", "data/constants/", "tensor_",
                          "constants")
    _check_program_json(entries["models/model.json"])
    return AuditedArchive(_rebuilt(entries), dropped_sample_inputs=bool(entries.get(SAMPLE_INPUTS_ENTRY)))


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise InvalidModelError(EXPORTED_FIELD, problem)


# --- reading the archive exactly as torch does ---------------------------------------------


def _entries_as_torch_reads_them(data: bytes) -> dict[str, bytes]:
    """Every entry (path below the single top-level folder) with the bytes torch's reader
    returns, after checking that Python's zip reader sees the very same entries and bytes."""
    if data[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise InvalidModelError(EXPORTED_FIELD, f"not a .pt2 (zip) archive: the file is {describe_foreign_bytes(data)}")
    if is_torch_save_zip(data):
        raise InvalidModelError(EXPORTED_FIELD, f"not a .pt2 program: the file is {describe_foreign_bytes(data)}")
    listed = _zip_listing(data)
    # A friendlier message for an ordinary zip than torch's reader would give; the entries
    # torch returns are checked again below.
    _require(listed.get("archive_format") == b"pt2", "not a torch.export .pt2 archive (no 'archive_format: pt2' entry)")
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        torch_names = list(reader.get_all_records())
        _require(len(torch_names) == len(set(torch_names)), "the archive lists an entry name more than once")
        _require(set(torch_names) == set(listed),
                 "torch's reader and a standard zip reader see different entries in this archive; refusing an "
                 "ambiguous file")
        entries = {name: bytes(reader.get_record(name)) for name in torch_names}
    except InvalidModelError:
        raise
    except Exception as exc:  # torch's reader raises RuntimeError and others for malformed zips
        raise InvalidModelError(EXPORTED_FIELD, f"torch cannot read the archive: {type(exc).__name__}") from None
    for name, content in entries.items():
        _require(content == listed[name],
                 f"entry {name!r} reads differently through torch's reader and a standard zip reader; "
                 "refusing an ambiguous file")
    return entries


def _zip_listing(data: bytes) -> dict[str, bytes]:
    """Entries by path below the top-level folder, as Python's zipfile reads them, refusing
    duplicates, compression, encryption, odd paths and more than one top-level folder."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = [info for info in archive.infolist() if not info.filename.endswith("/")]
            _require(0 < len(infos) <= MAX_ENTRIES, f"the archive holds {len(infos)} entries; expected 1 to {MAX_ENTRIES}")
            names = [info.filename for info in infos]
            twice = sorted({n for n in names if names.count(n) > 1})
            _require(not twice, f"the archive lists {twice[:3]} more than once; refusing an ambiguous file")
            for info in infos:
                _require(info.compress_type == zipfile.ZIP_STORED,
                         f"entry {info.filename!r} is compressed; torch writes .pt2 entries uncompressed")
                _require(not info.flag_bits & 0x1, f"entry {info.filename!r} is encrypted")
                _require(plain_relative_path(info.filename), f"entry name {info.filename!r} is not a plain relative path")
            _require(sum(info.file_size for info in infos) <= len(data),
                     "the archive declares more content than the file holds")
            _check_tiling(archive.infolist(), data, archive.start_dir)
            roots = {name.split("/", 1)[0] for name in names}
            _require(len(roots) == 1 and all("/" in n for n in names),
                     "not a torch.export .pt2 archive (expected one top-level folder)")
            return {info.filename.split("/", 1)[1]: archive.read(info) for info in infos}
    except InvalidModelError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, OSError,
            RuntimeError) as exc:
        raise InvalidModelError(EXPORTED_FIELD, f"not a readable .pt2 (zip) archive: {exc}") from None


def _check_tiling(infos: list[zipfile.ZipInfo], data: bytes, central_directory: int) -> None:
    """The entries the central directory lists must fill the file from byte 0 to the central
    directory, back to back: bytes no entry accounts for (a second local copy of an entry, a
    prepended file) are how one zip is made to read two ways."""
    position = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        _require(info.header_offset == position,
                 f"the archive holds bytes that belong to no entry (before {info.filename!r}); refusing an ambiguous file")
        header = data[position:position + 30]
        _require(len(header) == 30 and header[:4] == b"PK\x03\x04", f"entry {info.filename!r} has no local header")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        _require(data[position + 30:position + 30 + name_length] == info.orig_filename.encode("utf-8")
                 or data[position + 30:position + 30 + name_length] == info.orig_filename.encode("cp437", "replace"),
                 f"entry {info.filename!r} is named differently in its local header")
        position += 30 + name_length + extra_length + info.compress_size
        if info.flag_bits & 0x08:  # a data descriptor follows: [signature] crc, sizes (4 or 8 bytes each)
            sizes = 16 if info.compress_size >= 0xFFFFFFFF or info.file_size >= 0xFFFFFFFF else 8
            position += 4 + sizes + (4 if data[position:position + 4] == b"PK\x07\x08" else 0)
    _require(position == central_directory,
             "the archive holds bytes that belong to no entry (before its central directory); refusing an ambiguous file")


def plain_relative_path(name: str) -> bool:
    """A relative path of plain names: no root, no '.', '..' or empty parts, no NUL or backslash."""
    parts = name.split("/")
    return not (name.startswith("/") or "\\" in name or "\x00" in name or any(p in ("", ".", "..") for p in parts))


def _rebuilt(entries: dict[str, bytes]) -> bytes:
    """A fresh archive holding the audited entries, written by torch's own writer; the sample
    inputs become an empty record (torch reads that as "none" without unpickling)."""
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name, content in entries.items():
        if name in _WRITER_RECORDS:
            continue
        if name == SAMPLE_INPUTS_ENTRY:
            content = b""
        writer.write_record(name, content, len(content))
    if SAMPLE_INPUTS_ENTRY not in entries:
        writer.write_record(SAMPLE_INPUTS_ENTRY, b"", 0)  # torch.export.load requires the record
    writer.write_end_of_file()
    return out.getvalue()


# --- what the entries say ---------------------------------------------------------------------


def _check_versions(entries: dict[str, bytes]) -> None:
    version = entries.get("archive_version")
    _require(version == ARCHIVE_VERSION_VALUE.encode(),
             f"archive_version {_short_bytes(version)} is not the version this server reads ({ARCHIVE_VERSION_VALUE})")
    byteorder = entries.get("byteorder", b"little")
    _require(byteorder == b"little", f"byteorder {_short_bytes(byteorder)} is not supported (little only)")
    data_version = entries.get(".data/version", b"0")
    _require(bool(re.fullmatch(rb"[0-9]{1,3}\n?", data_version)),
             f".data/version {_short_bytes(data_version)} is not a serialisation version")


def _short_bytes(value: bytes | None) -> str:
    return "missing" if value is None else repr(value[:20])


def _json_entry(entries: dict[str, bytes], name: str, kind: str) -> Any:
    raw = entries[name]
    _require(len(raw) <= MAX_JSON_ENTRY_BYTES, f"the {kind} ({name}) is larger than {MAX_JSON_ENTRY_BYTES} bytes")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidModelError(EXPORTED_FIELD, f"the {kind} ({name}) is not valid JSON") from None


def _check_payload_config(entries: dict[str, bytes], config_name: str, folder: str, prefix: str, kind: str) -> None:
    if config_name not in entries:
        return
    config = _json_entry(entries, config_name, f"{kind} config")
    items = config.get("config") if isinstance(config, dict) else None
    _require(isinstance(items, dict), f"the {kind} config of the archive is malformed")
    for name, payload in items.items():
        _require(isinstance(payload, dict) and payload.get("use_pickle") is False,
                 f"{kind} entry {str(name)[:80]!r} is stored as a pickle, which equiprune never loads")
        path = payload.get("path_name")
        _require(isinstance(path, str) and re.fullmatch(re.escape(prefix) + r"\d+", path) is not None
                 and folder + path in entries, f"{kind} entry {str(name)[:80]!r} is not a plain tensor of the archive")


def _check_program_json(raw: bytes) -> None:
    program = _json_entry({"models/model.json": raw}, "models/model.json", "program")
    _require(isinstance(program, dict), "models/model.json must hold a JSON object")
    _check_schema_version(program.get("schema_version"))
    _require(not program.get("guards_code"),
             "the program carries guard code, which torch would execute; re-export it without guards")
    for key in program.get("range_constraints") or {}:
        _require(bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key))), f"malformed symbol name {str(key)[:80]!r}")
    for key, value in _walk_strings(program):
        if key == "target":
            _check_target(value)
        elif key == "expr_str":
            _check_expression(value)
    _require(not _names_an_enum(program), "the program's input/output specs reference enum types, which are not "
                                          "accepted")


def _check_schema_version(version: Any) -> None:
    major = version.get("major") if isinstance(version, dict) else None
    minor = version.get("minor") if isinstance(version, dict) else None
    _require(isinstance(major, int) and isinstance(minor, int) and major == SCHEMA_VERSION[0]
             and 0 <= minor <= SCHEMA_VERSION[1],
             f"the program's schema version {str(version)[:40]} is not one this server reads "
             f"({SCHEMA_VERSION[0]}.0 to {SCHEMA_VERSION[0]}.{SCHEMA_VERSION[1]}); export it with torch 2.13 or older")


def _names_an_enum(node: Any, depth: int = 0) -> bool:
    """Whether any object in the decoded program — or in the JSON documents its strings hold
    (pytree specs are JSON inside JSON) — has an "__enum__" key, the hook that makes torch
    import a module the file names. Decoded, not searched as text: escapes would hide it."""
    if depth > 4:
        return True  # nesting deeper than any real spec: refuse rather than guess
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            if "__enum__" in current:
                return True
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
        elif isinstance(current, str) and current[:1] in ("[", "{"):
            try:
                inner = json.loads(current)
            except (json.JSONDecodeError, RecursionError):
                continue
            if _names_an_enum(inner, depth + 1):
                return True
    return False


def _walk_strings(node: Any, key: str | None = None):
    """(key, value) for every string value in a JSON tree, with the key it sits under."""
    stack: list[tuple[Any, str | None]] = [(node, key)]
    while stack:  # iterative: a deeply nested crafted tree must not exhaust the Python stack
        current, current_key = stack.pop()
        if isinstance(current, dict):
            stack.extend((child, child_key) for child_key, child in current.items())
        elif isinstance(current, list):
            stack.extend((child, current_key) for child in current)
        elif isinstance(current, str) and current_key is not None:
            yield current_key, current


def _check_target(target: str) -> None:
    _require(bool(_ALLOWED_TARGET.fullmatch(target)),
             f"graph calls {target[:120]!r}; only ATen/prims operators and basic arithmetic are accepted")
    parts = target.split(".")
    _require(not (parts[:3] == ["torch", "ops", "aten"] and parts[3] in _DENIED_ATEN_OPS),
             f"graph calls {target!r}, which reads files")


def _check_expression(expression: str) -> None:
    problem = f"symbolic shape expression {expression[:80]!r} is not a plain arithmetic expression"
    _require(len(expression) <= _MAX_EXPRESSION_LENGTH, problem)
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expression).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        raise InvalidModelError(EXPORTED_FIELD, problem) from None
    for token in tokens:
        if token.type == tokenize.NAME:
            _require(token.string in _SAFE_EXPRESSION_NAMES, problem)
        elif token.type == tokenize.OP:
            _require(token.string in _SAFE_EXPRESSION_OPERATORS, problem)
        elif token.type == tokenize.STRING:
            _require(bool(_SYMBOL_NAME.fullmatch(token.string)), problem)
        elif token.type == tokenize.NUMBER:
            _require(len(token.string) <= 20, problem)
        else:
            _require(token.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER), problem)
