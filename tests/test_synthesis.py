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

from advfeat.data import load_dataset
from advfeat.settings import SynthSettings
from advfeat.synthesis import sample_plan
from advfeat.synthesis.draws import noise_starts

from conftest import run_cli


def _chi2(counts: np.ndarray) -> float:
    return float(((counts - counts.mean()) ** 2 / counts.mean()).sum())


def test_plan_labels_det_rand_and_start_images():
    labels = np.random.default_rng(0).integers(0, 10, 20000)
    plan = lambda kind, seed=0, **kw: sample_plan(SynthSettings.of(kind, seed=seed, **kw), labels, 10)  # noqa: E731
    det = plan("det")
    assert (det["new_labels"] == (labels + 1) % 10).all()
    # The paper's D_rand: t uniform over all ten classes, so t = y about a tenth of the time
    # and t - y uniform over 0..9 (chi-square with 9 dof well below 40).
    rand = plan("rand")
    offsets = (rand["target"] - labels) % 10
    assert 0.08 < (offsets == 0).mean() < 0.12 and _chi2(np.bincount(offsets, minlength=10)) < 40
    other = plan("rand", targets="other")
    assert (other["target"] != labels).all()
    assert _chi2(np.bincount((other["target"] - labels) % 10, minlength=10)[1:]) < 40
    inv = plan("r")
    assert (inv["start_index"] != np.arange(len(labels))).all() and inv["start_index"].max() < len(labels)
    assert (inv["new_labels"] == labels).all()
    assert (plan("nr")["start_index"] == inv["start_index"]).all(), "D_R and D_NR start from the same images"
    assert "start_index" not in plan("r", start="noise")
    again, reseeded = plan("rand")["target"], plan("rand", seed=1)["target"]
    assert (again == rand["target"]).all() and not (reseeded == rand["target"]).all()


def test_noise_starts_are_the_authors_and_do_not_depend_on_the_shard_layout():
    whole = noise_starts(3, range(0, 10), (3, 32, 32))
    halves = np.concatenate([noise_starts(3, range(0, 4), (3, 32, 32)), noise_starts(3, range(4, 10), (3, 32, 32))])
    np.testing.assert_array_equal(whole, halves)
    assert whole.min() >= 0 and whole.max() <= 1
    assert abs(whole.mean() - 0.5) < 0.01 and abs(whole.std() - 0.05) < 0.005  # N(0.5, (1/20)^2), clamped
    assert not np.array_equal(noise_starts(4, range(0, 10), (3, 32, 32)), whole)


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
    np.testing.assert_array_equal(np.concatenate([p["orig_labels"] for p in parts]), y)
    if kind == "det":
        assert (labels == (y + 1) % 10).all()
    else:
        assert 0 < (labels == y).mean() < 0.25 and card["settings"]["targets"] == "uniform"
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


def test_linf_targeted_dataset_stays_in_the_box(standard_model, shared_data, tmp_path):
    eps = 16 / 255
    out, card, _ = synth(tmp_path, "det-linf", "--kind", "det", "--norm", "linf", "--model", str(standard_model),
                         "--data", str(shared_data), "--subset", "100", "--steps", "10", "--eps", str(eps),
                         "--step-size", str(4 / 255), "--storage", "float32")
    source = load_dataset(shared_data, subset=100)
    parts = shards(out)
    index = np.concatenate([p["position"] for p in parts])
    delta = np.concatenate([p["images"] for p in parts]) - source.train.images[index].astype(np.float32) / 255
    assert np.abs(delta).max() <= eps + 1e-6 and np.abs(delta).max() > eps / 2
    assert card["settings"]["norm"] == "linf" and card["stats"]["perturbation_norm"]["max"] <= eps + 1e-6
    assert card["stats"]["target_success"] > 0.3, card["stats"]


def test_inversion_from_noise_and_fake_relu_are_recorded(standard_model, shared_data, tmp_path):
    out, card, _ = synth(tmp_path, "r-noise", "--kind", "nr", "--start", "noise", "--model", str(standard_model),
                         "--data", str(shared_data), "--subset", "50", "--steps", "30")
    assert card["settings"]["start"] == "noise" and card["settings"]["fake_relu"] is True
    assert "start_index" not in shards(out)[0]
    stats = card["stats"]
    assert stats["final_distance"]["mean"] < stats["initial_distance"]["mean"] / 2, stats
    _, plain, _ = synth(tmp_path, "r-relu", "--kind", "nr", "--no-fake-relu", "--model", str(standard_model),
                        "--data", str(shared_data), "--subset", "50", "--steps", "30")
    assert plain["settings"]["fake_relu"] is False


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
            "--steps", "20", "--shard-size", "100", "--quiet"]
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


def test_appendix_d6_from_eval_and_old_datasets_still_load(standard_model, shared_data, tmp_path):
    from safetensors.numpy import save_file

    out, _, _ = synth(tmp_path, "det", "--kind", "det", "--model", str(standard_model), "--data", str(shared_data),
                      "--subset", "200", "--steps", "5", "--eps", "2.0", "--step-size", "0.5")
    code, _, err = run_cli("train", "--data", str(out), "--arch", "tiny", "--epochs", "1", "--test-subset", "100",
                           "--out", str(tmp_path / "on-det"), "--quiet")
    assert code == 0, err
    code, stdout, err = run_cli("eval", "--model", str(tmp_path / "on-det"), "--test-subset", "100", "--out",
                                str(tmp_path / "e.json"), "--quiet")
    assert code == 0 and "Appendix D.6" in stdout, err
    d6 = json.loads((tmp_path / "e.json").read_text())["appendix_d6"]
    assert d6["label_shift"] == 1 and 0 <= d6["shifted_accuracy"] <= 1
    # A dataset written before orig_labels existed: it still loads and trains; D.6 says why it skips.
    for shard in out.glob("shard-*.safetensors"):
        arrays = {k: v for k, v in load_file(str(shard)).items() if k != "orig_labels"}
        save_file(arrays, str(shard))
    assert len(load_dataset(out).train) == 200
    code, stdout, err = run_cli("eval", "--model", str(tmp_path / "on-det"), "--test-subset", "100", "--quiet")
    assert code == 0 and "Appendix D.6 skipped" in stdout and "orig_labels" in stdout, err


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
    for extra, needle in ((["--kind", "r", "--norm", "linf"], "L2 only"), (["--kind", "rand", "--targets", "all"],
                                                                          "invalid choice")):
        code, _, err = run_cli(*base, *extra, "--out", str(tmp_path / "x"))
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
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
