"""Train a CIFAR-10 classifier, standard or adversarial, with exact resume.

The defaults are the paper's (robustness library): SGD, lr 0.1, momentum 0.9, weight decay
5e-4, batch 128, lr x0.1 at 1/3 and 2/3 of training (epochs 50 and 100 of 150).
Each epoch ends with an atomic checkpoint; all randomness of an epoch comes from
(seed, epoch), so `--resume` after a kill continues exactly where the run stood.
"""

from __future__ import annotations

import datetime
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from advfeat import __version__
from advfeat.attacks import make_threat, pgd
from advfeat.checkpoint import CARD, RESUME, WEIGHTS, load_tensors, save_model, save_tensors
from advfeat.errors import UserError
from advfeat.evaluation import clean_accuracy
from advfeat.io import write_json
from advfeat.models import create_model
from advfeat.models.registry import check_input_size
from advfeat.data import Dataset, make_loader
from advfeat.data.tensor_loader import epoch_generator
from advfeat.runtime import autocast, device_name, git_commit, maybe_compile, prepare_input, prepare_model
from advfeat.settings import TrainConfig

METRICS = "metrics.json"
# The robustness library keeps the checkpoint with the best adversarial accuracy on the test
# set; advfeat keeps the last epoch's, so that no reported test number was used to choose it.
CHECKPOINT_RULE = "last epoch (no selection on the test set)"


# Settings that may change between an interrupted run and its --resume.
RESUMABLE_CHANGES = {"epochs", "eval_every", "compile", "lr_milestones"}


def model_card(config: TrainConfig, dataset: Dataset, model, history: list[dict], device: torch.device) -> dict:
    robust = None
    if config.adv:
        robust = {"norm": config.adv, "eps": config.eps, "steps": config.attack_steps,
                  "step_size": config.attack_step_size, "random_start": config.attack_start}
    return {
        "kind": "model",
        "advfeat_version": __version__,
        "arch": config.arch,
        "num_classes": model.num_classes,
        "feature_dim": model.feature_dim,
        "input_size": list(dataset.train.images.shape[1:]),
        "robust": robust,
        "data": dataset.source,
        "config": asdict(config),
        "checkpoint": CHECKPOINT_RULE,
        "epochs_done": len(history),
        "metrics": history[-1] if history else {},
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "device": device_name(device),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def prepare_out_dir(out_dir: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite a run unless asked; --force clears only advfeat's own files."""
    ours = [out_dir / name for name in (WEIGHTS, CARD, RESUME, METRICS)]
    if resume:
        if not (out_dir / RESUME).is_file():
            raise UserError(f"nothing to resume: {out_dir / RESUME} does not exist")
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise UserError(f"--out {out_dir} already exists; pass --resume to continue it or --force to overwrite")
        for path in ours:
            path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def save_resume_state(out_dir: Path, model, optimizer, config: TrainConfig, dataset: Dataset, history) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, state in optimizer.state_dict()["state"].items():
        tensors[f"optim.{i}.momentum_buffer"] = state["momentum_buffer"]
    save_tensors(out_dir / RESUME, tensors, {"config": asdict(config), "data": dataset.source, "history": history})


def restore_resume_state(out_dir: Path, model, optimizer, config: TrainConfig, dataset: Dataset) -> list[dict]:
    """Load weights and momentum into model/optimizer; return the epochs' history so far."""
    tensors, meta = load_tensors(out_dir / RESUME)
    saved = meta.get("config", {})
    changed = sorted(k for k in asdict(config) if k not in RESUMABLE_CHANGES and saved.get(k) != asdict(config)[k])
    if changed:
        raise UserError(f"--resume: settings differ from the interrupted run ({', '.join(changed)}); "
                        f"use the same flags or --force to start over")
    if meta.get("data", {}).get("digest") != dataset.source.get("digest") or \
            meta.get("data", {}).get("subset") != dataset.source.get("subset"):
        raise UserError(f"--resume: the data differs from the interrupted run's ({meta.get('data', {}).get('path')})")
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    momentum = {int(k.split(".")[1]): {"momentum_buffer": v} for k, v in tensors.items() if k.startswith("optim.")}
    optim_state = optimizer.state_dict()
    optim_state["state"] = momentum
    optimizer.load_state_dict(optim_state)
    return meta.get("history", [])


def train_epoch(model, forward, loader, optimizer, config: TrainConfig, epoch: int, device: torch.device,
                perturb: Callable | None, progress: bool) -> dict:
    """One pass over the training loader; returns loss, accuracy and throughput."""
    model.train()
    loader.set_epoch(epoch)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, start = 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=None if progress else True, leave=False,
               file=sys.stderr, unit="batch", dynamic_ncols=True)
    for i, (x, y) in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(epoch, i, len(loader))
        x = prepare_input(x, device)
        if perturb is not None:
            x = perturb(model, x, y, epoch, i)
        with autocast(device, training=True):
            logits = forward(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device; read back only when the bar refreshes (no per-step sync).
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if progress and i % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum.item() / seen, "train_accuracy": correct.item() / seen,
            "seconds": round(seconds, 3), "images_per_s": round(seen / seconds, 1)}


def adversarial_perturbation(config: TrainConfig, device: torch.device) -> Callable | None:
    """The batch transform of adversarial training (None for standard training)."""
    return None if config.adv is None else training_attack(config, device)


def train(config: TrainConfig, dataset: Dataset, out_dir: Path | str, *, device: torch.device,
          resume: bool = False, force: bool = False, progress: bool = True, log=None) -> dict:
    """Train, checkpointing every epoch into out_dir; returns the model card."""
    out_dir = Path(out_dir)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_input_size(config.arch, dataset.train.images.shape[1:])  # before anything is written
    prepare_out_dir(out_dir, resume, force)
    torch.manual_seed(config.seed)
    model = prepare_model(create_model(config.arch, dataset.num_classes), device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    history = restore_resume_state(out_dir, model, optimizer, config, dataset) if resume else []
    if resume:
        log(f"advfeat: resuming {out_dir} after epoch {len(history)} of {config.epochs}")
    forward = maybe_compile(model, config.compile)
    perturb = adversarial_perturbation(config, device)
    train_loader = make_loader(dataset, "train", loader=config.loader, batch_size=config.batch_size, device=device,
                               shuffle=True, augment=config.augment, seed=config.seed)
    test_loader = make_loader(dataset, "test", loader="tensor", batch_size=config.batch_size, device=device)
    for epoch in range(len(history), config.epochs):
        stats = {"epoch": epoch + 1, "lr": config.lr_at(epoch, 0, len(train_loader))}
        stats |= train_epoch(model, forward, train_loader, optimizer, config, epoch, device, perturb, progress)
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            stats["test_accuracy"] = clean_accuracy(model, test_loader, device, dataset.classes)["accuracy"]
        history.append(stats)
        save_resume_state(out_dir, model, optimizer, config, dataset, history)
        save_model(out_dir, model, model_card(config, dataset, model, history, device))
        write_json(out_dir / METRICS, {"epochs": history})
        shown = {k: stats[k] for k in ("train_loss", "train_accuracy", "test_accuracy") if k in stats}
        log(f"epoch {epoch + 1}/{config.epochs} " + " ".join(f"{k}={v:.4f}" for k, v in shown.items())
            + f" images_per_s={stats['images_per_s']:.0f}")
    return model_card(config, dataset, model, history, device)


def training_attack(config, device: torch.device):
    """The batch transform of adversarial training: PGD on (x, y) with the model frozen.

    Random starts come from a generator seeded by (seed, epoch, batch), so a resumed run
    crafts the same adversarial examples.
    """
    threat = make_threat(config.adv, config.eps, config.attack_start)

    def perturb(model, x, y, epoch: int, batch: int) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=epoch_generator(config.seed, epoch * 1_000_003 + batch)))
        generator = torch.Generator(device=x.device).manual_seed(seed)
        result = pgd(model, x, y, threat=threat, steps=config.attack_steps, step_size=config.attack_step_size,
                     generator=generator, compile=config.compile)
        return result.x_adv

    return perturb


def train_tiny(dataset: Dataset, out_dir: Path | str, *, device: torch.device, epochs: int = 2,
               seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """The small trained model that the tests and `advfeat doctor` attack: the `tiny` net trained
    by train() into out_dir (replacing a run there) for `epochs` with a one-cycle schedule peaking
    at lr 0.2, batch 128, the paper's SGD otherwise, seeded by `seed`. Returns (the model as
    load_model gives it: eval mode, on `device`; its card)."""
    from advfeat.checkpoint import load_model

    config = TrainConfig(arch="tiny", epochs=epochs, lr=0.2, batch_size=128, schedule="onecycle",
                         eval_every=epochs, seed=seed)
    card = train(config, dataset, out_dir, device=device, force=True, progress=False, log=lambda message: None)
    model, _ = load_model(out_dir, device)
    return model, card
