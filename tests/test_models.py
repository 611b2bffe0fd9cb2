"""Model registry: every architecture's shapes, penultimate size and built-in normalization."""

from __future__ import annotations

import pytest
import torch

from advfeat.errors import UserError
from advfeat.models import create_model, model_names

FEATURE_DIMS = {"resnet50": 2048, "resnet18": 512, "vgg16": 512, "densenet121": 1024, "inception": 1024,
                "small": 128, "tiny": 64}


def test_registry_holds_the_paper_models():
    assert set(FEATURE_DIMS) <= set(model_names())


@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
def test_shapes_and_penultimate_features(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits, features = model(x, return_features=True)
        plain = model(x)
    assert logits.shape == (2, 7) and features.shape == (2, FEATURE_DIMS[name])
    torch.testing.assert_close(plain, logits)
    torch.testing.assert_close(model.head(features), logits)  # features are the head's input
    assert model.feature_dim == FEATURE_DIMS[name]


def test_resnet50_is_the_cifar_variant():
    model = create_model("resnet50")
    stem = model.body[0][0]
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert sum(type(m).__name__ == "Bottleneck" for m in model.modules()) == 3 + 4 + 6 + 3
    assert model.head.in_features == 2048 and model.head.out_features == 10


def test_normalization_lives_inside_the_model():
    model = create_model("tiny").eval()
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), model.body((x - mean) / std))
    assert "mean" not in model.state_dict(), "normalization is architecture, not weights"


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'resnet51'"):
        create_model("resnet51")
