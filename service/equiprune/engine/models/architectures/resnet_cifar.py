"""CIFAR-style ResNets (He et al. 2016, section 4.2): a 3x3 stem with 16 channels, three
stages of 16/32/64 channels built from basic blocks, global average pool, linear.

ResNet-(6n+2) has n blocks per stage: ResNet-20 (n=3, ~0.27M parameters), ResNet-56 (n=9).
The paper's option-A shortcut (zero-padded identity) is replaced by a 1x1 conv + BN projection
where the shape changes: structured pruning then sees an ordinary layer to keep consistent
with the residual add, at the cost of ~2.8k extra parameters.
"""

from __future__ import annotations

from torch import nn

from equiprune.engine.models.architectures.resnet import BasicBlock, ResidualNetwork, conv_stem
from equiprune.engine.models.registry import register_architecture, require_int

STAGE_WIDTHS = (16, 32, 64)


class CifarResNet(ResidualNetwork):
    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int) -> None:
        stem = nn.Sequential(*conv_stem(in_channels, STAGE_WIDTHS[0]))
        super().__init__(stem, STAGE_WIDTHS[0], BasicBlock, STAGE_WIDTHS,
                         (blocks_per_stage,) * len(STAGE_WIDTHS), num_classes)


def _cifar_resnet(blocks_per_stage: int, num_classes, in_channels, input_size) -> CifarResNet:
    # input_size does not change the network (global pooling); it is checked so that a spec
    # describes its input completely and two stride-2 stages leave at least one pixel.
    require_int("input_size", input_size, minimum=4)
    return CifarResNet(
        blocks_per_stage,
        num_classes=require_int("num_classes", num_classes, minimum=2),
        in_channels=require_int("in_channels", in_channels),
    )


@register_architecture("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> CifarResNet:
    return _cifar_resnet(3, num_classes, in_channels, input_size)


@register_architecture("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> CifarResNet:
    return _cifar_resnet(9, num_classes, in_channels, input_size)
