"""APGD throughput: torchattacks' APGD against advfeat's `apgd`, same model, same images, same
number of iterations, side by side in one run.

    python -m pytest bench/bench_apgd.py --benchmark-only -q

Each group `apgd-<norm>-<device> <arch> b<batch> x<n_iter>` holds:
- baseline: `torchattacks.APGD(model, norm, eps, steps=n_iter, n_restarts=1, loss="ce")` on the
  model as torchattacks users hold it (fp32, NCHW, eager, weights left trainable);
- advfeat: `apgd(..., retire=False, compile=False)`: the same work, every example runs all
  n_iter iterations (frozen weights, batch norm folded, channels_last; on CUDA bf16 autocast);
- advfeat-retire: `apgd` with its defaults (an example stops at its first success): the same
  results for less work, so its rate is images x n_iter per second of the time to that result;
- advfeat-compile (CUDA only): advfeat with compile=True.
The labels are the model's own clean predictions, so every image is correctly classified and
both attack all of them (torchattacks attacks only the correctly classified ones).
extra_info: image_steps_per_s (images x n_iter / median seconds), ratio_vs_baseline (over the
baseline's in the same group), warmup_seconds (the first call), robust (the fraction the attack
left unbroken: equal work should give about equal values).
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import batch_of, model_for

from advfeat.attacks.apgd import apgd

EPS = {"l2": 0.5, "linf": 8 / 255}
CPU_CASES, CPU_ITERS, CPU_ROUNDS = [("tiny", 128), ("small", 128)], 20, 3
CUDA_CASES, CUDA_ITERS, CUDA_ROUNDS = [(a, b) for a in ("resnet18", "resnet50") for b in (512,)], 20, 5

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
_baseline_rate: dict[str, float] = {}  # group -> baseline image-steps/s, read by the cases after it


def attack(impl: str, model, x, y, norm: str, n_iter: int):
    """A call running the attack once; returns the robust mask."""
    eps = EPS[norm]
    if impl == "baseline":
        import torchattacks

        atk = torchattacks.APGD(model, norm={"l2": "L2", "linf": "Linf"}[norm], eps=eps, steps=n_iter, n_restarts=1,
                                loss="ce")

        def run():
            adv = atk(x, y)
            with torch.no_grad():
                return model(adv).argmax(1) == y
        return run
    options = dict(norm=norm, eps=eps, n_iter=n_iter, retire=impl == "advfeat-retire",
                   compile=impl == "advfeat-compile", generator=torch.Generator(device=x.device).manual_seed(0))
    return lambda: ~apgd(model, x, y, **options).success


def run_attack(benchmark, measure, impl: str, norm: str, arch: str, batch: int, n_iter: int, rounds: int, device):
    pytest.importorskip("torchattacks")
    group = f"apgd-{norm}-{device.type} {arch} b{batch} x{n_iter}"
    benchmark.group = group
    if impl == "advfeat-compile":
        torch.compiler.reset()
    model = model_for(impl, arch, device)
    x, y = batch_of(model, batch, device)
    fn = attack(impl, model, x, y, norm, n_iter)
    start = time.perf_counter()
    robust = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warmup_seconds = time.perf_counter() - start
    rate = measure(fn, device, work=batch * n_iter, rounds=rounds, warmup_rounds=0)
    info = dict(impl=impl, norm=norm, arch=arch, batch=batch, n_iter=n_iter, image_steps_per_s=rate,
                warmup_seconds=warmup_seconds, robust=float(robust.float().mean()))
    if impl == "baseline":
        _baseline_rate[group] = rate
    elif group in _baseline_rate:  # absent when -k left the baseline out
        info["ratio_vs_baseline"] = rate / _baseline_rate[group]
    benchmark.extra_info.update(info)


# The impl varies fastest, baseline first, so each group's ratio finds its baseline.
@pytest.mark.parametrize("norm,arch,batch,impl", [(n, a, b, i) for n in ("l2", "linf") for a, b in CPU_CASES
                                                  for i in ("baseline", "advfeat", "advfeat-retire")])
def test_apgd_cpu(benchmark, measure, norm, arch, batch, impl):
    run_attack(benchmark, measure, impl, norm, arch, batch, CPU_ITERS, CPU_ROUNDS, torch.device("cpu"))


@cuda_only
@pytest.mark.parametrize("norm,arch,batch,impl", [(n, a, b, i) for n in ("l2", "linf") for a, b in CUDA_CASES
                                                  for i in ("baseline", "advfeat", "advfeat-retire",
                                                            "advfeat-compile")])
def test_apgd_cuda(benchmark, measure, norm, arch, batch, impl):
    run_attack(benchmark, measure, impl, norm, arch, batch, CUDA_ITERS, CUDA_ROUNDS, torch.device("cuda"))
