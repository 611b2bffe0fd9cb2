"""Synthesis throughput per kind: a plain eager loop written the way the robustness library's
Attacker runs it, against advfeat's `synthesize_shard`, same model, same images, same steps.

    python -m pytest bench/bench_synthesis.py --benchmark-only -q

Each group `synth-<kind>-<device> <arch> b<batch> x<steps>` holds:
- baseline: fp32 eager loop, weights left trainable, autograd.grad w.r.t. the input, one
  torch op per normalize / step / project / clamp. Inversion (r, nr) minimizes the relative
  feature distance with eps unbounded; targeted (rand, det) minimizes cross-entropy to the
  target inside the eps 0.5 ball;
- advfeat: `advfeat.synthesis.synthesize_shard`, i.e. what `advfeat synth` runs per shard,
  including its statistics passes and the storage rounding (charged to advfeat).
extra_info: image_steps_per_s (images x steps / median seconds) and ratio_vs_baseline.
r and nr (and rand and det) are the same computation with different models; one kind of
each pair is enough to time, so the cases are `nr` and `det`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advfeat.data.arrays import Split
from advfeat.settings import SynthSettings
from advfeat.synthesis import sample_plan, synthesize_shard
from bench_attacks import model_for

CPU_CASES, CPU_STEPS, CPU_ROUNDS = [("tiny", 128)], 10, 3
CUDA_CASES, CUDA_STEPS, CUDA_ROUNDS = [("resnet50", 1000)], 20, 3
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
_baseline_rate: dict[str, float] = {}


def baseline_synthesis(model, x0, target, steps: int, step_size: float, eps: float, inversion: bool):
    """The robustness library's targeted L2 loop (use_best=False), op for op."""
    model.eval()
    b = len(x0)
    x = x0.clone().detach()
    for _ in range(steps):
        x.requires_grad_(True)
        if inversion:
            _, rep = model(x, return_features=True)
            loss = ((rep - target).norm(dim=1) / target.norm(dim=1)).mean()
        else:
            loss = F.cross_entropy(model(x), target)
        (grad,) = torch.autograd.grad(-loss, x)  # targeted: descend the loss
        grad = grad / (grad.view(b, -1).norm(dim=1) + 1e-10).view(b, 1, 1, 1)
        x = x.detach() + step_size * grad
        delta = x - x0
        if math.isfinite(eps):
            delta = delta.renorm(p=2, dim=0, maxnorm=eps)
        x = torch.clamp(x0 + delta, 0, 1).detach()
    return x


def split_of(size: int) -> Split:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (size, 3, 32, 32), dtype=np.uint8)
    return Split(images, np.arange(size, dtype=np.int64) % 10, np.arange(size, dtype=np.int64))


def run_synthesis(benchmark, measure, impl: str, kind: str, arch: str, batch: int, steps: int, rounds: int,
                  device: torch.device):
    group = f"synth-{kind}-{device.type} {arch} b{batch} x{steps}"
    benchmark.group = group
    model = model_for(impl, arch, device)
    train = split_of(batch)
    settings = SynthSettings.of(kind, steps=steps, batch_size=batch, shard_size=batch)
    plan = sample_plan(settings, train.labels, model.num_classes)
    if impl == "baseline":
        x = torch.from_numpy(train.images).to(device).float().div(255)
        if settings.inversion:
            with torch.no_grad():
                target = model(x, return_features=True)[1]
            x0 = x[torch.from_numpy(plan["start_index"]).to(device)]
        else:
            target, x0 = torch.from_numpy(plan["target"]).to(device), x
        fn = lambda: baseline_synthesis(model, x0, target, steps, settings.step_size, settings.eps,  # noqa: E731
                                        settings.inversion)
    else:
        fn = lambda: synthesize_shard(model, train, plan, range(batch), settings, device)  # noqa: E731
    rate = measure(fn, device, work=batch * steps, rounds=rounds)
    info = dict(impl=impl, kind=kind, arch=arch, batch=batch, steps=steps, image_steps_per_s=rate)
    if impl == "baseline":
        _baseline_rate[group] = rate
    elif group in _baseline_rate:
        info["ratio_vs_baseline"] = rate / _baseline_rate[group]
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("kind,arch,batch,impl", [(k, a, b, i) for k in ("nr", "det") for a, b in CPU_CASES
                                                  for i in ("baseline", "advfeat")])
def test_synthesis_cpu(benchmark, measure, kind, arch, batch, impl):
    run_synthesis(benchmark, measure, impl, kind, arch, batch, CPU_STEPS, CPU_ROUNDS, torch.device("cpu"))


@cuda_only
@pytest.mark.parametrize("kind,arch,batch,impl", [(k, a, b, i) for k in ("nr", "det") for a, b in CUDA_CASES
                                                  for i in ("baseline", "advfeat")])
def test_synthesis_cuda(benchmark, measure, kind, arch, batch, impl):
    run_synthesis(benchmark, measure, impl, kind, arch, batch, CUDA_STEPS, CUDA_ROUNDS, torch.device("cuda"))
