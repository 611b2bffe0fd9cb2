"""Exploration apart from confirmation: fresh seeds, and test images held out from tuning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from advfeat.errors import UserError
from advfeat.presets import get_preset
from advfeat.reproduce.stages import Sources
from conftest import random_cifar, run_cli, write_python_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    train, test = random_cifar(n_train_per_class=2, n_test_per_class=30)  # 300 test images
    return str(write_python_release(tmp_path_factory.mktemp("release"), train, test))


def test_held_out_test_images_are_disjoint_from_the_tuning_images(release):
    tuned = Sources(release, None, 100, torch.device("cpu"))  # what tuning looked at: 100 images, seed 0
    held_out = Sources(release, None, 150, torch.device("cpu"), looked_at_test_images=((100, 0),))
    a, b = set(tuned.test().source_index.tolist()), set(held_out.test().source_index.tolist())
    assert len(a) == 100 and len(b) == 150 and not a & b
    assert np.bincount(held_out.test().labels).tolist() == [15] * 10  # still stratified by class
    # The pool is everything else: drawing all of it gives exactly the complement.
    pool = Sources(release, None, None, torch.device("cpu"), looked_at_test_images=((100, 0),)).test()
    assert set(pool.source_index.tolist()) == set(range(300)) - a
    assert held_out.test_images["pool"] != tuned.test_images["pool"]  # the stage keys tell them apart


def test_each_look_draws_from_what_the_earlier_looks_left(release):
    """Two looks (the exploration's, a first confirmatory run's), then a run: three disjoint sets,
    and the first look's set is the one a run with no earlier look would have drawn."""
    first = Sources(release, None, 100, torch.device("cpu")).test()
    second = Sources(release, None, 100, torch.device("cpu"), looked_at_test_images=((100, 0),)).test()
    third = Sources(release, None, 100, torch.device("cpu"), looked_at_test_images=((100, 0), (100, 0))).test()
    sets = [set(s.source_index.tolist()) for s in (first, second, third)]
    assert [len(s) for s in sets] == [100] * 3 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert np.bincount(third.labels).tolist() == [10] * 10
    with pytest.raises(UserError, match="larger than the 100 test images"):
        Sources(release, None, 101, torch.device("cpu"), looked_at_test_images=((100, 0), (100, 0))).test()


def test_a_test_subset_larger_than_the_held_out_pool_is_one_line(release, tmp_path):
    with pytest.raises(UserError, match="larger than the 200 test images"):
        Sources(release, None, 201, torch.device("cpu"), looked_at_test_images=((100, 0),)).test()
    preset = get_preset("cpu")
    assert preset.looked_at_test_images  # the cpu preset confirms on held-out images
    code, _, err = run_cli("reproduce", "--preset", "cpu", "--test-subset", "9000", "--data", release,
                           "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "larger than" in err, err
    assert not (tmp_path / "o").exists()


def test_seeds_run_from_the_first_seed():
    preset = dataclasses.replace(get_preset("smoke"), seeds=3, first_seed=5)
    assert preset.seed_list == [5, 6, 7]
    assert get_preset("cpu").first_seed > 0  # not the seeds the settings were chosen on
    with pytest.raises(UserError, match="--first-seed must be at least 0"):
        dataclasses.replace(preset, first_seed=-1)


@pytest.mark.parametrize("args, needle", [(["--first-seed", "-1"], "--first-seed must be at least 0"),
                                          (["--seeds", "0"], "--seeds must be at least 1")])
def test_bad_seed_flags_are_one_line(args, needle, tmp_path):
    code, _, err = run_cli("reproduce", "--preset", "smoke", *args, "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_cpu_bf16_is_a_switch_that_reaches_autocast_and_the_stage_keys(monkeypatch):
    from advfeat import runtime
    from advfeat.reproduce.pipeline import Pipeline, Stage

    model = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with runtime.autocast(torch.device("cpu")):
        assert model(x).dtype == torch.float32  # fp32 on the CPU by default
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: True)
    with runtime.bf16_on_cpu():
        with runtime.autocast(torch.device("cpu")):
            assert model(x).dtype == torch.bfloat16
        with runtime.fp32_only(), runtime.autocast(torch.device("cpu")):
            assert model(x).dtype == torch.float32  # fp32_only still wins
        with runtime.autocast(torch.device("cpu"), training=True):
            assert model(x).dtype == torch.float32  # weight updates stay fp32 on the CPU
    with runtime.autocast(torch.device("cpu")):
        assert model(x).dtype == torch.float32  # and the block restored the default
    assert runtime.compute_dtype(torch.device("cpu"), cpu_bf16=True) == "bf16"
    assert runtime.compute_dtype(torch.device("cpu"), cpu_bf16=False) == "fp32"
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)  # emulated bf16 is slower: stay fp32
    assert runtime.compute_dtype(torch.device("cpu"), cpu_bf16=True) == "fp32"
    stages = [Stage("a", 0, {}, (), lambda ctx: {})]
    keys = {c: Pipeline("out", stages, "d", print, compute=c).keys["a@0"] for c in ("fp32", "bf16")}
    assert keys["fp32"] != keys["bf16"]
