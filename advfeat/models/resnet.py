"""CIFAR ResNets as in the paper's robustness library: 3x3 stride-1 stem, no max-pool; and
the ImageNet-resolution ResNets (torchvision's layout, as the library's ImageNet models) for
Restricted ImageNet: resnet18_imagenet, resnet50_imagenet.

resnet50 is the paper's model: bottleneck blocks [3, 4, 6, 3], 2048-d penultimate layer.
The final activation is the last block's ReLU after the residual add, as in the library's
`layer4(out, fake_relu=...)`: the trunk ends with that block's pre-activation.
"""

from __future__ import annotations

from torch import nn

from advfeat.models.registry import InputSizes, register_model
from advfeat.models.classifier import Classifier, PreActivationTrunk


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class ResidualBlock(nn.Module):
    """relu(residual(x) + shortcut(x)); the sum is exposed so the last block can stop before its ReLU."""

    def pre_activation(self, x):
        return self.residual(x) + self.shortcut(x)

    def forward(self, x):
        return self.pre_activation(x).relu()


def make_shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    return conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()


class BasicBlock(ResidualBlock):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.residual = nn.Sequential(conv_bn(cin, width, 3, stride), nn.ReLU(inplace=True), conv_bn(width, cout, 3))
        self.shortcut = make_shortcut(cin, cout, stride)


class Bottleneck(ResidualBlock):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.residual = nn.Sequential(
            conv_bn(cin, width, 1), nn.ReLU(inplace=True),
            conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
            conv_bn(width, cout, 1),
        )
        self.shortcut = make_shortcut(cin, cout, stride)


def resnet(block, depths: list[int], num_classes: int) -> Classifier:
    layers, cin = [conv_bn(3, 64, 3), nn.ReLU(inplace=True)], 64
    for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
        for i in range(depth):
            layers.append(block(cin, width, 2 if stage > 0 and i == 0 else 1))
            cin = width * block.expansion
    # The library's avg_pool2d(out, 4) on the 4x4 map is this global average.
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(PreActivationTrunk(*layers), neck, cin, num_classes)


@register_model("resnet18")
def resnet18(num_classes: int = 10) -> Classifier:
    return resnet(BasicBlock, [2, 2, 2, 2], num_classes)


@register_model("resnet50")
def resnet50(num_classes: int = 10) -> Classifier:
    return resnet(Bottleneck, [3, 4, 6, 3], num_classes)


# --------------------------------------------------------------------------- ImageNet resolution

# The robustness library's RestrictedImageNet (and CustomImageNet) normalization; its full
# ImageNet uses torchvision's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), which an imported
# model's card supplies (checkpoint.build_from_state).
RESTRICTED_IMAGENET_MEAN = (0.4717, 0.4499, 0.3837)
RESTRICTED_IMAGENET_STD = (0.2600, 0.2516, 0.2575)


IMAGENET_SIZE = InputSizes(native=224)  # runs on any size; designed for 224x224


def imagenet_resnet(block, depths: list[int], num_classes: int) -> Classifier:
    """torchvision's ImageNet ResNet, which the robustness library's imagenet_models/resnet.py
    copies: a 7x7 stride-2 stem and a 3x3 stride-2 max-pool (224 -> 56), then the stages
    above, the stride on each stage's first 3x3 conv (ResNet v1.5), global pooling of the
    7x7 map. Same layers, order and shapes as torchvision's (tests/test_restricted_imagenet.py
    maps torchvision's weights onto it in order and compares logits); parameter names are
    advfeat's. Normalization: Restricted ImageNet's constants (above)."""
    layers = [conv_bn(3, 64, 7, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
    cin = 64
    for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
        for i in range(depth):
            layers.append(block(cin, width, 2 if stage > 0 and i == 0 else 1))
            cin = width * block.expansion
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(PreActivationTrunk(*layers), neck, cin, num_classes,
                      mean=RESTRICTED_IMAGENET_MEAN, std=RESTRICTED_IMAGENET_STD)


@register_model("resnet18_imagenet", IMAGENET_SIZE)
def resnet18_imagenet(num_classes: int = 1000) -> Classifier:
    return imagenet_resnet(BasicBlock, [2, 2, 2, 2], num_classes)


@register_model("resnet50_imagenet", IMAGENET_SIZE)
def resnet50_imagenet(num_classes: int = 1000) -> Classifier:
    """The paper's Restricted ImageNet model (paper-notes 1.4): ResNet-50 at 224x224."""
    return imagenet_resnet(Bottleneck, [3, 4, 6, 3], num_classes)
