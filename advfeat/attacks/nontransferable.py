"""Targeted adversarial examples that do not transfer (Nakkiran, Distill discussion, response 5).

A "bug" adversarial example: it makes the source model predict the target t, while an ensemble
of independently trained models keeps predicting the true label y. The attack maximizes

    -CE(f(x), t) - mean_i CE(f_i(x), y)

with the usual projected steps (Nakkiran: 10 ResNet-18s; here any ensemble). Nakkiran found
that a dataset of such examples relabelled t teaches almost nothing about the real test set,
which the authors read as non-transferable examples being non-learnable (Figure 3's (0, 0)).

The source and the ensemble run as one module whose logits are stacked (B, 1 + k, C), so the
PGD engine attacks them like one model; the objective splits the stack. Targets are (B, 2):
(t, y) per example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advfeat.attacks.objectives import Objective
from advfeat.errors import UserError


class StackedLogits(nn.Module):
    """Source and ensemble as one module: logits (B, 1 + k, C), the source first."""

    def __init__(self, source: nn.Module, ensemble: list[nn.Module]):
        super().__init__()
        if not ensemble:
            raise UserError("the non-transferable attack needs an ensemble of at least one model")
        self.source, self.ensemble = source, nn.ModuleList(ensemble)
        self.num_classes = source.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.source(x), *[m(x) for m in self.ensemble]], 1)


class ReachTargetKeepEnsemble(Objective):
    """Maximize -CE(source, t) - mean CE(ensemble, y); success: the source predicts t."""

    def __call__(self, logits, features, target):
        t, y = target[:, 0], target[:, 1]
        source, ensemble = logits[:, 0], logits[:, 1:]
        keep = F.cross_entropy(ensemble.flatten(0, 1), y.repeat_interleave(ensemble.shape[1]), reduction="none")
        return -F.cross_entropy(source, t, reduction="none") - keep.view(len(t), -1).mean(1)

    def succeeded(self, logits, target):
        return logits[:, 0].argmax(1) == target[:, 0]


def targets_and_labels(target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The (B, 2) targets the objective reads: (t, y)."""
    return torch.stack([target, labels], 1)
