"""Write a dataset in a standard form that other code reads, losslessly: `advfeat export`.

Formats (each read back by advfeat's own readers, bit for bit):
- authors: `CIFAR_ims` and `CIFAR_lab` as the robustness library reads the paper's released
  datasets (`ch.cat(ch.load(path / "CIFAR_ims"))`): torch.save of a list of image tensors
  (N_i, 3, H, W) and a list of int64 label tensors, chunks of AUTHORS_CHUNK, plus
  `classes.txt` (ignored by the library; advfeat reads the class names from it). The training
  split only, as in the release. Images keep their dtype: uint8 stays uint8 and float16 /
  float32 stay as they are, in [0, 1] (the release's own images are float32 in [0, 1]);
  the library's folder.TensorDataset turns either into a PIL image with ToPILImage (a float
  x becomes byte(x * 255), which is exact for x = k / 255 in float32).
- imagefolder: `train/<class>/<index>.png` and `test/<class>/...` plus `classes.txt` (class
  names in label order): torchvision's ImageFolder layout. PNG holds 8 bits a channel, so
  only uint8 datasets are written (a float dataset would be rounded: use npz or authors).
- npz: `dataset.npz` with train_images, train_labels, test_images, test_labels and classes
  (a unicode array, so np.load needs no pickle).

Everything is written into a hidden folder beside --out and renamed to --out at the end:
an interrupted or refused export leaves nothing behind, and an existing --out is never
touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from advfeat.data.arrays import Dataset, Split
from advfeat.data.sources import CLASS_LIST, NPZ_FILE
from advfeat.errors import UserError

EXPORT_FORMATS = ("authors", "imagefolder", "npz")
AUTHORS_CHUNK = 10_000  # images per tensor of the CIFAR_ims list


def check_export(dataset: Dataset, fmt: str) -> None:
    """Refuse, before anything is written, what the format cannot hold losslessly."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt != "authors" and dataset.test is None:
        raise UserError(f"--format {fmt} writes the test split too, and this dataset has none; pass --test-data")
    if fmt == "imagefolder":
        splits = [dataset.train, dataset.test]
        if any(s.images.dtype != np.uint8 for s in splits):
            raise UserError(f"--format imagefolder writes 8-bit PNGs, which would round these "
                            f"{dataset.train.images.dtype} images; use --format npz or authors (lossless)")
        if any(s.images.shape[1] != 3 for s in splits):
            raise UserError("--format imagefolder writes RGB PNGs; these images do not have 3 channels")
        bad = [c for c in dataset.classes if not c or c in (".", "..") or "/" in c or "\\" in c or "\0" in c]
        if bad:
            raise UserError(f"class name {bad[0]!r} cannot be a folder name; use --format npz")


def export_dataset(dataset: Dataset, fmt: str, out: Path | str) -> Path:
    """Write `dataset` as `fmt` into the new folder `out` (see the module docstring)."""
    out = Path(out)
    check_export(dataset, fmt)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists; give a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o777 & ~umask)  # mkdtemp makes it 0700; the export is an ordinary folder
    try:
        WRITERS[fmt](dataset, partial)
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def write_authors(dataset: Dataset, folder: Path) -> None:
    split = dataset.train
    chunks = range(0, len(split), AUTHORS_CHUNK)
    # Views, not copies: a tensor made from a numpy slice has only that slice as its storage.
    torch.save([torch.from_numpy(split.images[i:i + AUTHORS_CHUNK]) for i in chunks], folder / "CIFAR_ims")
    torch.save([torch.from_numpy(split.labels[i:i + AUTHORS_CHUNK]) for i in chunks], folder / "CIFAR_lab")
    write_class_list(dataset.classes, folder)


def write_class_list(classes: tuple[str, ...], folder: Path) -> None:
    (folder / CLASS_LIST).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")


def _write_png_split(split: Split, classes: tuple[str, ...], folder: Path) -> None:
    from PIL import Image

    width = len(str(max(len(split) - 1, 0)))
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(split.images, split.labels)):
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(folder / classes[label] / f"{i:0{width}d}.png")


def write_imagefolder(dataset: Dataset, folder: Path) -> None:
    for split in ("train", "test"):
        _write_png_split(getattr(dataset, split), dataset.classes, folder / split)
    write_class_list(dataset.classes, folder)


def write_npz(dataset: Dataset, folder: Path) -> None:
    np.savez(folder / NPZ_FILE, train_images=dataset.train.images, train_labels=dataset.train.labels,
             test_images=dataset.test.images, test_labels=dataset.test.labels,
             classes=np.array(dataset.classes, dtype=str))


WRITERS = {"authors": write_authors, "imagefolder": write_imagefolder, "npz": write_npz}
