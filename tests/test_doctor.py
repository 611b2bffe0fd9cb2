"""`advfeat doctor` on the CPU: the quick doctor on its own synthetic JPEGs (no decode of the real
set), its two files, the skipped GPU-only checks, a failing check among passing ones, the rates
file that `advfeat reproduce --dry-run` reads, the subcommand's exit status, and the fp32 switch
that the bf16 check compares against (made visible on the CPU by turning bf16 autocast on there)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import types
from pathlib import Path

import pytest
import torch

from advfeat import doctor, runtime
from advfeat.doctor import numerics
from advfeat.kernels import cases
from advfeat.throughput import load_rates, rates_path

STATUSES = {"pass", "fail", "skipped"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("doctor") / "cpu"
    messages: list[str] = []
    report = doctor.run_doctor(out, quick=True, log=messages.append)
    return out, report, messages


def _by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def test_quick_cpu_doctor_writes_both_files_and_every_check_has_a_status(quick):
    out, report, messages = quick
    saved = json.loads((out / "doctor.json").read_text())
    assert saved["complete"] and saved["ok"] == report["ok"]
    assert [c["name"] for c in saved["checks"]] == list(doctor.RUN_ORDER)
    for check in saved["checks"]:
        assert check["status"] in STATUSES
        assert check["seconds"] >= 0 and check["detail"] and "\n" not in check["detail"]
    assert saved["environment"]["torch"] == torch.__version__ and saved["environment"]["cpu_count"] >= 1
    md = (out / "doctor.md").read_text()
    assert "| check | status | seconds | detail |" in md
    for check in saved["checks"]:
        assert f"| {check['name']} | {check['status']} |" in md
    # Synthetic data stands in when --data is not given, and the report says so.
    assert any("synthetic" in note for note in saved["notes"])
    assert any(m.startswith("doctor: throughput: ") for m in messages)
    # Every check that ran on this CPU passed; the whole quick doctor stays within its budget.
    failed = [(c["name"], c["detail"]) for c in saved["checks"] if c["status"] == "fail"]
    assert report["ok"] and not failed, failed
    assert saved["seconds"] < 300


def test_gpu_only_checks_are_skipped_with_a_reason(quick):
    _, report, _ = quick
    checks = _by_name(report)
    assert checks["bf16"]["status"] == "skipped" and "needs CUDA" in checks["bf16"]["detail"]
    assert checks["compile"]["status"] == "skipped" and "quick" in checks["compile"]["detail"]
    env = checks["environment"]
    assert env["status"] == "pass" and "skipped (needs CUDA)" in env["detail"]
    assert "bf16 autocast vs fp32" in env["numbers"]["needs_cuda"]
    # The CPU runs the Triton kernels in the interpreter, and says so.
    assert checks["kernels"]["status"] == "pass" and "interpreter" in checks["kernels"]["detail"]
    assert checks["kernels"]["numbers"]["max_error"] <= cases.TOLERANCE
    from advfeat.data.dali import dali_available

    if dali_available():
        assert checks["dali"]["status"] == "pass" and "GPU decoding unchecked" in checks["dali"]["detail"]
    else:
        assert checks["dali"]["status"] == "skipped" and "DALI not installed" in checks["dali"]["detail"]
    dist = checks["distributed"]
    assert dist["numbers"]["workers"] == 2 and dist["numbers"]["labels_equal"]


def test_rates_file_is_what_the_dry_run_reads(quick):
    _, report, _ = quick
    cpu = torch.device("cpu")
    rates = load_rates(cpu)
    assert rates is not None and rates["source"] == "advfeat doctor"
    assert str(rates_path(cpu)) == report["checks"][-1]["numbers"]["rates_file"]
    from advfeat.presets import PRESETS

    needed = _archs_named_in(PRESETS["cpu"]) | _archs_named_in(PRESETS["smoke"])
    assert {"tiny", "mlp"} <= needed
    for arch in needed:  # the cpu and smoke presets' dry run needs no calibration
        assert rates["archs"][arch]["train_images_per_s"] > 0
        assert rates["archs"][arch]["attack_image_steps_per_s"] > 0
    detail = _by_name(report)["throughput"]["numbers"]["archs"]["tiny"]
    assert detail["gflop_per_attack_step"] > 0 and detail["inversion_image_steps_per_s"] > 0


def _archs_named_in(setting) -> set[str]:
    """Every architecture a preset names, found by walking its fields (`arch`, `*archs`), not
    through the doctor's own list of them."""
    if dataclasses.is_dataclass(setting) and not isinstance(setting, type):
        found = set()
        for f in dataclasses.fields(setting):
            value = getattr(setting, f.name)
            if f.name == "arch":
                found.add(value)
            elif f.name.endswith("archs"):
                found |= set(value)
            else:
                found |= _archs_named_in(value)
        return found
    if isinstance(setting, dict):
        setting = list(setting.values())
    if isinstance(setting, (list, tuple)):
        return set().union(*map(_archs_named_in, setting))
    return set()


def test_a_check_that_raises_fails_on_its_own_line_and_the_others_run(tmp_path, monkeypatch):
    def boom(ctx):
        raise RuntimeError("kernel exploded\nwith a traceback below")

    def found_a_problem(ctx):
        raise doctor.CheckFailed("3 cases over tolerance", {"max_error": 1.0})

    _replace_check(monkeypatch, "kernels", boom)
    _replace_check(monkeypatch, "dali", found_a_problem)
    report = doctor.run_doctor(tmp_path, checks=["environment", "kernels", "bf16", "dali"], log=lambda m: None)
    checks = _by_name(json.loads((tmp_path / "doctor.json").read_text()))
    assert checks["kernels"] == checks["kernels"] | {"status": "fail", "detail": "RuntimeError: kernel exploded"}
    assert checks["dali"]["status"] == "fail" and checks["dali"]["numbers"] == {"max_error": 1.0}
    assert checks["environment"]["status"] == "pass" and checks["bf16"]["status"] == "skipped"
    assert not report["ok"]
    assert "SOME CHECKS FAILED" in (tmp_path / "doctor.md").read_text()


def test_cuda_asked_for_without_a_gpu_fails_each_check_on_its_own_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    report = doctor.run_doctor(tmp_path, device="cuda", checks=["environment", "kernels"], log=lambda m: None)
    checks = _by_name(report)
    assert checks["environment"]["status"] == "fail" and "no CUDA GPU" in checks["environment"]["detail"]
    assert checks["kernels"]["status"] == "fail" and checks["kernels"]["detail"]
    assert (tmp_path / "doctor.md").is_file()


def _replace_check(monkeypatch, name: str, run) -> None:
    monkeypatch.setitem(doctor.CHECKS, name, dataclasses.replace(doctor.CHECKS[name], run=run))


def _parse(*argv: str):
    from advfeat.cli import build_parser

    return build_parser().parse_args(["doctor", *argv])


def test_subcommand_exit_status_and_default_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = _parse("--check", "environment", "--check", "bf16")
    assert args.out is None and args.device == "auto" and not args.quick
    args.func(args)  # every check that ran passed: returns, so `advfeat doctor` exits 0
    assert (tmp_path / "results" / "doctor-cpu" / "doctor.json").is_file()
    assert "| environment | pass |" in capsys.readouterr().out

    _replace_check(monkeypatch, "environment", lambda ctx: 1 / 0)
    args = _parse("--out", str(tmp_path / "failing"), "--check", "environment")
    with pytest.raises(SystemExit) as exit_:
        args.func(args)
    assert exit_.value.code == 1
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_every_check_is_registered_once_and_runs_in_the_documented_order():
    registered = re.findall(r'^@check\("(\w+)"', "".join(
        p.read_text() for p in sorted(Path(doctor.__file__).parent.glob("*.py"))), re.MULTILINE)
    assert sorted(registered) == sorted(doctor.RUN_ORDER) == sorted(doctor.CHECKS)
    assert all(doctor.CHECKS[name].run.__name__ == f"check_{name}" for name in doctor.RUN_ORDER)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    from conftest import run_cli

    for argv in (["--data", str(tmp_path / "missing")], ["--check", "nope"]):
        code, out, err = run_cli("doctor", "--out", str(tmp_path / "out"), *argv)
        assert code == 2 and not out and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "out").exists()  # nothing was run or written


# --- the fp32 switch behind the bf16 check -----------------------------------------------------


class DtypeProbe(torch.nn.Module):
    """A small classifier that records the dtype its logits were computed in."""

    num_classes = 10
    feature_dim = 16

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.Flatten(),
                                            torch.nn.Linear(4 * 8 * 8, 16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 10)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x, return_features=False, fake_relu=False):
        features = self.features(x)
        logits = self.head(features)
        self.dtypes.append(logits.dtype)
        return (logits, features) if return_features else logits


@pytest.fixture
def bf16_on_cpu(monkeypatch):
    """bf16 autocast on the CPU too, as on CUDA: what fp32_only() switches off becomes visible."""
    monkeypatch.setattr(runtime, "BF16_DEVICE_TYPES", ("cuda", "cpu"))


def _attack_every_way(model, x, y) -> None:
    """One short run of each path that computes under autocast: evaluation, PGD, APGD, CW, Square."""
    from advfeat.attacks import apgd, cw_l2, make_threat, pgd, square_attack
    from advfeat.evaluation import predict_tensor

    predict_tensor(model, x, 8)
    pgd(model, x, y, threat=make_threat("l2", 0.5, "none"), steps=2, step_size=0.1, compile=False)
    apgd(model, x, y, norm="l2", eps=0.5, n_iter=2, compile=False)
    cw_l2(model, x, y, steps=2, binary_steps=1, compile=False)
    square_attack(model, x, y, norm="linf", eps=8 / 255, n_queries=2, compile=False)


def test_fp32_only_switches_off_bf16_in_every_module_that_computes_under_autocast(bf16_on_cpu):
    model = DtypeProbe().eval()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8)
    _attack_every_way(model, x, y)
    assert set(model.dtypes) == {torch.bfloat16}  # the default path: bf16 in every module
    model.dtypes.clear()
    with runtime.fp32_only():
        _attack_every_way(model, x, y)
    assert set(model.dtypes) == {torch.float32}
    model.dtypes.clear()
    _attack_every_way(model, x, y)  # and the switch is off again after the block
    assert set(model.dtypes) == {torch.bfloat16}


def test_no_module_turns_autocast_on_except_through_runtime():
    """runtime.autocast is the one door to bf16, so fp32_only() closes it for every module."""
    root = Path(runtime.__file__).parent
    pattern = re.compile(r"torch\.(autocast|amp\.autocast|cuda\.amp|cpu\.amp)")
    offenders = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py"))
                 if p != Path(runtime.__file__) and pattern.search(p.read_text())]
    assert not offenders


def _bf16_context(model):
    """A stand-in for the doctor's context where bf16 applies: the probe net and 64 images it labels."""
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    tiny = {"model": model, "x": x, "y": y, "test_accuracy": 1.0}
    return types.SimpleNamespace(cuda=True, device=torch.device("cpu"), tiny=lambda: tiny, tiny_numbers=dict)


def test_the_bf16_check_compares_bf16_with_fp32(bf16_on_cpu):
    detail, numbers = doctor.CHECKS["bf16"].run(_bf16_context(DtypeProbe().eval()))
    assert numbers["bf16"]["clean_accuracy"] == numbers["fp32"]["clean_accuracy"] == 1.0
    assert "robust accuracy bf16" in detail


def test_the_bf16_check_fails_when_its_fp32_run_is_still_bf16(bf16_on_cpu, monkeypatch):
    """The old fp32_only patched `autocast` by name in two modules: a renamed import left the
    comparison bf16 against bf16, and it passed. Now the check itself sees it."""
    monkeypatch.setattr(numerics, "fp32_only", contextlib.nullcontext)  # a switch that reaches nothing
    with pytest.raises(doctor.CheckFailed, match="not float32"):
        doctor.CHECKS["bf16"].run(_bf16_context(DtypeProbe().eval()))
