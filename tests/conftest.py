"""Shared fixtures: a private cache, small CIFAR-format fixtures, the real JPEG data."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch


from advfeat.data import CIFAR10_CLASSES

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Every test run decodes into its own cache, never the user's; and runs on the CPU, where
    its tolerances were set, even on a GPU machine (tests marked `cuda` choose CUDA themselves)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ADVFEAT_CACHE", str(tmp_path_factory.mktemp("advfeat-cache")))
    mp.delenv("ADVFEAT_DATA", raising=False)
    mp.setenv("ADVFEAT_DEVICE", "cpu")
    yield
    mp.undo()


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip on a machine without a working CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The JPEG CIFAR-10 shipped beside the checkout (read-only)."""
    if not (SHARED_DATA / "cifar10-jpeg-train.tar.gz").is_file():
        pytest.skip(f"{SHARED_DATA} is not present")
    return SHARED_DATA


def random_cifar(n_train_per_class: int = 3, n_test_per_class: int = 2, seed: int = 0, size: int = 32):
    """Random images per class: (train images, labels), (test images, labels), in class-major order."""
    rng = np.random.default_rng(seed)
    out = []
    for per_class in (n_train_per_class, n_test_per_class):
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 256, size=(len(labels), 3, size, size), dtype=np.uint8)
        out.append((images, labels))
    return out


def write_python_release(folder: Path, train, test, order_seed: int = 1) -> Path:
    """The pickled release (cifar-10-batches-py/), examples shuffled across five batches."""
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    perm = np.random.default_rng(order_seed).permutation(len(train[1]))
    for i, part in enumerate(np.array_split(perm, 5), start=1):
        batch = {b"data": train[0][part].reshape(len(part), -1), b"labels": train[1][part].tolist()}
        (batches / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (batches / "test_batch").write_bytes(pickle.dumps({b"data": test[0].reshape(len(test[1]), -1),
                                                       b"labels": test[1].tolist()}))
    return folder


def write_image_folders(folder: Path, train, test, ext: str = "png", class_names=CIFAR10_CLASSES) -> Path:
    from PIL import Image

    for split, (images, labels) in (("train", train), ("test", test)):
        for i, (image, label) in enumerate(zip(images, labels)):
            path = folder / split / class_names[label] / f"{i:04d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(path)
    return folder


def tar_folder(source: Path, members: list[str], archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        for m in members:
            tf.add(source / m, arcname=m)
    return archive


@pytest.fixture(scope="session")
def fixture_arrays():
    return random_cifar()


@pytest.fixture(scope="session")
def formats(tmp_path_factory, fixture_arrays) -> dict[str, Path]:
    """The same images in every on-disk form advfeat reads."""
    train, test = fixture_arrays
    root = tmp_path_factory.mktemp("formats")
    paths = {"python-folder": write_python_release(root / "py", train, test)}
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(root / "py" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (root / "pyarchive").mkdir()
    (root / "cifar-10-python.tar.gz").rename(root / "pyarchive" / "cifar-10-python.tar.gz")
    paths["python-archive-folder"] = root / "pyarchive"
    paths["python-archive-file"] = root / "pyarchive" / "cifar-10-python.tar.gz"
    paths["png-folders"] = write_image_folders(root / "png", train, test)
    (root / "archives").mkdir()
    tar_folder(root / "png", ["train"], root / "archives" / "train.tar.gz")
    tar_folder(root / "png", ["test"], root / "archives" / "test.tar.gz")
    paths["png-archives"] = root / "archives"
    paths["single-archive"] = tar_folder(root / "png", ["train", "test"], root / "all.tar.gz")
    return paths


def run_cli(*argv: str) -> tuple[int, str, str]:
    """advfeat's main() in-process: (exit code, stdout, stderr)."""
    import contextlib

    from advfeat.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained_tiny(shared_data, tmp_path_factory):
    """A tiny net trained for two epochs on 4,000 real images (training.train_tiny, as the doctor
    and the CUDA tests train it), and 300 test images, for the attack tests (built once per test
    module)."""
    from advfeat.data import load_dataset
    from advfeat.evaluation import split_tensors
    from advfeat.training import train_tiny

    data = load_dataset(shared_data, subset=4000, test_subset=300, seed=1)
    model, _ = train_tiny(data, tmp_path_factory.mktemp("tiny"), device=torch.device("cpu"), epochs=2, seed=1)
    x, y = split_tensors(data.test, torch.device("cpu"))
    return model, x, y


class LinearBinary(torch.nn.Module):
    """logits = [0, w.x + b] on flattened images: the optimal L2 attack is known."""

    num_classes = 2

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = torch.nn.Parameter(w.flatten().clone())
        self.b = torch.nn.Parameter(torch.tensor(float(b)))

    def forward(self, x, return_features=False):
        z = x.flatten(1) @ self.w + self.b
        logits = torch.stack([torch.zeros_like(z), z], 1)
        return (logits, x.flatten(1)) if return_features else logits


class Quantized(torch.nn.Module):
    """Rounds its input to 4 levels: zero gradients everywhere, a textbook masked model."""

    num_classes = 10

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, return_features=False):
        return self.inner(torch.round(x * 3) / 3, return_features=return_features)


