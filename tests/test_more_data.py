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


def test_cifar100_pickle_with_code_is_refused(tmp_path):
    import os

    write_cifar100(tmp_path / "c100", classes=2)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "c100" / "cifar-100-python" / "meta").write_bytes(pickle.dumps({b"fine_label_names": Evil()}))
    with pytest.raises(UserError, match="refusing to load"):
        load_dataset(tmp_path / "c100")
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- one epoch on other datasets


@pytest.mark.parametrize("layout", ["cifar100", "svhn"])
def test_train_one_epoch_of_tiny(tmp_path, layout):
    from advfeat.checkpoint import load_model

    if layout == "cifar100":
        write_cifar100(tmp_path / "data", per_class=1)
        classes = 100
    else:
        write_svhn(tmp_path / "data", per_class=4)
        classes = 10
    code, out, err = run_cli("train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "model"),
                             "--arch", "tiny", "--epochs", "1", "--batch-size", "32", "--quiet")
    assert code == 0, err
    model, card = load_model(tmp_path / "model")
    assert card["num_classes"] == classes and model.head.out_features == classes
    assert card["data"]["format"] == {"cifar100": "cifar100-python", "svhn": "svhn-mat"}[layout]
    assert 0.0 <= card["metrics"]["test_accuracy"] <= 1.0 and np.isfinite(card["metrics"]["train_loss"])


# --------------------------------------------------------------------------- the authors' release


def write_release(root: Path, name: str, images: torch.Tensor, labels: torch.Tensor, legacy: bool) -> Path:
    """release_datasets/<name>/CIFAR_ims, CIFAR_lab: lists of batch tensors, as the 2019 files."""
    folder = root / "release_datasets" / name
    folder.mkdir(parents=True)
    options = {"_use_new_zipfile_serialization": False} if legacy else {}
    torch.save(list(images.split(7)), folder / "CIFAR_ims", **options)
    torch.save(list(labels.split(7)), folder / "CIFAR_lab", **options)
    return folder


@pytest.mark.parametrize("legacy", [True, False])
def test_released_datasets_by_name_in_either_serialization(tmp_path, legacy):
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(20, 3, 32, 32, generator=g), torch.randint(0, 10, (20,), generator=g)
    write_release(tmp_path, "ddet_CIFAR", images, labels, legacy)
    write_release(tmp_path, "drand_CIFAR", images[:5], labels[:5], legacy)
    if legacy:  # the file really is the pre-1.6 format: a raw pickle stream, not a zip archive
        assert not (tmp_path / "release_datasets" / "ddet_CIFAR" / "CIFAR_ims").read_bytes().startswith(b"PK")
    d = load_dataset(tmp_path, name="ddet_CIFAR", need_test=False)
    assert d.source["format"] == "authors-release" and d.test is None
    np.testing.assert_array_equal(d.train.images, images.numpy())
    np.testing.assert_array_equal(d.train.labels, labels.numpy())
    with pytest.raises(UserError, match="pick one with --name"):
        load_dataset(tmp_path, need_test=False)
    code, out, err = run_cli("inspect", str(tmp_path), "--name", "d_robust_CIFAR")
    assert code == 2 and "no dataset named 'd_robust_CIFAR'" in err and err.count("\n") == 1


def test_release_file_holding_code_is_refused(tmp_path):
    folder = write_release(tmp_path, "ddet_CIFAR", torch.rand(2, 3, 4, 4), torch.tensor([0, 1]), legacy=True)

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save([Evil()], folder / "CIFAR_ims", _use_new_zipfile_serialization=False)
    code, out, err = run_cli("inspect", str(tmp_path), "--name", "ddet_CIFAR")
    assert code == 2 and "cannot load" in err and err.count("\n") == 1
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- export


def by_label_stable(split):
    order = np.argsort(split.labels, kind="stable")
    return split.images[order], split.labels[order]


def test_export_round_trips_bit_for_bit(tmp_path):
    write_cifar100(tmp_path / "c100", per_class=2, classes=5)
    original = load_dataset(tmp_path / "c100")
    for fmt in ("npz", "imagefolder", "authors"):
        out = tmp_path / fmt
        code, _, err = run_cli("export", str(tmp_path / "c100"), "--format", fmt, "--out", str(out), "--quiet")
        assert code == 0, err
        again = load_dataset(out, need_test=False)
        assert again.classes == original.classes, fmt
        if fmt == "imagefolder":  # class-major, each class in its original order
            for split in ("train", "test"):
                for got, want in zip(by_label_stable(getattr(again, split)), by_label_stable(getattr(original, split))):
                    np.testing.assert_array_equal(got, want)
                    assert got.dtype == want.dtype
        else:
            splits = ("train", "test") if fmt == "npz" else ("train",)
            for split in splits:
                np.testing.assert_array_equal(getattr(again, split).images, getattr(original, split).images)
                np.testing.assert_array_equal(getattr(again, split).labels, getattr(original, split).labels)
                assert getattr(again, split).images.dtype == np.uint8
    # The robustness library's own way of reading CIFAR_ims / CIFAR_lab.
    ims = torch.cat(torch.load(tmp_path / "authors" / "CIFAR_ims", weights_only=True))
    lab = torch.cat(torch.load(tmp_path / "authors" / "CIFAR_lab", weights_only=True))
    assert torch.equal(ims, torch.from_numpy(original.train.images)) and lab.dtype == torch.int64


def test_float_dataset_exports_losslessly_and_refuses_png(tmp_path):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(12, 3, 8, 8, generator=g).half()
    write_release(tmp_path / "src", "d_robust_CIFAR", images, torch.arange(12) % 10, legacy=False)
    code, _, err = run_cli("export", str(tmp_path / "src"), "--name", "d_robust_CIFAR", "--format", "authors",
                           "--out", str(tmp_path / "out"), "--quiet")
    assert code == 0, err
    again = load_dataset(tmp_path / "out", need_test=False)
    assert again.train.images.dtype == np.float16
    np.testing.assert_array_equal(again.train.images.view(np.uint16), images.numpy().view(np.uint16))
    code, _, err = run_cli("export", str(tmp_path / "src"), "--name", "d_robust_CIFAR", "--format", "imagefolder",
                           "--out", str(tmp_path / "png"), "--test-data", str(tmp_path / "out"), "--quiet")
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "png").exists()


# --------------------------------------------------------------------------- inspect


def test_inspect_reports_balance_grid_and_model_agreement(tmp_path):
    from PIL import Image

    from advfeat.checkpoint import save_model
    from advfeat.models import create_model

    write_svhn(tmp_path / "svhn", per_class=3)
    model = create_model("tiny", 10).eval()
    save_model(tmp_path / "model", model, {"kind": "model", "arch": "tiny", "num_classes": 10,
                                            "feature_dim": model.feature_dim})
    code, out, err = run_cli("inspect", str(tmp_path / "svhn"), "--model", str(tmp_path / "model"),
                             "--out", str(tmp_path / "report"), "--device", "cpu", "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "inspect.json").read_text())
    d = load_dataset(tmp_path / "svhn")
    assert report["train"]["per_class"] == {str(c): 3 for c in range(10)}
    assert report["train"]["pixels"]["duplicates"] == 0 and report["train"]["pixels"]["non_finite"] == 0
    # Agreement against the model run here directly, image by image.
    with torch.no_grad():
        preds = torch.stack([model(torch.from_numpy(x[None]).float() / 255).argmax(1)[0] for x in d.train.images])
    assert report["model"]["agreement"] == pytest.approx(float((preds.numpy() == d.train.labels).mean()))
    assert f"{report['model']['agreement']:.4f}" in out
    code, _, err = run_cli("inspect", str(tmp_path / "svhn"), "--out", str(tmp_path / "report"), "--quiet")
    assert code == 2 and "--force" in err, "a second inspect must not overwrite the first's report"
    grid = np.asarray(Image.open(tmp_path / "report" / "grid.png"))
    first_zero = d.train.images[np.flatnonzero(d.train.labels == 0)[0]]  # row 0, column 0, zoom 1 at 32 px
    np.testing.assert_array_equal(grid[2:34, 2:34], first_zero.transpose(1, 2, 0))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("problem", ["one-class", "empty-class", "mixed-sizes"])
@pytest.mark.parametrize("command", ["inspect", "export", "train"])
def test_bad_folder_is_one_line_exit_2_nothing_written(tmp_path, problem, command):
    from PIL import Image

    data = tmp_path / "data"
    write_png_folders(data, ["a", "b", "c"], per_class=1, size=8)
    if problem == "one-class":
        for split in ("train", "test"):
            for name in ("b", "c"):
                shutil.rmtree(data / split / name)
        expected = "at least 2 class folders"
    elif problem == "empty-class":
        for f in (data / "train" / "b").iterdir():
            f.unlink()
        expected = "without images: train/b"
    else:
        Image.new("RGB", (9, 8)).save(data / "train" / "c" / "odd.png")
        expected = "differ in size"
    out = tmp_path / "out"
    argv = {"inspect": ["inspect", str(data), "--out", str(out)],
            "export": ["export", str(data), "--format", "npz", "--out", str(out)],
            "train": ["train", "--data", str(data), "--out", str(out), "--arch", "tiny", "--epochs", "1"]}[command]
    code, stdout, err = run_cli(*argv, "--quiet")
    assert code == 2 and expected in err and err.count("\n") == 1, err
    assert not out.exists()


def test_restricted_imagenet_of_mixed_sizes_is_resized_as_the_library_tests(tmp_path):
    from PIL import Image
    from torchvision import transforms

    write_imagenet(tmp_path / "imagenet", {lo: 1 for lo, _ in RESTRICTED_IMAGENET_RANGES}, size=8)
    odd = tmp_path / "imagenet" / "train" / "n00000030" / "wide.png"
    pixels = np.random.default_rng(3).integers(0, 256, (40, 300, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(odd)
    d = load_dataset(tmp_path / "imagenet")
    assert d.train.images.shape[1:] == (3, 224, 224) and "resized" in d.source
    # The library's TEST_TRANSFORMS_IMAGENET, run by torchvision on the same file.
    library = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    want = np.asarray(library(Image.open(odd).convert("RGB"))).transpose(2, 0, 1)
    frogs = d.train.images[d.train.labels == RESTRICTED_IMAGENET_CLASSES.index("frog")]
    assert any(np.array_equal(image, want) for image in frogs)


def test_train_on_a_released_dataset_by_name(tmp_path):
    from conftest import random_cifar, write_python_release

    train, test = random_cifar(1, 1, seed=4)
    write_python_release(tmp_path / "cifar10", train, test)
    g = torch.Generator().manual_seed(2)
    write_release(tmp_path / "archive", "ddet_CIFAR", torch.rand(20, 3, 32, 32, generator=g), torch.arange(20) % 10,
                  legacy=True)
    code, out, err = run_cli("train", "--data", str(tmp_path / "archive"), "--name", "ddet_CIFAR", "--test-data",
                             str(tmp_path / "cifar10"), "--out", str(tmp_path / "model"), "--arch", "tiny",
                             "--epochs", "1", "--quiet")
    assert code == 0, err
    from advfeat.checkpoint import load_model

    _, card = load_model(tmp_path / "model")
    assert card["data"]["path"].endswith("ddet_CIFAR") and card["data"]["test"]["format"] == "cifar-python"


def test_classes_txt_orders_the_labels_and_its_change_is_seen(tmp_path):
    import os

    written = write_png_folders(tmp_path / "f", ["b", "a", "c"], per_class=1, size=8)
    (tmp_path / "f" / "classes.txt").write_text("c\nb\na\n")
    d = load_dataset(tmp_path / "f")
    assert d.classes == ("c", "b", "a")
    np.testing.assert_array_equal(d.train.images[d.train.labels == 0][0], written["train"][0][2])  # class "c"
    (tmp_path / "f" / "classes.txt").write_text("a\nb\nc\n")
    os.utime(tmp_path / "f" / "classes.txt", ns=(1, 1))
    assert load_dataset(tmp_path / "f").classes == ("a", "b", "c"), "a changed classes.txt is not a cache hit"
    (tmp_path / "f" / "classes.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match="does not list the class folders"):
        load_dataset(tmp_path / "f")


def test_cifar100_archive_reads_like_the_folder(tmp_path):
    import tarfile

    written = write_cifar100(tmp_path / "src", classes=3)
    (tmp_path / "arch").mkdir()
    with tarfile.open(tmp_path / "arch" / "cifar-100-python.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-100-python", arcname="cifar-100-python")
    d = load_dataset(tmp_path / "arch")
    assert d.classes == tuple(written["classes"])
    assert_same_examples(d.train, *written["train"])


@pytest.mark.parametrize("problem", ["svhn-garbage", "svhn-shape", "npz-object", "npz-missing"])
def test_damaged_files_are_one_line(tmp_path, problem):
    from scipy.io import savemat

    data = tmp_path / "data"
    if problem.startswith("svhn"):
        write_svhn(data, per_class=1)
        if problem == "svhn-garbage":
            (data / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, but not really")
        else:
            savemat(data / "test_32x32.mat", {"X": np.zeros((32, 32, 4, 2), np.uint8), "y": np.ones((3, 1))})
        expected = "SVHN"
    else:
        data.mkdir()
        arrays = {k: np.zeros((2, 3, 4, 4), np.uint8) for k in ("train_images", "test_images")}
        arrays |= {"train_labels": np.zeros(2, np.int64), "test_labels": np.zeros(2, np.int64)}
        if problem == "npz-object":
            arrays["classes"] = np.array([{"not": "a name"}, "b"], dtype=object)
        np.savez(data / "dataset.npz", **arrays)
        expected = "dataset.npz"
    code, out, err = run_cli("inspect", str(data), "--out", str(tmp_path / "out"))
    assert code == 2 and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_pixel_summary_counts_duplicates_and_non_finite_values():
    from advfeat.data import Split
    from advfeat.data.dataset_report import pixel_summary

    images = np.random.default_rng(5).random((6, 3, 4, 4)).astype(np.float32)
    images[4] = images[1]
    images[5] = images[1]  # two copies of image 1
    images[2, 0, 0, 0] = np.nan
    images[3, 1, 2, 2] = np.inf
    summary = pixel_summary(Split(images, np.zeros(6, np.int64)))
    assert summary["duplicates"] == 2 and summary["non_finite"] == 2
    finite = np.where(np.isfinite(images), images, np.nan)
    assert summary["max"] == pytest.approx(float(np.nanmax(finite)))
    assert summary["mean_per_channel"] == pytest.approx(np.nanmean(finite, axis=(0, 2, 3)).tolist(), abs=1e-4)


def test_d_det_synthesized_from_cifar100_keeps_its_100_classes(tmp_path):
    from advfeat.checkpoint import load_model

    write_cifar100(tmp_path / "c100", per_class=1)
    for argv in (["train", "--data", str(tmp_path / "c100"), "--out", str(tmp_path / "model"), "--arch", "tiny",
                  "--epochs", "1", "--quiet"],
                 ["synth", "--kind", "det", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "c100"),
                  "--out", str(tmp_path / "det"), "--steps", "2", "--device", "cpu", "--quiet"],
                 ["inspect", str(tmp_path / "det"), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "i"),
                  "--device", "cpu", "--quiet"],
                 ["train", "--data", str(tmp_path / "det"), "--out", str(tmp_path / "on-det"), "--arch", "tiny",
                  "--epochs", "1", "--quiet"]):
        code, out, err = run_cli(*argv)
        assert code == 0, (argv[0], err)
    report = json.loads((tmp_path / "i" / "inspect.json").read_text())
    card = json.loads((tmp_path / "det" / "dataset.json").read_text())
    assert report["classes"] == [f"class_{c:03d}" for c in range(100)]
    assert report["model"]["meaning"].startswith("target success")
    # The synthesis measured its stored images' target success itself; inspect must agree.
    assert report["model"]["agreement"] == pytest.approx(card["stats"]["stored_success"], abs=1e-6)
    assert load_model(tmp_path / "on-det")[1]["num_classes"] == 100
