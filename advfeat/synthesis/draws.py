"""Per-sample randomness of a synthesis, drawn from the seed alone.

Each sample's start image (inversion) or target class (targeted kinds) depends only on
(seed, sample index), never on the batch size, the shard size or the number of workers, so
any layout of the work gives the same dataset.
"""

from __future__ import annotations

import numpy as np

from advfeat.settings import KINDS, SynthSettings


def sample_plan(settings: SynthSettings, labels: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """What every sample of the training set starts from and is labelled as.

    r / nr with start "image": start_index, a uniformly random *other* training image (the
    paper's algorithm draws x' ~ D); D_R and D_NR share the draw, so both invert from the same
    starts. rand: target t uniform over all C classes (the paper's algorithm box: robust
    features then carry no information about t), or over the classes other than y
    (targets="other"). det: t = (y + 1) mod C. new_labels: each result's label.
    """
    n, kind, seed = len(labels), settings.kind, settings.seed
    rng = np.random.default_rng([seed, 0 if kind in ("r", "nr") else KINDS.index(kind)])
    if settings.inversion:
        plan = {"new_labels": labels}
        if settings.start == "image":
            other = rng.integers(0, n - 1, size=n)
            plan["start_index"] = other + (other >= np.arange(n))  # skip the image itself: uniform over the others
        return plan
    if kind == "rand" and settings.targets == "uniform":
        target = rng.integers(0, num_classes, size=n)
    elif kind == "rand":
        target = (labels + rng.integers(1, num_classes, size=n)) % num_classes
    else:
        target = (labels + 1) % num_classes
    return {"target": target, "new_labels": target}


def noise_starts(seed: int, positions: range, shape: tuple[int, ...]) -> np.ndarray:
    """The authors' inversion seeds, clamp(N(0.5, (1/20)^2), 0, 1), one per sample position."""
    out = np.empty((len(positions), *shape), dtype=np.float32)
    for row, i in enumerate(positions):
        out[row] = np.random.default_rng([seed, 0xD05E, i]).standard_normal(shape, dtype=np.float32)
    return np.clip(out / 20 + 0.5, 0, 1)


def shard_ranges(n: int, shard_size: int) -> list[range]:
    return [range(i, min(i + shard_size, n)) for i in range(0, n, shard_size)]
