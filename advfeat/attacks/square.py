"""Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"): keep a perturbation on the eps-sphere, and at each
query change it on one random square window of the image (a side that shrinks on a schedule
of the query count), keeping the change when it lowers the margin z_y - max_{i!=y} z_i. Linf:
the window gets a random +-eps per channel. L2: the window gets a "center-surround" bump and
the mass it takes is moved from another window, so the norm stays eps.
"""

from __future__ import annotations

import functools
import math
import time

import torch

from advfeat.attacks.results import EnsembleResult
from advfeat.attacks.forward import frozen, frozen_view
from advfeat.errors import UserError
from advfeat.settings import NORMS
from advfeat.runtime import autocast, prepare_input

def _square_fraction(query: int, n_queries: int, p_init: float) -> float:
    """The fraction p of the image a window covers at this query: p_init, halved at query
    10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10,000-query budget (rescaled to n_queries)."""
    at = int(query / n_queries * 10000)
    halvings = sum(at > edge for edge in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2 ** halvings


def _square_side(query: int, n_queries: int, p_init: float, shape: torch.Size, norm: str) -> int:
    """The window's side: sqrt(p * pixels); L2 windows are odd and at least 3 (for their bump)."""
    _, h, w = shape
    side = round(math.sqrt(_square_fraction(query, n_queries, p_init) * h * w))
    if norm == "l2":
        side = max(side, 3) + (max(side, 3) % 2 == 0)
    return max(1, min(side, h, w))


def _rectangles(a: int, b: int) -> torch.Tensor:
    """Concentric rectangles around the center of an a x b window, ring k weighted 1/(k+1)^2."""
    out = torch.zeros(a, b)
    for k in range(max(a // 2, b // 2) + 1):
        r, c = a // 2 - k, b // 2 - k
        out[max(r, 0):min(r + 2 * k + 1, a), max(c, 0):min(c + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
    return out / out.norm()


@functools.cache
def _center_surround(side: int) -> torch.Tensor:
    """(2, side, side): the L2 Square bump (a positive and a negative half) and its transpose.
    On the CPU, built once per side (a handful of sides over a whole attack)."""
    bump = torch.zeros(side, side)
    bump[:side // 2] = _rectangles(side // 2, side)
    bump[side // 2:] = -_rectangles(side - side // 2, side)
    bump /= bump.norm()
    return torch.stack([bump, bump.T])


def _window(corner_h: torch.Tensor, corner_w: torch.Tensor, side: int, h: int, w: int) -> torch.Tensor:
    """(B, 1, h, w) bool: each example's side x side window at its own corner."""
    rows = torch.arange(h, device=corner_h.device)[None] - corner_h[:, None]
    cols = torch.arange(w, device=corner_w.device)[None] - corner_w[:, None]
    inside_r, inside_c = (rows >= 0) & (rows < side), (cols >= 0) & (cols < side)
    return (inside_r[:, :, None] & inside_c[:, None, :])[:, None]


def _random_corners(b: int, side: int, h: int, w: int, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randint(0, h - side + 1, (b,), generator=generator, device=device),
            torch.randint(0, w - side + 1, (b,), generator=generator, device=device))


def _random_signs(shape, generator, device) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=device).float() * 2 - 1


def _placed_bumps(side: int, corner_h, corner_w, h: int, w: int, generator) -> torch.Tensor:
    """(B, 1, h, w): a center-surround bump (randomly transposed) in each example's window, 0 elsewhere."""
    bumps = _center_surround(side).to(corner_h.device)
    flip = torch.randint(0, 2, (len(corner_h),), generator=generator, device=corner_h.device)
    rows = (torch.arange(h, device=corner_h.device)[None] - corner_h[:, None]).clamp(0, side - 1)
    cols = (torch.arange(w, device=corner_w.device)[None] - corner_w[:, None]).clamp(0, side - 1)
    values = bumps[flip[:, None, None], rows[:, :, None], cols[:, None, :]]
    return (values[:, None] * _window(corner_h, corner_w, side, h, w))


def _per_channel_norm(t: torch.Tensor) -> torch.Tensor:
    return t.square().sum((2, 3), keepdim=True).sqrt()


def _square_init(x0: torch.Tensor, norm: str, eps: float, generator) -> torch.Tensor:
    """Linf: vertical stripes of +-eps (one sign per channel and column). L2: a 5 x 5 grid of
    bumps with random signs per channel, scaled to norm eps."""
    b, c, h, w = x0.shape
    if norm == "linf":
        return (x0 + eps * _random_signs((b, c, 1, w), generator, x0.device)).clamp(0, 1)
    delta = torch.zeros_like(x0)
    side = h // 5
    offset = (h - 5 * side) // 2
    for i in range(5):
        for j in range(5):
            corner = torch.full((b,), offset + i * side, device=x0.device)
            corner_w = torch.full((b,), offset + j * side, device=x0.device)
            delta += _placed_bumps(side, corner, corner_w, h, w, generator) * \
                _random_signs((b, c, 1, 1), generator, x0.device)
    return _to_l2_sphere(x0, delta, eps)


def _to_l2_sphere(x0: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    norm = delta.square().sum((1, 2, 3), keepdim=True).sqrt()
    return (x0 + eps * delta / (norm + 1e-12)).clamp(0, 1)


def _square_proposal(x_best, x0, norm: str, eps: float, side: int, generator) -> torch.Tensor:
    """Change each example's perturbation on one random window.

    Linf: set the window to x0 +- eps, one random sign per channel.
    L2: replace the window by a random bump plus its old content (normalized per channel), zero
    a second random window to pay for it, and rescale the whole perturbation to norm eps.
    """
    b, c, h, w = x0.shape
    corner_h, corner_w = _random_corners(b, side, h, w, generator, x0.device)
    window = _window(corner_h, corner_w, side, h, w)
    if norm == "linf":
        signs = _random_signs((b, c, 1, 1), generator, x0.device)
        return torch.where(window, (x0 + eps * signs).clamp(0, 1), x_best)
    delta = x_best - x0
    other = _window(*_random_corners(b, side, h, w, generator, x0.device), side, h, w)
    old = delta * window
    bump = _placed_bumps(side, corner_h, corner_w, h, w, generator) * _random_signs((b, c, 1, 1), generator, x0.device)
    new = bump + old / (_per_channel_norm(old) + 1e-12)
    # The window's budget: what the two windows held, plus whatever the image lacks of eps.
    image_sq = delta.square().sum((1, 2, 3), keepdim=True)
    windows_sq = (delta * (window | other)).square().sum((1, 2, 3), keepdim=True)
    budget = ((eps ** 2 - image_sq).clamp(min=0) / c + windows_sq).sqrt()
    new = new / (_per_channel_norm(new) + 1e-12) * budget
    delta = torch.where(window, new, torch.where(other, 0.0, delta))
    return _to_l2_sphere(x0, delta, eps)


def _margin(forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{i != y} z_i: negative exactly when the example is misclassified."""
    with autocast(x.device):
        logits = forward(prepare_input(x)).float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], -math.inf).amax(1)


@torch.no_grad()
def square_attack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    n_queries: int = 5000,
    p_init: float = 0.8,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool | None = None,
    compact_every: int = 20,
) -> EnsembleResult:
    """Square attack: black-box (forward passes only), untargeted, margin loss.

    Each query proposes one new point per example and keeps it when the margin drops; an
    example stops at its first misclassification. Examples run batch_size at a time, all at the
    same query (the window side follows the query count). Broken examples are dropped from the
    batch every `compact_every` queries (one host read). Result fields as APGD's: iterations
    and success_iteration count queries (the random initialization is query 0); image_steps
    counts rows of forward passes.
    """
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if not eps > 0:
        raise UserError(f"eps must be > 0, got {eps}")
    if n_queries < 1:
        raise UserError(f"n_queries must be at least 1, got {n_queries}")
    n, device = len(x), x.device
    start = time.perf_counter()
    x_adv = x.clone()
    margin_min = torch.full((n,), math.inf, device=device)
    success_q = torch.full((n,), -1, dtype=torch.long, device=device)
    queries = torch.zeros(n, dtype=torch.long, device=device)
    rows_run = 0
    width = max(1, min(batch_size or n, n)) if n else 1
    with frozen(model):
        forward = frozen_view(model, compile, device)
        for first in range(0, n, width):
            part = torch.arange(first, min(first + width, n), device=device)
            x_adv[part] = _square_init(x[part], norm, eps, generator)
            margin_min[part] = _margin(forward, x_adv[part], y[part])
            rows_run += len(part)
            success_q[part] = torch.where(margin_min[part] <= 0, 0, -1)
            for query in range(1, n_queries + 1):
                if (query - 1) % compact_every == 0:
                    part = part[success_q[part] < 0]  # the one host read: drop the broken
                    if not len(part):
                        break
                side = _square_side(query - 1, n_queries, p_init, x.shape[1:], norm)
                best = x_adv[part]
                candidate = _square_proposal(best, x[part], norm, eps, side, generator)
                margin = _margin(forward, candidate, y[part])
                rows_run += len(part)
                open_ = success_q[part] < 0
                better = open_ & (margin < margin_min[part])
                x_adv[part] = torch.where(better[:, None, None, None], candidate, best)
                margin_min[part] = torch.where(better, margin, margin_min[part])
                queries[part] += open_
                success_q[part] = torch.where(open_ & (margin <= 0), query, success_q[part])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    success = success_q >= 0
    return EnsembleResult(x_adv, success, -margin_min, queries, success_q, torch.zeros_like(success), rows_run,
                      time.perf_counter() - start)
