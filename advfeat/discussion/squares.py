"""Nakkiran's adversarial squares (Distill discussion, response 5, "Adversarial Examples are Just Bugs, Too").

The data: CIFAR-sized all-black or all-white images plus U[-0.1, 0.1] noise per pixel, and 10%
of the training labels flipped. One feature, the brightness, separates the classes with an
L-inf margin of 0.9, so the data hold no useful non-robust feature; yet a network trained to
100% training accuracy (it memorizes the flipped labels through the noise) is flipped by an
L-inf perturbation of 0.01, while the same training stopped early is not. Adversarial examples
that come from overfitting, not from features: "bugs".

Units. The comment's pixels are s + u with s = -1 (black) or +1 (white), u ~ U[-0.1, 0.1]
(its eps 0.9 is the worst-case margin 1 - 0.1 of sign(sum of pixels) on that scale). advfeat's
attacks work in [0, 1], so a pixel here is 0.5 + SCALE * (s + u) with SCALE = 0.5 / 1.1, which
keeps every pixel in [0, 1] and changes nothing but the unit: an eps of e in the comment's units
is SCALE * e here. Settings and results state eps in the comment's units.

The network (a deviation, for a CPU): a two-layer ReLU network f(x) = v . relu(A z) on the
comment-unit pixels z, whose first layer A (d x width, N(0, 1/d)) is fixed at random and whose
second layer v is trained by gradient descent from v = 0 on the squared loss to the +-1 labels.
That trajectory is known in closed form (`gd_coefficients`), so both of the comment's models
are points on one training run, computed exactly in seconds:
- "overfit": the limit of the run, the minimum-norm interpolant (100% training accuracy, noisy
  labels included, whenever width >= n_train);
- "early": the run stopped after as many steps as one epoch has batches (ceil(n_train / 128)).
Nakkiran: a ResNet-18 on 10,000 samples, Adam (lr 1e-5, batch 128, 20 epochs) to 99.9%
training accuracy, and its first epoch. Test labels are clean: a flip is counted against the
true colour, on a test image the model had right.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from advfeat.attacks import make_threat, pgd
from advfeat.discussion.common import (
    Reference,
    difference_interval,
    judged,
    rate_interval,
    seeds_of,
)
from advfeat.errors import UserError
from advfeat.evaluation import predict_tensor

SCALE = 0.5 / 1.1  # one unit of the comment's pixel scale, in [0, 1] pixel units
SHAPE = (3, 32, 32)
REFERENCE = Reference("eps 0.01 flips almost all test points of the overfit model; stopping after 1 epoch gives a "
                      "robust classifier; a linear classifier is robust up to eps 0.9",
                      "Nakkiran, response 5: ResNet-18, 10,000 samples, 99.9% training accuracy (Adam, lr 1e-5, "
                      "batch 128, 20 epochs), L-inf, pixels in [-1, 1]")


@dataclass(frozen=True)
class SquaresSettings:
    n_train: int = 1000
    n_test: int = 500
    noise: float = 0.1  # pixel noise U[-noise, noise], comment units
    label_noise: float = 0.1  # share of training labels flipped
    width: int = 4000  # hidden ReLUs; >= n_train for the limit to interpolate
    batch_size: int = 128  # only sets the early model's steps: one epoch's batches
    eps: float = 0.01  # L-inf attack radius, comment units
    attack_steps: int = 10

    def __post_init__(self):
        if not 0 <= self.label_noise < 0.5:
            raise UserError(f"label noise must be in [0, 0.5), got {self.label_noise}")
        if not 0 <= self.noise < 1:
            raise UserError(f"pixel noise must be in [0, 1) (comment units), got {self.noise}")
        if not self.eps > 0:
            raise UserError(f"eps must be > 0, got {self.eps}")
        if self.n_train < 2 or self.n_test < 1 or self.width < self.n_train:
            raise UserError(f"squares need n_train >= 2, n_test >= 1 and width >= n_train, got {self.n_train}, "
                            f"{self.n_test}, {self.width}")

    @property
    def early_steps(self) -> int:
        return -(-self.n_train // self.batch_size)


def square_images(n: int, noise: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (n, 3, 32, 32) in [0, 1] and their colours (1 = white), half of each in random order."""
    colour = torch.randperm(n, generator=generator) % 2
    u = (torch.rand((n, *SHAPE), generator=generator) * 2 - 1) * noise
    s = (2 * colour - 1).float().view(-1, 1, 1, 1)
    return 0.5 + SCALE * (s + u), colour


def flip_labels(labels: torch.Tensor, rate: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels with exactly round(rate * n) of them flipped, chosen at random; the flipped mask)."""
    flipped = torch.zeros(len(labels), dtype=torch.bool)
    flipped[torch.randperm(len(labels), generator=generator)[:round(rate * len(labels))]] = True
    return torch.where(flipped, 1 - labels, labels), flipped


def brightness_classifier() -> tuple[torch.Tensor, float]:
    """(w, b) of the linear classifier white <=> w.x + b > 0 with w = 1/d, b = -0.5 (mean pixel vs 0.5)."""
    d = int(np.prod(SHAPE))
    return torch.full((d,), 1.0 / d), -0.5


def linf_radius(w: torch.Tensor, b: float, x: torch.Tensor) -> torch.Tensor:
    """Each image's exact L-inf distance to the boundary of sign(w.x + b): |w.x + b| / ||w||_1
    (Hoelder: the L1 norm is the dual of L-inf). In the units of x; the [0, 1] box is ignored
    (it can only enlarge the radius; here it never binds, since SCALE * (1.1 + 0.9) < 1)."""
    return (x.flatten(1) @ w + b).abs() / w.abs().sum()


def flip_outcomes(model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                  batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Per test image: (correct before the attack, flipped: correct before and wrong after an
    L-inf PGD of radius eps in [0, 1] pixel units, steps of 2.5 eps / steps, no random start)."""
    correct = predict_tensor(model, x, batch_size) == y
    index = torch.nonzero(correct).flatten()
    flipped = torch.zeros_like(correct)
    if len(index):
        result = pgd(model, x[index], y[index], threat=make_threat("linf", eps, "none"), steps=steps,
                     step_size=2.5 * eps / steps, batch_size=batch_size)
        flipped[index] = result.success
    return correct.cpu().numpy(), flipped.cpu().numpy()


def squares_data(settings: SquaresSettings, seed: int) -> dict:
    """Training images with noisy labels, clean test images; all from `seed`."""
    g = torch.Generator().manual_seed(seed)
    x_train, colour_train = square_images(settings.n_train, settings.noise, g)
    y_train, flipped = flip_labels(colour_train, settings.label_noise, g)
    x_test, y_test = square_images(settings.n_test, settings.noise, g)
    return {"train": (x_train, y_train), "test": (x_test, y_test), "flipped": flipped}


def measure_model(model, data: dict, settings: SquaresSettings) -> dict:
    x_train, y_train = data["train"]
    x_test, y_test = data["test"]
    correct, flipped = flip_outcomes(model, x_test, y_test, SCALE * settings.eps, settings.attack_steps)
    return {"train_accuracy": float((predict_tensor(model, x_train, 500) == y_train).float().mean()),
            "test_accuracy": float(correct.mean()), "flip_rate": float(flipped.mean()),
            "flipped": flipped.astype(int).tolist()}


class RandomFeatureNet(torch.nn.Module):
    """f(x) = v . relu(A z), z = (x - 0.5) / SCALE flattened; logits (-f, f) (class 1 = white)."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor):
        super().__init__()
        self.register_buffer("first", first)
        self.register_buffer("second", second)
        self.num_classes = 2

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(((x - 0.5) / SCALE).flatten(1) @ self.first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.hidden(x) @ self.second
        return torch.stack([-f, f], 1)


def gd_coefficients(kernel: torch.Tensor, targets: torch.Tensor, steps: int | None) -> torch.Tensor:
    """a with v_t = H^T a after `steps` steps of gradient descent from v = 0 on
    1/2 ||H v - targets||^2 with step 1 / lambda_max(H H^T), kernel = H H^T (n x n).

    In the row space of H the residual obeys r_{t+1} = (I - eta K) r_t, so
    K a_t = (I - (I - eta K)^t) targets: per eigenvalue l of K, a = (1 - (1 - eta l)^t) / l.
    steps=None: the limit t -> infinity, K^-1 targets, the minimum-norm interpolant."""
    eigenvalues, vectors = torch.linalg.eigh(kernel.double())
    if steps is None:
        if eigenvalues.min() <= 1e-9 * eigenvalues.max():
            raise UserError("the hidden features do not span the training points: use width >= n_train")
        gain = 1 / eigenvalues
    else:
        eta = 1 / eigenvalues.max()
        gain = (1 - (1 - eta * eigenvalues.clamp(min=0)) ** steps) / eigenvalues.clamp(min=1e-300)
    return (vectors @ (gain * (vectors.T @ targets.double()))).to(kernel.dtype)


def train_squares_models(settings: SquaresSettings, data: dict, seed: int) -> dict:
    """{"overfit": the run's limit, "early": the run after settings.early_steps steps}."""
    x, y = data["train"]
    g = torch.Generator().manual_seed(seed)
    first = (torch.randn(x[0].numel(), settings.width, generator=g) / x[0].numel() ** 0.5).to(x.device)
    hidden = RandomFeatureNet(first, first.new_zeros(settings.width)).hidden(x)
    kernel, targets = hidden @ hidden.T, (2 * y - 1).float()
    return {name: RandomFeatureNet(first, hidden.T @ gd_coefficients(kernel, targets, steps)).eval()
            for name, steps in (("overfit", None), ("early", settings.early_steps))}


def squares_stage(settings: SquaresSettings, seed: int, device: torch.device):
    """Stage body `squares@seed`; reads no stage (the data are synthetic, from `seed`); writes
    no file. Fits the overfit and the early-stopped net, attacks both on the test images; result: per
    model train/test accuracy, flip rate and per-image flips, and the brightness classifier's
    exact L-inf radius (min and mean over the test images, comment units)."""

    def run(ctx) -> dict:
        start = time.perf_counter()
        data = squares_data(settings, seed)
        data = {k: tuple(t.to(device) for t in v) if isinstance(v, tuple) else v for k, v in data.items()}
        result = {"settings": asdict(settings), "label_noise_measured": float(data["flipped"].float().mean())}
        for name, model in train_squares_models(settings, data, seed).items():
            result[name] = measure_model(model, data, settings)
        w, b = brightness_classifier()
        x_test, y_test = (t.cpu() for t in data["test"])
        radius = linf_radius(w, b, x_test) / SCALE  # in the comment's units
        linear_correct = ((x_test.flatten(1) @ w + b > 0).long() == y_test).float().mean()
        result["linear"] = {"test_accuracy": float(linear_correct), "min_radius": float(radius.min()),
                            "mean_radius": float(radius.mean()), "worst_case_radius": 1 - settings.noise}
        result["seconds"] = round(time.perf_counter() - start, 1)
        return result

    return run


def judge_squares(results: dict[int, dict]) -> dict:
    """Nakkiran's claim from the stage results of each seed: the overfit model's flip rate is
    above 1/2 ("most"), and above the early-stopped one's by more than 0.25 ("few"). The rival
    view (adversarial examples only ever come from useful non-robust features of the data) would
    fail it: these data have no such feature (the brightness classifier is robust to 0.9),
    so it predicts no flips at 0.01 for either model."""
    seeds = seeds_of(results)
    overfit = [np.asarray(results[s]["overfit"]["flipped"]) for s in seeds]
    early = [np.asarray(results[s]["early"]["flipped"]) for s in seeds]
    eps = results[seeds[0]]["settings"]["eps"]
    most = rate_interval([results[s]["overfit"]["flip_rate"] for s in seeds], overfit)
    gap = difference_interval([results[s]["overfit"]["flip_rate"] - results[s]["early"]["flip_rate"] for s in seeds],
                              overfit, early)
    return judged("nakkiran-squares", "Overfitting alone makes non-robust classifiers on data with only robust "
                  "features (Nakkiran's adversarial squares)", REFERENCE,
                  [(f"flip rate at L-inf eps {eps:g} (overfit model)", most, "above", 0.5),
                   (f"flip rate (overfit) - flip rate (stopped after 1 epoch), eps {eps:g}", gap, "above", 0.25)])
