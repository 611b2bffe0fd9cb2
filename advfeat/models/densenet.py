"""DenseNet-121 for CIFAR: growth 32, blocks [6, 12, 24, 16], compression 0.5, 3x3 stem.

The final activation is the ReLU after the last BN, before global pooling (as in the library).
"""

from __future__ import annotations

import torch
from torch import nn

from advfeat.models.registry import InputSizes, register_model
from advfeat.models.classifier import Classifier


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (4k channels) then BN-ReLU-3x3 conv (k channels), concatenated."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.layer(x)], 1)


def transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2))


@register_model("densenet121", InputSizes(minimum=8, why="three 2x2 average pools"))
def densenet121(num_classes: int = 10, growth: int = 32, blocks=(6, 12, 24, 16)) -> Classifier:
    channels = 2 * growth
    layers = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
    for i, depth in enumerate(blocks):
        for _ in range(depth):
            layers.append(DenseLayer(channels, growth))
            channels += growth
        if i < len(blocks) - 1:
            layers.append(transition(channels, channels // 2))
            channels //= 2
    layers.append(nn.BatchNorm2d(channels))  # the trunk ends before its ReLU
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(nn.Sequential(*layers), neck, channels, num_classes)
