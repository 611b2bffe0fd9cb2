"""Small, fast convolutional nets for CPU runs, tests and smoke reproductions.

Conv-BN-ReLU stages, each ending in a 2x2 max-pool, then a global average pool; the final
activation is the last conv-BN's ReLU, before the last max-pool. Not in the paper; they
exist so that every path of advfeat runs end to end without a GPU.
- small: widths (32, 64, 128), two convs a stage, ~0.29 M weights.
- tiny:  widths (16, 32, 64), one conv a stage, ~0.02 M weights: for unit tests.
"""

from __future__ import annotations

from torch import nn

from advfeat.models import register_model
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


@register_model("small")
def small(num_classes: int = 10) -> Classifier:
    return conv_net(num_classes, (32, 64, 128), convs_per_stage=2)


@register_model("tiny")
def tiny(num_classes: int = 10) -> Classifier:
    return conv_net(num_classes, (16, 32, 64), convs_per_stage=1)
