"""Benchmarks of one PGD step on a (1024, 3, 32, 32) batch.

    python -m pytest bench/bench_kernels.py --benchmark-only -q

Each benchmark group compares implementations of the same step (see `benchmark.group`):
- `<op>-cuda`: fused Triton kernel vs the eager reference vs a torch.compile'd
  reference (skipped without CUDA). A step takes tens of microseconds, so pytest-benchmark's
  per-call time is mostly launch and Python dispatch; extra_info also holds
  triton.testing.do_bench's kernel time, the bytes the step must move (x, x0, grad read, out
  written) per second, and that rate as a fraction of the device's copy rate (a clone of x).
- `<op>-cpu`: the reference vs the unfused eager step as torchattacks writes it
  (PGDL2 / PGD), plus a torch.compile'd reference to show what fusion buys on CPU.
"""

import pytest
import torch

from advfeat.kernels import eager as reference
from advfeat.kernels.cases import KernelCase

SHAPE = (1024, 3, 32, 32)
EPS = {"l2_step": 0.5, "linf_step": 8 / 255}
STEP = {"l2_step": 0.1, "linf_step": 2 / 255}


def _args(op: str, device: str) -> tuple:
    """(x, x0, grad, step, eps) from the kernel case table's input maker (advfeat/kernels/cases.py)."""
    return KernelCase(f"bench/{op}", op, SHAPE, step=STEP[op], eps=EPS[op]).inputs(device)


def _torchattacks_l2_step(x, x0, grad, step_size, eps):
    """PGDL2's step from torchattacks, op for op."""
    b = x.shape[0]
    grad_norms = torch.norm(grad.view(b, -1), p=2, dim=1) + 1e-10
    grad = grad / grad_norms.view(b, 1, 1, 1)
    x = x + step_size * grad
    delta = x - x0
    delta_norms = torch.norm(delta.view(b, -1), p=2, dim=1)
    factor = torch.min(eps / delta_norms, torch.ones_like(delta_norms))
    return torch.clamp(x0 + delta * factor.view(-1, 1, 1, 1), min=0, max=1)


def _torchattacks_linf_step(x, x0, grad, step_size, eps):
    """PGD's step from torchattacks, op for op."""
    x = x + step_size * grad.sign()
    delta = torch.clamp(x - x0, min=-eps, max=eps)
    return torch.clamp(x0 + delta, min=0, max=1)


UNFUSED = {"l2_step": _torchattacks_l2_step, "linf_step": _torchattacks_linf_step}


def _run(benchmark, op, impl_name, fn, device):
    args = _args(op, device)
    benchmark.group = f"{op}-{device}"
    benchmark.extra_info.update(impl=impl_name, shape=list(SHAPE), device=device)
    fn(*args)  # warm-up (compilation, autotuning caches)
    if device == "cuda":
        torch.cuda.synchronize()
        benchmark.extra_info.update(kernel_rates(fn, args))

        def timed():
            fn(*args)
            torch.cuda.synchronize()  # time the kernels, not the launch

        benchmark(timed)
    else:
        benchmark(fn, *args)


def kernel_rates(fn, args) -> dict:
    """do_bench's median kernel time, and GB/s against the device's copy rate."""
    from triton.testing import do_bench

    x, x0, grad = args[:3]
    moved = x.numel() * (x.element_size() * 3 + grad.element_size())  # read x, x0, grad; write out
    ms = do_bench(lambda: fn(*args), return_mode="median")
    copy_ms = do_bench(lambda: x.clone(), return_mode="median")  # reads and writes x once
    gb_per_s = moved / ms / 1e6
    copy_gb_per_s = 2 * x.numel() * x.element_size() / copy_ms / 1e6
    return {"do_bench_ms": ms, "gb_per_s": gb_per_s, "copy_gb_per_s": copy_gb_per_s,
            "fraction_of_copy_rate": gb_per_s / copy_gb_per_s}


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("op", ["l2_step", "linf_step"])
def test_cpu_reference(benchmark, op):
    _run(benchmark, op, "reference", getattr(reference, op), "cpu")


@pytest.mark.parametrize("op", ["l2_step", "linf_step"])
def test_cpu_torchattacks_unfused(benchmark, op):
    _run(benchmark, op, "torchattacks-unfused", UNFUSED[op], "cpu")


@pytest.mark.parametrize("op", ["l2_step", "linf_step"])
def test_cpu_compiled_reference(benchmark, op):
    _run(benchmark, op, "reference+torch.compile", torch.compile(getattr(reference, op)), "cpu")


@cuda_only
@pytest.mark.parametrize("op", ["l2_step", "linf_step"])
def test_cuda_triton(benchmark, op):
    from advfeat.kernels import triton_steps

    kernel = getattr(triton_steps, op)
    _run(benchmark, op, "triton", lambda x, x0, g, s, e: kernel(x, x0, g, s, None, e), "cuda")


@cuda_only
@pytest.mark.parametrize("op", ["l2_step", "linf_step"])
def test_cuda_reference(benchmark, op):
    _run(benchmark, op, "reference", getattr(reference, op), "cuda")


@cuda_only
@pytest.mark.parametrize("op", ["l2_step", "linf_step"])
def test_cuda_compiled_reference(benchmark, op):
    _run(benchmark, op, "reference+torch.compile", torch.compile(getattr(reference, op)), "cuda")
