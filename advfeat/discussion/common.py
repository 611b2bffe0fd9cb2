"""What the discussion's experiments share: training on in-memory tensors, and judging a claim.

Training goes through advfeat.training.train (the one training loop): the tensors become a
Dataset, the model is written to a folder (resumable like any advfeat model) and read back.

A judged claim has the shape of advfeat.claims.judge's entries ("id", "statement", "paper",
"parts" with "rule", "interval", "verdict", and the claim's "verdict"), plus "reference": the
comment's own number with its setting, to print beside ours. Intervals and verdicts come from
advfeat.stats: over seeds (Student's t) with two or more seeds, else over test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from advfeat.checkpoint import RESUME, load_model
from advfeat.data.arrays import CIFAR10_CLASSES, Dataset, Split
from advfeat.stats import (
    Interval,
    combine,
    mean_interval,
    paired_difference_interval,
    verdict,
    wilson_interval,
)


def as_split(x: torch.Tensor, y: torch.Tensor) -> Split:
    """Float images (N, C, H, W) and labels (N,) as a Split (float32, any range)."""
    return Split(x.detach().float().cpu().numpy(), y.detach().long().cpu().numpy())


def train_on_tensors(config, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                     folder: Path, device: torch.device, num_classes: int = 10, log=None):
    """Train `config` on (x, y) with advfeat.training.train into `folder` (resuming an interrupted
    run there) and return the trained model in eval mode. `test` is what the per-epoch test
    accuracy of the model card is measured on."""
    from advfeat.training import train as train_model

    classes = CIFAR10_CLASSES[:num_classes] if num_classes <= 10 else tuple(str(i) for i in range(num_classes))
    dataset = Dataset(as_split(*train), as_split(*test), {"format": "in-memory tensors", "path": None},
                      classes=classes)
    resume = (Path(folder) / RESUME).is_file()
    train_model(config, dataset, folder, device=device, resume=resume, force=not resume, progress=False,
                log=log or (lambda _msg: None))
    return load_model(folder, device)[0]


@dataclass(frozen=True)
class Reference:
    """The comment's number and the setting it was measured in."""

    value: str
    setting: str

    def to_dict(self) -> dict:
        return {"value": self.value, "setting": self.setting}


def rate_interval(per_seed: list[float], per_image: list[np.ndarray]) -> Interval:
    """A rate: over seeds when there are two or more, else Wilson over the one seed's images."""
    if len(per_seed) >= 2:
        return mean_interval(per_seed)
    outcome = np.asarray(per_image[0], dtype=float)
    return wilson_interval(int(outcome.sum()), len(outcome))


def difference_interval(per_seed: list[float], per_image_a: list[np.ndarray],
                        per_image_b: list[np.ndarray]) -> Interval:
    """A paired difference a - b: over seeds (paired by seed), else over one seed's images."""
    if len(per_seed) >= 2:
        return mean_interval(per_seed)
    return paired_difference_interval(per_image_a[0], per_image_b[0])


def judged(claim_id: str, statement: str, reference: Reference,
           parts: list[tuple[str, Interval | None, str, float]]) -> dict:
    """A claim's verdict from its parts, each (rule in words, interval, direction, margin)."""
    rows = []
    for rule, interval, direction, margin in parts:
        side = {"above": ">", "below": "<", "within": "within +-"}[direction]
        rows.append({"rule": f"{rule} {side} {margin:g}", "interval": interval.to_dict() if interval else None,
                     "verdict": verdict(interval, direction, margin) if interval else "inconclusive"})
    return {"id": claim_id, "statement": statement, "paper": f"{reference.value} ({reference.setting})",
            "reference": reference.to_dict(), "parts": rows, "verdict": combine([r["verdict"] for r in rows])}


def seeds_of(results: dict[int, dict]) -> list[int]:
    if not results:
        raise ValueError("no seed's result to judge")
    return sorted(results)


class PixelMLP(torch.nn.Module):
    """A plain MLP on flattened inputs (no batch norm): the small, fast model of Wallace's 2-D toy.
    Not in the model registry: the toy is not CIFAR-10 and advfeat.training does not apply."""

    def __init__(self, d_in: int, width: int, num_classes: int, depth: int = 2):
        super().__init__()
        layers, d = [torch.nn.Flatten()], d_in
        for _ in range(depth):
            layers += [torch.nn.Linear(d, width), torch.nn.ReLU()]
            d = width
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(d, num_classes))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fit_adam(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float) -> torch.nn.Module:
    """Full-batch Adam on the cross-entropy for `steps` steps; the model is returned in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def training_tensors(sources, seed: int, n: int | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of the seed's training subset (sources.train_data(seed)), drawn at random by
    `seed` (the splits are stored class by class: the first n would hold few classes), as
    (x float [0, 1], y) on the device."""
    from advfeat.data.tensor_loader import to_unit_float

    split = sources.train_data(seed).train
    keep = np.sort(np.random.default_rng([seed, 0xD15C]).permutation(len(split))[:n])
    return (to_unit_float(torch.from_numpy(split.images[keep]).to(device)),
            torch.from_numpy(split.labels[keep]).to(device))
