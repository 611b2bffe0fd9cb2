"""One shard of a synthesized dataset: run the attack, measure the result, round to storage.

    r / nr     representation inversion: from a start z0 (another training image, or noise),
               minimize ||g(z) - g(x)||_2 / ||g(x)||_2 over z in [0,1]^d (g: the penultimate
               layer, through fake_relu by default) with L2-normalized gradient steps; z keeps
               x's label y. PGD with the MatchFeatures objective and no eps.
    rand / det targeted PGD from x toward the planned target t (L2 by default, Linf as an
               option); z is labelled t.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from advfeat.attacks import MatchFeatures, ReachTarget, make_threat, pgd
from advfeat.evaluation import features_of, predict_tensor
from advfeat.data.arrays import Split
from advfeat.data.synthesized import store_images
from advfeat.data.tensor_loader import to_unit_float
from advfeat.settings import SynthSettings
from advfeat.synthesis.draws import noise_starts


def relative_distance(model, z: torch.Tensor, target: torch.Tensor, batch_size: int) -> torch.Tensor:
    return (features_of(model, z, batch_size) - target).norm(dim=1) / target.norm(dim=1).clamp(min=1e-12)


def start_images(settings: SynthSettings, train: Split, plan: dict, index: range, device) -> torch.Tensor:
    if settings.start == "noise":
        return torch.from_numpy(noise_starts(settings.seed, index, train.images.shape[1:])).to(device)
    return to_unit_float(torch.from_numpy(train.images[plan["start_index"][index.start:index.stop]]).to(device))


def synthesize_shard(model, train: Split, plan: dict, index: range, settings: SynthSettings,
                     device: torch.device, progress=None) -> dict[str, np.ndarray]:
    """Synthesize the examples `index` (positions in `train`); the arrays of one shard file."""
    x = to_unit_float(torch.from_numpy(train.images[index.start:index.stop]).to(device))
    threat = make_threat(settings.norm, settings.eps, "none")
    common = dict(steps=settings.steps, step_size=settings.step_size, keep=settings.keep,
                  batch_size=settings.batch_size, compile=settings.compile, progress=progress)
    start = time.perf_counter()
    if settings.inversion:
        target = features_of(model, x, settings.batch_size)
        x0 = start_images(settings, train, plan, index, device)
        result = pgd(model, x0, target, threat=threat, objective=MatchFeatures(settings.fake_relu), **common)
    else:
        target = torch.from_numpy(plan["target"][index.start:index.stop]).to(device)
        result = pgd(model, x, target, threat=threat, objective=ReachTarget(), retire=settings.retire, **common)
    seconds = time.perf_counter() - start
    stored = store_images(result.x_adv.cpu().numpy(), settings.storage)
    # Statistics of what was stored, since storage rounds the pixels.
    restored = to_unit_float(torch.from_numpy(stored).to(device))
    arrays = {
        "images": stored,
        "labels": plan["new_labels"][index.start:index.stop].astype(np.int64),
        "orig_labels": train.labels[index.start:index.stop].astype(np.int64),  # y of the source image
        "position": np.arange(index.start, index.stop, dtype=np.int64),  # in the (subset) training split
        "source_index": train.source_index[index.start:index.stop],  # in the full source training split
        "seconds": np.array([seconds]),
        "image_steps": np.array([result.image_steps], dtype=np.int64),
    }
    if settings.inversion:
        if "start_index" in plan:
            arrays["start_index"] = plan["start_index"][index.start:index.stop].astype(np.int64)  # a position
        arrays |= {
            "initial_distance": relative_distance(model, x0, target, settings.batch_size).cpu().numpy(),
            "final_distance": (-result.objective).cpu().numpy(),
            "stored_distance": relative_distance(model, restored, target, settings.batch_size).cpu().numpy(),
        }
    else:
        delta = (restored - x).flatten(1)
        arrays |= {
            "target_success": result.success.cpu().numpy().astype(np.uint8),
            "stored_success": (predict_tensor(model, restored, settings.batch_size) == target).cpu().numpy()
            .astype(np.uint8),
            "perturbation_norm": (delta.norm(dim=1) if settings.norm == "l2" else delta.abs().amax(dim=1))
            .cpu().numpy(),
        }
    return arrays
