"""Any PyTorch classifier as an advfeat model: `wrap(module, mean, std, input_size, num_classes)`.

advfeat's attacks, evaluation and synthesis call a model as `model(x, return_features=...,
fake_relu=...)` on images x in [0, 1] and read `num_classes` and `feature_dim`
(classifier.py). `WrappedClassifier` gives any `nn.Module` that interface:
- normalization: (x - mean) / std, then the module (mean 0, std 1 for a module that
  normalizes inside, as RobustBench's do);
- penultimate features: the input of the module's last executed `nn.Linear`, whose output is
  the logits, taken by a forward pre-hook and flattened to (B, feature_dim); which Linear that
  is, and the feature width, are found by one probe forward at wrapping time;
- fake_relu: unavailable. advfeat's own models end their trunk at the last ReLU, so inversion
  can pass gradient through it (the authors' fake_relu); an arbitrary module offers no such
  point. The wrapper records `fake_relu_available = False`, and a call asking for it raises a
  one-line UserError (synthesize D_R / D_NR with fake_relu off: `--no-fake-relu`).
The hook is registered per call and removed afterwards, so the module stays unchanged and
attack views (attacks/forward.py), which share its leaf modules, see the same features.

RobustBench (`robustbench_model`): a model of its zoo by name, built by the `robustbench`
package and loaded from a weights file already on disk (never downloaded), read with the
restricted unpickler (safe_pickle.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from advfeat.errors import UserError


class WrappedClassifier(nn.Module):
    fake_relu_available = False

    def __init__(self, module: nn.Module, mean, std, input_size: tuple[int, ...], num_classes: int, name: str,
                 origin: dict | None = None):
        super().__init__()
        self.module = module
        self.input_size, self.num_classes, self.name = tuple(input_size), num_classes, name
        # Where the module came from, for its card (wrapped_folder.py saves it as a folder).
        self.origin = dict(origin) if origin else {"class": f"{type(module).__module__}.{type(module).__qualname__}"}
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        head, self.feature_dim = probe_last_linear(module, self.input_size, num_classes, name)
        # A plain attribute, not a submodule (its weights are the module's). Attack views copy
        # the containers but share leaves, so they hold this very Linear; a path could move.
        object.__setattr__(self, "head", head)

    def forward(self, x: torch.Tensor, return_features: bool = False, fake_relu: bool = False):
        if fake_relu:
            raise UserError(f"fake_relu is unavailable for the wrapped model {self.name} (it has no final-ReLU split); "
                            f"invert without it (--no-fake-relu, MatchFeatures(fake_relu=False))")
        if not return_features:
            return self.module((x - self.mean) / self.std)
        captured = []
        handle = self.head.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0]))
        try:
            logits = self.module((x - self.mean) / self.std)
        finally:
            handle.remove()
        return logits, captured[-1].flatten(1)

    def features(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        return self.forward(x, return_features=True, fake_relu=fake_relu)[1]

    def card(self) -> dict:
        """What an advfeat model card records, for code that wants one (e.g. synthesis.model_check)."""
        return {"kind": "model", "arch": self.name, "source": "wrapped", "num_classes": self.num_classes,
                "feature_dim": self.feature_dim, "input_size": list(self.input_size),
                "normalization": {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()},
                "features": "the input of the last nn.Linear", "fake_relu": "unavailable", "origin": self.origin}


@torch.no_grad()
def probe_last_linear(module: nn.Module, input_size: tuple[int, ...], num_classes: int,
                      name: str) -> tuple[nn.Linear, int]:
    """(the last nn.Linear the forward runs, its input width), from one eval-mode
    forward of a zero image; its output must be the (1, num_classes) logits."""
    order: list[tuple[nn.Linear, int]] = []
    handles = [m.register_forward_pre_hook(lambda linear, inputs: order.append((linear, inputs[0][0].numel())))
               for m in module.modules() if isinstance(m, nn.Linear)]
    was_training = module.training
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        module.eval()
        logits = module(torch.zeros(1, *input_size, device=device))
    except Exception as err:  # noqa: BLE001  (any failure of foreign code on the declared input size)
        raise UserError(f"{name} does not run on input size {tuple(input_size)} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (1, num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(f"{name} returns {shape} for one image, not (1, {num_classes}) logits")
    if not order:
        raise UserError(f"{name} runs no nn.Linear; advfeat takes the penultimate features at the last one's input")
    return order[-1]


def wrap(module: nn.Module, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(3, 32, 32), num_classes: int = 10,
         name: str | None = None, origin: dict | None = None) -> WrappedClassifier:
    """`module` (normalized images -> logits) as an advfeat model on images in [0, 1].

    mean, std: per-channel constants the module was trained with (defaults: none, for modules
    that normalize inside); input_size: (C, H, W) of one image; origin: where it came from
    (a file, a paper, ...), for its card (default: its class).
    """
    if len(mean) != input_size[0] or len(std) != input_size[0] or min(std) <= 0:
        raise UserError(f"mean {tuple(mean)} and std {tuple(std)} must have {input_size[0]} entries, std > 0")
    return WrappedClassifier(module, mean, std, input_size, num_classes, name or type(module).__name__, origin)


def robustbench_model(name: str, model_dir: Path | str = "models", dataset: str = "cifar10",
                      threat_model: str = "Linf", weights: Path | str | None = None) -> WrappedClassifier:
    """RobustBench's model `name`, wrapped: its architecture from the `robustbench` package's
    zoo, its weights from a file already on disk, `weights` or RobustBench's own place for it,
    model_dir/dataset/threat_model/name.pt. Its models normalize inside (mean 0, std 1 here).

    As robustbench.utils.load_model does, except: nothing is downloaded; the file is read by
    the restricted unpickler (safe_pickle.py); ensembles (several weights files) and the
    models RobustBench loads non-strictly (its `known_failing_models`) are refused.
    """
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as err:
        raise UserError(f"RobustBench models need the robustbench package and its dependencies "
                        f"(pip install robustbench): {err}") from None
    try:
        entry = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)][name]
    except (KeyError, ValueError):
        raise UserError(f"RobustBench has no {dataset} {threat_model} model {name!r}") from None
    if isinstance(entry.get("gdrive_id"), list):
        raise UserError(f"RobustBench's {name} is an ensemble of several weights files; not supported")
    weights = Path(weights) if weights else Path(model_dir) / dataset / threat_model / f"{name}.pt"
    if not weights.is_file():
        raise UserError(f"{weights} does not exist; advfeat does not download (RobustBench's load_model does)")
    module = entry["model"]()
    try:
        module.load_state_dict(robustbench_state(weights, imagenet=dataset == "imagenet"), strict=True)
    except RuntimeError as err:
        raise UserError(f"{weights} does not fit RobustBench's {name}: {str(err).splitlines()[1].strip()}") from None
    num_classes = {"cifar10": 10, "cifar100": 100}.get(dataset, 1000)
    size = (3, 224, 224) if dataset.startswith("imagenet") else (3, 32, 32)
    from advfeat.io import file_sha256

    origin = {"builder": "robustbench", "name": name, "dataset": dataset, "threat_model": threat_model,
              "weights": str(weights), "weights_sha256": file_sha256(weights)}
    return wrap(module.eval(), input_size=size, num_classes=num_classes, name=f"robustbench:{name}", origin=origin)


def robustbench_state(weights: Path | str, imagenet: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in a RobustBench weights file, unpacked as robustbench.utils.load_model
    does: under 'state_dict' if there, one leading 'module.' and one 'model.' dropped; ImageNet
    models get 'model.' back (their normalization is an extra layer)."""
    from advfeat.models.safe_pickle import read_torch_pickle

    checkpoint = read_torch_pickle(weights)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise UserError(f"{weights} holds no state dict of tensors")
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in checkpoint.items()}
    return {f"model.{k}": v for k, v in state.items()} if imagenet else state
