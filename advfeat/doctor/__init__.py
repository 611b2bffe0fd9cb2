"""`advfeat doctor`: check this machine and every accelerated path of advfeat, and write what was found.

    run_doctor("results/doctor-cpu", data="../shared/data")
    advfeat doctor --data ../shared/data            # the same (or python -m advfeat.doctor ...)

One command for a machine seen for the first time (a GPU lent for minutes): it records the
environment, checks each fast path against its plain twin, measures throughput, and leaves
    <out>/doctor.json   every check (status, seconds, one-line detail, numbers), the environment
    <out>/doctor.md     a short table of the same
    <out>/rates.json    a copy of rates-<device>.json, which it writes into advfeat's cache folder:
                        the rates `advfeat reproduce --dry-run` reads
doctor.json is rewritten after every check, so a run killed half-way still leaves what it found.

The checks (CPU: what runs without a GPU; CUDA: on the GPU):
    environment   versions, devices, driver, memory, CPUs; on CPU it names what needs CUDA
    kernels       the Triton step kernels against the torch reference (CPU: Triton's interpreter)
    compile       PGD compiled vs eager on a small trained model (skipped on CPU with quick=True)
    bf16          the same attack with and without bf16 autocast (CUDA only)
    dali          DALI decoding against the tensor loader (where DALI is installed)
    distributed   a small D_det with every GPU (NCCL) vs one worker (CPU: 2 gloo workers vs 1)
    throughput    training, PGD and inversion rates, FLOPs per image-step, bf16 peak fraction

Each check has a time budget (BUDGETS), and its sizes are chosen so that the whole doctor takes
at most 10 minutes on one H100 (an estimate: not yet run on a GPU) and 5 minutes on 2 CPU cores
(45-105 s measured on a shared VM); a check over its budget is flagged, not stopped. A check
that raises is reported as "fail" with its one-line message and the others still run. A check that did not
run says "skipped" and why: nothing is claimed for it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from advfeat import __version__
from advfeat.errors import UserError
from advfeat.io import atomic_path, write_json
from advfeat.runtime import (autocast, bf16_peak, device_name, git_commit, prepare_input, prepare_model,
                             resolve_device)

# The checks, in the order they run; check `name` is the function `check_<name>`, looked up when
# it runs (so a test can replace one).
CHECKS = ("environment", "kernels", "compile", "bf16", "dali", "distributed", "throughput")
# Seconds each check should take at most on (2 CPU cores, one H100); one that runs over is
# flagged (numbers.over_budget), not failed. The throughput check also stops measuring more
# architectures once its budget is spent.
BUDGETS = {"environment": (10, 15), "kernels": (45, 60), "compile": (75, 150), "bf16": (0, 60),
           "dali": (30, 60), "distributed": (75, 120), "throughput": (90, 300)}
# What a CPU run cannot check: listed by the environment check.
NEEDS_CUDA = ("Triton kernels compiled for the GPU (the CPU runs them in Triton's interpreter)",
              "bf16 autocast vs fp32", "compiled PGD throughput", "NCCL synthesis workers",
              "DALI GPU (nvJPEG) decoding", "fraction of the GPU's bf16 peak")
KERNEL_TOLERANCE = 1e-5  # max |triton - reference| / max(1, |reference|), outputs in [0, 1] or norms
MARKER = "ADVFEAT_DOCTOR_JSON "  # the line a child process reports on
# Throughput: the architectures measured in detail (rates, FLOPs, inversion, compiled PGD on CUDA),
# the batch, timed iterations (training) and PGD steps; every other architecture of the presets
# named gets its training and attack rates only, for their dry run.
THROUGHPUT = {
    "cuda": {"detailed": ("resnet18", "resnet50"), "batch": 512, "iterations": 10, "steps": 10,
             "presets": ("fast", "paper")},
    "cpu": {"detailed": ("tiny", "small"), "batch": 128, "iterations": 3, "steps": 3, "presets": ("cpu", "smoke")},
    "cpu-quick": {"detailed": ("tiny", "small"), "batch": 64, "iterations": 2, "steps": 2,
                  "presets": ("cpu", "smoke")},
}


class Skip(Exception):
    """A check that cannot run here: reported as "skipped" with this reason."""


class CheckFailed(Exception):
    """A check that ran and found a problem: reported as "fail", keeping its numbers."""

    def __init__(self, detail: str, numbers: dict | None = None):
        super().__init__(detail)
        self.numbers = numbers or {}


def device_slug(device: torch.device | str) -> str:
    """'cpu', or the GPU's name as a file-name slug ('nvidia-h100-80gb-hbm3')."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    try:
        name = torch.cuda.get_device_name(device)
    except Exception:  # CUDA asked for but broken: still a usable folder name
        name = "cuda"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cuda"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")[:300]


def _quiet(message: str) -> None:
    pass


@contextlib.contextmanager
def _env(**values: str | None):
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


def _package_version(*names: str) -> str | None:
    """The installed version of the first distribution found (by metadata: nothing is imported)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _dali_version() -> str | None:
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("nvidia-dali"):
            return f"{dist.version} ({name})"
    return None


# --------------------------------------------------------------------------- the shared context


class Context:
    """What the checks share: the device, the data, a scratch folder, and a small trained model
    (trained once, by the first check that asks)."""

    def __init__(self, out_dir: Path, device: torch.device, device_error: str | None, data: Path | None,
                 quick: bool, log: Callable[[str], None], work: Path):
        self.out_dir, self.device, self.device_error = out_dir, device, device_error
        self.data, self.quick, self.log, self.work = data, quick, log, work
        self.cuda = device.type == "cuda"
        self._dataset = None
        self._data_path: Path | None = None
        self._tiny: dict | None = None
        self._tiny_error: BaseException | None = None
        self.notes: list[str] = []

    # Sizes: small on CPU (and smaller with quick), larger on a GPU.
    @property
    def n_train(self) -> int:
        return 5000 if self.cuda else (1000 if self.quick else 3000)

    @property
    def n_test(self) -> int:
        return 2000 if self.cuda else (256 if self.quick else 500)

    def data_path(self) -> Path:
        """The real CIFAR-10 if given, else a small synthetic JPEG dataset made here (a note says so)."""
        if self._data_path is None:
            if self.data is not None:
                self._data_path = self.data
            else:
                self._data_path = write_synthetic_jpegs(self.work / "synthetic-data", per_class_train=120,
                                                        per_class_test=30)
                self.notes.append("no --data: synthetic JPEG images (class-coloured noise) stand in for CIFAR-10, "
                                  "so accuracies say nothing about CIFAR-10")
        return self._data_path

    def dataset(self):
        """(Subset of) the data: n_train training and n_test test images."""
        if self._dataset is None:
            from advfeat.data import load_dataset

            real = self.data is not None
            self._dataset = load_dataset(self.data_path(), subset=self.n_train if real else None,
                                         test_subset=self.n_test if real else None, seed=0)
        return self._dataset

    def tiny(self) -> dict:
        """The `tiny` net trained for 1-2 epochs on the data (its folder, model and test tensors)."""
        if self._tiny_error is not None:  # failed once: every check that needs it fails the same way
            raise RuntimeError(f"training the tiny model failed: {_one_line(self._tiny_error)}")
        if self._tiny is None:
            try:
                self._tiny = self._train_tiny()
            except Exception as err:
                self._tiny_error = err
                raise
            self.log(f"doctor:   trained tiny for {self._tiny['epochs']} epoch(s) on {self._tiny['train_images']} "
                     f"images in {self._tiny['seconds']:.1f}s: test accuracy {self._tiny['test_accuracy']:.3f}")
        return self._tiny

    def _train_tiny(self) -> dict:
        from advfeat.checkpoint import load_model
        from advfeat.evaluation import split_tensors
        from advfeat.settings import TrainConfig
        from advfeat.training import train

        start = time.perf_counter()
        epochs = 1 if self.quick else 2
        config = TrainConfig(arch="tiny", epochs=epochs, lr=0.2, batch_size=128, schedule="onecycle",
                             eval_every=epochs, seed=0)
        folder = self.work / "tiny-model"
        card = train(config, self.dataset(), folder, device=self.device, force=True, progress=False, log=_quiet)
        model, _ = load_model(folder, self.device)
        x, y = split_tensors(self.dataset().test, self.device)
        return {"folder": folder, "model": model, "x": x, "y": y, "card": card,
                "seconds": round(time.perf_counter() - start, 2),
                "test_accuracy": card["metrics"].get("test_accuracy"),
                "train_images": len(self.dataset().train), "epochs": epochs}

    def tiny_numbers(self) -> dict:
        t = self.tiny()
        return {"model": "tiny", "train_images": t["train_images"], "epochs": t["epochs"],
                "test_accuracy": t["test_accuracy"], "train_seconds": t["seconds"]}


def write_synthetic_jpegs(folder: Path, per_class_train: int = 120, per_class_test: int = 30, seed: int = 0) -> Path:
    """train/<class>/*.jpg and test/<class>/*.jpg of 32x32 noise tinted per class: a stand-in for
    CIFAR-10 that every reader and loader takes, and that a tiny net learns in one epoch."""
    from PIL import Image

    from advfeat.data import CIFAR10_CLASSES

    if (folder / "done").is_file():
        return folder
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(len(CIFAR10_CLASSES), 3))
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        for c, name in enumerate(CIFAR10_CLASSES):
            target = folder / split / name
            target.mkdir(parents=True, exist_ok=True)
            noise = rng.integers(-40, 41, size=(per_class, 32, 32, 3))
            images = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)
            for i, image in enumerate(images):
                Image.fromarray(image).save(target / f"{i:04d}.jpg", quality=90)
    (folder / "done").write_text("ok\n")
    return folder


# --------------------------------------------------------------------------- environment


def _nvidia_smi() -> list[dict]:
    """GPUs as nvidia-smi sees them (empty without nvidia-smi)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return rows


def _git_dirty() -> bool | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def environment() -> dict:
    """Versions, devices and the machine, as a dict (nothing here can fail)."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _package_version("triton", "pytorch-triton"),
        "dali": _dali_version(),
        "torchattacks": _package_version("torchattacks"),
        "numpy": np.__version__,
        "advfeat": __version__,
        "git_commit": git_commit(),
        "git_dirty": _git_dirty(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
        "nvidia_smi": _nvidia_smi(),
    }
    try:
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:
        env["cudnn"] = None
    if env["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            env["gpus"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                "memory_gib": round(p.total_memory / 2**30, 1),
                                "multiprocessors": p.multi_processor_count})
        try:
            env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:
            env["nccl"] = None
    env["driver"] = env["nvidia_smi"][0]["driver"] if env["nvidia_smi"] else None
    return env


def check_environment(ctx: Context):
    env = environment()
    numbers = {k: env[k] for k in ("python", "torch", "torch_cuda", "triton", "dali", "advfeat", "git_commit",
                                   "cpu_count", "driver")}
    numbers["gpus"] = env["gpus"]
    numbers["device"] = str(ctx.device)
    versions = (f"python {env['python']}, torch {env['torch']}, triton {env['triton'] or 'missing'}, "
                f"DALI {env['dali'] or 'missing'}, advfeat {env['advfeat']} @ {(env['git_commit'] or 'no git')[:10]}"
                f"{' (dirty)' if env['git_dirty'] else ''}")
    if ctx.device_error:
        raise CheckFailed(f"{ctx.device_error}; {versions}", numbers)
    if env["nvidia_smi"] and not env["cuda_available"]:
        raise CheckFailed(f"nvidia-smi lists {len(env['nvidia_smi'])} GPU(s) (driver {env['driver']}) but torch "
                          f"cannot use CUDA (torch built for CUDA {env['torch_cuda']}); {versions}", numbers)
    if ctx.cuda:
        gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB, sm {g['capability']})" for g in env["gpus"])
        where = (f"{len(env['gpus'])} GPU(s): {gpus}; driver {env['driver']}, CUDA {env['torch_cuda']}, "
                 f"cuDNN {env['cudnn']}, NCCL {env.get('nccl')}; {env['cpu_count']} CPUs")
        if env["triton"] is None:
            raise CheckFailed(f"triton is not installed: the step kernels fall back to the torch reference; "
                              f"{where}; {versions}", numbers)
    else:
        numbers["needs_cuda"] = list(NEEDS_CUDA)
        cuda = f"CUDA not used ({len(env['gpus'])} GPU(s) seen)" if env["cuda_available"] else "no CUDA"
        where = (f"{device_name(ctx.device)}, {env['cpu_count']} CPUs, {cuda}; skipped (needs CUDA): "
                 + "; ".join(NEEDS_CUDA))
    return f"{versions}; {where}", numbers


# --------------------------------------------------------------------------- kernels


def _kernel_inputs(batch: int, shape: tuple, grad_dtype, layout, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    full = (batch, *shape)
    x0 = torch.rand(full, generator=g)
    x0.view(-1)[::7] = 0.0  # exact 0s and 1s, where the clamps bite
    x0.view(-1)[1::7] = 1.0
    x = (x0 + 0.05 * torch.randn(full, generator=g)).clamp(0, 1)
    grad = torch.randn(full, generator=g)
    if batch >= 3:
        grad[1] = 0.0  # a zero gradient: a zero step
    eps = torch.rand(batch, generator=g) * 0.5
    eps[0] = 0.0
    if batch >= 3:
        eps[2] = math.inf
    if len(full) == 4:
        x0, x, grad = (t.contiguous(memory_format=layout) for t in (x0, x, grad))
    return x.to(device), x0.to(device), grad.to(grad_dtype).to(device), eps.to(device)


def kernel_comparison(device: str = "cuda", small: bool = False, quick: bool = False) -> dict:
    """Every fused kernel (through the dispatcher, which must pick Triton) against the torch
    reference on `device`: fp32 and bf16 gradients, contiguous and channels_last layouts, odd
    batch sizes, L2 and Linf, scalar and per-example eps (with 0 and inf). Returns the worst
    error per op, the worst case and the cases over KERNEL_TOLERANCE.

    On CPU call it with TRITON_INTERPRET=1 and ADVFEAT_KERNELS=triton set before the process
    starts (check_kernels runs it so, in a child process); small=True uses 3x8x8 images, and
    quick=True batches of 1, 7 and 33 instead of 129 (the interpreter runs each example's program
    in Python: ~0.7 s per L2 call at 129 on 2 cores).
    """
    import advfeat.kernels as K
    from advfeat.kernels import eager as R

    dev = torch.device(device)
    shape = (3, 8, 8) if small else (3, 32, 32)
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    backend = K.backend_for(torch.zeros(1, device=dev))
    if backend != "triton":
        raise RuntimeError(f"the dispatcher picks {backend!r} on {dev}, not Triton")
    results, by_op, seed = [], {}, 0

    def compare(name: str, op: str, got: torch.Tensor, want: torch.Tensor) -> None:
        err = float(((got.float() - want.float()).abs().max() / max(1.0, float(want.float().abs().max())))
                    if want.numel() else 0.0)
        results.append((name, err))
        by_op[op] = max(by_op.get(op, 0.0), err)

    # Odd batch sizes; the last case has several BLOCKs per example.
    cases = [(b, shape) for b in ((1, 7, 33) if quick else (1, 7, 129))] + [(2, (3, 24, 24))]
    for batch, shp in cases:
        for (lname, layout), (dname, dtype) in ((la, d) for la in layouts.items() for d in dtypes.items()):
            seed += 1
            x, x0, grad, eps_t = _kernel_inputs(batch, shp, dtype, layout, "cpu", seed)
            x, x0, grad, eps_t = x.to(dev), x0.to(dev), grad.to(dev), eps_t.to(dev)
            for eps_name, eps in (("eps-scalar", 0.3), ("eps-per-example", eps_t)):
                tag = f"b{batch}x{'x'.join(map(str, shp))}/{dname}/{lname}/{eps_name}"
                for op, step in (("l2_step", 0.1), ("linf_step", 2 / 255)):
                    compare(f"{op}/{tag}", op, getattr(K, op)(x, x0, grad, step, eps),
                            getattr(R, op)(x, x0, grad, step, eps))
                compare(f"l2_step-descent/{tag}", "l2_step", K.l2_step(x, x0, grad, -0.5, eps),
                        R.l2_step(x, x0, grad, -0.5, eps))
                if dname == "fp32":  # projections take no gradient
                    for op in ("l2_project", "linf_project"):
                        compare(f"{op}/{tag}", op, getattr(K, op)(x, x0, eps), getattr(R, op)(x, x0, eps))
            compare(f"batch_l2_norm/b{batch}x{'x'.join(map(str, shp))}/{dname}/{lname}", "batch_l2_norm",
                    K.batch_l2_norm(grad), R.batch_l2_norm(grad))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    worst = max(results, key=lambda r: r[1])
    return {"device": str(dev), "backend": backend, "cases": len(results), "image_shape": list(shape),
            "batches": sorted({b for b, _ in cases}), "tolerance": KERNEL_TOLERANCE,
            "max_error": worst[1], "worst_case": worst[0], "max_error_by_op": by_op,
            "failures": [name for name, err in results if not err <= KERNEL_TOLERANCE]}


def _run_child(code: str, env: dict, timeout: float) -> dict:
    """Run `code` in a fresh Python; it prints MARKER + JSON on a line of its stdout."""
    package_root = str(Path(__file__).resolve().parents[1])
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


def check_kernels(ctx: Context):
    if ctx.cuda:
        import advfeat.kernels as K

        with _env(ADVFEAT_KERNELS=None):  # what attacks get by default
            default = K.backend_for(torch.zeros(1, device=ctx.device))
        if default != "triton":
            raise CheckFailed(f"attacks on CUDA would use the {default!r} step, not Triton (is triton installed?)")
        with _env(ADVFEAT_KERNELS="triton"):
            numbers = kernel_comparison(str(ctx.device))
        how = f"Triton on {device_name(ctx.device)} (the default backend there)"
    else:
        code = (f"import json; from advfeat.doctor import kernel_comparison; "
                f"print({MARKER!r} + json.dumps(kernel_comparison('cpu', small=True, quick={ctx.quick})))")
        numbers = _run_child(code, {"TRITON_INTERPRET": "1", "ADVFEAT_KERNELS": "triton"},
                             timeout=BUDGETS["kernels"][0] * 3)
        how = "Triton's interpreter on CPU (TRITON_INTERPRET=1; not compiled for a GPU)"
    detail = (f"{how}: {numbers['cases']} cases (batches {numbers['batches']}, fp32/bf16 grads, contiguous/"
              f"channels_last, L2/Linf, scalar/per-example eps): max error {numbers['max_error']:.1e} "
              f"(tolerance {numbers['tolerance']:.0e}, worst {numbers['worst_case']})")
    if numbers["failures"]:
        raise CheckFailed(f"{len(numbers['failures'])} case(s) over tolerance; " + detail, numbers)
    return detail, numbers


# --------------------------------------------------------------------------- compile, bf16


def _attack_accuracy(model, x, y, eps: float, steps: int, compile: bool, batch_size: int) -> dict:
    """Robust accuracy under L2 PGD (no random start, retire on success, as evaluation runs it):
    correct on the clean image and not broken by the attack, over all examples."""
    from advfeat.attacks import make_threat, pgd
    from advfeat.evaluation import predict_tensor

    correct = predict_tensor(model, x, batch_size) == y
    index = torch.nonzero(correct).flatten()
    start = time.perf_counter()
    result = pgd(model, x[index], y[index], threat=make_threat("l2", eps, "none"), steps=steps,
                 step_size=2.5 * eps / steps, retire=True, batch_size=batch_size, compile=compile)
    seconds = time.perf_counter() - start
    broken = torch.zeros_like(correct)
    broken[index] = result.success
    return {"clean_accuracy": float(correct.float().mean()),
            "robust_accuracy": float((correct & ~broken).float().mean()),
            "seconds": round(seconds, 3), "image_steps": result.image_steps,
            "image_steps_per_s": round(result.image_steps_per_s, 1),
            "max_l2": float((result.x_adv - x[index]).flatten(1).norm(dim=1).max()) if len(index) else 0.0}


def check_compile(ctx: Context):
    if not ctx.cuda and ctx.quick:
        raise Skip("skipped (quick): torch.compile (inductor) of tiny takes ~25 s on a CPU; run without --quick")
    from torch._dynamo.utils import counters

    tiny = ctx.tiny()
    model, x, y = tiny["model"], tiny["x"], tiny["y"]
    eps, steps = 0.25, (20 if ctx.cuda else 10)
    batch = 512 if ctx.cuda else 256
    eager = _attack_accuracy(model, x, y, eps, steps, False, batch)
    torch.compiler.reset()
    counters.clear()
    first = _attack_accuracy(model, x, y, eps, steps, True, batch)  # compiles
    graphs = counters["stats"]["unique_graphs"]
    cache_hits = counters["inductor"]["fxgraph_cache_hit"]  # compiled code found on disk: a short warm-up
    compiled = _attack_accuracy(model, x, y, eps, steps, True, batch)  # warm
    recompiled = counters["stats"]["unique_graphs"] - graphs
    diff = abs(compiled["robust_accuracy"] - eager["robust_accuracy"])
    warmup = max(0.0, first["seconds"] - compiled["seconds"])
    numbers = {"eps": eps, "steps": steps, "n": len(y), **ctx.tiny_numbers(), "eager": eager, "compiled": compiled,
               "compile_warmup_seconds": round(warmup, 2), "first_compiled_call_seconds": first["seconds"],
               "graphs": graphs, "graphs_on_second_call": recompiled, "inductor_disk_cache_hits": cache_hits,
               "speedup": round(eager["seconds"] / max(compiled["seconds"], 1e-9), 2),
               "backend": "inductor (CPU)" if not ctx.cuda else "inductor (CUDA)"}
    detail = (f"L2 PGD eps {eps}, {steps} steps, {len(y)} test images, tiny ({tiny['test_accuracy']:.2f} clean): "
              f"robust accuracy eager {eager['robust_accuracy']:.4f} vs compiled {compiled['robust_accuracy']:.4f} "
              f"(abs diff {diff * 100:.2f} points, limit 1); first compiled call {first['seconds']:.1f}s "
              f"(compile warm-up ~{warmup:.1f}s, {graphs} graph(s)"
              f"{f', {cache_hits} from inductor disk cache' if cache_hits else ''}), "
              f"then {compiled['seconds']:.2f}s vs eager {eager['seconds']:.2f}s")
    if diff > 0.01:
        raise CheckFailed(detail, numbers)
    if recompiled:
        raise CheckFailed(f"the second compiled call compiled {recompiled} more graph(s); " + detail, numbers)
    return detail, numbers


@contextlib.contextmanager
def fp32_only():
    """Run attacks and predictions without bf16 autocast (and without TF32), for comparison."""
    from unittest import mock

    off = lambda device, enabled=True: contextlib.nullcontext()  # noqa: E731
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        with mock.patch.object(importlib.import_module("advfeat.attacks.pgd"), "autocast", off), \
                mock.patch.object(importlib.import_module("advfeat.evaluation"), "autocast", off):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def bf16_grid_near_one() -> float:
    """The spacing of bf16 numbers just below 1.0 (pixels near white): 2**-8."""
    one = torch.tensor(1.0, dtype=torch.bfloat16)
    return float(one - torch.nextafter(one, torch.tensor(0.0, dtype=torch.bfloat16)))


def check_bf16(ctx: Context):
    if not ctx.cuda:
        raise Skip("skipped (needs CUDA): autocast runs fp32 on a CPU, so there is nothing to compare")
    tiny = ctx.tiny()
    model, x, y = tiny["model"], tiny["x"], tiny["y"]
    eps, steps = 0.25, 20
    with torch.no_grad(), autocast(ctx.device):  # the default path must really compute in bf16
        dtype = model(prepare_input(x[:2])).dtype
    if dtype != torch.bfloat16:
        raise CheckFailed(f"under advfeat's autocast the model computes in {dtype}, not bfloat16")
    bf16 = _attack_accuracy(model, x, y, eps, steps, False, 512)
    with fp32_only():
        fp32 = _attack_accuracy(model, x, y, eps, steps, False, 512)
    diff = abs(bf16["robust_accuracy"] - fp32["robust_accuracy"])
    grid = bf16_grid_near_one()
    per_pixel = 2.5 * eps / steps / math.sqrt(3 * 32 * 32)
    numbers = {"eps": eps, "steps": steps, "n": len(y), **ctx.tiny_numbers(), "bf16": bf16, "fp32": fp32,
               "robust_accuracy_diff": diff, "bf16_spacing_below_1": grid, "l2_step_per_pixel_rms": per_pixel}
    detail = (f"L2 PGD eps {eps}, {steps} steps, {len(y)} test images, tiny: robust accuracy bf16 "
              f"{bf16['robust_accuracy']:.4f} vs fp32 {fp32['robust_accuracy']:.4f} (abs diff {diff * 100:.2f} points, "
              f"limit 2; clean {bf16['clean_accuracy']:.4f} vs {fp32['clean_accuracy']:.4f}); the model sees its "
              f"input on bf16's grid (spacing {grid:.4f} below 1.0) while one step moves a pixel by "
              f"{per_pixel:.5f} (rms): the iterate stays fp32, so steps still accumulate")
    if diff > 0.02:
        raise CheckFailed(detail, numbers)
    return detail, numbers


# --------------------------------------------------------------------------- DALI


def _compare_loaders(dataset, split: str, device: torch.device, batch: int = 128) -> dict:
    from advfeat.data import make_loader

    options = dict(batch_size=batch, device=device, shuffle=True, seed=9)
    tensor = list(make_loader(dataset, split, loader="tensor", **options))
    dali = list(make_loader(dataset, split, loader="dali", **options))
    if len(tensor) != len(dali):
        raise CheckFailed(f"DALI gave {len(dali)} batches, the tensor loader {len(tensor)}")
    diffs, labels_equal, n = [], True, 0
    for (xt, yt), (xd, yd) in zip(tensor, dali):
        if xd.shape != xt.shape:
            raise CheckFailed(f"DALI batch shape {tuple(xd.shape)} vs tensor loader {tuple(xt.shape)}")
        labels_equal &= bool(torch.equal(yd.cpu(), yt.cpu()))
        diffs.append((xd.float() - xt.float()).abs().flatten().cpu())
        n += len(yt)
    d = torch.cat(diffs)
    return {"images": n, "labels_equal": labels_equal, "max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "p999_abs": float(torch.quantile(d[:: max(1, len(d) // 1_000_000)], 0.999))}


def check_dali(ctx: Context):
    from advfeat.data.dali import dali_available

    if not dali_available():
        where = " on the GPU" if ctx.cuda else ""
        raise Skip(f"skipped (DALI not installed): DALI decoding{where} is unchecked")
    dataset = ctx.dataset()
    if dataset.source.get("format") != "image-folders":
        raise Skip(f"skipped: the data is {dataset.source.get('format')!r}, not image files for DALI to decode")
    numbers = {"split": "test", "cpu": _compare_loaders(dataset, "test", torch.device("cpu"))}
    cpu = numbers["cpu"]
    detail = (f"CPU pipeline (device_id=None) vs tensor loader on {cpu['images']} JPEGs: max abs diff "
              f"{cpu['max_abs']:.1e} (limit 1e-6, both libjpeg-turbo), labels "
              f"{'equal' if cpu['labels_equal'] else 'DIFFER'}")
    ok = cpu["labels_equal"] and cpu["max_abs"] <= 1e-6
    if ctx.cuda:
        gpu = numbers["gpu"] = _compare_loaders(dataset, "test", ctx.device)
        # nvJPEG upsamples 4:2:0 chroma and rounds its IDCT differently from libjpeg-turbo: a few levels
        # on average, more at sharp colour edges. These limits are set from that, not yet from a GPU run.
        numbers["gpu_limits"] = {"mean_abs": 3 / 255, "p999_abs": 64 / 255}
        gpu_ok = gpu["labels_equal"] and gpu["mean_abs"] <= 3 / 255 and gpu["p999_abs"] <= 64 / 255
        detail += (f"; GPU (nvJPEG, mixed) vs tensor loader: mean abs diff {gpu['mean_abs'] * 255:.2f}/255 (limit 3), "
                   f"99.9th pct {gpu['p999_abs'] * 255:.1f}/255 (limit 64), max {gpu['max_abs'] * 255:.1f}/255, labels "
                   f"{'equal' if gpu['labels_equal'] else 'DIFFER'}")
        ok &= gpu_ok
    else:
        detail += "; GPU decoding unchecked (no CUDA)"
    if not ok:
        raise CheckFailed(detail, numbers)
    return detail, numbers


# --------------------------------------------------------------------------- distributed synthesis


def _read_shards(folder: Path) -> dict[str, np.ndarray]:
    from advfeat.data.synthesized import read_shard

    shards = [read_shard(p) for p in sorted(folder.glob("shard-*.safetensors"))]
    if not shards or any(s is None for s in shards):
        raise CheckFailed(f"{folder}: missing or unreadable shards")
    return {k: np.concatenate([s[k] for s in shards]) for k in ("images", "labels")}


def _synth_subprocess_torchrun(args: list[str], timeout: float) -> None:
    """`advfeat synth` as torchrun would start it with one rank: NCCL with a world of one GPU."""
    from advfeat.synthesis.workers import free_port

    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", "advfeat", "synth", *args], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"the NCCL synthesis ran past {timeout:.0f}s and was stopped") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CheckFailed(f"the NCCL synthesis (torchrun-style, 1 rank) exited {proc.returncode}: {last[:300]}")


def _start_synthesis(out: Path, settings, model_dir: str, data: str) -> None:
    """Record the run in `out` as `advfeat synth` does before its first shard, so that synthesize()
    resumes it: that skips the model probe (a 10-step attack on 256 images with weak attacks on
    top), which is not what this check is about and would double its time on a CPU."""
    from advfeat.data import load_dataset
    from advfeat.synthesis.output import run_record, start_out

    dataset = load_dataset(data, subset=settings.subset, seed=settings.seed)
    start_out(out, run_record(settings, model_dir, dataset.source, len(dataset.train)))


def check_distributed(ctx: Context):
    from advfeat.settings import SynthSettings
    from advfeat.synthesis import SynthJob, synthesize

    tiny = ctx.tiny()
    n = 400 if ctx.cuda else 200
    steps = 10 if ctx.cuda else (3 if ctx.quick else 5)
    settings = SynthSettings.of("det", steps=steps, subset=n, shard_size=n // 4, batch_size=n // 4, seed=0,
                                compile=False)
    data = str(ctx.data_path())
    warnings: list[str] = []
    timings = {}

    def run(name: str, workers: int, torchrun: bool = False) -> Path:
        out = ctx.work / f"synth-{name}"
        start = time.perf_counter()
        _start_synthesis(out, settings, str(tiny["folder"]), data)
        if torchrun:
            _synth_subprocess_torchrun(["--kind", "det", "--model", str(tiny["folder"]), "--data", data,
                                        "--subset", str(n), "--steps", str(steps), "--shard-size", str(n // 4),
                                        "--batch-size", str(n // 4), "--no-compile", "--device", str(ctx.device),
                                        "--quiet", "--out", str(out)], timeout=BUDGETS["distributed"][1])
        else:
            # Several GPU workers take cuda:0..N-1 (a device with an index names one GPU only).
            device = "cuda" if ctx.cuda and workers > 1 else str(ctx.device)
            job = SynthJob(settings, str(tiny["folder"]), data, str(out), device=device, workers=workers,
                           progress=False)
            synthesize(job, log=lambda message: warnings.append(message) if "resuming" not in message else None)
        timings[name] = round(time.perf_counter() - start, 2)
        return out

    one = run("one", 1)
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    if ctx.cuda and gpus >= 2:
        many, how = run("all", gpus), f"{gpus} NCCL workers (one per GPU)"
    elif ctx.cuda:
        many = run("all", 1, torchrun=True)
        how = "1 NCCL rank started as torchrun would (one GPU visible: NCCL init, barriers and the torchrun path)"
    else:
        many, how = run("all", 2), "2 gloo workers on the CPU"
    a, b = _read_shards(one), _read_shards(many)
    card = json.loads((many / "dataset.json").read_text())
    labels_equal = a["labels"].shape == b["labels"].shape and bool(np.array_equal(a["labels"], b["labels"]))
    diff = (np.abs(a["images"].astype(np.float32) - b["images"].astype(np.float32)) if labels_equal
            else np.array([np.inf]))
    tol = 2e-2
    numbers = {"kind": "det", "n": n, "steps": steps, "shards": 4, **ctx.tiny_numbers(), "workers": card["workers"],
               "labels_equal": labels_equal, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
               "tolerance": tol, "seconds": timings, "warnings": warnings,
               "target_success": card["stats"].get("target_success")}
    detail = (f"D_det of {n} images, {steps} steps, 4 shards: {how} vs 1 worker: labels "
              f"{'identical' if labels_equal else 'DIFFER'}, images max abs diff {diff.max():.1e} (limit {tol:.0e}, "
              f"float16 storage); {timings.get('all', 0):.1f}s vs {timings['one']:.1f}s")
    if not labels_equal or not diff.max() <= tol:
        raise CheckFailed(detail, numbers)
    return detail, numbers


# --------------------------------------------------------------------------- throughput


def step_flops(model, x: torch.Tensor, y: torch.Tensor, device: torch.device, inversion: bool = False) -> float:
    """FLOPs per image of one attack step (forward + input-gradient backward, frozen weights), or of
    one inversion step (features through fake_relu), counted by torch.utils.flop_counter.

    Written with .backward(), not autograd.grad: FlopCounterMode's module tracker refuses
    autograd.grad on a leaf; FLOPs depend on neither dtype nor layout.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from advfeat.attacks import frozen

    x = x.detach().clone().requires_grad_(True)
    with frozen(model), FlopCounterMode(display=False) as counter:
        with autocast(device):
            if inversion:
                _, features = model(prepare_input(x), return_features=True, fake_relu=True)
                loss = features.float().norm(dim=1).sum()
            else:
                loss = F.cross_entropy(model(prepare_input(x)).float(), y, reduction="none").sum()
        loss.backward()
    return counter.get_total_flops() / len(x)


def train_flops(model, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """FLOPs per image of one training step (forward + backward with weight gradients)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        with autocast(device):
            loss = F.cross_entropy(model(prepare_input(x)).float(), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def inversion_rate(model, x: torch.Tensor, steps: int) -> float:
    """Image-steps/s of representation inversion (MatchFeatures through fake_relu, no eps, keep the
    last iterate: synthesis of D_R / D_NR), eager, from other images of the batch."""
    from advfeat.attacks import MatchFeatures, make_threat, pgd
    from advfeat.evaluation import features_of

    target = features_of(model, x, len(x))
    start = x.roll(1, 0)
    options = dict(threat=make_threat("l2", math.inf, "none"), step_size=0.1, objective=MatchFeatures(True),
                   keep="last", compile=False)
    pgd(model, start, target, steps=1, **options)  # warm-up
    return pgd(model, start, target, steps=steps, **options).image_steps_per_s


def compiled_attack_rate(model, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, float]:
    """(image-steps/s, warm-up seconds) of advfeat's PGD with compile=True on one batch."""
    from advfeat.attacks import make_threat, pgd

    torch.compiler.reset()
    threat = make_threat("l2", 0.5, "none")
    start = time.perf_counter()
    pgd(model, x, y, threat=threat, steps=steps, step_size=0.1, compile=True)
    warmup = time.perf_counter() - start
    result = pgd(model, x, y, threat=threat, steps=steps, step_size=0.1, compile=True)
    return result.image_steps_per_s, max(0.0, warmup - result.seconds)


def preset_archs(names: tuple[str, ...]) -> list[str]:
    """Every architecture the named presets train or attack (what their dry run needs rates for)."""
    from advfeat.presets import PRESETS

    archs: set[str] = set()
    for name in names:
        preset = PRESETS.get(name)
        if preset is None:
            continue
        archs |= {preset.arch, preset.standard.arch, preset.robust.arch, *preset.transfer_archs}
        archs |= {config.arch for config in preset.train_on.values()}
    return sorted(archs)


def _detailed_measurements(arch: str, r: dict, ctx: Context, batch: int, steps: int, left, peak) -> None:
    """FLOPs, inversion and (CUDA) compiled PGD of one architecture, into r, as time allows."""
    from advfeat.models import create_model

    dev = ctx.device
    torch.manual_seed(0)
    model = prepare_model(create_model(arch), dev)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen).to(dev)
    y = torch.randint(0, 10, (batch,), generator=gen).to(dev)
    r["gflop_per_attack_step"] = step_flops(model, x[:8], y[:8], dev) / 1e9
    r["gflop_per_inversion_step"] = step_flops(model, x[:8], y[:8], dev, inversion=True) / 1e9
    r["gflop_per_train_image"] = train_flops(model, x[:8], y[:8], dev) / 1e9
    model.eval()
    if left() > 0:
        r["inversion_image_steps_per_s"] = round(inversion_rate(model, x, steps), 1)
    if ctx.cuda and left() > 0:
        rate, warmup = compiled_attack_rate(model, x, y, steps)
        r["compiled_attack_image_steps_per_s"], r["compile_warmup_seconds"] = round(rate, 1), round(warmup, 1)
    for key, gflop in (("train_images_per_s", "gflop_per_train_image"),
                       ("attack_image_steps_per_s", "gflop_per_attack_step"),
                       ("compiled_attack_image_steps_per_s", "gflop_per_attack_step"),
                       ("inversion_image_steps_per_s", "gflop_per_inversion_step")):
        if key in r:
            r[key.replace("_per_s", "_tflops")] = round(r[key] * r[gflop] / 1e3, 4)
            if peak:
                r[key.replace("_per_s", "_bf16_peak_fraction")] = round(r[key] * r[gflop] * 1e9 / peak, 4)


def _describe(arch: str, r: dict) -> str:
    text = f"{arch}: train {r['train_images_per_s']:.0f} img/s, PGD {r['attack_image_steps_per_s']:.0f}"
    if "compiled_attack_image_steps_per_s" in r:
        text += f" (compiled {r['compiled_attack_image_steps_per_s']:.0f})"
    if "inversion_image_steps_per_s" in r:
        text += f", inversion {r['inversion_image_steps_per_s']:.0f}"
    text += " img-steps/s"
    if "gflop_per_attack_step" in r:
        text += f", {r['gflop_per_attack_step']:.3g} GFLOP/img-step"
    if "attack_image_steps_bf16_peak_fraction" in r:
        text += f", PGD at {r['attack_image_steps_bf16_peak_fraction'] * 100:.1f}% of bf16 peak"
    if "compiled_attack_image_steps_bf16_peak_fraction" in r:
        text += f" ({r['compiled_attack_image_steps_bf16_peak_fraction'] * 100:.1f}% compiled)"
    return text


def _full_doctor_rates(path: Path) -> dict | None:
    """The rates at `path` if a full (not quick) doctor run wrote them, else None."""
    try:
        rates = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rates if rates.get("source") == "advfeat doctor" and rates.get("quick") is False else None


def check_throughput(ctx: Context):
    from advfeat.reproduce.estimate import measure_attack_rate, measure_train_rate, rates_path

    dev = ctx.device
    budget = BUDGETS["throughput"][1 if ctx.cuda else 0]
    start = time.perf_counter()
    left = lambda: budget - (time.perf_counter() - start)  # noqa: E731
    plan = THROUGHPUT["cuda" if ctx.cuda else ("cpu-quick" if ctx.quick else "cpu")]
    detailed, batch, iters, steps = plan["detailed"], plan["batch"], plan["iterations"], plan["steps"]
    others = [a for a in preset_archs(plan["presets"]) if a not in detailed]
    archs: dict[str, dict] = {}
    problems: dict[str, str] = {}
    not_measured: list[str] = []
    peak = bf16_peak(dev)
    # 1. The rates the dry run reads, for every architecture (the detailed ones first); as
    # estimate.calibrate measures them, with more iterations.
    for arch in (*detailed, *others):
        if arch not in detailed and left() < 0:
            not_measured.append(arch)
            continue
        n_iter = iters if arch in detailed else max(2, iters // 2)
        try:
            archs[arch] = {"train_images_per_s": round(measure_train_rate(arch, batch, dev, iterations=n_iter), 1),
                           "attack_image_steps_per_s": round(measure_attack_rate(arch, batch, dev, steps=n_iter), 1)}
        except Exception as err:  # noqa: BLE001 - the other architectures still get their rates
            problems[arch] = _one_line(err)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    path = rates_path(dev)
    rates = {"device": device_name(dev), "source": "advfeat doctor", "batch_size": batch, "quick": ctx.quick,
             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "archs": {a: dict(r) for a, r in archs.items()}}
    write_json(ctx.out_dir / "rates.json", rates)  # a copy that travels with the report
    # A quick run's rates (fewer iterations) do not replace those of a full one.
    kept = _full_doctor_rates(path) if ctx.quick else None
    if kept is None:
        write_json(path, rates)
    # 2. FLOPs, inversion and (CUDA) compiled PGD for the detailed architectures, as time allows.
    for arch in detailed:
        if arch not in archs:
            continue
        try:
            _detailed_measurements(arch, archs[arch], ctx, batch, steps, left, peak)
        except Exception as err:  # noqa: BLE001
            problems[f"{arch} (FLOPs, inversion, compiled)"] = _one_line(err)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    numbers = {"archs": archs, "batch_size": batch, "steps": steps, "rates_file": str(path),
               "bf16_peak_tflops": peak / 1e12 if peak else None, "not_measured": not_measured, "problems": problems}
    detail = "; ".join(_describe(a, archs[a]) for a in detailed if a in archs)
    if kept is None:
        detail += f"; batch {batch}; rates of {', '.join(archs)} -> {path}"
    else:
        detail += (f"; batch {batch}; {path} kept as the full doctor run of {kept.get('created', '?')} wrote it "
                   f"(quick rates only in rates.json)")
    numbers["rates_file_written"] = kept is None
    if not_measured:
        detail += f" (over budget, not measured: {', '.join(not_measured)})"
    if ctx.cuda and not peak:
        detail += "; bf16 peak unknown for this GPU (set ADVFEAT_PEAK_TFLOPS)"
    if problems:
        raise CheckFailed("; ".join(f"{k}: {v}" for k, v in problems.items()) + "; " + detail, numbers)
    return detail, numbers


# --------------------------------------------------------------------------- running and reporting


def _run_check(name: str, ctx: Context) -> dict:
    budget = BUDGETS[name][1 if ctx.cuda else 0]
    start = time.perf_counter()
    numbers: dict = {}
    try:
        fn = globals()[f"check_{name}"]
        detail, numbers = fn(ctx)
        status = "pass"
    except Skip as skip:
        status, detail = "skipped", str(skip)
    except CheckFailed as failed:
        status, detail, numbers = "fail", str(failed), failed.numbers
    except Exception as err:  # noqa: BLE001 - every failure is reported, and the other checks still run
        status, detail = "fail", _one_line(err)
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


def run_doctor(out_dir: str | Path, *, data: str | Path | None = None, device: str = "auto", quick: bool = False,
               log: Callable[[str], None] = print, checks: tuple[str, ...] | list[str] | None = None) -> dict:
    """Run every check (or those named in `checks`), write <out_dir>/doctor.json and doctor.md, and
    the rates file of `advfeat reproduce --dry-run`. Returns the report; report["ok"] is True when
    every check that was not skipped passed."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    names = tuple(checks) if checks else CHECKS
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise UserError(f"unknown check {unknown[0]!r}; choose from {', '.join(CHECKS)}")
    device_error = None
    try:
        dev = resolve_device(device)
    except UserError as err:  # CUDA asked for but unusable: every check then fails on its own line
        device_error, dev = str(err), torch.device(device if device != "auto" else "cpu")
    data_path = Path(data).expanduser() if data is not None else None
    if data_path is not None and not data_path.exists():
        raise UserError(f"--data {data_path} does not exist")
    try:
        name = device_name(dev)
    except Exception as err:  # noqa: BLE001
        name = f"{dev} (unusable: {_one_line(err)})"
    report = {"kind": "advfeat-doctor", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds"), "device": str(dev), "device_name": name, "quick": quick,
              "data": str(data_path) if data_path else None, "environment": environment(), "checks": [],
              "notes": [], "ok": False, "complete": False, "seconds": 0.0}
    log(f"doctor: {name}, {len(names)} checks{' (quick)' if quick else ''} -> {out_dir}")
    with tempfile.TemporaryDirectory(prefix="advfeat-doctor-") as work:
        ctx = Context(out_dir, dev, device_error, data_path, quick, log, Path(work))
        for check in names:
            log(f"doctor: {check} ...")
            result = _run_check(check, ctx)
            report["checks"].append(result)
            report["notes"] = list(ctx.notes)
            report["seconds"] = round(time.perf_counter() - start, 1)
            report["ok"] = all(c["status"] != "fail" for c in report["checks"])
            log(f"doctor: {check}: {result['status']} ({result['seconds']:.1f}s) {result['detail']}")
            if result["numbers"].get("over_budget"):
                log(f"doctor: {check} took {result['seconds']:.0f}s, over its budget of {result['budget_s']}s")
            _write(out_dir, report)
    report["complete"] = True
    report["seconds"] = round(time.perf_counter() - start, 1)
    _write(out_dir, report)
    verdict = "every check that ran passed" if report["ok"] else "some checks FAILED"
    log(f"doctor: {verdict} in {report['seconds']:.0f}s -> {out_dir / 'doctor.md'}")
    return report


# --------------------------------------------------------------------------- command line


def _doctor(args: argparse.Namespace) -> None:
    """`advfeat doctor`: exit status 0 when every check that ran passed, 1 when one failed."""
    out = args.out
    if out is None:
        try:
            slug = device_slug(resolve_device(args.device))
        except UserError:
            slug = re.sub(r"[^a-z0-9]+", "-", args.device.lower()).strip("-") or "auto"
        out = f"results/doctor-{slug}"
    report = run_doctor(out, data=args.data, device=args.device, quick=args.quick,
                        log=lambda message: print(message, file=sys.stderr), checks=args.check)
    print(summary_table(report))
    print(f"{'all checks that ran passed' if report['ok'] else 'SOME CHECKS FAILED'} "
          f"({report['seconds']:.0f}s) -> {Path(out) / 'doctor.md'}")
    if not report["ok"]:
        raise SystemExit(1)


def add_doctor_parser(subparsers) -> None:
    """The `doctor` subcommand (register it in cli.build_parser beside the others)."""
    p = subparsers.add_parser("doctor", help="check this machine and every accelerated path; measure throughput")
    p.add_argument("--out", help="folder for doctor.json and doctor.md (default: results/doctor-<device>)")
    p.add_argument("--data", help="CIFAR-10 in any supported form (default: synthetic images, made on the spot)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--quick", action="store_true", help="smaller sizes; on a CPU also skip the ~25 s compile check")
    p.add_argument("--check", action="append", choices=CHECKS,
                   help="run only this check (repeatable; default: all of them)")
    p.set_defaults(func=_doctor)


def main(argv: list[str] | None = None) -> int:
    """`python -m advfeat.doctor [flags]`: the same as `advfeat doctor [flags]`."""
    parser = argparse.ArgumentParser(prog="python -m advfeat.doctor", add_help=False)
    add_doctor_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["doctor", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.func(args)
    except UserError as err:
        print(f"advfeat: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
