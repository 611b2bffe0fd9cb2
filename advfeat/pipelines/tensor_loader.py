"""The default loader: the whole split lives on the device as one tensor.

CIFAR-10 is 184 MB as uint8, so it fits on any GPU; batches are index gathers, and the
augmentation (random crop from a 4-pixel zero pad, horizontal flip) runs on the device.
No worker processes, no host-to-device copies per batch (the airbench recipe).

All randomness of an epoch (order, crop offsets, flips) is drawn up front on the CPU from
(seed, epoch), so an epoch is the same on any device and a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from advfeat.pipelines.arrays import Split


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


class TensorLoader(EpochLoader):
    """Iterate (x float32 in [0,1] (B,C,H,W), y int64) batches of a device-resident split."""

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        pad: int = 4,
    ):
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(split.images)).to(self.device)
        self.labels = torch.from_numpy(split.labels).to(self.device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.drop_last, self.pad = seed, drop_last, pad
        self.epoch = 0

    def _epoch_plan(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(order, crop offsets, flips) for this epoch, drawn on the CPU then moved."""
        n = self.num_examples
        g = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        offsets = flips = None
        if self.augment:
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(self.device)
            flips = torch.randint(0, 2, (n,), generator=g).bool().to(self.device)
        return order.to(self.device), offsets, flips

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, offsets, flips = self._epoch_plan()
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            images = self.images[index]
            if self.augment:
                positions = slice(i * self.batch_size, i * self.batch_size + len(index))
                images = random_flip(random_crop(images, offsets[positions], self.pad), flips[positions])
            yield to_unit_float(images), self.labels[index]
