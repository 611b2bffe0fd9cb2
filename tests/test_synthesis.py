"""Synthesis: labels, norms, success, inversion quality, determinism across workers and batch
sizes, resume after kill -9, reading datasets back (ours and the authors'), bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from advfeat.pipelines import load_dataset
from advfeat.synthesis import sample_plan

from conftest import run_cli


def test_plan_labels_det_rand_and_start_images():
    labels = np.random.default_rng(0).integers(0, 10, 20000)
    det = sample_plan("det", labels, 10, seed=0)
    assert (det["new_labels"] == (labels + 1) % 10).all()
    rand = sample_plan("rand", labels, 10, seed=0)
    assert (rand["target"] != labels).all()
    # Roughly uniform over the nine other classes: chi-square with 8 dof well below 40.
    offsets = (rand["target"] - labels) % 10
    counts = np.bincount(offsets, minlength=10)[1:]
    chi2 = ((counts - counts.mean()) ** 2 / counts.mean()).sum()
    assert chi2 < 40, counts
    inv = sample_plan("r", labels, 10, seed=0)
    assert (inv["start_index"] != np.arange(len(labels))).all() and inv["start_index"].max() < len(labels)
    assert (inv["new_labels"] == labels).all()
    again = sample_plan("rand", labels, 10, seed=0)["target"]
    other = sample_plan("rand", labels, 10, seed=1)["target"]
    assert (again == rand["target"]).all() and not (other == rand["target"]).all()


@pytest.fixture(scope="module")
def standard_model(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "std"
    code, _, err = run_cli("train", "--data", str(shared_data), "--arch", "tiny", "--epochs", "3", "--subset", "4000",
                           "--test-subset", "200", "--schedule", "onecycle", "--lr", "0.2", "--out", str(out),
                           "--quiet")
    assert code == 0, err
    return out


def synth(tmp_path, name, *args):
    out = tmp_path / name
    code, stdout, err = run_cli("synth", *args, "--out", str(out), "--quiet")
    assert code == 0, err
    return out, json.loads((out / "dataset.json").read_text()), err


def shards(folder):
    return [load_file(str(p)) for p in sorted(folder.glob("shard-*.safetensors"))]


@pytest.mark.parametrize("kind", ["det", "rand"])
def test_targeted_kinds(kind, standard_model, shared_data, tmp_path):
    out, card, _ = synth(tmp_path, kind, "--kind", kind, "--model", str(standard_model), "--data", str(shared_data),
                         "--subset", "300", "--steps", "20", "--eps", "4.0", "--step-size", "0.4",
                         "--storage", "float32")  # a 40%-accurate tiny net needs a larger eps than ResNet-50
    source = load_dataset(shared_data, subset=300)
    parts = shards(out)
    labels = np.concatenate([p["labels"] for p in parts])
    index = np.concatenate([p["position"] for p in parts])
    np.testing.assert_array_equal(np.concatenate([p["source_index"] for p in parts]), source.train.source_index[index])
    y = source.train.labels[index]
    if kind == "det":
        assert (labels == (y + 1) % 10).all()
    else:
        assert (labels != y).all()
    images = np.concatenate([p["images"] for p in parts])
    x = source.train.images[index].astype(np.float32) / 255
    norms = np.linalg.norm((images - x).reshape(len(x), -1), axis=1)
    assert norms.max() <= 4.0 + 1e-5 and images.min() >= 0 and images.max() <= 1
    assert card["stats"]["target_success"] > 0.8, card["stats"]  # chance is about 0.1
    assert card["stats"]["stored_success"] == card["stats"]["target_success"]  # float32: nothing rounded
    # The dataset reads back through --data, with the real test split.
    back = load_dataset(out)
    assert len(back.train) == 300 and len(back.test) == 10000
    np.testing.assert_array_equal(back.train.labels, labels)


def test_inversion_matches_features_and_keeps_labels(standard_model, shared_data, tmp_path):
    out, card, _ = synth(tmp_path, "nr", "--kind", "nr", "--model", str(standard_model), "--data",
                         str(shared_data), "--subset", "100", "--steps", "60", "--storage", "uint8")
    stats = card["stats"]
    assert stats["initial_distance"]["mean"] > 3 * stats["final_distance"]["mean"], stats
    assert stats["stored_distance"]["mean"] < stats["initial_distance"]["mean"] / 2  # survives uint8 rounding
    parts = shards(out)
    assert parts[0]["images"].dtype == np.uint8
    source = load_dataset(shared_data, subset=100)
    index = np.concatenate([p["position"] for p in parts])
    np.testing.assert_array_equal(np.concatenate([p["labels"] for p in parts]), source.train.labels[index])
    starts = np.concatenate([p["start_index"] for p in parts])
    assert (starts != index).all()
    # Matching the penultimate features reproduces the model's prediction on x, not on the
    # start image x0 it began from.
    from advfeat.checkpoint import load_model
    from advfeat.evaluation import predict_tensor

    model, _ = load_model(standard_model)
    as_float = lambda a: torch.from_numpy(a).float() / 255  # noqa: E731
    pred_z = predict_tensor(model, as_float(np.concatenate([p["images"] for p in parts])), 500)
    pred_x = predict_tensor(model, as_float(source.train.images[index]), 500)
    pred_x0 = predict_tensor(model, as_float(source.train.images[starts]), 500)
    differ = pred_x != pred_x0
    assert (pred_z == pred_x).float().mean() > 0.8
    assert (pred_z[differ] == pred_x[differ]).float().mean() > 0.7


def test_same_dataset_for_any_worker_count_and_batch_size(standard_model, shared_data, tmp_path):
    common = ["--kind", "rand", "--model", str(standard_model), "--data", str(shared_data), "--subset", "240",
              "--steps", "8", "--shard-size", "60"]
    one, card_one, _ = synth(tmp_path, "one", *common, "--batch-size", "240")
    two, card_two, _ = synth(tmp_path, "two", *common, "--batch-size", "25", "--gpus", "2", "--device", "cpu")
    assert card_two["workers"] == 2 and card_one["shards"] == card_two["shards"] == 4
    for a, b in zip(shards(one), shards(two)):
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_allclose(a["images"].astype(np.float32), b["images"].astype(np.float32), atol=1e-3)


@pytest.mark.slow
def test_kill_minus_9_then_rerun_resumes_and_gives_the_same_dataset(standard_model, shared_data, tmp_path):
    args = ["synth", "--kind", "det", "--model", str(standard_model), "--data", str(shared_data), "--subset", "600",
            "--steps", "40", "--shard-size", "100", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "advfeat"]
    subprocess.run(cmd + args + ["--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)
    victim = subprocess.Popen(cmd + args + ["--out", str(tmp_path / "killed")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "killed").glob("shard-*.safetensors"))) < 2:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = sorted(p.name for p in (tmp_path / "killed").glob("shard-*.safetensors"))
    assert 0 < len(done) < 6, done
    assert not (tmp_path / "killed" / "dataset.json").exists()
    before = {name: (tmp_path / "killed" / name).stat().st_mtime_ns for name in done}
    rerun = subprocess.run(cmd + args + ["--out", str(tmp_path / "killed")], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    for name, mtime in before.items():  # finished shards were skipped, not redone
        assert (tmp_path / "killed" / name).stat().st_mtime_ns == mtime
    for a, b in zip(shards(tmp_path / "straight"), shards(tmp_path / "killed")):
        for key in ("images", "labels", "source_index", "position", "target_success"):
            np.testing.assert_array_equal(a[key], b[key])


def test_reads_the_authors_release_format(tmp_path, formats):
    folder = tmp_path / "ddet_CIFAR"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 32, 32, generator=g)
    labels = torch.arange(12) % 10
    torch.save([images[:5], images[5:]], folder / "CIFAR_ims")  # a list of batches, as released
    torch.save([labels[:5], labels[5:]], folder / "CIFAR_lab")
    dataset = load_dataset(folder, test_data=formats["python-folder"])
    assert dataset.source["format"] == "authors-release"
    np.testing.assert_allclose(dataset.train.images, images.numpy())
    np.testing.assert_array_equal(dataset.train.labels, labels.numpy())
    assert len(dataset.test) == 20  # the real test split of the fixture
    code, _, err = run_cli("train", "--data", str(folder), "--arch", "tiny", "--epochs", "1", "--out",
                           str(tmp_path / "m"), "--quiet")
    assert code == 2 and "--test-data" in err
    code, out, err = run_cli("train", "--data", str(folder), "--test-data", str(formats["python-folder"]), "--arch",
                             "tiny", "--epochs", "1", "--out", str(tmp_path / "m"), "--quiet")
    assert code == 0 and "test accuracy" in out, err


def test_bad_synthesis_input(standard_model, shared_data, tmp_path):
    base = ["synth", "--model", str(standard_model), "--data", str(shared_data), "--subset", "50", "--steps", "2",
            "--quiet"]
    out = tmp_path / "d"
    code, _, err = run_cli(*base, "--kind", "det", "--out", str(out))
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(*base, "--kind", "rand", "--out", str(out))  # a different run in the same folder
    assert code == 2 and "different synthesis run" in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "nothing lost"
    for extra, needle in ((["--kind", "dr"], "invalid choice"), (["--kind", "det", "--eps", "-1"], "eps must be"),
                          (["--kind", "det", "--gpus", "0"], "--gpus must be at least 1")):
        code, _, err = run_cli(*base, *extra, "--out", str(tmp_path / "x"))
        assert code == 2 and needle in err, err
    # A standard model for D_R is allowed, with a warning.
    code, _, err = run_cli(*base, "--kind", "r", "--out", str(tmp_path / "r"))
    assert code == 0 and "warning" in err and "robust" in err, err


def test_model_with_other_classes_is_refused(standard_model, shared_data, tmp_path):
    from advfeat.checkpoint import load_model, save_model
    from advfeat.models import create_model

    _, card = load_model(standard_model)
    seven = tmp_path / "seven"
    save_model(seven, create_model("tiny", num_classes=7), card | {"num_classes": 7})
    code, _, err = run_cli("synth", "--kind", "det", "--model", str(seven), "--data", str(shared_data), "--subset",
                           "20", "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2 and "7 classes" in err, err
