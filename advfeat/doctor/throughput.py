"""The throughput check: training, PGD and inversion rates, FLOPs per image-step and the fraction
of the bf16 peak, measured with advfeat/throughput.py; it writes the rates file that
`advfeat reproduce --dry-run` reads (and a copy, rates.json, beside doctor.json)."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import torch

from advfeat import throughput
from advfeat.doctor.context import Context
from advfeat.doctor.registry import CHECKS, CheckFailed, check, one_line
from advfeat.io import write_json
from advfeat.runtime import bf16_peak, device_name, prepare_model

# The architectures measured in detail (rates, FLOPs, inversion, compiled PGD on CUDA), the batch,
# timed iterations (training) and PGD steps; every other architecture of the presets named gets
# its training and attack rates only, for their dry run.
PLANS = {
    "cuda": {"detailed": ("resnet18", "resnet50"), "batch": 512, "iterations": 10, "steps": 10,
             "presets": ("fast", "paper")},
    "cpu": {"detailed": ("tiny", "small"), "batch": 128, "iterations": 3, "steps": 3, "presets": ("cpu", "smoke")},
    "cpu-quick": {"detailed": ("tiny", "small"), "batch": 64, "iterations": 2, "steps": 2,
                  "presets": ("cpu", "smoke")},
}


class _Budget:
    """Seconds left of the check's budget: later architectures are not measured once it is spent."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def preset_archs(names: tuple[str, ...]) -> list[str]:
    """Every architecture the named presets train or attack (what their dry run needs rates for)."""
    from advfeat.presets import PRESETS

    archs: set[str] = set()
    for name in names:
        preset = PRESETS.get(name)
        if preset is None:
            continue
        archs |= {preset.arch, preset.standard.arch, preset.robust.arch, *preset.transfer_archs}
        archs |= {config.arch for config in preset.train_on.values()}
    return sorted(archs)


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_rates(archs: list[str], plan: dict, device: torch.device, budget: _Budget) -> tuple[dict, dict, list]:
    """({arch: training and attack rates}, {arch: problem}, [archs not measured]): the detailed
    architectures always, the others while the budget lasts (with half the iterations)."""
    rates, problems, not_measured = {}, {}, []
    for arch in archs:
        detailed = arch in plan["detailed"]
        if not detailed and budget.left() < 0:
            not_measured.append(arch)
            continue
        n_iter = plan["iterations"] if detailed else max(2, plan["iterations"] // 2)
        try:
            rates[arch] = {
                "train_images_per_s": round(throughput.measure_train_rate(arch, plan["batch"], device,
                                                                          iterations=n_iter), 1),
                "attack_image_steps_per_s": round(throughput.measure_attack_rate(arch, plan["batch"], device,
                                                                                 steps=n_iter), 1)}
        except Exception as err:  # noqa: BLE001 - the other architectures still get their rates
            problems[arch] = one_line(err)
        _empty_cache(device)
    return rates, problems, not_measured


def _full_doctor_rates(path: Path) -> dict | None:
    """The rates at `path` if a full (not quick) doctor run wrote them, else None."""
    try:
        rates = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rates if rates.get("source") == "advfeat doctor" and rates.get("quick") is False else None


def write_rates(ctx: Context, archs: dict, batch: int) -> dict | None:
    """rates.json beside doctor.json, and the rates file of the dry run unless this is a quick run
    and a full one wrote it (returned then: its rates are kept)."""
    path = throughput.rates_path(ctx.device)
    rates = {"device": device_name(ctx.device), "source": "advfeat doctor", "batch_size": batch, "quick": ctx.quick,
             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "archs": {a: dict(r) for a, r in archs.items()}}
    write_json(ctx.out_dir / "rates.json", rates)  # a copy that travels with the report
    kept = _full_doctor_rates(path) if ctx.quick else None  # quick rates (fewer iterations) do not replace full ones
    if kept is None:
        write_json(path, rates)
    return kept


def _add_rates_per_flop(r: dict, peak: float | None) -> None:
    """Each measured rate as TFLOP/s, and as a fraction of the bf16 peak where it is known."""
    for key, gflop in (("train_images_per_s", "gflop_per_train_image"),
                       ("attack_image_steps_per_s", "gflop_per_attack_step"),
                       ("compiled_attack_image_steps_per_s", "gflop_per_attack_step"),
                       ("inversion_image_steps_per_s", "gflop_per_inversion_step")):
        if key in r:
            r[key.replace("_per_s", "_tflops")] = round(r[key] * r[gflop] / 1e3, 4)
            if peak:
                r[key.replace("_per_s", "_bf16_peak_fraction")] = round(r[key] * r[gflop] * 1e9 / peak, 4)


def detailed_measurements(arch: str, r: dict, ctx: Context, plan: dict, budget: _Budget, peak) -> None:
    """FLOPs, inversion and (CUDA) compiled PGD of one architecture, into r, as time allows."""
    from advfeat.models import create_model

    dev, batch = ctx.device, plan["batch"]
    torch.manual_seed(0)
    model = prepare_model(create_model(arch), dev)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen).to(dev)
    y = torch.randint(0, 10, (batch,), generator=gen).to(dev)
    r["gflop_per_attack_step"] = throughput.step_flops(model, x[:8], y[:8], dev) / 1e9
    r["gflop_per_inversion_step"] = throughput.step_flops(model, x[:8], y[:8], dev, inversion=True) / 1e9
    r["gflop_per_train_image"] = throughput.train_flops(model, x[:8], y[:8], dev) / 1e9
    model.eval()
    if budget.left() > 0:
        r["inversion_image_steps_per_s"] = round(throughput.inversion_rate(model, x, plan["steps"]), 1)
    if ctx.cuda and budget.left() > 0:
        rate, warmup = throughput.compiled_attack_rate(model, x, y, plan["steps"])
        r["compiled_attack_image_steps_per_s"], r["compile_warmup_seconds"] = round(rate, 1), round(warmup, 1)
    _add_rates_per_flop(r, peak)


def describe(arch: str, r: dict) -> str:
    """One architecture's measurements in a phrase."""
    text = f"{arch}: train {r['train_images_per_s']:.0f} img/s, PGD {r['attack_image_steps_per_s']:.0f}"
    if "compiled_attack_image_steps_per_s" in r:
        text += f" (compiled {r['compiled_attack_image_steps_per_s']:.0f})"
    if "inversion_image_steps_per_s" in r:
        text += f", inversion {r['inversion_image_steps_per_s']:.0f}"
    text += " img-steps/s"
    if "gflop_per_attack_step" in r:
        text += f", {r['gflop_per_attack_step']:.3g} GFLOP/img-step"
    if "attack_image_steps_bf16_peak_fraction" in r:
        text += f", PGD at {r['attack_image_steps_bf16_peak_fraction'] * 100:.1f}% of bf16 peak"
    if "compiled_attack_image_steps_bf16_peak_fraction" in r:
        text += f" ({r['compiled_attack_image_steps_bf16_peak_fraction'] * 100:.1f}% compiled)"
    return text


def _detail(ctx: Context, plan: dict, archs: dict, kept: dict | None, not_measured: list, peak) -> str:
    path, batch = throughput.rates_path(ctx.device), plan["batch"]
    detail = "; ".join(describe(a, archs[a]) for a in plan["detailed"] if a in archs)
    if kept is None:
        detail += f"; batch {batch}; rates of {', '.join(archs)} -> {path}"
    else:
        detail += (f"; batch {batch}; {path} kept as the full doctor run of {kept.get('created', '?')} wrote it "
                   f"(quick rates only in rates.json)")
    if not_measured:
        detail += f" (over budget, not measured: {', '.join(not_measured)})"
    if ctx.cuda and not peak:
        detail += "; bf16 peak unknown for this GPU (set ADVFEAT_PEAK_TFLOPS)"
    return detail


@check("throughput", cpu_s=90, cuda_s=300)
def check_throughput(ctx: Context):
    """Fails where any measurement raised (the others are still made and reported)."""
    budget = _Budget(CHECKS["throughput"].budget(ctx.cuda))
    plan = PLANS["cuda" if ctx.cuda else ("cpu-quick" if ctx.quick else "cpu")]
    others = [a for a in preset_archs(plan["presets"]) if a not in plan["detailed"]]
    peak = bf16_peak(ctx.device)
    # 1. The rates the dry run reads, for every architecture (the detailed ones first).
    archs, problems, not_measured = measure_rates([*plan["detailed"], *others], plan, ctx.device, budget)
    kept = write_rates(ctx, archs, plan["batch"])
    # 2. FLOPs, inversion and (CUDA) compiled PGD for the detailed architectures, as time allows.
    for arch in (a for a in plan["detailed"] if a in archs):
        try:
            detailed_measurements(arch, archs[arch], ctx, plan, budget, peak)
        except Exception as err:  # noqa: BLE001
            problems[f"{arch} (FLOPs, inversion, compiled)"] = one_line(err)
        _empty_cache(ctx.device)
    numbers = {"archs": archs, "batch_size": plan["batch"], "steps": plan["steps"],
               "rates_file": str(throughput.rates_path(ctx.device)),
               "bf16_peak_tflops": peak / 1e12 if peak else None, "not_measured": not_measured, "problems": problems,
               "rates_file_written": kept is None}
    detail = _detail(ctx, plan, archs, kept, not_measured, peak)
    if problems:
        raise CheckFailed("; ".join(f"{k}: {v}" for k, v in problems.items()) + "; " + detail, numbers)
    return detail, numbers
