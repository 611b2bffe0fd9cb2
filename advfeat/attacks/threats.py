"""Threat models: where an adversary may move an image, as in the robustness library.

A threat model is a tiny object with three methods, and every attack is written once
against it:
    random_start(x0, generator) -> a random feasible point near x0
    step(x, x0, grad, step_size) -> x moved uphill along grad, projected back
    project(x, x0)               -> the nearest feasible point
All in [0, 1] pixel space. The per-step work runs in the fused kernels (advfeat.kernels).

Random starts: libraries disagree on the L2 start, so it is an explicit option:
    "sphere": x0 + eps * u, u uniform on the unit sphere (robustness library; the paper)
    "ball":   x0 + eps * r^(1/n) * u, r ~ U(0,1): uniform in the ball's volume, which
              in n = 3072 dimensions is almost the sphere
    "radius": x0 + eps * r * u, r ~ U(0,1): uniform radius (torchattacks' PGDL2)
    "box":    x0 + U(-eps, eps)^n (Linf, both libraries)
    "none":   x0 itself
Every start is then projected (clamped to [0, 1]).
"""

from __future__ import annotations

import math

import torch

from advfeat import kernels
from advfeat.errors import UserError


class ThreatModel:
    name = ""
    starts: tuple[str, ...] = ("none",)

    def __init__(self, eps: float, start: str | None = None):
        if not eps >= 0:
            raise UserError(f"eps must be >= 0, got {eps}")
        start = start or self.starts[1 if len(self.starts) > 1 else 0]
        if start not in self.starts:
            raise UserError(f"random start {start!r} is not one of {', '.join(self.starts)} for {self.name}")
        self.eps, self.start = float(eps), start

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, start={self.start!r})"

    def random_start(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def step(self, x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        raise NotImplementedError

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class L2Threat(ThreatModel):
    """||x - x0||_2 <= eps. Step: normalized gradient times step size. eps = inf: no ball."""

    name = "l2"
    starts = ("none", "sphere", "ball", "radius")

    def random_start(self, x0, generator=None):
        if self.start == "none" or self.eps == 0:
            return x0.clone()
        if math.isinf(self.eps):
            raise UserError("a random start needs a finite eps")
        direction = torch.randn(x0.shape, generator=generator, device=x0.device)
        direction /= kernels.batch_l2_norm(direction).clamp(min=1e-12).view(-1, *[1] * (x0.dim() - 1))
        radius = torch.full((len(x0),), self.eps, device=x0.device)
        if self.start != "sphere":
            r = torch.rand(len(x0), generator=generator, device=x0.device)
            radius = radius * (r ** (1.0 / x0[0].numel()) if self.start == "ball" else r)
        return self.project(x0 + radius.view(-1, *[1] * (x0.dim() - 1)) * direction, x0)

    def step(self, x, x0, grad, step_size):
        return kernels.l2_step(x, x0, grad, step_size, self.eps)

    def project(self, x, x0):
        return kernels.l2_project(x, x0, self.eps)


class LinfThreat(ThreatModel):
    """||x - x0||_inf <= eps. Step: sign of the gradient times step size."""

    name = "linf"
    starts = ("none", "box")

    def random_start(self, x0, generator=None):
        if self.start == "none" or self.eps == 0:
            return x0.clone()
        noise = torch.rand(x0.shape, generator=generator, device=x0.device) * 2 - 1
        return self.project(x0 + self.eps * noise, x0)

    def step(self, x, x0, grad, step_size):
        return kernels.linf_step(x, x0, grad, step_size, self.eps)

    def project(self, x, x0):
        return kernels.linf_project(x, x0, self.eps)


THREATS = {"l2": L2Threat, "linf": LinfThreat}


def make_threat(norm: str, eps: float, start: str | None = None) -> ThreatModel:
    if norm not in THREATS:
        raise UserError(f"unknown norm {norm!r}; choose one of {', '.join(THREATS)}")
    return THREATS[norm](eps, start)
