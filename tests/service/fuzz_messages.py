"""Hypothesis strategies for any protobuf request message, built from its descriptor.

Every field may be absent or hold a hostile value of its type: extreme and non-finite
numbers, unknown enum values, odd unicode, empty and oversized strings, nested messages a
few levels deep, repeated fields and maps. Strings are drawn partly from `seeds` — real ids
and names of the server under test — so that requests get past the first lookup and reach
the code behind it.
"""

from __future__ import annotations

import math

from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import strategies as st

MAX_DEPTH = 3
EXTREME_FLOATS = [math.inf, -math.inf, math.nan, 1e308, -1e308, 3.4e38, 3.5e38, 1e-320, 0.0, -0.0, 0.5, 1.0, -1.0, 2.0]
EXTREME_INTS = [0, 1, -1, 2, 3, 255, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
HOSTILE_STRINGS = ["", " ", "..", "../../etc/passwd", "/etc/passwd", "file:///etc/passwd", "\x00", "a" * 300,
                   "sample:digits", "sample:nope", "http://127.0.0.1:9/", "ftp://x/y", "memory://x", "zip::file:///x",
                   "art-0000000000000000", "job-0000000000000000", "upl-0000000000000000", "é🙂", "model.1234",
                   "{\"a\": 1}", "NaN", "-1", "train", "test", "cohort", "x" * 5000]


def _int_range(field) -> tuple[int, int]:
    if field.type in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return -(2**31), 2**31 - 1
    if field.type in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return 0, 2**32 - 1
    if field.type in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return 0, 2**64 - 1
    return -(2**63), 2**63 - 1


def _scalar(field, seeds: list[str]) -> st.SearchStrategy:
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.one_of(st.sampled_from(EXTREME_FLOATS), st.floats())
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_STRING:
        return st.one_of(st.sampled_from(seeds + HOSTILE_STRINGS), st.text(max_size=40))
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == F.TYPE_ENUM:
        return st.integers(-2, max(v.number for v in field.enum_type.values) + 3)
    low, high = _int_range(field)
    return st.one_of(st.sampled_from([v for v in EXTREME_INTS if low <= v <= high]), st.integers(low, high))


def _json_value(depth: int = 0) -> st.SearchStrategy:
    leaves = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                       st.integers(-(10**15), 10**15), st.text(max_size=10))
    if depth >= 2:
        return leaves
    return st.one_of(leaves, st.lists(_json_value(depth + 1), max_size=4),
                     st.dictionaries(st.text(max_size=8), _json_value(depth + 1), max_size=4))


def message(descriptor, seeds: list[str], depth: int = 0) -> st.SearchStrategy:
    """Instances of the message `descriptor` describes (see the module docstring)."""
    cls = _class_of(descriptor)
    if descriptor.full_name == "google.protobuf.Struct":
        return st.dictionaries(st.text(max_size=12), _json_value(), max_size=5).map(_struct)
    if depth > MAX_DEPTH:
        return st.just(cls())
    parts = {f.name: st.one_of(st.none(), _field(f, seeds, depth)) for f in descriptor.fields}
    return st.fixed_dictionaries(parts).map(lambda values: _build(cls, values))


def _field(field, seeds: list[str], depth: int) -> st.SearchStrategy:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = _scalar(field.message_type.fields_by_name["key"], seeds)
        value_field = field.message_type.fields_by_name["value"]
        value = (message(value_field.message_type, seeds, depth + 1) if value_field.message_type is not None
                 else _scalar(value_field, seeds))
        return st.dictionaries(key, value, max_size=4)
    one = message(field.message_type, seeds, depth + 1) if field.message_type is not None else _scalar(field, seeds)
    if field.is_repeated:
        return st.lists(one, max_size=5)
    return one


def _build(cls, values: dict):
    pb = cls()
    for name, value in values.items():
        if value is None:
            continue
        try:
            _assign(pb, name, value)
        except (TypeError, ValueError, AttributeError, OverflowError):
            continue  # a value protobuf itself refuses to hold: that field stays unset
    return pb


def _assign(pb, name: str, value) -> None:
    if isinstance(value, dict):  # a map field
        target = getattr(pb, name)
        for key, item in value.items():
            if hasattr(item, "DESCRIPTOR"):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif isinstance(value, list):  # a repeated field
        target = getattr(pb, name)
        for item in value:
            if hasattr(item, "DESCRIPTOR"):
                target.add().CopyFrom(item)
            else:
                target.append(item)
    elif hasattr(value, "DESCRIPTOR"):
        getattr(pb, name).CopyFrom(value)
    else:
        setattr(pb, name, value)


def _struct(data: dict) -> struct_pb2.Struct:
    pb = struct_pb2.Struct()
    try:
        pb.update(data)
    except (TypeError, ValueError):
        pass
    return pb


def _class_of(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)
