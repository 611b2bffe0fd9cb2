"""Data sources: every format reads the same pixels with canonical labels; the cache; bad input."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest

from advfeat.errors import UserError
from advfeat.data import CIFAR10_CLASSES, load_dataset
from advfeat.data import cache as cache_module
from advfeat.data.sources import find_reader

from conftest import random_cifar, write_image_folders, write_python_release


def label_then_pixels_order(images: np.ndarray, labels: np.ndarray) -> list[int]:
    return sorted(range(len(labels)), key=lambda i: (labels[i], images[i].tobytes()))


def test_every_format_reads_the_same_images(formats, fixture_arrays):
    (train_x, train_y), (test_x, test_y) = fixture_arrays
    for name, path in formats.items():
        d = load_dataset(path)
        # Image folders come class-major; the python release in its shuffled batch order.
        # Sorting by (label, pixels) lines both up with the fixture.
        for split, x, y in ((d.train, train_x, train_y), (d.test, test_x, test_y)):
            order, ref = label_then_pixels_order(split.images, split.labels), label_then_pixels_order(x, y)
            np.testing.assert_array_equal(split.images[order], x[ref], err_msg=name)
            np.testing.assert_array_equal(split.labels[order], y[ref], err_msg=name)
        assert d.train.images.dtype == np.uint8 and d.train.images.shape[1:] == (3, 32, 32)


def test_detects_format_by_itself(formats):
    kinds = {name: find_reader(path).name for name, path in formats.items()}
    assert {kinds[k] for k in kinds if k.startswith("python")} == {"cifar-python"}
    assert {kinds[k] for k in ("png-folders", "png-archives", "single-archive")} == {"image-folders"}


def test_labels_follow_canonical_order_not_folder_order(tmp_path):
    # Folder names in capitals and listed in reverse must still map airplane -> 0 ... truck -> 9.
    train, test = random_cifar(1, 1, seed=3)
    names = tuple(c.upper() for c in CIFAR10_CLASSES)
    d = load_dataset(write_image_folders(tmp_path, train, test, class_names=names))
    assert d.classes == CIFAR10_CLASSES
    for label in range(10):
        # The only train image of class `label` was written into that class's folder.
        np.testing.assert_array_equal(d.train.images[d.train.labels == label][0], train[0][train[1] == label][0])


def test_shared_jpeg_data_reads_with_canonical_labels(shared_data):
    d = load_dataset(shared_data, subset=200, test_subset=100)
    assert np.bincount(d.train.labels).tolist() == [20] * 10
    assert np.bincount(d.test.labels).tolist() == [10] * 10
    assert d.source["format"] == "image-folders" and len(d.source["digest"]) == 64
    full = load_dataset(shared_data)
    assert (len(full.train), len(full.test)) == (50000, 10000)
    assert np.bincount(full.train.labels).tolist() == [5000] * 10


def test_cache_is_reused_then_rebuilt_when_source_changes(tmp_path, monkeypatch):
    train, test = random_cifar(2, 1, seed=5)
    src = write_python_release(tmp_path / "src", train, test)
    calls = []
    reader = find_reader(src)
    original = type(reader).read
    monkeypatch.setattr(type(reader), "read", lambda self, p: calls.append(p) or original(self, p))
    first = load_dataset(src)
    second = load_dataset(src)
    assert len(calls) == 1, "second load must come from the cache"
    np.testing.assert_array_equal(first.train.images, second.train.images)
    # Change one pixel of one batch: a new decode, and the stale entry is gone.
    batch_file = src / "cifar-10-batches-py" / "data_batch_1"
    batch = pickle.loads(batch_file.read_bytes())
    batch[b"data"][0, 0] ^= 0xFF
    batch_file.write_bytes(pickle.dumps(batch))
    os.utime(batch_file, ns=(1, 1))  # a different mtime even on coarse clocks
    third = load_dataset(src)
    assert len(calls) == 2
    assert third.source["digest"] != first.source["digest"]
    prefix = cache_module._entry_name(src, reader.name, "")[0]
    assert len(list((cache_module.cache_root() / "decoded").glob(f"{prefix}*"))) == 1, "stale entry removed"


def test_damaged_cache_entry_is_a_miss(tmp_path):
    train, test = random_cifar(1, 1, seed=6)
    src = write_python_release(tmp_path / "src", train, test)
    load_dataset(src)
    for entry in (cache_module.cache_root() / "decoded").glob("*.safetensors"):
        entry.write_bytes(b"garbage")
    np.testing.assert_array_equal(np.sort(load_dataset(src).train.labels), np.sort(train[1]))


def test_stratified_subset_is_seeded_and_balanced(formats):
    d1 = load_dataset(formats["python-folder"], subset=10, seed=1)
    d2 = load_dataset(formats["python-folder"], subset=10, seed=1)
    d3 = load_dataset(formats["python-folder"], subset=10, seed=2)
    assert np.bincount(d1.train.labels).tolist() == [1] * 10
    np.testing.assert_array_equal(d1.train.source_index, d2.train.source_index)
    assert not np.array_equal(d1.train.source_index, d3.train.source_index)


@pytest.mark.parametrize("problem", ["missing", "empty", "wrong-classes", "extra-class", "corrupt-image",
                                     "corrupt-batch", "subset-zero"])
def test_bad_data_is_one_clear_error(tmp_path, problem):
    train, test = random_cifar(1, 1, seed=7)
    path = tmp_path / "data"
    if problem == "missing":
        expected = "does not exist"
    elif problem == "empty":
        path.mkdir()
        expected = "not a CIFAR-10 dataset"
    elif problem in ("wrong-classes", "extra-class"):
        write_image_folders(path, train, test)
        if problem == "wrong-classes":
            shutil.rmtree(path / "train" / "cat")
            expected = "missing cat"
        else:
            shutil.copytree(path / "train" / "dog", path / "train" / "wolf")
            expected = "unexpected wolf"
    elif problem == "corrupt-image":
        write_image_folders(path, train, test)
        next((path / "test" / "frog").glob("*.png")).write_bytes(b"not a png")
        expected = "cannot decode image"
    elif problem == "corrupt-batch":
        write_python_release(path, train, test)
        (path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04garbage")
        expected = "not a readable CIFAR-10 python batch"
    else:
        write_python_release(path, train, test)
        expected = "subset must be at least 1"
    with pytest.raises(UserError, match=expected) as info:
        load_dataset(path, subset=0 if problem == "subset-zero" else None)
    assert "\n" not in str(info.value)


def test_pickle_with_code_is_refused(tmp_path):
    train, test = random_cifar(1, 1, seed=8)
    path = write_python_release(tmp_path / "data", train, test)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(UserError, match="refusing to load"):
        load_dataset(path)


def test_offline_without_data_says_so_in_one_line(monkeypatch, tmp_path):
    import torchvision.datasets.utils as tv_utils

    monkeypatch.setenv("ADVFEAT_CACHE", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", no_network)
    with pytest.raises(UserError, match="offline") as info:
        load_dataset(None)
    assert "\n" not in str(info.value)


def test_advfeat_data_environment_variable(monkeypatch, formats):
    monkeypatch.setenv("ADVFEAT_DATA", str(formats["png-folders"]))
    assert load_dataset(None).source["format"] == "image-folders"
