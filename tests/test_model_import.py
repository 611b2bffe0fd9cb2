"""The field's models: robustness-library checkpoints (import), any nn.Module (wrap).

CIFAR checkpoints are built in the library's layout from advfeat models: the library's names
are written out below from its source (robustness/cifar_models/*.py, attacker.py),
independently of advfeat's renames; the library's modules hold their tensors in advfeat's
order (checked once against the library itself), so advfeat's state dict, zipped with those
names, is a library checkpoint whose logits are known.

The ImageNet ResNets go the other way round: the library's imagenet_models/resnet.py is
written out below as a module (LibraryImageNetResNet, from its source, independently of
advfeat's resnet.py), whose own state dict and forward are the checkpoint and the oracle.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch

from advfeat.checkpoint import load_model
from advfeat.cli import main
from advfeat.errors import UserError
from advfeat.models import create_model
from advfeat.models.classifier import CIFAR10_MEAN, CIFAR10_STD
from advfeat.models.safe_pickle import ForeignStub, read_torch_pickle

# --------------------------------------------------------------------------- the library's names


def _bn(prefix):
    return [f"{prefix}.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def _conv_bn(prefix):  # the library's BasicConv2d (Inception) / conv + bn pairs
    return [f"{prefix}.conv.weight"] + _bn(f"{prefix}.bn")


def resnet_names(depths, bottleneck):
    names = ["conv1.weight"] + _bn("bn1")
    for stage, depth in enumerate(depths, 1):
        for i in range(depth):
            for k in range(1, 4 if bottleneck else 3):
                names += [f"layer{stage}.{i}.conv{k}.weight"] + _bn(f"layer{stage}.{i}.bn{k}")
            if i == 0 and (stage > 1 or bottleneck):
                names += [f"layer{stage}.{i}.shortcut.0.weight"] + _bn(f"layer{stage}.{i}.shortcut.1")
    return names + ["linear.weight", "linear.bias"]


def vgg16_names():
    names, n = [], 0
    for item in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if item == "M":
            n += 1
        else:
            names += [f"features.{n}.weight", f"features.{n}.bias"] + _bn(f"features.{n + 1}")
            n += 3
    return names + ["classifier.weight", "classifier.bias"]


def densenet121_names():
    names = ["conv1.weight"]
    for b, depth in enumerate((6, 12, 24, 16), 1):
        for i in range(depth):
            p = f"dense{b}.{i}"
            names += _bn(f"{p}.bn1") + [f"{p}.conv1.weight"] + _bn(f"{p}.bn2") + [f"{p}.conv2.weight"]
        if b < 4:
            names += _bn(f"trans{b}.bn") + [f"trans{b}.conv.weight"]
    return names + _bn("bn") + ["linear.weight", "linear.bias"]


INCEPTION_BLOCK_CONVS = {
    "A": ["branch1x1", "branch5x5.0", "branch5x5.1", "branch3x3.0", "branch3x3.1", "branch3x3.2", "branchpool.1"],
    "B": ["branch3x3", "branch3x3stack.0", "branch3x3stack.1", "branch3x3stack.2"],
    "C": ["branch1x1"] + [f"branch7x7.{i}" for i in range(3)] + [f"branch7x7stack.{i}" for i in range(5)]
         + ["branch_pool.1"],
    "D": ["branch3x3.0", "branch3x3.1"] + [f"branch7x7.{i}" for i in range(4)],
    "E": ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3stack_1", "branch3x3stack_2",
          "branch3x3stack_3a", "branch3x3stack_3b", "branch_pool.1"],
}


def inceptionv3_names():
    names = []
    for stem in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"):
        names += _conv_bn(stem)
    for block, kind in zip(("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"), "AAABCCCCDEE"):
        for conv in INCEPTION_BLOCK_CONVS[kind]:
            names += _conv_bn(f"Mixed_{block}.{conv}")
    return names + ["linear.weight", "linear.bias"]


# --------------------------------------------------------------------------- the library's ImageNet ResNet


class LibraryBasicBlock(torch.nn.Module):
    """robustness/imagenet_models/resnet.py BasicBlock (groups 1, width 64, no dilation)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class LibraryBottleneck(torch.nn.Module):
    """robustness/imagenet_models/resnet.py Bottleneck: the stride on conv2, the 3x3."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.conv3 = torch.nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(planes * 4)
        self.relu = torch.nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class LibraryImageNetResNet(torch.nn.Module):
    """robustness/imagenet_models/resnet.py ResNet: conv1 7x7/2, bn1, relu, maxpool 3x3/2,
    layer1-4 (`downsample` = 1x1 conv + BN when the stride or the width changes), avgpool, fc.
    forward(x) takes normalized images and returns (logits, pre_out) as with_latent=True."""

    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = torch.nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.relu = torch.nn.ReLU(inplace=True)
        self.maxpool = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = torch.nn.AdaptiveAvgPool2d((1, 1))
        self.fc = torch.nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = torch.nn.Sequential(
                torch.nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                torch.nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return torch.nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        pre_out = torch.flatten(self.avgpool(x), 1)
        return self.fc(pre_out), pre_out


LIBRARY_IMAGENET = {"resnet18": (LibraryBasicBlock, (2, 2, 2, 2)), "resnet50": (LibraryBottleneck, (3, 4, 6, 3))}


def library_imagenet_resnet(name, num_classes, seed=0):
    """The library's ImageNet resnet18/resnet50 with random weights and BN statistics, in eval mode."""
    torch.manual_seed(seed)
    block, depths = LIBRARY_IMAGENET[name]
    net = LibraryImageNetResNet(block, depths, num_classes)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2), m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return net.eval()


LIBRARY_NAMES = {"resnet18": lambda: resnet_names((2, 2, 2, 2), False),
                 "resnet50": lambda: resnet_names((3, 4, 6, 3), True),
                 "vgg16": vgg16_names, "densenet121": densenet121_names, "inceptionv3": inceptionv3_names}


# --------------------------------------------------------------------------- checkpoints in the library's layout


def random_model(arch, seed=0):
    """An advfeat model with random weights and batch-norm statistics (so BN is not the identity)."""
    torch.manual_seed(seed)
    model = create_model(arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2), m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return model.eval()


def library_state(model, arch, conv_bias=None):
    """The classifier's state dict under the library's names (VGG: with conv biases `conv_bias(n)`)."""
    values = iter(model.state_dict().values())
    state = OrderedDict()
    for name in LIBRARY_NAMES[arch]():
        if arch == "vgg16" and name.endswith(".bias") and name.replace("bias", "weight") in state \
                and state[name.replace("bias", "weight")].dim() == 4:
            state[name] = conv_bias(state[name.replace("bias", "weight")].shape[0])
        else:
            state[name] = next(values)
    assert next(values, None) is None, "the library's names and advfeat's tensors must pair up exactly"
    return state


def attacker_checkpoint(classifier_state, mean=CIFAR10_MEAN, std=CIFAR10_STD, **extra):
    """The dict robustness/train.py saves: AttackerModel's state under DataParallel's module."""
    normalizer = {"new_mean": torch.tensor(mean)[:, None, None], "new_std": torch.tensor(std)[:, None, None]}
    model = OrderedDict()
    for prefix, part in (("normalizer.", normalizer), ("model.", classifier_state),
                         ("attacker.normalize.", normalizer), ("attacker.model.", classifier_state)):
        model.update({f"module.{prefix}{k}": v for k, v in part.items()})
    return {"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "schedule": None,
            "epoch": 150, **extra}


def foreign_object():
    """An instance of a class from a throwaway module that no longer exists when the file is read
    (as dill/cox objects are for advfeat)."""
    module = types.ModuleType("advfeat_throwaway_args")
    source = "class Parameters:\n    def __init__(self, **kw):\n        self.__dict__.update(kw)\n"
    exec(source, module.__dict__)  # noqa: S102  (a throwaway module)
    sys.modules[module.__name__] = module
    return module.Parameters(arch="resnet18", eps=0.5, constraint="2")


def save(obj, path, legacy):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    sys.modules.pop("advfeat_throwaway_args", None)  # the reader cannot import it
    return path


def images(n=6, seed=1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet18():
    return random_model("resnet18")


@pytest.fixture(scope="module")
def resnet18_files(resnet18, tmp_path_factory):
    """{legacy: the library's checkpoint of `resnet18`, holding a foreign object too}."""
    folder = tmp_path_factory.mktemp("robustness")
    return {legacy: save(attacker_checkpoint(library_state(resnet18, "resnet18"), args=foreign_object()),
                         folder / f"cifar_l2_0_5_{'legacy' if legacy else 'zip'}.pt", legacy)
            for legacy in (False, True)}


# --------------------------------------------------------------------------- import: logits


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_import_resnet18_gives_identical_logits(resnet18, resnet18_files, tmp_path, legacy, capsys):
    path = resnet18_files[legacy]
    assert main(["import", "robustness", str(path), "--arch", "resnet18", "--out", str(tmp_path / "m"),
                 "--eps", "0.5"]) == 0
    assert "imported resnet18" in capsys.readouterr().out
    model, card = load_model(tmp_path / "m")
    x = images()
    with torch.no_grad():
        assert torch.equal(model(x), resnet18(x))
        assert torch.equal(model.features(x), resnet18.features(x))
    assert card["source"] == "robustness" and card["arch"] == "resnet18" and card["num_classes"] == 10
    assert card["source_file"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["source_file"]["epoch"] == 150
    assert card["robust"] == {"norm": "l2", "eps": 0.5, "from": "--eps at import"}
    assert card["normalization"]["matches_cifar10"] and card["normalization"]["from"] == "the checkpoint's normalizer"


def test_imported_checkpoint_is_evaluated_and_synthesizes_d_r_from_the_cli(resnet18, resnet18_files, formats,
                                                                           fixture_arrays, tmp_path):
    """The issue's end to end: a library-layout file imported, evaluated, a small D_R made from it."""
    import json

    from conftest import run_cli

    data, model_dir = formats["python-folder"], tmp_path / "imported"
    code, _, err = run_cli("import", "robustness", str(resnet18_files[True]), "--out", str(model_dir), "--eps", "0.5")
    assert code == 0, err
    code, _, err = run_cli("eval", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "e.json"),
                           "--quiet")
    assert code == 0, err
    (_, _), (test_images, test_labels) = fixture_arrays
    with torch.no_grad():
        predicted = resnet18(torch.from_numpy(test_images).float() / 255).argmax(1).numpy()
    clean = json.loads((tmp_path / "e.json").read_text())["clean"]
    assert clean["n"] == len(test_labels) and clean["accuracy"] == pytest.approx((predicted == test_labels).mean())
    code, _, err = run_cli("synth", "--kind", "r", "--model", str(model_dir), "--data", str(data), "--subset", "10",
                           "--steps", "3", "--batch-size", "10", "--out", str(tmp_path / "d_r"), "--quiet")
    assert code == 0, err
    card = json.loads((tmp_path / "d_r" / "dataset.json").read_text())
    assert card["n"] == 10 and card["model"]["card"]["source"] == "robustness"


def test_foreign_objects_become_inert_stubs(resnet18, tmp_path):
    path = save({"args": foreign_object(), "w": torch.arange(6.0).view(2, 3)[:, 1:]}, tmp_path / "f.pt", legacy=True)
    loaded = read_torch_pickle(path)
    assert isinstance(loaded["args"], ForeignStub) and loaded["args"].origin == "advfeat_throwaway_args.Parameters"
    assert loaded["args"].state == {"arch": "resnet18", "eps": 0.5, "constraint": "2"}
    assert torch.equal(loaded["w"], torch.tensor([[1.0, 2.0], [4.0, 5.0]]))  # a strided view survives
    tagged = torch.arange(3.0)
    tagged.note = "a tensor with a Python attribute pickles through _rebuild_from_type_v2"
    path = save({"t": tagged, "p": torch.nn.Parameter(torch.ones(2))}, tmp_path / "g.pt", legacy=False)
    loaded = read_torch_pickle(path)
    assert torch.equal(loaded["t"], torch.arange(3.0)) and torch.equal(loaded["p"], torch.ones(2))


def test_model_flag_takes_a_checkpoint_file_and_tells_its_arch(resnet18, resnet18_files):
    model, card = load_model(resnet18_files[True])
    assert card["arch"] == "resnet18" and "robust" not in card
    x = images()
    with torch.no_grad():
        assert torch.equal(model(x), resnet18(x))


def test_a_foreign_normalizer_is_kept_and_used(resnet18, tmp_path):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    path = save(attacker_checkpoint(library_state(resnet18, "resnet18"), mean=mean, std=std), tmp_path / "n.pt", False)
    model, card = load_model(path)
    assert not card["normalization"]["matches_cifar10"] and card["normalization"]["mean"] == list(mean)
    x = images()
    with torch.no_grad():
        expected = resnet18.head(resnet18.neck(resnet18.activation(resnet18.trunk((x - 0.5) / 0.25))))
        torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=0)


def test_import_vgg16_folds_the_conv_biases_into_batch_norm(tmp_path):
    """The library's VGG convs have biases, advfeat's do not; the biases move into the BN means.
    The library's function: BN(conv(x) + b) with running mean m + b equals advfeat's BN(conv(x))
    with running mean m, so the source model's logits are the target."""
    source = random_model("vgg16")
    biases = torch.Generator().manual_seed(3)
    state = library_state(source, "vgg16", conv_bias=lambda c: torch.randn(c, generator=biases) * 0.1)
    for name in [n for n in state if n.endswith("running_mean")]:
        conv = int(name.split(".")[1]) - 1
        state[name] = state[name] + state[f"features.{conv}.bias"]
    path = save(attacker_checkpoint(state), tmp_path / "vgg.pt", legacy=False)
    model, card = load_model(path)
    assert card["arch"] == "vgg16"
    x = images(4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), atol=1e-5, rtol=1e-5)


def test_import_densenet121_reorders_the_concatenated_channels(tmp_path, monkeypatch):
    """The library's dense layers concatenate [new, input], advfeat's [input, new]. The source
    model, run with the library's order, is the library's net for these weights."""
    from advfeat.models.densenet import DenseLayer

    source = random_model("densenet121")
    path = save(attacker_checkpoint(library_state(source, "densenet121")), tmp_path / "d.pt", legacy=False)
    model, _ = load_model(path)
    x = images(1)
    with torch.no_grad():
        ours = model(x)
        monkeypatch.setattr(DenseLayer, "forward", lambda self, h: torch.cat([self.layer(h), h], 1))
        library = source(x)
        monkeypatch.undo()
        advfeat_order = source(x)
    torch.testing.assert_close(ours, library, atol=1e-6, rtol=1e-5)
    # Random weights leave the logits nearly constant: the channel order must still show.
    assert (ours - advfeat_order).abs().max() > 100 * (ours - library).abs().max()


def test_import_inceptionv3_gives_identical_logits(tmp_path):
    source = random_model("inceptionv3")
    path = save(attacker_checkpoint(library_state(source, "inceptionv3")), tmp_path / "i.pt", legacy=False)
    model, _ = load_model(path)
    x = images(2)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


# --------------------------------------------------------------------------- import: bad input


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(resnet18, tmp_path, legacy, capsys):
    marker, out = tmp_path / "pwned", tmp_path / "m"
    path = save(attacker_checkpoint(library_state(resnet18, "resnet18"), extra=Hostile(marker)), tmp_path / "h.pt",
                legacy)
    code = main(["import", "robustness", str(path), "--arch", "resnet18", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists() and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "refused" in err and "system" in err
    with pytest.raises(UserError, match="refused"):
        load_model(path)
    assert not marker.exists()


def test_stub_calls_never_run_code(tmp_path):
    """A callable the deny list does not know, importable even, is a stub: calling it records."""
    import io

    from advfeat.models.safe_pickle import RestrictedUnpickler

    module = types.ModuleType("advfeat_throwaway_payload")
    exec("import pathlib\ndef run_me(path):\n    pathlib.Path(path).touch()\n"  # noqa: S102
         "class Payload:\n    def __init__(self, path):\n        self.path = path\n"
         "    def __reduce__(self):\n        return run_me, (self.path,)\n", module.__dict__)
    sys.modules[module.__name__] = module
    marker = tmp_path / "pwned"
    try:
        data = pickle.dumps(module.Payload(str(marker)))
        loaded = RestrictedUnpickler(io.BytesIO(data)).load()
        assert isinstance(loaded, ForeignStub) and loaded.args == (str(marker),) and not marker.exists()
        pickle.loads(data)  # the same bytes, unrestricted, do run it: the check above could fail
        assert marker.exists()
    finally:
        sys.modules.pop(module.__name__)


def test_a_pickle_cannot_change_stubs_or_allowlisted_functions(tmp_path):
    """BUILD with state on a stub class or an allowlisted function is refused (torch's legacy
    loader reads `dump_patches` from classes and writes a .patch file when it is true)."""
    import io

    from advfeat.models.safe_pickle import RestrictedUnpickler

    key = b"X" + len(b"dump_patches").to_bytes(4, "little") + b"dump_patches"
    slot_state = b"N}" + key + b"\x88s\x86b."  # BUILD (None, {"dump_patches": True}): setattr
    dict_state = b"}" + key + b"\x88sb."  # BUILD {"dump_patches": True}: the object's __dict__
    for target in (b"cforeign_pkg\nSomeClass\n", b"ctorch._utils\n_rebuild_tensor_v2\n"):
        for state in (slot_state, dict_state):
            with pytest.raises((pickle.UnpicklingError, AttributeError, TypeError)):  # each: refused
                RestrictedUnpickler(io.BytesIO(b"\x80\x02" + target + state)).load()


def test_a_pickled_module_is_refused_and_writes_no_patch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match="pickled nn.Module"):
        read_torch_pickle(tmp_path / "whole.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole.pt"]


def test_keys_of_another_arch_name_the_first_missing_and_unexpected(resnet18_files, tmp_path, capsys):
    path = resnet18_files[False]
    code = main(["import", "robustness", str(path), "--arch", "resnet50", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "m").exists() and len(err.strip().splitlines()) == 1
    assert "missing 'trunk.2.residual.4.0.weight'" in err and "unexpected" in err


def test_a_renamed_key_is_named_in_the_library_s_terms(resnet18, tmp_path, capsys):
    state = library_state(resnet18, "resnet18")
    state["layer1.0.convX.weight"] = state.pop("layer1.0.conv1.weight")
    path = save(attacker_checkpoint(state), tmp_path / "bad.pt", legacy=False)
    assert main(["import", "robustness", str(path), "--arch", "resnet18", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "missing 'trunk.2.residual.0.0.weight'" in err and "unexpected 'layer1.0.convX.weight'" in err


def test_other_bad_files_are_one_line(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    for path, words in ((tmp_path / "missing.pt", "does not exist"), (tmp_path / "junk.pt", "not a readable"),
                        (scripted, "TorchScript")):
        assert main(["import", "robustness", str(path), "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    assert main(["import", "robustness", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "m"), "--eps", "-1"]) == 2
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- import: the ImageNet ResNets

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # robustness/datasets.py
RESTRICTED_MEAN, RESTRICTED_STD = (0.4717, 0.4499, 0.3837), (0.2600, 0.2516, 0.2575)


def imagenet_images(n=2, seed=1):
    """64x64: the ImageNet ResNets take any size (registry: padded convs and pools only); 224 is slow here."""
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def library_forward(net, x, mean, std):
    """AttackerModel's forward: the normalizer (clamp to [0, 1], standardize), then the net's (logits, pre_out)."""
    h = (x.clamp(0, 1) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return net(h)


@pytest.fixture(scope="module")
def imagenet_resnet18(tmp_path_factory):
    """(the library's ImageNet resnet18 with a 9-class head, its Restricted ImageNet checkpoint)."""
    net = library_imagenet_resnet("resnet18", 9)
    path = tmp_path_factory.mktemp("robustness_imagenet") / "restricted_imagenet_l2_3_0.pt"
    return net, save(attacker_checkpoint(net.state_dict(), RESTRICTED_MEAN, RESTRICTED_STD), path, legacy=False)


def test_the_library_s_imagenet_resnet_written_here_is_torchvision_s():
    """The oracle's transcription checked: the library's ImageNet ResNet is torchvision's, same
    names, shapes and forward."""
    torchvision = pytest.importorskip("torchvision")
    net = library_imagenet_resnet("resnet18", 9)
    reference = torchvision.models.resnet18(num_classes=9).eval()
    reference.load_state_dict(net.state_dict())  # strict: the same names and shapes
    x = imagenet_images()
    with torch.no_grad():
        assert torch.equal(net(x)[0], reference(x))


@pytest.mark.parametrize("num_classes, mean, std, arch_flag", [
    (9, RESTRICTED_MEAN, RESTRICTED_STD, ["--arch", "resnet18_imagenet"]),
    (1000, IMAGENET_MEAN, IMAGENET_STD, []),
], ids=["restricted-imagenet", "imagenet-guessed"])
def test_import_imagenet_resnet18_gives_the_library_s_logits(imagenet_resnet18, num_classes, mean, std, arch_flag,
                                                             tmp_path, capsys):
    if num_classes == 9:
        net, path = imagenet_resnet18
    else:
        net = library_imagenet_resnet("resnet18", num_classes, seed=1)
        path = save(attacker_checkpoint(net.state_dict(), mean, std), tmp_path / "imagenet.pt", legacy=True)
    assert main(["import", "robustness", str(path), *arch_flag, "--out", str(tmp_path / "m"), "--eps", "3"]) == 0
    assert f"imported resnet18_imagenet ({num_classes} classes" in capsys.readouterr().out
    model, card = load_model(tmp_path / "m")
    x = imagenet_images()
    with torch.no_grad():
        logits, features = model(x, return_features=True)
        library_logits, pre_out = library_forward(net, x, mean, std)
    assert logits.shape == (2, num_classes)
    assert torch.equal(logits, library_logits) and torch.equal(features, pre_out)
    assert card["arch"] == "resnet18_imagenet" and card["num_classes"] == num_classes and card["feature_dim"] == 512
    norm = card["normalization"]
    assert norm["mean"] == pytest.approx(mean) and norm["std"] == pytest.approx(std) and not norm["matches_cifar10"]
    assert norm["from"] == "the checkpoint's normalizer"


def test_import_imagenet_resnet50_puts_every_tensor_in_its_place(tmp_path):
    """ResNet-50 without a forward pass (slow on 2 cores): the strict load takes every key,
    and each of the library's tensors lands where advfeat's net registers the same layer (the
    two nets register their layers in the same order). A bare state dict, as torchvision's
    own files: ImageNet's normalization is assumed for 1000 classes."""
    net = library_imagenet_resnet("resnet50", 1000)
    path = save(net.state_dict(), tmp_path / "resnet50.pt", legacy=False)
    model, card = load_model(path)
    ours, theirs = model.state_dict(), net.state_dict()
    assert len(ours) == len(theirs) == 320
    assert all(torch.equal(a, b) for a, b in zip(ours.values(), theirs.values()))
    assert card["arch"] == "resnet50_imagenet" and card["num_classes"] == 1000 and card["feature_dim"] == 2048
    assert card["normalization"]["mean"] == list(IMAGENET_MEAN)
    assert card["normalization"]["from"] == "absent in the file; ImageNet's (1000 classes) assumed"


def test_a_missing_normalizer_is_assumed_from_the_architecture_and_classes():
    from pathlib import Path

    from advfeat.models.robustness_import import _normalization

    where = Path("f.pt")
    assert _normalization(None, where, "resnet18_imagenet", 9)["mean"] == list(RESTRICTED_MEAN)
    assert _normalization(None, where, "resnet50_imagenet", 1000)["std"] == list(IMAGENET_STD)
    assert _normalization(None, where, "resnet50", 10)["matches_cifar10"]


def test_a_cifar_checkpoint_named_imagenet_names_the_arch_it_fits(resnet18_files, imagenet_resnet18, tmp_path,
                                                                  capsys):
    _, imagenet_path = imagenet_resnet18
    for path, arch, right, stem in ((resnet18_files[False], "resnet18_imagenet", "resnet18", "3x3"),
                                    (imagenet_path, "resnet18", "resnet18_imagenet", "7x7"),
                                    (imagenet_path, "resnet50_imagenet", "resnet18_imagenet", "7x7")):
        code = main(["import", "robustness", str(path), "--arch", arch, "--out", str(tmp_path / "m")])
        err = capsys.readouterr().err
        assert code == 2 and not (tmp_path / "m").exists()
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert f"does not fit {arch}" in err and f"({stem} stem conv)" in err and err.strip().endswith(f"--arch {right}")


def test_an_imagenet_resnet_advfeat_lacks_is_told_as_one(tmp_path):
    """The library's ImageNet resnet34 (keys only: built on the meta device): no fit, and the
    message says what its stem says it is."""
    from pathlib import Path

    from advfeat.models.robustness_import import guess_arch

    with torch.device("meta"):
        state = LibraryImageNetResNet(LibraryBasicBlock, (3, 4, 6, 3)).state_dict()
    with pytest.raises(UserError, match=r"fit none .* ImageNet ResNet \(7x7 stem conv\)"):
        guess_arch(state, Path("resnet34.pt"))


# --------------------------------------------------------------------------- any nn.Module


@pytest.fixture(scope="module")
def wrapped_resnet18():
    torchvision = pytest.importorskip("torchvision")
    from advfeat.models import wrap

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    return wrap(net, CIFAR10_MEAN, CIFAR10_STD, input_size=(3, 32, 32), num_classes=10), net


def test_wrap_takes_features_at_the_last_linear(wrapped_resnet18):
    model, net = wrapped_resnet18
    x = images(4)
    with torch.no_grad():
        logits, features = model(x, return_features=True)
        h = (x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        trunk = torch.nn.Sequential(*list(net.children())[:-1])  # torchvision's resnet up to its avgpool
        assert torch.equal(logits, net(h)) and torch.equal(features, trunk(h).flatten(1))
    assert model.feature_dim == 512 and model.num_classes == 10 and not model.fake_relu_available
    with pytest.raises(UserError, match="fake_relu is unavailable"):
        model(x, return_features=True, fake_relu=True)


def test_wrap_features_survive_the_attack_view_folding_its_sequential():
    """Attacks call a copy whose Conv-BN pairs are folded, renumbering a Sequential's children:
    the features must still come from the same Linear."""
    from advfeat.attacks import batched_forward
    from advfeat.models import wrap

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    model = wrap(net).eval()
    x = images(5)
    with torch.no_grad():
        direct = model.features(x)
    torch.testing.assert_close(batched_forward(model, x, 5, features=True), direct, atol=1e-5, rtol=1e-5)
    assert model.card()["fake_relu"] == "unavailable" and model.card()["feature_dim"] == 8


def test_wrap_refuses_what_it_cannot_serve():
    from advfeat.models import wrap

    with pytest.raises(UserError, match=r"not \(1, 10\) logits"):
        wrap(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 7)))
    with pytest.raises(UserError, match="runs no nn.Linear"):
        wrap(torch.nn.Sequential(torch.nn.Conv2d(3, 10, 32), torch.nn.Flatten()))
    with pytest.raises(UserError, match="does not run on input size"):
        wrap(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 10)))


def test_wrapped_model_is_attacked_like_torchattacks_does(wrapped_resnet18):
    """advfeat's PGD on the wrapped model against torchattacks' on the same function; APGD
    must break at least as much as PGD."""
    torchattacks = pytest.importorskip("torchattacks")
    from advfeat.interop import ContiguousGradient

    from advfeat.attacks import apgd, frozen_view, make_threat, pgd

    model, _ = wrapped_resnet18
    x = images(8, seed=2)
    with torch.no_grad():
        y = model(x).argmax(1)  # clean accuracy 1 by construction
    eps = 0.1
    ours = pgd(model, x, y, threat=make_threat("l2", eps, "none"), steps=5, step_size=0.05, keep="last").x_adv
    theirs = torchattacks.PGDL2(ContiguousGradient(frozen_view(model, False, x.device)), eps=eps, alpha=0.05, steps=5,
                                random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=0)
    assert ((ours - x).flatten(1).norm(dim=1) <= eps + 1e-5).all()
    strong = apgd(model, x, y, norm="l2", eps=eps, n_iter=10).x_adv
    with torch.no_grad():
        pgd_acc = (model(ours).argmax(1) == y).float().mean()
        apgd_acc = (model(strong).argmax(1) == y).float().mean()
    assert pgd_acc < 1 and apgd_acc <= pgd_acc


def test_wrapped_model_is_evaluated(wrapped_resnet18):
    from advfeat.evaluation import AttackSpec, predict_tensor, robust_accuracy

    model, _ = wrapped_resnet18
    x = images(8, seed=3)
    y = predict_tensor(model, x, 4)
    result = robust_accuracy(model, x, y, [0.02, 0.2], AttackSpec(steps=5, batch_size=4, compile=False))
    small, large = (row["accuracy"] for row in result["robust"])
    assert result["clean_accuracy"] == 1.0 and 1.0 >= small >= large and large < 1.0


def test_wrapped_model_synthesizes_d_r(wrapped_resnet18):
    """16 images inverted through the wrapped model's features (fake_relu off): the feature
    distance falls; asking for fake_relu is one clear error."""
    from advfeat.data.arrays import Split
    from advfeat.settings import SynthSettings
    from advfeat.synthesis import sample_plan, synthesize_shard

    model, _ = wrapped_resnet18
    rng = np.random.default_rng(0)
    train = Split(rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8), np.arange(16) % 10)
    settings = SynthSettings.of("r", steps=20, step_size=0.5, batch_size=16, fake_relu=False, compile=False)
    plan = sample_plan(settings, train.labels, model.num_classes)
    arrays = synthesize_shard(model, train, plan, range(16), settings, torch.device("cpu"))
    assert arrays["images"].shape == (16, 3, 32, 32)
    assert arrays["final_distance"].mean() < 0.8 * arrays["initial_distance"].mean()
    with pytest.raises(UserError, match="fake_relu is unavailable"):
        synthesize_shard(model, train, plan, range(4), SynthSettings.of("r", steps=1, compile=False),
                         torch.device("cpu"))


def test_robustbench_without_the_package_is_one_line(monkeypatch, tmp_path):
    from advfeat.models import robustbench_model

    monkeypatch.setitem(sys.modules, "robustbench", None)  # import robustbench raises ImportError
    with pytest.raises(UserError, match="pip install robustbench"):
        robustbench_model("Standard", tmp_path)


def _load_file(name, path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def robustbench_zoo(monkeypatch):
    """RobustBench's own WideResNet and enums (from the robustbench package's files), in a
    stand-in zoo: the package's real zoo module needs timm and more, absent here."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the robustbench package's files are not present")
    root = Path(spec.submodule_search_locations[0]) / "model_zoo"
    enums = _load_file("robustbench.model_zoo.enums", root / "enums.py")
    wide_resnet = _load_file("robustbench_wide_resnet", root / "architectures" / "wide_resnet.py")
    zoo = types.ModuleType("robustbench.model_zoo")
    build = lambda: wide_resnet.WideResNet(depth=10, widen_factor=1)  # Standard is 28-10
    zoo.model_dicts = {enums.BenchmarkDataset.cifar_10: {enums.ThreatModel.Linf: {
        "Standard": {"model": build, "gdrive_id": "not used"},
        "Ensemble": {"model": build, "gdrive_id": ["a", "b"]}}}}
    package = types.ModuleType("robustbench")
    package.__path__ = []
    for name, module in (("robustbench", package), ("robustbench.model_zoo", zoo),
                         ("robustbench.model_zoo.enums", enums)):
        monkeypatch.setitem(sys.modules, name, module)
    return build


def test_robustbench_model_by_name_from_a_local_weights_file(robustbench_zoo, tmp_path):
    from advfeat.models import robustbench_model

    torch.manual_seed(0)
    net = robustbench_zoo().eval()
    where = tmp_path / "cifar10" / "Linf"
    where.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, where / "Standard.pt")
    model = robustbench_model("Standard", model_dir=tmp_path)
    x = images(3)
    with torch.no_grad():
        logits, features = model(x, return_features=True)
        assert torch.equal(logits, net(x)) and torch.equal(net.fc(features), logits)
    assert model.feature_dim == net.fc.in_features and model.name == "robustbench:Standard"
    with pytest.raises(UserError, match="does not download"):
        robustbench_model("Standard", model_dir=tmp_path / "elsewhere")
    with pytest.raises(UserError, match="ensemble"):
        robustbench_model("Ensemble", model_dir=tmp_path)
    with pytest.raises(UserError, match="has no cifar10 Linf model 'Nope'"):
        robustbench_model("Nope", model_dir=tmp_path)
