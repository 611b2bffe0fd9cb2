"""Training sets that replace CIFAR-10's: advfeat's own synthesized datasets, and the
authors' released ones. Both hold a train split only; the test split is the real one.

advfeat dataset folder (written by `advfeat synth`):
    dataset.json              the card: kind, settings, source data digest, model card, stats
    run.json                  the settings of the run (lets a restarted run resume)
    shard-00000.safetensors   images (N,3,32,32) float16 or uint8, labels, orig_labels,
    shard-00001.safetensors   source_index, and per-sample statistics; written atomically
The authors' release (andrewilyas.com/datasets.tar): a folder with `CIFAR_ims` and
`CIFAR_lab`, torch-saved tensors (or lists of batch tensors), images float in [0, 1]. The
archive extracts to release_datasets/ holding d_robust_CIFAR, d_non_robust_CIFAR,
drand_CIFAR and ddet_CIFAR; `load_dataset(root, name="ddet_CIFAR")` picks one from there.
The files of 2019 use torch's legacy (non-zip) serialization; both forms are read with
torch.load(weights_only=True): tensors and plain containers only, never code.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from advfeat import __version__
from advfeat.data.arrays import Dataset, Split, content_digest
from advfeat.errors import UserError
from advfeat.io import atomic_path, read_json, write_json

CARD, RUN = "dataset.json", "run.json"
SHARD_PATTERN = "shard-{:05d}.safetensors"
STORAGE = {"float16": np.float16, "float32": np.float32, "uint8": np.uint8}
DATASET_FORMAT = 2  # 2: shards hold orig_labels; cards record fake_relu, targets, start and norm


def write_dataset_card(folder: Path, *, kind: str, train: Split, shards: int, storage: str, settings: dict,
                       source: dict, stats: dict, **extra) -> dict:
    """Write an advfeat dataset's card (last: a folder with a card is complete); `extra` fields
    (the model, workers, device) go between the source and the statistics."""
    card = {"kind": kind, "format": "advfeat-dataset", "format_version": DATASET_FORMAT,
            "advfeat_version": __version__, "shards": shards, "n": len(train), "storage": storage,
            "settings": settings, "source": {k: source.get(k) for k in ("format", "path", "digest", "subset")},
            **extra, "stats": stats, "digest": content_digest(train),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_json(Path(folder) / CARD, card)
    return card


def store_images(x: np.ndarray, storage: str) -> np.ndarray:
    """[0, 1] floats -> the storage dtype (uint8 rounds to the nearest of 256 levels)."""
    if storage == "uint8":
        return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    return x.astype(STORAGE[storage])


def write_shard(folder: Path, shard: int, arrays: dict[str, np.ndarray]) -> Path:
    path = folder / SHARD_PATTERN.format(shard)
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    return path


def read_shard(path: Path) -> dict[str, np.ndarray] | None:
    """A shard's arrays, or None if the file is missing or damaged (then it is redone)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return None


def read_images_at(folder: Path, positions: np.ndarray) -> dict[str, np.ndarray] | None:
    """The per-image arrays (images, labels, position, ...) of an advfeat dataset folder at the
    given positions, stacked in their order; only the shards holding them are read (a shard's
    size is that of shard 0). None when a shard needed is missing or damaged."""
    first = read_shard(folder / SHARD_PATTERN.format(0))
    if first is None:
        return None
    shard_size = len(first["labels"])
    shards = {s: read_shard(folder / SHARD_PATTERN.format(s)) for s in set(positions // shard_size)}
    if any(arrays is None for arrays in shards.values()):
        return None
    # Per-image arrays only (a shard also holds its timing, one value).
    rows = [{k: v[p % shard_size] for k, v in shards[p // shard_size].items() if len(v) > 1} for p in positions]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def resolve_test_source(card_source: dict) -> Path:
    """Where the real test split comes from: the source data recorded in the card if it is
    still there, else $ADVFEAT_DATA."""
    recorded = Path(card_source.get("path", ""))
    if card_source.get("path") and recorded.exists():
        return recorded
    if os.environ.get("ADVFEAT_DATA"):
        return Path(os.environ["ADVFEAT_DATA"])
    raise UserError(f"the real test split comes from {recorded or 'the source data'}, which is not here; "
                    f"pass --test-data PATH or set ADVFEAT_DATA")


class AdvfeatDatasetReader:
    """Folders written by `advfeat synth`."""

    name = "advfeat-dataset"

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / CARD).is_file()

    def fingerprint(self, path: Path) -> None:
        return None  # already decoded arrays: nothing to cache

    def read(self, path: Path) -> Dataset:
        try:
            card = read_json(path / CARD)
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"{path / CARD} is not readable ({err})") from None
        parts = []
        for shard in range(card["shards"]):
            arrays = read_shard(path / SHARD_PATTERN.format(shard))
            if arrays is None:
                raise UserError(f"{path}: shard {shard} is missing or damaged; rerun the synth command to finish it")
            parts.append(arrays)
        images = np.concatenate([p["images"] for p in parts])
        train = Split(images, np.concatenate([p["labels"] for p in parts]),
                      np.concatenate([p["source_index"] for p in parts]))
        source = {"format": self.name, "path": str(path.resolve()), "kind": card["kind"],
                  "digest": card["digest"], "test_from": card["source"]}
        # The labels are in the synthesizing model's label space: its training data's class names.
        classes = ((card.get("model") or {}).get("card") or {}).get("data", {}).get("classes")
        if classes:
            source["classes"] = classes
        return Dataset(train, None, source)


def _load_tensor_file(path: Path) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
    except Exception as err:
        raise UserError(f"cannot load {path} as a tensor file ({str(err).splitlines()[0]})") from None
    if isinstance(obj, (list, tuple)):
        obj = torch.cat(list(obj))
    if not isinstance(obj, torch.Tensor):
        raise UserError(f"{path} holds {type(obj).__name__}, not a tensor")
    return obj


RELEASED_DATASETS = ("d_robust_CIFAR", "d_non_robust_CIFAR", "drand_CIFAR", "ddet_CIFAR")
RELEASE_FOLDER = "release_datasets"


def released_dataset(root: Path, name: str | None) -> Path:
    """The folder of released dataset `name` under root (or root/release_datasets); root itself
    when name is None, unless root holds several released datasets (then: pick one)."""
    bases = [b for b in (root, root / RELEASE_FOLDER) if b.is_dir()]
    present = [n for n in RELEASED_DATASETS if any((b / n).is_dir() for b in bases)]
    if name is None:
        if present and not AuthorsReleaseReader().detect(root):
            raise UserError(f"{root} holds the authors' released datasets {', '.join(present)}; "
                            f"pick one with --name")
        return root
    for base in bases:
        if (base / name).is_dir():
            return base / name
    known = ", ".join(present or RELEASED_DATASETS)
    raise UserError(f"{root} holds no dataset named {name!r} (the release's names: {known})")


class AuthorsReleaseReader:
    """The authors' released D_R / D_NR / D_rand / D_det: CIFAR_ims + CIFAR_lab (and, when
    advfeat export wrote them, classes.txt: the class names in label order)."""

    name = "authors-release"

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / "CIFAR_ims").is_file() and (path / "CIFAR_lab").is_file()

    def fingerprint(self, path: Path) -> None:
        return None

    def read(self, path: Path) -> Dataset:
        images, labels = _load_tensor_file(path / "CIFAR_ims"), _load_tensor_file(path / "CIFAR_lab")
        if images.dim() != 4 or images.shape[1] != 3 or len(images) != len(labels):
            raise UserError(f"{path}: expected CIFAR_ims (N,3,H,W) and N labels, got {tuple(images.shape)} and "
                            f"{tuple(labels.shape)}")
        if images.is_floating_point() and (images.min() < 0 or images.max() > 1):
            raise UserError(f"{path}: float images must lie in [0, 1]")
        train = Split(images.numpy(), labels.long().numpy())
        return Dataset(train, None, self._source(path, train))

    def _source(self, path: Path, train: Split) -> dict:
        """The source record; class names from classes.txt when advfeat export wrote one beside
        the tensors (the release has none: CIFAR-10's)."""
        from advfeat.data.arrays import CIFAR10_CLASSES
        from advfeat.data.sources import CLASS_LIST

        source = {"format": self.name, "path": str(path.resolve())}
        if (path / CLASS_LIST).is_file():
            lines = (path / CLASS_LIST).read_text(encoding="utf-8").splitlines()
            source["classes"] = [c.strip() for c in lines if c.strip()]
        classes = len(source.get("classes", CIFAR10_CLASSES))
        if len(train) and (train.labels.min() < 0 or train.labels.max() >= classes):
            raise UserError(f"{path}: CIFAR_lab holds labels outside 0..{classes - 1}")
        return source


def attach_test_split(dataset: Dataset, test_data: str | Path | None, load) -> Dataset:
    """Train-only datasets take the real test split: from test_data, else the recorded source."""
    if dataset.test is not None:
        return dataset
    if test_data is not None:
        where = Path(test_data)
    elif "test_from" in dataset.source:
        where = resolve_test_source(dataset.source["test_from"])
    elif os.environ.get("ADVFEAT_DATA"):
        where = Path(os.environ["ADVFEAT_DATA"])
    else:
        raise UserError(f"{dataset.source['path']} has no test split; pass --test-data PATH (real CIFAR-10)")
    real = load(where)
    if "classes" not in dataset.source:
        dataset.classes = real.classes
    elif len(dataset.classes) != len(real.classes):
        raise UserError(f"{dataset.source['path']} has {len(dataset.classes)} classes but its test split "
                        f"({where}) {len(real.classes)}")
    dataset.test = real.test
    dataset.source["test"] = {k: real.source.get(k) for k in ("format", "path", "digest")}
    return dataset


def label_shift(path: Path | str, num_classes: int = 10) -> tuple[int | None, str]:
    """The shift k with label = (orig_label + k) mod C for every image of an advfeat dataset
    (k = 1 for D_det), and a note. (None, why) when the labels are no such shift (D_rand) or
    when the dataset predates orig_labels (format 1): Appendix D.6 is then skipped."""
    path = Path(path)
    try:
        card = read_json(path / CARD)
    except (OSError, json.JSONDecodeError):
        return None, f"{path} is not an advfeat dataset"
    first = read_shard(path / SHARD_PATTERN.format(0))
    if first is None or "orig_labels" not in first:
        return None, f"{path.name}: its shards hold no orig_labels (written before advfeat format 2)"
    shifts = set()
    for shard in range(card["shards"]):
        arrays = read_shard(path / SHARD_PATTERN.format(shard))
        if arrays is None:
            return None, f"{path.name}: shard {shard} is missing or damaged"
        shifts |= set(np.unique((arrays["labels"] - arrays["orig_labels"]) % num_classes).tolist())
    if len(shifts) != 1:
        return None, f"{path.name}: labels are not a fixed shift of the original labels"
    return int(shifts.pop()), "labels are (orig_labels + k) mod C"
