"""The distributed check: a small D_det synthesized by every GPU (NCCL) against one worker; on
a CPU, 2 gloo workers against 1. Sharded synthesis must give the same dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from advfeat.doctor.context import Context
from advfeat.doctor.registry import CHECKS, CheckFailed, check

TOLERANCE = 2e-2  # images are stored as float16


def read_shards(folder: Path) -> dict[str, np.ndarray]:
    """The images and labels of every shard in `folder`, concatenated in shard order."""
    from advfeat.data.synthesized import read_shard

    shards = [read_shard(p) for p in sorted(folder.glob("shard-*.safetensors"))]
    if not shards or any(s is None for s in shards):
        raise CheckFailed(f"{folder}: missing or unreadable shards")
    return {k: np.concatenate([s[k] for s in shards]) for k in ("images", "labels")}


def synth_as_torchrun(args: list[str], timeout: float) -> None:
    """`advfeat synth` as torchrun would start it with one rank: NCCL with a world of one GPU."""
    from advfeat.synthesis.workers import free_port

    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", "advfeat", "synth", *args], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"the NCCL synthesis ran past {timeout:.0f}s and was stopped") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CheckFailed(f"the NCCL synthesis (torchrun-style, 1 rank) exited {proc.returncode}: {last[:300]}")


def start_synthesis(out: Path, settings, model_dir: str, data: str) -> None:
    """Record the run in `out` as `advfeat synth` does before its first shard, so that synthesize()
    resumes it: that skips the model check (a 10-step attack on 256 images with weak attacks on
    top), which is not what this check is about and would double its time on a CPU."""
    from advfeat.data import load_dataset
    from advfeat.synthesis.output import run_record, start_out

    dataset = load_dataset(data, subset=settings.subset, seed=settings.seed)
    start_out(out, run_record(settings, model_dir, dataset.source, len(dataset.train)))


class _Synthesis:
    """Runs of one D_det setting into ctx.work/synth-<name>, timed."""

    def __init__(self, ctx: Context, n: int, steps: int):
        from advfeat.settings import SynthSettings

        self.ctx, self.n, self.steps = ctx, n, steps
        self.settings = SynthSettings.of("det", steps=steps, subset=n, shard_size=n // 4, batch_size=n // 4, seed=0,
                                         compile=False)
        self.model, self.data = str(ctx.tiny()["folder"]), str(ctx.data_path())
        self.warnings: list[str] = []
        self.seconds: dict[str, float] = {}

    def run(self, name: str, workers: int, torchrun: bool = False) -> Path:
        out = self.ctx.work / f"synth-{name}"
        start = time.perf_counter()
        start_synthesis(out, self.settings, self.model, self.data)
        if torchrun:
            self._torchrun(out)
        else:
            self._in_process(out, workers)
        self.seconds[name] = round(time.perf_counter() - start, 2)
        return out

    def _torchrun(self, out: Path) -> None:
        n = str(self.n // 4)
        synth_as_torchrun(["--kind", "det", "--model", self.model, "--data", self.data, "--subset", str(self.n),
                           "--steps", str(self.steps), "--shard-size", n, "--batch-size", n, "--no-compile",
                           "--device", str(self.ctx.device), "--quiet", "--out", str(out)],
                          timeout=CHECKS["distributed"].cuda_s)

    def _in_process(self, out: Path, workers: int) -> None:
        from advfeat.synthesis import SynthJob, synthesize

        # Several GPU workers take cuda:0..N-1 (a device with an index names one GPU only).
        device = "cuda" if self.ctx.cuda and workers > 1 else str(self.ctx.device)
        job = SynthJob(self.settings, self.model, self.data, str(out), device=device, workers=workers, progress=False)
        synthesize(job, log=lambda message: self.warnings.append(message) if "resuming" not in message else None)


def _many_workers(runs: _Synthesis, ctx: Context) -> tuple[Path, str]:
    """Every GPU as a NCCL worker; one GPU: one NCCL rank started as torchrun would; CPU: 2 gloo workers."""
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    if ctx.cuda and gpus >= 2:
        return runs.run("all", gpus), f"{gpus} NCCL workers (one per GPU)"
    if ctx.cuda:
        return (runs.run("all", 1, torchrun=True),
                "1 NCCL rank started as torchrun would (one GPU visible: NCCL init, barriers and the torchrun path)")
    return runs.run("all", 2), "2 gloo workers on the CPU"


@check("distributed", cpu_s=75, cuda_s=120)
def check_distributed(ctx: Context):
    """Fails where the labels differ or any image pixel differs by more than TOLERANCE."""
    n = 400 if ctx.cuda else 200
    steps = 10 if ctx.cuda else (3 if ctx.quick else 5)
    runs = _Synthesis(ctx, n, steps)
    one = runs.run("one", 1)
    many, how = _many_workers(runs, ctx)
    a, b = read_shards(one), read_shards(many)
    card = json.loads((many / "dataset.json").read_text())
    labels_equal = a["labels"].shape == b["labels"].shape and bool(np.array_equal(a["labels"], b["labels"]))
    diff = (np.abs(a["images"].astype(np.float32) - b["images"].astype(np.float32)) if labels_equal
            else np.array([np.inf]))
    numbers = {"kind": "det", "n": n, "steps": steps, "shards": 4, **ctx.tiny_numbers(), "workers": card["workers"],
               "labels_equal": labels_equal, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
               "tolerance": TOLERANCE, "seconds": runs.seconds, "warnings": runs.warnings,
               "target_success": card["stats"].get("target_success")}
    detail = (f"D_det of {n} images, {steps} steps, 4 shards: {how} vs 1 worker: labels "
              f"{'identical' if labels_equal else 'DIFFER'}, images max abs diff {diff.max():.1e} (limit "
              f"{TOLERANCE:.0e}, float16 storage); {runs.seconds.get('all', 0):.1f}s vs {runs.seconds['one']:.1f}s")
    if not labels_equal or not diff.max() <= TOLERANCE:
        raise CheckFailed(detail, numbers)
    return detail, numbers
