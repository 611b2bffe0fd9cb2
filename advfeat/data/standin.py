"""A stand-in for CIFAR-10 made on the spot: class-tinted noise as JPEG image folders.

    write_synthetic_jpegs(folder)   train/<class>/*.jpg and test/<class>/*.jpg, 32x32

`advfeat doctor` uses it when it is given no --data: every reader and loader takes the folders
(DALI included), and a tiny net learns them in one epoch, so the checks that train and attack
run without the real data. Accuracies on it say nothing about CIFAR-10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advfeat.data.arrays import CIFAR10_CLASSES


def write_synthetic_jpegs(folder: Path, per_class_train: int = 120, per_class_test: int = 30, seed: int = 0) -> Path:
    """Write per_class_train and per_class_test JPEGs (quality 90) of each CIFAR-10 class under
    `folder`: one random colour per class plus uniform noise in [-40, 40] per pixel, from `seed`.
    Returns `folder`; a folder already finished (its `done` file) is kept as it is."""
    from PIL import Image

    if (folder / "done").is_file():
        return folder
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(len(CIFAR10_CLASSES), 3))
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        for c, name in enumerate(CIFAR10_CLASSES):
            target = folder / split / name
            target.mkdir(parents=True, exist_ok=True)
            noise = rng.integers(-40, 41, size=(per_class, 32, 32, 3))
            images = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)
            for i, image in enumerate(images):
                Image.fromarray(image).save(target / f"{i:04d}.jpg", quality=90)
    (folder / "done").write_text("ok\n")
    return folder
