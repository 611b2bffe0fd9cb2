"""Fused per-step kernels for PGD attacks, and the dispatcher that picks a backend.

    l2_step(x, x0, grad, step_size, eps)   -> x_new   normalised-gradient step + L2 projection
    linf_step(x, x0, grad, step_size, eps) -> x_new   signed-gradient step + L-inf projection
    l2_project(x, x0, eps) / linf_project(x, x0, eps) -> x_new   projection only (random starts)
    batch_l2_norm(t) -> [B] fp32

`eager.py` is the spec (the "reference" backend) (formulas in its docstring). Every call validates its
inputs, then runs the Triton kernels (`triton_steps.py`, one launch per call) when
the tensors are on CUDA and triton is installed, and the reference otherwise.
ADVFEAT_KERNELS=reference|triton forces a backend; Triton on CPU tensors only works
with TRITON_INTERPRET=1 set before the first Triton call (triton reads it when the
kernels are defined, i.e. when `triton_steps` is first imported).
"""

import importlib.util
import os

import torch

from . import eager

__all__ = ["backend_for", "batch_l2_norm", "l2_project", "l2_step", "linf_project", "linf_step"]

Eps = torch.Tensor | float

_BACKENDS = ("reference", "triton")
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_GRAD_DTYPES = (torch.float32, torch.bfloat16)


def backend_for(t: torch.Tensor) -> str:
    """'triton' or 'reference': the backend a kernel call on `t` will use."""
    forced = os.environ.get("ADVFEAT_KERNELS", "")
    if forced:
        if forced not in _BACKENDS:
            raise ValueError(f"ADVFEAT_KERNELS must be one of {_BACKENDS}, got {forced!r}")
        return forced
    return "triton" if t.is_cuda and _HAS_TRITON else "reference"


def _triton():
    # Imported on first use: importing triton is slow, and it must happen after
    # TRITON_INTERPRET is set for the CPU tests.
    from . import triton_steps

    return triton_steps


def _check_pair(x: torch.Tensor, x0: torch.Tensor) -> None:
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension: shape (B, ...)")
    if x.shape != x0.shape:
        raise ValueError(f"x and x0 shapes differ: {tuple(x.shape)} vs {tuple(x0.shape)}")
    if x.dtype != torch.float32 or x0.dtype != torch.float32:
        raise ValueError(f"x and x0 must be float32, got {x.dtype} and {x0.dtype}")
    if x.device != x0.device:
        raise ValueError(f"x and x0 are on different devices: {x.device} vs {x0.device}")


def _check_grad(x: torch.Tensor, grad: torch.Tensor, step_size: float) -> None:
    if grad.shape != x.shape:
        raise ValueError(f"grad shape {tuple(grad.shape)} differs from x shape {tuple(x.shape)}")
    if grad.dtype not in _GRAD_DTYPES:
        raise ValueError(f"grad must be float32 or bfloat16, got {grad.dtype}")
    if grad.device != x.device:
        raise ValueError(f"grad is on {grad.device} but x is on {x.device}")
    if not isinstance(step_size, (int, float)):
        raise ValueError(f"step_size must be a Python number, got {type(step_size).__name__}")


def _split_eps(eps: Eps, x: torch.Tensor) -> tuple[torch.Tensor | None, float]:
    """Validate eps; return (per-example tensor or None, scalar) as the Triton ops take it."""
    if isinstance(eps, torch.Tensor):
        if eps.shape != (x.shape[0],):
            raise ValueError(f"eps tensor must have shape [{x.shape[0]}] (one per example), got {list(eps.shape)}")
        if eps.dtype != torch.float32 or eps.device != x.device:
            raise ValueError(f"eps tensor must be float32 on {x.device}, got {eps.dtype} on {eps.device}")
        # Checking values would force a host sync per step on CUDA (and a graph
        # break under torch.compile), so only CPU eager calls check them.
        if not eps.is_cuda and not torch.compiler.is_compiling() and not bool((eps >= 0).all()):
            raise ValueError(f"eps must be >= 0 (inf allowed), got {eps.tolist()}")
        return eps, 0.0
    if not eps >= 0:  # also rejects NaN
        raise ValueError(f"eps must be >= 0 (inf allowed), got {eps}")
    return None, float(eps)


def l2_step(x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, step_size: float, eps: Eps) -> torch.Tensor:
    """x + step_size * grad/||grad||, projected onto the L2 eps-ball around x0, clamped to [0, 1]."""
    _check_pair(x, x0)
    _check_grad(x, grad, step_size)
    eps_t, eps_s = _split_eps(eps, x)
    if backend_for(x) == "triton":
        return _triton().l2_step(x, x0, grad, float(step_size), eps_t, eps_s)
    return eager.l2_step(x, x0, grad, step_size, eps)


def linf_step(x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, step_size: float, eps: Eps) -> torch.Tensor:
    """x + step_size * sign(grad), clipped to the L-inf eps-box around x0 and to [0, 1]."""
    _check_pair(x, x0)
    _check_grad(x, grad, step_size)
    eps_t, eps_s = _split_eps(eps, x)
    if backend_for(x) == "triton":
        return _triton().linf_step(x, x0, grad, float(step_size), eps_t, eps_s)
    return eager.linf_step(x, x0, grad, step_size, eps)


def l2_project(x: torch.Tensor, x0: torch.Tensor, eps: Eps) -> torch.Tensor:
    """x projected onto the L2 eps-ball around x0, clamped to [0, 1]."""
    _check_pair(x, x0)
    eps_t, eps_s = _split_eps(eps, x)
    if backend_for(x) == "triton":
        return _triton().l2_project(x, x0, eps_t, eps_s)
    return eager.l2_project(x, x0, eps)


def linf_project(x: torch.Tensor, x0: torch.Tensor, eps: Eps) -> torch.Tensor:
    """x clipped to the L-inf eps-box around x0 and to [0, 1]."""
    _check_pair(x, x0)
    eps_t, eps_s = _split_eps(eps, x)
    if backend_for(x) == "triton":
        return _triton().linf_project(x, x0, eps_t, eps_s)
    return eager.linf_project(x, x0, eps)


def batch_l2_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm of `t` (B, ...) as fp32 [B], accumulated in fp32."""
    if t.dim() < 1:
        raise ValueError("t must have a batch dimension: shape (B, ...)")
    if backend_for(t) == "triton":
        return _triton().batch_l2_norm(t)
    return eager.batch_l2_norm(t)
