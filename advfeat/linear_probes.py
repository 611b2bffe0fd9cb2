"""Linear probes: how much a fixed representation tells about labels.

Goh's robust-feature-leakage experiment (Distill discussion, response 2) trains a *linear*
classifier on features that a robust model computes, on D_rand or D_det, and tests it on the
real test set. A linear map of robust features can only use robust features, so its accuracy
bounds how much robust signal leaked into the dataset's labels.

The probe is multinomial logistic regression on standardized features (mean and scale from the
training features), fit by full-batch L-BFGS with a small L2 penalty: a convex problem with a
unique optimum, so the probe has no seed and no learning rate to tune.

Goh's own features come from a *robust linear model* on the pixels (`fit_robust_linear_model`):
for a linear model the worst L2 perturbation is known in closed form, so its robustness is
certified, not estimated by an attack (`certified_stable`).
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


def _pairwise_weight_distances(weight: torch.Tensor) -> torch.Tensor:
    """D[a, b] = ||w_a - w_b||_2 for the rows of a linear layer (0 on the diagonal, smooth off it)."""
    diff = weight[:, None, :] - weight[None, :, :]
    return (diff.pow(2).sum(-1) + 1e-12).sqrt() * (1 - torch.eye(len(weight), device=weight.device))


def fit_robust_linear_model(x: torch.Tensor, labels: torch.Tensor, num_classes: int, eps: float, *,
                            l2: float = 1e-4, iterations: int = 300) -> torch.nn.Linear:
    """A linear classifier on flattened pixels, trained against every L2 perturbation of size eps.

    For logits z = Wx + b, the worst perturbation ||d|| <= eps lowers the margin z_y - z_j by
    exactly eps * ||w_y - w_j|| (ignoring the [0, 1] pixel box, which can only help the model: the
    certificate below is conservative). Training on the cross-entropy of the logits z_j + eps * ||w_j - w_y||
    (j != y) minimizes an upper bound of the robust cross-entropy (exact for two classes): the
    robust training of a linear model, with no attack in the loop. Full-batch L-BFGS, as the probe.
    """
    x = x.flatten(1).float()
    mean = x.mean(0)
    model = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    centred = x - mean  # conditioning only: a shift of the inputs does not change an L2 ball's geometry
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=iterations, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        optimizer.zero_grad()
        worst = model(centred) + eps * _pairwise_weight_distances(model.weight)[labels]
        loss = F.cross_entropy(worst, labels) + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        model.bias.sub_(model.weight @ mean)
    return model.requires_grad_(False)


@torch.no_grad()
def certified_stable(model: torch.nn.Linear, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per image: True when no L2 perturbation of size eps changes the linear model's prediction
    (every margin z_p - z_j exceeds eps * ||w_p - w_j||, p the predicted class)."""
    logits = model(x.flatten(1).float())
    predicted = logits.argmax(1)
    margins = logits.gather(1, predicted[:, None]) - logits
    needed = eps * _pairwise_weight_distances(model.weight)[predicted]
    others = torch.ones_like(margins, dtype=torch.bool).scatter_(1, predicted[:, None], False)
    return ((margins > needed) | ~others).all(1)


def fit_goh_linear_model(x: torch.Tensor, labels: torch.Tensor, num_classes: int, *, radius: float = 0.25,
                         stable: float = 0.8, ladder: tuple[int, ...] = (1, 2, 4, 8)):
    """Goh's robust linear model (his second specification): one whose prediction no L2
    perturbation of size `radius` changes on at least `stable` of the points. Trained at eps
    radius * k for k on the ladder, the first (least robust, most accurate) model that meets it on
    the training images is kept. Returns (model, its training eps, its certified stable share)."""
    for k in ladder:
        model = fit_robust_linear_model(x, labels, num_classes, radius * k)
        share = float(certified_stable(model, x, radius).float().mean())
        if share >= stable:
            break
    return model, radius * k, share
