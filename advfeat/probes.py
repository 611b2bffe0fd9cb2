"""Linear probes: how much a fixed representation tells about labels.

Goh's robust-feature-leakage experiment (Distill discussion, response 2) trains a *linear*
classifier on features that a robust model computes, on D_rand or D_det, and tests it on the
real test set. A linear map of robust features can only use robust features, so its accuracy
bounds how much robust signal leaked into the dataset's labels.

The probe is multinomial logistic regression on standardized features (mean and scale from the
training features), fit by full-batch L-BFGS with a small L2 penalty: a convex problem with a
unique optimum, so the probe has no seed and no learning rate to tune.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, l2: float = 1e-4,
                     iterations: int = 200) -> torch.nn.Linear:
    """A linear classifier (on standardized features) minimizing the mean cross-entropy + l2 * ||W||^2."""
    features = features.float()
    mean, scale = features.mean(0), features.std(0).clamp(min=1e-6)
    probe = torch.nn.Linear(features.shape[1], num_classes).to(features.device)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    z = (features - mean) / scale
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=iterations, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(z), labels) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    # Fold the standardization into the weights: the probe takes raw features.
    with torch.no_grad():
        probe.weight.div_(scale)
        probe.bias.sub_(probe.weight @ mean)
    return probe.requires_grad_(False)


@torch.no_grad()
def probe_accuracy(probe: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probe(features.float()).argmax(1) == labels).float().mean())
