"""The one model interface: images in [0, 1] -> logits, optionally with penultimate features.

Every architecture is split at its last ReLU, the one the paper's `fake_relu` replaces:
- `trunk`: normalized images -> the PRE-activation of that last ReLU;
- `activation`: the last ReLU itself (`FinalActivation`), or `FakeReLU` when asked;
- `neck`: whatever follows that ReLU (pooling, flatten, dropout) -> (B, feature_dim) features,
  the penultimate representation the paper inverts;
- `head`: a linear layer on those features.
Normalization by the CIFAR-10 mean/std lives here, inside the model, so attacks and synthesis
work in pixel space and never forget it.
"""

from __future__ import annotations

import torch
from torch import nn

# The constants of the paper's robustness library (its std is not the exact per-pixel
# std of CIFAR-10, 0.247/0.243/0.261, but what its models were trained with).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class FakeReLU(torch.autograd.Function):
    """ReLU in the forward pass, identity in the backward pass (robustness/tools/custom_modules.py).

    Inverting a representation through it lets target features whose ReLU is off still pass
    gradient to the input, instead of a zero gradient that leaves them stuck.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.relu()  # the very op of the plain path, so values match bit for bit

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


class FinalActivation(nn.Module):
    """The last ReLU before the penultimate features: a plain ReLU, or FakeReLU if fake_relu.

    The robustness library offers fake_relu only for its ResNets and DenseNet; advfeat
    offers it for every architecture, since every one is split at this module.
    """

    def forward(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        return FakeReLU.apply(x) if fake_relu else x.relu()


class PreActivationTrunk(nn.Sequential):
    """A Sequential whose last module is a block with a `pre_activation(x)` method.

    Blocks that end in a ReLU after a merge (a residual add, an Inception concat) expose the
    value before that ReLU; the trunk stops there, so the classifier's FinalActivation is
    that block's last ReLU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *blocks, last = self
        for block in blocks:
            x = block(x)
        return last.pre_activation(x)


class ConcatThenReLU(nn.Module):
    """relu(concat of branches), for Inception blocks whose branches each end in a ReLU.

    The branches here end at their pre-activations (conv-BN) and the ReLU runs once after the
    concat: relu(cat(a, b)) = cat(relu(a), relu(b)), so the values are those of per-branch
    ReLUs, and the last block can hand its concatenated pre-activations to FinalActivation.
    """

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_activation(x).relu()


def split_at_last_relu(layers: list[nn.Module]) -> tuple[nn.Sequential, nn.Sequential]:
    """(trunk, rest) of a plain layer list around its last nn.ReLU, which is dropped: the
    Classifier's FinalActivation takes its place.

    When `rest` starts with a max-pool (VGG, small, tiny), a window whose pre-activations are
    all negative is all zeros after FakeReLU, so the pool sends its gradient to the window's
    first element (PyTorch's tie-break), not to its largest pre-activation.
    """
    last = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.ReLU))
    return nn.Sequential(*layers[:last]), nn.Sequential(*layers[last + 1:])


class Classifier(nn.Module):
    def __init__(self, trunk: nn.Module, neck: nn.Module, feature_dim: int, num_classes: int = 10,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.trunk, self.activation, self.neck = trunk, FinalActivation(), neck
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim, self.num_classes = feature_dim, num_classes
        # Non-persistent: normalization is part of the architecture, not of the weights.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def features(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        """Penultimate representation g(x) of images x in [0, 1]; same values for either fake_relu."""
        pre_activation = self.trunk((x - self.mean) / self.std)
        return self.neck(self.activation(pre_activation, fake_relu=fake_relu))

    def forward(self, x: torch.Tensor, return_features: bool = False, fake_relu: bool = False):
        # The head sees exactly the returned features (one pass, so one dropout mask in training).
        z = self.features(x, fake_relu=fake_relu)
        logits = self.head(z)
        return (logits, z) if return_features else logits
