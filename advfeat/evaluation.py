"""Measure models on a split: clean accuracy (overall, per class) and robust accuracy.

Robust accuracy at several eps shares work: clean predictions are computed once, only
correctly classified examples are attacked, and an example broken at a smaller eps is
broken at every larger one (the same point lies in the larger ball), so each larger eps
attacks only the survivors. CW-L2 gives every eps from one run of minimal distances.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict

import torch
from tqdm import tqdm

from advfeat.attacks import batched_forward, cw_l2, frozen, frozen_view, make_threat, pgd
from advfeat.attacks.autoattack import autoattack_accuracy
from advfeat.errors import UserError
from advfeat.data.synthesized import label_shift
from advfeat.data.tensor_loader import to_unit_float
from advfeat.runtime import autocast, prepare_input
from advfeat.settings import AttackSpec


@torch.no_grad()
def predict(model: torch.nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels, true labels) over a loader, in its order, on the CPU."""
    preds, labels = [], []
    with frozen(model):
        forward = frozen_view(model, False, device)
        for x, y in loader:
            with autocast(device):
                preds.append(forward(prepare_input(x)).argmax(1).cpu())
            labels.append(y.cpu())
    return torch.cat(preds), torch.cat(labels)


def predict_tensor(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted labels of images already on the model's device, batch_size at a time."""
    return batched_forward(model, x, batch_size).argmax(1)


def features_of(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The penultimate representation g(x) of images on the model's device, batch_size at a time."""
    return batched_forward(model, x, batch_size, features=True)


def accuracy_report(preds: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> dict:
    """{"accuracy", "n", "per_class": {name: accuracy}} from predictions."""
    correct = preds == labels
    per_class = {}
    for i, name in enumerate(classes):
        members = labels == i
        per_class[name] = float(correct[members].float().mean()) if members.any() else None
    return {"accuracy": float(correct.float().mean()), "n": int(len(labels)), "per_class": per_class}


def clean_accuracy(model, loader, device, classes) -> dict:
    return accuracy_report(*predict(model, loader, device), classes)


def shifted_label_accuracy(predictions: torch.Tensor, y: torch.Tensor, dataset_folder, num_classes: int
                           ) -> tuple[int | None, str | None, float | None]:
    """The paper's Appendix D.6 for a model trained on a dataset whose labels are a fixed shift of
    the originals (D_det: y + 1): its accuracy on the test set relabelled the same way.
    Returns (shift, note, accuracy); shift is None (with a note saying why) when the dataset
    at `dataset_folder` records no such shift, and then accuracy is None."""
    shift, note = label_shift(dataset_folder, num_classes)
    if not shift:
        return shift, note, None
    return shift, note, float((predictions == (y + shift) % num_classes).float().mean())


# --------------------------------------------------------------------------- robust accuracy


def weak_attack_accuracies(model, x, y, norm: str, eps: float, generator, batch_size: int) -> dict:
    """Accuracy under two weak attacks: random noise at radius eps, and one full gradient step.

    If either beats PGD, PGD is not finding the worst case: a sign of gradient masking.
    """
    noise = make_threat(norm, eps, "sphere" if norm == "l2" else "box").random_start(x, generator)
    one_step = pgd(model, x, y, threat=make_threat(norm, eps, "none"), steps=1, step_size=eps, keep="last",
                   batch_size=batch_size, compile=False)  # compiling for one step costs more than the step
    return {"noise_accuracy": float((predict_tensor(model, noise, batch_size) == y).float().mean()),
            "one_step_accuracy": float((predict_tensor(model, one_step.x_adv, batch_size) == y).float().mean())}


def masking_warnings(rows: list[dict], clean: float, n: int) -> list[str]:
    """Signs that robust accuracy is overestimated (gradient masking or a weak attack).

    Differences smaller than the sampling noise of n examples (about 1/sqrt(n), two
    standard errors at 50%) are not reported.
    """
    tol = max(0.005, 1 / math.sqrt(max(n, 1)))
    warnings = []
    for row in rows:
        pgd_acc = row["accuracy"]
        for weak in ("noise_accuracy", "one_step_accuracy"):
            if weak in row and row[weak] < pgd_acc - tol:
                warnings.append(f"eps {row['eps']}: {weak.replace('_accuracy', '')} attack ({row[weak]:.4f}) beats "
                                f"the main attack ({pgd_acc:.4f}): possible gradient masking")
        if row.get("zero_grad_fraction", 0) > 0.01:
            warnings.append(f"eps {row['eps']}: {row['zero_grad_fraction']:.1%} of attacked examples have a zero "
                            f"gradient: possible gradient masking")
    for a, b in zip(rows, rows[1:]):
        for key in ("accuracy", "one_step_accuracy", "noise_accuracy"):
            if key in a and key in b and b[key] > a[key] + tol:
                warnings.append(f"{key.replace('_', ' ')} rises from {a[key]:.4f} at eps {a['eps']} to "
                                f"{b[key]:.4f} at eps {b['eps']}: possible gradient masking")
    if rows and clean > 0 and rows[-1]["eps"] > 0 and rows[-1]["accuracy"] >= clean - 1e-9:
        warnings.append(f"no example was broken even at eps {rows[-1]['eps']}: the attack may be failing")
    return warnings


def attack_progress_bar(total: int, eps: float, enabled: bool):
    """A tqdm bar over finished examples showing image-steps/s; returns (callback, bar)."""
    bar = tqdm(total=total, desc=f"attack eps={eps}", unit="img", disable=None if enabled else True, leave=False,
               file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()

    def update(finished: int, image_steps: int) -> None:
        bar.n = min(finished, total)
        bar.set_postfix(img_steps_s=f"{image_steps / (time.perf_counter() - start):.0f}", refresh=False)
        bar.refresh()

    return update, bar


def robust_accuracy(model, x: torch.Tensor, y: torch.Tensor, eps_list: list[float], spec: AttackSpec,
                    *, seed: int = 0, progress: bool = False, state_path=None) -> dict:
    """Clean and robust accuracy of `model` on (x, y) (tensors on the model's device) under the
    attack `spec` names, at each eps: {"clean_accuracy", "n", "attack", "robust": rows, "warnings"}."""
    if any(not e >= 0 for e in eps_list):
        raise UserError(f"eps must be >= 0, got {eps_list}")
    resume = {"state_path": state_path} if spec.family == "autoattack" else {}  # AutoAttack alone resumes
    return ACCURACY_BY_FAMILY[spec.family](model, x, y, eps_list, spec, seed=seed, progress=progress, **resume)


def pgd_accuracy(model, x, y, eps_list: list[float], spec: AttackSpec, *, seed: int = 0,
                 progress: bool = False) -> dict:
    """PGD at each eps, smallest first; with spec.share only the survivors of a smaller eps are
    attacked (the point that broke an example there lies in every larger ball)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    correct = predict_tensor(model, x, spec.batch_size) == y
    robust, rows = correct.clone(), []
    for eps in sorted(set(eps_list)):
        candidates = robust if spec.share else correct
        index = torch.nonzero(candidates).flatten()
        update, bar = attack_progress_bar(len(index), eps, progress)
        result = pgd(model, x[index], y[index], threat=make_threat(spec.norm, eps, spec.start()), steps=spec.steps,
                     step_size=spec.step_size_for(eps), restarts=spec.restarts, retire=spec.retire,
                     batch_size=spec.batch_size, generator=generator, compile=spec.compile, progress=update)
        bar.close()
        broken = torch.zeros_like(correct)
        broken[index] = result.success
        robust = candidates & ~broken
        row = {"eps": eps, "step_size": spec.step_size_for(eps), "attacked": len(index),
               "seconds": round(result.seconds, 3), "image_steps": result.image_steps,
               "images_per_s": round(len(index) / max(result.seconds, 1e-9), 1),
               "image_steps_per_s": round(result.image_steps_per_s, 1),
               "zero_grad_fraction": float(result.zero_grad.float().mean()) if len(index) else 0.0}
        rows.append(_finish_row(row, model, x, y, spec, generator, robust))
    return _accuracy_record(correct, y, spec, rows)


def cw_accuracy(model, x, y, eps_list: list[float], spec: AttackSpec, *, seed: int = 0, progress: bool = False) -> dict:
    """Carlini-Wagner L2: one run of minimal distances gives every eps (robust: distance > eps)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    correct = predict_tensor(model, x, spec.batch_size) == y
    cw = cw_l2(model, x[correct], y[correct], steps=spec.steps, binary_steps=spec.cw_binary_steps, lr=spec.cw_lr,
               batch_size=spec.batch_size, compile=spec.compile)
    distances = torch.full((len(x),), math.inf, device=x.device)
    distances[correct] = cw.distance
    attacked, rows = int(correct.sum()), []
    for eps in sorted(set(eps_list)):
        row = {"eps": eps, "seconds": round(cw.seconds, 3), "image_steps": cw.image_steps, "attacked": attacked,
               "images_per_s": round(attacked / max(cw.seconds, 1e-9), 1),
               "image_steps_per_s": round(cw.image_steps / max(cw.seconds, 1e-9), 1)}
        rows.append(_finish_row(row, model, x, y, spec, generator, correct & (distances > eps)))
    finite = distances[correct & torch.isfinite(distances)]
    median = float(finite.median()) if len(finite) else None
    return _accuracy_record(correct, y, spec, rows) | {"median_distance": median}


def _finish_row(row: dict, model, x, y, spec: AttackSpec, generator, robust: torch.Tensor) -> dict:
    """Add the weak attacks (a gradient-masking check), the accuracy and which examples survived
    (so a report can intersect attacks: the worst case per example)."""
    if row["eps"] > 0:
        row |= weak_attack_accuracies(model, x, y, spec.norm, row["eps"], generator, spec.batch_size)
    return row | {"accuracy": float(robust.float().mean()), "robust_index": torch.nonzero(robust).flatten().tolist()}


def _accuracy_record(correct: torch.Tensor, y: torch.Tensor, spec: AttackSpec, rows: list[dict]) -> dict:
    clean = float(correct.float().mean())
    return {"clean_accuracy": clean, "n": len(y), "attack": asdict(spec) | {"norm": spec.norm}, "robust": rows,
            "warnings": masking_warnings(rows, clean, len(y))}


def autoattack_spec_accuracy(model, x, y, eps_list: list[float], spec: AttackSpec, *, seed: int = 0,
                             progress: bool = False, state_path=None) -> dict:
    """AutoAttack (advfeat.attacks.autoattack.autoattack_accuracy) with the settings of an
    AttackSpec; with state_path, resumable (per-example results saved there chunk by chunk)."""
    return autoattack_accuracy(model, x, y, eps_list, norm=spec.norm, version=spec.version, n_iter=spec.steps,
                               restarts_ce=spec.restarts, n_target_classes=spec.target_classes,
                               batch_size=spec.batch_size, seed=seed, compile=spec.compile, share=spec.share,
                               square=spec.square, square_queries=spec.square_queries,
                               checkpoint_every=spec.checkpoint_every, state_path=state_path, progress=progress)


def split_tensors(split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as (x float [0,1], y) on the device."""
    x = to_unit_float(torch.from_numpy(split.images).to(device))
    return x, torch.from_numpy(split.labels).to(device)


# The attack of each AttackSpec family (settings.ATTACKS names them).
ACCURACY_BY_FAMILY = {"pgd": pgd_accuracy, "cw": cw_accuracy, "autoattack": autoattack_spec_accuracy}
