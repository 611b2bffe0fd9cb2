"""`advfeat doctor`: check this machine and every accelerated path of advfeat, and write what was found.

    run_doctor("results/doctor-cpu", data="../shared/data")
    advfeat doctor --data ../shared/data            # the same (parsed in advfeat/cli.py)

One command for a machine seen for the first time (a GPU lent for minutes): it records the
environment, checks each fast path against its plain twin, measures throughput, and leaves
    <out>/doctor.json   every check (status, seconds, one-line detail, numbers), the environment
    <out>/doctor.md     a short table of the same
    <out>/rates.json    a copy of rates-<device>.json, which it writes into advfeat's cache folder:
                        the rates `advfeat reproduce --dry-run` reads
doctor.json is rewritten after every check, so a run killed half-way still leaves what it found.

The checks, one module per area, each registered with @check (registry.py), in the order they
run (RUN_ORDER; CPU: what runs without a GPU; CUDA: on the GPU):
    environment.py  environment   versions, devices, driver, memory, CPUs; on CPU it names what needs CUDA
    kernels.py      kernels       the Triton step kernels against the eager spec on the kernel case
                                  table (advfeat/kernels/cases.py; CPU: Triton's interpreter)
    numerics.py     compile       PGD compiled vs eager on a small trained model (skipped on CPU with quick=True)
                    bf16          the same attack with bf16 autocast and under runtime.fp32_only() (CUDA only)
    dali.py         dali          DALI decoding against the tensor loader (where DALI is installed)
    distributed.py  distributed   a small D_det with every GPU (NCCL) vs one worker (CPU: 2 gloo workers vs 1)
    throughput.py   throughput    training, PGD and inversion rates, FLOPs per image-step, bf16 peak fraction
context.py holds what they share (the device, the data, the tiny net trained once).

Each check has a time budget (its @check), and its sizes are chosen so that the whole doctor takes
at most 10 minutes on one H100 (an estimate: not yet run on a GPU) and 5 minutes on 2 CPU cores
(45-105 s measured on a shared VM); a check over its budget is flagged, not stopped. A check
that raises is reported as "fail" with its one-line message and the others still run. A check that did not
run says "skipped" and why: nothing is claimed for it.
"""

from __future__ import annotations

import contextlib
import datetime
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

# The area modules: importing one registers its checks.
from advfeat.doctor import dali, distributed, environment, kernels, numerics, throughput  # noqa: F401
from advfeat.doctor.context import Context
from advfeat.doctor.environment import environment as environment_info
from advfeat.doctor.registry import CHECKS, CheckFailed, Skip, check, one_line
from advfeat.errors import UserError
from advfeat.io import atomic_path, write_json
from advfeat.runtime import device_name, device_slug, resolve_device, slug

__all__ = ["CHECKS", "RUN_ORDER", "CheckFailed", "Context", "Skip", "check", "default_out_dir", "run_doctor",
           "summary_table"]

# The order the checks run in: the machine first, then each fast path against its plain twin,
# throughput (the longest) last.
RUN_ORDER = ("environment", "kernels", "compile", "bf16", "dali", "distributed", "throughput")
if set(RUN_ORDER) != set(CHECKS):
    raise RuntimeError(f"doctor: RUN_ORDER {RUN_ORDER} does not name the registered checks {tuple(CHECKS)}")


def run_check(name: str, ctx: Context) -> dict:
    """Run one check: its status ("pass", "fail" or "skipped"), seconds, budget, one-line detail, numbers."""
    budget = CHECKS[name].budget(ctx.cuda)
    start = time.perf_counter()
    numbers: dict = {}
    try:
        detail, numbers = CHECKS[name].run(ctx)
        status = "pass"
    except Skip as skip:
        status, detail = "skipped", str(skip)
    except CheckFailed as failed:
        status, detail, numbers = "fail", str(failed), failed.numbers
    except Exception as err:  # noqa: BLE001 - every failure is reported, and the other checks still run
        status, detail = "fail", one_line(err)
    finally:
        if ctx.cuda:
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    seconds = round(time.perf_counter() - start, 2)
    if budget and seconds > budget and status != "skipped":
        numbers = dict(numbers, over_budget=True)
    return {"name": name, "status": status, "seconds": seconds, "budget_s": budget,
            "detail": " ".join(str(detail).split()), "numbers": numbers}


def summary_table(report: dict) -> str:
    """The checks as a markdown table (check, status, seconds, detail)."""
    rows = ["| check | status | seconds | detail |", "| --- | --- | ---: | --- |"]
    for c in report["checks"]:
        detail = c["detail"].replace("|", "/")
        rows.append(f"| {c['name']} | {c['status']} | {c['seconds']:.1f} | {detail} |")
    return "\n".join(rows)


def _markdown(report: dict) -> str:
    """doctor.md: the verdict, the counts, the table and the notes."""
    verdict = "all checks that ran passed" if report["ok"] else "SOME CHECKS FAILED"
    counts = ", ".join(f"{sum(c['status'] == s for c in report['checks'])} {s}" for s in ("pass", "fail", "skipped"))
    lines = [f"# advfeat doctor: {report['device_name']}", "",
             f"{report['created']}, advfeat {report['environment']['advfeat']} "
             f"({(report['environment']['git_commit'] or 'no git commit')[:10]}), "
             f"torch {report['environment']['torch']}"
             f"{', quick' if report['quick'] else ''}; {report['seconds']:.0f} s in all"
             f"{'' if report['complete'] else ' (INCOMPLETE: still running or stopped)'}.", "",
             f"**{verdict}** ({counts}).", "", summary_table(report), ""]
    if report["notes"]:
        lines += ["Notes:", "", *[f"- {n}" for n in report["notes"]], ""]
    lines += ["Numbers of every check: `doctor.json` beside this file.", ""]
    return "\n".join(lines)


def _write(out_dir: Path, report: dict) -> None:
    write_json(out_dir / "doctor.json", report)
    with atomic_path(out_dir / "doctor.md") as tmp:
        tmp.write_text(_markdown(report))


def default_out_dir(device: str) -> str:
    """results/doctor-<device slug>: the GPU's name on CUDA, 'cpu' on a CPU (the flag's words
    where the device is unusable)."""
    try:
        return f"results/doctor-{device_slug(resolve_device(device))}"
    except UserError:
        return f"results/doctor-{slug(device, 'auto')}"


def _device(device: str) -> tuple[torch.device, str | None, str]:
    """(device, why it is unusable or None, its name). CUDA asked for but unusable is not an
    error here: every check then fails on its own line."""
    error = None
    try:
        dev = resolve_device(device)
    except UserError as err:
        error, dev = str(err), torch.device(device if device != "auto" else "cpu")
    try:
        name = device_name(dev)
    except Exception as err:  # noqa: BLE001
        name = f"{dev} (unusable: {one_line(err)})"
    return dev, error, name


def _check_names(checks) -> tuple[str, ...]:
    names = tuple(checks) if checks else RUN_ORDER
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise UserError(f"unknown check {unknown[0]!r}; choose from {', '.join(RUN_ORDER)}")
    return names


def _data_path(data: str | Path | None) -> Path | None:
    path = Path(data).expanduser() if data is not None else None
    if path is not None and not path.exists():
        raise UserError(f"--data {path} does not exist")
    return path


def _new_report(dev: torch.device, name: str, quick: bool, data_path: Path | None) -> dict:
    return {"kind": "advfeat-doctor",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(dev), "device_name": name, "quick": quick, "data": str(data_path) if data_path else None,
            "environment": environment_info(), "checks": [], "notes": [], "ok": False, "complete": False,
            "seconds": 0.0}


def _record(report: dict, result: dict, ctx: Context, start: float, log: Callable[[str], None]) -> None:
    """Add one check's result to the report and say it."""
    report["checks"].append(result)
    report["notes"] = list(ctx.notes)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = all(c["status"] != "fail" for c in report["checks"])
    log(f"doctor: {result['name']}: {result['status']} ({result['seconds']:.1f}s) {result['detail']}")
    if result["numbers"].get("over_budget"):
        log(f"doctor: {result['name']} took {result['seconds']:.0f}s, over its budget of {result['budget_s']}s")


def run_doctor(out_dir: str | Path, *, data: str | Path | None = None, device: str = "auto", quick: bool = False,
               log: Callable[[str], None] = print, checks: tuple[str, ...] | list[str] | None = None) -> dict:
    """Run every check (or those named in `checks`), write <out_dir>/doctor.json and doctor.md
    (after every check), and the rates file of `advfeat reproduce --dry-run`. Returns the report;
    report["ok"] is True when every check that was not skipped passed."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    names = _check_names(checks)
    dev, device_error, name = _device(device)
    data_path = _data_path(data)
    report = _new_report(dev, name, quick, data_path)
    log(f"doctor: {name}, {len(names)} checks{' (quick)' if quick else ''} -> {out_dir}")
    with tempfile.TemporaryDirectory(prefix="advfeat-doctor-") as work:
        ctx = Context(out_dir, dev, device_error, data_path, quick, log, Path(work))
        for check_name in names:
            log(f"doctor: {check_name} ...")
            _record(report, run_check(check_name, ctx), ctx, start, log)
            _write(out_dir, report)
    report["complete"] = True
    report["seconds"] = round(time.perf_counter() - start, 1)
    _write(out_dir, report)
    verdict = "every check that ran passed" if report["ok"] else "some checks FAILED"
    log(f"doctor: {verdict} in {report['seconds']:.0f}s -> {out_dir / 'doctor.md'}")
    return report
