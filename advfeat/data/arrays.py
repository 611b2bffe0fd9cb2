"""In-memory datasets: a split is an image array plus labels; a dataset is train + test.

Every source format (see sources.py) is read into these, so loaders, training and
synthesis never care where the pixels came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# Canonical CIFAR-10 label order; every reader maps its classes onto these indices.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)


@dataclass
class Split:
    """One split. images: (N, C, H, W), uint8 in [0, 255] or float16/float32 in [0, 1]."""

    images: np.ndarray
    labels: np.ndarray  # (N,) int64
    # Position of each example in the full split it was read from (kept through subsets).
    source_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise ValueError(
                f"split needs images (N,C,H,W) and N labels, got {self.images.shape} and {self.labels.shape}"
            )
        self.labels = self.labels.astype(np.int64, copy=False)
        self.images = np.ascontiguousarray(self.images)  # NCHW in memory too, whatever the reader made
        if self.source_index is None:
            self.source_index = np.arange(len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Split:
        return Split(self.images[index], self.labels[index], self.source_index[index])

    def stratified_subset(self, n: int, seed: int) -> Split:
        """n examples, the same number from each class (as near as n allows), chosen by seed.

        The kept examples stay in their original order so a subset of a subset is stable.
        """
        classes = np.unique(self.labels)
        rng = np.random.default_rng([seed, 0x5B5E7])
        per_class = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
        keep = []
        for c, k in zip(classes, per_class):
            members = np.flatnonzero(self.labels == c)
            keep.append(rng.choice(members, size=min(k, len(members)), replace=False))
        return self.take(np.sort(np.concatenate(keep)))


@dataclass
class Dataset:
    """A train and a test split plus where they came from (format, path, content digest)."""

    train: Split
    test: Split
    source: dict = field(default_factory=dict)
    classes: tuple[str, ...] = CIFAR10_CLASSES

    def __post_init__(self) -> None:
        # Readers of datasets other than CIFAR-10 record their class names in source["classes"],
        # which survives the decode cache (its metadata is the source dict, as JSON).
        if self.source.get("classes"):
            self.classes = tuple(self.source["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def content_digest(*splits: Split) -> str:
    """sha256 over pixels and labels: the identity of the data, whatever file held it."""
    h = hashlib.sha256()
    for split in splits:
        h.update(str(split.images.dtype).encode())
        h.update(np.ascontiguousarray(split.images).data)
        h.update(np.ascontiguousarray(split.labels).data)
    return h.hexdigest()
