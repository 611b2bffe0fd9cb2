"""Synthesize the paper's four training sets from CIFAR-10's training images.

    r / nr     representation inversion with a robust (D_R) / standard (D_NR) model
    rand / det targeted PGD on a standard model toward a random (D_rand) or the next
               (D_det) class, labelled with that class

One synthesis is a job: settings (advfeat.settings.SynthSettings), a model, source data and a
dataset folder. The work is split in shards written atomically; workers take disjoint shards
and a restarted run skips finished ones. All randomness is drawn per sample from the seed, so
the dataset does not depend on the number of workers or the batch size.

    draws.py    per-sample start images and targets, from the seed alone
    shard.py    one shard: the attack, its statistics, the storage rounding
    output.py   the dataset folder: the run record, resuming, the card
    model_check.py does the model suit the kind (robust for r, standard otherwise)?
    workers.py  worker processes: one per GPU, gloo on CPU, or torchrun's
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from advfeat.checkpoint import load_model
from advfeat.errors import UserError
from advfeat.data import load_dataset
from advfeat.runtime import device_name, resolve_device
from advfeat.settings import KINDS, SynthSettings
from advfeat.synthesis.output import check_out, finalize, run_record, start_out
from advfeat.synthesis.draws import sample_plan, shard_ranges
from advfeat.synthesis.model_check import check_model_fits
from advfeat.synthesis.shard import synthesize_shard
from advfeat.synthesis.workers import free_port, join_group, run_worker, spawned, under_torchrun, worker_device

__all__ = ["KINDS", "SynthJob", "SynthSettings", "sample_plan", "shard_ranges", "synthesize", "synthesize_shard"]


@dataclass
class SynthJob:
    """Everything a worker needs: picklable, so spawned processes receive it whole."""

    settings: SynthSettings
    model_dir: str
    data: str | None
    out: str
    device: str = "auto"
    workers: int = 1
    progress: bool = True
    extra: dict = field(default_factory=dict)


def _prepare_out(job: SynthJob, dataset, device: torch.device, force: bool, log) -> dict:
    """Rank 0, before any worker starts: resume or start the folder; warn about the model."""
    model, model_card = load_model(job.model_dir, device)
    record = run_record(job.settings, job.model_dir, dataset.source, len(dataset.train))
    out = Path(job.out)
    if check_out(out, record, force):
        log(f"advfeat: resuming the synthesis in {job.out}")
    else:
        for warning in check_model_fits(model, model_card, job.settings.kind, dataset, device, job.settings.batch_size):
            log(f"advfeat: warning: {warning}")
        start_out(out, record)
    return model_card


def synthesize(job: SynthJob, *, force: bool = False, log=None) -> dict:
    """Run (or resume) a synthesis job with job.workers processes; returns the card (rank 0)."""
    log = log or (lambda message: print(message, file=sys.stderr))
    torchrun = under_torchrun()
    rank = int(os.environ.get("RANK", 0)) if torchrun else 0
    world = int(os.environ.get("WORLD_SIZE", 1)) if torchrun else job.workers
    if world < 1:
        raise UserError(f"--gpus must be at least 1, got {world}")
    device = resolve_device(job.device)
    if device.type == "cuda" and not torchrun and world > torch.cuda.device_count():
        raise UserError(f"--gpus {world} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if torchrun else 0
    device = worker_device(job.device, local_rank, world)
    if torchrun:
        join_group(device)
    wall_start = time.perf_counter()
    card = {}
    try:
        if rank == 0:
            dataset = load_dataset(job.data, subset=job.settings.subset, seed=job.settings.seed)
            model_card = _prepare_out(job, dataset, device, force, log)
        if torchrun:
            dist.barrier()
            run_worker(job, rank, world, device)
            dist.barrier()
        elif world > 1:
            torch.multiprocessing.spawn(spawned, args=(world, job, free_port()), nprocs=world, join=True)
        else:
            run_worker(job, 0, 1, device)
        if rank == 0:
            where = device_name(device) if world == 1 else f"{world} workers on {device_name(device)}"
            card = finalize(Path(job.out), job.settings, dataset, job.model_dir, model_card, world, where,
                            time.perf_counter() - wall_start)
    finally:
        if torchrun:
            dist.destroy_process_group()
    return card
