"""Decode once: a decoded dataset is cached as one safetensors file of uint8 arrays.

The cache key is the reader's fingerprint of the source (file sizes and mtimes), so a
changed source is decoded again and the stale entry for that path is removed. The second
run of any command loads 184 MB of CIFAR-10 in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from advfeat.io import atomic_path
from advfeat.data.arrays import Dataset, Split, content_digest

CACHE_VERSION = 1


def cache_root() -> Path:
    """$ADVFEAT_CACHE, else $XDG_CACHE_HOME/advfeat, else ~/.cache/advfeat."""
    if os.environ.get("ADVFEAT_CACHE"):
        return Path(os.environ["ADVFEAT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "advfeat"


def _entry_name(source: Path, reader_name: str, fingerprint: str) -> tuple[str, str]:
    """(prefix for this source path, full file name for this version of it)."""
    where = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    key = hashlib.sha256(f"{CACHE_VERSION}:{reader_name}:{fingerprint}".encode()).hexdigest()[:16]
    return f"{reader_name}-{where}-", f"{reader_name}-{where}-{key}.safetensors"


def load_cached(source: Path, reader, root: Path | None = None) -> tuple[Dataset, bool]:
    """Return (dataset, was_cached), decoding and caching it on a miss."""
    folder = (root or cache_root()) / "decoded"
    prefix, name = _entry_name(source, reader.name, reader.fingerprint(source))
    entry = folder / name
    if entry.is_file():
        try:
            return _read_entry(entry), True
        except (SafetensorError, OSError, KeyError, ValueError):
            entry.unlink(missing_ok=True)  # a damaged entry is only a cache miss
    dataset = reader.read(source)
    dataset.source["digest"] = content_digest(dataset.train, dataset.test)
    _write_entry(entry, dataset)
    for stale in folder.glob(f"{prefix}*.safetensors"):
        if stale != entry:
            stale.unlink(missing_ok=True)
    return dataset, False


def _write_entry(entry: Path, dataset: Dataset) -> None:
    tensors = {
        "train_images": dataset.train.images, "train_labels": dataset.train.labels,
        "test_images": dataset.test.images, "test_labels": dataset.test.labels,
    }
    with atomic_path(entry) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
                  metadata={"source": json.dumps(dataset.source)})


def _read_entry(entry: Path) -> Dataset:
    from safetensors import safe_open

    with safe_open(str(entry), framework="numpy") as f:
        source = json.loads(f.metadata()["source"])
    t = load_file(str(entry))
    return Dataset(Split(t["train_images"], t["train_labels"]), Split(t["test_images"], t["test_labels"]), source)
