"""Fused Triton kernels for one PGD step; `reference.py` defines what they compute.

The L2 kernels run one program per example: both norms (||grad|| and ||x1 - x0||)
are per-example reductions, and keeping an example inside one program fuses the
normalisation, the step, the projection and the clamp into a single launch with
no intermediate tensors. Each program walks its example in BLOCK-sized chunks
(twice to reduce, once to write), so any image size works. The L-inf kernels are
purely elementwise and use a (example, chunk) grid instead.

`eps` arrives either as a [B] fp32 tensor (`eps`) or as a Python float
(`eps_scalar`, used when `eps` is None); the EPS_PER_EXAMPLE constexpr picks which,
so a scalar eps costs no extra tensor or launch.

The launchers are torch custom ops (`torch.library.triton_op` + `wrap_triton`), so
torch.compile traces through them without a graph break. Under TRITON_INTERPRET=1
(read by triton when this module is imported) they also run on CPU tensors.
"""

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

BLOCK = 1024


@triton.jit
def _load_x1(x_ptr, g_ptr, idx, mask, scale, HAS_STEP: tl.constexpr):
    """x1 = x + scale * grad, with scale = step_size / ||grad|| (or just x)."""
    x1 = tl.load(x_ptr + idx, mask=mask, other=0.0)
    if HAS_STEP:
        x1 += scale * tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    return x1


@triton.jit
def _l2_kernel(
    x_ptr, x0_ptr, g_ptr, eps_ptr, out_ptr, n, step_size, eps_scalar,
    HAS_STEP: tl.constexpr, EPS_PER_EXAMPLE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    base = row.to(tl.int64) * n  # int64: B * n can exceed 2**31 for big batches
    offs = tl.arange(0, BLOCK)

    scale = 0.0
    if HAS_STEP:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n, BLOCK):
            mask = start + offs < n
            g = tl.load(g_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            acc += g * g
        scale = step_size / tl.maximum(tl.sqrt(tl.sum(acc)), 1e-12)

    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        mask = start + offs < n
        idx = base + start + offs
        d = _load_x1(x_ptr, g_ptr, idx, mask, scale, HAS_STEP) - tl.load(x0_ptr + idx, mask=mask, other=0.0)
        acc += d * d
    d_norm = tl.sqrt(tl.sum(acc))

    if EPS_PER_EXAMPLE:
        eps = tl.load(eps_ptr + row)
    else:
        eps = eps_scalar
    # d = 0 stays 0 (also avoids 0/0 when eps = 0); eps = inf gives factor 1.
    factor = tl.where(d_norm > 0, tl.minimum(eps / d_norm, 1.0), 1.0)

    for start in range(0, n, BLOCK):
        mask = start + offs < n
        idx = base + start + offs
        x0 = tl.load(x0_ptr + idx, mask=mask, other=0.0)
        d = _load_x1(x_ptr, g_ptr, idx, mask, scale, HAS_STEP) - x0
        out = tl.minimum(tl.maximum(x0 + d * factor, 0.0), 1.0)
        tl.store(out_ptr + idx, out, mask=mask)


@triton.jit
def _linf_kernel(
    x_ptr, x0_ptr, g_ptr, eps_ptr, out_ptr, n, step_size, eps_scalar,
    HAS_STEP: tl.constexpr, EPS_PER_EXAMPLE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    idx = row.to(tl.int64) * n + cols

    x1 = tl.load(x_ptr + idx, mask=mask, other=0.0)
    if HAS_STEP:
        g = tl.load(g_ptr + idx, mask=mask, other=0.0)
        x1 += step_size * tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
    if EPS_PER_EXAMPLE:
        eps = tl.load(eps_ptr + row)
    else:
        eps = eps_scalar
    x0 = tl.load(x0_ptr + idx, mask=mask, other=0.0)
    out = tl.minimum(tl.maximum(x1, x0 - eps), x0 + eps)
    tl.store(out_ptr + idx, tl.minimum(tl.maximum(out, 0.0), 1.0), mask=mask)


@triton.jit
def _norm_kernel(t_ptr, out_ptr, n, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = row.to(tl.int64) * n
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        v = tl.load(t_ptr + base + start + offs, mask=start + offs < n, other=0.0).to(tl.float32)
        acc += v * v
    tl.store(out_ptr + row, tl.sqrt(tl.sum(acc)))


def _layout(t: torch.Tensor):
    """channels_last for a 4-D tensor stored so, else the plain contiguous format."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _dense(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """t with each example dense in memory, in `like`'s layout when given.

    The kernels see an example as a flat run of memory, so any layout in which examples are
    dense (contiguous, or channels_last: the attacks' layout) works, as long as x, x0 and
    grad share it; converting only when needed saves a copy of every tensor per step.
    """
    layout = _layout(t if like is None else like)
    if t.is_contiguous(memory_format=layout) and (like is None or t.stride() == like.stride()):
        return t
    return t.contiguous(memory_format=layout)


def _launch(kernel, x, x0, grad, step_size, eps, eps_scalar, one_program_per_example):
    x = _dense(x)
    x0 = _dense(x0, like=x)
    out = torch.empty_like(x)
    b, n = x.shape[0], math.prod(x.shape[1:])
    grid = (b,) if one_program_per_example else (b, triton.cdiv(n, BLOCK))
    wrap_triton(kernel)[grid](
        x, x0,
        x if grad is None else _dense(grad, like=x),  # unread when HAS_STEP is False
        x if eps is None else eps.contiguous(),  # unread when EPS_PER_EXAMPLE is False
        out, n, step_size, eps_scalar,
        HAS_STEP=grad is not None, EPS_PER_EXAMPLE=eps is not None, BLOCK=BLOCK,
    )
    return out


@triton_op("advfeat::l2_step", mutates_args=())
def l2_step(
    x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, step_size: float,
    eps: Optional[torch.Tensor], eps_scalar: float,
) -> torch.Tensor:
    return _launch(_l2_kernel, x, x0, grad, step_size, eps, eps_scalar, True)


@triton_op("advfeat::l2_project", mutates_args=())
def l2_project(x: torch.Tensor, x0: torch.Tensor, eps: Optional[torch.Tensor], eps_scalar: float) -> torch.Tensor:
    return _launch(_l2_kernel, x, x0, None, 0.0, eps, eps_scalar, True)


@triton_op("advfeat::linf_step", mutates_args=())
def linf_step(
    x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, step_size: float,
    eps: Optional[torch.Tensor], eps_scalar: float,
) -> torch.Tensor:
    return _launch(_linf_kernel, x, x0, grad, step_size, eps, eps_scalar, False)


@triton_op("advfeat::linf_project", mutates_args=())
def linf_project(x: torch.Tensor, x0: torch.Tensor, eps: Optional[torch.Tensor], eps_scalar: float) -> torch.Tensor:
    return _launch(_linf_kernel, x, x0, None, 0.0, eps, eps_scalar, False)


@triton_op("advfeat::batch_l2_norm", mutates_args=())
def batch_l2_norm(t: torch.Tensor) -> torch.Tensor:
    t = _dense(t)
    out = torch.empty(t.shape[0], device=t.device, dtype=torch.float32)
    wrap_triton(_norm_kernel)[(t.shape[0],)](t, out, math.prod(t.shape[1:]), BLOCK=BLOCK)
    return out
