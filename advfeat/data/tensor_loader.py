"""The default loader: the whole split lives on the device as one tensor.

CIFAR-10 is 184 MB as uint8, so it fits on any GPU; batches are index gathers, and the
augmentation runs on the device: random crop from a 4-pixel zero pad and horizontal flip
("crop-flip"), plus the robustness library's colour jitter and rotation ("library";
augment.py). No worker processes, no host-to-device copies per batch (the airbench recipe).

All randomness of an epoch (order, crop offsets, flips, jitter and rotation parameters) is
drawn up front on the CPU from (seed, epoch), so an epoch is the same on any device and a
resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from advfeat.data.arrays import Split
from advfeat.data.augment import (
    CROP_PAD, POLICIES, JitterRotation, augmentation_name, draw_jitter_rotation, jitter_then_rotate,
)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch)."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float images are taken as already in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


def random_crop(images: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop each image of the zero-padded batch at its own offset.

    images (B, C, H, W); offsets (B, 2) integers in [0, 2 * pad] (row, column). Zero padding
    as in the paper's robustness library (torchvision RandomCrop(32, padding=4)).
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (B, W)
    batch_index = torch.arange(b, device=images.device)[:, None, None, None]
    chan_index = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch_index, chan_index, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where flip (B,) is True."""
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class EpochLoader:
    """What training needs of a loader: its size in batches, and an epoch to seed from.
    Subclasses set labels, batch_size, drop_last and epoch."""

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class EpochPlan(NamedTuple):
    """All the random choices of an epoch, on the loader's device; None where the policy skips a step."""

    order: torch.Tensor
    offsets: torch.Tensor | None
    flips: torch.Tensor | None
    jitter_rotation: JitterRotation | None


class TensorLoader(EpochLoader):
    """Iterate (x float32 in [0,1] (B,C,H,W), y int64) batches of a device-resident split.

    `augment` names a policy of augment.AUGMENTATIONS ("none", "crop-flip", "library");
    True and False mean "crop-flip" and "none".
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: str | bool = False,
        seed: int = 0,
        drop_last: bool = False,
        pad: int = CROP_PAD,
    ):
        self.augment = augmentation_name(augment)
        self.policy = POLICIES[self.augment]
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(split.images)).to(self.device)
        self.labels = torch.from_numpy(split.labels).to(self.device)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.seed, self.drop_last, self.pad = seed, drop_last, pad
        self.epoch = 0

    def _epoch_plan(self) -> EpochPlan:
        """This epoch's random choices, drawn on the CPU then moved."""
        n = self.num_examples
        g = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        offsets = flips = jitter_rotation = None
        if self.policy.crop_flip:
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(self.device)
            flips = torch.randint(0, 2, (n,), generator=g).bool().to(self.device)
        if self.policy.jitters_or_rotates:
            # Drawn after the crop/flip draws, so "crop-flip" epochs stay what they were before.
            jitter_rotation = draw_jitter_rotation(g, n, jitter=self.policy.jitter,
                                                   degrees=self.policy.degrees).to(self.device)
        return EpochPlan(order.to(self.device), offsets, flips, jitter_rotation)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self._epoch_plan()
        for i in range(len(self)):
            index = plan.order[i * self.batch_size:(i + 1) * self.batch_size]
            positions = slice(i * self.batch_size, i * self.batch_size + len(index))
            images = self.images[index]
            if plan.offsets is not None:  # before the float conversion: uint8 moves a quarter of the bytes
                images = random_flip(random_crop(images, plan.offsets[positions], self.pad), plan.flips[positions])
            images = to_unit_float(images)
            if plan.jitter_rotation is not None:
                images = jitter_then_rotate(images, plan.jitter_rotation[positions])
            yield images, self.labels[index]
