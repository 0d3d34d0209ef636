"""Inspection of a .pt2 archive before ``torch.export.load`` may read it.

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
So before handing bytes to ``torch.export.load`` we inspect the zip ourselves
(`check_pt2_archive`) and refuse any of the above: only the known entries of a plain
archive, no pickled payloads, sample inputs that ``torch.load(weights_only=True)`` accepts (so
torch's fallback never runs), empty guards, ATen/prims/operator-arithmetic targets only,
symbolic expressions made of an allow-list of sympy names, and no enum hooks. The bytes
checked are the bytes loaded (both come from one in-memory buffer).
"""

from __future__ import annotations

import io
import json
import re
import tokenize
import zipfile
from typing import Any

import torch

from equiprune.engine.errors import InvalidModelError
from equiprune.engine.models.sniff import describe_foreign_bytes, is_torch_save_zip

EXPORTED_FIELD = "model.exported_program"
# torch stores .pt2 entries uncompressed; a much larger expansion is a crafted archive.
ZIP_EXPANSION_LIMIT = 4


_ALLOWED_ARCHIVE_ENTRIES = tuple(re.compile(p) for p in (
    r"archive_format", r"archive_version", r"byteorder", r"\.data/version", r"\.data/serialization_id",
    r"models/model\.json",
    r"data/weights/model_weights_config\.json", r"data/weights/weight_\d+",
    r"data/constants/model_constants_config\.json", r"data/constants/tensor_\d+",
    r"data/sample_inputs/model\.pt",
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


def check_pt2_archive(data: bytes) -> None:
    """Refuse archives that are not plain torch.export programs or could run code on load."""
    entries = _archive_entries(data)
    _require(entries.get("archive_format") == b"pt2",
             "not a torch.export .pt2 archive (no 'archive_format: pt2' entry)")
    _require("models/model.json" in entries, "the archive holds no program named 'model' (models/model.json)")
    for name in entries:
        _require(any(p.fullmatch(name) for p in _ALLOWED_ARCHIVE_ENTRIES),
                 f"archive entry {name!r} is not allowed (only plain exported programs are accepted: "
                 "no AOTInductor libraries, pickled objects or legacy layouts)")
    _check_payload_config(entries.get("data/weights/model_weights_config.json"), "weight_", "weights")
    _check_payload_config(entries.get("data/constants/model_constants_config.json"), "tensor_", "constants")
    _check_sample_inputs(entries.get("data/sample_inputs/model.pt", b""))
    _check_program_json(entries["models/model.json"])


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise InvalidModelError(EXPORTED_FIELD, problem)


def _archive_entries(data: bytes) -> dict[str, bytes]:
    """Entries by path below the archive's single top-level folder (torch ignores its name)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            roots = {name.split("/", 1)[0] for name in names}
            if is_torch_save_zip(data):
                raise InvalidModelError(EXPORTED_FIELD,
                                        f"not a .pt2 program: the file is {describe_foreign_bytes(data)}")
            declared = sum(info.file_size for info in archive.infolist())
            if declared > ZIP_EXPANSION_LIMIT * len(data) + 2**20:
                raise InvalidModelError(EXPORTED_FIELD, f"archive expands to {declared} bytes; refusing a zip bomb")
            if len(roots) != 1 or any("/" not in n for n in names):
                raise InvalidModelError(EXPORTED_FIELD,
                                        "not a torch.export .pt2 archive (expected one top-level folder)")
            return {name.split("/", 1)[1]: archive.read(name) for name in names}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, OSError,
            RuntimeError) as exc:  # RuntimeError: encrypted entries
        raise InvalidModelError(EXPORTED_FIELD, f"not a readable .pt2 (zip) archive: {exc}") from None


def _check_payload_config(raw: bytes | None, prefix: str, kind: str) -> None:
    if raw is None:
        return
    try:
        config = json.loads(raw)["config"]
        items = config.items()
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise InvalidModelError(EXPORTED_FIELD, f"the {kind} config of the archive is malformed") from None
    for name, payload in items:
        _require(isinstance(payload, dict) and payload.get("use_pickle") is False,
                 f"{kind} entry {name!r} is stored as a pickle, which equiprune never loads")
        _require(str(payload.get("path_name", "")).startswith(prefix),
                 f"{kind} entry {name!r} is not a plain tensor")


def _check_sample_inputs(raw: bytes) -> None:
    # torch retries a failed weights_only load with weights_only=False: make sure it never fails.
    if not raw:
        return
    try:
        torch.load(io.BytesIO(raw), weights_only=True)
    except Exception:
        raise InvalidModelError(
            EXPORTED_FIELD, "the archive's sample inputs are not plain tensors (they need full unpickling)"
        ) from None


def _check_program_json(raw: bytes) -> None:
    text = raw.decode("utf-8", errors="replace")
    _require("__enum__" not in text, "the program's input/output specs reference enum types, which are not accepted")
    try:
        program = json.loads(text)
    except json.JSONDecodeError:
        raise InvalidModelError(EXPORTED_FIELD, "models/model.json is not valid JSON") from None
    _require(isinstance(program, dict), "models/model.json must hold a JSON object")
    _require(not program.get("guards_code"),
             "the program carries guard code, which torch would execute; re-export it without guards")
    for key in program.get("range_constraints") or {}:
        _require(bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key))), f"malformed symbol name {key!r}")
    for key, value in _walk_strings(program):
        if key == "target":
            _check_target(value)
        elif key == "expr_str":
            _check_expression(value)


def _walk_strings(node: Any, key: str | None = None):
    """(key, value) for every string value in a JSON tree, with the key it sits under."""
    if isinstance(node, dict):
        for child_key, child in node.items():
            yield from _walk_strings(child, child_key)
    elif isinstance(node, list):
        for child in node:
            yield from _walk_strings(child, key)
    elif isinstance(node, str) and key is not None:
        yield key, node


def _check_target(target: str) -> None:
    _require(bool(_ALLOWED_TARGET.fullmatch(target)),
             f"graph calls {target!r}; only ATen/prims operators and basic arithmetic are accepted")
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


