"""`advfeat reproduce`: the paper end to end, as content-addressed stages, for every seed.

    pipeline.py   stage keys, folders, reuse and resume
    plan.py       the stages of a preset
    stages.py     what each stage does
    estimate.py   work and time estimates (--dry-run)
The report (advfeat.report) turns the stages' results into tables, judged claims and figures.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import torch

from advfeat.errors import UserError
from advfeat.data import load_dataset
from advfeat.presets import EXTRAS, Preset
from advfeat.reproduce.pipeline import Pipeline
from advfeat.reproduce.plan import plan_stages
from advfeat.reproduce.stages import DATASET, Sources
from advfeat.runtime import bf16_on_cpu, compute_dtype, device_name, resolve_device
from advfeat.settings import KINDS

__all__ = ["dry_run", "prepare", "reproduce"]


def check_devices(preset: Preset, device: str, gpus: int) -> torch.device:
    """The device a reproduction runs on; a missing GPU is a one-line error."""
    if gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {gpus}")
    torch_device = resolve_device(device)
    if torch_device.type == "cpu" and preset.needs_gpu and device == "auto":
        raise UserError(f"preset {preset.name} needs a GPU (no CUDA device found); use --preset cpu (the paper's "
                        f"claims in under 30 minutes on a CPU), or --device cpu to run it on the CPU anyway")
    if torch_device.type == "cpu" and gpus > 1:
        raise UserError(f"--gpus {gpus} asks for {gpus} GPUs, but this run is on the CPU (no CUDA device found)")
    if torch_device.type == "cuda" and gpus > torch.cuda.device_count():
        raise UserError(f"--gpus {gpus} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    if torch_device.type == "cuda" and torch_device.index is not None and gpus > 1:
        raise UserError(f"--device {device} names one GPU, but --gpus {gpus} needs {gpus}; use --device cuda")
    return torch_device


def prepare(preset: Preset, data: str | None, out: Path | str, *, device: str = "auto", gpus: int = 1,
            extras: tuple[str, ...] = (), log: Callable[[str], None] | None = None
            ) -> tuple[Pipeline, Sources, torch.device]:
    """Check the devices, find the data, plan the stages (the preset's extras and `extras`) and key them."""
    log = log or (lambda message: print(message, file=sys.stderr))
    torch_device = check_devices(preset, device, gpus)
    source = load_dataset(data)  # reads (or decodes once into the cache) the source data
    if preset.data_format and source.source.get("format") != preset.data_format:
        raise UserError(f"preset {preset.name} needs {preset.data_format} data; {data} is "
                        f"{source.source.get('format') or 'CIFAR-10'} (docs/data.md)")
    sources = Sources(source.source["path"], preset.subset, preset.test_subset, torch_device,
                      preset.looked_at_test_images, source=dict(source.source))
    sources.test()  # a --test-subset larger than the images available fails now, not after training
    # Synthesis workers take the GPU of their rank; a single worker takes the one named.
    worker_device = device if gpus == 1 else torch_device.type
    unknown = set(extras) - set(EXTRAS)
    if unknown:
        raise UserError(f"unknown extra {sorted(unknown)[0]!r}; choose from {', '.join(EXTRAS)}")
    stages = plan_stages(preset, sources, torch_device, worker_device, gpus, log,
                         extras=tuple(dict.fromkeys(preset.extras + tuple(extras))))
    compute = compute_dtype(torch_device, preset.cpu_bf16)
    return Pipeline(Path(out), stages, source.source["digest"], log, compute=compute), sources, torch_device


def reproduce(preset: Preset, data: str | None, out: Path | str, *, device: str = "auto", gpus: int = 1,
              extras: tuple[str, ...] = (), log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) every stage of the preset, then write the report; returns its data."""
    started = time.perf_counter()
    pipeline, sources, torch_device = prepare(preset, data, out, device=device, gpus=gpus, extras=extras, log=log)
    pipeline.out.mkdir(parents=True, exist_ok=True)
    with bf16_on_cpu(pipeline.compute == "bf16" and torch_device.type == "cpu"):
        pipeline.run_all()
    from advfeat.report import sample_images, write_report

    every_extra = list(dict.fromkeys(preset.extras + tuple(extras)))
    full = load_dataset(sources.path)  # its class names and size, for the report
    results = {"preset": preset.to_dict() | {"extras": every_extra}, "extras": every_extra,
               "data": {"path": sources.path, "digest": pipeline.data_digest, "format": sources.source.get("format"),
                        "lossy": sources.source.get("lossy"), "classes": list(full.classes),
                        "train_images": len(full.train)},
               "test_images": sources.test_images | {"seed": 0, "n": len(sources.test())},
               "seeds": preset.seed_list,
               "device": device_name(torch_device), "compute": pipeline.compute, "gpus": gpus, "stages": pipeline.records,
               "results": pipeline.results, "theory_dir": str(pipeline.folder("theory")),
               "total_seconds": round(time.perf_counter() - started, 2)}
    first = preset.first_seed  # the sample images come from the first seed's datasets
    return write_report(pipeline.out, results, samples=sample_images(
        {kind: pipeline.folder(f"synth-{kind}@{first}") / DATASET for kind in KINDS}, sources.train_data(first).train))


def dry_run(preset: Preset, data: str | None, out: Path | str, *, device: str = "auto", gpus: int = 1,
            extras: tuple[str, ...] = (), rates: dict | None = None, log: Callable[[str], None] | None = None) -> dict:
    """The stages a run would execute, which are done, their work and an estimated time."""
    from advfeat.reproduce.estimate import estimate_plan

    pipeline, sources, torch_device = prepare(preset, data, out, device=device, gpus=gpus, extras=extras,
                                              log=lambda message: None)
    return estimate_plan(pipeline, preset, sources, torch_device, rates=rates, log=log)
