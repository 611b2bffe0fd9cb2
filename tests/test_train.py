"""Training and evaluation from the CLI on real data: learning, exact resume, kill -9, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from advfeat.checkpoint import load_model
from advfeat.data import load_dataset
from advfeat.training import TrainConfig, train

from conftest import run_cli


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.slow
def test_training_on_real_data_beats_chance_by_far(shared_data, tmp_path):
    out = tmp_path / "model"
    code, stdout, stderr = run_cli("train", "--data", str(shared_data), "--arch", "tiny", "--epochs", "4",
                                   "--schedule", "onecycle", "--lr", "0.2", "--subset", "5000",
                                   "--test-subset", "2000", "--out", str(out), "--quiet")
    assert code == 0, stderr
    card = json.loads((out / "card.json").read_text())
    assert card["metrics"]["test_accuracy"] > 0.35, card["metrics"]  # chance is 0.10
    assert card["data"]["digest"] and card["torch_version"] == torch.__version__
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and history[-1]["train_loss"] < history[0]["train_loss"]
    code, stdout, _ = run_cli("eval", "--model", str(out), "--data", str(shared_data), "--test-subset", "2000",
                              "--out", str(tmp_path / "eval.json"), "--quiet")
    assert code == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert abs(result["clean"]["accuracy"] - card["metrics"]["test_accuracy"]) < 1e-9
    assert len(result["clean"]["per_class"]) == 10


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(shared_data, tmp_path):
    data = load_dataset(shared_data, subset=600, test_subset=100)
    config = dict(arch="tiny", batch_size=64, seed=5)
    train(TrainConfig(epochs=3, **config), data, tmp_path / "straight", device=torch.device("cpu"), progress=False)
    # Interrupted after one epoch (a run asked for 3 epochs, stopped), then resumed.
    train(TrainConfig(epochs=1, lr_milestones=[1, 2], **config), data, tmp_path / "resumed",
          device=torch.device("cpu"), progress=False)
    train(TrainConfig(epochs=3, **config), data, tmp_path / "resumed", device=torch.device("cpu"), resume=True,
          progress=False)
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    history = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


@pytest.mark.slow
def test_kill_minus_9_then_resume_loses_nothing(shared_data, tmp_path):
    args = ["train", "--data", str(shared_data), "--arch", "tiny", "--epochs", "4", "--subset", "2000",
            "--test-subset", "200", "--batch-size", "64", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "advfeat"]
    subprocess.run(cmd + args + ["--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)
    victim = subprocess.Popen(cmd + args + ["--out", str(tmp_path / "killed")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"epoch": 2' in metrics.read_text()):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = len(json.loads(metrics.read_text())["epochs"])
    assert done < 4, "killed too late to test anything"
    # Whatever instant the kill hit, the folder holds complete files only.
    assert not list((tmp_path / "killed").glob(".*.tmp"))
    load_model(tmp_path / "killed")
    resumed = subprocess.run(cmd + args + ["--out", str(tmp_path / "killed"), "--resume"], env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "straight", tmp_path / "killed")


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "tiny"
    code, _, stderr = run_cli("train", "--data", str(shared_data), "--arch", "tiny", "--epochs", "1",
                              "--subset", "200", "--test-subset", "100", "--out", str(out), "--quiet")
    assert code == 0, stderr
    return out


def one_line_error(code: int, stderr: str, needle: str) -> None:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("advfeat: error:") and needle in lines[0], stderr


def test_existing_out_is_never_overwritten(trained, shared_data):
    before = (trained / "model.safetensors").read_bytes()
    code, _, stderr = run_cli("train", "--data", str(shared_data), "--arch", "tiny", "--epochs", "1",
                              "--subset", "100", "--out", str(trained), "--quiet")
    one_line_error(code, stderr, "already exists")
    assert (trained / "model.safetensors").read_bytes() == before


def test_resume_with_other_settings_is_refused(trained, shared_data):
    code, _, stderr = run_cli("train", "--data", str(shared_data), "--arch", "tiny", "--epochs", "2", "--lr", "0.5",
                              "--subset", "200", "--test-subset", "100", "--out", str(trained), "--resume", "--quiet")
    one_line_error(code, stderr, "settings differ")


@pytest.mark.parametrize("case", ["unknown-arch", "missing-data", "negative-eps", "zero-epochs", "bad-device",
                                  "nothing-to-resume"])
def test_bad_training_input(case, shared_data, tmp_path):
    base = ["train", "--data", str(shared_data), "--arch", "tiny", "--epochs", "1", "--subset", "100",
            "--out", str(tmp_path / "m"), "--quiet"]
    edits = {
        "unknown-arch": (["--arch", "resnet51"], "unknown model"),
        "missing-data": (["--data", str(tmp_path / "nope")], "does not exist"),
        "negative-eps": (["--adv", "l2", "--eps", "-0.5"], "eps must be >= 0"),
        "zero-epochs": (["--epochs", "0"], "--epochs: must be at least 1"),
        "bad-device": (["--device", "cuda:7"], "cuda"),
        "nothing-to-resume": (["--resume"], "nothing to resume"),
    }
    extra, needle = edits[case]
    code, _, stderr = run_cli(*base, *extra)
    one_line_error(code, stderr, needle)
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_corrupt_and_mismatched_checkpoints(trained, shared_data, tmp_path):
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(trained, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, _, stderr = run_cli("eval", "--model", str(corrupt), "--data", str(shared_data), "--quiet")
    one_line_error(code, stderr, "corrupt")

    # Weights of `tiny` under a card that claims `small`.
    from advfeat.checkpoint import save_tensors

    mismatched = tmp_path / "mismatched"
    shutil.copytree(trained, mismatched)
    card = json.loads((trained / "card.json").read_text()) | {"arch": "small"}
    save_tensors(mismatched / "model.safetensors", weights(trained), {"card": card})
    code, _, stderr = run_cli("eval", "--model", str(mismatched), "--data", str(shared_data), "--quiet")
    one_line_error(code, stderr, "do not match arch 'small'")

    code, _, stderr = run_cli("eval", "--model", str(tmp_path / "absent"), "--data", str(shared_data))
    one_line_error(code, stderr, "does not exist")


def test_eval_refuses_to_overwrite_results(trained, shared_data, tmp_path):
    out = tmp_path / "eval.json"
    out.write_text("{}")
    code, _, stderr = run_cli("eval", "--model", str(trained), "--data", str(shared_data), "--out", str(out))
    one_line_error(code, stderr, "already exists")
    assert out.read_text() == "{}"


def test_usage_errors_are_one_line_exit_2():
    code, _, stderr = run_cli("train", "--epochs", "three")
    one_line_error(code, stderr, "invalid int value")
