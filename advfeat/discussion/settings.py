"""One typed home for the Distill discussion's settings (`reproduce --extra distill`).

`DiscussionSettings` bundles the per-experiment settings dataclasses of this package; a preset
(advfeat.presets.Preset.discussion) holds one. It lives here, not in advfeat/settings.py, so
that the main stages' keys never hash the discussion's code (reproduce/pipeline.py, EXTRA_ONLY).
Every value that computes enters the stages' settings (asdict), and so their keys.

Bad input is a UserError (one line, exit 2 from the CLI), raised when the settings are built:
a filter cutoff outside (0, 16] or a noise norm <= 0 (FourierSettings), or a layer name (of
R(f) or of style transfer) that the preset's architecture does not have (`check_layers`, called
by the preset).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from advfeat.discussion.eigenfeatures import EigenSettings
from advfeat.discussion.fourier import FourierSettings
from advfeat.discussion.layer_robustness import LayerSettings
from advfeat.discussion.squares import SquaresSettings
from advfeat.discussion.style_transfer import StyleSettings
from advfeat.discussion.wrong_labels import WrongLabelsSettings
from advfeat.errors import UserError


@dataclass(frozen=True)
class DiscussionSettings:
    """The settings of every discussion experiment; the defaults are the CPU scale."""

    squares: SquaresSettings = field(default_factory=SquaresSettings)
    wrong_labels: WrongLabelsSettings = field(default_factory=WrongLabelsSettings)
    fourier: FourierSettings = field(default_factory=FourierSettings)
    eigen: EigenSettings = field(default_factory=EigenSettings)
    layers: LayerSettings = field(default_factory=LayerSettings)
    style: StyleSettings = field(default_factory=StyleSettings)

    def check_layers(self, arch: str) -> None:
        """Every layer named in `layers.layers` exists in `arch` (an empty tuple: all of them), and
        every style or content layer in `style` is one of its feature-map layers."""
        _check(self.layers.layers, available_layers(arch), arch, "layer")
        chosen = self.style.style_layers + ((self.style.content_layer,) if self.style.content_layer else ())
        if chosen:
            _check(chosen, feature_map_layers(arch), arch, "style layer")


def _check(names: tuple[str, ...], known: tuple[str, ...], arch: str, what: str) -> None:
    for name in names:
        if name not in known:
            raise UserError(f"unknown {what} {name!r} for {arch}; choose from {', '.join(known)}")


@functools.lru_cache(maxsize=None)
def available_layers(arch: str) -> tuple[str, ...]:
    """The layer names of R(f) for an architecture (its ReLUs and final activation); the model is
    built once per architecture and not kept."""
    from advfeat.discussion.layer_robustness import layer_names
    from advfeat.models import create_model

    return tuple(layer_names(create_model(arch)))


@functools.lru_cache(maxsize=None)
def feature_map_layers(arch: str) -> tuple[str, ...]:
    """The layers style transfer can use in an architecture: those of `available_layers` whose
    output is a feature map at the architecture's native input size."""
    from advfeat.discussion.style_transfer import spatial_layers
    from advfeat.models import create_model
    from advfeat.models.registry import input_sizes

    return tuple(spatial_layers(create_model(arch), input_sizes(arch).native))
