"""Data: find, read, cache and subset CIFAR-10 (and CIFAR-100, SVHN, image folders, Restricted
ImageNet: sources.py); loaders live in tensor_loader.py and dali.py.

    dataset = load_dataset("../shared/data", subset=5000, seed=0)
    dataset.train.images  # (N, 3, 32, 32) uint8, canonical labels in dataset.train.labels
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from advfeat.errors import UserError
from advfeat.data.arrays import CIFAR10_CLASSES, Dataset, Split, content_digest
from advfeat.data.augment import AUGMENTATIONS, augmentation_name
from advfeat.data.cache import cache_root, load_cached
from advfeat.data.sources import PYTHON_ARCHIVE, find_reader, register_reader
from advfeat.data.restricted_imagenet import RestrictedImageNetReader
from advfeat.data.synthesized import AdvfeatDatasetReader, AuthorsReleaseReader, attach_test_split, released_dataset

# Train-only formats: their test split is the real one (see synthesized.py).
register_reader(AdvfeatDatasetReader())
register_reader(AuthorsReleaseReader())
register_reader(RestrictedImageNetReader(), first=False)

__all__ = [
    "AUGMENTATIONS", "CIFAR10_CLASSES", "Dataset", "Split", "content_digest", "default_data_path", "load_dataset",
    "make_loader", "register_reader",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


def default_data_path() -> Path:
    """$ADVFEAT_DATA, else <cache>/data holding the standard release (downloaded if absent)."""
    if os.environ.get("ADVFEAT_DATA"):
        return Path(os.environ["ADVFEAT_DATA"])
    folder = cache_root() / "data"
    if (folder / PYTHON_ARCHIVE).is_file():
        return folder
    try:
        from torchvision.datasets.utils import download_url

        print(f"advfeat: downloading CIFAR-10 to {folder}", file=sys.stderr)
        download_url(CIFAR10_URL, str(folder), PYTHON_ARCHIVE, CIFAR10_MD5)
    except Exception as err:  # no network, proxy refusal, bad checksum: all the same to the user
        raise UserError(
            f"no --data given and CIFAR-10 could not be downloaded ({type(err).__name__}); "
            f"offline? pass --data PATH or set ADVFEAT_DATA"
        ) from None
    return folder


def load_dataset(
    path: str | Path | None = None,
    *,
    name: str | None = None,
    test_data: str | Path | None = None,
    subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    verbose: bool = False,
    need_test: bool = True,
) -> Dataset:
    """Read any supported dataset (decoded once, then cached) and subset it.

    name picks one dataset inside `path`: one of the authors' released datasets
    (d_robust_CIFAR, ...) in the root of their extracted archive. need_test=False leaves a
    train-only dataset without a test split (dataset.test is None) unless test_data is given.

    subset / test_subset keep that many examples of the train / test split, stratified by
    class and chosen by `seed`. Train-only datasets (synthesized, the authors' release)
    take their test split from `test_data`, else from the source data they record.
    """
    for what, n in (("subset", subset), ("test subset", test_subset)):
        if n is not None and n < 1:
            raise UserError(f"{what} must be at least 1, got {n}")
    path = Path(path).expanduser() if path is not None else default_data_path()
    path = released_dataset(path, name)
    reader = find_reader(path)
    start = time.perf_counter()
    if reader.fingerprint(path) is None:
        dataset, cached = reader.read(path), False
        dataset.source.setdefault("digest", content_digest(dataset.train))
    else:
        dataset, cached = load_cached(path, reader)
    if need_test or test_data is not None:
        dataset = attach_test_split(dataset, test_data, load_dataset)
    dataset.source["path"] = str(path.resolve())
    # Lossy JPEG has less high-frequency content than the original pixels: the report says so.
    dataset.source["lossy"] = bool(getattr(reader, "lossy", lambda p: False)(path))
    if verbose:
        how = "from cache" if cached else "decoded"
        n_test = len(dataset.test) if dataset.test is not None else 0
        print(f"advfeat: {len(dataset.train)} train / {n_test} test images ({reader.name}, "
              f"{how} in {time.perf_counter() - start:.1f}s)", file=sys.stderr)
    if subset is not None:
        dataset.train = dataset.train.stratified_subset(subset, seed)
        dataset.source["subset"] = subset
    if test_subset is not None and dataset.test is not None:
        dataset.test = dataset.test.stratified_subset(test_subset, seed)
        dataset.source["test_subset"] = test_subset
    return dataset


LOADERS = ("auto", "tensor", "dali")


def make_loader(
    dataset: Dataset,
    split: str,
    *,
    loader: str = "auto",
    batch_size: int,
    device,
    shuffle: bool = False,
    augment: str | bool = False,
    seed: int = 0,
    drop_last: bool = False,
):
    """A loader over dataset.<split>: TensorLoader (default) or DaliLoader.

    `augment` names a policy of AUGMENTATIONS: "none", "crop-flip" (random crop from a
    4-pixel zero pad and horizontal flip) or "library" (the robustness library's: crop,
    flip, colour jitter, 2-degree rotation); True and False mean "crop-flip" and "none".

    "auto" picks the device-resident tensor loader: CIFAR-size data fits on any GPU and
    needs no decoding per epoch. "dali" decodes the source files with DALI each epoch when
    the dataset came from image files (else it feeds the decoded arrays).
    """
    from advfeat.data.tensor_loader import TensorLoader

    if loader not in LOADERS:
        raise UserError(f"unknown loader {loader!r}; choose one of {', '.join(LOADERS)}")
    augment = augmentation_name(augment)  # the same error for a bad name whichever loader
    part = getattr(dataset, split)
    options = dict(batch_size=batch_size, device=device, shuffle=shuffle, augment=augment, seed=seed,
                   drop_last=drop_last)
    if loader in ("auto", "tensor"):
        return TensorLoader(part, **options)
    from advfeat.data.dali import DaliLoader
    from advfeat.data.sources import ImageFolderReader

    if dataset.source.get("format") == ImageFolderReader.name:
        encoded = ImageFolderReader().encoded(Path(dataset.source["path"]))[split]
        return DaliLoader([np.frombuffer(encoded.files[i], np.uint8) for i in part.source_index],
                          part.labels, encoded=True, **options)
    hwc = np.ascontiguousarray(part.images.transpose(0, 2, 3, 1))
    return DaliLoader(list(hwc), part.labels, encoded=False, **options)
