"""Restricted ImageNet (the paper's ImageNet_R, Table 1): nine super-classes of ImageNet.

The robustness library (robustness/tools/constants.py, RESTRICTED_IMAGNET_RANGES) maps an
ImageNet folder onto nine classes by index ranges over its class folders: torchvision's
ImageFolder numbers the wnid folders in sorted order (0..999), and folder i belongs to
super-class k when RANGES[k][0] <= i <= RANGES[k][1] (inclusive: the library's
`range(start, end + 1)`); every other folder is dropped. paper-notes section 1.4.

Layout read here, as the library's ImageNet: `train/<wnid>/*.JPEG` and `val/<wnid>/*`.
Because the ranges index the sorted list of all 1000 wnids, the folder must hold all 1000
class folders in each split (a partial copy would shift every index and mislabel silently);
class folders outside the ranges may be empty.

Deviation from the library: images are decoded once into arrays. When every image of the
dataset has one size, that size is kept (input size from the data); otherwise every image
is resized as the library's *test* transform does (shorter side 256, bilinear, then a
224x224 centre crop), for the training split too, where the library instead draws a
RandomResizedCrop(224) per epoch.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from advfeat.data.arrays import Dataset, Split
from advfeat.data.sources import IMAGE_SUFFIXES, source_record, stat_fingerprint
from advfeat.errors import UserError

# robustness/tools/constants.py; names from the RestrictedImageNet docstring (Monkey = primate).
RESTRICTED_IMAGENET_RANGES = ((151, 268), (281, 285), (30, 32), (33, 37), (80, 100), (365, 382),
                              (389, 397), (118, 121), (300, 319))
RESTRICTED_IMAGENET_CLASSES = ("dog", "cat", "frog", "turtle", "bird", "monkey", "fish", "crab", "insect")
IMAGENET_CLASSES = 1000
IMAGENET_SPLITS = {"train": "train", "test": "val"}  # advfeat split -> ImageNet folder
WNID = re.compile(r"^n\d{8}$")
RESIZE, CROP = 256, 224  # the library's TEST_TRANSFORMS_IMAGENET


def super_class_of(index: int) -> int | None:
    """The super-class of ImageNet class `index` (position in the sorted wnids), or None."""
    for k, (low, high) in enumerate(RESTRICTED_IMAGENET_RANGES):
        if low <= index <= high:
            return k
    return None


def wnid_folders(split_folder: Path) -> list[Path]:
    return sorted((p for p in split_folder.iterdir() if p.is_dir() and WNID.match(p.name)), key=lambda p: p.name)


class RestrictedImageNetReader:
    """An ImageNet folder (train/ and val/ of wnid folders), read as Restricted ImageNet."""

    name = "restricted-imagenet"

    def detect(self, path: Path) -> bool:
        folders = [path / f for f in IMAGENET_SPLITS.values()]
        return path.is_dir() and all(f.is_dir() for f in folders) and bool(wnid_folders(folders[0]))

    def _files(self, path: Path) -> dict[str, list[tuple[int, Path]]]:
        """split -> [(super-class, image file)] in (wnid, file name) order."""
        out = {}
        wnids = None
        for split, folder in IMAGENET_SPLITS.items():
            classes = wnid_folders(path / folder)
            if len(classes) != IMAGENET_CLASSES:
                raise UserError(f"{path / folder}: Restricted ImageNet needs all {IMAGENET_CLASSES} ImageNet class "
                                f"folders (the library's ranges index their sorted list); found {len(classes)}")
            names = [c.name for c in classes]
            if wnids is not None and names != wnids:
                raise UserError(f"{path}: train/ and val/ hold different wnid folders")
            wnids = names
            files = []
            for index, folder_path in enumerate(classes):
                k = super_class_of(index)
                if k is not None:
                    files += [(k, f) for f in sorted(folder_path.iterdir())
                              if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES)]
            counts = np.bincount([k for k, _ in files], minlength=len(RESTRICTED_IMAGENET_CLASSES))
            if (counts == 0).any():
                empty = [RESTRICTED_IMAGENET_CLASSES[k] for k in np.flatnonzero(counts == 0)]
                raise UserError(f"{path / folder}: no images for the super-class{'es' if len(empty) > 1 else ''} "
                                f"{', '.join(empty)}")
            out[split] = files
        return out

    def fingerprint(self, path: Path) -> str:
        files = [f for split in self._files(path).values() for _, f in split]
        return stat_fingerprint(files, path)

    def read(self, path: Path) -> Dataset:
        by_split = self._files(path)
        files = [f for split in by_split.values() for _, f in split]
        images, resized = decode_files(files, path)
        splits, start = {}, 0
        for split, items in by_split.items():
            labels = np.array([k for k, _ in items], dtype=np.int64)
            splits[split] = Split(images[start:start + len(items)], labels)
            start += len(items)
        source = source_record(self.name, path, RESTRICTED_IMAGENET_CLASSES)
        if resized:
            source["resized"] = f"shorter side {RESIZE}, centre crop {CROP}x{CROP}"
        return Dataset(splits["train"], splits["test"], source)


def resize_center_crop(im, resize: int = RESIZE, crop: int = CROP):
    """torchvision Resize(resize) (shorter side, bilinear) then CenterCrop(crop), on a PIL image."""
    from PIL import Image

    w, h = im.size
    # torchvision's sizes: the short side becomes `resize`, the long side int(resize * long / short).
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    im = im.resize(size, Image.BILINEAR)
    w, h = im.size
    left, top = round((w - crop) / 2), round((h - crop) / 2)
    return im.crop((left, top, left + crop, top + crop))


def decode_files(files: list[Path], where: Path) -> tuple[np.ndarray, bool]:
    """((N, 3, H, W) uint8, resized): the images at their own size if all share one, else
    every one resized by resize_center_crop. Decoded straight into one preallocated array
    (at ImageNet scale a list of images plus its stacked copy would need twice the memory)."""
    from PIL import Image

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sizes = set(pool.map(lambda f: _size_or_error(f, where), files, chunksize=256))
        same = len(sizes) == 1
        width, height = next(iter(sizes)) if same else (CROP, CROP)
        out = np.empty((len(files), 3, height, width), dtype=np.uint8)

        def decode(i: int) -> None:
            try:
                with Image.open(files[i]) as im:
                    rgb = im.convert("RGB")
            except Exception as err:
                raise UserError(f"cannot decode image {files[i].relative_to(where)} ({err})") from None
            out[i] = np.asarray(rgb if same else resize_center_crop(rgb)).transpose(2, 0, 1)

        for _ in pool.map(decode, range(len(files)), chunksize=256):
            pass
    return out, not same


def _size_or_error(f: Path, where: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(f) as im:
            return im.size
    except Exception as err:
        raise UserError(f"cannot decode image {f.relative_to(where)} ({err})") from None
