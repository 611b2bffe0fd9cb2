"""Restricted ImageNet end to end at tiny scale: the ImageNet-resolution ResNet-50 (torchvision's
layout), the `restricted-imagenet` preset (paper-notes 1.4) planned on a dozen fake wnid folders
and one of its stages run, and chance as 1 / the data's classes in the claims."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from advfeat.claims import Evidence, Outcomes, d_det_rules, d_rand_rules, num_classes_of
from advfeat.data.restricted_imagenet import RESTRICTED_IMAGENET_RANGES
from advfeat.errors import UserError
from advfeat.models import create_model
from advfeat.paper import PAPER_RESTRICTED_IMAGENET
from advfeat.presets import PRESETS, get_preset

from conftest import run_cli
from test_more_data import write_imagenet


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """1000 wnid folders in train/ and val/, a dozen filled: each super-class's first index
    (two images) and three indices outside the ranges; 8x8 images."""
    root = tmp_path_factory.mktemp("imagenet")
    write_imagenet(root, {low: 2 for low, _ in RESTRICTED_IMAGENET_RANGES} | {29: 1, 150: 1, 398: 1}, size=8)
    return root


def test_resnet50_imagenet_is_torchvision_s_resnet50():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(num_classes=9).eval()
    ours = create_model("resnet50_imagenet", 9).eval()
    theirs = reference.state_dict()
    assert [tuple(v.shape) for v in ours.state_dict().values()] == [tuple(v.shape) for v in theirs.values()]
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.values())))  # same layers in the same order
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        normalized = (x - ours.mean) / ours.std  # torchvision's net takes normalized images
        assert torch.allclose(ours(x), reference(normalized), atol=1e-5)
    assert ours.mean.flatten().tolist() == pytest.approx([0.4717, 0.4499, 0.3837])


def test_preset_holds_the_paper_s_restricted_imagenet_settings():
    p = get_preset("restricted-imagenet")
    assert p.arch == "resnet50_imagenet" and p.data_format == "restricted-imagenet" and p.needs_gpu
    assert (p.robust.adv, p.robust.eps, p.robust.attack_steps, p.robust.attack_step_size) == ("l2", 3.0, 7, 0.5)
    assert p.paper_eps == p.eps[0] == p.claim_eps == 3.0
    assert (p.standard.epochs, p.standard.batch_size, p.standard.weight_decay, p.standard.lr_milestones) == \
        (150, 256, 1e-4, [50, 100])  # the library's RestrictedImageNet defaults
    assert {k: r.value for k, r in PAPER_RESTRICTED_IMAGENET.items()} == {
        ("standard", "clean"): 0.966, ("rand", "clean"): 0.879, ("det", "clean"): 0.644}
    for name in ("smoke", "cpu", "fast", "paper"):  # CIFAR's presets keep the paper's 0.25 first
        assert PRESETS[name].paper_eps == PRESETS[name].eps[0] == 0.25 and PRESETS[name].data_format is None
    with pytest.raises(UserError, match="eps must start with the paper's 3"):
        dataclasses.replace(p, eps=(0.25, 3.0))


def tiny(preset):
    return dataclasses.replace(preset, subset=9, test_subset=9, seeds=1)


def test_plan_on_a_dozen_wnid_folders(imagenet, tmp_path):
    from advfeat.reproduce import dry_run

    preset = tiny(get_preset("restricted-imagenet"))
    rates = {"source": "test", "archs": {a: {"train_images_per_s": 1.0, "attack_image_steps_per_s": 1.0}
                                         for a in ("resnet50_imagenet", "resnet18_imagenet")}}
    plan = dry_run(preset, str(imagenet), tmp_path / "out", device="cpu", rates=rates, log=lambda m: None)
    stages = {r["stage"]: r for r in plan["stages"]}
    assert {"train-standard@0", "train-robust@0", "synth-det@0", "eval-det@0", "fig3@0"} <= set(stages)
    assert stages["train-robust@0"]["passes"] == 9 * 150 * 8  # 9 images, 150 epochs, 1 + 7 attack steps
    assert all(r["status"] == "todo" for r in plan["stages"])


def test_other_data_is_one_line(tmp_path):
    from test_more_data import write_png_folders

    write_png_folders(tmp_path / "folder", ["a", "b"], per_class=2, size=8)
    code, _, err = run_cli("reproduce", "--preset", "restricted-imagenet", "--data", str(tmp_path / "folder"),
                           "--out", str(tmp_path / "out"), "--device", "cpu", "--dry-run")
    assert code == 2 and "needs restricted-imagenet data" in err and len(err.strip().splitlines()) == 1, err


def test_one_stage_runs_on_the_tiny_folder(imagenet, tmp_path):
    """train-standard@0 of the preset, its epochs cut to 2 (150 is GPU work)."""
    from advfeat.checkpoint import load_model
    from advfeat.reproduce import prepare

    preset = tiny(get_preset("restricted-imagenet"))
    preset = dataclasses.replace(preset, standard=dataclasses.replace(preset.standard, epochs=2))
    pipeline, _, _ = prepare(preset, str(imagenet), tmp_path / "out", device="cpu", log=lambda m: None)
    pipeline.run("train-standard@0")
    model, card = load_model(pipeline.folder("train-standard@0") / "model")
    assert card["arch"] == "resnet50_imagenet" and card["num_classes"] == 9 and card["input_size"] == [3, 8, 8]
    assert card["data"]["format"] == "restricted-imagenet" and card["epochs_done"] == 2
    assert model.head.out_features == 9 and model.mean.flatten().tolist() == pytest.approx([0.4717, 0.4499, 0.3837])


# --------------------------------------------------------------------------- chance from the data


def evidence(accuracy: dict, num_classes: int, n: int = 200) -> Evidence:
    """Per-image correctness with exactly the given accuracy per model (one seed)."""
    correct = {}
    for model, acc in accuracy.items():
        row = np.zeros((1, n), bool)
        row[0, : round(acc * n)] = True
        correct[(model, "clean")] = row
    return Evidence(correct, num_classes=num_classes)


@pytest.mark.parametrize("num_classes", [9, 10, 100])
def test_chance_is_one_over_the_classes(num_classes):
    ev = evidence({"rand": 0.40, "det": 0.30}, num_classes)
    det = d_det_rules(ev, n_boot=200)[0]
    rand = d_rand_rules(ev, n_boot=200)[0]
    assert det.effect == pytest.approx(0.30 - 1 / num_classes) and rand.effect == pytest.approx(0.40 - 1 / num_classes)
    assert det.part == f"clean acc. (D_det) - chance ({100 / num_classes:.3g}%)"
    if num_classes == 10:  # CIFAR-10's wording is unchanged
        assert det.part == "clean acc. (D_det) - chance (10%)"


def test_outcomes_take_the_class_count_from_the_evaluations():
    ev = {"n": 2, "clean_accuracy": 0.5, "correct": [1, 0], "main": {"robust": []}}
    assert num_classes_of({"standard": {0: ev}}) == 10  # results from before the field: CIFAR-10
    assert Outcomes({"standard": {0: ev | {"num_classes": 9}}}, {}).chance == pytest.approx(1 / 9)
    with pytest.raises(ValueError, match="different class counts"):
        num_classes_of({"standard": {0: ev | {"num_classes": 9}}, "r": {0: ev}})


def test_rates_are_timed_at_each_architecture_s_own_size(monkeypatch):
    from advfeat import throughput

    sides = []
    real = throughput._random_batch
    monkeypatch.setattr(throughput, "_random_batch", lambda b, d, side=32: sides.append(side) or real(2, d, 8))
    throughput.measure_attack_rate("tiny", 2, torch.device("cpu"), steps=1)
    throughput.measure_attack_rate("resnet18_imagenet", 2, torch.device("cpu"), steps=1)
    assert sides == [32, 224]
