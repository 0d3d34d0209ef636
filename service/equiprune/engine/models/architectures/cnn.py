"""A small convolutional network: quick to train, useful for tests and small images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from equiprune.engine.models.registry import register_architecture, require_int, require_int_list


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


@register_architecture("small_cnn")
def small_cnn(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    channels: Sequence[int] = (32, 64, 128),
) -> nn.Module:
    """One conv+BN+ReLU block per entry of `channels`, 2x max-pool between blocks, global
    average pool, linear classifier."""
    num_classes = require_int("num_classes", num_classes, minimum=2)
    in_channels = require_int("in_channels", in_channels)
    widths = require_int_list("channels", channels)
    # Each pool halves the side; the input must survive every halving.
    input_size = require_int("input_size", input_size, minimum=2 ** (len(widths) - 1))

    layers: list[nn.Module] = []
    previous = in_channels
    for index, width in enumerate(widths):
        if index > 0:
            layers.append(nn.MaxPool2d(2))
        layers.append(conv_bn_relu(previous, width))
        previous = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes)]
    return nn.Sequential(*layers)
