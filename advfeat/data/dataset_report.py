"""Check a dataset before training on it: `advfeat inspect`.

For a downloaded or generated dataset: its shape, dtype and pixel range; the class balance
of each split; a grid of example images per class (PNG); and, given a model, how often the
model's prediction equals the label. For D_rand and D_det the labels are the attack's
targets, so with the source model that agreement is the synthesis' target success (the
paper's datasets are made to near 100%); for D, D_R and D_NR it is the model's accuracy on
the dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advfeat.data.arrays import Dataset, Split
from advfeat.errors import UserError

GRID_CLASSES, GRID_PER_CLASS, GRID_MIN_SIDE, GRID_GAP = 10, 8, 32, 2
TARGETED_KINDS = {"rand", "det"}  # advfeat's kinds whose labels are the attack's targets
TARGETED_RELEASES = {"drand_CIFAR", "ddet_CIFAR"}


def class_balance(split: Split, classes: tuple[str, ...]) -> dict:
    """Images per class, and the ratio of the rarest class's count to the commonest's."""
    counts = np.bincount(split.labels, minlength=len(classes))
    if len(counts) > len(classes) or split.labels.min(initial=0) < 0:
        raise UserError(f"labels outside 0..{len(classes) - 1} for {len(classes)} classes")
    return {"n": int(len(split)), "per_class": {c: int(k) for c, k in zip(classes, counts)},
            "empty_classes": [c for c, k in zip(classes, counts) if k == 0],
            "min_over_max": float(counts.min() / max(counts.max(), 1))}


def pixel_summary(split: Split) -> dict:
    """Shape, dtype, range and channel means in [0, 1] units; non-finite values; and exact
    duplicates (images equal byte for byte to an earlier one, found by hashing each image)."""
    import hashlib

    images = split.images
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    finite = np.isfinite(images) if images.dtype != np.uint8 else np.ones(images.shape, bool)
    seen: set[bytes] = set()
    duplicates = 0
    for image in images:
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        duplicates += digest in seen
        seen.add(digest)
    values = images[finite] if not finite.all() else images
    return {"shape": list(images.shape[1:]), "dtype": str(images.dtype),
            "min": float(values.min(initial=0)) / scale, "max": float(values.max(initial=0)) / scale,
            "mean_per_channel": [round(float(m) / scale, 4) for m in _finite_channel_means(images, finite)],
            "non_finite": int((~finite).sum()), "duplicates": duplicates}


def _finite_channel_means(images: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Each channel's mean over its finite values (a NaN must not turn the summary into NaN)."""
    totals = np.where(finite, images, 0).sum(axis=(0, 2, 3), dtype=np.float64)
    return totals / np.maximum(finite.sum(axis=(0, 2, 3)), 1)


def labels_are_targets(dataset: Dataset) -> bool:
    source = dataset.source
    return source.get("kind") in TARGETED_KINDS or Path(source.get("path", "")).name in TARGETED_RELEASES


def model_agreement(model, dataset: Dataset, device, batch_size: int = 500) -> dict:
    """How often the model predicts the training label: overall and per class."""
    from advfeat.data import make_loader
    from advfeat.evaluation import predict

    if model.num_classes != dataset.num_classes:
        raise UserError(f"the model has {model.num_classes} classes but the dataset {dataset.num_classes}")
    loader = make_loader(dataset, "train", batch_size=batch_size, device=device)
    try:
        preds, labels = predict(model, loader, device)
    except RuntimeError as err:  # e.g. an input size the architecture cannot take
        raise UserError(f"the model cannot classify these {tuple(dataset.train.images.shape[1:])} images "
                        f"({str(err).splitlines()[0]})") from None
    agree = (preds == labels).numpy()
    per_class = {c: float(agree[labels.numpy() == i].mean()) for i, c in enumerate(dataset.classes)
                 if (labels.numpy() == i).any()}
    meaning = ("target success (the labels are the attack's targets)" if labels_are_targets(dataset)
               else "accuracy (agreement with the labels)")
    return {"agreement": float(agree.mean()), "meaning": meaning, "n": int(len(agree)), "per_class": per_class}


def dataset_report(dataset: Dataset) -> dict:
    """Everything `advfeat inspect` prints about a dataset (without a model)."""
    report = {"source": dataset.source, "classes": list(dataset.classes),
              "grid_rows": [dataset.classes[i] for i in grid_classes(dataset.num_classes)],
              "train": class_balance(dataset.train, dataset.classes) | {"pixels": pixel_summary(dataset.train)}}
    if dataset.test is not None:
        report["test"] = class_balance(dataset.test, dataset.classes) | {"pixels": pixel_summary(dataset.test)}
    return report


def grid_classes(num_classes: int) -> list[int]:
    """The classes a grid shows: all when few, else GRID_CLASSES evenly spaced."""
    if num_classes <= GRID_CLASSES:
        return list(range(num_classes))
    return sorted({round(i * (num_classes - 1) / (GRID_CLASSES - 1)) for i in range(GRID_CLASSES)})


def image_grid(split: Split, num_classes: int) -> np.ndarray:
    """(H, W, 3) uint8: one row per shown class, its first GRID_PER_CLASS images in split
    order, enlarged by pixel repetition to at least GRID_MIN_SIDE pixels, on a white ground."""
    classes = grid_classes(num_classes)
    c, h, w = split.images.shape[1:]
    zoom = max(1, -(-GRID_MIN_SIDE // max(h, w)))
    cell_h, cell_w = h * zoom + GRID_GAP, w * zoom + GRID_GAP
    grid = np.full((len(classes) * cell_h + GRID_GAP, GRID_PER_CLASS * cell_w + GRID_GAP, 3), 255, np.uint8)
    for row, label in enumerate(classes):
        for col, i in enumerate(np.flatnonzero(split.labels == label)[:GRID_PER_CLASS]):
            image = split.images[i]
            if image.dtype != np.uint8:
                image = np.round(np.clip(image.astype(np.float32), 0, 1) * 255).astype(np.uint8)
            image = np.broadcast_to(image, (3, h, w)) if c == 1 else image[:3]
            tile = image.transpose(1, 2, 0).repeat(zoom, 0).repeat(zoom, 1)
            y, x = GRID_GAP + row * cell_h, GRID_GAP + col * cell_w
            grid[y:y + h * zoom, x:x + w * zoom] = tile
    return grid


def write_png(pixels: np.ndarray, dest: Path) -> None:
    from PIL import Image

    from advfeat.io import atomic_path

    with atomic_path(dest) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
