"""Worker processes: one per GPU (NCCL), gloo workers on CPU, or the processes of torchrun.

Every worker takes every world-th shard that is not yet on disk, so workers share no state
and a restarted run skips finished shards. Each worker sets its device *before* joining the
process group (and names it to init_process_group), so NCCL talks through the right GPU.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from advfeat.checkpoint import load_model
from advfeat.errors import UserError
from advfeat.data import load_dataset
from advfeat.data.synthesized import SHARD_PATTERN, read_shard, write_shard
from advfeat.runtime import resolve_device
from advfeat.synthesis.draws import sample_plan, shard_ranges
from advfeat.synthesis.shard import synthesize_shard


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_device(name: str, local_rank: int, world: int) -> torch.device:
    """The device of one worker: the GPU named by --device cuda:N (one worker), else the
    local rank's GPU; the CPU on CPU. Sets it as the current CUDA device."""
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    if device.index is not None and world > 1:
        raise UserError(f"--device {name} names one GPU, but {world} workers need one each; "
                        f"use --device cuda (workers take cuda:0..{world - 1}) or CUDA_VISIBLE_DEVICES")
    device = torch.device("cuda", device.index if device.index is not None else local_rank)
    torch.cuda.set_device(device)
    return device


def join_group(device: torch.device, **init) -> None:
    """init_process_group on the worker's own device (NCCL on GPUs, gloo on CPUs)."""
    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device, **init)
    else:
        dist.init_process_group("gloo", **init)


def run_worker(job, rank: int, world: int, device: torch.device) -> None:
    """Synthesize this rank's shards (every world-th shard), skipping finished ones."""
    if device.type == "cpu" and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    settings = job.settings
    model, _ = load_model(job.model_dir, device)
    train = load_dataset(job.data, subset=settings.subset, seed=settings.seed).train
    plan = sample_plan(settings, train.labels, model.num_classes)
    out = Path(job.out)
    ranges = shard_ranges(len(train), settings.shard_size)
    mine = [s for s in range(rank, len(ranges), world) if read_shard(out / SHARD_PATTERN.format(s)) is None]
    bar = tqdm(total=sum(len(ranges[s]) for s in mine), desc=f"synth {settings.kind} (worker {rank})", unit="img",
               file=sys.stderr, disable=None if job.progress and rank == 0 else True, dynamic_ncols=True)
    done_before, steps_before, start = 0, 0, time.perf_counter()
    for shard in mine:
        def progress(finished: int, image_steps: int) -> None:
            bar.n = done_before + finished
            rate = (steps_before + image_steps) / (time.perf_counter() - start)
            bar.set_postfix(img_steps_s=f"{rate:.0f}", refresh=True)

        arrays = synthesize_shard(model, train, plan, ranges[shard], settings, device, progress)
        write_shard(out, shard, arrays)
        done_before += len(ranges[shard])
        steps_before += int(arrays["image_steps"][0])
        bar.n = done_before
        bar.refresh()
    bar.close()


def spawned(rank: int, world: int, job, port: int) -> None:
    """The entry point of a worker started by torch.multiprocessing.spawn."""
    device = worker_device(job.device, rank, world)
    join_group(device, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        run_worker(job, rank, world, device)
        dist.barrier()
    finally:
        dist.destroy_process_group()
