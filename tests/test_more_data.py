"""Datasets beyond CIFAR-10 (CIFAR-100, SVHN, any image folder, Restricted ImageNet), the
authors' released datasets by name and in torch's legacy serialization, export and inspect.

Every folder is generated here, small, in the layout of the real release; the expected
labels and pixels come from the generator, never from the code under test.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from advfeat.data import load_dataset
from advfeat.data.restricted_imagenet import RESTRICTED_IMAGENET_CLASSES, RESTRICTED_IMAGENET_RANGES
from advfeat.data.sources import find_reader
from advfeat.errors import UserError

from conftest import run_cli


def random_images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


# --------------------------------------------------------------------------- writers of each layout


def write_cifar100(folder: Path, per_class: int = 1, classes: int = 100, seed: int = 0) -> dict:
    """cifar-100-python/{train,test,meta} as the release pickles them (bytes keys, uint8 rows)."""
    root = folder / "cifar-100-python"
    root.mkdir(parents=True)
    names = [f"class_{c:03d}" for c in range(classes)]
    out = {"classes": names}
    for i, split in enumerate(("train", "test")):
        labels = np.repeat(np.arange(classes), per_class)[::-1].copy()  # not class-major, not sorted
        images = random_images(len(labels), 32, seed + i)
        batch = {b"filenames": [f"{j}.png".encode() for j in range(len(labels))], b"batch_label": split.encode(),
                 b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(),
                 b"data": images.reshape(len(labels), -1)}
        (root / split).write_bytes(pickle.dumps(batch, protocol=2))
        out[split] = (images, labels)
    meta = {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"c"] * 20}
    (root / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


def write_svhn(folder: Path, per_class: int = 3, seed: int = 0) -> dict:
    """train_32x32.mat / test_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) in 1..10 (10 = digit 0)."""
    from scipy.io import savemat

    folder.mkdir(parents=True)
    out = {}
    for i, split in enumerate(("train", "test")):
        digits = np.tile(np.arange(10), per_class)
        images = random_images(len(digits), 32, seed + i)
        y = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)
        savemat(folder / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": y})
        out[split] = (images, digits)
    return out


def write_png_folders(folder: Path, classes: list[str], per_class: int, size: int, seed: int = 0) -> dict:
    from PIL import Image

    out = {}
    for i, split in enumerate(("train", "test")):
        images = random_images(len(classes) * per_class, size, seed + i)
        labels = np.repeat(np.arange(len(classes)), per_class)
        for j, (image, label) in enumerate(zip(images, labels)):
            path = folder / split / classes[label] / f"{j:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(path)
        out[split] = (images, labels)
    return out


def fake_wnids() -> list[str]:
    """1000 wnid-shaped names whose sorted order is their index."""
    return [f"n{i:08d}" for i in range(1000)]


def write_imagenet(folder: Path, filled: dict[int, int], size: int = 8, seed: int = 0) -> None:
    """train/ and val/ of 1000 wnid folders; ImageNet class index i gets filled[i] JPEGs-as-PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for i, wnid in enumerate(fake_wnids()):
            (folder / split / wnid).mkdir(parents=True)
            for j in range(filled.get(i, 0)):
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(image).save(folder / split / wnid / f"{wnid}_{j}.png")


def sort_by_label_then_pixels(images: np.ndarray, labels: np.ndarray):
    order = sorted(range(len(labels)), key=lambda i: (labels[i], images[i].tobytes()))
    return images[order], labels[order]


def assert_same_examples(split, images, labels):
    got = sort_by_label_then_pixels(split.images, split.labels)
    want = sort_by_label_then_pixels(images, labels)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# --------------------------------------------------------------------------- readers


def test_cifar100_python_release(tmp_path):
    written = write_cifar100(tmp_path / "c100")
    d = load_dataset(tmp_path / "c100")
    assert find_reader(tmp_path / "c100").name == "cifar100-python"
    assert d.num_classes == 100 and d.classes == tuple(written["classes"])
    for split in ("train", "test"):
        assert_same_examples(getattr(d, split), *written[split])
    # The same from the cache (class names survive it).
    again = load_dataset(tmp_path / "c100")
    assert again.classes == d.classes and again.source["digest"] == d.source["digest"]


def test_svhn_mat_labels_ten_are_digit_zero(tmp_path):
    written = write_svhn(tmp_path / "svhn")
    d = load_dataset(tmp_path / "svhn")
    assert d.classes == tuple("0123456789")
    for split in ("train", "test"):
        assert_same_examples(getattr(d, split), *written[split])
    assert (d.train.labels == 0).sum() == 3 and d.train.labels.max() == 9


def test_image_folder_with_any_classes_and_size(tmp_path):
    classes = ["zebra", "apple", "Mango"]
    written = write_png_folders(tmp_path / "f", classes, per_class=2, size=12)
    d = load_dataset(tmp_path / "f")
    assert d.classes == ("Mango", "apple", "zebra")  # torchvision's order: sorted folder names
    assert d.train.images.shape[1:] == (3, 12, 12)
    remap = np.array([d.classes.index(c) for c in classes])
    for split in ("train", "test"):
        images, labels = written[split]
        assert_same_examples(getattr(d, split), images, remap[labels])


def test_restricted_imagenet_uses_the_library_ranges(tmp_path):
    # A dozen filled wnid folders: each super-class's two range ends, a few inside, and
    # three just outside the ranges (dropped).
    inside = {low: 1 for low, _ in RESTRICTED_IMAGENET_RANGES} | {151: 2, 268: 1, 319: 1}
    outside = {29: 1, 150: 1, 398: 2}
    write_imagenet(tmp_path / "imagenet", inside | outside, size=8)
    d = load_dataset(tmp_path / "imagenet")
    assert d.classes == RESTRICTED_IMAGENET_CLASSES and d.num_classes == 9
    assert d.train.images.shape == (sum(inside.values()), 3, 8, 8)
    expected = np.zeros(9, int)
    for index, n in inside.items():  # brute force over the inclusive ranges
        expected[[k for k, (lo, hi) in enumerate(RESTRICTED_IMAGENET_RANGES) if lo <= index <= hi][0]] += n
    np.testing.assert_array_equal(np.bincount(d.train.labels, minlength=9), expected)
    assert expected.tolist() == [3, 1, 1, 1, 1, 1, 1, 1, 2]  # dog: 151 twice and 268; insect: 300 and 319


def test_restricted_imagenet_refuses_a_partial_copy(tmp_path):
    write_imagenet(tmp_path / "imagenet", {151: 1}, size=8)
    shutil.rmtree(tmp_path / "imagenet" / "train" / "n00000999")
    with pytest.raises(UserError, match="all 1000 ImageNet class folders"):
        load_dataset(tmp_path / "imagenet")
