"""`advfeat doctor` on the CPU: the quick doctor on its own synthetic JPEGs (no decode of the real
set), its two files, the skipped GPU-only checks, a failing check among passing ones, the rates
file that `advfeat reproduce --dry-run` reads, and the subcommand's exit status."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from advfeat import doctor
from advfeat.reproduce.estimate import load_rates, rates_path

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
    assert [c["name"] for c in saved["checks"]] == list(doctor.CHECKS)
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
    assert checks["kernels"]["numbers"]["max_error"] <= doctor.KERNEL_TOLERANCE
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
    for arch in ("tiny", "small", "mid", "mlp"):  # the cpu and smoke presets' dry run needs no calibration
        assert rates["archs"][arch]["train_images_per_s"] > 0
        assert rates["archs"][arch]["attack_image_steps_per_s"] > 0
    detail = _by_name(report)["throughput"]["numbers"]["archs"]["tiny"]
    assert detail["gflop_per_attack_step"] > 0 and detail["inversion_image_steps_per_s"] > 0


def test_a_check_that_raises_fails_on_its_own_line_and_the_others_run(tmp_path, monkeypatch):
    def boom(ctx):
        raise RuntimeError("kernel exploded\nwith a traceback below")

    def found_a_problem(ctx):
        raise doctor.CheckFailed("3 cases over tolerance", {"max_error": 1.0})

    monkeypatch.setattr(doctor, "check_kernels", boom)
    monkeypatch.setattr(doctor, "check_dali", found_a_problem)
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


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    doctor.add_doctor_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["doctor", *argv])


def test_subcommand_exit_status_and_default_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = _parse("--check", "environment", "--check", "bf16")
    assert args.out is None and args.device == "auto" and not args.quick
    args.func(args)  # every check that ran passed: returns, so `advfeat doctor` exits 0
    assert (tmp_path / "results" / "doctor-cpu" / "doctor.json").is_file()
    assert "| environment | pass |" in capsys.readouterr().out

    monkeypatch.setattr(doctor, "check_environment", lambda ctx: 1 / 0)
    args = _parse("--out", str(tmp_path / "failing"), "--check", "environment")
    with pytest.raises(SystemExit) as exit_:
        args.func(args)
    assert exit_.value.code == 1
    assert "ZeroDivisionError" in capsys.readouterr().out
