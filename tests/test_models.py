"""Model registry: every architecture's shapes, penultimate size, built-in normalization,
its final activation (plain ReLU or the paper's fake_relu), and the CIFAR Inception-v3."""

from __future__ import annotations

import pytest
import torch

from advfeat.errors import UserError
from advfeat.models import create_model, model_names
from advfeat.models.classifier import FakeReLU, FinalActivation

FEATURE_DIMS = {"resnet50": 2048, "resnet18": 512, "vgg16": 512, "densenet121": 1024, "googlenet": 1024,
                "inceptionv3": 2048, "small": 128, "mid": 128, "tiny": 64, "mlp": 512,
                "vgg_mini": 32, "resnet_mini": 48, "wide_shallow": 128, "mobile_mini": 128,
                "resnet18_imagenet": 512, "resnet50_imagenet": 2048}
FIGURE_3_ARCHS = {"resnet50", "resnet18", "vgg16", "densenet121", "inceptionv3"}


def test_registry_holds_every_tested_model_and_figure_3():
    assert set(model_names()) == set(FEATURE_DIMS)  # a new architecture needs its row here
    assert FIGURE_3_ARCHS <= set(model_names())


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
    assert (features >= 0).all()  # pooled outputs of the final ReLU
    assert model.feature_dim == FEATURE_DIMS[name]


def test_resnet50_is_the_cifar_variant():
    model = create_model("resnet50")
    stem = model.trunk[0][0]
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
        by_hand = model.neck(model.activation(model.trunk((x - mean) / std)))
        torch.testing.assert_close(model.features(x), by_hand)
    assert "mean" not in model.state_dict(), "normalization is architecture, not weights"


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'resnet51'"):
        create_model("resnet51")


def test_renamed_inception_is_a_user_error_with_a_hint():
    assert create_model("googlenet").feature_dim == 1024
    hint = r"\('inception' was renamed 'googlenet'; the paper's Figure 3 uses 'inceptionv3'\)$"
    with pytest.raises(UserError, match=r"^unknown model 'inception'; choose one of .*" + hint):
        create_model("inception")


# --- The final activation and fake_relu --------------------------------------------------------

def test_fake_relu_is_relu_forward_and_identity_backward():
    x = torch.tensor([[-2.0, -0.5, 0.0], [0.25, 1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    y = FakeReLU.apply(x)
    assert torch.equal(y, x.relu())
    upstream = torch.randn_like(x)
    (grad,) = torch.autograd.grad(y, x, upstream)
    assert torch.equal(grad, upstream)  # passes through the units a ReLU would block
    # Where the ReLU is on, identity is its true derivative, so gradcheck agrees with finite differences.
    assert torch.autograd.gradcheck(FakeReLU.apply, (torch.rand(2, 3, dtype=torch.float64) + 0.1).requires_grad_())


def test_final_activation_switches_between_relu_and_fake_relu():
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    activation = FinalActivation()
    (plain,) = torch.autograd.grad(activation(x).sum(), x)
    (fake,) = torch.autograd.grad(activation(x, fake_relu=True).sum(), x)
    assert plain.tolist() == [0.0, 1.0] and fake.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
def test_fake_relu_keeps_forward_values(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits, features = model(x, return_features=True)
        fake_logits, fake_features = model(x, return_features=True, fake_relu=True)
    assert torch.equal(fake_logits, logits) and torch.equal(fake_features, features)


def inactive_feature(model, x) -> int:
    """A channel whose final pre-activation is negative at every position for x, so its ReLU is
    off everywhere and the pooled feature is 0. Its index in the features is the channel's."""
    seen = {}
    hook = model.activation.register_forward_hook(lambda module, args, out: seen.update(pre=args[0]))
    with torch.no_grad():
        features = model.features(x)
    hook.remove()
    pre = seen["pre"][0]
    assert pre.shape[0] == model.feature_dim  # pooling keeps channels: channel c is feature c
    off = (pre < 0).reshape(pre.shape[0], -1).all(1).nonzero().flatten()  # (C, H, W) or (C,) for the MLP
    assert len(off), "no inactive channel: does the trunk stop before its last ReLU?"
    unit = int(off[0])
    assert features[0, unit] == 0
    return unit


@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
def test_fake_relu_passes_gradient_where_the_relu_is_off(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.rand(1, 3, 32, 32)
    unit = inactive_feature(model, x)

    def input_gradient(fake_relu: bool) -> torch.Tensor:
        x_ = x.clone().requires_grad_()
        return torch.autograd.grad(model.features(x_, fake_relu=fake_relu)[0, unit], x_)[0]

    assert torch.count_nonzero(input_gradient(False)) == 0  # a plain ReLU that is off blocks everything
    assert torch.count_nonzero(input_gradient(True)) > 0


@pytest.mark.parametrize("name", ["googlenet", "inceptionv3"])
def test_inception_blocks_apply_their_branch_relus_after_the_concat(name):
    from advfeat.models.classifier import ConcatThenReLU

    model = create_model(name).eval()
    outputs = []
    for block in model.modules():
        if isinstance(block, ConcatThenReLU):  # the last block runs as pre_activation, so no hook fires
            block.register_forward_hook(lambda module, args, out: outputs.append(out))
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    assert len(outputs) == sum(isinstance(m, ConcatThenReLU) for m in model.modules()) - 1
    assert all((out >= 0).all() and (out == 0).any() for out in outputs)


# --- The robustness library's CIFAR Inception-v3 ------------------------------------------------

# Measured by building the library's own model from its source, robustness/cifar_models/inception.py
# `InceptionV3(num_classes=10)` (MadryLab/robustness at a9541241), and summing p.numel() over its
# parameters. Loaded with that model's weights in order, ours gave the same logits and features.
LIBRARY_INCEPTIONV3_PARAMETERS = 22_133_738


def test_inceptionv3_has_the_library_parameter_count():
    model = create_model("inceptionv3")
    assert sum(p.numel() for p in model.parameters()) == LIBRARY_INCEPTIONV3_PARAMETERS


def test_inceptionv3_spatial_sizes_are_the_library_ones():
    from advfeat.models.inceptionv3 import InceptionB, InceptionD

    model = create_model("inceptionv3").eval()
    shapes = {}

    def record(key):
        return lambda module, args, out: shapes.update({key: tuple(out.shape[1:])})

    model.trunk[4].register_forward_hook(record("stem"))  # the unpadded 3x3 conv: 32 -> 30
    next(m for m in model.modules() if isinstance(m, InceptionB)).register_forward_hook(record("reduce 1"))
    next(m for m in model.modules() if isinstance(m, InceptionD)).register_forward_hook(record("reduce 2"))
    model.activation.register_forward_hook(record("final"))
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    assert shapes == {"stem": (192, 30, 30), "reduce 1": (768, 14, 14), "reduce 2": (1280, 6, 6),
                      "final": (2048, 6, 6)}


def test_inceptionv3_keeps_the_library_dropout_after_pooling():
    neck = create_model("inceptionv3").neck
    pooled_ones = torch.ones(4, 2048, 6, 6)
    torch.manual_seed(0)
    dropped = neck.train()(pooled_ones)
    # Dropout2d(p=0.5) on the pooled (B, 2048, 1, 1) map: whole features zeroed, the rest doubled.
    assert set(dropped.unique().tolist()) == {0.0, 2.0} and 0.45 < (dropped == 0).float().mean() < 0.55
    assert torch.equal(neck.eval()(pooled_ones), torch.ones(4, 2048))  # the identity in eval mode


def test_inceptionv3_features_are_what_the_head_sees_in_training_mode():
    torch.manual_seed(0)
    model = create_model("inceptionv3").train()  # one dropout mask, shared by features and logits
    logits, features = model(torch.rand(2, 3, 32, 32), return_features=True)
    torch.testing.assert_close(model.head(features), logits)
