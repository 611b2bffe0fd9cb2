"""`advfeat reproduce`: the paper end to end, as content-addressed stages.

Each stage's folder is named by a hash of what determines its output (its settings and
the keys of its inputs), and holds a stage.json once it has finished. A rerun reuses every
finished stage whose inputs and settings are unchanged; an interrupted stage resumes
through its own mechanism (training's resume state, synthesis's finished shards).

    1. train a standard and an L2-robust model on D
    2. synthesize D_R (robust model), D_NR, D_rand, D_det (standard model)
    3. train a standard model on each
    4. evaluate every model on the real test set (main attack, stronger PGD, CW-L2)
    5. transferability vs learnability (Figure 3)
    6. the Gaussian theory figures
    7. the report (report.py)
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from advfeat.checkpoint import RESUME, load_model
from advfeat.errors import UserError
from advfeat.evaluation import AttackSpec, predict_tensor, robust_accuracy, split_tensors
from advfeat.io import read_json, write_json
from advfeat.pipelines import load_dataset
from advfeat.presets import Preset
from advfeat.runtime import resolve_device
from advfeat.synthesis import KINDS, SynthJob, SynthSettings, synthesize
from advfeat.training import TrainConfig, device_name, train

STAGE_FORMAT = 1  # bump to invalidate every cached stage


class Pipeline:
    """Runs stages, reusing finished ones; keeps a record of each for the report."""

    def __init__(self, out: Path, log: Callable[[str], None]):
        self.out, self.log = out, log
        self.records: list[dict] = []

    def stage(self, name: str, key_material: dict, run: Callable[[Path], dict]) -> tuple[Path, dict]:
        text = json.dumps({"stage": name, "format": STAGE_FORMAT, **key_material}, sort_keys=True, default=str)
        key = hashlib.sha256(text.encode()).hexdigest()[:12]
        folder = self.out / "stages" / f"{name}-{key}"
        marker = folder / "stage.json"
        if marker.is_file():
            record = read_json(marker)
            self.records.append(record | {"cached": True})
            self.log(f"[{name}] reused {folder.name}")
            return folder, record["result"]
        folder.mkdir(parents=True, exist_ok=True)
        self.log(f"[{name}] running in {folder}")
        start = time.perf_counter()
        result = run(folder)
        record = {"name": name, "key": key, "folder": str(folder), "seconds": round(time.perf_counter() - start, 2),
                  "result": result, "inputs": json.loads(text)}
        write_json(marker, record)
        self.records.append(record | {"cached": False})
        return folder, result


def _train_stage(pipe: Pipeline, name: str, config: TrainConfig, data_key: dict, load, device) -> tuple[Path, dict]:
    def run(folder: Path) -> dict:
        model_dir = folder / "model"
        resume = (model_dir / RESUME).is_file()
        card = train(config, load(), model_dir, device=device, resume=resume, force=not resume,
                     progress=False, log=pipe.log)
        metrics = card["metrics"]
        return {"model": str(model_dir), "test_accuracy": metrics.get("test_accuracy"),
                "images_per_s": metrics.get("images_per_s"), "epochs": card["epochs_done"]}

    return pipe.stage(name, {"config": asdict(config), "data": data_key}, run)


def _synth_stage(pipe: Pipeline, kind: str, settings: SynthSettings, model_key: dict, model_dir: str, data,
                 device: str, gpus: int) -> tuple[Path, dict]:
    def run(folder: Path) -> dict:
        job = SynthJob(settings, model_dir, data, str(folder / "dataset"), device=device, workers=gpus)
        card = synthesize(job, log=pipe.log)
        return {"dataset": str(folder / "dataset"), "stats": card["stats"]}

    return pipe.stage(f"synth-{kind}", {"settings": asdict(settings), "model": model_key}, run)


def _eval_stage(pipe: Pipeline, name: str, model_key: dict, model_dir: str, x, y, eps, spec: AttackSpec,
                data_key: dict, device) -> dict:
    def run(folder: Path) -> dict:
        model, _ = load_model(model_dir, device)
        return robust_accuracy(model, x, y, eps, spec)

    # format 2: rows list the surviving examples (robust_index); 3: the test split is shuffled
    key = {"model": model_key, "spec": asdict(spec), "eps": eps, "data": data_key, "n": len(y), "format": 3}
    return pipe.stage(name, key, run)[1]


def _transfer_stage(pipe: Pipeline, arch: str, standard: dict, on_det: dict, det_dir: str, n_images: int,
                    keys: dict, device) -> dict:
    """Figure 3 point: transfer rate of the source's D_det examples to `arch` trained on D,
    and the test accuracy of `arch` trained on D_det (learnability)."""

    def run(folder: Path) -> dict:
        det = load_dataset(det_dir, test_data=None)
        # A seeded sample: the dataset is stored class by class, like the split it came from.
        take = np.sort(np.random.default_rng(0).permutation(len(det.train))[:n_images])
        x = torch.from_numpy(det.train.images[take]).to(device)
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        target = torch.from_numpy(det.train.labels[take]).to(device)
        model, _ = load_model(standard["model"], device)
        rate = float((predict_tensor(model, x) == target).float().mean())
        return {"arch": arch, "transfer_rate": rate, "det_test_accuracy": on_det["test_accuracy"],
                "standard_test_accuracy": standard["test_accuracy"]}

    return pipe.stage(f"transfer-{arch}", {"keys": keys, "n": n_images, "sample": "seeded"}, run)[1]


def reproduce(preset: Preset, data: str | None, out: Path | str, *, device: str = "auto", gpus: int = 1,
              log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the whole reproduction; returns the report's data."""
    log = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out)
    torch_device = resolve_device(device)
    if torch_device.type == "cpu" and preset.needs_gpu and device == "auto":
        raise UserError(f"preset {preset.name} needs a GPU (no CUDA device found); use --preset smoke, "
                        f"or --device cpu to run it on the CPU anyway")
    if torch_device.type == "cuda" and gpus > torch.cuda.device_count():
        raise UserError(f"--gpus {gpus} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline(out, log)
    dataset = load_dataset(data, subset=preset.subset, test_subset=preset.test_subset, seed=preset.seed)
    data_path = dataset.source["path"]
    data_key = {"digest": dataset.source["digest"], "subset": preset.subset, "seed": preset.seed}
    load_d = lambda: load_dataset(data_path, subset=preset.subset, test_subset=preset.test_subset,  # noqa: E731
                                  seed=preset.seed)

    def config(overrides: dict, arch: str | None = None) -> TrainConfig:
        return TrainConfig(arch=arch or preset.arch, seed=preset.seed, eval_every=10**6, **overrides)

    # 1. the two source models
    _, standard = _train_stage(pipe, "train-standard", config(preset.standard), data_key, load_d, torch_device)
    _, robust = _train_stage(pipe, "train-robust", config(preset.robust), data_key, load_d, torch_device)
    models = {"standard": standard, "robust": robust}
    model_keys = {name: {"stage": r["model"]} for name, r in models.items()}

    # 2-3. the four datasets, and a standard model trained on each
    synthesized, trained_on = {}, {}
    for kind in KINDS:
        source = "robust" if kind == "r" else "standard"
        settings = SynthSettings.preset(kind, seed=preset.seed, subset=preset.subset, **preset.synth[kind])
        _, synthesized[kind] = _synth_stage(pipe, kind, settings, model_keys[source], models[source]["model"],
                                            data_path, device, gpus)
        det_key = {"stage": synthesized[kind]["dataset"]}
        load_k = lambda k=kind: load_dataset(synthesized[k]["dataset"], test_data=data_path,  # noqa: E731
                                             test_subset=preset.test_subset, seed=preset.seed)
        _, trained_on[kind] = _train_stage(pipe, f"train-on-{kind}", config(preset.train_on[kind]), det_key, load_k,
                                           torch_device)
        models[kind] = trained_on[kind]
        model_keys[kind] = {"stage": trained_on[kind]["model"]}

    # 4. evaluation on the real test set
    x, y = split_tensors(dataset.test, torch_device)
    # Splits keep their source's order, which for image folders is class by class. Shuffle the
    # test split once (seeded) so that its first n images, where the strong attacks run, mix
    # every class.
    order = torch.from_numpy(np.random.default_rng(preset.seed).permutation(len(y))).to(torch_device)
    x, y = x[order], y[order]
    strong = slice(0, min(preset.strong_subset, len(y)))
    evaluations = {}
    for name, record in models.items():
        main = _eval_stage(pipe, f"eval-{name}", model_keys[name], record["model"], x, y, preset.eps,
                           AttackSpec(**preset.attack), data_key, torch_device)
        stronger = _eval_stage(pipe, f"eval-strong-{name}", model_keys[name], record["model"], x[strong], y[strong],
                               preset.eps, AttackSpec(**preset.strong_attack), data_key, torch_device)
        cw = _eval_stage(pipe, f"eval-cw-{name}", model_keys[name], record["model"], x[strong], y[strong],
                         preset.eps, AttackSpec(**preset.cw_attack), data_key, torch_device)
        evaluations[name] = {"main": main, "strong": stronger, "cw": cw}

    # 5. transferability vs learnability
    transfer = []
    det_dir = synthesized["det"]["dataset"]
    for arch in preset.transfer_archs:
        _, on_d = _train_stage(pipe, f"transfer-train-{arch}", config(preset.transfer_train, arch), data_key, load_d,
                               torch_device)
        load_det = lambda: load_dataset(det_dir, test_data=data_path, test_subset=preset.test_subset,  # noqa: E731
                                        seed=preset.seed)
        det_train = dict(preset.transfer_train, augment=False)
        _, on_det = _train_stage(pipe, f"transfer-det-{arch}", config(det_train, arch), {"stage": det_dir}, load_det,
                                 torch_device)
        transfer.append(_transfer_stage(pipe, arch, on_d, on_det, det_dir, preset.transfer_images,
                                        {"d": on_d["model"], "det": on_det["model"]}, torch_device))

    # 6. theory
    def theory(folder: Path) -> dict:
        from advfeat.theory.figures import run

        summary = run(folder)
        return {"folder": str(folder), "headline": summary["headline"]}

    _, theory_result = pipe.stage("theory", {"seed": preset.seed}, theory)

    # 7. report
    from advfeat.report import write_report

    results = {"preset": preset.to_dict(), "data": dataset.source, "device": device_name(torch_device),
               "gpus": gpus, "models": models, "synthesized": synthesized, "evaluations": evaluations,
               "transfer": transfer, "theory": theory_result, "stages": pipe.records,
               "total_seconds": round(time.perf_counter() - started, 2)}
    return write_report(out, results, samples=_sample_images(synthesized, dataset, n=8))


def _sample_images(synthesized: dict, dataset, n: int) -> dict:
    """n examples of each synthesized dataset, spread over the classes, beside their originals."""
    from advfeat.pipelines.synthesized import SHARD_PATTERN, read_shard

    samples = {}
    for kind, record in synthesized.items():
        folder = Path(record["dataset"])
        size = record["stats"]["n"]
        shard_size = len(read_shard(folder / SHARD_PATTERN.format(0))["labels"])
        picks = np.linspace(0, size - 1, n).astype(int)
        shards = {s: read_shard(folder / SHARD_PATTERN.format(s)) for s in set(picks // shard_size)}
        rows = [{k: v[p % shard_size] for k, v in shards[p // shard_size].items()
                 if k not in ("seconds", "image_steps")} for p in picks]
        images = np.stack([r["images"] for r in rows])
        entry = {"synthesized": images.astype(np.float32) / (255 if images.dtype == np.uint8 else 1),
                 "original": dataset.train.images[[r["position"] for r in rows]].astype(np.float32) / 255,
                 "labels": np.array([r["labels"] for r in rows])}
        if "start_index" in rows[0]:
            entry["start"] = dataset.train.images[[r["start_index"] for r in rows]].astype(np.float32) / 255
        samples[kind] = entry
    return samples
