"""ImageNet-style ResNets (He et al. 2016): ResNet-18/34 with basic blocks, ResNet-50 with
bottlenecks.

Written here rather than taken from torchvision so the engine does not depend on it, and so
every shortcut that changes shape is an explicit 1x1 Conv2d + BatchNorm2d: structured pruning
sees it as an ordinary layer coupled to the residual add. Inputs of 64 pixels or less get a
3x3 stride-1 stem without max-pool (as is usual for CIFAR-sized images); a 7x7 stride-2 stem
with max-pool would shrink a 32x32 image to 8x8 before the first block.
"""

from __future__ import annotations

import torch
from torch import nn

from equiprune.engine.models.registry import register_architecture, require_int

SMALL_INPUT_MAX = 64


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Shortcut: identity when the shape is kept, else 1x1 conv + BN."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = projection(in_channels, channels, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out of place: torch.func differentiates this graph twice for Hessian products.
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, residual connection."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = projection(in_channels, out_channels, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


def make_stage(block: type[BasicBlock] | type[Bottleneck], in_channels: int, channels: int,
               blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    """A stage of `blocks` blocks, the first one carrying the stride; returns it and its width."""
    layers = []
    for index in range(blocks):
        layers.append(block(in_channels, channels, stride if index == 0 else 1))
        in_channels = channels * block.expansion
    return nn.Sequential(*layers), in_channels


def init_weights(model: nn.Module) -> None:
    """He initialisation for convolutions, unit scale and zero shift for batch norms."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ResidualNetwork(nn.Module):
    """A stem, stages of residual blocks (each stage after the first halves the side),
    global average pool and a linear classifier: the body both ResNet families share."""

    def __init__(self, stem: nn.Module, stem_width: int, block: type[BasicBlock] | type[Bottleneck],
                 stage_widths: tuple[int, ...], stage_blocks: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.stem = stem
        width = stem_width
        stages = []
        for index, (channels, blocks) in enumerate(zip(stage_widths, stage_blocks, strict=True)):
            stage, width = make_stage(block, width, channels, blocks, 1 if index == 0 else 2)
            stages.append(stage)
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


def conv_stem(in_channels: int, width: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, width, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]


class ResNet(ResidualNetwork):
    """ImageNet-style: four stages of widths base_width x 1, 2, 4, 8."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], stage_blocks: tuple[int, ...],
                 num_classes: int, in_channels: int, input_size: int, base_width: int) -> None:
        if input_size <= SMALL_INPUT_MAX:
            stem = nn.Sequential(*conv_stem(in_channels, base_width))
        else:
            stem = nn.Sequential(*conv_stem(in_channels, base_width, kernel=7, stride=2),
                                 nn.MaxPool2d(3, stride=2, padding=1))
        widths = tuple(base_width * 2**index for index in range(len(stage_blocks)))
        super().__init__(stem, base_width, block, widths, stage_blocks, num_classes)


def _imagenet_resnet(block, stage_blocks, num_classes, in_channels, input_size, base_width) -> ResNet:
    return ResNet(
        block,
        stage_blocks,
        num_classes=require_int("num_classes", num_classes, minimum=2),
        in_channels=require_int("in_channels", in_channels),
        input_size=require_int("input_size", input_size, minimum=8),
        base_width=require_int("base_width", base_width),
    )


@register_architecture("resnet18")
def resnet18(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, base_width: int = 64) -> ResNet:
    return _imagenet_resnet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, input_size, base_width)


@register_architecture("resnet34")
def resnet34(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, base_width: int = 64) -> ResNet:
    return _imagenet_resnet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, input_size, base_width)


@register_architecture("resnet50")
def resnet50(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, base_width: int = 64) -> ResNet:
    return _imagenet_resnet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, input_size, base_width)
