"""NVIDIA DALI loader: decode and augment image files on the GPU (or CPU with device_id=None).

For image-folder and archive datasets the encoded JPEG/PNG bytes are held in host memory
(CIFAR-10 is under 20 MB encoded) and fed to DALI, which decodes them on the GPU
(nvJPEG, device "mixed") when there is one; raw-array datasets skip the decoder.
Augmentation takes the same policies as TensorLoader's (augment.AUGMENTATIONS): DALI does
the random crop of the 4-pixel zero-padded image and the random horizontal flip, and for
"library" the colour jitter and rotation run on each output batch with augment.py's torch ops.

The batch order comes from the same (seed, epoch) permutation as TensorLoader's, and the
jitter and rotation parameters from the same (seed, epoch) generator (drawn after the
order and the pipeline seed), so a resumed run sees the same batches. DALI draws its own
crops and flips from a pipeline seed drawn from (seed, epoch): they are seeded, but they
are not the crops and flips TensorLoader draws. DALI is optional: `pip install advfeat[dali]`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from advfeat.errors import UserError
from advfeat.data.augment import CROP_PAD, POLICIES, augmentation_name, draw_jitter_rotation, jitter_then_rotate
from advfeat.data.tensor_loader import EpochLoader, epoch_generator


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class _BatchFeeder:
    """DALI external source: the epoch's batches of (image, label) in a fixed order."""

    def __init__(self, items: list[np.ndarray], labels: np.ndarray, order: np.ndarray, batch_size: int, n_batches: int):
        self.items, self.labels, self.order = items, labels, order
        self.batch_size, self.n_batches = batch_size, n_batches

    def __call__(self, iteration: int):
        if iteration >= self.n_batches:
            raise StopIteration
        index = self.order[iteration * self.batch_size:(iteration + 1) * self.batch_size]
        return [self.items[i] for i in index], [self.labels[i:i + 1] for i in index]


class DaliLoader(EpochLoader):
    """Iterate (x float32 in [0,1] (B,C,H,W), y int64) batches, decoded/augmented by DALI.

    `items` are either encoded files (1-D uint8 arrays; `encoded=True`) or images as
    (H, W, C) arrays, uint8 in [0,255] or float in [0,1]. `augment` names a policy of
    augment.AUGMENTATIONS; True and False mean "crop-flip" and "none".
    """

    def __init__(
        self,
        items: list[np.ndarray],
        labels: np.ndarray,
        *,
        encoded: bool,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: str | bool = False,
        seed: int = 0,
        drop_last: bool = False,
        pad: int = CROP_PAD,
        num_threads: int = 2,
    ):
        self.augment = augmentation_name(augment)
        self.policy = POLICIES[self.augment]
        if not dali_available():
            raise UserError("--loader dali needs NVIDIA DALI: pip install 'advfeat[dali]'")
        self.items, self.labels = items, np.asarray(labels, dtype=np.int64)
        self.encoded, self.batch_size, self.device = encoded, batch_size, torch.device(device)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.pad, self.num_threads, self.epoch = pad, num_threads, 0
        self.scale = 255.0 if encoded or items[0].dtype == np.uint8 else 1.0

    def _build(self, feeder: _BatchFeeder, pipeline_seed: int):
        from nvidia.dali import fn, pipeline_def, types

        on_gpu = self.device.type == "cuda"

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads,
                      device_id=(self.device.index or 0) if on_gpu else None, seed=pipeline_seed)
        def pipeline():
            data, labels = fn.external_source(source=feeder, num_outputs=2, batch=True,
                                              layout=[None if self.encoded else "HWC", None])
            if self.encoded:
                images = fn.decoders.image(data, device="mixed" if on_gpu else "cpu", output_type=types.RGB)
            else:
                images = data.gpu() if on_gpu else data
            mirror = 0
            if self.policy.crop_flip:
                # Random crop of the zero-padded image = a window starting in [-pad, pad].
                start = fn.random.uniform(values=list(range(-self.pad, self.pad + 1)), shape=[2], dtype=types.INT32)
                images = fn.slice(images, start=start, rel_shape=[1.0, 1.0], axis_names="HW",
                                  out_of_bounds_policy="pad", fill_values=0)
                mirror = fn.random.coin_flip()
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                              mean=[0.0, 0.0, 0.0], std=[self.scale] * 3, mirror=mirror)
            return images, labels

        pipe = pipeline()
        pipe.build()
        return pipe

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        g = epoch_generator(self.seed, self.epoch)
        n = self.num_examples
        order = (torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)).numpy()
        pipeline_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        jitter_rotation = None
        if self.policy.jitters_or_rotates:  # after the draws above, so "crop-flip" epochs stay as they were
            jitter_rotation = draw_jitter_rotation(g, n, jitter=self.policy.jitter,
                                                   degrees=self.policy.degrees).to(self.device)
        pipe = self._build(_BatchFeeder(self.items, self.labels, order, self.batch_size, len(self)), pipeline_seed)
        start = 0  # position in the epoch of the batch's first example
        for batch in DALIGenericIterator(pipe, ["x", "y"], auto_reset=False):
            x, y = batch[0]["x"].to(self.device, non_blocking=True), batch[0]["y"]
            if jitter_rotation is not None:
                x = jitter_then_rotate(x, jitter_rotation[start:start + len(x)])
            start += len(x)
            yield x, y.reshape(-1).to(self.device, non_blocking=True)
