"""The numerics checks: PGD compiled vs eager (compile), and bf16 autocast vs fp32 (bf16), on
the tiny net trained on the data. Both compare robust accuracy, the number a user reads."""

from __future__ import annotations

import math
import time

import torch

from advfeat.doctor.context import Context
from advfeat.doctor.registry import CheckFailed, Skip, check
from advfeat.runtime import autocast, fp32_only, prepare_input


def attack_accuracy(model, x, y, eps: float, steps: int, compile: bool, batch_size: int) -> dict:
    """Robust accuracy under L2 PGD (no random start, retire on success, as evaluation runs it):
    correct on the clean image and not broken by the attack, over all examples."""
    from advfeat.attacks import make_threat, pgd
    from advfeat.evaluation import predict_tensor

    correct = predict_tensor(model, x, batch_size) == y
    index = torch.nonzero(correct).flatten()
    start = time.perf_counter()
    result = pgd(model, x[index], y[index], threat=make_threat("l2", eps, "none"), steps=steps,
                 step_size=2.5 * eps / steps, retire=True, batch_size=batch_size, compile=compile)
    seconds = time.perf_counter() - start
    broken = torch.zeros_like(correct)
    broken[index] = result.success
    return {"clean_accuracy": float(correct.float().mean()),
            "robust_accuracy": float((correct & ~broken).float().mean()),
            "seconds": round(seconds, 3), "image_steps": result.image_steps,
            "image_steps_per_s": round(result.image_steps_per_s, 1),
            "max_l2": float((result.x_adv - x[index]).flatten(1).norm(dim=1).max()) if len(index) else 0.0}


def _compiled_twice(model, x, y, eps: float, steps: int, batch: int) -> dict:
    """Two compiled attacks from a clean compiler state: the first compiles, the second must not."""
    from torch._dynamo.utils import counters

    torch.compiler.reset()
    counters.clear()
    first = attack_accuracy(model, x, y, eps, steps, True, batch)
    graphs = counters["stats"]["unique_graphs"]
    cache_hits = counters["inductor"]["fxgraph_cache_hit"]  # compiled code found on disk: a short warm-up
    compiled = attack_accuracy(model, x, y, eps, steps, True, batch)
    return {"first": first, "compiled": compiled, "graphs": graphs, "cache_hits": cache_hits,
            "recompiled": counters["stats"]["unique_graphs"] - graphs}


@check("compile", cpu_s=75, cuda_s=150)
def check_compile(ctx: Context):
    """Fails where compiled and eager robust accuracy differ by more than 1 point, or where the
    second compiled call compiles again."""
    if not ctx.cuda and ctx.quick:
        raise Skip("skipped (quick): torch.compile (inductor) of tiny takes ~25 s on a CPU; run without --quick")
    tiny = ctx.tiny()
    model, x, y = tiny["model"], tiny["x"], tiny["y"]
    eps, steps = 0.25, (20 if ctx.cuda else 10)
    batch = 512 if ctx.cuda else 256
    eager = attack_accuracy(model, x, y, eps, steps, False, batch)
    run = _compiled_twice(model, x, y, eps, steps, batch)
    first, compiled, graphs, cache_hits = run["first"], run["compiled"], run["graphs"], run["cache_hits"]
    diff = abs(compiled["robust_accuracy"] - eager["robust_accuracy"])
    warmup = max(0.0, first["seconds"] - compiled["seconds"])
    numbers = {"eps": eps, "steps": steps, "n": len(y), **ctx.tiny_numbers(), "eager": eager, "compiled": compiled,
               "compile_warmup_seconds": round(warmup, 2), "first_compiled_call_seconds": first["seconds"],
               "graphs": graphs, "graphs_on_second_call": run["recompiled"], "inductor_disk_cache_hits": cache_hits,
               "speedup": round(eager["seconds"] / max(compiled["seconds"], 1e-9), 2),
               "backend": "inductor (CPU)" if not ctx.cuda else "inductor (CUDA)"}
    detail = (f"L2 PGD eps {eps}, {steps} steps, {len(y)} test images, tiny ({tiny['test_accuracy']:.2f} clean): "
              f"robust accuracy eager {eager['robust_accuracy']:.4f} vs compiled {compiled['robust_accuracy']:.4f} "
              f"(abs diff {diff * 100:.2f} points, limit 1); first compiled call {first['seconds']:.1f}s "
              f"(compile warm-up ~{warmup:.1f}s, {graphs} graph(s)"
              f"{f', {cache_hits} from inductor disk cache' if cache_hits else ''}), "
              f"then {compiled['seconds']:.2f}s vs eager {eager['seconds']:.2f}s")
    if diff > 0.01:
        raise CheckFailed(detail, numbers)
    if run["recompiled"]:
        raise CheckFailed(f"the second compiled call compiled {run['recompiled']} more graph(s); " + detail, numbers)
    return detail, numbers


def bf16_grid_near_one() -> float:
    """The spacing of bf16 numbers just below 1.0 (pixels near white): 2**-8."""
    one = torch.tensor(1.0, dtype=torch.bfloat16)
    return float(one - torch.nextafter(one, torch.tensor(0.0, dtype=torch.bfloat16)))


def compute_dtype(model, x: torch.Tensor, device: torch.device) -> torch.dtype:
    """The dtype of the model's logits under advfeat's autocast (bf16 where it is on)."""
    with torch.no_grad(), autocast(device):
        return model(prepare_input(x)).dtype


@check("bf16", cpu_s=0, cuda_s=60)
def check_bf16(ctx: Context):
    """The same attack under bf16 autocast and under runtime.fp32_only(): fails where the default
    path does not compute in bf16, where fp32_only() does not compute in fp32, or where robust
    accuracy differs by more than 2 points."""
    if not ctx.cuda:
        raise Skip("skipped (needs CUDA): autocast runs fp32 on a CPU, so there is nothing to compare")
    tiny = ctx.tiny()
    model, x, y = tiny["model"], tiny["x"], tiny["y"]
    eps, steps = 0.25, 20
    dtype = compute_dtype(model, x[:2], ctx.device)
    if dtype != torch.bfloat16:  # the default path must really compute in bf16
        raise CheckFailed(f"under advfeat's autocast the model computes in {dtype}, not bfloat16")
    bf16 = attack_accuracy(model, x, y, eps, steps, False, 512)
    with fp32_only():
        dtype = compute_dtype(model, x[:2], ctx.device)
        if dtype != torch.float32:  # and the comparison must really compute in fp32
            raise CheckFailed(f"under runtime.fp32_only() the model computes in {dtype}, not float32")
        fp32 = attack_accuracy(model, x, y, eps, steps, False, 512)
    diff = abs(bf16["robust_accuracy"] - fp32["robust_accuracy"])
    grid = bf16_grid_near_one()
    per_pixel = 2.5 * eps / steps / math.sqrt(3 * 32 * 32)
    numbers = {"eps": eps, "steps": steps, "n": len(y), **ctx.tiny_numbers(), "bf16": bf16, "fp32": fp32,
               "robust_accuracy_diff": diff, "bf16_spacing_below_1": grid, "l2_step_per_pixel_rms": per_pixel}
    detail = (f"L2 PGD eps {eps}, {steps} steps, {len(y)} test images, tiny: robust accuracy bf16 "
              f"{bf16['robust_accuracy']:.4f} vs fp32 {fp32['robust_accuracy']:.4f} (abs diff {diff * 100:.2f} points, "
              f"limit 2; clean {bf16['clean_accuracy']:.4f} vs {fp32['clean_accuracy']:.4f}); the model sees its "
              f"input on bf16's grid (spacing {grid:.4f} below 1.0) while one step moves a pixel by "
              f"{per_pixel:.5f} (rms): the iterate stays fp32, so steps still accumulate")
    if diff > 0.02:
        raise CheckFailed(detail, numbers)
    return detail, numbers
