"""The model as an attack calls it: frozen, batch norm folded, channels_last, maybe compiled.

An attack never trains the model, so it may call an equivalent, faster copy of it:
- **frozen**: eval mode, no parameter gradients (only the input's gradient is computed);
- **batch norm folded**: in eval mode a BatchNorm2d right after a Conv2d is a per-channel
  affine map, which folds exactly (up to rounding) into the convolution's weights and bias,
  saving a pass over every activation forward and backward;
- **channels_last**: the layout fast convolutions want (cuDNN on GPUs, oneDNN on CPUs); the
  folded convolutions are stored so, and attacks pass channels_last inputs;
- **compiled** with torch.compile when asked (by default on CUDA only).

The view shares every module it does not fold with the model. Its folded convolutions are
refreshed whenever the model's parameters or buffers change (each batch of adversarial
training), and it lives as an attribute of the model, so it dies with the model (a cache
keyed by the model would keep every attacked model alive).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

_VIEW = "_advfeat_frozen_view"  # the attribute holding a model's FrozenView


@contextmanager
def frozen(model: nn.Module):
    """Eval mode, no parameter gradients; both restored afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def _fused_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """An empty Conv2d shaped like `conv`, with a bias, to hold conv+bn folded."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    fused = fused.to(device=conv.weight.device, dtype=conv.weight.dtype, memory_format=torch.channels_last)
    return fused.requires_grad_(False)


@torch.no_grad()
def _refold(pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]]) -> None:
    """fused.weight = w * s, fused.bias = (b - mean) * s + beta, with s = gamma / sqrt(var + eps)."""
    for conv, bn, fused in pairs:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)


def _foldable(a: nn.Module, b: nn.Module) -> bool:
    return (type(a) is nn.Conv2d and type(b) is nn.BatchNorm2d and b.track_running_stats
            and b.affine and a.out_channels == b.num_features)


def _fold_tree(module: nn.Module, pairs: list) -> nn.Module:
    """A structural copy of `module` in which every Sequential's Conv2d -> BatchNorm2d pair is
    one fused Conv2d; every other leaf is shared, not copied."""
    children = list(module.named_children())
    if not children:
        return module
    if isinstance(module, nn.Sequential):
        items, out, i = [m for _, m in children], [], 0
        while i < len(items):
            if i + 1 < len(items) and _foldable(items[i], items[i + 1]):
                fused = _fused_conv(items[i])
                pairs.append((items[i], items[i + 1], fused))
                out.append(fused)
                i += 2
            else:
                out.append(_fold_tree(items[i], pairs))
                i += 1
        folded = {str(i): m for i, m in enumerate(out)}
    else:
        folded = {name: _fold_tree(child, pairs) for name, child in children}
    # Same class and attributes (a Sequential subclass keeps its own forward), new children.
    clone = copy.copy(module)
    clone._modules = folded
    return clone


def _state_versions(model: nn.Module) -> tuple[int, ...]:
    """Changes whenever a parameter or buffer is written in place (optimizer steps, BN stats)."""
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


class FrozenView:
    """The frozen copy of one model that attacks and predictions call (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.pairs: list = []
        self.module = _fold_tree(model, self.pairs).eval()
        self.versions: tuple[int, ...] | None = None
        self.compiled = None

    def __deepcopy__(self, memo):
        return None  # a deep copy of the model builds its own view when first attacked

    def refresh(self, model: nn.Module) -> None:
        # The copied containers keep the mode they were copied in; the shared leaves follow the
        # model, which `frozen` has put in eval mode.
        self.module.eval()
        versions = _state_versions(model)
        if versions != self.versions:
            _refold(self.pairs)
            self.versions = _state_versions(model)

    def forward(self, compile: bool):
        if not compile:
            return self.module
        if self.compiled is None:
            raise_recompile_limit()
            # The batch dimension is dynamic: a draining slot batch does not recompile.
            self.compiled = torch.compile(self.module, dynamic=None)
        return self.compiled


def raise_recompile_limit(limit: int = 64) -> None:
    """Dynamo compiles each code object (here Classifier.forward, shared by every architecture)
    at most `recompile_limit` times (8) and then silently runs it eager. Every architecture and
    every (return_features, fake_relu) combination is one entry, so a reproduction needs more."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


def frozen_view(model: nn.Module, compile: bool | None, device: torch.device):
    """The callable attacks and predictions run: the model's FrozenView, compiled if asked (None: on CUDA).

    Call inside `frozen(model)`: the view assumes eval mode.
    """
    view = model.__dict__.get(_VIEW)
    if view is None:
        view = FrozenView(model)
        object.__setattr__(model, _VIEW, view)  # a plain attribute, not a registered submodule
    view.refresh(model)
    return view.forward(device.type == "cuda" if compile is None else compile)
