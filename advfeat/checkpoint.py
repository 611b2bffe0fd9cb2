"""Model checkpoints: safetensors weights + a JSON card. Loading never unpickles.

A model folder holds
- model.safetensors: the weights, with the card embedded in the file's metadata, so
  weights and card always agree (one atomic rename writes both);
- card.json: the same card, for people and tools (arch, data source and digest, config,
  metrics, git commit, torch version);
- resume.safetensors (while training): weights + optimizer state + progress, for --resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from advfeat.errors import UserError
from advfeat.io import atomic_path, write_json
from advfeat.models import Classifier, create_model

WEIGHTS, CARD, RESUME = "model.safetensors", "card.json", "resume.safetensors"


def _cpu_state(module_or_state) -> dict[str, torch.Tensor]:
    state = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Atomic safetensors write; metadata values are JSON-encoded."""
    with atomic_path(path) as tmp:
        save_file(_cpu_state(tensors), str(tmp), metadata={k: json.dumps(v, default=str) for k, v in metadata.items()})


def load_tensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, decoded metadata); a missing or damaged file is a UserError."""
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        return load_file(str(path), device=str(device)), metadata
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is corrupt or not a safetensors file ({str(err).splitlines()[0]})") from None


def save_model(folder: Path, model: Classifier, card: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / WEIGHTS, model.state_dict(), {"card": card})
    write_json(folder / CARD, card)


def build_from_state(card: dict, state: dict[str, torch.Tensor], where: Path) -> Classifier:
    """Instantiate the card's architecture and load the weights, strictly."""
    for key in ("arch", "num_classes"):
        if key not in card:
            raise UserError(f"{where}: card lacks {key!r}; not an advfeat model checkpoint")
    model = create_model(card["arch"], card["num_classes"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UserError(f"{where}: weights do not match arch {card['arch']!r} ({first})") from None
    normalization = card.get("normalization")  # imported models may not use CIFAR-10's constants
    if normalization:
        model.mean.copy_(torch.tensor(normalization["mean"]).view(1, -1, 1, 1))
        model.std.copy_(torch.tensor(normalization["std"]).view(1, -1, 1, 1))
    return model


def check_data_fits(card: dict, image_shape: tuple[int, ...]) -> None:
    """One-line UserError when a loaded model cannot take the data's images (C, H, W):
    registry architectures by their declared sizes, others by the input size on their card."""
    from advfeat.models.registry import check_input_size, model_names

    if card.get("arch") in model_names():
        check_input_size(card["arch"], image_shape)
    elif card.get("input_size") and list(card["input_size"]) != list(image_shape):
        raise UserError(f"the model {card.get('arch')} takes images of shape {tuple(card['input_size'])}; "
                        f"the data's are {tuple(image_shape)}")


def load_model(folder: Path | str, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """(model in eval mode on `device`, card) from a model folder, or from a robustness-library
    checkpoint file (imported in memory, its architecture told by its keys: robustness_import.py).
    A folder of a wrapped module (wrapped_folder.py) gives a WrappedClassifier."""
    folder = Path(folder)
    if folder.is_file():
        from advfeat.models.robustness_import import load_robustness

        model, card = load_robustness(folder)
        return model.to(device), card
    if not folder.is_dir():
        raise UserError(f"model folder {folder} does not exist")
    if not (folder / WEIGHTS).is_file():
        raise UserError(f"{folder} holds no {WEIGHTS}; not an advfeat model folder")
    state, metadata = load_tensors(folder / WEIGHTS)
    if "card" not in metadata:
        raise UserError(f"{folder / WEIGHTS} has no embedded card; not an advfeat checkpoint")
    card = metadata["card"]
    if card.get("source") == "wrapped":  # a wrapped nn.Module, rebuilt from its card's recipe
        from advfeat.models.wrapped_folder import load_wrapped

        return load_wrapped(card, state, folder).to(device).eval(), card
    return build_from_state(card, state, folder).to(device).eval(), card
