"""Small, fast convolutional nets for CPU runs, tests and smoke reproductions.

Conv-BN-ReLU stages, each ending in a 2x2 max-pool, then a global average pool; the final
activation is the last conv-BN's ReLU, before the last max-pool. Not in the paper; they
exist so that every path of advfeat runs end to end without a GPU.
- small: widths (32, 64, 128), two convs a stage, ~0.29 M weights.
- mid:   widths (32, 64, 128), one conv a stage, ~0.09 M weights: a wider tiny (Figure 3 at CPU scale).
- tiny:  widths (16, 32, 64), one conv a stage, ~0.02 M weights: the CPU presets' source model.
- mlp:   two hidden layers of 512 on the raw pixels: no convolutions at all (Figure 3 at CPU scale);
         32x32 inputs only (its first layer's width is 3x32x32).
The conv nets run on any input of at least 8x8 (the global pool takes whatever map is left).
"""

from __future__ import annotations

from torch import nn

from advfeat.models.registry import InputSizes, register_model
from advfeat.models.classifier import Classifier, split_at_last_relu


def conv_net(num_classes: int, widths: tuple[int, ...], convs_per_stage: int) -> Classifier:
    layers, cin = [], 3
    for width in widths:
        for _ in range(convs_per_stage):
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            cin = width
        layers.append(nn.MaxPool2d(2))
    trunk, last_pool = split_at_last_relu(layers)
    neck = nn.Sequential(*last_pool, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(trunk, neck, cin, num_classes)


# Three 2x2 max-pools: an 8x8 input ends on 1x1.
THREE_POOLS = InputSizes(minimum=8, why="three 2x2 max-pools")


@register_model("small", THREE_POOLS)
def small(num_classes: int = 10) -> Classifier:
    return conv_net(num_classes, (32, 64, 128), convs_per_stage=2)


@register_model("mid", THREE_POOLS)
def mid(num_classes: int = 10) -> Classifier:
    return conv_net(num_classes, (32, 64, 128), convs_per_stage=1)


@register_model("mlp", InputSizes(fixed=(32, 32), why="its first layer reads exactly 3x32x32 pixels"))
def mlp(num_classes: int = 10, width: int = 512) -> Classifier:
    layers = [nn.Flatten(), nn.Linear(3 * 32 * 32, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
              nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
    trunk, neck = split_at_last_relu(layers)
    return Classifier(trunk, neck, width, num_classes)


@register_model("tiny", THREE_POOLS)
def tiny(num_classes: int = 10) -> Classifier:
    return conv_net(num_classes, (16, 32, 64), convs_per_stage=1)
