"""The CUDA paths, checked against the CPU ones: run on a GPU machine with `pytest -m cuda`.

Skipped without a GPU (tests/conftest.py). Each names the device it uses; tolerances are
those of bf16 compute (about 3 significant digits) where autocast is on.
"""

from __future__ import annotations

import pytest
import torch

from advfeat.attacks import make_threat, pgd
from advfeat.kernels import cases
from advfeat.models import create_model

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


# The kernel case table (advfeat/kernels/cases.py): its corner cases, and its grid of layouts, gradient
# dtypes and eps kinds at odd batch sizes on CIFAR-sized images, as `advfeat doctor` runs it on a GPU.
CUDA_CASES = (*cases.EDGE_CASES, *cases.grid((1, 7, 129)))


@pytest.mark.parametrize("case", CUDA_CASES, ids=[c.name for c in CUDA_CASES])
def test_triton_kernels_match_the_reference_on_cuda(case, monkeypatch):
    monkeypatch.setenv("ADVFEAT_KERNELS", "triton")
    assert cases.compare([case], CUDA)[case.name] <= cases.TOLERANCE


def _data():
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "cifar10-jpeg-train.tar.gz").is_file():
        pytest.skip("needs ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="module")
def tiny_on_cuda(tmp_path_factory):
    """The tiny net trained on CUDA for two epochs on 3,000 real images (training.train_tiny), and 500 test images."""
    from advfeat.data import load_dataset
    from advfeat.evaluation import split_tensors
    from advfeat.training import train_tiny

    data = load_dataset(_data(), subset=3000, test_subset=500, seed=0)
    model, _ = train_tiny(data, tmp_path_factory.mktemp("tiny-cuda"), device=CUDA, epochs=2, seed=0)
    x, y = split_tensors(data.test, CUDA)
    return model, x, y


def test_bf16_attack_on_cuda_agrees_with_fp32_on_cpu(tiny_on_cuda):
    model, x, y = tiny_on_cuda
    threat = make_threat("l2", 0.25, "none")
    gpu = pgd(model, x, y, threat=threat, steps=20, step_size=2.5 * 0.25 / 20, retire=True, compile=False)
    cpu_model = create_model("tiny")
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    cpu = pgd(cpu_model.eval(), x.cpu(), y.cpu(), threat=threat, steps=20, step_size=2.5 * 0.25 / 20, retire=True)
    assert abs(gpu.success.float().mean().item() - cpu.success.float().mean().item()) <= 0.02
    assert (gpu.x_adv - x).flatten(1).norm(dim=1).max() <= 0.25 + 1e-5


def test_compiled_attack_on_cuda_matches_eager_and_compiles_a_bounded_number_of_times(tiny_on_cuda):
    from torch._dynamo.utils import counters

    model, x, y = tiny_on_cuda
    options = dict(threat=make_threat("l2", 0.5, "none"), steps=20, step_size=0.1, retire=True, batch_size=128)
    eager = pgd(model, x, y, compile=False, **options)
    counters.clear()
    compiled = pgd(model, x, y, compile=True, **options)
    graphs = counters["stats"]["unique_graphs"]
    pgd(model, x, y, compile=True, **options)
    assert counters["stats"]["unique_graphs"] == graphs <= 8
    assert abs(compiled.success.float().mean().item() - eager.success.float().mean().item()) <= 0.01


def test_synthesis_on_every_gpu_equals_one_worker(tmp_path):
    import json

    import numpy as np
    from safetensors.numpy import load_file

    from conftest import run_cli

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    model_dir = tmp_path / "m"
    code, _, err = run_cli("train", "--data", str(_data()), "--arch", "tiny", "--epochs", "1", "--subset", "1000",
                           "--device", "cuda", "--out", str(model_dir), "--quiet")
    assert code == 0, err
    common = ["synth", "--kind", "det", "--model", str(model_dir), "--data", str(_data()), "--subset", "400",
              "--steps", "10", "--shard-size", "100", "--device", "cuda", "--quiet"]
    for name, gpus in (("one", 1), ("all", torch.cuda.device_count())):
        code, _, err = run_cli(*common, "--gpus", str(gpus), "--out", str(tmp_path / name))
        assert code == 0, err
    assert json.loads((tmp_path / "all" / "dataset.json").read_text())["workers"] == torch.cuda.device_count()
    for shard in sorted((tmp_path / "one").glob("shard-*.safetensors")):
        a, b = load_file(str(shard)), load_file(str(tmp_path / "all" / shard.name))
        np.testing.assert_array_equal(a["labels"], b["labels"])
        assert np.abs(a["images"].astype(np.float32) - b["images"].astype(np.float32)).max() < 2e-2
