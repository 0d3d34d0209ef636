"""MobileNetV2 (Sandler et al. 2018): inverted residual blocks with depthwise convolutions.

`width_mult` scales every channel count (rounded to a multiple of 8, as in the paper's
reference code). For inputs of 64 pixels or less the stem and the second stage keep stride 1,
the usual adaptation to CIFAR-sized images (otherwise a 32x32 image is 1x1 halfway through).
"""

from __future__ import annotations

import torch
from torch import nn

from equiprune.engine.models.architectures.resnet import SMALL_INPUT_MAX
from equiprune.engine.models.registry import register_architecture, require_float, require_int

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never going more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1), 3x3 depthwise, linear 1x1 projection; residual when
    the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, input_size: int, width_mult: float, dropout: float) -> None:
        super().__init__()
        small_input = input_size <= SMALL_INPUT_MAX
        width = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, width, 3, stride=1 if small_input else 2)]
        for row, (expansion, channels, repeats, stride) in enumerate(INVERTED_RESIDUAL_SETTING):
            if small_input and row == 1:
                stride = 1
            out_channels = make_divisible(channels * width_mult)
            for index in range(repeats):
                layers.append(InvertedResidual(width, out_channels, stride if index == 0 else 1, expansion))
                width = out_channels
        last = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers.append(conv_bn_relu6(width, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


@register_architecture("mobilenet_v2")
def mobilenet_v2(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int = 224,
    width_mult: float = 1.0,
    dropout: float = 0.2,
) -> MobileNetV2:
    return MobileNetV2(
        num_classes=require_int("num_classes", num_classes, minimum=2),
        in_channels=require_int("in_channels", in_channels),
        input_size=require_int("input_size", input_size, minimum=8),
        width_mult=require_float("width_mult", width_mult, 0.0, 4.0, low_inclusive=False),
        dropout=require_float("dropout", dropout, 0.0, 0.99),
    )
