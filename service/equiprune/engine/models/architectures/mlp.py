"""A plain multi-layer perceptron for tabular data (or flattened images)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from equiprune.engine.models.registry import register_architecture, require_float, require_int, require_int_list


@register_architecture("mlp", flattens_input=True)
def mlp(
    num_classes: int = 2,
    in_features: int = 16,
    hidden: int | Sequence[int] = (64, 64),
    dropout: float = 0.0,
) -> nn.Module:
    """Linear -> ReLU (-> Dropout) per hidden width, then a Linear classifier.

    Inputs with more than two dimensions are flattened first, so an image data set can be
    used with ``in_features = C * H * W``.
    """
    num_classes = require_int("num_classes", num_classes, minimum=2)
    in_features = require_int("in_features", in_features)
    widths = require_int_list("hidden", hidden)
    dropout = require_float("dropout", dropout, 0.0, 0.99)

    layers: list[nn.Module] = [nn.Flatten()]
    previous = in_features
    for width in widths:
        layers += [nn.Linear(previous, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        previous = width
    layers.append(nn.Linear(previous, num_classes))
    return nn.Sequential(*layers)
