"""Synthesize the paper's four training sets from CIFAR-10's training images.

    r / nr     representation inversion with a robust (D_R) / standard (D_NR) model: from a
               different, randomly chosen training image x0, minimize
               ||g(z) - g(x)||_2 / ||g(x)||_2 over z in [0,1]^d (g: penultimate layer) with
               L2-normalized gradient steps; z keeps x's label y.
    rand / det targeted L2 PGD on a standard model from x toward t = a random class != y
               (rand) or t = (y + 1) mod 10 (det); z is labelled t.

Both run through the one PGD engine (advfeat.attacks.pgd): inversion is PGD with the
MatchFeatures objective and an infinite eps. Work is split in shards written atomically;
workers (torch.distributed: gloo on CPU, NCCL on GPUs; or torchrun) take disjoint shards,
and a restarted run skips finished shards. All randomness (x0 choice, random target) is
drawn once per sample from (seed, sample index), so the dataset does not depend on the
number of workers or the batch size.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from advfeat import __version__
from advfeat.attacks import MatchFeatures, ReachTarget, make_threat, pgd
from advfeat.checkpoint import WEIGHTS, load_model
from advfeat.errors import UserError
from advfeat.evaluation import AttackSpec, predict_tensor, robust_accuracy
from advfeat.io import read_json, write_json
from advfeat.pipelines import content_digest, load_dataset
from advfeat.pipelines.arrays import Split
from advfeat.pipelines.synthesized import CARD, RUN, SHARD_PATTERN, STORAGE, read_shard, store_images, write_shard
from advfeat.pipelines.tensor_loader import to_unit_float
from advfeat.runtime import autocast, prepare_input, resolve_device
from advfeat.training import device_name

KINDS = ("r", "nr", "rand", "det")

# Paper-faithful defaults per kind (settings are data: override any from the CLI).
PRESETS = {
    # The authors' inversion keeps the last iterate (use_best=False) and has no eps.
    "r": dict(steps=1000, step_size=0.1, eps=math.inf, keep="last"),
    "nr": dict(steps=1000, step_size=0.1, eps=math.inf, keep="last"),
    "rand": dict(steps=100, step_size=0.1, eps=0.5, keep="best"),
    "det": dict(steps=100, step_size=0.1, eps=0.5, keep="best"),
}


@dataclass
class SynthSettings:
    kind: str
    steps: int
    step_size: float
    eps: float
    keep: str = "best"
    batch_size: int = 500
    shard_size: int = 2000
    storage: str = "float16"
    seed: int = 0
    subset: int | None = None
    retire: bool = False  # targeted kinds: stop an example at its first success
    compile: bool | None = None  # torch.compile the model; None: on CUDA only

    @classmethod
    def preset(cls, kind: str, **overrides) -> SynthSettings:
        if kind not in KINDS:
            raise UserError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
        values = PRESETS[kind] | {k: v for k, v in overrides.items() if v is not None}
        return cls(kind=kind, **values)

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
            (self.step_size > 0, f"step size must be positive, got {self.step_size}"),
            (self.eps >= 0, f"eps must be >= 0, got {self.eps}"),
            (self.batch_size >= 1 and self.shard_size >= 1, "batch and shard sizes must be at least 1"),
            (self.storage in STORAGE, f"unknown storage {self.storage!r}; choose {', '.join(STORAGE)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @property
    def inversion(self) -> bool:
        return self.kind in ("r", "nr")


@dataclass
class SynthJob:
    """Everything a worker needs: picklable, so spawned processes receive it whole."""

    settings: SynthSettings
    model_dir: str
    data: str | None
    out: str
    device: str = "auto"
    workers: int = 1
    progress: bool = True
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- the plan


def sample_plan(kind: str, labels: np.ndarray, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """Per-sample randomness for the whole training set, from the seed alone.

    r/nr: start_index, a uniformly random other image; rand: a target uniform over the
    classes other than y; det: (y + 1) mod C. new_labels: what each result is labelled.
    """
    n = len(labels)
    # r and nr share their stream: D_R and D_NR start each image from the same x0.
    rng = np.random.default_rng([seed, 0 if kind in ("r", "nr") else KINDS.index(kind)])
    if kind in ("r", "nr"):
        other = rng.integers(0, n - 1, size=n)
        other += other >= np.arange(n)  # skip the image itself: uniform over the others
        return {"start_index": other, "new_labels": labels}
    if kind == "rand":
        target = (labels + rng.integers(1, num_classes, size=n)) % num_classes
    else:
        target = (labels + 1) % num_classes
    return {"target": target, "new_labels": target}


def shard_ranges(n: int, shard_size: int) -> list[range]:
    return [range(i, min(i + shard_size, n)) for i in range(0, n, shard_size)]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- one shard


@torch.no_grad()
def features_of(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, len(x), batch_size):
        with autocast(x.device):
            out.append(model(prepare_input(x[i:i + batch_size], x.device), return_features=True)[1].float())
    return torch.cat(out)


def relative_distance(model, z: torch.Tensor, target: torch.Tensor, batch_size: int) -> torch.Tensor:
    return (features_of(model, z, batch_size) - target).norm(dim=1) / target.norm(dim=1).clamp(min=1e-12)


def synthesize_shard(model, train: Split, plan: dict, index: range, settings: SynthSettings,
                     device: torch.device, progress=None) -> dict[str, np.ndarray]:
    """Synthesize the examples `index` (positions in `train`); arrays for one shard file."""
    images = train.images
    x = to_unit_float(torch.from_numpy(images[index.start:index.stop]).to(device))
    threat = make_threat("l2", settings.eps, "none")
    common = dict(steps=settings.steps, step_size=settings.step_size, keep=settings.keep,
                  batch_size=settings.batch_size, compile=settings.compile, progress=progress)
    start = time.perf_counter()
    if settings.inversion:
        target = features_of(model, x, settings.batch_size)
        start_index = plan["start_index"][index.start:index.stop]
        x0 = to_unit_float(torch.from_numpy(images[start_index]).to(device))
        result = pgd(model, x0, target, threat=threat, objective=MatchFeatures(), **common)
    else:
        target = torch.from_numpy(plan["target"][index.start:index.stop]).to(device)
        result = pgd(model, x, target, threat=threat, objective=ReachTarget(), retire=settings.retire, **common)
    seconds = time.perf_counter() - start
    stored = store_images(result.x_adv.cpu().numpy(), settings.storage)
    # Statistics of what was stored, since storage rounds the pixels.
    restored = to_unit_float(torch.from_numpy(stored).to(device))
    arrays = {
        "images": stored,
        "labels": plan["new_labels"][index.start:index.stop].astype(np.int64),
        "position": np.arange(index.start, index.stop, dtype=np.int64),  # in the (subset) training split
        "source_index": train.source_index[index.start:index.stop],  # in the full source training split
        "seconds": np.array([seconds]),
        "image_steps": np.array([result.image_steps], dtype=np.int64),
    }
    if settings.inversion:
        arrays |= {
            "start_index": start_index.astype(np.int64),  # a position, like "position"
            "initial_distance": relative_distance(model, x0, target, settings.batch_size).cpu().numpy(),
            "final_distance": (-result.objective).cpu().numpy(),
            "stored_distance": relative_distance(model, restored, target, settings.batch_size).cpu().numpy(),
        }
    else:
        arrays |= {
            "target_success": result.success.cpu().numpy().astype(np.uint8),
            "stored_success": (predict_tensor(model, restored, settings.batch_size) == target).cpu().numpy()
            .astype(np.uint8),
            "perturbation_norm": (restored - x).flatten(1).norm(dim=1).cpu().numpy(),
        }
    return arrays


# --------------------------------------------------------------------------- workers


def _torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_device(job: SynthJob, local_rank: int) -> torch.device:
    device = resolve_device(job.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def run_worker(rank: int, world: int, job: SynthJob, local_rank: int) -> None:
    """Synthesize this rank's shards (every world-th shard), skipping finished ones."""
    device = worker_device(job, local_rank)
    if device.type == "cpu" and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    settings = job.settings
    model, _ = load_model(job.model_dir, device)
    train = load_dataset(job.data, subset=settings.subset, seed=settings.seed).train
    plan = sample_plan(settings.kind, train.labels, model.num_classes, settings.seed)
    out = Path(job.out)
    ranges = shard_ranges(len(train), settings.shard_size)
    mine = [s for s in range(rank, len(ranges), world) if read_shard(out / SHARD_PATTERN.format(s)) is None]
    total = sum(len(ranges[s]) for s in mine)
    bar = tqdm(total=total, desc=f"synth {settings.kind} (worker {rank})", unit="img", file=sys.stderr,
               disable=None if job.progress and rank == 0 else True, dynamic_ncols=True)
    done_before, steps_before, start = 0, 0, time.perf_counter()
    for shard in mine:
        def progress(finished: int, image_steps: int) -> None:
            bar.n = done_before + finished
            rate = (steps_before + image_steps) / (time.perf_counter() - start)
            bar.set_postfix(img_steps_s=f"{rate:.0f}", refresh=True)

        arrays = synthesize_shard(model, train, plan, ranges[shard], settings, device, progress)
        write_shard(out, shard, arrays)
        done_before += len(ranges[shard])
        steps_before += int(arrays["image_steps"][0])
        bar.n = done_before
        bar.refresh()
    bar.close()


def _spawned(rank: int, world: int, job: SynthJob, port: int) -> None:
    backend = "nccl" if resolve_device(job.device).type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        run_worker(rank, world, job, local_rank=rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the run


def run_record(job: SynthJob, dataset_source: dict, n: int) -> dict:
    """What identifies a run: a restart with the same record resumes it."""
    return {"settings": asdict(job.settings), "model_weights_sha256": file_digest(Path(job.model_dir) / WEIGHTS),
            "source_digest": dataset_source.get("digest"), "subset": job.settings.subset, "n": n}


def check_out(job: SynthJob, record: dict, force: bool) -> bool:
    """Is --out free, or a matching partial run (True: resume)? Raises before anything is written."""
    out = Path(job.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not (out.is_dir() and any(out.iterdir())):
        return False
    previous = read_json(out / RUN) if (out / RUN).is_file() else None
    if previous == json_roundtrip(record):
        return True
    if not force:
        what = "a different synthesis run" if previous else "files that are not an advfeat synthesis run"
        raise UserError(f"--out {out} holds {what}; use another --out, or --force to replace it")
    return False


def start_out(job: SynthJob, record: dict) -> None:
    """Clear advfeat's own files of an older run (--force) and record this run."""
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in list(out.glob("shard-*.safetensors")) + [out / CARD]:
        f.unlink(missing_ok=True)
    write_json(out / RUN, record)


def json_roundtrip(obj) -> dict:
    import json

    return json.loads(json.dumps(obj, default=str))


def check_model_fits(model, card: dict, kind: str, dataset, device: torch.device) -> list[str]:
    """Refuse unusable models; warn when a model's robustness does not suit the kind."""
    if not hasattr(model, "features") or not getattr(model, "feature_dim", 0):
        raise UserError(f"model {card.get('arch')} exposes no penultimate layer; inversion needs one")
    if model.num_classes != dataset.num_classes:
        raise UserError(f"model has {model.num_classes} classes but the data has {dataset.num_classes}")
    # The card says how the model was trained; a quick attack checks it (and decides for
    # models whose card does not say). Only non-robustness is a reliable probe result: a weak,
    # underfit net also keeps most of its (low) accuracy under attack.
    # Evenly spaced images: splits are often stored class by class, so the first 256 are not a sample.
    pick = np.unique(np.linspace(0, len(dataset.train) - 1, min(256, len(dataset.train))).astype(int))
    x = to_unit_float(torch.from_numpy(dataset.train.images[pick]).to(device))
    y = torch.from_numpy(dataset.train.labels[pick]).to(device)
    probe = robust_accuracy(model, x, y, [0.25], AttackSpec(steps=10, batch_size=256))
    clean, robust = probe["clean_accuracy"], probe["robust"][0]["accuracy"]
    probe_robust = clean > 0 and robust / clean >= 0.5
    card_robust = bool(card["robust"]) if "robust" in card else None
    measured = f"it keeps {robust:.0%} of its {clean:.0%} accuracy under an L2 eps=0.25 attack"
    warnings = []
    if kind == "r" and (card_robust is False or not probe_robust):
        how = "was trained without adversarial training" if card_robust is False else "looks non-robust"
        warnings.append(f"kind r wants a robust model, but this one {how} ({measured}): the result is not D_R")
    if kind in ("nr", "rand", "det") and (card_robust or (card_robust is None and probe_robust)):
        warnings.append(f"kind {kind} wants a standard model, but this one is robust ({measured})")
    return warnings


def synthesize(job: SynthJob, *, force: bool = False, log=None) -> dict:
    """Run (or resume) a synthesis job with job.workers processes; returns the card."""
    log = log or (lambda message: print(message, file=sys.stderr))
    settings = job.settings
    under_torchrun = _torchrun()
    rank = int(os.environ.get("RANK", 0)) if under_torchrun else 0
    world = int(os.environ.get("WORLD_SIZE", 1)) if under_torchrun else job.workers
    device = resolve_device(job.device)
    if device.type == "cuda" and not under_torchrun and world > torch.cuda.device_count():
        raise UserError(f"--gpus {world} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    if under_torchrun:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    wall_start = time.perf_counter()
    try:
        if rank == 0:
            dataset = load_dataset(job.data, subset=settings.subset, seed=settings.seed)
            model, model_card = load_model(job.model_dir, device)
            record = run_record(job, dataset.source, len(dataset.train))
            if check_out(job, record, force):
                log(f"advfeat: resuming the synthesis in {job.out}")
            else:
                for warning in check_model_fits(model, model_card, settings.kind, dataset, device):
                    log(f"advfeat: warning: {warning}")
                start_out(job, record)
            del model
        if under_torchrun:
            dist.barrier()
            run_worker(rank, world, job, local_rank=int(os.environ.get("LOCAL_RANK", 0)))
            dist.barrier()
        elif world > 1:
            torch.multiprocessing.spawn(_spawned, args=(world, job, _free_port()), nprocs=world, join=True)
        else:
            run_worker(0, 1, job, local_rank=0)
        card = finalize(job, dataset, model_card, world, time.perf_counter() - wall_start) if rank == 0 else {}
    finally:
        if under_torchrun:
            dist.destroy_process_group()
    return card


def finalize(job: SynthJob, dataset, model_card: dict, world: int, wall_seconds: float) -> dict:
    """Check every shard is there, aggregate statistics, write the card (last)."""
    settings, out = job.settings, Path(job.out)
    n = len(dataset.train)
    shards = [read_shard(out / SHARD_PATTERN.format(s)) for s in range(len(shard_ranges(n, settings.shard_size)))]
    if any(s is None for s in shards):
        raise UserError(f"{out}: some shards are missing after the run; rerun the same command")
    cat = {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}
    stats = {"n": n, "shard_seconds": float(cat["seconds"].sum()), "image_steps": int(cat["image_steps"].sum()),
             "wall_seconds": round(wall_seconds, 2)}
    # Rates come from the shards' own attack timings, not this run's wall-clock: a resumed run
    # then reports the speed of the work, not of the resume. Workers run side by side.
    attack_seconds = stats["shard_seconds"] / world
    stats["images_per_s"] = round(n / max(attack_seconds, 1e-9), 2)
    stats["image_steps_per_s"] = round(stats["image_steps"] / max(attack_seconds, 1e-9), 1)
    if settings.inversion:
        for key in ("initial_distance", "final_distance", "stored_distance"):
            stats[key] = {"mean": float(cat[key].mean()), "median": float(np.median(cat[key])),
                          "p90": float(np.percentile(cat[key], 90))}
    else:
        stats["target_success"] = float(cat["target_success"].mean())
        stats["stored_success"] = float(cat["stored_success"].mean())
        stats["perturbation_norm"] = {"mean": float(cat["perturbation_norm"].mean()),
                                      "max": float(cat["perturbation_norm"].max())}
    train = Split(cat["images"], cat["labels"], cat["source_index"])
    card = {
        "kind": settings.kind,
        "format": "advfeat-dataset",
        "advfeat_version": __version__,
        "shards": len(shards),
        "n": n,
        "storage": settings.storage,
        "settings": asdict(settings),
        "source": {k: dataset.source.get(k) for k in ("format", "path", "digest", "subset")},
        "model": {"path": str(Path(job.model_dir).resolve()), "card": model_card},
        "workers": world,
        "device": device_name(resolve_device(job.device)),
        "stats": stats,
        "digest": content_digest(train),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / CARD, card)
    return card
