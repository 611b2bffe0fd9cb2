"""The authors' layer-robustness ratio, from their reply to Nakano ("Adversarially Robust
Neural Style Transfer", Distill discussion, response 4).

    R(f) = E[max_{||x' - x1||_2 <= eps} ||f(x') - f(x1)||] / E[||f(x1) - f(x2)||]

for a layer f, images x1 and independent images x2: how far an eps-perturbation can move the
layer's output, in units of how far apart two images' outputs typically are. The authors found
the early layers of VGG16 and AlexNet almost as robust as a robust ResNet-50's, and single-layer
style transfer working where the layer is robust. The claim here: R is lower at every layer of
the adversarially trained model than at the standard model's.

The max is found by L2 PGD (advfeat.attacks.pgd) on the feature distance, from a random point
on the eps-sphere (the distance's gradient is undefined at x' = x1), so the numerator is a lower
bound of the true max. Layers: the outputs of the model's ReLU modules and of its final
activation (`layer_names`), named by their module paths. x2 is x1 shifted by one image (the
pairs (x_i, x_{i+1})). Style transfer with the same networks: style_transfer.py.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from advfeat.attacks import Objective, make_threat, pgd
from advfeat.checkpoint import load_model
from advfeat.discussion.common import Reference, difference_interval, judged, seeds_of
from advfeat.errors import UserError
from advfeat.models.classifier import FinalActivation

REFERENCE = Reference("the early layers of VGG16 and AlexNet are almost as robust as those of a robust ResNet-50; "
                      "single-layer style transfer works where the layer is robust",
                      "the authors' reply to Nakano, response 4: ImageNet models, R(f) per layer")


@dataclass(frozen=True)
class LayerSettings:
    eps: float = 0.5  # L2 radius of x' around x1 (pixels in [0, 1])
    pairs: int = 100  # test images x1 (each paired with the next one as x2)
    steps: int = 10
    batch_size: int = 100
    layers: tuple[str, ...] = ()  # layer names (layer_names) to measure; empty: every one

    def __post_init__(self):
        if not self.eps > 0:
            raise UserError(f"eps must be > 0, got {self.eps}")
        if self.pairs < 2 or self.steps < 1:
            raise UserError(f"need at least 2 pairs and 1 step, got {self.pairs}, {self.steps}")


def layer_names(model: nn.Module) -> list[str]:
    """The module paths of the model's ReLUs and final activation, in forward order."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.ReLU, FinalActivation))]


class LayerOutput(nn.Module):
    """images -> the flattened output of one named layer of `model` (the rest of the forward
    pass runs too; its result is discarded)."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        names = layer_names(model)
        if name not in names:
            raise UserError(f"unknown layer {name!r}; this architecture has {', '.join(names)}")
        self.model, self.name = model, name
        self.num_classes = None
        self._module = dict(model.named_modules())[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured = []
        handle = self._module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[-1].flatten(1).float()  # a module used twice: its last use


class FeatureDistance(Objective):
    """||f(x') - f(x1)|| for a model whose output is the layer's (LayerOutput); target: f(x1)."""

    def __call__(self, logits, features, target):
        return (logits - target).norm(dim=1)


@torch.no_grad()
def _outputs(layer: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([layer(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def ratio_terms(layer: nn.Module, x: torch.Tensor, settings: LayerSettings, seed: int = 0) -> dict:
    """Per pair i: the PGD-found max ||f(x') - f(x_i)|| and ||f(x_i) - f(x_{i+1})||; and R."""
    x1, x2 = x[:-1], x[1:]
    f1 = _outputs(layer, x1, settings.batch_size)
    apart = (f1 - _outputs(layer, x2, settings.batch_size)).norm(dim=1)
    result = pgd(layer, x1, f1, threat=make_threat("l2", settings.eps, "sphere"), steps=settings.steps,
                 step_size=2.5 * settings.eps / settings.steps, objective=FeatureDistance(),
                 batch_size=settings.batch_size, generator=torch.Generator(device=x.device).manual_seed(seed))
    moved = (_outputs(layer, result.x_adv, settings.batch_size) - f1).norm(dim=1)
    return {"moved": moved.cpu().numpy(), "apart": apart.cpu().numpy(),
            "ratio": float(moved.mean() / apart.mean().clamp(min=1e-12))}


def layer_robustness_stage(settings: LayerSettings, model_stages: dict[str, str], sources, seed: int,
                           device: torch.device):
    """Stage body `layer-robustness@seed`; reads the model stages of `model_stages` (name ->
    stage id; the claim wants "standard" and "robust"), each <folder>/model, and the first
    settings.pairs + 1 shared test images. Result per model and layer: R, and per pair the
    moved distance over the mean distance apart (their mean is R)."""

    def run(ctx) -> dict:
        start = time.perf_counter()
        x = sources.test_tensors()[0][:settings.pairs + 1]
        result = {"settings": asdict(settings), "models": {}}
        for name, stage in model_stages.items():
            model, _ = load_model(ctx.folder_of(stage) / "model", device)
            rows = {}
            # settings.layers name the preset's architecture (standard, robust); another net: all its layers
            chosen = settings.layers if settings.layers and name in ("standard", "robust") else layer_names(model)
            for layer in chosen:  # LayerOutput rejects an unknown name
                terms = ratio_terms(LayerOutput(model, layer), x, settings, seed)
                rows[layer] = {"ratio": terms["ratio"],
                               "per_pair": (terms["moved"] / max(terms["apart"].mean(), 1e-12)).round(5).tolist()}
            result["models"][name] = rows
        result["seconds"] = round(time.perf_counter() - start, 1)
        return result

    return run


def judge_layer_robustness(results: dict[int, dict]) -> dict:
    """R(robust) - R(standard) < 0 at every layer the two models share (one part per layer),
    paired by seed (by image pair with one seed). The rival view (robustness lives only in the
    classifier's output, not in its representations) predicts no difference at early layers."""
    seeds = seeds_of(results)
    eps = results[seeds[0]]["settings"]["eps"]
    robust, standard = results[seeds[0]]["models"]["robust"], results[seeds[0]]["models"]["standard"]
    parts = []
    for layer in (name for name in robust if name in standard):
        a = [np.asarray(results[s]["models"]["robust"][layer]["per_pair"]) for s in seeds]
        b = [np.asarray(results[s]["models"]["standard"][layer]["per_pair"]) for s in seeds]
        values = [results[s]["models"]["robust"][layer]["ratio"] - results[s]["models"]["standard"][layer]["ratio"]
                  for s in seeds]
        parts.append((f"R(robust) - R(standard) at {layer}, L2 eps {eps:g}", difference_interval(values, a, b),
                      "below", 0.0))
    return judged("layer-robustness", "Every layer of the robust model is more robust (the authors' R(f))",
                  REFERENCE, parts)
