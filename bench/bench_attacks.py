"""L2 PGD throughput: a plain eager fp32 PGD loop against advfeat's `pgd`, same model,
same batch, same number of steps, side by side in one run.

    python -m pytest bench/bench_attacks.py --benchmark-only -q

Each group `pgd-l2-<device> <arch> b<batch> x<steps>` holds:
- baseline: the loop of torchattacks' PGDL2 / the robustness library (weights left
  trainable, mean cross-entropy, autograd.grad w.r.t. the input, one torch op per
  normalize / step / project / clamp; fp32, NCHW, eager);
- baseline-channels_last (CPU): the same loop with the model and images in channels_last,
  to show what the layout alone buys on a CPU;
- advfeat: `pgd(..., compile=False)`, eager (frozen weights, batch norm folded, channels_last;
  on CUDA bf16 autocast and the fused Triton step);
- advfeat-compile (CUDA only): the same with compile=True.
extra_info: image_steps_per_s (images x steps / median seconds), ratio_vs_baseline
(advfeat / baseline), warmup_seconds (the first call: compilation for advfeat-compile, cuDNN's
algorithm search for the others), FLOPs of one attack step, and bf16_peak_fraction where the
peak is known.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from advfeat.attacks import frozen, make_threat, pgd
from advfeat.models import create_model
from advfeat.runtime import autocast, bf16_peak, prepare_input, prepare_model

EPS, STEP_SIZE = 0.5, 0.1
CPU_CASES, CPU_STEPS, CPU_ROUNDS = [("tiny", 128), ("small", 128)], 10, 3
CUDA_CASES, CUDA_STEPS, CUDA_ROUNDS = [(a, b) for a in ("resnet18", "resnet50") for b in (512, 1024)], 20, 5

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
_baseline_rate: dict[str, float] = {}  # group -> baseline image-steps/s, read by the cases after it


def baseline_pgd_l2(model, x, y, steps: int, eps: float, step_size: float) -> torch.Tensor:
    """PGDL2 of torchattacks without random start, op for op (reshape where torchattacks has view,
    which a channels_last gradient refuses)."""
    model.eval()
    b = len(x)
    x_adv = x.clone().detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        grad = grad / (torch.norm(grad.reshape(b, -1), p=2, dim=1) + 1e-10).view(b, 1, 1, 1)
        x_adv = x_adv.detach() + step_size * grad
        delta = x_adv - x
        delta_norms = torch.norm(delta.reshape(b, -1), p=2, dim=1)
        factor = torch.min(eps / delta_norms, torch.ones_like(delta_norms))
        x_adv = torch.clamp(x + delta * factor.view(b, 1, 1, 1), min=0, max=1).detach()
    return x_adv


def model_for(impl: str, arch: str, device: torch.device) -> torch.nn.Module:
    """The same weights for every impl (seeded), laid out as that impl would have them:
    the baseline gets a plain .to(device), advfeat what its own scripts prepare."""
    torch.manual_seed(0)
    model = create_model(arch)
    if impl == "baseline-channels_last":
        return model.to(device).to(memory_format=torch.channels_last)
    return model.to(device) if impl == "baseline" else prepare_model(model, device)


def batch_of(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(size, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (size,), generator=gen)
    return x.to(device), y.to(device)


def attack(impl: str, model, x, y, steps: int):
    if impl == "baseline":
        return lambda: baseline_pgd_l2(model, x, y, steps, EPS, STEP_SIZE)
    if impl == "baseline-channels_last":
        x_cl = x.contiguous(memory_format=torch.channels_last)
        return lambda: baseline_pgd_l2(model, x_cl, y, steps, EPS, STEP_SIZE)
    threat = make_threat("l2", EPS, "none")
    return lambda: pgd(model, x, y, threat=threat, steps=steps, step_size=STEP_SIZE,
                       compile=impl == "advfeat-compile")  # "advfeat" is eager, on CUDA too


def attack_step_flops(model, x, y, device: torch.device) -> float:
    """FLOPs per image of one attack step (forward + input-gradient backward) on the real model.

    Written with .backward(), not autograd.grad: FlopCounterMode's module tracker refuses
    autograd.grad on a leaf. With the weights frozen both run the same kernels (no weight
    gradients), and FLOPs do not depend on the dtype or memory layout.
    """
    x = x.detach().clone().requires_grad_(True)
    with frozen(model), FlopCounterMode(display=False) as counter:
        with autocast(device):
            logits = model(prepare_input(x, device))
        F.cross_entropy(logits.float(), y, reduction="none").sum().backward()
    return counter.get_total_flops() / len(x)


def run_attack(benchmark, measure, impl: str, arch: str, batch: int, steps: int, rounds: int, device):
    group = f"pgd-l2-{device.type} {arch} b{batch} x{steps}"
    benchmark.group = group
    if impl == "advfeat-compile":
        # Every case compiles afresh and statically: no shape-polymorphic graph left over from
        # another batch size, and no hitting dynamo's recompile limit across cases.
        torch.compiler.reset()
    model = model_for(impl, arch, device)
    x, y = batch_of(batch, device)
    # advfeat evaluates the final iterate too (a forward pass, to keep the best one); both count
    # images x steps, so that extra pass is charged to advfeat. The first call, timed on its own,
    # compiles (advfeat-compile) and lets cuDNN pick its algorithms.
    fn = attack(impl, model, x, y, steps)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warmup_seconds = time.perf_counter() - start
    rate = measure(fn, device, work=batch * steps, rounds=rounds, warmup_rounds=0)
    flops = attack_step_flops(model, x[:8], y[:8], device)
    info = dict(impl=impl, arch=arch, batch=batch, steps=steps, image_steps_per_s=rate, warmup_seconds=warmup_seconds,
                gflop_per_image_step=flops / 1e9, achieved_tflops=rate * flops / 1e12)
    if impl == "baseline":
        _baseline_rate[group] = rate
    elif group in _baseline_rate:  # absent when -k left the baseline out
        info["ratio_vs_baseline"] = rate / _baseline_rate[group]
    if peak := bf16_peak(device):
        info["bf16_peak_fraction"] = rate * flops / peak
    benchmark.extra_info.update(info)


# The impl varies fastest, baseline first, so each group's ratio finds its baseline.
@pytest.mark.parametrize("arch,batch,impl", [(a, b, i) for a, b in CPU_CASES
                                             for i in ("baseline", "baseline-channels_last", "advfeat")])
def test_pgd_l2_cpu(benchmark, measure, arch, batch, impl):
    run_attack(benchmark, measure, impl, arch, batch, CPU_STEPS, CPU_ROUNDS, torch.device("cpu"))


@cuda_only
@pytest.mark.parametrize("arch,batch,impl", [(a, b, i) for a, b in CUDA_CASES
                                             for i in ("baseline", "advfeat", "advfeat-compile")])
def test_pgd_l2_cuda(benchmark, measure, arch, batch, impl):
    run_attack(benchmark, measure, impl, arch, batch, CUDA_STEPS, CUDA_ROUNDS, torch.device("cuda"))
