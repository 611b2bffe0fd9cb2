"""What an attack maximizes, per example, and when it has succeeded.

An objective maps (logits, features, target) to a per-example value the attack pushes
UP, and says which examples already succeeded (None: no notion of success, e.g.
representation inversion). `needs_features` asks the model for its penultimate features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Objective:
    needs_features = False
    fake_relu = False  # with needs_features: the final ReLU passes gradient where it is off

    def __call__(self, logits: torch.Tensor, features: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def succeeded(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        return None


class Misclassify(Objective):
    """Untargeted: raise the cross-entropy of the true label; success = wrong prediction."""

    def __call__(self, logits, features, target):
        return F.cross_entropy(logits, target, reduction="none")

    def succeeded(self, logits, target):
        return logits.argmax(1) != target


class ReachTarget(Objective):
    """Targeted: lower the cross-entropy of the target label; success = target predicted."""

    def __call__(self, logits, features, target):
        return -F.cross_entropy(logits, target, reduction="none")

    def succeeded(self, logits, target):
        return logits.argmax(1) == target


class MatchFeatures(Objective):
    """Representation inversion: -||g(z) - g(x)||_2 / ||g(x)||_2 for target features g(x).

    `target` here is the (B, feature_dim) batch of target representations. fake_relu=True
    (the authors' inversion code) makes the final ReLU the identity in the backward pass, so
    features whose ReLU is off still steer the image.
    """

    needs_features = True

    def __init__(self, fake_relu: bool = True):
        self.fake_relu = fake_relu

    def __call__(self, logits, features, target):
        return -(features - target).norm(dim=1) / target.norm(dim=1).clamp(min=1e-12)
