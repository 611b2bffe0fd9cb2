"""Import the robustness library's checkpoints (MadryLab/robustness, the paper's code): its CIFAR
models, and its ImageNet / Restricted ImageNet ResNet-18 and ResNet-50.

The library saves `torch.save({'model', 'optimizer', 'schedule', 'epoch', ...}, pickle_module=dill)`
where 'model' is the state dict of an `AttackerModel` (robustness/attacker.py), usually
wrapped in DataParallel:
    module.normalizer.new_mean / new_std     (3, 1, 1): the dataset's mean and std
    module.model.<classifier keys>           the classifier (robustness/cifar_models/*.py, or
                                             robustness/imagenet_models/resnet.py for ImageNet)
    module.attacker.normalize.*, module.attacker.model.*   the same tensors again
Importing (1) reads the file with the restricted unpickler (safe_pickle.py: no code from it
runs), (2) keeps `model.*`, drops the attacker copies and reads the normalizer, (3) renames
the classifier's keys to advfeat's architecture of the same name (the library's ImageNet
resnetN: advfeat's resnetN_imagenet), (4) loads them strictly and
(5) writes an advfeat model folder whose card records the source's sha256.

Renaming, per architecture (the library's modules and advfeat's hold the same tensors in
the same order; only names differ, except):
- vgg16: the library's convolutions carry a bias, advfeat's do not (BN follows each). A bias b
  before BN is folded exactly into its running mean: BN(conv + b) = BN'(conv) with
  running_mean' = running_mean - b, in training mode as well (the batch mean absorbs b). Logits
  agree up to float rounding, not bit for bit.
- densenet121: the library's dense layer concatenates [new, input], advfeat's [input, new];
  every consumer of a dense block's output (the next layer's BN and 1x1 conv, a transition,
  the final BN and the head) has its input channels permuted to match. Logits agree up to
  float rounding (convolutions sum the channels in another order); the 1024-d features are
  the library's, in advfeat's channel order.
- resnet18/resnet50, inceptionv3: pure renames: the weights are the library's, bit for bit.
- resnet18_imagenet/resnet50_imagenet <- the library's imagenet_models resnet18/resnet50
  (torchvision's ResNet: conv1 7x7 stride 2 + bn1 + max-pool 3x3 stride 2, layerL.i blocks
  whose projection shortcut is `downsample.{0,1}` (1x1 conv stride s, BN) under the same
  condition as advfeat's (stride != 1 or channels change), the stride on the 3x3 conv
  (Bottleneck's conv2), `fc` the head). advfeat's resnet*_imagenet have the same layers in
  the same order with the same shapes: pure renames, as for the CIFAR ResNets, with the blocks
  one trunk index later (the max-pool) and downsample/fc for shortcut/linear; the library's
  layer4(fake_relu=True) is advfeat's FinalActivation, as for CIFAR. The class count
  is the file's (fc's rows: 1000 for ImageNet, 9 for Restricted ImageNet). The library's other
  ImageNet ResNets (resnet34/101/152, wide and ResNeXt variants) have no advfeat counterpart:
  refused by the strict load. A file without a normalizer gets ImageNet's constants if it has
  1000 classes, else Restricted ImageNet's (advfeat's default for these architectures).
Checked against the library's own cifar_models (resnet18/50, vgg16, densenet121, inceptionv3,
random weights, zip and legacy files): logits within 6e-8 of its forward (inceptionv3: equal).
The ImageNet ResNets are checked against the library's imagenet_models/resnet.py written out
from its source in tests/test_model_import.py (itself checked against torchvision's): resnet18
identical logits and features (random weights, 64x64 inputs, 9 and 1000 classes); resnet50 by
its keys (strict load, each tensor in its place; no forward pass, slow on 2 cores). No
released ImageNet checkpoint was available offline, only files built in the library's layout.
The library's normalizer also clamps inputs to [0, 1]; advfeat's inputs are always in [0, 1].
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import NamedTuple

import torch

from advfeat import __version__
from advfeat.errors import UserError
from advfeat.io import file_sha256
from advfeat.models.classifier import CIFAR10_MEAN, CIFAR10_STD, Classifier
from advfeat.models.registry import create_model
from advfeat.models.resnet import RESTRICTED_IMAGENET_MEAN, RESTRICTED_IMAGENET_STD
from advfeat.models.safe_pickle import read_torch_pickle

# advfeat's names; the CIFAR ones are the library's too, X_imagenet is its imagenet_models' X.
IMPORTABLE = ("resnet18", "resnet50", "vgg16", "densenet121", "inceptionv3", "resnet18_imagenet", "resnet50_imagenet")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # robustness/datasets.py ImageNet


class ResNetLayout(NamedTuple):
    """Where the library's ResNet keeps what advfeat's resnet() / imagenet_resnet() keep in trunk."""
    depths: tuple[int, ...]
    first_block: int  # the first block's index in advfeat's trunk (after the stem's modules)
    shortcut: str  # the library's name for a block's projection (conv, BN)
    head: str


RESNET_LAYOUTS = {
    "resnet18": ResNetLayout((2, 2, 2, 2), 2, "shortcut", "linear"),  # stem: conv_bn, ReLU
    "resnet50": ResNetLayout((3, 4, 6, 3), 2, "shortcut", "linear"),
    "resnet18_imagenet": ResNetLayout((2, 2, 2, 2), 3, "downsample", "fc"),  # stem: conv_bn, ReLU, max-pool
    "resnet50_imagenet": ResNetLayout((3, 4, 6, 3), 3, "downsample", "fc"),
}
DENSENET_BLOCKS, DENSENET_GROWTH = (6, 12, 24, 16), 32
INCEPTION_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
INCEPTION_BLOCKS = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
# The library's branch names -> advfeat's ConcatThenReLU branches, per Inception block type.
_A = (("branch1x1", "branches.0"), (r"branch5x5\.(\d)", r"branches.1.\1"), (r"branch3x3\.(\d)", r"branches.2.\1"),
      (r"branchpool\.1", "branches.3.1"))
_B = (("branch3x3", "branches.0"), (r"branch3x3stack\.(\d)", r"branches.1.\1"))
_C = (("branch1x1", "branches.0"), (r"branch7x7\.(\d)", r"branches.1.\1"),
      (r"branch7x7stack\.(\d)", r"branches.2.\1"), (r"branch_pool\.1", "branches.3.1"))
_D = ((r"branch3x3\.(\d)", r"branches.0.\1"), (r"branch7x7\.(\d)", r"branches.1.\1"))
_E = (("branch1x1", "branches.0"), ("branch3x3_1", "branches.1.stem"), ("branch3x3_2a", "branches.1.wide"),
      ("branch3x3_2b", "branches.1.tall"), ("branch3x3stack_1", "branches.2.stem.0"),
      ("branch3x3stack_2", "branches.2.stem.1"), ("branch3x3stack_3a", "branches.2.wide"),
      ("branch3x3stack_3b", "branches.2.tall"), (r"branch_pool\.1", "branches.3.1"))
INCEPTION_BRANCHES = dict(zip(INCEPTION_BLOCKS, (_A, _A, _A, _B, _C, _C, _C, _C, _D, _E, _E)))


# --------------------------------------------------------------------------- the checkpoint's layout


def library_state(checkpoint, where: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(classifier state dict with the library's names, normalizer {'mean', 'std'} or None).

    Accepts the library's dict ('model', or 'state_dict' in its oldest files), or a bare
    state dict; with or without `module.`; drops `attacker.*` (the same tensors again).
    """
    state = checkpoint
    if isinstance(checkpoint, dict) and ("model" in checkpoint or "state_dict" in checkpoint):
        state = checkpoint["model" if "model" in checkpoint else "state_dict"]
    if not isinstance(state, dict) or not state:
        raise UserError(f"{where} holds no state dict (expected the robustness library's {{'model': ...}})")
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise UserError(f"{where}: state dict entry {bad!r} is not a tensor")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    has_attacker_model = any(k.startswith("model.") for k in state)
    classifier, normalizer = {}, {}
    for key, value in state.items():
        if key.startswith("attacker."):
            continue
        if key.startswith("normalizer."):
            normalizer[key.removeprefix("normalizer.")] = value
        elif not has_attacker_model or key.startswith("model."):
            classifier[key.removeprefix("model.") if has_attacker_model else key] = value
        else:
            classifier[key] = value  # a stray key: reported as unexpected by the strict load
    if normalizer and set(normalizer) != {"new_mean", "new_std"}:
        raise UserError(f"{where}: normalizer holds {sorted(normalizer)}, expected new_mean and new_std")
    norm = {"mean": normalizer["new_mean"].flatten().tolist(), "std": normalizer["new_std"].flatten().tolist()} \
        if normalizer else None
    return classifier, norm


# --------------------------------------------------------------------------- renames, one per family


def _resnet_name(key: str, layout: ResNetLayout) -> str:
    """conv1/bn1 -> trunk.0.{0,1}; layerL.i.{convK,bnK,<shortcut>.j} -> trunk.b...; <head> -> head."""
    if m := re.fullmatch(r"(conv1|bn1)\.(\w+)", key):
        return f"trunk.0.{int(m[1] == 'bn1')}.{m[2]}"
    if m := re.fullmatch(r"layer([1-4])\.(\d+)\.(.+)", key):
        stage, i, rest, depths = int(m[1]) - 1, int(m[2]), m[3], layout.depths
        if i >= depths[stage]:
            return key
        block = layout.first_block + sum(depths[:stage]) + i
        if r := re.fullmatch(r"(conv|bn)([1-3])\.(\w+)", rest):
            return f"trunk.{block}.residual.{2 * (int(r[2]) - 1)}.{int(r[1] == 'bn')}.{r[3]}"
        if (r := re.fullmatch(r"(\w+)\.([01])\.(\w+)", rest)) and r[1] == layout.shortcut:
            return f"trunk.{block}.shortcut.{r[2]}.{r[3]}"
    if m := re.fullmatch(r"(\w+)\.(weight|bias)", key):
        return f"head.{m[2]}" if m[1] == layout.head else key
    return key


def _vgg_name(key: str) -> str:
    """features.n -> trunk.n (advfeat's layer list is the library's, cut at the last ReLU)."""
    if m := re.fullmatch(r"features\.(\d+)\.(\w+)", key):
        return f"trunk.{m[1]}.{m[2]}"
    return re.sub(r"^classifier\.", "head.", key)


def _densenet_positions() -> dict[str, int]:
    """The library's module name -> its index in advfeat's densenet121 trunk."""
    positions, index = {}, 1  # trunk.0 is the stem conv
    for b, depth in enumerate(DENSENET_BLOCKS, 1):
        for i in range(depth):
            positions[f"dense{b}.{i}"] = index
            index += 1
        if b < len(DENSENET_BLOCKS):
            positions[f"trans{b}"] = index
            index += 1
    positions["bn"] = index
    return positions


def _densenet_name(key: str, positions: dict[str, int]) -> str:
    """conv1 -> trunk.0; dense layers' bn1/conv1/bn2/conv2 -> layer.{0,2,3,5}; trans's bn/conv -> {0,2}."""
    if key.startswith("conv1."):
        return "trunk.0." + key.removeprefix("conv1.")
    if (m := re.fullmatch(r"(dense\d\.\d+)\.(bn1|conv1|bn2|conv2)\.(\w+)", key)) and m[1] in positions:
        return f"trunk.{positions[m[1]]}.layer.{('bn1', '', 'conv1', 'bn2', '', 'conv2').index(m[2])}.{m[3]}"
    if (m := re.fullmatch(r"(trans\d)\.(bn|conv)\.(\w+)", key)) and m[1] in positions:
        return f"trunk.{positions[m[1]]}.{0 if m[2] == 'bn' else 2}.{m[3]}"
    if m := re.fullmatch(r"bn\.(\w+)", key):
        return f"trunk.{positions['bn']}.{m[1]}"
    return re.sub(r"^linear\.", "head.", key)


def _inception_name(key: str) -> str:
    """Stem BasicConv2d k -> trunk.k; Mixed block -> trunk.(5 + its index) with its branches
    renamed (INCEPTION_BRANCHES); a BasicConv2d's conv/bn -> .0/.1 of advfeat's Sequential."""
    if m := re.fullmatch(r"(\w+?)\.(.+)\.(conv|bn)\.(\w+)", key):
        block, inner, layer, param = m.groups()
        if block in INCEPTION_BLOCKS:
            for pattern, replacement in INCEPTION_BRANCHES[block]:
                if re.fullmatch(pattern, inner):
                    inner = re.sub(pattern, replacement, inner)
                    return f"trunk.{5 + INCEPTION_BLOCKS.index(block)}.{inner}.{int(layer == 'bn')}.{param}"
    if (m := re.fullmatch(r"(\w+)\.(conv|bn)\.(\w+)", key)) and m[1] in INCEPTION_STEM:
        return f"trunk.{INCEPTION_STEM.index(m[1])}.{int(m[2] == 'bn')}.{m[3]}"
    return re.sub(r"^linear\.", "head.", key)


def _renamer(arch: str):
    if arch in RESNET_LAYOUTS:
        return lambda key: _resnet_name(key, RESNET_LAYOUTS[arch])
    if arch == "densenet121":
        positions = _densenet_positions()
        return lambda key: _densenet_name(key, positions)
    return {"vgg16": _vgg_name, "inceptionv3": _inception_name}[arch]


# --------------------------------------------------------------------------- the two non-renames


def fold_conv_biases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VGG: drop `features.n.bias` of each conv, subtracting it from `features.(n+1).running_mean`."""
    state = dict(state)
    for key in [k for k in state if re.fullmatch(r"features\.\d+\.bias", k)]:
        n = int(key.split(".")[1])
        weight, mean_key = state.get(f"features.{n}.weight"), f"features.{n + 1}.running_mean"
        if weight is not None and weight.dim() == 4 and mean_key in state:
            state[mean_key] = state[mean_key] - state.pop(key)
    return state


def _dense_order(c0: int, layers: int, growth: int) -> torch.Tensor:
    """For each channel of advfeat's [x0, o1, ..., ok], its index in the library's [ok, ..., o1, x0]."""
    new = [(layers - 1 - (j // growth)) * growth + j % growth for j in range(layers * growth)]
    return torch.tensor([layers * growth + j for j in range(c0)] + new)


def permute_dense_inputs(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """densenet121 (advfeat names): reorder the input channels of every dense block consumer."""
    state, positions, c0 = dict(state), _densenet_positions(), 2 * DENSENET_GROWTH
    for b, depth in enumerate(DENSENET_BLOCKS, 1):
        for i in range(depth + 1):
            order = _dense_order(c0, i, DENSENET_GROWTH)
            if i < depth:
                prefix = f"trunk.{positions[f'dense{b}.{i}']}.layer"
                bn, conv = f"{prefix}.0", f"{prefix}.2.weight"
            elif b < len(DENSENET_BLOCKS):
                prefix = f"trunk.{positions[f'trans{b}']}"
                bn, conv = f"{prefix}.0", f"{prefix}.2.weight"
            else:
                bn, conv = f"trunk.{positions['bn']}", "head.weight"
            for key in [f"{bn}.{p}" for p in ("weight", "bias", "running_mean", "running_var")] + [conv]:
                dim = 1 if key == conv else 0
                if key in state and state[key].dim() > dim and state[key].shape[dim] == len(order):
                    state[key] = state[key].index_select(dim, order)
        c0 = (c0 + depth * DENSENET_GROWTH) // 2
    return state


def advfeat_state(arch: str, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state with advfeat's names for `arch`, advfeat name -> the library's name)."""
    if arch not in IMPORTABLE:
        raise UserError(f"cannot import the robustness library's {arch!r}; importable: {', '.join(IMPORTABLE)}")
    if arch == "vgg16":
        state = fold_conv_biases(state)
    rename = _renamer(arch)
    renamed = {rename(k): v for k, v in state.items()}
    origin = {rename(k): k for k in state}
    if arch == "densenet121":
        renamed = permute_dense_inputs(renamed)
    return renamed, origin



# --------------------------------------------------------------------------- load and write


def _first(keys: list[str]) -> str:
    return "none" if not keys else repr(keys[0]) + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")


def check_fit(model: Classifier, state: dict[str, torch.Tensor], origin: dict[str, str], arch: str,
              where: Path) -> dict[str, torch.Tensor]:
    """`state` completed with num_batches_tracked (absent in torch < 0.4.1 files), or one
    UserError naming the first missing and first unexpected key (with its name in the file)."""
    expected = model.state_dict()
    state = dict(state)
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in state and key[:-19] + "running_mean" in state:
            state[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in state]
    unexpected = [f"{origin.get(k, k)} (as {k})" if origin.get(k, k) != k else k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(f"{where} does not fit {arch}: missing {_first(missing)}; unexpected {_first(unexpected)}")
    wrong = next((k for k in expected if state[k].shape != expected[k].shape), None)
    if wrong is not None:
        raise UserError(f"{where} does not fit {arch}: {origin.get(wrong, wrong)} has shape "
                        f"{tuple(state[wrong].shape)}, {arch} wants {tuple(expected[wrong].shape)}")
    return state


def _assumed_normalization(arch: str, num_classes: int) -> tuple[tuple, tuple, str]:
    """(mean, std, name) for a file without a normalizer: the dataset its architecture and head suggest."""
    if not arch.endswith("_imagenet"):
        return CIFAR10_MEAN, CIFAR10_STD, "CIFAR-10's"
    if num_classes == 1000:
        return IMAGENET_MEAN, IMAGENET_STD, "ImageNet's (1000 classes)"
    return RESTRICTED_IMAGENET_MEAN, RESTRICTED_IMAGENET_STD, f"Restricted ImageNet's ({num_classes} classes)"


def _normalization(found: dict | None, where: Path, arch: str, num_classes: int) -> dict:
    """The card's record of the input normalization: the file's, else the one its architecture suggests."""
    if found is None:
        mean, std, name = _assumed_normalization(arch, num_classes)
        return {"mean": list(mean), "std": list(std), "from": f"absent in the file; {name} assumed",
                "matches_cifar10": mean == CIFAR10_MEAN and std == CIFAR10_STD}
    if len(found["mean"]) != 3 or len(found["std"]) != 3 or min(found["std"]) <= 0:
        raise UserError(f"{where}: normalizer mean {found['mean']} / std {found['std']} is not 3 channels of std > 0")
    matches = all(abs(a - b) < 1e-6 for a, b in zip(found["mean"] + found["std"], CIFAR10_MEAN + CIFAR10_STD))
    return {"mean": found["mean"], "std": found["std"], "from": "the checkpoint's normalizer",
            "matches_cifar10": matches}


def _stem_kernel(state: dict[str, torch.Tensor]) -> int | None:
    """The kernel size of a library ResNet's stem conv (conv1): 7 in imagenet_models, 3 in cifar_models."""
    weight = state.get("conv1.weight")
    return weight.shape[-1] if isinstance(weight, torch.Tensor) and weight.dim() == 4 else None


def _stem_kind(state: dict[str, torch.Tensor]) -> str:
    """What the stem conv says the file is, for messages ('' when it says nothing)."""
    kernel = _stem_kernel(state)
    return {7: "an ImageNet ResNet (7x7 stem conv)", 3: "a CIFAR model (3x3 stem conv)"}.get(kernel, "")


def fitting_archs(state: dict[str, torch.Tensor]) -> list[str]:
    """The importable architectures whose names fit the file's keys (models built on the meta
    device: no memory, no initialization); a ResNet's stem kernel must be its family's too
    (7: ImageNet, 3: CIFAR), though in the library's files the names already tell them apart."""
    fits = []
    for arch in IMPORTABLE:
        rename, keys = _renamer(arch), fold_conv_biases(state) if arch == "vgg16" else state
        names = {rename(k) for k in keys if not k.endswith("num_batches_tracked")}
        with torch.device("meta"):
            expected = {k for k in create_model(arch).state_dict() if not k.endswith("num_batches_tracked")}
        stem_fits = arch not in RESNET_LAYOUTS or _stem_kernel(state) == (7 if arch.endswith("_imagenet") else 3)
        fits += [arch] if names == expected and stem_fits else []
    return fits


def guess_arch(state: dict[str, torch.Tensor], where: Path) -> str:
    """The one importable architecture that fits the file (fitting_archs), or one UserError."""
    fits = fitting_archs(state)
    if len(fits) != 1:
        kind = _stem_kind(state)
        note = f"; it looks like {kind}" if kind else ""
        raise UserError(f"{where}: its keys fit {' and '.join(fits) or 'none'} of the importable architectures "
                        f"({', '.join(IMPORTABLE)}){note}; name one: advfeat import robustness {where} --arch NAME "
                        f"--out DIR")
    return fits[0]


def _wrong_arch_hint(state: dict[str, torch.Tensor], arch: str) -> str:
    """For a file that does not fit the `arch` asked for: the architecture it does fit, if one does."""
    fits = [a for a in fitting_archs(state) if a != arch]
    if len(fits) != 1:
        return ""
    kind = _stem_kind(state)
    return f"; it is {kind} and fits {fits[0]}: pass --arch {fits[0]}" if kind else \
        f"; it fits {fits[0]}: pass --arch {fits[0]}"


def load_robustness(path: Path | str, arch: str | None = None) -> tuple[Classifier, dict]:
    """(advfeat model in eval mode on the CPU, its card) from a robustness-library checkpoint;
    arch None: the one importable architecture whose names fit the file."""
    from advfeat.checkpoint import build_from_state

    path = Path(path)
    if arch is not None and arch not in IMPORTABLE:
        raise UserError(f"cannot import the robustness library's {arch!r}; importable: {', '.join(IMPORTABLE)}")
    checkpoint = read_torch_pickle(path)
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    state, found = library_state(checkpoint, path)
    del checkpoint  # the optimizer's state is never needed (and, memory-mapped, never read)
    arch = arch or guess_arch(state, path)
    library, (state, origin) = state, advfeat_state(arch, state)
    # The file's class count (ImageNet 1000, Restricted ImageNet 9, CIFAR 10), from its head.
    num_classes = next((v.shape[0] for k, v in state.items() if k == "head.weight" and v.dim() == 2), 10)
    with torch.device("meta"):  # the expected names and shapes, without building the model twice
        skeleton = create_model(arch, num_classes)
    try:
        state = check_fit(skeleton, state, origin, arch, path)
    except UserError as error:  # still one line, now saying which --arch the file does fit
        raise UserError(f"{error}{_wrong_arch_hint(library, arch)}") from None
    card = {
        "kind": "model", "advfeat_version": __version__, "arch": arch, "num_classes": num_classes,
        "feature_dim": skeleton.feature_dim,
        "source": "robustness",
        "source_file": {"name": path.name, "sha256": file_sha256(path),
                        "epoch": epoch if isinstance(epoch, int) else None},
        "normalization": _normalization(found, path, arch, num_classes),
        "torch_version": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return build_from_state(card, state, path).eval(), card


def robust_record(eps: float | None, norm: str) -> dict:
    """The card's `robust` entry: absent when eps is unknown, None for eps 0 (a standard model)."""
    if eps is None:
        return {}
    if not eps >= 0:
        raise UserError(f"--eps must be >= 0, got {eps}")
    return {"robust": {"norm": norm, "eps": eps, "from": "--eps at import"} if eps > 0 else None}


def import_robustness(path: Path | str, arch: str, out: Path | str, *, eps: float | None = None, norm: str = "l2",
                      force: bool = False) -> dict:
    """Import a robustness-library checkpoint into the advfeat model folder `out`; returns the card.

    Everything is checked before anything is written; `out` is refused if it holds a model
    unless force.
    """
    from advfeat.checkpoint import WEIGHTS, save_model

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if (out / WEIGHTS).exists() and not force:
        raise UserError(f"--out {out} already holds a model; pass --force to replace it")
    robust = robust_record(eps, norm)
    model, card = load_robustness(path, arch)
    card |= robust
    save_model(out, model, card)
    return card
