"""Measure models on a split: clean accuracy (overall and per class)."""

from __future__ import annotations

import torch

from advfeat.runtime import autocast, prepare_input


@torch.no_grad()
def predict(model: torch.nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels, true labels) over a loader, in its order, on the CPU."""
    was_training = model.training
    model.eval()
    preds, labels = [], []
    for x, y in loader:
        with autocast(device):
            logits = model(prepare_input(x, device))
        preds.append(logits.argmax(1).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(preds), torch.cat(labels)


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
