"""FAB-T and AutoAttack's standard version: advfeat against torchattacks, same model, same
images, same iterations, side by side in one run.

    python -m pytest bench/bench_fab.py --benchmark-only -q

Group `fab-t-<norm>-<device> <arch> b<batch> x<n_iter>` (9 target classes, one run each):
- baseline: `torchattacks.FAB(model, norm, eps, steps=n_iter, n_restarts=1, multi_targeted=True)`
  on the model as torchattacks users hold it (fp32, NCHW, eager, weights trainable);
- advfeat: `fab_targeted(..., retire=False)`: the same work, every example runs every
  iteration toward every target class (frozen view, channels_last; bf16 autocast on CUDA);
- advfeat-retire: `fab_targeted` as AutoAttack runs it: an example stops at its first point
  within eps, and later target classes run only on the unbroken.
Group `autoattack-standard-<norm>-<device> <arch> b<batch>`: the whole standard version
(APGD-CE, APGD-T, FAB-T, Square 5,000 queries, each on what the earlier left):
- baseline: `torchattacks.AutoAttack(model, norm, eps, version="standard")` (its defaults: 10
  iterations for APGD, APGD-T and FAB-T, 9 target classes, Square 5,000 queries);
- advfeat: `autoattack(..., version="standard", n_iter=10)`, the same budget.
The labels are the model's own clean predictions (every image attacked by both). extra_info:
images_per_s (images / median seconds), ratio_vs_baseline (over the baseline's in the same
group), warmup_seconds (the first call), robust (the fraction left unbroken: equal budgets
should give about equal values).
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import batch_of, model_for

from advfeat.attacks.autoattack import autoattack
from advfeat.attacks.fab import fab_targeted
from advfeat.interop import ContiguousGradient

EPS = {"l2": 0.25, "linf": 2 / 255}
TA_NORM = {"l2": "L2", "linf": "Linf"}
CPU_ARCH, CPU_BATCH, CPU_ITERS, CPU_ROUNDS = "tiny", 32, 10, 2
_baseline_rate: dict[str, float] = {}


def robust_of(model, adv, x, y, norm: str, eps: float) -> torch.Tensor:
    with torch.no_grad():
        ok = model(adv).argmax(1) == y
    d = (adv - x).flatten(1)
    size = d.norm(dim=1) if norm == "l2" else d.abs().amax(1)
    return ok | (size > eps * (1 + 1e-4))


def attack(group: str, impl: str, model, x, y, norm: str, n_iter: int):
    import torchattacks

    eps = EPS[norm]
    if group == "fab-t":
        if impl == "baseline":
            atk = torchattacks.FAB(ContiguousGradient(model).eval(), norm=TA_NORM[norm], eps=eps, steps=n_iter, n_restarts=1,
                                   multi_targeted=True, n_classes=10)
            return lambda: robust_of(model, atk(x, y), x, y, norm, eps)
        return lambda: ~fab_targeted(model, x, y, norm=norm, eps=eps, n_iter=n_iter,
                                     retire=impl == "advfeat-retire").success
    if impl == "baseline":
        atk = torchattacks.AutoAttack(ContiguousGradient(model).eval(), norm=TA_NORM[norm], eps=eps, version="standard",
                                      n_classes=10, seed=0)
        return lambda: robust_of(model, atk(x, y), x, y, norm, eps)
    return lambda: autoattack(model, x, y, norm=norm, eps=eps, n_iter=n_iter, version="standard",
                              generator=torch.Generator().manual_seed(0))["robust"]


def run_case(benchmark, measure, group_kind: str, impl: str, norm: str, device: torch.device):
    pytest.importorskip("torchattacks")
    group = f"{group_kind}-{norm}-{device.type} {CPU_ARCH} b{CPU_BATCH} x{CPU_ITERS}"
    benchmark.group = group
    model = model_for(impl, CPU_ARCH, device)
    x, y = batch_of(model, CPU_BATCH, device)
    fn = attack(group_kind, impl, model, x, y, norm, CPU_ITERS)
    start = time.perf_counter()
    robust = fn()
    warmup_seconds = time.perf_counter() - start
    rate = measure(fn, device, work=CPU_BATCH, rounds=CPU_ROUNDS, warmup_rounds=0)
    info = dict(impl=impl, norm=norm, arch=CPU_ARCH, batch=CPU_BATCH, n_iter=CPU_ITERS, images_per_s=rate,
                warmup_seconds=warmup_seconds, robust=float(robust.float().mean()))
    if impl == "baseline":
        _baseline_rate[group] = rate
    elif group in _baseline_rate:
        info["ratio_vs_baseline"] = rate / _baseline_rate[group]
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("norm,impl", [(n, i) for n in ("l2", "linf")
                                       for i in ("baseline", "advfeat", "advfeat-retire")])
def test_fab_t_cpu(benchmark, measure, norm, impl):
    run_case(benchmark, measure, "fab-t", impl, norm, torch.device("cpu"))


@pytest.mark.parametrize("norm,impl", [("linf", "baseline"), ("linf", "advfeat")])
def test_autoattack_standard_cpu(benchmark, measure, norm, impl):
    run_case(benchmark, measure, "autoattack-standard", impl, norm, torch.device("cpu"))
