"""The robustness library's augmentation on the device: jitter and rotation against torchvision,
per-image orders, seeded "library" epochs, "crop-flip" epochs unchanged, and policy names."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from advfeat.errors import UserError
from advfeat.data import AUGMENTATIONS, Dataset, Split, make_loader
from advfeat.data.augment import (
    BRIGHTNESS, CONTRAST, SATURATION, augmentation_name, color_jitter, draw_jitter_rotation, jitter_then_rotate,
    rotate,
)
from advfeat.data.dali import dali_available
from advfeat.data.tensor_loader import TensorLoader, epoch_generator, random_crop, random_flip, to_unit_float

TORCHVISION_OPS = {BRIGHTNESS: TF.adjust_brightness, CONTRAST: TF.adjust_contrast, SATURATION: TF.adjust_saturation}


def random_images(n: int = 8, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def jitter_by_torchvision(image: torch.Tensor, factors: list[float], order: list[int]) -> torch.Tensor:
    """One image through torchvision's ops in the given order; factors indexed by op."""
    for op in order:
        image = TORCHVISION_OPS[op](image, factors[op])
    return image


def jitter_rows(images, brightness, contrast, saturation, order):
    """color_jitter with per-image lists turned into tensors."""
    as_tensor = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return color_jitter(images, as_tensor(brightness), as_tensor(contrast), as_tensor(saturation), torch.tensor(order))


# Colour jitter ------------------------------------------------------------------------

@pytest.mark.parametrize("op", [BRIGHTNESS, CONTRAST, SATURATION])
def test_each_jitter_op_matches_torchvision(op):
    images = random_images(16)
    factors = torch.linspace(0.0, 2.0, 16)  # beyond the library's range, to exercise the clamps
    ones = torch.ones(16)
    per_op = [factors if i == op else ones for i in range(3)]  # the other two ops are identities
    out = color_jitter(images, *per_op, torch.tensor([[0, 1, 2]] * 16))
    expected = torch.stack([TORCHVISION_OPS[op](im, float(f)) for im, f in zip(images, factors)])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_jitter_honours_each_images_order():
    orders = [list(p) for p in itertools.permutations(range(3))]
    image = random_images(1)[0]
    factors = [1.25, 0.75, 1.2]  # brightness, contrast, saturation: same for every image
    images = image.expand(len(orders), -1, -1, -1).contiguous()
    out = jitter_rows(images, *([factors[i]] * len(orders) for i in range(3)), orders)
    for result, order in zip(out, orders):
        torch.testing.assert_close(result, jitter_by_torchvision(image, factors, order), atol=1e-6, rtol=0)
    # The ops commute but for the clamps, which brightness 1.25 first makes bite.
    brightness_first, brightness_last = out[orders.index([0, 1, 2])], out[orders.index([1, 2, 0])]
    assert (brightness_first - brightness_last).abs().max() > 1e-2


def test_jitter_with_drawn_parameters_matches_torchvision():
    images = random_images(32)
    params = draw_jitter_rotation(torch.Generator().manual_seed(1), 32)
    out = color_jitter(images, params.brightness, params.contrast, params.saturation, params.order)
    for i in range(32):
        factors = [float(params.brightness[i]), float(params.contrast[i]), float(params.saturation[i])]
        expected = jitter_by_torchvision(images[i], factors, params.order[i].tolist())
        torch.testing.assert_close(out[i], expected, atol=1e-6, rtol=0)


# Rotation -----------------------------------------------------------------------------

@pytest.mark.parametrize("h, w", [(32, 32), (24, 40)])
def test_rotate_matches_torchvision_nearest(h, w):
    images = random_images(24, h, w)
    angles = torch.cat([torch.linspace(-2, 2, 16), torch.tensor([30.0, -45.0, 10.5, 90.0, -90.0, 180.0, 1e-3, 0.0])])
    out = rotate(images, angles)
    expected = torch.stack([TF.rotate(im, float(a), interpolation=InterpolationMode.NEAREST, expand=False, fill=0)
                            for im, a in zip(images, angles)])
    differing_pixels = (out != expected).any(dim=1)
    assert differing_pixels.float().mean() < 1e-3  # nearest-neighbour ties may round either way


def test_rotate_by_90_degrees_is_rot90_counter_clockwise():
    images = random_images(4)
    counter_clockwise = torch.rot90(images, k=1, dims=(-2, -1))
    assert torch.equal(rotate(images, torch.full((4,), 90.0)), counter_clockwise)
    assert torch.equal(rotate(images, torch.full((4,), -90.0)), torch.rot90(images, k=-1, dims=(-2, -1)))


# Whole step ---------------------------------------------------------------------------

def test_identity_parameters_return_the_input():
    images = random_images(6)
    params = draw_jitter_rotation(torch.Generator().manual_seed(0), 6, jitter=0.0, degrees=0.0)
    assert (params.brightness == 1).all() and (params.angles == 0).all()
    assert torch.equal(jitter_then_rotate(images, params), images)


def test_outputs_stay_in_unit_interval():
    images = random_images(64)
    images[:8] = images[:8].round()  # saturated pixels: black and white
    params = draw_jitter_rotation(torch.Generator().manual_seed(2), 64, jitter=1.0, degrees=45.0)
    out = jitter_then_rotate(images, params)
    assert out.min() >= 0 and out.max() <= 1


def test_draws_are_in_range_and_seeded():
    draw = lambda seed: draw_jitter_rotation(torch.Generator().manual_seed(seed), 600)  # noqa: E731
    params = draw(0)
    for factor in (params.brightness, params.contrast, params.saturation):
        assert factor.min() >= 0.75 and factor.max() <= 1.25
    assert params.angles.min() >= -2 and params.angles.max() <= 2 and params.angles.std() > 0.5
    assert (params.order.sort(dim=1).values == torch.arange(3)).all(), "each order is a permutation"
    assert len({tuple(row) for row in params.order.tolist()}) == 6
    assert torch.equal(draw(0).angles, params.angles) and not torch.equal(draw(1).angles, params.angles)


# Loaders ------------------------------------------------------------------------------

def small_split(n: int = 40, size: int = 32) -> Split:
    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), rng.integers(0, 10, n))


def epoch_images(loader, epoch: int) -> torch.Tensor:
    loader.set_epoch(epoch)
    return torch.cat([x for x, _ in loader])


def crop_flip_as_before(split: Split, seed: int, epoch: int) -> torch.Tensor:
    """The crop-flip epoch as TensorLoader drew it before "library" existed: order, offsets, flips."""
    n = len(split)
    g = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=g)
    offsets = torch.randint(0, 9, (n, 2), generator=g)
    flips = torch.randint(0, 2, (n,), generator=g).bool()
    images = torch.from_numpy(split.images)[order]
    return to_unit_float(random_flip(random_crop(images, offsets, 4), flips))


def test_crop_flip_epochs_are_unchanged():
    split = small_split()
    for augment in ("crop-flip", True):
        loader = TensorLoader(split, batch_size=16, shuffle=True, augment=augment, seed=5)
        for epoch in (0, 2):
            assert torch.equal(epoch_images(loader, epoch), crop_flip_as_before(split, 5, epoch))
    plain = TensorLoader(split, batch_size=16, shuffle=False, augment="none")
    assert torch.equal(epoch_images(plain, 0), torch.from_numpy(split.images).float() / 255)


def test_library_epochs_are_seeded_and_jitter_the_crop_flip_epoch():
    split = small_split()
    make = lambda augment: TensorLoader(split, batch_size=16, shuffle=True, augment=augment, seed=5)  # noqa: E731
    library = epoch_images(make("library"), 1)
    assert torch.equal(library, epoch_images(make("library"), 1))
    assert not torch.equal(library, epoch_images(make("library"), 2))
    assert library.shape == (40, 3, 32, 32) and library.dtype == torch.float32
    assert library.min() >= 0 and library.max() <= 1
    # "library" = the same epoch's crop-flip images, then jitter and rotation drawn after them.
    g = epoch_generator(5, 1)
    torch.randperm(40, generator=g)  # the order, crop offsets and flips come first
    torch.randint(0, 9, (40, 2), generator=g)
    torch.randint(0, 2, (40,), generator=g)
    params = draw_jitter_rotation(g, 40)
    expected = jitter_then_rotate(epoch_images(make("crop-flip"), 1), params)
    assert torch.equal(library, expected)


def test_bad_policy_names_are_user_errors():
    split = small_split(4)
    assert AUGMENTATIONS == ("none", "crop-flip", "library")
    assert [augmentation_name(a) for a in (True, False, "library")] == ["crop-flip", "none", "library"]
    with pytest.raises(UserError, match="choose one of none, crop-flip, library"):
        TensorLoader(split, batch_size=2, augment="autoaugment")
    dataset = Dataset(split, split)
    for loader in ("tensor", "dali"):  # rejected before any DALI import
        with pytest.raises(UserError, match="unknown augmentation 'Library'"):
            make_loader(dataset, "train", loader=loader, batch_size=2, device="cpu", augment="Library")
    with pytest.raises(UserError):
        augmentation_name(1)


@pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
def test_dali_library_runs_on_cpu_and_jitters_its_crop_flip_epoch():
    split = small_split(20)
    dataset = Dataset(split, split)

    def load(augment: str) -> torch.Tensor:
        loader = make_loader(dataset, "train", loader="dali", batch_size=8, device="cpu", shuffle=True,
                             augment=augment, seed=3)
        return torch.cat([x for x, _ in loader])

    library = load("library")
    assert library.shape == (20, 3, 32, 32) and library.dtype == torch.float32
    assert library.min() >= 0 and library.max() <= 1
    assert torch.equal(library, load("library"))
    # The same pipeline seed gives the same DALI crops and flips; jitter and rotation come after.
    g = epoch_generator(3, 0)
    torch.randperm(20, generator=g)  # the order and the pipeline seed come first
    torch.randint(0, 2**31 - 1, (1,), generator=g)
    expected = jitter_then_rotate(load("crop-flip"), draw_jitter_rotation(g, 20))
    torch.testing.assert_close(library, expected, atol=1e-6, rtol=0)
