"""The kernel cases: one table of inputs on which the fused kernels must equal the eager spec.

    EDGE_CASES                 named corner cases (zero gradients, eps 0 and inf, per-example
                               eps, big steps that hit 0 and 1, odd shapes, several BLOCKs)
    grid(batches, image)       every op x fp32/bf16 gradient x contiguous/channels_last x
                               scalar/per-example eps, at each batch size
    case.inputs(device)        the case's arguments, the same on every device
    max_error(got, want)       max |got - want| / max(1, max |want|)
    TOLERANCE                  the largest max_error a kernel may show (1e-5)
    compare(cases, device)     max_error of the dispatcher (advfeat.kernels) against eager.py

Used by tests/test_kernels.py (Triton's interpreter on the CPU), tests/test_cuda.py (compiled
Triton on a GPU) and `advfeat doctor` (its kernels check), so all three judge the same inputs
by the same tolerance. Outputs are pixels in [0, 1] or norms, so an error relative to
max(1, |want|) is absolute for pixels and relative for large norms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

INF = math.inf
TOLERANCE = 1e-5
# Per-example eps drawn in [0, 0.5) with eps[0] = 0 and, with 3 or more examples, eps[2] = inf.
PER_EXAMPLE = "per-example"


@dataclass(frozen=True)
class KernelCase:
    """One call of a kernel op. `eps` is a float, one float per example, or PER_EXAMPLE;
    `zero_grad_rows` get an all-zero gradient (a zero step)."""

    name: str
    op: str
    shape: tuple[int, ...]
    step: float = 0.1
    eps: float | tuple[float, ...] | str = 0.5
    grad_dtype: torch.dtype = torch.float32
    channels_last: bool = False
    zero_grad_rows: tuple[int, ...] = ()
    seed: int = 0

    def inputs(self, device: torch.device | str = "cpu") -> tuple:
        """The op's arguments, drawn on the CPU from `seed` (so every device sees the same numbers)
        and moved to `device`: x0 with exact 0s and 1s (where the clamps bite), x = x0 + noise
        clamped to [0, 1], a Gaussian gradient."""
        gen = torch.Generator().manual_seed(self.seed)
        x0 = torch.rand(self.shape, generator=gen)
        x0.view(-1)[::5] = 0.0
        x0.view(-1)[1::5] = 1.0
        x = (x0 + 0.05 * torch.randn(self.shape, generator=gen)).clamp(0, 1)
        grad = torch.randn(self.shape, generator=gen)
        if self.zero_grad_rows:
            grad[list(self.zero_grad_rows)] = 0.0
        eps = _eps(self.eps, self.shape[0], gen)
        if self.channels_last:
            x0, x, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x0, x, grad))
        x, x0, grad = x.to(device), x0.to(device), grad.to(self.grad_dtype).to(device)
        eps = eps.to(device) if isinstance(eps, torch.Tensor) else eps
        if self.op == "batch_l2_norm":
            return (grad,)
        if self.op.endswith("_project"):
            return (x, x0, eps)
        return (x, x0, grad, self.step, eps)


def _eps(eps, batch: int, gen: torch.Generator) -> float | torch.Tensor:
    if eps == PER_EXAMPLE:
        drawn = torch.rand(batch, generator=gen) * 0.5
        drawn[0] = 0.0
        if batch >= 3:
            drawn[2] = INF
        return drawn
    return torch.tensor(eps, dtype=torch.float32) if isinstance(eps, tuple) else eps


def _case(name: str, op: str, shape: tuple[int, ...], **options) -> KernelCase:
    return KernelCase(f"{op}/{name}", op, shape, **options)


BF16 = torch.bfloat16
EDGE_CASES = (
    _case("cifar", "l2_step", (4, 3, 32, 32)),
    _case("bf16-grad", "l2_step", (4, 3, 32, 32), grad_dtype=BF16),
    _case("zero-grad-rows", "l2_step", (3, 3, 8, 8), zero_grad_rows=(0, 2)),
    _case("inside-ball", "l2_step", (3, 3, 8, 8), step=0.01, eps=50.0),
    _case("big-step-hits-0-and-1", "l2_step", (3, 3, 8, 8), step=20.0, eps=INF),
    _case("batch-1", "l2_step", (1, 3, 32, 32)),
    _case("batch-7", "l2_step", (7, 3, 8, 8)),
    _case("odd-image", "l2_step", (5, 1, 7, 9)),
    _case("multi-block-ragged", "l2_step", (2, 5000), eps=2.0),
    _case("eps-inf", "l2_step", (3, 3, 8, 8), eps=INF),
    _case("eps-0", "l2_step", (3, 3, 8, 8), eps=0.0),
    _case("eps-per-example", "l2_step", (5, 3, 8, 8), eps=(0.0, 0.25, INF, 1.0, 100.0)),
    _case("negative-step-bf16", "l2_step", (3, 1, 7, 9), step=-0.5, grad_dtype=BF16, eps=(0.5, INF, 0.1)),
    _case("random-start", "l2_project", (5, 3, 8, 8), eps=(0.0, 0.25, INF, 1.0, 100.0)),
    _case("scalar-eps", "l2_project", (3, 1, 7, 9), eps=0.3),
    _case("cifar", "linf_step", (4, 3, 32, 32), step=2 / 255, eps=8 / 255),
    _case("bf16-grad", "linf_step", (3, 3, 8, 8), step=2 / 255, eps=8 / 255, grad_dtype=BF16),
    _case("zero-grad-rows", "linf_step", (3, 3, 8, 8), zero_grad_rows=(1,)),
    _case("batch-1", "linf_step", (1, 5, 7, 9)),
    _case("batch-7", "linf_step", (7, 2500), step=0.5),
    _case("eps-inf-negative-step", "linf_step", (3, 3, 8, 8), step=-0.3, eps=INF),
    _case("eps-per-example", "linf_step", (5, 1, 7, 9), eps=(0.0, 0.01, INF, 0.5, 8 / 255)),
    _case("random-start", "linf_project", (3, 3, 8, 8), eps=(0.0, 0.03, INF)),
    _case("fp32", "batch_l2_norm", (3, 3, 32, 32)),
    _case("bf16-odd", "batch_l2_norm", (5, 1, 7, 9), grad_dtype=BF16),
)


def grid(batches: tuple[int, ...], image: tuple[int, ...] = (3, 32, 32)) -> list[KernelCase]:
    """At each batch size, for fp32 and bf16 gradients, contiguous and channels_last layouts,
    scalar (0.3) and per-example eps: an L2 ascent and descent step, an Linf step, both
    projections (fp32 only: they take no gradient) and the gradient's norm. With 3 or more
    examples, example 1 has a zero gradient."""
    cases = []
    for batch in batches:
        shape = (batch, *image)
        zero = (1,) if batch >= 3 else ()
        for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            for layout in ("contiguous", "channels_last"):
                tag = f"b{'x'.join(map(str, shape))}/{dtype_name}/{layout}"
                base = KernelCase("", "", shape, grad_dtype=dtype, channels_last=layout == "channels_last",
                                  zero_grad_rows=zero, seed=len(cases))
                cases += _grid_calls(base, tag, projections=dtype_name == "fp32")
    return cases


def _grid_calls(base: KernelCase, tag: str, projections: bool) -> list[KernelCase]:
    calls = [replace(base, name=f"batch_l2_norm/{tag}", op="batch_l2_norm")]
    for eps_name, eps in (("eps-scalar", 0.3), ("eps-per-example", PER_EXAMPLE)):
        steps = [("l2_step", "l2_step", 0.1), ("linf_step", "linf_step", 2 / 255), ("l2_step-descent", "l2_step", -0.5)]
        steps += [(op, op, 0.0) for op in ("l2_project", "linf_project")] if projections else []
        calls += [replace(base, name=f"{label}/{tag}/{eps_name}", op=op, step=step, eps=eps)
                  for label, op, step in steps]
    return calls


def max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max(1, max |want|), in fp32 (0 for empty tensors)."""
    if want.numel() == 0:
        return 0.0
    got, want = got.float(), want.float()
    return float((got - want).abs().max() / max(1.0, float(want.abs().max())))


def compare(cases, device: torch.device | str = "cpu") -> dict[str, float]:
    """{case name: max_error} of each case through the dispatcher (advfeat.kernels, whichever
    backend it picks) against the eager spec (advfeat.kernels.eager), on `device`."""
    import advfeat.kernels as dispatcher
    from advfeat.kernels import eager

    errors = {}
    for case in cases:
        args = case.inputs(device)
        errors[case.name] = max_error(getattr(dispatcher, case.op)(*args), getattr(eager, case.op)(*args))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return errors
