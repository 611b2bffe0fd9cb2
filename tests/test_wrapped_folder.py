"""Wrapped nn.Modules and RobustBench models saved as advfeat model folders (wrapped_folder.py):
safetensors weights and a card with a recipe; the round trip gives identical logits."""

from __future__ import annotations

import hashlib
import sys

import pytest
import torch

from advfeat.checkpoint import load_model
from advfeat.errors import UserError
from advfeat.models import create_model, save_wrapped, wrap
from advfeat.models.classifier import CIFAR10_MEAN, CIFAR10_STD

from conftest import run_cli
from test_model_import import images, robustbench_zoo  # noqa: F401 (a fixture)
from test_more_data import write_png_folders

torchvision = pytest.importorskip("torchvision")


def same_outputs(a, b, x) -> bool:
    with torch.no_grad():
        (la, fa), (lb, fb) = a(x, return_features=True), b(x, return_features=True)
    return torch.equal(la, lb) and torch.equal(fa, fb)


@pytest.fixture(scope="module")
def resnet18_folder(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    wrapped = wrap(net, CIFAR10_MEAN, CIFAR10_STD, (3, 32, 32), 10, origin={"paper": "a test"})
    folder = tmp_path_factory.mktemp("wrapped") / "resnet18"
    card = save_wrapped(folder, wrapped)
    return wrapped, folder, card


def test_torchvision_model_round_trips_with_identical_logits(resnet18_folder):
    wrapped, folder, card = resnet18_folder
    model, loaded_card = load_model(folder)
    assert same_outputs(model, wrapped, images(5))
    assert loaded_card == card and card["arch"] == "torchvision:resnet18" and card["source"] == "wrapped"
    assert card["origin"] == {"paper": "a test"} and card["fake_relu"] == "unavailable"
    assert card["normalization"]["std"] == pytest.approx(list(CIFAR10_STD))
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.safetensors"]  # no pickle


def test_wrapped_folder_is_a_model_for_the_cli(resnet18_folder, tmp_path):
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_png_folders(tmp_path / "data", classes, per_class=1, size=32)
    _, folder, _ = resnet18_folder
    code, out, err = run_cli("eval", "--model", str(folder), "--data", str(tmp_path / "data"), "--quiet")
    assert code == 0, err
    assert "torchvision:resnet18 on 10 test images" in out


def test_advfeat_classifier_round_trips_with_its_own_normalization(tmp_path):
    torch.manual_seed(1)
    net = create_model("tiny", 4).eval()
    net.mean.fill_(0.5), net.std.fill_(0.3)  # not CIFAR-10's: the recipe must carry them
    wrapped = wrap(net, num_classes=4)
    card = save_wrapped(tmp_path / "m", wrapped)
    assert card["recipe"]["name"] == "tiny" and card["recipe"]["normalization"]["std"] == pytest.approx([0.3] * 3)
    model, _ = load_model(tmp_path / "m")
    assert same_outputs(model, wrapped, images(3))


def test_same_shapes_but_other_computation_is_refused(tmp_path):
    net = torchvision.models.resnet18(num_classes=10).eval()
    net.conv1.stride = (1, 1)  # the CIFAR adaptation: torchvision's builder would not rebuild it
    with pytest.raises(UserError, match="cannot be saved as an advfeat model folder: .*other logits") as err:
        save_wrapped(tmp_path / "m", wrap(net))
    assert "\n" not in str(err.value) and not (tmp_path / "m").exists()


def test_a_class_advfeat_cannot_build_is_one_line(tmp_path):
    class Mine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(UserError, match="Mine cannot be saved .* does not pickle code"):
        save_wrapped(tmp_path / "m", wrap(Mine()))
    assert not (tmp_path / "m").exists()


def test_a_replaced_head_is_found_by_its_shapes(tmp_path):
    net = torchvision.models.resnet18()  # 1000 classes, then the usual fine-tuning head
    net.fc = torch.nn.Linear(512, 3)
    wrapped = wrap(net.eval(), num_classes=3)
    save_wrapped(tmp_path / "m", wrapped)
    model, card = load_model(tmp_path / "m")
    assert card["arch"] == "torchvision:resnet18" and same_outputs(model, wrapped, images(2))


def test_robustbench_model_is_saved_and_loaded(robustbench_zoo, tmp_path, monkeypatch):  # noqa: F811
    torch.manual_seed(0)
    net = robustbench_zoo().eval()
    weights = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    weights.parent.mkdir(parents=True)
    torch.save({"state_dict": net.state_dict()}, weights)
    code, _, err = run_cli("import", "robustbench", "Standard", "--model-dir", str(tmp_path), "--out",
                             str(tmp_path / "m"))
    assert code == 0, err
    model, card = load_model(tmp_path / "m")
    x = images(3)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert card["recipe"] == {"builder": "robustbench", "name": "Standard", "dataset": "cifar10", "threat_model": "Linf"}
    assert card["origin"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    monkeypatch.setitem(sys.modules, "robustbench.model_zoo", None)  # the package gone: one line
    with pytest.raises(UserError, match="needs the robustbench package"):
        load_model(tmp_path / "m")
