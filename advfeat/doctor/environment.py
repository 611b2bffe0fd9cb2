"""The environment check: versions, devices, driver, memory and CPUs; on a CPU, what needs CUDA."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from advfeat import __version__
from advfeat.doctor.context import Context
from advfeat.doctor.registry import CheckFailed, check
from advfeat.runtime import device_name, git_commit

# What a CPU run cannot check: listed by the environment check.
NEEDS_CUDA = ("Triton kernels compiled for the GPU (the CPU runs them in Triton's interpreter)",
              "bf16 autocast vs fp32", "compiled PGD throughput", "NCCL synthesis workers",
              "DALI GPU (nvJPEG) decoding", "fraction of the GPU's bf16 peak")


def _package_version(*names: str) -> str | None:
    """The installed version of the first distribution found (by metadata: nothing is imported)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _dali_version() -> str | None:
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("nvidia-dali"):
            return f"{dist.version} ({name})"
    return None


def _nvidia_smi() -> list[dict]:
    """GPUs as nvidia-smi sees them (empty without nvidia-smi)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return rows


def _git_dirty() -> bool | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _gpus() -> list[dict]:
    return [{"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
             "multiprocessors": p.multi_processor_count}
            for p in map(torch.cuda.get_device_properties, range(torch.cuda.device_count()))]


def _cudnn() -> int | None:
    try:
        return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # noqa: BLE001 - a broken cuDNN is reported as missing
        return None


def _nccl() -> str | None:
    try:
        return ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:  # noqa: BLE001
        return None


def environment() -> dict:
    """Versions, devices and the machine, as a dict (nothing here can fail)."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _package_version("triton", "pytorch-triton"),
        "dali": _dali_version(),
        "torchattacks": _package_version("torchattacks"),
        "numpy": np.__version__,
        "advfeat": __version__,
        "git_commit": git_commit(),
        "git_dirty": _git_dirty(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
        "nvidia_smi": _nvidia_smi(),
        "cudnn": _cudnn(),
    }
    if env["cuda_available"]:
        env["gpus"], env["nccl"] = _gpus(), _nccl()
    env["driver"] = env["nvidia_smi"][0]["driver"] if env["nvidia_smi"] else None
    return env


def _versions(env: dict) -> str:
    return (f"python {env['python']}, torch {env['torch']}, triton {env['triton'] or 'missing'}, "
            f"DALI {env['dali'] or 'missing'}, advfeat {env['advfeat']} @ {(env['git_commit'] or 'no git')[:10]}"
            f"{' (dirty)' if env['git_dirty'] else ''}")


def _cuda_machine(env: dict) -> str:
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB, sm {g['capability']})" for g in env["gpus"])
    return (f"{len(env['gpus'])} GPU(s): {gpus}; driver {env['driver']}, CUDA {env['torch_cuda']}, "
            f"cuDNN {env['cudnn']}, NCCL {env.get('nccl')}; {env['cpu_count']} CPUs")


def _cpu_machine(env: dict, device: torch.device) -> str:
    cuda = f"CUDA not used ({len(env['gpus'])} GPU(s) seen)" if env["cuda_available"] else "no CUDA"
    return f"{device_name(device)}, {env['cpu_count']} CPUs, {cuda}; skipped (needs CUDA): " + "; ".join(NEEDS_CUDA)


@check("environment", cpu_s=10, cuda_s=15)
def check_environment(ctx: Context):
    """Fails where the device asked for is unusable, where nvidia-smi sees GPUs that torch cannot
    use, or (on CUDA) where triton is missing; otherwise records the versions and the machine."""
    env = environment()
    numbers = {k: env[k] for k in ("python", "torch", "torch_cuda", "triton", "dali", "advfeat", "git_commit",
                                   "cpu_count", "driver")}
    numbers["gpus"] = env["gpus"]
    numbers["device"] = str(ctx.device)
    versions = _versions(env)
    if ctx.device_error:
        raise CheckFailed(f"{ctx.device_error}; {versions}", numbers)
    if env["nvidia_smi"] and not env["cuda_available"]:
        raise CheckFailed(f"nvidia-smi lists {len(env['nvidia_smi'])} GPU(s) (driver {env['driver']}) but torch "
                          f"cannot use CUDA (torch built for CUDA {env['torch_cuda']}); {versions}", numbers)
    if ctx.cuda:
        where = _cuda_machine(env)
        if env["triton"] is None:
            raise CheckFailed(f"triton is not installed: the step kernels fall back to the torch reference; "
                              f"{where}; {versions}", numbers)
    else:
        numbers["needs_cuda"] = list(NEEDS_CUDA)
        where = _cpu_machine(env, ctx.device)
    return f"{versions}; {where}", numbers
