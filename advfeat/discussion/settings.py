"""One typed home for the Distill discussion's settings (`reproduce --extra distill`).

`DiscussionSettings` bundles the per-experiment settings dataclasses of this package; a preset
(advfeat.presets.Preset.discussion) holds one. It lives here, not in advfeat/settings.py, so
that the main stages' keys never hash the discussion's code (reproduce/pipeline.py, EXTRA_ONLY).
Every value that computes enters the stages' settings (asdict), and so their keys.

Bad input is a UserError (one line, exit 2 from the CLI), raised when the settings are built:
a filter cutoff outside (0, 16] or a noise norm <= 0 (FourierSettings), or a layer name that
the preset's architecture does not have (`check_layers`, called by the preset).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from advfeat.discussion.eigenfeatures import EigenSettings
from advfeat.discussion.fourier import FourierSettings
from advfeat.discussion.layer_robustness import LayerSettings
from advfeat.discussion.squares import SquaresSettings
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

    def check_layers(self, arch: str) -> None:
        """Every layer named in `layers.layers` exists in `arch` (an empty tuple: all of them)."""
        if self.layers.layers:
            known = available_layers(arch)
            for name in self.layers.layers:
                if name not in known:
                    raise UserError(f"unknown layer {name!r} for {arch}; choose from {', '.join(known)}")


@functools.lru_cache(maxsize=None)
def available_layers(arch: str) -> tuple[str, ...]:
    """The layer names of R(f) for an architecture (its ReLUs and final activation); the model is
    built once per architecture and not kept."""
    from advfeat.discussion.layer_robustness import layer_names
    from advfeat.models import create_model

    return tuple(layer_names(create_model(arch)))
