"""Goh's "Two Examples of Useful, Non-Robust Features" (Distill discussion, response 3).

Linear features of images x (flattened pixels in [0, 1]) with labels y in {-1, +1} (here
truck = +1, frog = -1, Goh's task): f_a(x) = a.x / ||a||_S with ||a||_S = sqrt(a^T S a),
S = E[x x^T] the data's second-moment matrix (uncentred), so that E[f_a(x)^2] = 1.
- usefulness: E[y f_a(x)];
- robust usefulness at L2 radius eps: E[min_{||d|| <= eps} y f_a(x + d)], which for a linear
  feature is exactly E[y f_a(x)] - eps * ||a||_2 / ||a||_S (the worst d is -eps y a / ||a||;
  L2 is its own dual norm). ||a||_2 / ||a||_S is the feature's non-robustness.
For an eigenvector a_i of S (unit norm, eigenvalue l_i) the non-robustness is 1 / sqrt(l_i):
the directions of small second moment (high frequencies) are the least robust.

Goh's two constructions of useful non-robust features, as vectors a:
- ensemble: sum_i sign(E[y f_i]) f_i over the eigenfeatures whose non-robustness exceeds a
  threshold (the features f_i = a_i.x / sqrt(l_i) are uncorrelated with unit second moment,
  so the sum's usefulness is sum_i |E[y f_i]| / sqrt(k) over its k members);
- containment: (1 - alpha) f_nonrobust + alpha f_robust, a robust useful feature
  contaminated by a useless non-robust one, over a grid of alpha.
The [0, 1] pixel box is ignored by the closed form (as in Goh's). Signs and the feature the
claim tests are chosen on the training images; usefulness is then measured on test images.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from advfeat.discussion.common import Reference, judged, seeds_of
from advfeat.errors import UserError
from advfeat.stats import mean_interval, paired_difference_interval

POSITIVE, NEGATIVE = 9, 6  # truck = +1, frog = -1 (CIFAR-10 class indices)
REFERENCE = Reference("high-frequency eigenfeatures are less useful and less robust; ensembles and containments "
                      "make useful features that are not robust (a scatter of usefulness against non-robustness)",
                      "Goh, response 3: CIFAR-10 truck vs frog, singular vectors of the data, admissibility "
                      "threshold drawn at eps = 1")


@dataclass(frozen=True)
class EigenSettings:
    eps: float = 1.0  # L2 radius of robust usefulness (Goh's threshold)
    min_usefulness: float = 0.05  # a feature the claim tests is at least this useful on training images
    ensemble_threshold: float = 10.0  # ensemble members: non-robustness above this
    alphas: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    rank_tolerance: float = 1e-7  # eigenvalues below this times the largest are the data's null space

    def __post_init__(self):
        if not self.eps >= 0:
            raise UserError(f"eps must be >= 0, got {self.eps}")
        if any(not 0 <= a <= 1 for a in self.alphas):
            raise UserError(f"containment alphas must lie in [0, 1], got {self.alphas}")


# --------------------------------------------------------------------------- the measurement


def second_moment(x: torch.Tensor) -> torch.Tensor:
    """S = E[x x^T] of flattened images (n, d) -> (d, d), in float64."""
    x = x.flatten(1).double()
    return x.T @ x / len(x)


def sigma_norm(a: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(a.double() @ moment @ a.double())


def feature_values(a: torch.Tensor, x: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    """f_a(x) = a.x / ||a||_S for each image."""
    return x.flatten(1).double() @ a.double() / sigma_norm(a, moment)


def usefulness(a, x, y, moment) -> float:
    """E[y f_a(x)] with y in {-1, +1}."""
    return float((y.double() * feature_values(a, x, moment)).mean())


def non_robustness(a: torch.Tensor, moment: torch.Tensor) -> float:
    """||a||_2 / ||a||_S: how much f_a can move per unit of L2 perturbation."""
    return float(a.double().norm() / sigma_norm(a, moment))


def robust_usefulness(a, x, y, moment, eps: float) -> float:
    """Goh's decomposition: E[min_{||d|| <= eps} y f_a(x + d)] = usefulness - eps * non-robustness."""
    return usefulness(a, x, y, moment) - eps * non_robustness(a, moment)


def worst_perturbation(a: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Each image's minimizer of y f_a(x + d) over ||d||_2 <= eps: d = -eps y a / ||a||."""
    direction = a.double() / a.double().norm()
    return -eps * y.double()[:, None] * direction[None, :]


def eigenfeatures(moment: torch.Tensor, rank_tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues descending, eigenvectors as columns) of S, without its null space."""
    values, vectors = torch.linalg.eigh(moment)
    keep = values > rank_tolerance * values.max()
    order = torch.argsort(values[keep], descending=True)
    return values[keep][order], vectors[:, keep][:, order]


def eigenfeatures_of_data(x: torch.Tensor, rank_tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """eigenfeatures(second_moment(x)), through the n x n Gram matrix when n < d (the same
    nonzero eigenvalues; eigenvectors x^T u / sqrt(n l)): 3,072 x 3,072 costs more."""
    x = x.flatten(1).double()
    n, d = x.shape
    if n >= d:
        return eigenfeatures(second_moment(x), rank_tolerance)
    values, u = eigenfeatures(x @ x.T / n, rank_tolerance)
    return values, x.T @ u / torch.sqrt(n * values)


def eigen_table(x, y, moment, vectors) -> np.ndarray:
    """Per eigenfeature (columns of `vectors`): E[y f_i] on (x, y)."""
    f = x.flatten(1).double() @ vectors / torch.sqrt(torch.einsum("di,de,ei->i", vectors, moment, vectors))
    return (y.double()[:, None] * f).mean(0).numpy()


def ensemble_vector(values, vectors, signs: np.ndarray, members: np.ndarray) -> torch.Tensor:
    """a of sum_i sign_i f_i over the members: sum_i sign_i a_i / sqrt(l_i)."""
    index = torch.from_numpy(np.flatnonzero(members))
    weights = torch.from_numpy(signs[members]).double() / torch.sqrt(values[index])
    return vectors[:, index] @ weights


def containment_vector(robust_a, robust_value, nonrobust_a, nonrobust_value, alpha: float) -> torch.Tensor:
    """a of (1 - alpha) f_nonrobust + alpha f_robust for unit eigenvectors with eigenvalues given."""
    return (1 - alpha) * nonrobust_a / torch.sqrt(nonrobust_value) + alpha * robust_a / torch.sqrt(robust_value)


def labelled_pair(split_x: torch.Tensor, split_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The truck and frog images of a split, with y = +1 (truck) / -1 (frog)."""
    keep = (split_y == POSITIVE) | (split_y == NEGATIVE)
    return split_x[keep].flatten(1).double().cpu(), torch.where(split_y[keep] == POSITIVE, 1, -1).cpu()


def analyse(settings: EigenSettings, train, test) -> dict:
    """Everything of Goh's comment on train = (x, y +-1) and test = (x, y +-1): the eigenfeature
    scatter (usefulness on test images against non-robustness), the claim's feature, the
    ensemble and the containments."""
    x, y = train
    moment = second_moment(x)
    values, vectors = eigenfeatures_of_data(x, settings.rank_tolerance)
    train_use = eigen_table(x, y, moment, vectors)
    signs = np.where(train_use >= 0, 1.0, -1.0)
    vectors = vectors * torch.from_numpy(signs)  # each feature points the useful way on training images
    train_use, test_use = np.abs(train_use), eigen_table(*test, moment, vectors)
    fragility = (1 / torch.sqrt(values)).numpy()
    eps = settings.eps
    # The claim's feature, chosen on training images only: useful, and not robust at eps, with
    # the larger of the two margins (usefulness, and eps * non-robustness - usefulness) largest.
    candidates = np.flatnonzero((train_use >= settings.min_usefulness) & (train_use - eps * fragility < 0))
    chosen = None
    if len(candidates):
        margins = np.minimum(train_use, eps * fragility - train_use)[candidates]
        i = int(candidates[np.argmax(margins)])
        per_image = (test[1].double() * feature_values(vectors[:, i], test[0], moment)).numpy()
        chosen = {"index": i, "eigenvalue": float(values[i]), "non_robustness": float(fragility[i]),
                  "train_usefulness": float(train_use[i]), "test_usefulness": float(per_image.mean()),
                  "test_robust_usefulness": float(per_image.mean() - eps * fragility[i]),
                  "per_image": per_image.round(6).tolist()}
    members = fragility > settings.ensemble_threshold
    ensemble = None
    if members.any():
        a = ensemble_vector(values, vectors, np.ones(len(values)), members)
        ensemble = {"members": int(members.sum()), "threshold": settings.ensemble_threshold,
                    "test_usefulness": usefulness(a, *test, moment), "non_robustness": non_robustness(a, moment),
                    "test_robust_usefulness": robust_usefulness(a, *test, moment, eps)}
    robust_i = int(np.argmax(train_use - eps * fragility))  # the most robustly useful on training images
    useless_i = int(np.argmin(np.where(members, train_use, np.inf))) if members.any() else len(values) - 1
    containments = []
    for alpha in settings.alphas:
        a = containment_vector(vectors[:, robust_i], values[robust_i], vectors[:, useless_i], values[useless_i], alpha)
        containments.append({"alpha": alpha, "test_usefulness": usefulness(a, *test, moment),
                             "non_robustness": non_robustness(a, moment),
                             "test_robust_usefulness": robust_usefulness(a, *test, moment, eps)})
    return {"features": len(values), "eigenvalues": values.numpy().round(8).tolist(),
            "non_robustness": fragility.round(5).tolist(), "train_usefulness": train_use.round(5).tolist(),
            "test_usefulness": test_use.round(5).tolist(), "chosen": chosen, "ensemble": ensemble,
            "containment": {"robust_feature": robust_i, "nonrobust_feature": useless_i, "rows": containments}}


def scatter_figure(result: dict, eps: float, dest) -> None:
    """Goh's scatter: each eigenfeature's test usefulness against its non-robustness, with the
    line usefulness = eps * non-robustness (below it: useful but not robustly useful)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from advfeat.io import save_figure

    fragility, use = np.asarray(result["non_robustness"]), np.asarray(result["test_usefulness"])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(fragility, use, s=4, alpha=0.5, label="eigenfeatures")
    if result["chosen"]:
        ax.scatter([result["chosen"]["non_robustness"]], [result["chosen"]["test_usefulness"]], s=30, c="red",
                   label="the claim's feature")
    line = np.geomspace(fragility.min(), fragility.max(), 50)  # the x axis is logarithmic
    ax.plot(line, eps * line, "k--", lw=1, label=f"usefulness = {eps:g} x non-robustness")
    ax.set(xscale="log", xlabel="non-robustness ||a||_2 / ||a||_S", ylabel="usefulness E[y f(x)] (test)",
           ylim=(min(-0.1, use.min()), max(0.6, use.max())), title="truck vs frog: Goh's eigenfeatures")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, dest)
    plt.close(fig)


def eigenfeatures_stage(settings: EigenSettings, sources, seed: int):
    """Stage body `eigenfeatures@seed`; reads no stage: the truck and frog images of the
    seed's training subset (sources.train_data(seed)) and of the shared test set
    (sources.test_tensors()); writes <folder>/scatter.png (Goh's figure). Result: analyse()'s,
    with its time."""

    def run(ctx) -> dict:
        from advfeat.data.tensor_loader import to_unit_float

        start = time.perf_counter()
        split = sources.train_data(seed).train
        train = labelled_pair(to_unit_float(torch.from_numpy(split.images)), torch.from_numpy(split.labels))
        x_test, y_test = sources.test_tensors()
        result = analyse(settings, train, labelled_pair(x_test.cpu(), y_test.cpu()))
        scatter_figure(result, settings.eps, ctx.folder / "scatter.png")
        return {"settings": asdict(settings), **result, "seconds": round(time.perf_counter() - start, 1)}

    return run


def judge_eigenfeatures(results: dict[int, dict]) -> dict:
    """Goh's claim: an eigenfeature chosen on training images is useful on test images
    (usefulness > 0) and yet not robustly useful at eps (robust usefulness < 0). Over seeds: the
    mean of the per-seed values; one seed: a normal interval over the test images of y f(x).
    The rival view (useful features are robust ones; non-robust directions carry no signal)
    fails the first part."""
    seeds = seeds_of(results)
    chosen = [results[s]["chosen"] for s in seeds]
    eps = results[seeds[0]]["settings"]["eps"]
    if any(c is None for c in chosen):
        use = robust = None
    elif len(seeds) >= 2:
        use = mean_interval([c["test_usefulness"] for c in chosen])
        robust = mean_interval([c["test_robust_usefulness"] for c in chosen])
    else:
        per_image = np.asarray(chosen[0]["per_image"])
        use = paired_difference_interval(per_image, np.zeros_like(per_image))
        lower = eps * chosen[0]["non_robustness"]
        robust = paired_difference_interval(per_image - lower, np.zeros_like(per_image))
    return judged("goh-eigenfeatures", "A linear feature can be useful and not robust (Goh's eigenfeatures)",
                  REFERENCE, [("test usefulness E[y f(x)] of the chosen eigenfeature", use, "above", 0.0),
                              (f"its robust usefulness at L2 eps {eps:g}", robust, "below", 0.0)])
