"""The model registry, keyed by name (timm-style): `create_model("resnet50")`.

Each entry builds a Classifier (classifier.py); adding an architecture is one decorated
function in its own module. The CIFAR architectures are designed for 32x32 inputs; most
end in a global average pool and so run on other sizes too, with the same weights. Each
entry declares which input sizes it accepts (`InputSizes`), so that data of a size an
architecture cannot take is refused with one line before any training, not a shape error
from deep inside the net.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from advfeat.errors import UserError
from advfeat.models.classifier import Classifier


@dataclass(frozen=True)
class InputSizes:
    """The (H, W) an architecture runs on: exactly `fixed` if given, else at least `minimum`
    on each side; `why` says what sets the limit, for the error message. `native`: the side
    it was designed for (throughput.py times it there)."""

    minimum: int = 1
    fixed: tuple[int, int] | None = None
    why: str = ""
    native: int = 32

    def accepts(self, height: int, width: int) -> bool:
        if self.fixed is not None:
            return (height, width) == self.fixed
        return min(height, width) >= self.minimum

    def describe(self) -> str:
        if self.fixed is not None:
            return f"exactly {self.fixed[0]}x{self.fixed[1]}"
        return f"at least {self.minimum}x{self.minimum}"


_REGISTRY: dict[str, Callable[[int], Classifier]] = {}
_INPUT_SIZES: dict[str, InputSizes] = {}
# Names that once existed, with a hint for the error message.
_RENAMED = {"inception": "'inception' was renamed 'googlenet'; the paper's Figure 3 uses 'inceptionv3'"}


def register_model(name: str, sizes: InputSizes = InputSizes()):
    def add(builder: Callable[[int], Classifier]):
        _REGISTRY[name] = builder
        _INPUT_SIZES[name] = sizes
        return builder
    return add


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def input_sizes(name: str) -> InputSizes:
    return _INPUT_SIZES[name]


def archs_accepting(height: int, width: int) -> list[str]:
    return [name for name in model_names() if _INPUT_SIZES[name].accepts(height, width)]


def check_input_size(name: str, image_shape: tuple[int, ...]) -> None:
    """One-line UserError unless architecture `name` runs on images of shape (C, H, W)."""
    channels, height, width = (tuple(image_shape) + (None, None, None))[:3]
    if channels != 3 or height is None or width is None:
        raise UserError(f"advfeat's architectures take 3-channel (C, H, W) images; the data's are {tuple(image_shape)}")
    sizes = _INPUT_SIZES[name]
    if not sizes.accepts(height, width):
        others = archs_accepting(height, width)
        raise UserError(f"{name} takes images of {sizes.describe()} ({sizes.why}); the data's are {height}x{width}. "
                        f"Architectures that accept {height}x{width}: {', '.join(others) or 'none'}")


def create_model(name: str, num_classes: int = 10) -> Classifier:
    if name not in _REGISTRY:
        hint = f" ({_RENAMED[name]})" if name in _RENAMED else ""
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(model_names())}{hint}")
    return _REGISTRY[name](num_classes)
