"""Training throughput: one short epoch of advfeat's own `train_epoch` (SGD, bf16 autocast
and channels_last on CUDA, device-resident TensorLoader with augmentation), on random
CIFAR-shaped data.

    python -m pytest bench/bench_training.py --benchmark-only -q

Each group `train-<device> <arch> b<batch>` holds `eager` and, on CUDA, `compile`
(torch.compile'd model, compiled in the warm-up epoch). extra_info: images_per_s
(images of the epoch / median seconds).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advfeat.models import create_model
from advfeat.data import Split
from advfeat.data.tensor_loader import TensorLoader
from advfeat.runtime import maybe_compile, prepare_model
from advfeat.training import TrainConfig, train_epoch

# (arch, batch, batches per epoch, timed rounds). CPU trains resnet18 at ~10-50 images/s,
# so it gets two batches and one round.
CPU_CASES = [("tiny", 128, 8, 3), ("small", 128, 4, 3), ("resnet18", 128, 2, 1)]
CUDA_CASES = [(a, b, 20, 5) for a in ("resnet18", "resnet50") for b in (128, 512)]

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def random_split(n: int) -> Split:
    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))


def epoch_runner(arch: str, batch: int, batches: int, device: torch.device, compile: bool):
    """A call that trains one epoch of `batches` batches, set up as advfeat.training.train does."""
    torch.manual_seed(0)
    config = TrainConfig(arch=arch, epochs=1, batch_size=batch, compile=compile)
    model = prepare_model(create_model(arch), device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    forward = maybe_compile(model, compile)
    loader = TensorLoader(random_split(batch * batches), batch_size=batch, device=device, shuffle=True, augment=True)
    return lambda: train_epoch(model, forward, loader, optimizer, config, 0, device, None, progress=False)


def run_training(benchmark, measure, arch, batch, batches, rounds, device, compile=False):
    benchmark.group = f"train-{device.type} {arch} b{batch}"
    if compile:
        torch.compiler.reset()  # a fresh static graph per case, clear of dynamo's recompile limit
    # The warm-up epoch compiles (compile) and lets cuDNN pick its algorithms.
    rate = measure(epoch_runner(arch, batch, batches, device, compile), device, work=batch * batches, rounds=rounds)
    benchmark.extra_info.update(impl="compile" if compile else "eager", arch=arch, batch=batch, batches=batches,
                                images_per_s=rate)


@pytest.mark.parametrize("arch,batch,batches,rounds", CPU_CASES)
def test_train_cpu(benchmark, measure, arch, batch, batches, rounds):
    run_training(benchmark, measure, arch, batch, batches, rounds, torch.device("cpu"))


@cuda_only
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compile"])
@pytest.mark.parametrize("arch,batch,batches,rounds", CUDA_CASES)
def test_train_cuda(benchmark, measure, arch, batch, batches, rounds, compile):
    run_training(benchmark, measure, arch, batch, batches, rounds, torch.device("cuda"), compile)
