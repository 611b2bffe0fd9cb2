"""What each stage of a reproduction does: train, synthesize, evaluate, measure transfer.

Each function here is a stage body: it reads its inputs from their stage folders, writes into
its own folder, and returns a small JSON result with no absolute paths (see pipeline.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from advfeat.attacks import ReachTarget, make_threat, pgd
from advfeat.checkpoint import RESUME, load_model
from advfeat.evaluation import predict_tensor, robust_accuracy, shifted_label_accuracy, split_tensors
from advfeat.data import Dataset, load_dataset
from advfeat.data.arrays import Split
from advfeat.errors import UserError
from advfeat.settings import AttackSpec, SynthSettings, TrainConfig
from advfeat.synthesis import SynthJob, synthesize
from advfeat.training import train

MODEL, DATASET = "model", "dataset"  # the subfolders holding a stage's model or dataset


@dataclass
class Sources:
    """The source data of a reproduction, read once per process: a training subset per seed and
    one fixed test set shared by every seed (so per-image results pair across models).

    The test set: `test_subset` images (None: all) drawn, stratified by class with seed 0, from
    the test images nobody has looked at yet. `looked_at_test_images` lists the earlier looks in
    order, each (n, seed): n images drawn, stratified with that seed, from what the looks before
    it left (the exploration that chose the preset's settings, then any earlier confirmatory
    run). The run's test images are drawn from what all of them leave (held out)."""

    path: str
    subset: int | None
    test_subset: int | None
    device: torch.device
    looked_at_test_images: tuple = ()
    source: dict = field(default_factory=dict)  # what load_dataset says of the data: format, lossy, ...
    _cache: dict = field(default_factory=dict)

    @property
    def test_images(self) -> dict:
        """What identifies the test set, for stage keys and the report."""
        looks = [list(look) for look in self.looked_at_test_images]
        return {"subset": self.test_subset, "pool": "held out from earlier looks" if looks else "all",
                "looked_at": looks or None}

    def test_pool(self) -> Split:
        """The test images a test set may be drawn from: those no earlier look has drawn."""
        pool = load_dataset(self.path).test
        for n, seed in self.looked_at_test_images:
            if n >= len(pool):
                raise UserError(f"the preset's earlier looks at the test split ({self.test_images['looked_at']}: n, "
                                f"seed) are larger than the {len(pool)} test images left for them; use data with the "
                                f"full test split, or another preset")
            seen = pool.stratified_subset(n, seed).source_index
            pool = pool.take(np.flatnonzero(~np.isin(pool.source_index, seen)))
        return pool

    def test(self):
        if "test" not in self._cache:
            pool = self.test_pool()
            if self.test_subset is not None and self.test_subset > len(pool):
                raise UserError(f"--test-subset {self.test_subset} is larger than the {len(pool)} test images "
                                f"available ({self.test_images['pool']})")
            self._cache["test"] = pool.stratified_subset(self.test_subset, 0) if self.test_subset else pool
        return self._cache["test"]

    def train_data(self, seed: int) -> Dataset:
        data = load_dataset(self.path, subset=self.subset, seed=seed)
        data.test = self.test()
        return data

    def test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test set on the device, shuffled once (seed 0): splits are stored class by class,
        and the strong attacks and transfer samples take the first images."""
        if "tensors" not in self._cache:
            x, y = split_tensors(self.test(), self.device)
            order = torch.from_numpy(np.random.default_rng(0).permutation(len(y))).to(self.device)
            self._cache["tensors"] = (x[order], y[order])
        return self._cache["tensors"]

    def dataset_with_test(self, folder: Path) -> Dataset:
        data = load_dataset(folder, test_data=self.path)
        data.test = self.test()
        return data


def train_stage(config: TrainConfig, load, device: torch.device, log):
    """Train (or resume training) a model into <folder>/model."""

    def run(ctx) -> dict:
        model_dir = ctx.folder / MODEL
        resume = (model_dir / RESUME).is_file()
        card = train(config, load(ctx), model_dir, device=device, resume=resume, force=not resume, progress=False,
                     log=log)
        metrics = card["metrics"]
        return {"test_accuracy": metrics.get("test_accuracy"), "images_per_s": metrics.get("images_per_s"),
                "epochs": card["epochs_done"]}

    return run


def synth_stage(settings: SynthSettings, model_stage: str, sources: Sources, device: str, gpus: int, log):
    """Synthesize (or resume) a dataset into <folder>/dataset with the model of `model_stage`."""

    def run(ctx) -> dict:
        job = SynthJob(settings, str(ctx.folder_of(model_stage) / MODEL), sources.path, str(ctx.folder / DATASET),
                       device=device, workers=gpus, progress=False)
        return {"stats": synthesize(job, log=log)["stats"]}

    return run


def evaluate_stage(model_stage: str, sources: Sources, eps: list[float], main: AttackSpec, strong: AttackSpec,
                   cw: AttackSpec, strong_n: int, dataset_stage: str | None, device: torch.device):
    """Clean predictions and robust accuracy on the shared test set: the main attack on every
    image; the stronger PGD and CW on the first strong_n. For a model trained on a dataset whose
    labels are a fixed shift of the originals (D_det), also Appendix D.6's accuracy on the test
    set relabelled the same way."""

    def run(ctx) -> dict:
        model, _ = load_model(ctx.folder_of(model_stage) / MODEL, device)
        x, y = sources.test_tensors()
        predictions = predict_tensor(model, x, main.batch_size)
        first = slice(0, min(strong_n, len(y)))
        result = {"n": len(y), "num_classes": model.num_classes,  # chance for the claims (claims.py)
                  "clean_accuracy": float((predictions == y).float().mean()),
                  "correct": (predictions == y).int().cpu().tolist(),  # per image: pairs models image by image
                  # Each keeps its per-image survivors (robust_index): they pair models image by image.
                  "main": robust_accuracy(model, x, y, eps, main),
                  "strong": robust_accuracy(model, x[first], y[first], eps, strong),
                  "cw": robust_accuracy(model, x[first], y[first], eps, cw)}
        if dataset_stage is not None:
            shift, note, accuracy = shifted_label_accuracy(predictions, y, ctx.folder_of(dataset_stage) / DATASET,
                                                           model.num_classes)
            result["label_shift"], result["label_shift_note"] = shift, note
            if shift:
                result["shifted_accuracy"] = accuracy
        return result

    return run


def transfer_stage(source_stage: str, points: dict[str, tuple[str, str]], attack: SynthSettings, n: int,
                   sources: Sources, device: torch.device, batch_size: int):
    """Figure 3 for one seed. The source model crafts targeted examples toward t = y + 1 on n test
    images with the D_det attack; for each architecture, transfer = the share of the examples
    that fooled the source which its model trained on D also classifies as t; learnability =
    the test accuracy of its model trained on D_det. points: arch -> (D stage, D_det stage)."""

    def run(ctx) -> dict:
        x, y = sources.test_tensors()
        x, y = x[:n], y[:n]
        source, _ = load_model(ctx.folder_of(source_stage) / MODEL, device)
        target = (y + 1) % source.num_classes
        crafted = pgd(source, x, target, threat=make_threat(attack.norm, attack.eps, "none"), steps=attack.steps,
                      step_size=attack.step_size, objective=ReachTarget(), keep="best", batch_size=batch_size).x_adv
        fooled = predict_tensor(source, crafted, batch_size) == target
        full_x, full_y = sources.test_tensors()
        rows = []
        for arch, (d_stage, det_stage) in points.items():
            on_d, _ = load_model(ctx.folder_of(d_stage) / MODEL, device)
            on_det, _ = load_model(ctx.folder_of(det_stage) / MODEL, device)
            hit = predict_tensor(on_d, crafted, batch_size) == target
            rows.append({"arch": arch,
                         "transfer_rate": float(hit[fooled].float().mean()) if fooled.any() else None,
                         "transfer_rate_all": float(hit.float().mean()),
                         "det_accuracy": float((predict_tensor(on_det, full_x, batch_size) == full_y).float().mean()),
                         "d_accuracy": float((predict_tensor(on_d, full_x, batch_size) == full_y).float().mean())})
        return {"n": n, "source_success": float(fooled.float().mean()), "points": rows}

    return run


def theory_stage():
    def run(ctx) -> dict:
        from advfeat.theory.figures import run as figures

        return {"headline": figures(ctx.folder)["headline"]}

    return run
