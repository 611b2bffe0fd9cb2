"""Wrapped models (wrap.py) as advfeat model folders: weights in safetensors, and a card with
a *recipe* that names how to build the module again. No code is pickled.

A recipe names one of three builders, each code that advfeat or an installed package holds:
- `advfeat`:     a registry architecture (registry.py), for a wrapped advfeat Classifier; the
                 Classifier's own normalization (non-persistent buffers) enters the recipe;
- `torchvision`: a classification builder of torchvision.models (`get_model(name, num_classes=...)`);
- `robustbench`: a RobustBench zoo entry (dataset, threat model, name), built by the
                 `robustbench` package, as robustbench_model (wrap.py) does.

Finding the recipe of a module (`recipe_of`): the builders that can make the module's class
(for torchvision, those defined in the class's own module) are built on the meta device (no
memory, no weights), and the first whose state-dict keys and shapes equal the module's is
loaded with the module's own tensors (`assign=True`: shared, not copied) and run, in eval mode,
on one seeded batch beside the module; it is the recipe only if the logits agree. So a
module with the right shapes but other constructor arguments that change the computation
(a stride, a dilation) is refused, not saved wrong. Constructor arguments that change neither
shapes nor eval-mode logits (a dropout rate, an init flag) are not recorded: the rebuilt
module takes the builder's defaults. A module no recipe fits cannot be saved as a folder: one
line saying so and why (pickling its code is what advfeat refuses to do).

Loading (`load_wrapped`) builds the recipe on the meta device and assigns the file's tensors,
so it holds one copy of the weights, and wraps the module with the card's mean, std, input
size and class count.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from advfeat.errors import UserError
from advfeat.models.wrap import WrappedClassifier, wrap

SOURCE = "wrapped"


def _torchvision_candidates(module: nn.Module) -> list[str]:
    """torchvision classification builders defined in the module's class's own module."""
    import torchvision.models as tv

    names = tv.list_models(module=tv)
    return [n for n in names if tv.get_model_builder(n).__module__ == type(module).__module__]


def _candidates(wrapped: WrappedClassifier) -> list[dict]:
    """Recipes that may build wrapped.module, most specific first."""
    from advfeat.models.classifier import Classifier
    from advfeat.models.registry import model_names

    module = wrapped.module
    if wrapped.origin.get("builder") == "robustbench":
        return [{k: wrapped.origin[k] for k in ("builder", "name", "dataset", "threat_model")}]
    if type(module) is Classifier:
        norm = {"mean": module.mean.flatten().tolist(), "std": module.std.flatten().tolist()}
        return [{"builder": "advfeat", "name": n, "normalization": norm} for n in model_names()]
    if type(module).__module__.startswith("torchvision.models"):
        return [{"builder": "torchvision", "name": n} for n in _torchvision_candidates(module)]
    return []


def build_on_meta(recipe: dict, num_classes: int) -> nn.Module:
    """The recipe's module, its tensors on the meta device (shapes only)."""
    with torch.device("meta"):
        if recipe["builder"] == "advfeat":
            from advfeat.models.registry import create_model

            return create_model(recipe["name"], num_classes)
        if recipe["builder"] == "torchvision":
            import torchvision.models as tv

            return tv.get_model(recipe["name"], num_classes=num_classes)
        if recipe["builder"] == "robustbench":
            return _robustbench_builder(recipe)()
    raise UserError(f"unknown model recipe builder {recipe['builder']!r}")


def _robustbench_builder(recipe: dict):
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as err:
        raise UserError(f"this model is RobustBench's {recipe['name']}: building it needs the robustbench package "
                        f"(pip install robustbench): {err}") from None
    try:
        return model_dicts[BenchmarkDataset(recipe["dataset"])][ThreatModel(recipe["threat_model"])][recipe["name"]][
            "model"]
    except (KeyError, ValueError):
        raise UserError(f"RobustBench has no {recipe['dataset']} {recipe['threat_model']} model "
                        f"{recipe['name']!r}") from None


def rebuild(recipe: dict, state: dict[str, torch.Tensor], num_classes: int, where: str) -> nn.Module:
    """The recipe's module holding `state`'s very tensors (assigned, not copied), in eval mode."""
    module = build_on_meta(recipe, num_classes)
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        lines = str(err).splitlines()
        raise UserError(f"{where}: weights do not fit {recipe['builder']}:{recipe['name']} "
                        f"({(lines[1] if len(lines) > 1 else lines[0]).strip()})") from None
    norm = recipe.get("normalization")
    if norm:  # an advfeat Classifier's normalization is a non-persistent buffer
        device = next(iter(state.values())).device
        module.mean = torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1)
        module.std = torch.tensor(norm["std"], device=device).view(1, -1, 1, 1)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise UserError(f"{where}: {recipe['builder']}:{recipe['name']} has tensors the weights do not hold "
                        f"({left[0]})")
    return module.eval()


def _shapes(module_or_state) -> dict[str, tuple]:
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {k: tuple(v.shape) for k, v in state.items()}


@torch.no_grad()
def _same_logits(a: nn.Module, b: nn.Module, input_size: tuple[int, ...]) -> bool:
    """Whether two eval-mode modules agree on one seeded batch of two inputs."""
    device = next(a.parameters()).device
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    was = a.training
    a.eval()
    try:
        ya, yb = a(x), b(x)
    finally:
        a.train(was)
    return ya.shape == yb.shape and torch.allclose(ya, yb, rtol=1e-5, atol=1e-6)


def recipe_of(wrapped: WrappedClassifier) -> dict:
    """The recipe that rebuilds wrapped.module exactly (module docstring), or a one-line UserError."""
    module, name = wrapped.module, wrapped.name
    cannot = f"{name} cannot be saved as an advfeat model folder"
    candidates = _candidates(wrapped)
    if not candidates:
        raise UserError(f"{cannot}: its class {type(module).__module__}.{type(module).__qualname__} is not an "
                        f"architecture advfeat can rebuild (advfeat's registry, torchvision, RobustBench) and "
                        f"advfeat does not pickle code; keep it in Python and call wrap() on it")
    state = module.state_dict()
    shapes, shape_matches = _shapes(state), 0
    for recipe in candidates:
        try:
            if _shapes(build_on_meta(recipe, wrapped.num_classes)) != shapes:
                continue
        except (TypeError, ValueError, RuntimeError, NotImplementedError):  # a builder that cannot take num_classes
            continue
        shape_matches += 1
        if _same_logits(module, rebuild(recipe, state, wrapped.num_classes, name), wrapped.input_size):
            return recipe
    tried = ", ".join(f"{r['builder']}:{r['name']}" for r in candidates[:6]) + (" ..." if len(candidates) > 6 else "")
    why = ("architectures with its weights' shapes compute other logits (a changed stride, dilation or "
           "normalization?)" if shape_matches else f"no architecture has its weights' names and shapes (tried {tried})")
    raise UserError(f"{cannot}: {why}; advfeat does not pickle code")


def save_wrapped(folder: Path | str, wrapped: WrappedClassifier, *, force: bool = False) -> dict:
    """Write `wrapped` as an advfeat model folder (checkpoint.py's layout); returns its card."""
    from advfeat.checkpoint import save_model

    folder = Path(folder)
    recipe = recipe_of(wrapped)  # refuses before anything is written
    if folder.exists() and any(folder.iterdir()) and not force:
        raise UserError(f"{folder} already exists and is not empty; pass force=True (--force) to replace it")
    card = wrapped.card() | {"kind": "model", "source": SOURCE, "arch": f"{recipe['builder']}:{recipe['name']}",
                             "name": wrapped.name, "recipe": recipe, "origin": wrapped.origin}
    save_model(folder, wrapped.module, card)
    return card


def load_wrapped(card: dict, state: dict[str, torch.Tensor], where: Path) -> WrappedClassifier:
    """The WrappedClassifier a wrapped model's folder holds (its card and its weights)."""
    for key in ("recipe", "num_classes", "input_size", "normalization"):
        if key not in card:
            raise UserError(f"{where}: the card of a wrapped model lacks {key!r}")
    module = rebuild(card["recipe"], state, card["num_classes"], str(where))
    norm = card["normalization"]
    return wrap(module, norm["mean"], norm["std"], tuple(card["input_size"]), card["num_classes"],
                name=card.get("name") or card.get("arch"), origin=card.get("origin"))
