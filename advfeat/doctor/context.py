"""What the doctor's checks share: the device, the data, a scratch folder, a small trained model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from advfeat.doctor.registry import one_line


class Context:
    """The run's settings and lazily made shared things: the data (the real CIFAR-10 subset, or
    a synthetic stand-in) and the `tiny` net trained on it once, by the first check that asks."""

    def __init__(self, out_dir: Path, device: torch.device, device_error: str | None, data: Path | None,
                 quick: bool, log: Callable[[str], None], work: Path):
        self.out_dir, self.device, self.device_error = out_dir, device, device_error
        self.data, self.quick, self.log, self.work = data, quick, log, work
        self.cuda = device.type == "cuda"
        self._dataset = None
        self._data_path: Path | None = None
        self._tiny: dict | None = None
        self._tiny_error: BaseException | None = None
        self.notes: list[str] = []

    # Sizes: small on CPU (and smaller with quick), larger on a GPU.
    @property
    def n_train(self) -> int:
        return 5000 if self.cuda else (1000 if self.quick else 3000)

    @property
    def n_test(self) -> int:
        return 2000 if self.cuda else (256 if self.quick else 500)

    def data_path(self) -> Path:
        """The real CIFAR-10 if given, else a small synthetic JPEG dataset made here (a note says so)."""
        if self._data_path is None:
            if self.data is not None:
                self._data_path = self.data
            else:
                from advfeat.data.standin import write_synthetic_jpegs

                self._data_path = write_synthetic_jpegs(self.work / "synthetic-data", per_class_train=120,
                                                        per_class_test=30)
                self.notes.append("no --data: synthetic JPEG images (class-coloured noise) stand in for CIFAR-10, "
                                  "so accuracies say nothing about CIFAR-10")
        return self._data_path

    def dataset(self):
        """(Subset of) the data: n_train training and n_test test images."""
        if self._dataset is None:
            from advfeat.data import load_dataset

            real = self.data is not None
            self._dataset = load_dataset(self.data_path(), subset=self.n_train if real else None,
                                         test_subset=self.n_test if real else None, seed=0)
        return self._dataset

    def tiny(self) -> dict:
        """The `tiny` net trained for 1-2 epochs on the data (its folder, model and test tensors)."""
        if self._tiny_error is not None:  # failed once: every check that needs it fails the same way
            raise RuntimeError(f"training the tiny model failed: {one_line(self._tiny_error)}")
        if self._tiny is None:
            try:
                self._tiny = self._train_tiny()
            except Exception as err:
                self._tiny_error = err
                raise
            self.log(f"doctor:   trained tiny for {self._tiny['epochs']} epoch(s) on {self._tiny['train_images']} "
                     f"images in {self._tiny['seconds']:.1f}s: test accuracy {self._tiny['test_accuracy']:.3f}")
        return self._tiny

    def _train_tiny(self) -> dict:
        from advfeat.evaluation import split_tensors
        from advfeat.training import train_tiny

        start = time.perf_counter()
        epochs = 1 if self.quick else 2
        folder = self.work / "tiny-model"
        model, card = train_tiny(self.dataset(), folder, device=self.device, epochs=epochs, seed=0)
        x, y = split_tensors(self.dataset().test, self.device)
        return {"folder": folder, "model": model, "x": x, "y": y, "card": card,
                "seconds": round(time.perf_counter() - start, 2),
                "test_accuracy": card["metrics"].get("test_accuracy"),
                "train_images": len(self.dataset().train), "epochs": epochs}

    def tiny_numbers(self) -> dict:
        """What every check that attacks the tiny net reports about it."""
        t = self.tiny()
        return {"model": "tiny", "train_images": t["train_images"], "epochs": t["epochs"],
                "test_accuracy": t["test_accuracy"], "train_seconds": t["seconds"]}
