"""VGG-16 with batch norm for 32x32 inputs (five 2x2 pools leave 1x1x512). Larger inputs
(at least 32x32) leave a larger map, which the global average pool reduces: the same weights.

The final activation is the last conv-BN's ReLU, before the last max-pool (the two commute
in the forward pass); the library offers no fake_relu for VGG, advfeat does.
"""

from __future__ import annotations

from torch import nn

from advfeat.models.registry import InputSizes, register_model
from advfeat.models.classifier import Classifier, split_at_last_relu

VGG16 = [64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, "pool", 512, 512, 512, "pool"]


@register_model("vgg16", InputSizes(minimum=32, why="five 2x2 max-pools"))
def vgg16(num_classes: int = 10) -> Classifier:
    layers, cin = [], 3
    for item in VGG16:
        if item == "pool":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            cin = item
    trunk, last_pool = split_at_last_relu(layers)
    neck = nn.Sequential(*last_pool, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(trunk, neck, cin, num_classes)
