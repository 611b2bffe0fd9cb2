"""Shared by the throughput benchmarks: timing with CUDA syncs, where and under what load
each number was taken, and a closing summary of the rates (pytest-benchmark's own table
shows seconds per call, not images per second)."""

from __future__ import annotations

import os
import time

import pytest
import torch

from advfeat.models import create_model
from advfeat.runtime import device_name, prepare_model

# Shown in the closing summary, in this order, when a benchmark recorded them.
SUMMARY_KEYS = ("image_steps_per_s", "images_per_s", "ratio_vs_baseline", "bf16_peak_fraction", "cpu_s_per_s")
_measured: list = []  # (group, name, extra_info) of every benchmark that ran, for the summary


def pytest_configure(config):
    # Benchmark files are bench_*.py, which pytest's default pattern (test_*.py) skips: let
    # `pytest bench/` collect them. This conftest loads only when bench/ is on the command
    # line, so the plain `pytest` (testpaths = tests) still never collects a benchmark.
    config.addinivalue_line("python_files", "bench_*.py")


@pytest.fixture
def measure(benchmark):
    """measure(fn, device, work=..., rounds=...) -> work per second at the median round.

    Records the device, the 1-minute load average at the start and the process's CPU
    seconds per wall second over all rounds: on a shared CPU the load is part of the
    measurement, and the CPU share (about the thread count when nothing else runs) shows
    contention that the lagging load average misses.
    """

    def run(fn, device: torch.device, *, work: int, rounds: int, warmup_rounds: int = 1) -> float:
        benchmark.extra_info.update(device=device_name(device), load_1m=os.getloadavg()[0])
        # CUDA calls return before the GPU is done: sync before and after so a round times its kernels.
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def timed():
            fn()
            sync()

        cpu, wall = time.process_time(), time.perf_counter()
        benchmark.pedantic(timed, setup=sync, rounds=rounds, warmup_rounds=warmup_rounds)
        benchmark.extra_info["cpu_s_per_s"] = (time.process_time() - cpu) / (time.perf_counter() - wall)
        _measured.append((benchmark.group, benchmark.name, benchmark.extra_info))
        return work / benchmark.stats.stats.median

    return run


def pytest_terminal_summary(terminalreporter):
    if not _measured:
        return
    terminalreporter.section("throughput (median round)")
    for group, name, info in _measured:
        rates = "  ".join(f"{key}={info[key]:.4g}" for key in SUMMARY_KEYS if key in info)
        terminalreporter.write_line(f"{group:<32} {name:<48} {rates}")


def model_for(impl: str, arch: str, device: torch.device) -> torch.nn.Module:
    """The same weights for every impl (seeded): the baseline gets a plain .to(device), advfeat
    what its own scripts prepare."""
    torch.manual_seed(0)
    model = create_model(arch).eval()
    return model.to(device) if impl == "baseline" else prepare_model(model, device)


def batch_of(model, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images, labelled with the model's own predictions (all correctly classified)."""
    x = torch.rand(size, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y
