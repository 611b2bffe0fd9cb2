"""Throughput: measured rates and counted FLOPs of advfeat's work, and the rates file.

    measure_train_rate(arch, batch, device)      training images/s (SGD step, bf16 autocast on CUDA)
    measure_attack_rate(arch, batch, device)     PGD image-steps/s (advfeat's engine, eager)
    inversion_rate(model, x, steps)              representation-inversion image-steps/s
    compiled_attack_rate(model, x, y, steps)     PGD image-steps/s with torch.compile, and its warm-up
    step_flops / train_flops                     FLOPs per image of one attack / inversion / training step
    rates_path(device), load_rates(device)       rates-<device>.json in advfeat's cache folder

`advfeat doctor` (its throughput check) measures the rates and writes the rates file;
`advfeat reproduce --dry-run` (reproduce/estimate.py) reads it, or measures the same rates
itself in a short calibration. Rates are of random images and random-init models: speed
does not depend on the weights. Each architecture is timed at the image side it was designed
for (registry.InputSizes.native: 32 for the CIFAR nets, 224 for the ImageNet ResNets).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from advfeat.data.cache import cache_root
from advfeat.runtime import autocast, device_name, prepare_input, prepare_model, slug


def rates_path(device: torch.device) -> Path:
    """Where the rates of `device` live: <cache>/rates-<device name slug>.json."""
    return cache_root() / f"rates-{slug(device_name(device))}.json"


def load_rates(device: torch.device) -> dict | None:
    """The rates file of `device`, or None where there is none (or it is unreadable)."""
    try:
        return json.loads(rates_path(device).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _random_batch(batch_size: int, device: torch.device, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(batch_size, 3, side, side, device=device), torch.randint(0, 10, (batch_size,), device=device)


def _native_side(arch: str) -> int:
    """The image side `arch` was designed for (32 for CIFAR's, 224 for ImageNet's): its rate is timed there."""
    from advfeat.models.registry import input_sizes

    return input_sizes(arch).native


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_train_rate(arch: str, batch_size: int, device: torch.device, iterations: int = 3) -> float:
    """Training images/s of `arch` (SGD step, bf16 autocast on CUDA) on random data, after one
    warm-up step."""
    from advfeat.models import create_model

    torch.manual_seed(0)
    model = prepare_model(create_model(arch), device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = _random_batch(batch_size, device, _native_side(arch))
    x = prepare_input(x)

    def step():
        with autocast(device, training=True):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    _synchronize(device)
    return batch_size * iterations / (time.perf_counter() - start)


def measure_attack_rate(arch: str, batch_size: int, device: torch.device, steps: int = 3) -> float:
    """Attack image-steps/s of `arch`: advfeat's L2 PGD, eager, on random data, after a
    one-step warm-up."""
    from advfeat.attacks import make_threat, pgd
    from advfeat.models import create_model

    torch.manual_seed(0)
    model = prepare_model(create_model(arch), device).eval()
    x, y = _random_batch(batch_size, device, _native_side(arch))
    threat = make_threat("l2", 0.5, "none")
    pgd(model, x, y, threat=threat, steps=1, step_size=0.1, compile=False)  # warm-up
    return pgd(model, x, y, threat=threat, steps=steps, step_size=0.1, compile=False).image_steps_per_s


def step_flops(model, x: torch.Tensor, y: torch.Tensor, device: torch.device, inversion: bool = False) -> float:
    """FLOPs per image of one attack step (forward + input-gradient backward, frozen weights), or of
    one inversion step (features through fake_relu), counted by torch.utils.flop_counter.

    Written with .backward(), not autograd.grad: FlopCounterMode's module tracker refuses
    autograd.grad on a leaf; FLOPs depend on neither dtype nor layout.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from advfeat.attacks import frozen

    x = x.detach().clone().requires_grad_(True)
    with frozen(model), FlopCounterMode(display=False) as counter:
        with autocast(device):
            if inversion:
                _, features = model(prepare_input(x), return_features=True, fake_relu=True)
                loss = features.float().norm(dim=1).sum()
            else:
                loss = F.cross_entropy(model(prepare_input(x)).float(), y, reduction="none").sum()
        loss.backward()
    return counter.get_total_flops() / len(x)


def train_flops(model, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """FLOPs per image of one training step (forward + backward with weight gradients)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        with autocast(device):
            loss = F.cross_entropy(model(prepare_input(x)).float(), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def inversion_rate(model, x: torch.Tensor, steps: int) -> float:
    """Image-steps/s of representation inversion (MatchFeatures through fake_relu, no eps, keep the
    last iterate: synthesis of D_R / D_NR), eager, from other images of the batch."""
    from advfeat.attacks import MatchFeatures, make_threat, pgd
    from advfeat.evaluation import features_of

    target = features_of(model, x, len(x))
    start = x.roll(1, 0)
    options = dict(threat=make_threat("l2", math.inf, "none"), step_size=0.1, objective=MatchFeatures(True),
                   keep="last", compile=False)
    pgd(model, start, target, steps=1, **options)  # warm-up
    return pgd(model, start, target, steps=steps, **options).image_steps_per_s


def compiled_attack_rate(model, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, float]:
    """(image-steps/s, warm-up seconds) of advfeat's PGD with compile=True on one batch: the
    warm-up is the first call's time less the second's."""
    from advfeat.attacks import make_threat, pgd

    torch.compiler.reset()
    threat = make_threat("l2", 0.5, "none")
    start = time.perf_counter()
    pgd(model, x, y, threat=threat, steps=steps, step_size=0.1, compile=True)
    warmup = time.perf_counter() - start
    result = pgd(model, x, y, threat=threat, steps=steps, step_size=0.1, compile=True)
    return result.image_steps_per_s, max(0.0, warmup - result.seconds)
