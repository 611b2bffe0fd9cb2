"""AutoAttack's versions (fast, standard, plus) and resumable evaluation: the standard version is
never weaker than the fast one, per-example records name the stage that broke each example, a
kill -9 in the middle of `advfeat eval` resumes to the results of an uninterrupted run bit for
bit, and a state file from another model or settings is refused (one line, exit 2, untouched)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from advfeat.attacks.autoattack import VERSIONS, autoattack, autoattack_accuracy
from advfeat.errors import UserError
from advfeat.models import create_model
from advfeat.settings import AUTOATTACK_VERSIONS

from conftest import REPO, run_cli


@pytest.fixture(scope="module")
def self_labelled():
    """A random tiny net and random images labelled with its own predictions: every example is
    correctly classified, so every stage has work, at no training cost."""
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    x = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_the_versions_are_the_settings_choices():
    assert tuple(VERSIONS) == AUTOATTACK_VERSIONS
    assert VERSIONS["standard"] == ("apgd-ce", "apgd-t", "fab-t", "square")


def test_standard_is_never_weaker_than_fast_and_records_its_stages(self_labelled):
    """The standard version runs the fast version's stages first, with the same random numbers,
    then FAB-T and Square on what is left: its robust set is a subset of the fast one's."""
    model, x, y = self_labelled
    common = dict(norm="linf", n_iter=5, n_target_classes=2, square_queries=30, batch_size=8, checkpoint_every=1)
    eps = [1 / 255, 1.5 / 255]
    fast = autoattack_accuracy(model, x, y, eps, version="fast", **common)
    standard = autoattack_accuracy(model, x, y, eps, version="standard", **common)
    assert standard["attack"]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert fast["attack"]["attacks"] == ["apgd-ce", "apgd-t"] and fast["attack"]["version"] == "fast"
    # At the first eps both draw the same random numbers for the same examples: the same
    # examples fall to the same first two stages, at the same iteration.
    first_fast, first_standard = fast["robust"][0], standard["robust"][0]
    assert set(first_standard["robust_index"]) <= set(first_fast["robust_index"])
    for rf, rs in zip(first_fast["per_example"], first_standard["per_example"]):
        if rf is not None:
            assert rs == rf
    for f, s in zip(fast["robust"], standard["robust"]):
        # Later eps attack different survivors (random starts differ): worst case per set.
        assert s["accuracy"] <= f["accuracy"]
        assert 0 < s["accuracy"] < 1  # something broke and something held: the comparison says something
        for i, record in enumerate(s["per_example"]):
            assert (record is None) == (i in s["robust_index"])
            assert record is None or record[0] in standard["attack"]["attacks"]
        assert sum(s["broken_by"].values()) == s["attacked"] - len(s["robust_index"])
        assert [st["attack"] for st in s["stages"]] == standard["attack"]["attacks"]


def test_one_eps_call_reports_the_version_and_fab_t_targets(self_labelled):
    model, x, y = self_labelled
    result = autoattack(model, x, y, norm="l2", eps=0.25, n_iter=5, n_target_classes=3, square_queries=20,
                        version="standard", generator=torch.Generator().manual_seed(0))
    assert result["version"] == "standard" and [s["attack"] for s in result["stages"]] == result["attacks"]
    for record in result["records"]:
        if record["attack"] in ("apgd-t", "fab-t"):
            assert record["target"] is not None
    broken = ~result["robust"]
    size = (result["x_adv"] - x).flatten(1).norm(dim=1)
    assert (size[broken] <= 0.25 + 1e-5).all()
    with torch.no_grad():
        assert torch.equal(model(result["x_adv"]).argmax(1) != y, broken)


def test_resume_from_a_state_file_skips_done_chunks_and_gives_the_same_records(self_labelled, tmp_path):
    model, x, y = self_labelled
    common = dict(norm="l2", version="fast", n_iter=5, n_target_classes=2, batch_size=8, checkpoint_every=1)
    whole = autoattack_accuracy(model, x, y, [0.25], **common)
    state = tmp_path / "s.json"
    autoattack_accuracy(model, x[:16], y[:16], [0.25], state_path=state, **common)  # another data set
    with pytest.raises(UserError, match="different data"):
        autoattack_accuracy(model, x, y, [0.25], state_path=state, **common)
    state.unlink()
    autoattack_accuracy(model, x, y, [0.25], state_path=state, **common)
    saved = json.loads(state.read_text())
    assert sorted(saved["chunks"]) == ["0", "1", "2"]
    del saved["chunks"]["2"]  # as if killed before the last chunk
    state.write_text(json.dumps(saved))
    resumed = autoattack_accuracy(model, x, y, [0.25], state_path=state, **common)
    assert resumed["robust"][0]["per_example"] == whole["robust"][0]["per_example"]


def _eval_args(model_dir, data, out, *extra):
    return ["eval", "--model", str(model_dir), "--data", str(data), "--test-subset", "200", "--attack",
            "autoattack-linf", "--eps", "0.0005", "--steps", "20", "--target-classes", "3", "--batch-size", "8",
            "--checkpoint-every", "1", "--out", str(out), "--quiet", *extra]


def _without_timing(result: dict) -> dict:
    """The results with wall-clock fields dropped: those differ between any two runs."""
    timing = {"seconds", "images_per_s", "image_steps_per_s"}

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in timing}
        return [strip(v) for v in value] if isinstance(value, list) else value
    return strip(result)


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory, shared_data):
    """A random tiny net's folder; the test images decoded into the session's cache first, so
    that the subprocesses only read it."""
    from advfeat.checkpoint import save_model
    from advfeat.data import load_dataset

    load_dataset(shared_data, test_subset=200, seed=0, verbose=False)

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("random-tiny")
    save_model(folder, create_model("tiny").eval(), {"arch": "tiny", "num_classes": 10})
    return folder


def _advfeat(*args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "advfeat", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_after_first_chunk(model_dir, data, out):
    """Start `advfeat eval` and kill -9 it once its state file exists; returns the state file."""
    victim = _advfeat(*_eval_args(model_dir, data, out))
    state = out.with_name(out.name + ".state.json")
    deadline = time.monotonic() + 120
    while not state.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert state.exists() and not out.exists(), victim.stderr.read()
    return state


def test_kill_9_then_resume_gives_the_uninterrupted_results(random_model_dir, shared_data, tmp_path):
    whole_out, killed_out = tmp_path / "whole.json", tmp_path / "killed.json"
    whole = _advfeat(*_eval_args(random_model_dir, shared_data, whole_out))
    state = _kill_after_first_chunk(random_model_dir, shared_data, killed_out)
    done = len(json.loads(state.read_text())["chunks"])
    assert 1 <= done < 25  # 200 images in chunks of 8: killed in the middle
    code, _, err = run_cli(*_eval_args(random_model_dir, shared_data, killed_out))
    assert code == 0, err
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    assert not state.exists()  # the results are in --out now
    resumed, uninterrupted = json.loads(killed_out.read_text()), json.loads(whole_out.read_text())
    assert resumed["attack"]["robust"][0]["attacked"] > 0
    assert _without_timing(resumed) == _without_timing(uninterrupted)


def test_a_state_file_from_another_model_is_refused_and_left_alone(random_model_dir, shared_data, tmp_path):
    from advfeat.checkpoint import save_model

    torch.manual_seed(2)
    other = tmp_path / "other"
    save_model(other, create_model("tiny").eval(), {"arch": "tiny", "num_classes": 10})
    out = tmp_path / "e.json"
    state = _kill_after_first_chunk(other, shared_data, out)
    before = state.read_bytes()
    code, _, err = run_cli(*_eval_args(random_model_dir, shared_data, out))
    assert code == 2 and "different model" in err and len(err.strip().splitlines()) == 1, err
    assert state.read_bytes() == before and not out.exists()


@pytest.mark.parametrize("args,needle", [
    (["--attack", "autoattack", "--version", "rand"], "invalid choice: 'rand'"),
    (["--attack", "autoattack", "--checkpoint-every", "0"], "must be at least 1"),
])
def test_bad_version_input_from_the_cli(args, needle, tmp_path, shared_data):
    code, _, stderr = run_cli("eval", "--model", str(tmp_path), "--data", str(shared_data), *args)
    assert code == 2 and needle in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_unknown_version_from_the_api_is_one_line(self_labelled):
    model, x, y = self_labelled
    with pytest.raises(UserError, match="unknown AutoAttack version 'rand'") as error:
        autoattack_accuracy(model, x, y, [0.1], norm="l2", version="rand")
    assert len(str(error.value).splitlines()) == 1
