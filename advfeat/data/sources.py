"""Readers for the on-disk forms of CIFAR-10, detected from the path alone.

A reader is a small object with `name`, `detect(path)`, `fingerprint(path)` and
`read(path) -> Dataset`. `find_reader` tries them in order; `register_reader` lets other
parts of advfeat (synthesized datasets, the authors' released tensors) plug in their own.

Built in:
- the standard python release: `cifar-10-batches-py/` or `cifar-10-python.tar.gz`;
- image folders `train/<class>/*.{png,jpg}` + `test/<class>/*`, as folders or inside
  `.tar`/`.tar.gz` archives (`../shared/data` is this form).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from advfeat.errors import UserError
from advfeat.data.arrays import CIFAR10_CLASSES, Dataset, Split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PYTHON_ARCHIVE = "cifar-10-python.tar.gz"
PYTHON_FOLDER = "cifar-10-batches-py"
SPLITS = ("train", "test")


class Reader(Protocol):
    name: str

    def detect(self, path: Path) -> bool: ...

    def fingerprint(self, path: Path) -> str | None:
        """A cheap key that changes when the source changes (None: don't cache)."""

    def read(self, path: Path) -> Dataset: ...


def stat_fingerprint(files: list[Path], root: Path) -> str:
    """sha256 over (relative path, size, mtime) of each file: a change to any file shows."""
    h = hashlib.sha256()
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


# --------------------------------------------------------------------------- python release


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The release is pickled numpy arrays; refuse any other global, so no code runs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_python_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as err:  # any malformed batch is a data error, not a crash
        raise UserError(f"{where} is not a readable CIFAR-10 python batch ({err})") from None
    return data, labels


class CifarPythonReader:
    """The pickled release (what torchvision and most users have), folder or archive."""

    name = "cifar-python"
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

    def _locate(self, path: Path) -> Path | None:
        for candidate in (path, path / PYTHON_FOLDER, path / PYTHON_ARCHIVE):
            if candidate.is_dir() and (candidate / "data_batch_1").is_file():
                return candidate
            if candidate.is_file() and candidate.name == PYTHON_ARCHIVE:
                return candidate
        if is_archive(path) and path.name.lower().endswith((".tar.gz", ".tgz")):
            with tarfile.open(path) as tf:
                first = tf.next()
            if first is not None and first.name.split("/")[0] == PYTHON_FOLDER:
                return path
        return None

    def detect(self, path: Path) -> bool:
        return self._locate(path) is not None

    def fingerprint(self, path: Path) -> str:
        where = self._locate(path)
        files = [where] if where.is_file() else [where / b for bs in self.batches.values() for b in bs]
        return stat_fingerprint([f for f in files if f.exists()], where.parent)

    def _raw_batches(self, where: Path) -> dict[str, bytes]:
        wanted = {b for bs in self.batches.values() for b in bs}
        if where.is_dir():
            found = {b: (where / b).read_bytes() for b in wanted if (where / b).is_file()}
        else:
            found = {}
            with tarfile.open(where) as tf:
                for member in tf:
                    name = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and name in wanted:
                        found[name] = tf.extractfile(member).read()
        missing = sorted(wanted - found.keys())
        if missing:
            raise UserError(f"{where} lacks CIFAR-10 batches {', '.join(missing)}")
        return found

    def read(self, path: Path) -> Dataset:
        where = self._locate(path)
        raw = self._raw_batches(where)
        splits = {}
        for split, names in self.batches.items():
            parts = [_load_python_batch(raw[n], f"{where}/{n}") for n in names]
            splits[split] = Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return Dataset(splits["train"], splits["test"], {"format": self.name, "path": str(path.resolve())})


# --------------------------------------------------------------------------- image folders


class EncodedSplit:
    """Encoded image files of one split (bytes each) and their canonical labels, sorted."""

    def __init__(self, records: list[tuple[int, str, bytes]]):
        records.sort(key=lambda r: (r[0], r[1]))
        self.labels = np.array([r[0] for r in records], dtype=np.int64)
        self.names = [r[1] for r in records]
        self.files = [r[2] for r in records]

    def __len__(self) -> int:
        return len(self.files)


def _class_index(split: str, folder_names: set[str], where: Path) -> dict[str, int]:
    """Map class-folder names (any case) onto canonical labels; refuse any other layout."""
    lowered = {name.lower(): name for name in folder_names}
    if set(lowered) != set(CIFAR10_CLASSES):
        missing = sorted(set(CIFAR10_CLASSES) - set(lowered))
        extra = sorted(set(lowered) - set(CIFAR10_CLASSES))
        detail = "; ".join(
            part for part in (f"missing {', '.join(missing)}" if missing else "",
                              f"unexpected {', '.join(extra)}" if extra else "") if part
        )
        raise UserError(f"{where}: {split}/ must hold one folder per CIFAR-10 class ({detail})")
    return {lowered[c]: i for i, c in enumerate(CIFAR10_CLASSES)}


def _split_and_class(relative: str) -> tuple[str, str, str] | None:
    """'train/cat/0001.jpg' (possibly under a leading folder) -> ('train', 'cat', name)."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES) or parts[-1].startswith("."):
        return None
    split, cls = parts[-3], parts[-2]
    return (split, cls, parts[-1]) if split in SPLITS else None


class ImageFolderReader:
    """train/<class>/*.png|jpg and test/<class>/*, as folders or in .tar/.tar.gz archives."""

    name = "image-folders"

    def _archives(self, path: Path) -> list[Path]:
        if is_archive(path):
            return [path]
        if path.is_dir():
            return sorted(p for p in path.iterdir() if is_archive(p) and p.name != PYTHON_ARCHIVE)
        return []

    def _has_folders(self, path: Path) -> bool:
        return path.is_dir() and all((path / s).is_dir() for s in SPLITS)

    def detect(self, path: Path) -> bool:
        if self._has_folders(path):
            return True
        for archive in self._archives(path):
            with tarfile.open(archive) as tf:
                for member in tf:
                    if member.isfile():
                        return _split_and_class(member.name) is not None
        return False

    def _files(self, path: Path) -> list[Path]:
        if self._has_folders(path):
            return [f for s in SPLITS for f in (path / s).rglob("*") if f.is_file()]
        return self._archives(path)

    def fingerprint(self, path: Path) -> str:
        return stat_fingerprint(self._files(path), path if path.is_dir() else path.parent)

    def _walk(self, path: Path) -> Iterator[tuple[str, str, str, bytes]]:
        """Yield (split, class folder, file name, bytes) for every image file."""
        if self._has_folders(path):
            for split in SPLITS:
                for f in sorted((path / split).glob("*/*")):
                    if f.is_file() and (key := _split_and_class(f"{split}/{f.parent.name}/{f.name}")):
                        yield (*key, f.read_bytes())
            return
        for archive in self._archives(path):
            try:
                with tarfile.open(archive) as tf:
                    for member in tf:
                        if member.isfile() and (key := _split_and_class(member.name)):
                            yield (*key, tf.extractfile(member).read())
            except (tarfile.TarError, OSError, EOFError) as err:
                raise UserError(f"cannot read archive {archive}: {err}") from None

    def encoded(self, path: Path) -> dict[str, EncodedSplit]:
        """Every split's encoded files with canonical labels (what the DALI pipeline decodes)."""
        by_split: dict[str, list[tuple[str, str, bytes]]] = {s: [] for s in SPLITS}
        for split, cls, name, data in self._walk(path):
            by_split[split].append((cls, name, data))
        out = {}
        for split, items in by_split.items():
            if not items:
                raise UserError(f"{path}: no images found for the {split} split")
            index = _class_index(split, {cls for cls, _, _ in items}, path)
            out[split] = EncodedSplit([(index[cls], f"{cls}/{name}", data) for cls, name, data in items])
        return out

    def read(self, path: Path) -> Dataset:
        splits = {s: Split(decode_images(e.files, e.names, path), e.labels) for s, e in self.encoded(path).items()}
        return Dataset(splits["train"], splits["test"], {"format": self.name, "path": str(path.resolve())})


def decode_images(files: list[bytes], names: list[str], where: Path) -> np.ndarray:
    """Decode PNG/JPEG bytes to one (N, 3, H, W) uint8 array (Pillow: libjpeg-turbo, libpng)."""
    from PIL import Image

    def decode(i: int) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(files[i])) as im:
                return np.asarray(im.convert("RGB")).transpose(2, 0, 1)
        except Exception as err:
            raise UserError(f"cannot decode image {where}: {names[i]} ({err})") from None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(decode, range(len(files)), chunksize=1024))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise UserError(f"{where}: images differ in size ({sorted(shapes)[:3]}...); resize them first")
    return np.stack(images)


# --------------------------------------------------------------------------- registry

READERS: list[Reader] = [CifarPythonReader(), ImageFolderReader()]


def register_reader(reader: Reader, first: bool = True) -> None:
    """Plug in another on-disk format (tried before the built-in ones when first=True)."""
    if any(r.name == reader.name for r in READERS):
        return
    READERS.insert(0, reader) if first else READERS.append(reader)


def find_reader(path: Path) -> Reader:
    if not path.exists():
        raise UserError(f"data path {path} does not exist")
    for reader in READERS:
        try:
            if reader.detect(path):
                return reader
        except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as err:
            raise UserError(f"cannot read {path}: {err}") from None
    raise UserError(
        f"{path} is not a CIFAR-10 dataset advfeat can read: expected {PYTHON_FOLDER}/ or {PYTHON_ARCHIVE}, "
        f"train/ and test/ image folders (or .tar/.tar.gz archives of them), or an advfeat dataset"
    )
