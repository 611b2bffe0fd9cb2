"""A reduced smoke reproduction: every stage runs, a crash resumes without recomputing
finished stages, a rerun recomputes nothing, and the report has every row with a number."""

from __future__ import annotations

import dataclasses
import json

import pytest

import advfeat.reproduce as reproduce_module
from advfeat.presets import SMOKE_PRESET, get_preset
from advfeat.report import ROWS
from advfeat.errors import UserError

from conftest import run_cli


def reduced_preset():
    fast_train = dict(epochs=1, lr=0.2, batch_size=100, schedule="onecycle")
    return dataclasses.replace(
        SMOKE_PRESET, subset=300, test_subset=100,
        standard=fast_train, robust=dict(fast_train, adv="l2", eps=0.5, attack_steps=2, attack_step_size=0.25),
        synth={k: dict(v, steps=3, shard_size=150) for k, v in SMOKE_PRESET.synth.items()},
        train_on={k: dict(v, epochs=1, batch_size=100) for k, v in SMOKE_PRESET.train_on.items()},
        attack=dict(name="pgd-l2", steps=2), strong_attack=dict(name="pgd-l2", steps=3, restarts=2),
        cw_attack=dict(name="cw-l2", steps=5, cw_binary_steps=2), strong_subset=40,
        transfer_archs=["tiny"], transfer_train=fast_train, transfer_images=100)


def test_reduced_smoke_pipeline_runs_resumes_and_reports(shared_data, tmp_path, monkeypatch):
    preset, out = reduced_preset(), tmp_path / "repro"
    quiet = lambda message: None  # noqa: E731

    # 1. Crash in the middle of the evaluations.
    real = reproduce_module.robust_accuracy
    calls = []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(reproduce_module, "robust_accuracy", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        reproduce_module.reproduce(preset, str(shared_data), out, log=quiet)
    monkeypatch.setattr(reproduce_module, "robust_accuracy", real)
    assert not (out / "report.md").exists()

    # 2. The rerun reuses everything that had finished, and completes.
    first = reproduce_module.reproduce(preset, str(shared_data), out, log=quiet)
    reused = {s["name"] for s in first["stages"] if s["cached"]}
    assert {"train-standard", "train-robust", "synth-r", "synth-nr", "synth-rand", "synth-det",
            "train-on-r", "train-on-nr", "train-on-rand", "train-on-det", "eval-standard", "eval-strong-standard",
            "eval-cw-standard"} <= reused
    assert "eval-robust" not in reused  # the stage that crashed ran again

    # 3. A third run recomputes nothing and reports the same numbers.
    second = reproduce_module.reproduce(preset, str(shared_data), out, log=quiet)
    assert all(s["cached"] for s in second["stages"])
    assert second["rows"] == first["rows"]

    # The report: every row, each with a number.
    report = json.loads((out / "report.json").read_text())
    assert [r["key"] for r in report["rows"]] == [key for key, _ in ROWS]
    for row in report["rows"]:
        for column in ("clean", "robust@0.25", "robust@0.5", "subset_robust@0.25", "strong_robust@0.25",
                       "cw_robust@0.25", "worst_robust@0.25"):
            assert isinstance(row[column], float) and 0 <= row[column] <= 1, (row["key"], column)
        # An image survives the worst case only if it survived every attack.
        assert row["worst_robust@0.25"] <= min(row["subset_robust@0.25"], row["strong_robust@0.25"],
                                               row["cw_robust@0.25"]) + 1e-6  # accuracies are float32 means
    text = (out / "report.md").read_text()
    for _, label in ROWS:
        line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        assert any(cell.strip().replace(".", "").isdigit() for cell in line.split("|")[2:])
    for figure in ("inversion.png", "targeted.png", "figure2b.png", "figure3.png"):
        assert (out / "figures" / figure).stat().st_size > 1000
    assert "theory" in text.lower() or "Gaussian" in text
    assert report["transfer"][0]["arch"] == "tiny"


def test_changing_a_setting_reruns_only_what_depends_on_it(shared_data, tmp_path):
    preset, out = reduced_preset(), tmp_path / "repro"
    quiet = lambda message: None  # noqa: E731
    reproduce_module.reproduce(preset, str(shared_data), out, log=quiet)
    changed = dataclasses.replace(preset, synth=dict(preset.synth, det=dict(preset.synth["det"], steps=4)))
    report = reproduce_module.reproduce(changed, str(shared_data), out, log=quiet)
    ran = {s["name"] for s in report["stages"] if not s["cached"]}
    assert "synth-det" in ran and "train-on-det" in ran and "eval-det" in ran
    assert not ran & {"train-standard", "train-robust", "synth-r", "synth-nr", "synth-rand", "train-on-r",
                      "eval-standard", "eval-r"}


def test_bad_reproduce_input(tmp_path):
    with pytest.raises(UserError, match="unknown preset"):
        get_preset("huge")
    code, _, err = run_cli("reproduce", "--preset", "fast", "--out", str(tmp_path / "o"),
                           "--data", str(tmp_path / "missing"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs a GPU" in err or "does not exist" in err
    code, _, err = run_cli("reproduce", "--preset", "smoke", "--out", str(tmp_path / "o"), "--gpus", "0")
    assert code == 2 and "--gpus" in err
