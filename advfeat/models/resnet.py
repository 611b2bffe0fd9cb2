"""CIFAR ResNets as in the paper's robustness library: 3x3 stride-1 stem, no max-pool.

resnet50 is the paper's model: bottleneck blocks [3, 4, 6, 3], 2048-d penultimate layer.
"""

from __future__ import annotations

from torch import nn

from advfeat.models import register_model
from advfeat.models.classifier import Classifier


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.residual = nn.Sequential(conv_bn(cin, width, 3, stride), nn.ReLU(inplace=True), conv_bn(width, cout, 3))
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return (self.residual(x) + self.shortcut(x)).relu()


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.residual = nn.Sequential(
            conv_bn(cin, width, 1), nn.ReLU(inplace=True),
            conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
            conv_bn(width, cout, 1),
        )
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return (self.residual(x) + self.shortcut(x)).relu()


def resnet_body(block, depths: list[int]) -> tuple[nn.Module, int]:
    layers, cin = [conv_bn(3, 64, 3), nn.ReLU(inplace=True)], 64
    for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
        for i in range(depth):
            layers.append(block(cin, width, 2 if stage > 0 and i == 0 else 1))
            cin = width * block.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


@register_model("resnet18")
def resnet18(num_classes: int = 10) -> Classifier:
    body, dim = resnet_body(BasicBlock, [2, 2, 2, 2])
    return Classifier(body, dim, num_classes)


@register_model("resnet50")
def resnet50(num_classes: int = 10) -> Classifier:
    body, dim = resnet_body(Bottleneck, [3, 4, 6, 3])
    return Classifier(body, dim, num_classes)
