"""The one model interface: images in [0, 1] -> logits, optionally with penultimate features.

Every architecture is a `body` (normalized images -> (B, feature_dim) features, i.e. the
penultimate representation the paper inverts) and a linear `head`. Normalization by the
CIFAR-10 mean/std lives here, inside the model, so attacks and synthesis work in pixel
space and never forget it.
"""

from __future__ import annotations

import torch
from torch import nn

# The constants of the paper's robustness library (its std is not the exact per-pixel
# std of CIFAR-10, 0.247/0.243/0.261, but what its models were trained with).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int = 10,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim, self.num_classes = feature_dim, num_classes
        # Non-persistent: normalization is part of the architecture, not of the weights.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation g(x) of images x in [0, 1]."""
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        z = self.features(x)
        logits = self.head(z)
        return (logits, z) if return_features else logits
