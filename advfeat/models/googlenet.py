"""GoogLeNet (Inception-v1) for CIFAR: the blocks, widths and 3x3 stem of kuangliu's
pytorch-cifar `GoogLeNet` (its convs carry a bias; ours do not, since BN follows each).

Registered as `googlenet`; it was advfeat's `inception`, renamed because the robustness
library's CIFAR `inceptionv3` (the paper's Figure 3) is a different net: see inceptionv3.py.
The 3x3 stem keeps 32x32; two stride-2 max-pools leave 8x8x1024 for global pooling.
The final activation is the ReLU that ends every branch of the last block (ConcatThenReLU).
"""

from __future__ import annotations

from torch import nn

from advfeat.models.registry import register_model
from advfeat.models.classifier import Classifier, ConcatThenReLU, PreActivationTrunk


def conv_bn(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout))


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(*conv_bn(cin, cout, kernel), nn.ReLU(inplace=True))


class InceptionBlock(ConcatThenReLU):
    """Four parallel branches: 1x1; 1x1-3x3; 1x1-3x3-3x3 (a 5x5 field); 3x3 max-pool-1x1."""

    def __init__(self, cin: int, n1: int, n3_reduce: int, n3: int, n5_reduce: int, n5: int, pool_proj: int):
        super().__init__(
            conv_bn(cin, n1, 1),
            nn.Sequential(conv_bn_relu(cin, n3_reduce, 1), conv_bn(n3_reduce, n3, 3)),
            nn.Sequential(conv_bn_relu(cin, n5_reduce, 1), conv_bn_relu(n5_reduce, n5, 3), conv_bn(n5, n5, 3)),
            nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn(cin, pool_proj, 1)),
        )
        self.out_channels = n1 + n3 + n5 + pool_proj


# (n1, n3_reduce, n3, n5_reduce, n5, pool_proj) per block; "pool" halves the resolution.
GOOGLENET = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "pool",
             (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
             (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "pool",
             (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]


@register_model("googlenet")
def googlenet(num_classes: int = 10) -> Classifier:
    layers, cin = [conv_bn_relu(3, 192, 3)], 192
    for item in GOOGLENET:
        if item == "pool":
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        else:
            block = InceptionBlock(cin, *item)
            layers.append(block)
            cin = block.out_channels
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(PreActivationTrunk(*layers), neck, cin, num_classes)
