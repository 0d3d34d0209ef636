"""Checking a state dict against an architecture's: tensor names, shapes, dtype kinds, finiteness.

Shared by the safetensors and .pt2 loaders and by `footprint`; errors name the first few
offending tensors (at most MAX_NAMES_IN_MESSAGE) so a bad upload is fixable from the message.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from equiprune.engine.errors import InvalidModelError

MAX_NAMES_IN_MESSAGE = 5


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], field: str, *,
                     check_values: bool = True) -> None:
    """Raise naming the first offending tensors: key sets, shapes, dtype kinds and (with
    `check_values`) finiteness."""
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
        raise InvalidModelError(field, f"tensor names do not match the architecture: {'; '.join(parts)}")
    wrong_shapes = [
        f"{name}: file {tuple(given[name].shape)} vs architecture {tuple(want.shape)}"
        for name, want in expected.items()
        if given[name].shape != want.shape
    ]
    if wrong_shapes:
        raise InvalidModelError(field, f"{len(wrong_shapes)} tensors have the wrong shape: {_first(wrong_shapes)}")
    wrong_kinds = [
        f"{name}: {given[name].dtype} where {want.dtype} is expected"
        for name, want in expected.items()
        if _dtype_kind(given[name].dtype) != _dtype_kind(want.dtype)
    ]
    if wrong_kinds:
        raise InvalidModelError(field, f"{len(wrong_kinds)} tensors have the wrong dtype: {_first(wrong_kinds)}")
    if check_values:
        _check_finite(given, field)


def _check_finite(tensors: Mapping[str, torch.Tensor], field: str) -> None:
    non_finite = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if non_finite:
        raise InvalidModelError(field, f"{len(non_finite)} tensors contain NaN or inf: {_first(non_finite)}")


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    return "integer"


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMES_IN_MESSAGE])
    return shown + (", ..." if len(items) > MAX_NAMES_IN_MESSAGE else "")
