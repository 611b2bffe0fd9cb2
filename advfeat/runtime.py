"""Where and how compute runs: device choice, bf16 autocast, channels_last, torch.compile."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from advfeat.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> $ADVFEAT_DEVICE if set (the test suite pins itself to the CPU so), else the first
    GPU if there is one, else the CPU. A missing GPU is a user error."""
    if name == "auto":
        name = os.environ.get("ADVFEAT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    return device


def device_name(device: torch.device) -> str:
    """What a card or a report says the work ran on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def slug(text: str, empty: str = "") -> str:
    """`text` as a file-name part: lower case, runs of other characters as one '-'
    ('NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'); `empty` if nothing is left."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or empty


def device_slug(device: torch.device | str) -> str:
    """'cpu', or the GPU's name as a file-name slug ('nvidia-h100-80gb-hbm3'); 'cuda' where
    CUDA is asked for but broken (still a usable folder name)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    try:
        name = torch.cuda.get_device_name(device)
    except Exception:  # noqa: BLE001 - any CUDA failure: fall back to the type
        name = "cuda"
    return slug(name, "cuda")


# Dense bf16 tensor-core peaks in FLOP/s, matched against the device name in order (so "H100 PCIe"
# is tried before the SXM part, which is named just "H100 ...").
BF16_PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


def bf16_peak(device: torch.device) -> float | None:
    """Dense bf16 FLOP/s of the device: $ADVFEAT_PEAK_TFLOPS, else looked up by name (None on a CPU)."""
    if os.environ.get("ADVFEAT_PEAK_TFLOPS"):
        return float(os.environ["ADVFEAT_PEAK_TFLOPS"]) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAKS if key in name), None)


# Device types whose compute runs under bf16 autocast (a test adds "cpu" to see the switch below work).
BF16_DEVICE_TYPES = ("cuda",)
# Set by fp32_only(): while True, autocast() is a no-op everywhere.
_fp32_forced = False


def autocast(device: torch.device, enabled: bool = True, *, training: bool = False):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full fp32 elsewhere, and
    everywhere inside `fp32_only()`. Every module that computes under autocast calls this.
    On a CPU inside `bf16_on_cpu()`, bf16 too, except for weight updates (`training`): oneDNN's
    bf16 training kernels measured slower than fp32 for 4 of the 6 CPU-scale nets (20x slower
    for wide_shallow), while attack steps ran 1.3-1.5x faster for all but the depthwise net."""
    if training and device.type == "cpu":
        enabled = False
    if enabled and device.type in BF16_DEVICE_TYPES and not _fp32_forced:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16). Only there are bf16
    attack steps faster than fp32 (tiny net, 2 cores, channels_last: 1.5-1.6x); on other CPUs
    oneDNN emulates bf16, slower than fp32."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


@contextlib.contextmanager
def bf16_on_cpu(enabled: bool = True):
    """Inside the block, autocast() computes attacks and evaluation in bf16 on the CPU too, as
    on CUDA (weights, perturbations and losses stay fp32); training's weight updates stay fp32.
    A no-op where `enabled` is False."""
    global BF16_DEVICE_TYPES
    saved = BF16_DEVICE_TYPES
    try:
        if enabled and "cpu" not in saved:
            BF16_DEVICE_TYPES = saved + ("cpu",)
        yield
    finally:
        BF16_DEVICE_TYPES = saved


def compute_dtype(device: torch.device, cpu_bf16: bool = False) -> str:
    """What a run computes in on `device`: "bf16" on CUDA, and on a CPU with native bf16 when
    asked (cpu_bf16); "fp32" otherwise. It enters every stage key of a reproduction."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and native_cpu_bf16()):
        return "bf16"
    return "fp32"


@contextlib.contextmanager
def fp32_only():
    """Inside the block, compute in full fp32: autocast() is off in every module (it reads this
    switch at each call), and TF32 matmuls and convolutions are off. For comparing bf16 with fp32."""
    global _fp32_forced
    saved = (_fp32_forced, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        _fp32_forced = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        yield
    finally:
        _fp32_forced, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to the device in channels_last, the layout fast convolutions want on GPUs (cuDNN)
    and CPUs (oneDNN: about 1.5x faster training of the small nets on 2 cores)."""
    return model.to(device).to(memory_format=torch.channels_last)


def prepare_input(x: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Images in channels_last, the layout fast convolutions want on GPUs and CPUs alike."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def maybe_compile(fn, enabled: bool):
    return torch.compile(fn) if enabled else fn


def git_commit() -> str | None:
    """The commit advfeat runs from, when it runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
