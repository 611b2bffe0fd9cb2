"""The result type shared by the attacks of the AutoAttack ensemble (apgd.py, square.py, autoattack.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EnsembleResult:
    """Per example, what an attack of the AutoAttack ensemble found (APGD, targeted APGD, Square).

    Square counts queries where APGD counts gradient steps (iterations, success_iteration), and
    rows of forward passes in image_steps.
    """

    x_adv: torch.Tensor  # (N, ...) fp32: the first successful iterate if any, else the highest-loss point
    success: torch.Tensor  # (N,) bool
    loss: torch.Tensor  # (N,) the highest loss seen, over all restarts
    iterations: torch.Tensor  # (N,) gradient steps taken, over all restarts
    success_iteration: torch.Tensor  # (N,) the step of the first success within its restart (0: the start); -1
    zero_grad: torch.Tensor  # (N,) bool: the gradient at the first random start was exactly zero
    image_steps: int  # rows of gradient passes (forward + backward), padding rows included
    seconds: float
    target: torch.Tensor | None = None  # (N,) the target class of x_adv, for targeted losses

    @property
    def image_steps_per_s(self) -> float:
        return self.image_steps / max(self.seconds, 1e-9)
