"""Loaders: device-side augmentation, seeded determinism, and DALI agreeing with the tensor loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advfeat.data import Split, load_dataset, make_loader
from advfeat.data.dali import dali_available
from advfeat.data.tensor_loader import TensorLoader, random_crop, random_flip


def crop_by_loop(image: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    """Independent crop: paste into a zero canvas, then slice."""
    c, h, w = image.shape
    canvas = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=image.dtype)
    canvas[:, pad:pad + h, pad:pad + w] = image
    return canvas[:, dy:dy + h, dx:dx + w]


def test_random_crop_matches_loop_and_stays_in_bounds():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 9, (16, 2), generator=g)
    offsets[0] = torch.tensor([4, 4])  # the identity crop
    offsets[1] = torch.tensor([0, 8])  # a corner: 4 rows zero at the top, 4 columns at the right
    out = random_crop(images, offsets, pad=4)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(16):
        torch.testing.assert_close(out[i], crop_by_loop(images[i], *offsets[i].tolist(), pad=4))
    torch.testing.assert_close(out[0], images[0])
    assert (out[1, :, :4, :] == 0).all() and (out[1, :, :, -4:] == 0).all() and (out[1, :, 4:, :-4] > 0).all()


def test_random_flip_mirrors_only_flagged_images():
    images = torch.arange(2 * 1 * 2 * 3).reshape(2, 1, 2, 3)
    out = random_flip(images, torch.tensor([True, False]))
    torch.testing.assert_close(out[0], images[0].flip(-1))
    torch.testing.assert_close(out[1], images[1])


def small_split(n: int = 50) -> Split:
    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), rng.integers(0, 10, n))


def epoch_batches(loader: TensorLoader, epoch: int):
    loader.set_epoch(epoch)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_tensor_loader_is_seeded_and_visits_every_example_once():
    split = small_split()
    make = lambda seed: TensorLoader(split, batch_size=16, shuffle=True, augment=True, seed=seed)  # noqa: E731
    x1, y1 = epoch_batches(make(0), 0)
    x2, y2 = epoch_batches(make(0), 0)
    x3, _ = epoch_batches(make(1), 0)
    x4, _ = epoch_batches(make(0), 1)
    torch.testing.assert_close(x1, x2)
    torch.testing.assert_close(y1, y2)
    assert not torch.equal(x1, x3) and not torch.equal(x1, x4), "seed and epoch both change the batches"
    assert x1.shape == (50, 3, 8, 8) and x1.dtype == torch.float32 and 0 <= x1.min() and x1.max() <= 1
    assert sorted(y1.tolist()) == sorted(split.labels.tolist())
    assert len(make(0)) == 4


def test_augmented_images_are_crops_and_flips_of_their_originals():
    split = small_split(20)
    loader = TensorLoader(split, batch_size=7, shuffle=True, augment=True, seed=3)
    plain = TensorLoader(split, batch_size=7, shuffle=True, augment=False, seed=3)
    for (xa, _), (xp, _) in zip(loader, plain):  # same order: augmentation does not change it
        for a, p in zip(xa, xp):
            candidates = [crop_by_loop(im, dy, dx, 4) for im in (p, p.flip(-1)) for dy in range(9) for dx in range(9)]
            assert any(torch.equal(a, c) for c in candidates)


def test_no_shuffle_no_augment_returns_the_split_in_order():
    split = small_split(10)
    x, y = epoch_batches(TensorLoader(split, batch_size=4), 0)
    torch.testing.assert_close(x, torch.from_numpy(split.images).float() / 255)
    torch.testing.assert_close(y, torch.from_numpy(split.labels))


needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")


@needs_dali
def test_dali_cpu_pipeline_equals_tensor_loader_on_real_jpegs(shared_data):
    dataset = load_dataset(shared_data, subset=300, test_subset=200, seed=4)
    for split in ("train", "test"):
        options = dict(batch_size=64, device="cpu", shuffle=True, seed=9)
        tensor = list(make_loader(dataset, split, loader="tensor", **options))
        dali = list(make_loader(dataset, split, loader="dali", **options))
        assert len(tensor) == len(dali)
        for (xt, yt), (xd, yd) in zip(tensor, dali):
            assert xd.shape == xt.shape and xd.dtype == torch.float32
            torch.testing.assert_close(yd, yt)
            torch.testing.assert_close(xd, xt, atol=1e-6, rtol=0)  # same libjpeg-turbo decode


@needs_dali
def test_dali_reads_raw_arrays_and_augments(formats):
    dataset = load_dataset(formats["python-folder"])
    options = dict(batch_size=8, device="cpu", shuffle=False)
    xt = torch.cat([x for x, _ in make_loader(dataset, "train", loader="tensor", **options)])
    xd = torch.cat([x for x, _ in make_loader(dataset, "train", loader="dali", **options)])
    torch.testing.assert_close(xd, xt, atol=1e-6, rtol=0)
    augmented = [torch.cat([x for x, _ in make_loader(dataset, "train", loader="dali", augment=True, seed=s,
                                                       **options)]) for s in (0, 0, 1)]
    torch.testing.assert_close(augmented[0], augmented[1])
    assert not torch.equal(augmented[0], augmented[2])
    # Each augmented image is a pad-4 crop (possibly mirrored) of its original.
    for a, p in zip(augmented[0], xt):
        candidates = [crop_by_loop(im, dy, dx, 4) for im in (p, p.flip(-1)) for dy in range(9) for dx in range(9)]
        assert min(float((a - c).abs().max()) for c in candidates) < 1e-6
