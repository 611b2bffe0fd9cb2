"""The dali check: DALI's decoding against the tensor loader, batch for batch (where DALI is installed)."""

from __future__ import annotations

import torch

from advfeat.doctor.context import Context
from advfeat.doctor.registry import CheckFailed, Skip, check

# nvJPEG upsamples 4:2:0 chroma and rounds its IDCT differently from libjpeg-turbo: a few levels
# on average, more at sharp colour edges. These limits are set from that, not yet from a GPU run.
GPU_LIMITS = {"mean_abs": 3 / 255, "p999_abs": 64 / 255}
CPU_LIMIT = 1e-6  # both decode with libjpeg-turbo


def compare_loaders(dataset, split: str, device: torch.device, batch: int = 128) -> dict:
    """The DALI loader against the tensor loader on one split, same order: labels equal, and the
    max, mean and 99.9th-percentile absolute pixel difference."""
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


def _labels(ok: bool) -> str:
    return "equal" if ok else "DIFFER"


def _gpu_comparison(dataset, device: torch.device) -> tuple[dict, str, bool]:
    gpu = compare_loaders(dataset, "test", device)
    ok = gpu["labels_equal"] and gpu["mean_abs"] <= GPU_LIMITS["mean_abs"] and gpu["p999_abs"] <= GPU_LIMITS["p999_abs"]
    detail = (f"; GPU (nvJPEG, mixed) vs tensor loader: mean abs diff {gpu['mean_abs'] * 255:.2f}/255 (limit 3), "
              f"99.9th pct {gpu['p999_abs'] * 255:.1f}/255 (limit 64), max {gpu['max_abs'] * 255:.1f}/255, labels "
              f"{_labels(gpu['labels_equal'])}")
    return gpu, detail, ok


@check("dali", cpu_s=30, cuda_s=60)
def check_dali(ctx: Context):
    """Fails where labels differ, or pixels differ beyond CPU_LIMIT (CPU pipeline) or GPU_LIMITS (nvJPEG)."""
    from advfeat.data.dali import dali_available

    if not dali_available():
        where = " on the GPU" if ctx.cuda else ""
        raise Skip(f"skipped (DALI not installed): DALI decoding{where} is unchecked")
    dataset = ctx.dataset()
    if dataset.source.get("format") != "image-folders":
        raise Skip(f"skipped: the data is {dataset.source.get('format')!r}, not image files for DALI to decode")
    numbers = {"split": "test", "cpu": compare_loaders(dataset, "test", torch.device("cpu"))}
    cpu = numbers["cpu"]
    detail = (f"CPU pipeline (device_id=None) vs tensor loader on {cpu['images']} JPEGs: max abs diff "
              f"{cpu['max_abs']:.1e} (limit 1e-6, both libjpeg-turbo), labels {_labels(cpu['labels_equal'])}")
    ok = cpu["labels_equal"] and cpu["max_abs"] <= CPU_LIMIT
    if ctx.cuda:
        numbers["gpu"], gpu_detail, gpu_ok = _gpu_comparison(dataset, ctx.device)
        numbers["gpu_limits"] = dict(GPU_LIMITS)
        detail, ok = detail + gpu_detail, ok and gpu_ok
    else:
        detail += "; GPU decoding unchecked (no CUDA)"
    if not ok:
        raise CheckFailed(detail, numbers)
    return detail, numbers
