"""CPU-scale architectures of four families for Figure 3 on a laptop (not in the paper).

The paper's Figure 3 trains five architectures (VGG-16, Inception-v3, ResNet-18, DenseNet-121,
ResNet-50) on D_det; these are small stand-ins of the same kinds of design, each sized to
train at least as fast as `tiny` on a CPU. Each is split at its last ReLU, like every
Classifier (classifier.py), so fake_relu works for all.
- vgg_mini:     VGG-style, two 3x3 conv-BN-ReLU a stage, 2x2 max-pool after each (widths 8/16/32).
- resnet_mini:  ResNet-style: a stride-2 stem (16 channels) and three basic blocks with skip
                connections (24, 32 and 48 channels; maps 16, 8, 4 like the library's CIFAR
                ResNets' last); the final activation is the last block's ReLU after its add.
- wide_shallow: two conv layers only, wide: 5x5 to 64 channels (stride 2), a 2x2 max-pool, 3x3 to
                128 (stride 2), ending on a 4x4 map.
- mobile_mini:  MobileNet-style: a stride-2 stem, then depthwise-separable blocks (a 3x3
                depthwise conv, then a 1x1 pointwise conv, each with BN and ReLU), 24 -> 128 channels,
                ending on a 4x4 map.
Training speed, one epoch of 2,000 random 32x32 images (batch 128, SGD), all seven interleaved
in one process for 5 rounds, on the 2-core CPU VM (1 torch thread, other jobs running): images/s
(median), and speed relative to tiny (median of the per-round ratios):
    tiny 402 (1.00), mid 162 (0.42), mlp 2387 (6.85), vgg_mini 459 (1.21),
    resnet_mini 433 (1.01), wide_shallow 673 (1.75), mobile_mini 562 (1.65).
Trained by advfeat's trainer with the cpu preset's recipe (10 one-cycle epochs, lr 0.2, batch
128) on a 2,000-image stratified subset of the JPEG CIFAR-10, one seed, 1,000 test images: test
accuracy tiny 42.1%, vgg_mini 41.3%, resnet_mini 44.4%, wide_shallow 43.6%, mobile_mini 40.9%,
mlp 37.2% (last-epoch images/s 492, 491, 422, 689, 603, 1883; the same VM, loaded).
Every net ends in a global average pool of its final ReLU's map, then the linear head.
"""

from __future__ import annotations

from torch import nn

from advfeat.models.classifier import Classifier, PreActivationTrunk, split_at_last_relu
from advfeat.models.registry import InputSizes, register_model
from advfeat.models.resnet import BasicBlock, conv_bn
from advfeat.models.small import THREE_POOLS, conv_net


def _pooled(layers: list[nn.Module], feature_dim: int, num_classes: int) -> Classifier:
    """A plain layer list split at its last ReLU, then a global average pool."""
    trunk, rest = split_at_last_relu(layers)
    return Classifier(trunk, nn.Sequential(*rest, nn.AdaptiveAvgPool2d(1), nn.Flatten()), feature_dim, num_classes)


@register_model("vgg_mini", THREE_POOLS)
def vgg_mini(num_classes: int = 10) -> Classifier:
    return conv_net(num_classes, (8, 16, 32), convs_per_stage=2)


@register_model("resnet_mini")
def resnet_mini(num_classes: int = 10) -> Classifier:
    # A stride-2 stem (32 -> 16) keeps it near tiny's speed; the blocks end on 4x4, the library ResNets' size.
    layers, cin = [nn.Sequential(conv_bn(3, 16, 3, stride=2), nn.ReLU(inplace=True))], 16
    for width, stride in ((24, 1), (32, 2), (48, 2)):
        layers.append(BasicBlock(cin, width, stride))
        cin = width
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(PreActivationTrunk(*layers), neck, 48, num_classes)


@register_model("wide_shallow", InputSizes(minimum=3, why="a stride-2 stem then a 2x2 max-pool"))
def wide_shallow(num_classes: int = 10) -> Classifier:
    layers = [*conv_bn(3, 64, 5, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # maps 16, 8, then 4
              *conv_bn(64, 128, 3, stride=2), nn.ReLU(inplace=True)]
    return _pooled(layers, 128, num_classes)


def depthwise_separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
    """MobileNet's block (Howard et al. 2017): depthwise 3x3 (groups = channels), then pointwise 1x1."""
    return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("mobile_mini")
def mobile_mini(num_classes: int = 10) -> Classifier:
    layers = [*conv_bn(3, 24, 3, stride=2), nn.ReLU(inplace=True)]
    for cin, cout, stride in ((24, 48, 1), (48, 96, 2), (96, 128, 2)):  # maps 16, 8, 4
        layers += depthwise_separable(cin, cout, stride)
    return _pooled(layers, 128, num_classes)
