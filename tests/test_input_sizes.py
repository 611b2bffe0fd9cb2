"""Registry architectures on images other than 32x32: each declares the sizes it accepts
(registry.InputSizes); the declaration is checked against the forward pass itself, and
training through the CLI on a 64x64 image folder either works or is one line, exit 2."""

from __future__ import annotations

import pytest
import torch

from advfeat.errors import UserError
from advfeat.models import create_model, model_names
from advfeat.models.registry import archs_accepting, check_input_size, input_sizes

from conftest import run_cli
from test_more_data import write_png_folders


def runs_on(name: str, size: int) -> bool:
    """Whether a fresh `name` computes logits for two size x size images (eval mode)."""
    model = create_model(name, 3).eval()
    try:
        with torch.no_grad():
            return tuple(model(torch.rand(2, 3, size, size)).shape) == (2, 3)
    except RuntimeError:
        return False


@pytest.mark.parametrize("name", model_names())
def test_declared_sizes_are_the_forward_passes_limits(name):
    sizes = input_sizes(name)
    assert sizes.accepts(32, 32), "every registry architecture keeps taking CIFAR's 32x32"
    if sizes.fixed is not None:
        side = sizes.fixed[0]
        assert runs_on(name, side) and not runs_on(name, side - 1) and not runs_on(name, side + 1)
    else:
        assert runs_on(name, sizes.minimum)
        assert sizes.minimum == 1 or not runs_on(name, sizes.minimum - 1)


def test_refusal_names_the_size_and_the_architectures_that_accept_it():
    with pytest.raises(UserError) as err:
        check_input_size("vgg16", (3, 16, 16))
    message = str(err.value)
    assert "16x16" in message and "five 2x2 max-pools" in message and "\n" not in message
    accepting = archs_accepting(16, 16)
    assert "vgg16" not in accepting and "mlp" not in accepting and "resnet18" in accepting
    assert message.endswith(", ".join(accepting))
    with pytest.raises(UserError, match="3-channel"):
        check_input_size("tiny", (1, 32, 32))


@pytest.fixture(scope="module")
def folder64(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder64")
    write_png_folders(root, ["cat", "dog"], per_class=2, size=64)
    return root


@pytest.mark.parametrize("name", model_names())
def test_every_architecture_trains_on_64x64_or_says_why_not(folder64, tmp_path, name):
    from advfeat.checkpoint import load_model

    out = tmp_path / "model"
    code, _, err = run_cli("train", "--data", str(folder64), "--out", str(out), "--arch", name, "--epochs", "1",
                           "--batch-size", "2", "--quiet")
    if input_sizes(name).accepts(64, 64):
        assert code == 0, err
        model, card = load_model(out)
        assert card["input_size"] == [3, 64, 64] and model.num_classes == 2
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "64x64" in err and ", ".join(archs_accepting(64, 64)) in err
        assert not out.exists()


def test_eval_of_a_32x32_only_model_on_64x64_data_is_one_line(folder64, tmp_path):
    from advfeat.checkpoint import save_model

    save_model(tmp_path / "mlp", create_model("mlp", 2), {"kind": "model", "arch": "mlp", "num_classes": 2})
    code, _, err = run_cli("eval", "--model", str(tmp_path / "mlp"), "--data", str(folder64), "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "mlp takes images of exactly 32x32" in err, err
