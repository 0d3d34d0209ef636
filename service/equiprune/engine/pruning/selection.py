"""Which weights unstructured pruning may touch.

Candidates are the weight tensors of ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Linear`` modules
(subclasses included); biases and normalisation parameters are never pruned, they are a tiny
share of the parameters and removing them changes the function far more than a weight does.

Exclusions apply to a module *and everything inside it*: excluding the name pattern
``layer1`` or the type ``BasicBlock`` keeps every conv within that block dense. Every
exclusion must exclude at least one candidate layer, so a typo fails loudly instead of
silently pruning the layer the user meant to protect.

``keep_first_and_last`` is the reference setting of the science brief: the first conv (the
first layer when the model has no conv) and the last ``nn.Linear`` (the last layer when it has
none) stay dense. "First" and "last" follow registration order, which is execution order for
the usual ``__init__``-in-forward-order models.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from torch import nn

from ..errors import InvalidConfigError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
_CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d)


def prunable_parameters(
    model: nn.Module,
    *,
    exclude_names: Iterable[str] = (),
    exclude_types: Iterable[str] = (),
    keep_first_and_last: bool = True,
) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the weights unstructured pruning may zero."""
    names = _as_str_tuple(exclude_names, "pruning.exclude_names")
    types = _as_str_tuple(exclude_types, "pruning.exclude_types")
    candidates = candidate_layers(model)
    ancestry = {name: _ancestors(model, name) for name in candidates}

    excluded: set[str] = set()
    for pattern in names:
        hits = {c for c in candidates if any(fnmatchcase(a, pattern) for a, _ in ancestry[c])}
        if not hits:
            raise InvalidConfigError(
                "pruning.exclude_names",
                f"pattern {pattern!r} matches no prunable layer (nor a module containing one); "
                f"prunable layers are: {', '.join(candidates) or 'none'}",
            )
        excluded |= hits
    for type_name in types:
        hits = {c for c in candidates if any(type(m).__name__ == type_name for _, m in ancestry[c])}
        if not hits:
            known = sorted({type(m).__name__ for c in candidates for _, m in ancestry[c]})
            raise InvalidConfigError(
                "pruning.exclude_types",
                f"module type {type_name!r} is not a prunable layer type of this model nor a "
                f"module containing one; types that can be excluded: {', '.join(known) or 'none'}",
            )
        excluded |= hits
    if keep_first_and_last:
        excluded |= _first_and_last(candidates)

    param_names = _parameter_names(model)
    kept: list[str] = []
    for name, module in candidates.items():
        if name in excluded:
            continue
        # A weight shared by two modules is listed once, under its named_parameters() name.
        pname = param_names[id(module.weight)]
        if pname not in kept:
            kept.append(pname)
    return kept


def candidate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv1d/Conv2d/Linear modules with a weight, by qualified name, in registration order."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES) and isinstance(getattr(module, "weight", None), nn.Parameter)
    }


def _first_and_last(candidates: dict[str, nn.Module]) -> set[str]:
    if not candidates:
        return set()
    order = list(candidates)
    convs = [n for n in order if isinstance(candidates[n], _CONV_TYPES)]
    linears = [n for n in order if isinstance(candidates[n], nn.Linear)]
    first = convs[0] if convs else order[0]
    last = linears[-1] if linears else order[-1]
    return {first, last}


def _ancestors(model: nn.Module, qualified_name: str) -> list[tuple[str, nn.Module]]:
    """The module and every enclosing module except the root, as (qualified name, module)."""
    parts = qualified_name.split(".")
    chain: list[tuple[str, nn.Module]] = []
    module = model
    for depth, part in enumerate(parts, start=1):
        module = getattr(module, part)
        chain.append((".".join(parts[:depth]), module))
    return chain


def _parameter_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def _as_str_tuple(values: Iterable[str], field: str) -> tuple[str, ...]:
    # A bare string is iterable too; taking it character by character would exclude nonsense.
    if isinstance(values, str):
        raise InvalidConfigError(field, f"expected a list of strings, got the single string {values!r}")
    items = tuple(values)
    if not all(isinstance(v, str) for v in items):
        raise InvalidConfigError(field, f"expected a list of strings, got {items!r}")
    return items
