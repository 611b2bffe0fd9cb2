"""The kernels check: the fused Triton step kernels against the eager spec, on the kernel case
table (advfeat/kernels/cases.py). On CUDA: compiled Triton, the backend attacks get there by
default. On a CPU: Triton's interpreter, in a child process (triton reads TRITON_INTERPRET when
the kernels are defined, so this process, which may have imported them, cannot switch)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from advfeat.doctor.context import Context
from advfeat.doctor.registry import CHECKS, CheckFailed, check
from advfeat.kernels import cases
from advfeat.runtime import device_name

MARKER = "ADVFEAT_DOCTOR_JSON "  # the line a child process reports on


@contextlib.contextmanager
def environment_variables(**values: str | None):
    """Set (or with None, remove) environment variables for the block."""
    def apply(settings: dict[str, str | None]) -> None:
        for k, v in settings.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    old = {k: os.environ.get(k) for k in values}
    try:
        apply(values)
        yield
    finally:
        apply(old)


def doctor_cases(small: bool, quick: bool) -> list[cases.KernelCase]:
    """The case grid at odd batch sizes (1, 7 and 129; 33 instead of 129 with quick: the interpreter
    runs each example's program in Python, ~0.7 s per L2 call at 129 on 2 cores), on 3x32x32
    images (3x8x8 with small), and a batch of two 3x24x24 images, several BLOCKs per example."""
    image = (3, 8, 8) if small else (3, 32, 32)
    return cases.grid((1, 7, 33) if quick else (1, 7, 129), image) + cases.grid((2,), (3, 24, 24))


def kernel_comparison(device: str = "cuda", small: bool = False, quick: bool = False) -> dict:
    """doctor_cases through the dispatcher (which must pick Triton) against the eager spec on
    `device`: the worst error per op, the worst case, and the cases over cases.TOLERANCE.

    On CPU call it with TRITON_INTERPRET=1 and ADVFEAT_KERNELS=triton set before the process
    starts (check_kernels runs it so, in a child process).
    """
    import advfeat.kernels as K

    dev = torch.device(device)
    backend = K.backend_for(torch.zeros(1, device=dev))
    if backend != "triton":
        raise RuntimeError(f"the dispatcher picks {backend!r} on {dev}, not Triton")
    table = doctor_cases(small, quick)
    errors = cases.compare(table, dev)
    by_op: dict[str, float] = {}
    for case in table:
        by_op[case.op] = max(by_op.get(case.op, 0.0), errors[case.name])
    worst = max(errors, key=errors.get)
    return {"device": str(dev), "backend": backend, "cases": len(errors), "image_shape": list(table[0].shape[1:]),
            "batches": sorted({c.shape[0] for c in table}), "tolerance": cases.TOLERANCE,
            "max_error": errors[worst], "worst_case": worst, "max_error_by_op": by_op,
            "failures": [name for name, err in errors.items() if not err <= cases.TOLERANCE]}


def run_child(code: str, env: dict, timeout: float) -> dict:
    """Run `code` in a fresh Python; it prints MARKER + JSON on a line of its stdout."""
    package_root = str(Path(__file__).resolve().parents[2])
    child_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ADVFEAT_KERNELS")}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, child_env.get("PYTHONPATH")) if p)
    child_env.update(env)
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"the child process ran past {timeout:.0f}s and was stopped") from None
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise CheckFailed(f"child process exited {proc.returncode}: {last[:300]}")


def _on_cuda(ctx: Context) -> tuple[dict, str]:
    import advfeat.kernels as K

    with environment_variables(ADVFEAT_KERNELS=None):  # what attacks get by default
        default = K.backend_for(torch.zeros(1, device=ctx.device))
    if default != "triton":
        raise CheckFailed(f"attacks on CUDA would use the {default!r} step, not Triton (is triton installed?)")
    with environment_variables(ADVFEAT_KERNELS="triton"):
        numbers = kernel_comparison(str(ctx.device))
    return numbers, f"Triton on {device_name(ctx.device)} (the default backend there)"


def _in_interpreter(ctx: Context) -> tuple[dict, str]:
    code = (f"import json; from advfeat.doctor.kernels import kernel_comparison; "
            f"print({MARKER!r} + json.dumps(kernel_comparison('cpu', small=True, quick={ctx.quick})))")
    numbers = run_child(code, {"TRITON_INTERPRET": "1", "ADVFEAT_KERNELS": "triton"},
                        timeout=CHECKS["kernels"].cpu_s * 3)
    return numbers, "Triton's interpreter on CPU (TRITON_INTERPRET=1; not compiled for a GPU)"


@check("kernels", cpu_s=45, cuda_s=60)
def check_kernels(ctx: Context):
    """Fails where any case is over cases.TOLERANCE, or where attacks on CUDA would not use Triton."""
    numbers, how = _on_cuda(ctx) if ctx.cuda else _in_interpreter(ctx)
    detail = (f"{how}: {numbers['cases']} cases (batches {numbers['batches']}, fp32/bf16 grads, contiguous/"
              f"channels_last, L2/Linf, scalar/per-example eps): max error {numbers['max_error']:.1e} "
              f"(tolerance {numbers['tolerance']:.0e}, worst {numbers['worst_case']})")
    if numbers["failures"]:
        raise CheckFailed(f"{len(numbers['failures'])} case(s) over tolerance; " + detail, numbers)
    return detail, numbers
