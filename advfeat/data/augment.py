"""Augmentation policies, and the colour jitter and rotation of the robustness library, on the device.

The authors' robustness library augments CIFAR one PIL image at a time with torchvision
transforms. Here jitter and rotation run on a whole batch of float images in [0, 1],
shape (B, 3, H, W), each image with its own parameters. As with crop offsets and flips
(tensor_loader.py), the parameters of an epoch are drawn up front on the CPU, so an epoch
depends only on (seed, epoch).

The ops equal torchvision's tensor ops (transforms.v2.functional). The library applies
them to PIL images, which round to uint8 after each step and use integer grey weights,
so its images differ from these by about one grey level.

    params = draw_jitter_rotation(generator, n)          # on the CPU, once per epoch
    x = jitter_then_rotate(x, params[batch_positions])   # per batch, on the device
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from advfeat.errors import UserError

# The robustness library's CIFAR training transforms, robustness/data_augmentation.py
# TRAIN_TRANSFORMS_DEFAULT(32): RandomCrop(32, padding=4), RandomHorizontalFlip(),
# ColorJitter(brightness=.25, contrast=.25, saturation=.25), RandomRotation(2), in that order.
CROP_PAD = 4            # zero padding around the random crop, in pixels
JITTER_STRENGTH = 0.25  # brightness, contrast and saturation factors uniform in [1 - s, 1 + s]
ROTATION_DEGREES = 2.0  # rotation angle uniform in [-d, d]


@dataclass(frozen=True)
class Augmentation:
    """The steps of a policy. The steps present always run in the library's order:
    crop and flip (on the stored uint8 images), then jitter, then rotation (on floats)."""

    crop_flip: bool = False
    jitter: float = 0.0   # strength s of the brightness/contrast/saturation jitter; 0 = none
    degrees: float = 0.0  # rotation range d; 0 = none

    @property
    def jitters_or_rotates(self) -> bool:
        return self.jitter > 0 or self.degrees > 0


POLICIES = {
    "none": Augmentation(),
    "crop-flip": Augmentation(crop_flip=True),
    "library": Augmentation(crop_flip=True, jitter=JITTER_STRENGTH, degrees=ROTATION_DEGREES),
}
AUGMENTATIONS = tuple(POLICIES)  # ("none", "crop-flip", "library")


def augmentation_name(augment: str | bool) -> str:
    """The policy name for `augment`: a name from AUGMENTATIONS, or a boolean as older
    callers pass it (True -> "crop-flip", False -> "none")."""
    if isinstance(augment, bool):
        return "crop-flip" if augment else "none"
    if not isinstance(augment, str) or augment not in POLICIES:
        raise UserError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return augment


# Colour jitter ------------------------------------------------------------------------

# Op indices, as they appear in a jitter order.
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma with torchvision's weights (ITU-R 601-2)."""
    r, g, b = images.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * images + (1 - factor) * other, clamped to [0, 1] (torchvision's _blend);
    factor (B,) is per image, `other` broadcasts against images. One fused lerp: the same
    value to a rounding error, and fewer passes over the batch than mul, mul, add."""
    return torch.lerp(other.expand_as(images), images, factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def blend_targets(images: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
    """What each image blends with for its op (B,): black for brightness, its mean grey
    for contrast, its grey image for saturation. Shape (B, 1, H, W)."""
    gray = grayscale(images)
    mean_gray = gray.mean(dim=(1, 2, 3), keepdim=True)
    op = op.view(-1, 1, 1, 1)
    return torch.where(op == SATURATION, gray, mean_gray * (op == CONTRAST))  # 0 (black) for brightness


def color_jitter(
    images: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    order: torch.Tensor,
) -> torch.Tensor:
    """torchvision's ColorJitter (hue 0) with per-image factors (B,) and op order (B, 3).

    Each of the three ops is a blend, so one step handles the whole batch whatever op each
    image is at: pick each image's factor and blend target, then blend. No loop over images.
    """
    factors = torch.stack([brightness, contrast, saturation], dim=1)  # (B, 3), column = op index
    for position in range(order.shape[1]):
        op = order[:, position]
        factor = factors.gather(1, op[:, None]).squeeze(1)
        images = blend(images, blend_targets(images, op), factor)
    return images


# Rotation -----------------------------------------------------------------------------

def rotation_thetas(angles_degrees: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """affine_grid's (B, 2, 3) matrices for counter-clockwise rotations about the centre.

    affine_grid maps each output pixel to the input point it samples, in coordinates
    normalised to [-1, 1] per axis, so the inverse rotation (by -angle) is rescaled by the
    aspect ratio. Computed in float64, as torchvision does, then cast.
    """
    radians = angles_degrees.to(torch.float64) * (math.pi / 180)
    cos, sin = radians.cos(), radians.sin()
    zero = torch.zeros_like(cos)
    rows = [torch.stack([cos, -sin * (height / width), zero], dim=1),
            torch.stack([sin * (width / height), cos, zero], dim=1)]
    return torch.stack(rows, dim=1)


def rotate(images: torch.Tensor, angles_degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise by its angle (B,) about its centre: nearest
    neighbour, zero fill, same size (torchvision rotate(NEAREST, expand=False, fill=0))."""
    b, c, h, w = images.shape
    theta = rotation_thetas(angles_degrees, h, w).to(images.dtype)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


# Parameters of an epoch ---------------------------------------------------------------

@dataclass
class JitterRotation:
    """Per-image jitter and rotation parameters, one row per example of an epoch."""

    brightness: torch.Tensor  # (N,) factors
    contrast: torch.Tensor    # (N,)
    saturation: torch.Tensor  # (N,)
    order: torch.Tensor       # (N, 3) int64: each row a permutation of the op indices
    angles: torch.Tensor      # (N,) degrees, counter-clockwise

    def _map(self, f) -> JitterRotation:
        return JitterRotation(**{field.name: f(getattr(self, field.name)) for field in fields(self)})

    def to(self, device: torch.device | str) -> JitterRotation:
        return self._map(lambda t: t.to(device))

    def __getitem__(self, index) -> JitterRotation:
        return self._map(lambda t: t[index])


def draw_jitter_rotation(
    generator: torch.Generator, n: int, *, jitter: float = JITTER_STRENGTH, degrees: float = ROTATION_DEGREES,
) -> JitterRotation:
    """Draw the jitter and rotation parameters of n images from a CPU generator, always in
    the same sequence, so they depend only on the generator's state."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, dtype=torch.float32).mul_(high - low).add_(low)

    low, high = max(0.0, 1 - jitter), 1 + jitter  # torchvision clips the low end at 0
    brightness, contrast, saturation = uniform(low, high), uniform(low, high), uniform(low, high)
    # A uniform random order per image (argsort of i.i.d. uniforms): torchvision draws a
    # permutation of four ops per call, and with hue off the other three's order is uniform.
    order = torch.rand(n, 3, generator=generator).argsort(dim=1)
    angles = uniform(-degrees, degrees)
    return JitterRotation(brightness, contrast, saturation, order, angles)


def jitter_then_rotate(images: torch.Tensor, params: JitterRotation) -> torch.Tensor:
    """The library's order: colour jitter, then rotation."""
    images = color_jitter(images, params.brightness, params.contrast, params.saturation, params.order)
    return rotate(images, params.angles)
