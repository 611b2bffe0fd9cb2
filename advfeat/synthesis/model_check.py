"""Does a model suit the kind of dataset asked for? Robust for D_R, standard for the others."""

from __future__ import annotations

import numpy as np
import torch

from advfeat.errors import UserError
from advfeat.evaluation import robust_accuracy
from advfeat.data.tensor_loader import to_unit_float
from advfeat.settings import AttackSpec


def check_model_fits(model, card: dict, kind: str, dataset, device: torch.device, batch_size: int) -> list[str]:
    """Refuse unusable models; return warnings when a model's robustness does not suit the kind.

    The card says how the model was trained; a quick eager 10-step attack checks it (and decides
    for models whose card does not say). Only non-robustness is a reliable probe result: a weak,
    underfit net also keeps most of its (low) accuracy under attack.
    """
    if not hasattr(model, "features") or not getattr(model, "feature_dim", 0):
        raise UserError(f"model {card.get('arch')} exposes no penultimate layer; inversion needs one")
    if model.num_classes != dataset.num_classes:
        raise UserError(f"model has {model.num_classes} classes but the data has {dataset.num_classes}")
    # Evenly spaced images: splits are often stored class by class, so the first 256 are not a sample.
    pick = np.unique(np.linspace(0, len(dataset.train) - 1, min(256, len(dataset.train))).astype(int))
    x = to_unit_float(torch.from_numpy(dataset.train.images[pick]).to(device))
    y = torch.from_numpy(dataset.train.labels[pick]).to(device)
    # Eager: compiling for a 10-step probe costs more than the probe.
    probe = robust_accuracy(model, x, y, [0.25], AttackSpec(steps=10, batch_size=batch_size, compile=False))
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
