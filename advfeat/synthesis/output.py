"""The dataset folder of a synthesis: which run it holds, whether to resume it, and its card.

A folder holds run.json (what identifies the run: settings, model weights, source data), the
shards, and dataset.json (the card), written last, once every shard is there. A restart with
the same run record resumes at the first missing shard; a different run is never written
into a folder that holds one (unless --force, which clears only advfeat's own files).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from advfeat.checkpoint import WEIGHTS
from advfeat.errors import UserError
from advfeat.io import file_sha256, read_json, write_json
from advfeat.data.arrays import Split
from advfeat.data.synthesized import CARD, DATASET_FORMAT, RUN, SHARD_PATTERN, read_shard, write_dataset_card
from advfeat.settings import SynthSettings
from advfeat.synthesis.draws import shard_ranges



def run_record(settings: SynthSettings, model_dir: str, dataset_source: dict, n: int) -> dict:
    """What identifies a run: a restart with the same record resumes it."""
    return {"settings": asdict(settings), "model_weights_sha256": file_sha256(Path(model_dir) / WEIGHTS),
            "source_digest": dataset_source.get("digest"), "subset": settings.subset, "n": n, "format": DATASET_FORMAT}


def check_out(out: Path, record: dict, force: bool) -> bool:
    """Is `out` free, or a matching partial run (True: resume)? Raises before anything is written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not (out.is_dir() and any(out.iterdir())):
        return False
    previous = read_json(out / RUN) if (out / RUN).is_file() else None
    if previous == json.loads(json.dumps(record, default=str)):
        return True
    if not force:
        what = "a different synthesis run" if previous else "files that are not an advfeat synthesis run"
        raise UserError(f"--out {out} holds {what}; use another --out, or --force to replace it")
    return False


def start_out(out: Path, record: dict) -> None:
    """Clear advfeat's own files of an older run (--force) and record this run."""
    out.mkdir(parents=True, exist_ok=True)
    for f in list(out.glob("shard-*.safetensors")) + [out / CARD]:
        f.unlink(missing_ok=True)
    write_json(out / RUN, record)


def _summary(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "median": float(np.median(values)), "p90": float(np.percentile(values, 90))}


def shard_statistics(settings: SynthSettings, cat: dict[str, np.ndarray], n: int, world: int,
                     wall_seconds: float) -> dict:
    """The card's statistics. Rates come from the shards' own attack timings, not this run's
    wall-clock: a resumed run then reports the speed of the work. Workers run side by side."""
    stats = {"n": n, "shard_seconds": float(cat["seconds"].sum()), "image_steps": int(cat["image_steps"].sum()),
             "wall_seconds": round(wall_seconds, 2)}
    attack_seconds = max(stats["shard_seconds"] / world, 1e-9)
    stats["images_per_s"] = round(n / attack_seconds, 2)
    stats["image_steps_per_s"] = round(stats["image_steps"] / attack_seconds, 1)
    if settings.inversion:
        for key in ("initial_distance", "final_distance", "stored_distance"):
            stats[key] = _summary(cat[key])
    else:
        stats["target_success"] = float(cat["target_success"].mean())
        stats["stored_success"] = float(cat["stored_success"].mean())
        stats["perturbation_norm"] = {"mean": float(cat["perturbation_norm"].mean()),
                                      "max": float(cat["perturbation_norm"].max())}
    return stats


def finalize(out: Path, settings: SynthSettings, dataset, model_dir: str, model_card: dict, world: int,
             device: str, wall_seconds: float) -> dict:
    """Check every shard is there, aggregate statistics, write the card (last)."""
    n = len(dataset.train)
    shards = [read_shard(out / SHARD_PATTERN.format(s)) for s in range(len(shard_ranges(n, settings.shard_size)))]
    if any(s is None for s in shards):
        raise UserError(f"{out}: some shards are missing after the run; rerun the same command")
    cat = {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}
    train = Split(cat["images"], cat["labels"], cat["source_index"])
    return write_dataset_card(out, kind=settings.kind, train=train, shards=len(shards), storage=settings.storage,
                              settings=asdict(settings), source=dataset.source,
                              stats=shard_statistics(settings, cat, n, world, wall_seconds),
                              model={"path": str(Path(model_dir).resolve()), "card": model_card}, workers=world,
                              device=device)
