"""Time estimates for `advfeat reproduce --dry-run`.

Each stage declares its work (pipeline.Work): passes of an architecture over single images,
either training passes or attack image-steps. A rate turns work into seconds: measured by
`advfeat doctor` on this device (it leaves rates-<device>.json in advfeat's cache folder), or
else by a calibration of about 20 seconds that times a few training and attack batches of each
architecture (both measure with advfeat/throughput.py). Each stage also pays a fixed overhead (loading data, building models, writing),
measured once. Estimates are rough by nature: the test holds them to a factor of 2 of the
smoke preset's real stage times on a CPU.
"""

from __future__ import annotations

import time

import torch

from advfeat.runtime import device_name
from advfeat.throughput import load_rates, measure_attack_rate, measure_train_rate


def calibrate(archs: set[str], device: torch.device, budget_s: float = 20.0) -> dict:
    """Rates of each architecture, measured within about budget_s seconds. On a CPU the rate per
    image hardly depends on the batch size, so small batches keep big nets quick; on a GPU the
    batch matters, and the preset's would be better: run `advfeat doctor` there."""
    batch = 256 if device.type == "cuda" else 32
    rates: dict = {}
    per_arch = budget_s / max(len(archs), 1)
    for arch in sorted(archs):
        start = time.perf_counter()
        rates[arch] = {"train_images_per_s": measure_train_rate(arch, batch, device, iterations=2)}
        iterations = 2 if time.perf_counter() - start < per_arch / 2 else 1
        rates[arch]["attack_image_steps_per_s"] = measure_attack_rate(arch, batch, device, steps=iterations + 1)
    return {"device": device_name(device), "source": "calibration", "batch_size": batch, "archs": rates}


def measure_overhead(sources) -> float:
    """Seconds a stage pays besides its work: reading its data from the cache (the first read
    decodes or loads the cache, so time the second)."""
    sources.train_data(0)
    start = time.perf_counter()
    sources.train_data(0)
    return time.perf_counter() - start


def stage_seconds(work, rates: dict, overhead: float) -> float:
    if work.what == "fixed":
        return work.fixed_seconds
    arch = rates["archs"].get(work.arch, {})
    rate = arch.get("train_images_per_s" if work.what == "train" else "attack_image_steps_per_s")
    return overhead + work.fixed_seconds + (work.passes / rate if rate else 0.0)


def estimate_plan(pipeline, preset, sources, device: torch.device, *, rates: dict | None = None,
                  log=None) -> dict:
    """Every stage with its status, work and estimated seconds (done stages cost nothing)."""
    log = log or print
    archs = {s.work.arch for s in pipeline.stages.values() if s.work.arch}
    rates = rates or load_rates(device)
    if rates is None or not archs <= set(rates.get("archs", {})):
        log(f"advfeat: calibrating throughput on {device_name(device)} (about 20 s; `advfeat doctor` measures "
            f"it once for good)")
        rates = calibrate(archs, device)
    overhead = measure_overhead(sources)
    rows, total = [], 0.0
    for stage_id, stage in pipeline.stages.items():
        status = pipeline.status(stage_id)
        seconds = 0.0 if status == "done" else stage_seconds(stage.work, rates, overhead)
        total += seconds
        rows.append({"stage": stage_id, "status": status, "work": stage.work.what, "arch": stage.work.arch,
                     "passes": stage.work.passes, "seconds": round(seconds, 1)})
    return {"preset": preset.name, "device": device_name(device), "rates": rates, "stages": rows,
            "total_seconds": round(total, 1)}
