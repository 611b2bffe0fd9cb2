"""Readers for the on-disk forms of image datasets, detected from the path alone.

A reader is a small object with `name`, `detect(path)`, `fingerprint(path)` and
`read(path) -> Dataset`. `find_reader` tries them in order; `register_reader` lets other
parts of advfeat (synthesized datasets, the authors' released tensors, Restricted ImageNet)
plug in their own.

Built in:
- CIFAR-10's python release: `cifar-10-batches-py/` or `cifar-10-python.tar.gz`;
- CIFAR-100's python release: `cifar-100-python/` (train, test, meta) or its .tar.gz; the
  100 fine labels, names from `meta`;
- SVHN as torchvision keeps it: `train_32x32.mat` + `test_32x32.mat` (label 10 is digit 0);
- image folders `train/<class>/*.{png,jpg}` + `test/<class>/*`, as folders or inside
  `.tar`/`.tar.gz` archives (`../shared/data` is this form): the ten CIFAR-10 class names
  (any case) take CIFAR-10's canonical labels; any other set of N >= 2 classes takes the
  order of `classes.txt` at the root if present (advfeat export writes it), else sorted
  folder names (torchvision's ImageFolder order);
- `dataset.npz` (written by `advfeat export --format npz`): arrays only, no pickles.
Class names and the image size always come from the data (Dataset.classes, images.shape).
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


def source_record(reader_name: str, path: Path, classes: tuple[str, ...]) -> dict:
    """A Dataset's `source`: the reader, the path, and the class names in label order."""
    return {"format": reader_name, "path": str(path.resolve()), "classes": list(classes)}


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
        # Bytes pickled by Python 3 at protocol 2 come back through _codecs.encode(str, "latin1"),
        # a pure function (torch's weights_only unpickler allows it too).
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str, what: str) -> dict:
    """A dict of numpy arrays, lists, bytes and numbers; any other global is refused."""
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any malformed file is a data error, not a crash
        raise UserError(f"{where} is not a readable {what} ({err})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where} is not a readable {what} (holds {type(obj).__name__}, not a dict)")
    return obj


def _load_python_batch(raw: bytes, where: str, label_key: bytes = b"labels",
                       what: str = "CIFAR-10 python batch") -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(raw, where, what)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        if len(labels) != len(data):
            raise ValueError(f"{len(data)} images but {len(labels)} labels")
    except Exception as err:
        raise UserError(f"{where} is not a readable {what} ({err})") from None
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
        return read_named_files(where, {b for bs in self.batches.values() for b in bs}, "CIFAR-10 batches")

    def read(self, path: Path) -> Dataset:
        where = self._locate(path)
        raw = self._raw_batches(where)
        splits = {}
        for split, names in self.batches.items():
            parts = [_load_python_batch(raw[n], f"{where}/{n}") for n in names]
            splits[split] = Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return Dataset(splits["train"], splits["test"], {"format": self.name, "path": str(path.resolve())})


def read_named_files(where: Path, wanted: set[str], what: str) -> dict[str, bytes]:
    """The bytes of the files named `wanted` in a folder or (by base name) in a tar archive;
    a missing one or an unreadable archive is one line naming `what`."""
    found = {}
    try:
        if where.is_dir():
            found = {name: (where / name).read_bytes() for name in wanted if (where / name).is_file()}
        else:
            with tarfile.open(where) as tf:
                for member in tf:
                    name = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and name in wanted:
                        found[name] = tf.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(f"cannot read archive {where}: {err}") from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise UserError(f"{where} lacks {what} {', '.join(missing)}")
    return found


# --------------------------------------------------------------------------- CIFAR-100


CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"


class Cifar100PythonReader:
    """CIFAR-100's pickled release: `train`, `test` and `meta` in cifar-100-python/ (folder
    or .tar.gz). Fine labels (100 classes), names from meta's fine_label_names; the 20
    coarse labels are not read."""

    name = "cifar100-python"
    files = ("train", "test", "meta")

    def _locate(self, path: Path) -> Path | None:
        for candidate in (path, path / CIFAR100_FOLDER, path / CIFAR100_ARCHIVE):
            if candidate.is_dir() and all((candidate / f).is_file() for f in self.files):
                return candidate
            if candidate.is_file() and candidate.name == CIFAR100_ARCHIVE:
                return candidate
        return None

    def detect(self, path: Path) -> bool:
        return self._locate(path) is not None

    def fingerprint(self, path: Path) -> str:
        where = self._locate(path)
        files = [where] if where.is_file() else [where / f for f in self.files]
        return stat_fingerprint(files, where.parent)

    def _raw(self, where: Path) -> dict[str, bytes]:
        return read_named_files(where, set(self.files), "CIFAR-100 files")

    def read(self, path: Path) -> Dataset:
        where = self._locate(path)
        raw = self._raw(where)
        meta = _unpickle(raw["meta"], f"{where}/meta", "CIFAR-100 meta file")
        try:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"fine_label_names"])
        except (KeyError, TypeError, UnicodeDecodeError) as err:
            raise UserError(f"{where}/meta has no readable fine_label_names ({err})") from None
        splits = {}
        for split in SPLITS:
            images, labels = _load_python_batch(raw[split], f"{where}/{split}", b"fine_labels", "CIFAR-100 file")
            if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
                raise UserError(f"{where}/{split}: labels outside 0..{len(classes) - 1}")
            splits[split] = Split(images, labels)
        return Dataset(splits["train"], splits["test"], source_record(self.name, path, classes))


# --------------------------------------------------------------------------- SVHN


SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
SVHN_CLASSES = tuple(str(d) for d in range(10))


class SvhnMatReader:
    """SVHN's cropped digits as torchvision keeps them: train_32x32.mat and test_32x32.mat.

    Each holds X (32, 32, 3, N) uint8 and y (N, 1) with labels 1..10, 10 meaning the digit 0;
    advfeat's label is the digit (torchvision's mapping). extra_32x32.mat is not read. MATLAB
    v5 files are plain arrays: scipy.io.loadmat runs no code from them.
    """

    name = "svhn-mat"

    def detect(self, path: Path) -> bool:
        return path.is_dir() and all((path / f).is_file() for f in SVHN_FILES.values())

    def fingerprint(self, path: Path) -> str:
        return stat_fingerprint([path / f for f in SVHN_FILES.values()], path)

    def _split(self, file: Path) -> Split:
        from scipy.io import loadmat

        try:
            mat = loadmat(file, variable_names=["X", "y"])
            images = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1)  # HWCN -> NCHW
            labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10
        except Exception as err:
            raise UserError(f"{file} is not a readable SVHN .mat file ({str(err).splitlines()[0]})") from None
        if images.shape[1] != 3 or len(images) != len(labels):
            raise UserError(f"{file} is not an SVHN split: expected X (H, W, 3, N) and N labels, got "
                            f"{tuple(mat['X'].shape)} and {len(labels)}")
        return Split(images, labels)

    def read(self, path: Path) -> Dataset:
        train, test = (self._split(path / SVHN_FILES[s]) for s in SPLITS)
        return Dataset(train, test, source_record(self.name, path, SVHN_CLASSES))


# --------------------------------------------------------------------------- npz


NPZ_FILE = "dataset.npz"
NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "classes")


class NpzReader:
    """`dataset.npz` (advfeat export --format npz): the arrays of NPZ_KEYS, classes as a
    unicode array; read with allow_pickle=False, so an object array is refused."""

    name = "npz"

    def _file(self, path: Path) -> Path:
        return path / NPZ_FILE if path.is_dir() else path

    def detect(self, path: Path) -> bool:
        return (path.is_dir() and (path / NPZ_FILE).is_file()) or (path.is_file() and path.suffix == ".npz")

    def fingerprint(self, path: Path) -> None:
        return None  # already decoded arrays

    def read(self, path: Path) -> Dataset:
        file = self._file(path)
        try:
            with np.load(file, allow_pickle=False) as arrays:
                missing = [k for k in NPZ_KEYS if k not in arrays.files]
                if missing:
                    raise UserError(f"{file} lacks the arrays {', '.join(missing)}")
                a = {k: arrays[k] for k in NPZ_KEYS}
        except (OSError, ValueError) as err:
            raise UserError(f"{file} is not a readable dataset.npz ({str(err).splitlines()[0]})") from None
        try:
            train, test = Split(a["train_images"], a["train_labels"]), Split(a["test_images"], a["test_labels"])
        except ValueError as err:
            raise UserError(f"{file}: {err}") from None
        return Dataset(train, test, source_record(self.name, path, tuple(str(c) for c in a["classes"])))


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


CLASS_LIST = "classes.txt"


def _difference(found: set[str], expected: set[str]) -> str:
    missing, extra = sorted(expected - found), sorted(found - expected)
    return "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                       f"unexpected {', '.join(extra)}" if extra else "") if part)


def class_order(by_split: dict[str, set[str]], listed: list[str] | None, where: Path) -> tuple[str, ...]:
    """The class names in label order, from the class folders of every split.

    The ten CIFAR-10 names (any case) give CIFAR-10's canonical order; else `listed` (the
    root's classes.txt) when given, else the sorted folder names. Every split must hold the
    same classes, at least two of them.
    """
    train = by_split[SPLITS[0]]
    for split, names in by_split.items():
        if names != train:
            raise UserError(f"{where}: train/ and {split}/ must hold the same class folders "
                            f"(train/ against {split}/: {_difference(train, names)})")
    if {name.lower() for name in train} == set(CIFAR10_CLASSES) and len(train) == 10:
        lowered = {name.lower(): name for name in train}
        return tuple(lowered[c] for c in CIFAR10_CLASSES)
    if len(train) < 2:
        raise UserError(f"{where}: a classification dataset needs at least 2 class folders, found "
                        f"{len(train)} ({', '.join(sorted(train)) or 'none'})")
    if listed is not None:
        if set(listed) != train or len(listed) != len(train):
            raise UserError(f"{where / CLASS_LIST} does not list the class folders ({_difference(set(listed), train)})")
        return tuple(listed)
    return tuple(sorted(train))


def empty_class_folders(path: Path) -> list[str]:
    """'split/class' for every class folder that holds no image file (folders only)."""
    empty = []
    for split in SPLITS:
        for folder in sorted(p for p in (path / split).iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not any(f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES) for f in folder.iterdir()):
                empty.append(f"{split}/{folder.name}")
    return empty


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

    def lossy(self, path: Path) -> bool:
        """Whether the images are JPEG (lossy: less high-frequency content than the original
        pixels), judged by the first image file, as `detect` finds it."""
        for split, cls, name, _ in self._walk_names(path):
            return name.lower().endswith((".jpg", ".jpeg"))
        return False

    def _walk_names(self, path: Path) -> Iterator[tuple[str, str, str, None]]:
        """(split, class folder, file name, None) for image files, without reading them."""
        if self._has_folders(path):
            for f in (path / SPLITS[0]).glob("*/*"):
                if f.is_file() and (key := _split_and_class(f"{SPLITS[0]}/{f.parent.name}/{f.name}")):
                    yield (*key, None)
            return
        for archive in self._archives(path):
            with tarfile.open(archive) as tf:
                for member in tf:
                    if member.isfile() and (key := _split_and_class(member.name)):
                        yield (*key, None)

    def _files(self, path: Path) -> list[Path]:
        if self._has_folders(path):
            listing = [path / CLASS_LIST] if (path / CLASS_LIST).is_file() else []  # it orders the labels
            return [f for s in SPLITS for f in (path / s).rglob("*") if f.is_file()] + listing
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

    def _listed_classes(self, path: Path) -> list[str] | None:
        listing = path / CLASS_LIST
        if not (self._has_folders(path) and listing.is_file()):
            return None
        return [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]

    def classes(self, path: Path, found: dict[str, set[str]]) -> tuple[str, ...]:
        if self._has_folders(path):
            empty = empty_class_folders(path)
            if empty:
                raise UserError(f"{path}: class folder{'s' if len(empty) > 1 else ''} without images: "
                                f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}")
        return class_order(found, self._listed_classes(path), path)

    def encoded(self, path: Path) -> dict[str, EncodedSplit]:
        """Every split's encoded files with their labels (what the DALI pipeline decodes)."""
        return self._encoded(path)[0]

    def _encoded(self, path: Path) -> tuple[dict[str, EncodedSplit], tuple[str, ...]]:
        """(every split's encoded files with labels, the class folders in label order)."""
        by_split: dict[str, list[tuple[str, str, bytes]]] = {s: [] for s in SPLITS}
        for split, cls, name, data in self._walk(path):
            by_split[split].append((cls, name, data))
        for split, items in by_split.items():
            if not items:
                raise UserError(f"{path}: no images found for the {split} split")
        classes = self.classes(path, {split: {cls for cls, _, _ in items} for split, items in by_split.items()})
        index = {name: i for i, name in enumerate(classes)}
        return {split: EncodedSplit([(index[cls], f"{cls}/{name}", data) for cls, name, data in items])
                for split, items in by_split.items()}, classes

    def read(self, path: Path) -> Dataset:
        encoded, folders = self._encoded(path)
        splits = {s: Split(decode_images(e.files, e.names, path), e.labels) for s, e in encoded.items()}
        sizes = {s: split.images.shape[1:] for s, split in splits.items()}
        if sizes["train"] != sizes["test"]:
            raise UserError(f"{path}: train images are {sizes['train']} but test images {sizes['test']}; "
                            f"resize them to one size first")
        lowered = tuple(name.lower() for name in folders)
        return Dataset(splits["train"], splits["test"],
                       source_record(self.name, path, CIFAR10_CLASSES if lowered == CIFAR10_CLASSES else folders))


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

READERS: list[Reader] = [CifarPythonReader(), Cifar100PythonReader(), SvhnMatReader(), NpzReader(),
                         ImageFolderReader()]


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
        f"{path} is not a CIFAR-10 dataset or any other dataset advfeat can read: expected {PYTHON_FOLDER}/ "
        f"or {PYTHON_ARCHIVE}, {CIFAR100_FOLDER}/, SVHN's {' and '.join(SVHN_FILES.values())}, train/ and test/ "
        f"image folders (or .tar/.tar.gz archives of them), an ImageNet folder, {NPZ_FILE}, or an advfeat dataset"
    )
