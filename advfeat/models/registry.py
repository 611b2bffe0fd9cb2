"""The model registry, keyed by name (timm-style): `create_model("resnet50")`.

Each entry builds a Classifier (classifier.py) for 32x32 inputs; adding an architecture is
one decorated function in its own module.
"""

from __future__ import annotations

from typing import Callable

from advfeat.errors import UserError
from advfeat.models.classifier import Classifier

_REGISTRY: dict[str, Callable[[int], Classifier]] = {}
# Names that once existed, with a hint for the error message.
_RENAMED = {"inception": "'inception' was renamed 'googlenet'; the paper's Figure 3 uses 'inceptionv3'"}


def register_model(name: str):
    def add(builder: Callable[[int], Classifier]):
        _REGISTRY[name] = builder
        return builder
    return add


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 10) -> Classifier:
    if name not in _REGISTRY:
        hint = f" ({_RENAMED[name]})" if name in _RENAMED else ""
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(model_names())}{hint}")
    return _REGISTRY[name](num_classes)
