"""Which pixel storage keeps the features of D_det? (the synthesis issue's storage study)

Storage rounds every pixel: uint8 to 1/255, float16 to 2^-11 near 1. Rounding moves an L2
perturbation of radius 0.5 by up to ~0.06 (uint8), which could undo a targeted attack that
only just crosses the boundary, and with it the non-robust features D_det is made of.

The study synthesizes D_det once in float32 with the CLI (`advfeat synth --storage float32`),
then rounds the very same images to each storage, so storage is the only difference. For
each storage it measures
  - stored target success: the source model classifies the stored image as the target class;
  - how far rounding moved the images (L2), and the stored perturbation norm;
  - downstream accuracy: a fresh model trained on the stored D_det, tested on the real test
    set (several seeds, to see the noise).

    python scripts/storage_study.py --data ../shared/data --out runs/storage \
        --results results/storage/storage-study.json

Stages already done in --out are reused (the CLI's own resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from advfeat.checkpoint import load_model
from advfeat.evaluation import predict_tensor
from advfeat.io import read_json, write_json
from advfeat.data import load_dataset
from advfeat.data.arrays import Dataset, Split
from advfeat.data.synthesized import STORAGE, store_images
from advfeat.data.tensor_loader import to_unit_float
from advfeat.training import TrainConfig, device_name, train


def advfeat(*args: str) -> None:
    print("$ advfeat " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "advfeat.cli", *args], check=True)


def source_model(data: str, out: Path, arch: str, epochs: int) -> Path:
    folder = out / "source"
    if not (folder / "card.json").exists() or read_json(folder / "card.json")["epochs_done"] < epochs:
        resume = ["--resume"] if (folder / "card.json").exists() else []
        advfeat("train", "--data", data, "--arch", arch, "--epochs", str(epochs), "--lr", "0.2",
                "--batch-size", "128", "--schedule", "onecycle", "--out", str(folder), "--quiet", *resume)
    return folder


def synthesize_float32(data: str, model: Path, out: Path, subset: int) -> Path:
    folder = out / "det-float32"
    advfeat("synth", "--kind", "det", "--model", str(model), "--data", data, "--subset", str(subset),
            "--storage", "float32", "--batch-size", "500", "--shard-size", "2500", "--out", str(folder), "--quiet")
    return folder


def measure_storage(model, x_adv: torch.Tensor, x_orig: torch.Tensor, targets: torch.Tensor, storage: str) -> dict:
    stored = to_unit_float(torch.from_numpy(store_images(x_adv.numpy(), storage)))
    success = (predict_tensor(model, stored, 500).cpu() == targets).float()
    moved = (stored - x_adv).flatten(1).norm(dim=1)
    perturbation = (stored - x_orig).flatten(1).norm(dim=1)
    return {"stored_success": success.mean().item(),
            "rounding_l2": {"mean": moved.mean().item(), "max": moved.max().item()},
            "perturbation_l2": {"mean": perturbation.mean().item(), "max": perturbation.max().item()},
            "images": stored}


def downstream(stored: torch.Tensor, labels: np.ndarray, test: Split, config: TrainConfig, out: Path,
               storage: str, seed: int) -> float:
    folder = out / f"train-{storage}-seed{seed}"
    if (folder / "card.json").exists() and read_json(folder / "card.json")["epochs_done"] == config.epochs:
        return read_json(folder / "card.json")["metrics"]["test_accuracy"]
    images = store_images(stored.numpy(), storage)  # the dtype a real dataset of this storage holds
    dataset = Dataset(Split(images, labels), test, {"format": f"D_det ({storage})"})
    card = train(dataclasses.replace(config, seed=seed), dataset, folder, device=torch.device("cpu"),
                 resume=(folder / "card.json").exists(), progress=False, log=lambda m: None)
    return card["metrics"]["test_accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="working folder (models, dataset)")
    p.add_argument("--results", required=True, help="JSON summary")
    p.add_argument("--arch", default="tiny")
    p.add_argument("--source-epochs", type=int, default=8)
    p.add_argument("--subset", type=int, default=10000, help="D_det images")
    p.add_argument("--epochs", type=int, default=15, help="training on D_det")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    out = Path(args.out)
    start = time.perf_counter()

    model_dir = source_model(args.data, out, args.arch, args.source_epochs)
    det_dir = synthesize_float32(args.data, model_dir, out, args.subset)
    model, _ = load_model(model_dir, torch.device("cpu"))
    det = load_dataset(det_dir, test_data=args.data)
    real = load_dataset(args.data)
    x_adv = torch.from_numpy(det.train.images).float()
    x_orig = to_unit_float(torch.from_numpy(real.train.images[det.train.source_index]))
    targets = torch.from_numpy(det.train.labels)
    card = read_json(det_dir / "dataset.json")

    # D_det is trained without augmentation (the paper); same tiny recipe for every storage.
    config = TrainConfig(arch=args.arch, epochs=args.epochs, lr=0.1, batch_size=128, schedule="onecycle",
                         augment=False)
    rows = {}
    for storage in STORAGE:
        row = measure_storage(model, x_adv, x_orig, targets, storage)
        stored = row.pop("images")
        accuracies = [downstream(stored, det.train.labels, real.test, config, out, storage, seed)
                      for seed in range(args.seeds)]
        row["downstream_accuracy"] = {"seeds": accuracies, "mean": statistics.mean(accuracies),
                                      "stdev": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0}
        row["bytes_per_image"] = 3 * 32 * 32 * np.dtype(STORAGE[storage]).itemsize
        rows[storage] = {"storage": storage} | row
        print(f"{storage:>8}: stored success {row['stored_success']:.4f}, rounding moved "
              f"{row['rounding_l2']['mean']:.4f} (max {row['rounding_l2']['max']:.4f}), downstream accuracy "
              f"{row['downstream_accuracy']['mean']:.4f} +- {row['downstream_accuracy']['stdev']:.4f}", flush=True)

    # Seeds vary more than storages do, so compare storages seed by seed (same seed, same
    # order and initialisation): the paired difference to float32 is the storage's effect.
    for row in rows.values():
        reference = rows["float32"]["downstream_accuracy"]["seeds"]
        paired = [a - b for a, b in zip(row["downstream_accuracy"]["seeds"], reference)]
        row["downstream_minus_float32"] = {"seeds": paired, "mean": statistics.mean(paired)}
        print(f"{row['storage']:>8}: downstream accuracy minus float32's, seed by seed: "
              + ", ".join(f"{d:+.4f}" for d in paired))
    write_json(Path(args.results), {
        "question": "pixel storage of synthesized datasets: float32 vs float16 vs uint8",
        "device": device_name(torch.device("cpu")),
        "source_model": {"arch": args.arch, "epochs": args.source_epochs,
                         "test_accuracy": read_json(model_dir / "card.json")["metrics"]["test_accuracy"]},
        "dataset": {"kind": "det", "n": len(targets), "settings": card["settings"],
                    "float32_target_success": card["stats"]["target_success"]},
        "downstream_training": dataclasses.asdict(config) | {"seeds": args.seeds, "test_images": len(real.test)},
        "storage": rows,
        "seconds_this_run": time.perf_counter() - start,  # stages reused from --out cost nothing
    })


if __name__ == "__main__":
    main()
