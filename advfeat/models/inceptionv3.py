"""Inception-v3 for CIFAR: the robustness library's `inceptionv3` (robustness/cifar_models/
inception.py), one of the paper's Figure 3 architectures.

Same layers, channels, kernels, paddings and strides as the library, so the same parameter
count; written in advfeat's style. Spatial sizes: a 3x3 stem without padding takes 32 to 30,
the two reduction blocks 30 -> 14 -> 6; global pooling leaves 2048-d features. Each block's
branches end at conv-BN and the block applies their ReLUs after the concat (ConcatThenReLU),
so the final activation is the ReLU of the last block's branches. The library offers no
fake_relu for this net; advfeat does.
"""

from __future__ import annotations

import torch
from torch import nn

from advfeat.models.registry import InputSizes, register_model
from advfeat.models.classifier import Classifier, ConcatThenReLU, PreActivationTrunk


def conv_bn(cin: int, cout: int, kernel, stride: int = 1, padding=0) -> nn.Sequential:
    """A branch's last layer; its ReLU is applied by the block, after the concat."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout))


def conv_bn_relu(cin: int, cout: int, kernel, stride: int = 1, padding=0) -> nn.Sequential:
    """The library's BasicConv2d."""
    return nn.Sequential(*conv_bn(cin, cout, kernel, stride, padding), nn.ReLU(inplace=True))


class WideAndTall(nn.Module):
    """InceptionE's expanded branch: a shared stem, then a 1x3 and a 3x1 conv side by side."""

    def __init__(self, stem: nn.Module, width: int):
        super().__init__()
        self.stem = stem
        self.wide = conv_bn(width, width, (1, 3), padding=(0, 1))
        self.tall = conv_bn(width, width, (3, 1), padding=(1, 0))

    def forward(self, x):
        x = self.stem(x)
        return torch.cat([self.wide(x), self.tall(x)], 1)


class InceptionA(ConcatThenReLU):
    """Same-size block: 1x1; 1x1-5x5; 1x1-3x3-3x3; avg-pool then a 3x3 conv (3x3 in the
    library, where Inception-v3 has 1x1)."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__(
            conv_bn(cin, 64, 1),
            nn.Sequential(conv_bn_relu(cin, 48, 1), conv_bn(48, 64, 5, padding=2)),
            nn.Sequential(conv_bn_relu(cin, 64, 1), conv_bn_relu(64, 96, 3, padding=1),
                          conv_bn(96, 96, 3, padding=1)),
            nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), conv_bn(cin, pool_features, 3, padding=1)),
        )


# The reduction blocks' pooling branches see the previous block's ReLU output, which is
# non-negative, so the ReLU the block applies to them changes nothing.

class InceptionB(ConcatThenReLU):
    """Reduction 30 -> 14: a stride-2 3x3; 1x1-3x3-3x3 (stride 2); a stride-2 3x3 max-pool."""

    def __init__(self, cin: int):
        super().__init__(
            conv_bn(cin, 384, 3, stride=2),
            nn.Sequential(conv_bn_relu(cin, 64, 1), conv_bn_relu(64, 96, 3, padding=1), conv_bn(96, 96, 3, stride=2)),
            nn.MaxPool2d(3, stride=2),
        )


class InceptionC(ConcatThenReLU):
    """Same-size block with 7x7 fields factorized into 7x1 and 1x7 convs (width c7 inside)."""

    def __init__(self, cin: int, c7: int):
        super().__init__(
            conv_bn(cin, 192, 1),
            nn.Sequential(conv_bn_relu(cin, c7, 1), conv_bn_relu(c7, c7, (7, 1), padding=(3, 0)),
                          conv_bn(c7, 192, (1, 7), padding=(0, 3))),
            nn.Sequential(conv_bn_relu(cin, c7, 1), conv_bn_relu(c7, c7, (7, 1), padding=(3, 0)),
                          conv_bn_relu(c7, c7, (1, 7), padding=(0, 3)), conv_bn_relu(c7, c7, (7, 1), padding=(3, 0)),
                          conv_bn(c7, 192, (1, 7), padding=(0, 3))),
            nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), conv_bn(cin, 192, 1)),
        )


class InceptionD(ConcatThenReLU):
    """Reduction 14 -> 6: 1x1-3x3 (stride 2); 1x1-1x7-7x1-3x3 (stride 2); a stride-2 3x3 avg-pool."""

    def __init__(self, cin: int):
        super().__init__(
            nn.Sequential(conv_bn_relu(cin, 192, 1), conv_bn(192, 320, 3, stride=2)),
            nn.Sequential(conv_bn_relu(cin, 192, 1), conv_bn_relu(192, 192, (1, 7), padding=(0, 3)),
                          conv_bn_relu(192, 192, (7, 1), padding=(3, 0)), conv_bn(192, 192, 3, stride=2)),
            nn.AvgPool2d(3, stride=2),
        )


class InceptionE(ConcatThenReLU):
    """Same-size block on the coarsest grid, its 3x3 branches widened into 1x3 and 3x1: 2048 out."""

    def __init__(self, cin: int):
        super().__init__(
            conv_bn(cin, 320, 1),
            WideAndTall(conv_bn_relu(cin, 384, 1), 384),
            WideAndTall(nn.Sequential(conv_bn_relu(cin, 448, 1), conv_bn_relu(448, 384, 3, padding=1)), 384),
            nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), conv_bn(cin, 192, 1)),
        )


# 9x9 is the least that leaves the last reduction a 3x3 window: 9 -> 7 (stem) -> 3 -> 1.
@register_model("inceptionv3", InputSizes(minimum=9, why="an unpadded 3x3 stem and two unpadded stride-2 reductions"))
def inceptionv3(num_classes: int = 10) -> Classifier:
    stem = [conv_bn_relu(3, 32, 3, padding=1), conv_bn_relu(32, 32, 3, padding=1),
            conv_bn_relu(32, 64, 3, padding=1), conv_bn_relu(64, 80, 1),
            conv_bn_relu(80, 192, 3)]  # no padding: 32 -> 30
    blocks = [InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64),  # 30x30, 288 channels
              InceptionB(288),  # -> 14x14, 768
              InceptionC(768, 128), InceptionC(768, 160), InceptionC(768, 160), InceptionC(768, 192),
              InceptionD(768),  # -> 6x6, 1280
              InceptionE(1280), InceptionE(2048)]  # 2048
    # The library's Dropout2d after pooling: part of the neck, so the features are what the
    # head sees (dropped in training mode, the identity in eval mode, which attacks use).
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Dropout2d(), nn.Flatten())
    return Classifier(PreActivationTrunk(*stem, *blocks), neck, 2048, num_classes)
