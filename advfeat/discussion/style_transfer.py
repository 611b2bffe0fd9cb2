"""Neural style transfer with each network, from Nakano's comment ("Adversarially Robust Neural
Style Transfer", Distill discussion, response 4) and the authors' reply.

Gatys et al. (2016): find an image x whose features at a content layer match the content
image's, and whose Gram matrices at the style layers match the style image's:

    loss(x) = content_weight * ||F_c(x) - F_c(c)||^2 / ||F_c(c)||^2
              + style_weight * mean_l ||G_l(x) - G_l(s)||^2 / ||G_l(s)||^2,
    G_l(x) = F_l(x) F_l(x)^T / (H_l W_l)      (F_l: the layer's C x HW feature map)

minimised by L-BFGS from the content image. Nakano found a robust ResNet-50 far better for this
than a standard one, and the authors found single-layer style transfer working where the layer
is robust (layer_robustness.py measures that robustness, R(f)). Here: for each network, one
picture per style layer alone (single-layer) and one with every style layer (multi-layer).

Deviations from Nakano's setting, each because of the CPU scale or for a fair comparison:
  * the networks are advfeat's (the preset's standard and robust models, and the VGG-style net
    Figure 3 trained on D), on CIFAR-10's 32x32 images, not ImageNet ResNet-50 / VGG-19;
  * the style image is a procedural texture (`wave_texture`: three coloured gratings), since no
    painting is available offline; the CLI (`advfeat style`) takes the user's own images;
  * each loss term is relative (divided by the target's squared norm), so that one pair of
    weights means the same for every network; Nakano grid-searched the weights per image;
  * style layers: the network's ReLU outputs that are feature maps (layer_robustness.layer_names),
    at most `max_layers` of them evenly spaced, unless named; the content layer is the
    second-to-last style layer (Nakano: relu4_x of ResNet's four stages, relu4_2 of VGG-19's five);
  * the image is parametrised as sigmoid(z), which keeps it in [0, 1] without clipping;
  * max-pooling is kept (Gatys and Nakano replace it by average pooling in VGG-19);
  * it computes in fp32 (L-BFGS's line search compares losses closely).

The result is qualitative, as in the comment: no rule judges it. Measured beside the pictures:
each picture's style loss as a share of the content image's (how far the optimiser got on its
own network), and the same share under every other network ("cross": a network's Gram
statistics matched by pixels another network also sees as the style, or by patterns only it sees).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from advfeat.attacks import frozen
from advfeat.checkpoint import load_model
from advfeat.discussion.layer_robustness import layer_names
from advfeat.errors import UserError
from advfeat.io import atomic_path
from advfeat.runtime import fp32_only

MULTI = "all layers"  # the multi-layer picture's column name


@dataclass(frozen=True)
class StyleSettings:
    contents: int = 2  # content images: the first shared test images
    steps: int = 100  # L-BFGS iterations per picture
    # relative to content_weight (both terms are relative losses); chosen from seed 0's pictures at
    # 10, 1 and 0.1: 10 left saturated colour noise, 0.1 barely moved the content image
    style_weight: float = 1.0
    content_weight: float = 1.0
    max_layers: int = 5  # style layers chosen when none are named
    style_layers: tuple[str, ...] = ()  # layer names of the preset's architecture; empty: chosen
    content_layer: str = ""  # empty: the second-to-last style layer
    texture_seed: int = 0  # the procedural style image (wave_texture)

    def __post_init__(self):
        if self.contents < 1 or self.steps < 1 or self.max_layers < 1:
            raise UserError(f"style transfer needs contents, steps and max_layers >= 1, got {self.contents}, "
                            f"{self.steps}, {self.max_layers}")
        if not (self.style_weight > 0 and self.content_weight >= 0):
            raise UserError(f"style_weight must be > 0 and content_weight >= 0, got {self.style_weight}, "
                            f"{self.content_weight}")


def wave_texture(height: int, width: int | None = None, seed: int = 0) -> torch.Tensor:
    """A (3, height, width) style image in [0, 1]: per channel a sinusoidal grating of random
    orientation, 3-6 cycles per image side and random phase (a plaid of coloured stripes)."""
    width = width or height
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height) / height, torch.arange(width) / width, indexing="ij")
    angle, cycles, phase = torch.rand(3, generator=g) * math.pi, 3 + 3 * torch.rand(3, generator=g), \
        2 * math.pi * torch.rand(3, generator=g)
    waves = [torch.sin(2 * math.pi * cycles[c] * (xx * angle[c].cos() + yy * angle[c].sin()) + phase[c])
             for c in range(3)]
    return 0.5 + 0.5 * torch.stack(waves)


def feature_maps(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """The outputs of the named modules for images x (a module used twice: its last use),
    copied so that a later in-place operation cannot change them."""
    modules = dict(model.named_modules())
    captured = {}
    handles = [modules[name].register_forward_hook(
        lambda _m, _i, out, name=name: captured.__setitem__(name, out.clone())) for name in names]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def spatial_layers(model: nn.Module, size: int | tuple[int, int]) -> list[str]:
    """The model's layers (layer_names) whose outputs are feature maps (N, C, H, W) for images
    of `size` (a side or (H, W)), in forward order."""
    names = layer_names(model)
    height, width = (size, size) if isinstance(size, int) else size
    device = next(model.parameters()).device
    with torch.no_grad():
        shapes = {k: v.shape for k, v in feature_maps(model.eval(), torch.zeros(1, 3, height, width, device=device),
                                                      names).items()}
    return [n for n in names if len(shapes[n]) == 4]


def choose_layers(model: nn.Module, size: int | tuple[int, int], style_layers: tuple[str, ...] = (), content_layer: str = "",
                  max_layers: int = 5) -> tuple[list[str], str]:
    """(style layers, content layer) of a model for images of `size`. Named layers are checked
    (UserError naming the valid ones); otherwise up to max_layers of the model's feature-map
    layers, evenly spaced, and the second-to-last of them as the content layer."""
    spatial = spatial_layers(model, size)
    if not spatial:
        raise UserError("style transfer needs feature-map layers; this architecture has none")
    for name in (*style_layers, *([content_layer] if content_layer else [])):
        if name not in spatial:
            raise UserError(f"unknown style layer {name!r}; choose from {', '.join(spatial)}")
    if not style_layers:
        picks = np.unique(np.linspace(0, len(spatial) - 1, min(max_layers, len(spatial))).round().astype(int))
        style_layers = tuple(spatial[i] for i in picks)
    return list(style_layers), content_layer or style_layers[max(len(style_layers) - 2, 0)]


def gram(f: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) feature maps -> (N, C, C) Gram matrices, divided by H * W."""
    flat = f.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[2]


def relative_error(a: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image: ||a - target||^2 / ||target||^2 (target broadcasts over images)."""
    dims = tuple(range(1, a.dim()))
    return ((a - target) ** 2).sum(dims) / (target ** 2).sum(dims).clamp(min=1e-12)


class StyleLoss:
    """A network's style and content losses toward fixed targets (the style image's Gram
    matrices, the content images' features); per image, so that a batch holds independent
    problems."""

    def __init__(self, model: nn.Module, style: torch.Tensor, content: torch.Tensor, style_layers: list[str],
                 content_layer: str):
        self.model, self.style_layers, self.content_layer = model, style_layers, content_layer
        with torch.no_grad():
            self.grams = {k: gram(v) for k, v in feature_maps(model, style[None], style_layers).items()}
            self.content = feature_maps(model, content, [content_layer])[content_layer]

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(style loss, content loss), each of shape (N,)."""
        maps = feature_maps(self.model, x, list(dict.fromkeys([*self.style_layers, self.content_layer])))
        style = torch.stack([relative_error(gram(maps[k]), self.grams[k]) for k in self.style_layers]).mean(0)
        return style, relative_error(maps[self.content_layer], self.content)


def stylize(loss: StyleLoss, content: torch.Tensor, settings: StyleSettings) -> torch.Tensor:
    """L-BFGS (strong Wolfe line search) on z, x = sigmoid(z), from the content images; returns
    x (N, 3, H, W). The weights never get gradients."""
    # contiguous: L-BFGS views the gradient flat (channels_last models give channels_last gradients otherwise)
    z = torch.logit(content.clamp(1e-3, 1 - 1e-3)).detach().contiguous().requires_grad_(True)
    optimizer = torch.optim.LBFGS([z], lr=1, max_iter=settings.steps, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        style, content_loss = loss.terms(torch.sigmoid(z))
        total = (settings.style_weight * style + settings.content_weight * content_loss).sum()
        total.backward()
        return total

    optimizer.step(closure)
    return torch.sigmoid(z).detach()


def style_grid(model: nn.Module, content: torch.Tensor, style: torch.Tensor, settings: StyleSettings,
               style_layers: list[str], content_layer: str) -> dict[str, tuple[torch.Tensor, StyleLoss]]:
    """One stylised batch per style layer alone and one with all of them: {column: (images,
    the loss they minimised)}. The model is frozen meanwhile (eval mode, no weight gradients)."""
    columns = {layer: [layer] for layer in style_layers} | ({MULTI: style_layers} if len(style_layers) > 1 else {})
    out = {}
    with frozen(model), fp32_only():
        for column, layers in columns.items():
            loss = StyleLoss(model, style, content, layers, content_layer)
            out[column] = stylize(loss, content, settings), loss
    return out


def style_loss_share(loss: StyleLoss, x: torch.Tensor, content: torch.Tensor) -> np.ndarray:
    """Per image: the style loss of x as a share of the content image's (1: no closer to the
    style than the content image; 0: the style's Gram matrices matched)."""
    with torch.no_grad(), fp32_only():
        return (loss.terms(x)[0] / loss.terms(content)[0].clamp(min=1e-12)).cpu().numpy()


def style_transfer_stage(settings: StyleSettings, model_stages: dict[str, str], sources, seed: int,
                         device: torch.device):
    """Stage body `style-transfer@seed`; reads the model stages of `model_stages` (name -> stage
    id: "standard", "robust" and optionally a VGG-style net), each <folder>/model, and the first
    settings.contents shared test images. Writes <folder>/style.npz (uint8 pictures: "content",
    "style" and "<net>|<column>") and returns per net its layers, per column the style-loss share
    and content loss, and (multi-layer pictures) the style-loss share under every net."""

    def run(ctx) -> dict:
        start = time.perf_counter()
        content = sources.test_tensors()[0][:settings.contents].float()
        style = wave_texture(*content.shape[-2:], seed=settings.texture_seed).to(content.device)
        losses, finals, pictures, result = {}, {}, {}, {"settings": asdict(settings), "models": {}}
        for name, stage in model_stages.items():
            model = load_model(ctx.folder_of(stage) / "model", device)[0]  # in eval mode
            # settings' layers name the preset's architecture (standard, robust); another net: chosen
            named = (settings.style_layers, settings.content_layer) if name in ("standard", "robust") else ((), "")
            style_layers, content_layer = choose_layers(model, tuple(content.shape[-2:]), *named, settings.max_layers)
            grid = style_grid(model, content, style, settings, style_layers, content_layer)
            rows = {}
            for column, (x, loss) in grid.items():
                with torch.no_grad(), fp32_only():
                    content_loss = loss.terms(x)[1].mean()
                rows[column] = {"style_share": float(style_loss_share(loss, x, content).mean()),
                                "content_loss": float(content_loss)}
                pictures[f"{name}|{column}"] = x
            # the multi-layer picture (the only one with one style layer) and its loss: all style layers
            finals[name], losses[name] = grid[MULTI] if MULTI in grid else grid[style_layers[0]]
            result["models"][name] = {"style_layers": style_layers, "content_layer": content_layer, "columns": rows}
        for name in model_stages:  # each net's multi-layer picture, under every net
            result["models"][name]["cross"] = {judge: float(style_loss_share(loss, finals[name], content).mean())
                                               for judge, loss in losses.items()}
        save_pictures(ctx.folder / "style.npz", {"content": content, "style": style[None]} | pictures)
        result["pictures"] = "style.npz"
        result["seconds"] = round(time.perf_counter() - start, 1)
        return result

    return run


def save_pictures(path: Path, pictures: dict[str, torch.Tensor]) -> None:
    """Images in [0, 1] as uint8 arrays in one .npz, written atomically."""
    arrays = {k: (v.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy() for k, v in pictures.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An image file as (3, H, W) floats in [0, 1] (RGB; resized bilinearly to `size` if given);
    a file PIL cannot read is a one-line UserError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(im, dtype=np.float32) / 255
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot read the image {path}: {error}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_pictures(path: Path) -> dict[str, np.ndarray]:
    """save_pictures' file as float arrays in [0, 1] (no pickles are read)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k].astype(np.float32) / 255 for k in data.files}
