"""Which architectures the engine can build, and building them from a name plus kwargs.

A model arrives as weights (safetensors) plus an `ArchitectureSpec`: the name of a registered
architecture and the keyword arguments of its factory. Built-in architectures register
themselves with `@register_architecture`; operators add their own through the Python entry
point group ``equiprune.architectures`` (entry point name = architecture name, object = the
factory). Entry points are only imported when a name is asked for that no decorator
registered, so a broken plugin cannot stop the built-ins from working.

Factory arguments are checked against the factory's signature before it is called, so a
typo in a kwarg is reported as ``model.kwargs.<name>`` instead of a TypeError deep inside.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import math
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from equiprune.engine.errors import InvalidModelError

ENTRY_POINT_GROUP = "equiprune.architectures"

Factory = Callable[..., nn.Module]

_REGISTERED: dict[str, Factory] = {}
_FLATTENS_INPUT: set[str] = set()
_entry_point_cache: dict[str, importlib.metadata.EntryPoint] | None = None


@dataclass(frozen=True)
class ArchitectureSpec:
    """An architecture name and the keyword arguments its factory is called with.

    `kwargs` is normalised to JSON types on construction (tuples become lists, a read-only
    mapping is stored) so that a spec survives a round trip through file metadata or a
    protocol message unchanged and compares equal afterwards.
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidModelError(
                "model.architecture", f"must be a non-empty string, got {self.name!r}"
            )
        if not isinstance(self.kwargs, Mapping):
            raise InvalidModelError(
                "model.kwargs", f"must be a mapping of argument names to values, got {type(self.kwargs).__name__}"
            )
        object.__setattr__(self, "kwargs", types.MappingProxyType(_json_normalised(self.kwargs)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": json.loads(json.dumps(dict(self.kwargs)))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchitectureSpec:
        if not isinstance(data, Mapping) or "name" not in data:
            raise InvalidModelError(
                "model.architecture", "an architecture spec needs a 'name' and optional 'kwargs'"
            )
        unknown = sorted(set(data) - {"name", "kwargs"})
        if unknown:
            raise InvalidModelError(
                f"model.{unknown[0]}", "unknown field in architecture spec; expected 'name' and 'kwargs'"
            )
        return cls(name=data["name"], kwargs=data.get("kwargs") or {})

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(dict(self.kwargs), sort_keys=True)))


def _json_normalised(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    for key in kwargs:
        if not isinstance(key, str):
            raise InvalidModelError("model.kwargs", f"argument names must be strings, got {key!r}")
    try:
        return json.loads(json.dumps(dict(kwargs), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidModelError(
            "model.kwargs", f"arguments must be plain JSON values (numbers, strings, lists): {exc}"
        ) from None


def register_architecture(name: str, *, flattens_input: bool = False) -> Callable[[Factory], Factory]:
    """Decorator registering `factory` under `name`; registering a name twice is a bug.

    `flattens_input`: the model flattens every sample first, so it takes any sample shape
    with as many elements as its vector input (an MLP on 8x8 images): the service's
    create-time shape check compares element counts for it instead of shapes.
    """

    def decorate(factory: Factory) -> Factory:
        existing = _REGISTERED.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"architecture {name!r} is already registered by {existing.__module__}")
        _REGISTERED[name] = factory
        if flattens_input:
            _FLATTENS_INPUT.add(name)
        return factory

    return decorate


def flattens_input(name: str) -> bool:
    """Whether the architecture registered as `name` flattens its samples (see above)."""
    _ensure_builtins()
    return name in _FLATTENS_INPUT


def available_architectures() -> list[str]:
    """Every buildable name: built-ins, decorator registrations and entry points."""
    _ensure_builtins()
    return sorted(set(_REGISTERED) | set(_entry_points()))


def refresh_entry_points() -> None:
    """Forget the entry points seen so far (after installing a plugin into a live process)."""
    global _entry_point_cache
    _entry_point_cache = None


def build_model(spec: ArchitectureSpec) -> nn.Module:
    """Instantiate the architecture `spec` names with its kwargs, freshly initialised."""
    factory = _factory_for(spec.name)
    _check_kwargs_against_signature(spec, factory)
    try:
        model = factory(**dict(spec.kwargs))
    except InvalidModelError:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidModelError(
            "model.kwargs", f"architecture {spec.name!r} rejected its arguments: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise InvalidModelError(
            "model.architecture",
            f"factory for {spec.name!r} returned {type(model).__name__}, expected a torch.nn.Module",
        )
    return model


def factory_defaults(name: str) -> dict[str, Any]:
    """The default value of every keyword argument of the factory registered as `name`."""
    try:
        params = inspect.signature(_factory_for(name)).parameters
    except (TypeError, ValueError):
        return {}  # a callable without an inspectable signature
    return {p.name: p.default for p in params.values() if p.default is not inspect.Parameter.empty}


def example_input_shape(spec: ArchitectureSpec) -> tuple[int, ...] | None:
    """Shape of a one-sample input batch, read from the conventional geometry kwargs.

    Image architectures take ``in_channels`` and ``input_size``, vector ones
    ``in_features``; an architecture using neither convention gets None.
    """
    merged = {**factory_defaults(spec.name), **dict(spec.kwargs)}
    if "in_channels" in merged and "input_size" in merged:
        size = require_int("input_size", merged["input_size"])
        return (1, require_int("in_channels", merged["in_channels"]), size, size)
    if "in_features" in merged:
        return (1, require_int("in_features", merged["in_features"]))
    return None


def _factory_for(name: str) -> Factory:
    _ensure_builtins()
    if name in _REGISTERED:
        return _REGISTERED[name]
    entry_point = _entry_points().get(name)
    if entry_point is None:
        raise InvalidModelError(
            "model.architecture",
            f"unknown architecture {name!r}; available: {', '.join(available_architectures())}",
        )
    return _load_entry_point(name, entry_point)


def _load_entry_point(name: str, entry_point: importlib.metadata.EntryPoint) -> Factory:
    origin = f"entry point {name!r} = {entry_point.value!r} in group {ENTRY_POINT_GROUP!r}"
    try:
        factory = entry_point.load()
    except Exception as exc:  # a plugin can fail in any way; report which one failed
        raise InvalidModelError(
            "model.architecture", f"{origin} could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(factory):
        raise InvalidModelError(
            "model.architecture", f"{origin} is a {type(factory).__name__}, expected a factory function"
        )
    return factory


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    global _entry_point_cache
    if _entry_point_cache is None:
        found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        _entry_point_cache = {ep.name: ep for ep in found}
    return _entry_point_cache


def _ensure_builtins() -> None:
    # Imported here, not at module top: the architecture modules import this module.
    import equiprune.engine.models.architectures  # noqa: F401


def _check_kwargs_against_signature(spec: ArchitectureSpec, factory: Factory) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return  # a builtin or C callable without a signature: let the call decide
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {
        n: p
        for n, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    if not accepts_any:
        for key in spec.kwargs:
            if key not in named:
                raise InvalidModelError(
                    f"model.kwargs.{key}",
                    f"unknown argument for architecture {spec.name!r}; accepted: {', '.join(named) or 'none'}",
                )
    for key, param in named.items():
        if param.default is inspect.Parameter.empty and key not in spec.kwargs:
            raise InvalidModelError(
                f"model.kwargs.{key}", f"architecture {spec.name!r} requires this argument"
            )


# --- value checks shared by factories (built-in and operator ones) -------------------------


def require_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer kwarg; integral floats are accepted because JSON/protobuf numbers are doubles."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidModelError(f"model.kwargs.{name}", f"must be an integer, got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise InvalidModelError(f"model.kwargs.{name}", f"must be an integer, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise InvalidModelError(f"model.kwargs.{name}", f"must be {bound}, got {value}")
    return value


def require_float(name: str, value: Any, low: float, high: float, *, low_inclusive: bool = True) -> float:
    """A finite float kwarg inside [low, high] (or (low, high] when `low_inclusive` is False)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidModelError(f"model.kwargs.{name}", f"must be a finite number, got {value!r}")
    value = float(value)
    above_low = value >= low if low_inclusive else value > low
    if not above_low or value > high:
        left = "[" if low_inclusive else "("
        raise InvalidModelError(f"model.kwargs.{name}", f"must be in {left}{low}, {high}], got {value}")
    return value


def require_int_list(name: str, value: Any, minimum: int = 1) -> tuple[int, ...]:
    """A non-empty list of integers (a single integer is taken as a one-element list)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidModelError(f"model.kwargs.{name}", f"must be a non-empty list of integers, got {value!r}")
    return tuple(require_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(value))
