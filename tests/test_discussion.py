"""The Distill discussion's experiments (advfeat.discussion): closed forms, invariants, brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advfeat.errors import UserError

# --------------------------------------------------------------------------- Nakkiran's squares


def test_linf_radius_is_exact_by_brute_force():
    from advfeat.discussion.squares import linf_radius

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(50, generator=g), 0.3
    x = torch.randn(20, 50, generator=g)
    radius = linf_radius(w, b, x)
    side = torch.sign(x @ w + b)
    # The worst L-inf perturbation of a linear score moves every coordinate by r against sign(w).
    toward = -side[:, None] * torch.sign(w)[None, :]
    for factor, flips in ((1 + 1e-4, True), (1 - 1e-4, False)):
        moved = x + factor * radius[:, None] * toward
        assert bool(((torch.sign(moved @ w + b) != side) == flips).all())


def test_brightness_classifier_worst_case_radius_is_0_9():
    """A black image whose noise is +0.1 everywhere is the worst case: margin 1 - 0.1 (comment units)."""
    from advfeat.discussion.squares import (
        SCALE,
        SHAPE,
        brightness_classifier,
        linf_radius,
    )

    w, b = brightness_classifier()
    worst_black = torch.full((1, *SHAPE), 0.5 + SCALE * (-1 + 0.1))
    assert linf_radius(w, b, worst_black).item() / SCALE == pytest.approx(0.9, abs=1e-5)


def test_label_noise_rate_is_exact_and_flips_only_the_chosen():
    from advfeat.discussion.squares import SquaresSettings, flip_labels, squares_data

    labels = torch.randint(0, 2, (1000,), generator=torch.Generator().manual_seed(1))
    noisy, flipped = flip_labels(labels, 0.1, torch.Generator().manual_seed(2))
    assert int(flipped.sum()) == 100
    assert bool((noisy[flipped] != labels[flipped]).all()) and bool((noisy[~flipped] == labels[~flipped]).all())
    data = squares_data(SquaresSettings(n_train=300, n_test=10, width=300), seed=0)
    x, y = data["train"]
    colour = (x.flatten(1).mean(1) > 0.5).long()  # the noise cannot hide the colour
    assert float((colour != y).float().mean()) == pytest.approx(0.1)
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_gd_coefficients_match_explicit_gradient_descent():
    from advfeat.discussion.squares import gd_coefficients

    g = torch.Generator().manual_seed(3)
    h = torch.randn(12, 30, generator=g, dtype=torch.float64)
    targets = torch.sign(torch.randn(12, generator=g, dtype=torch.float64))
    kernel = h @ h.T
    eta = 1 / torch.linalg.eigvalsh(kernel).max()
    v = torch.zeros(30, dtype=torch.float64)
    for _ in range(7):
        v = v - eta * h.T @ (h @ v - targets)
    assert torch.allclose(h.T @ gd_coefficients(kernel, targets, 7), v, atol=1e-10)
    limit = h.T @ gd_coefficients(kernel, targets, None)
    assert torch.allclose(h @ limit, targets, atol=1e-8)  # the limit interpolates
    assert torch.allclose(limit, torch.linalg.pinv(h) @ targets, atol=1e-8)  # with the minimum norm


def test_squares_overfit_model_interpolates_noisy_labels():
    from advfeat.discussion.squares import (
        SquaresSettings,
        squares_data,
        train_squares_models,
    )

    settings = SquaresSettings(n_train=64, n_test=8, width=256)
    data = squares_data(settings, seed=0)
    models = train_squares_models(settings, data, seed=0)
    x, y = data["train"]
    assert bool((models["overfit"](x).argmax(1) == y).all())
    early = models["early"](x).argmax(1)
    colour = (x.flatten(1).mean(1) > 0.5).long()
    assert bool((early == colour).all())  # a few steps learn the colour, not the flipped labels


def test_squares_settings_refuse_bad_input():
    from advfeat.discussion.squares import SquaresSettings

    for bad in ({"eps": 0}, {"label_noise": 0.6}, {"width": 10, "n_train": 100}):
        with pytest.raises(UserError):
            SquaresSettings(**bad)


def test_judge_squares_reads_seeds_and_images():
    from advfeat.discussion.squares import judge_squares

    def result(overfit, early):
        return {"settings": {"eps": 0.01}, "overfit": {"flip_rate": np.mean(overfit), "flipped": overfit},
                "early": {"flip_rate": np.mean(early), "flipped": early}}

    one = judge_squares({0: result([1] * 95 + [0] * 5, [0] * 100)})
    assert one["verdict"] == "holds" and one["parts"][0]["interval"]["method"].endswith("Wilson interval")
    none = judge_squares({s: result([0] * 100, [0] * 100) for s in range(3)})
    assert none["verdict"] == "does not hold"
    assert "0.9" in none["reference"]["value"]


# --------------------------------------------------------------------------- Gilmer & Hendrycks


@pytest.mark.parametrize("u,v", [(0, 0), (3, 5), (-7, 2), (16, 16), (0, 16), (5, 0)])
def test_fourier_basis_has_its_norm_and_only_its_frequency(u, v):
    from advfeat.discussion.fourier import fourier_basis

    basis = fourier_basis(u, v, norm=4.0).double()
    assert basis.norm().item() == pytest.approx(4.0, rel=1e-6)
    energy = torch.fft.fft2(basis).abs()
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[u % 32, v % 32] = mask[-u % 32, -v % 32] = True
    assert energy[~mask].max().item() < 1e-6 * energy.max().item()  # float32 rounding only
    assert energy[mask].min().item() > 0.1


def test_fourier_grid_covers_every_basis_once_up_to_the_mirrored_rows():
    from advfeat.discussion.fourier import frequency_grid

    rows, columns = frequency_grid()
    assert (len(rows), len(columns)) == (17, 32)
    classes = {frozenset({(u % 32, v % 32), (-u % 32, -v % 32)}) for v in rows for u in columns}
    assert len(classes) == (32 * 32 + 4) // 2  # all 514 distinct real bases of a 32x32 image
    assert frequency_grid(2) == (list(range(0, 17, 2)), list(range(-15, 17, 2)))


def test_filters_are_complementary_idempotent_projections():
    from advfeat.discussion.fourier import highpass, lowpass

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lowpass(x, 16), x, atol=1e-6)  # every frequency has max(|f_x|, |f_y|) <= 16
    for cutoff in (1, 4, 12.5):
        low = lowpass(x, cutoff)
        assert torch.allclose(lowpass(low, cutoff), low, atol=1e-6)
        assert torch.allclose(highpass(highpass(x, cutoff), cutoff), highpass(x, cutoff), atol=1e-6)
        assert torch.allclose(low + highpass(x, cutoff), x, atol=1e-6)
        assert lowpass(highpass(x, cutoff), cutoff).abs().max().item() < 1e-5
    # Brute force: the low-pass keeps a basis image at its frequency and removes one above it.
    from advfeat.discussion.fourier import fourier_basis

    inside, outside = fourier_basis(4, -3), fourier_basis(5, 1)
    assert torch.allclose(lowpass(inside, 4), inside, atol=1e-6)
    assert lowpass(outside, 4).abs().max().item() < 1e-6


@pytest.mark.parametrize("cutoff", [0, -1, 16.5, 32])
def test_bad_cutoff_is_a_user_error_naming_the_range(cutoff):
    from advfeat.discussion.fourier import lowpass

    with pytest.raises(UserError, match=r"\(0, 16\]"):
        lowpass(torch.zeros(1, 1, 32, 32), cutoff)


@pytest.mark.parametrize("norm", [0, -4])
def test_bad_noise_norm_is_a_user_error(norm):
    from advfeat.discussion.fourier import FourierSettings, fourier_basis

    with pytest.raises(UserError, match="> 0"):
        fourier_basis(1, 1, norm)
    with pytest.raises(UserError, match="> 0"):
        FourierSettings(norm=norm)


def test_fog_is_low_frequency_and_keeps_range():
    from advfeat.discussion.fourier import fog, fog_field, frequency_radius

    g = torch.Generator().manual_seed(0)
    field = fog_field(8, 2.5, g)
    assert float(field.min()) == 0.0 and float(field.max()) == pytest.approx(1.0)
    spectrum = torch.fft.fft2(field - field.mean((1, 2), keepdim=True)).abs().pow(2).mean(0)
    radius = frequency_radius()
    assert spectrum[radius <= 4].sum() > 0.95 * spectrum.sum()  # almost all energy at the lowest frequencies
    x = torch.rand(8, 3, 32, 32, generator=g)
    foggy = fog(x, 3, g)
    assert float(foggy.min()) >= 0 and float(foggy.max()) <= 1
    with pytest.raises(UserError, match="1..5"):
        fog(x, 6, g)


def test_fourier_error_map_of_a_constant_model():
    """A model that always says class 0 errs exactly on the images of other classes, at every frequency."""
    from advfeat.discussion.fourier import band_errors, fourier_error_map

    class Constant(torch.nn.Module):
        num_classes = 10

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float() + 0 * x.sum()

    y = torch.tensor([0, 1, 2, 0])
    heat = fourier_error_map(Constant(), torch.rand(4, 3, 32, 32), y, 4.0, 4, seed=0)
    assert heat["errors"].shape == (5, 8, 4)
    assert (heat["errors"] == np.array([0, 1, 1, 0])).all()
    assert band_errors(heat, (0, 4)).tolist() == [0, 1, 1, 0]


# --------------------------------------------------------------------------- Wallace


def test_teacher_and_student_images_are_disjoint_halves():
    from advfeat.discussion.wrong_labels import disjoint_halves

    teacher, student = disjoint_halves(101, seed=3)
    assert len(np.intersect1d(teacher, student)) == 0
    assert sorted(np.r_[teacher, student].tolist()) == list(range(101))
    assert abs(len(teacher) - len(student)) <= 1
    assert not np.array_equal(disjoint_halves(101, seed=4)[0], teacher)


def test_every_kept_label_is_wrong():
    """A teacher that is right on some images and wrong on others: only the wrong ones are kept,
    each with the teacher's label, which is never the true one."""
    from advfeat.discussion.wrong_labels import wrong_label_set

    class Teacher(torch.nn.Module):
        num_classes = 10

        def forward(self, x):  # predicts round(9 * mean pixel)
            return torch.nn.functional.one_hot((x.mean((1, 2, 3)) * 9).round().long(), 10).float() + 0 * x.sum()

    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 3, 32, 32, generator=g) ** torch.rand(200, 1, 1, 1, generator=g).mul(4)
    y = torch.randint(0, 10, (200,), generator=g)
    predicted = (x.mean((1, 2, 3)) * 9).round().long()
    kept_x, kept_labels, kept_true = wrong_label_set(Teacher(), x, y, batch_size=64)
    assert len(kept_labels) == int((predicted != y).sum()) > 0
    assert bool((kept_labels != kept_true).all())
    assert torch.equal(kept_labels, predicted[predicted != y]) and torch.equal(kept_x, x[predicted != y])


def test_toy_mlp_fits_random_labels():
    from advfeat.discussion.wrong_labels import WrongLabelsSettings, toy_fit

    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(32, 2, generator=g), torch.randint(0, 2, (32,), generator=g)
    model = toy_fit(x, y, WrongLabelsSettings().toy_steps, seed=5)
    assert bool((model(x).argmax(1) == y).all())


def test_judge_wrong_labels_verdicts():
    from advfeat.discussion.wrong_labels import judge_wrong_labels

    def outcomes(acc, n):
        return [1] * round(acc * n) + [0] * (n - round(acc * n))

    def seed_result(acc, cross_acc, toy_acc, n=100):
        return {"mislabelled": {"student_test_accuracy": acc, "correct": outcomes(acc, n)},
                "cross": {"student_test_accuracy": cross_acc, "chance": 0.2, "correct": outcomes(cross_acc, n)},
                "toy": {"accuracy": toy_acc, "right": round(toy_acc * n), "points": n}}

    held = judge_wrong_labels({s: seed_result(0.3 + 0.01 * s, 0.5, 0.7 + 0.01 * s) for s in range(3)})
    assert [c["verdict"] for c in held] == ["holds"] * 3
    assert held[0]["parts"][0]["interval"]["method"].startswith("mean of 3 seeds")
    # One seed: an interval over images; at chance on 2,000 images it lies wholly below chance + 5 points.
    at_chance = judge_wrong_labels({0: seed_result(0.1, 0.2, 0.5, n=2000)})
    assert [c["verdict"] for c in at_chance] == ["does not hold"] * 3
    small = judge_wrong_labels({0: seed_result(0.1, 0.2, 0.5, n=50)})
    assert [c["verdict"] for c in small] == ["inconclusive"] * 3  # 50 images cannot tell
    assert "49.7%" in held[0]["reference"]["value"]


# --------------------------------------------------------------------------- Goh's eigenfeatures


def _toy_images(n=300, d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(1.0, 0.01, d, dtype=torch.float64)
    y = torch.where(torch.rand(n, generator=g) < 0.5, 1, -1)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scales + 0.3 * y[:, None] * scales
    return x, y


def test_robust_usefulness_decomposition_equals_direct_computation():
    from advfeat.discussion.eigenfeatures import (
        feature_values,
        robust_usefulness,
        second_moment,
        worst_perturbation,
    )

    x, y = _toy_images()
    moment = second_moment(x)
    g = torch.Generator().manual_seed(1)
    for a in (torch.randn(40, generator=g, dtype=torch.float64), torch.eye(40, dtype=torch.float64)[39]):
        for eps in (0.0, 0.3, 1.0):
            closed = robust_usefulness(a, x, y, moment, eps)
            direct = float((y * feature_values(a, x + worst_perturbation(a, y, eps), moment)).mean())
            assert closed == pytest.approx(direct, rel=1e-10, abs=1e-12)
            # No other perturbation in the ball does worse (random points on the sphere).
            d = torch.randn(len(y), 40, generator=g, dtype=torch.float64)
            d = eps * d / d.norm(dim=1, keepdim=True)
            assert (y * feature_values(a, x + d, moment) >= y * feature_values(a, x + worst_perturbation(a, y, eps),
                                                                               moment) - 1e-12).all()


def test_eigenfeatures_are_unit_second_moment_and_non_robustness_is_inverse_sqrt_eigenvalue():
    from advfeat.discussion.eigenfeatures import (
        eigenfeatures,
        feature_values,
        non_robustness,
        second_moment,
    )

    x, _ = _toy_images()
    moment = second_moment(x)
    values, vectors = eigenfeatures(moment, 1e-9)
    for i in (0, 17, len(values) - 1):
        f = feature_values(vectors[:, i], x, moment)
        assert float((f ** 2).mean()) == pytest.approx(1.0, rel=1e-9)
        assert non_robustness(vectors[:, i], moment) == pytest.approx(float(values[i] ** -0.5), rel=1e-9)


def test_ensemble_usefulness_is_the_normalized_sum():
    from advfeat.discussion.eigenfeatures import (
        eigen_table,
        eigenfeatures,
        ensemble_vector,
        second_moment,
        usefulness,
    )

    x, y = _toy_images()
    moment = second_moment(x)
    values, vectors = eigenfeatures(moment, 1e-9)
    use = eigen_table(x, y, moment, vectors)
    members = np.zeros(len(values), dtype=bool)
    members[-10:] = True
    signs = np.sign(use)
    a = ensemble_vector(values, vectors, signs, members)
    assert usefulness(a, x, y, moment) == pytest.approx(np.abs(use[members]).sum() / np.sqrt(10), rel=1e-8)


def test_analyse_finds_a_useful_non_robust_feature_on_a_toy():
    from advfeat.discussion.eigenfeatures import (
        EigenSettings,
        analyse,
        judge_eigenfeatures,
    )

    result = analyse(EigenSettings(eps=1.0, ensemble_threshold=20.0), _toy_images(seed=0), _toy_images(seed=1))
    chosen = result["chosen"]
    assert chosen["test_usefulness"] > 0 > chosen["test_robust_usefulness"]
    judged = judge_eigenfeatures({0: {"settings": {"eps": 1.0}, **result}})
    assert judged["verdict"] == "holds"
    rows = result["containment"]["rows"]
    assert rows[-1]["alpha"] == 1.0 and rows[-1]["test_robust_usefulness"] > rows[0]["test_robust_usefulness"]


def test_gram_route_gives_the_second_moments_eigenfeatures():
    from advfeat.discussion.eigenfeatures import (
        eigenfeatures,
        eigenfeatures_of_data,
        second_moment,
    )

    x, _ = _toy_images(n=25, d=40)  # n < d: the Gram route
    values, vectors = eigenfeatures_of_data(x, 1e-9)
    ref_values, ref_vectors = eigenfeatures(second_moment(x), 1e-9)
    assert len(values) == len(ref_values) == 25
    assert torch.allclose(values, ref_values, rtol=1e-8)
    assert torch.allclose((vectors * ref_vectors).sum(0).abs(), torch.ones(25, dtype=torch.float64), atol=1e-6)


# --------------------------------------------------------------------------- the authors' R(f)


def test_identity_layer_ratio_is_eps_over_mean_pair_distance():
    from advfeat.discussion.layer_robustness import LayerSettings, ratio_terms

    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.1 * (torch.rand(9, 3, 8, 8, generator=g) - 0.5)  # far from the box: the ball fits inside
    settings = LayerSettings(eps=0.25, pairs=8, steps=5)
    terms = ratio_terms(torch.nn.Flatten(), x, settings)
    apart = (x[:-1] - x[1:]).flatten(1).norm(dim=1)
    assert np.allclose(terms["moved"], 0.25, rtol=1e-4)
    assert terms["ratio"] == pytest.approx(0.25 / float(apart.mean()), rel=1e-4)


def test_layer_names_and_bad_name():
    from advfeat.discussion.layer_robustness import (
        LayerOutput,
        LayerSettings,
        layer_names,
        ratio_terms,
    )
    from advfeat.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny", 10).eval()
    names = layer_names(model)
    assert names[-1] == "activation" and len(names) == 3
    with pytest.raises(UserError, match="this architecture has .*activation"):
        LayerOutput(model, "relu9")
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    layer = LayerOutput(model, names[0])
    with torch.no_grad():
        direct = model.trunk[2](model.trunk[1](model.trunk[0]((x - model.mean) / model.std))).flatten(1)
    assert torch.allclose(layer(x), direct, atol=1e-5)
    terms = ratio_terms(layer, x, LayerSettings(eps=0.5, pairs=4, steps=3))
    assert terms["ratio"] > 0 and (terms["moved"] > 0).all()


# --------------------------------------------------------------------------- Nakano's style transfer


def test_gram_matches_its_definition_and_relative_error_is_scale_free():
    from advfeat.discussion.style_transfer import gram, relative_error

    f = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    direct = torch.stack([torch.stack([torch.stack([(f[n, i] * f[n, j]).mean() for j in range(3)])
                                       for i in range(3)]) for n in range(2)])
    assert torch.allclose(gram(f), direct, atol=1e-6)
    constant = torch.ones(1, 2, 3, 3) * torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    assert torch.allclose(gram(constant)[0], torch.tensor([[4.0, -2.0], [-2.0, 1.0]]))
    target = gram(f[:1])
    assert torch.allclose(relative_error(gram(f), target), relative_error(10 * gram(f), 10 * target))
    assert relative_error(target, target).item() == 0


def test_style_transfer_with_one_relu_matches_the_styles_channel_second_moments():
    """A network that is one ReLU sees images in [0, 1] as they are: its Gram matrix is the 3x3
    matrix of channel second moments, which L-BFGS on the style loss alone must match."""
    from advfeat.discussion.style_transfer import StyleLoss, StyleSettings, gram, stylize, wave_texture

    model = torch.nn.Sequential(torch.nn.ReLU())
    content = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    style = wave_texture(16, seed=3)
    loss = StyleLoss(model, style, content, ["0"], "0")
    x = stylize(loss, content, StyleSettings(steps=100, style_weight=1.0, content_weight=0.0))
    assert x.min() >= 0 and x.max() <= 1
    assert torch.allclose(gram(x), gram(style[None]).expand(2, 3, 3), atol=2e-3)
    assert not torch.allclose(gram(content), gram(style[None]).expand(2, 3, 3), atol=2e-2)  # not there at start
    # With the content term alone, the content image is already the optimum: it stays.
    kept = stylize(loss, content, StyleSettings(steps=20, style_weight=1e-9, content_weight=1.0))
    assert torch.allclose(kept, content.clamp(1e-3, 1 - 1e-3), atol=1e-3)


def test_wave_texture_is_three_gratings_in_range():
    from advfeat.discussion.style_transfer import wave_texture

    t = wave_texture(32, seed=1)
    assert t.shape == (3, 32, 32) and t.min() >= 0 and t.max() <= 1
    assert torch.equal(t, wave_texture(32, seed=1)) and not torch.equal(t, wave_texture(32, seed=2))
    for channel in t:  # the spectrum's peak (zero frequency left out) lies at 3-6 cycles per image
        power = torch.fft.fft2(channel - channel.mean()).abs()
        u, v = divmod(int(power.argmax()), 32)
        radius = float(np.hypot(min(u, 32 - u), min(v, 32 - v)))
        assert 2 <= radius <= 7, radius


def test_style_layers_are_feature_maps_evenly_spaced_and_bad_names_are_one_line_errors():
    import dataclasses

    from advfeat.discussion.settings import feature_map_layers
    from advfeat.discussion.style_transfer import StyleSettings, choose_layers
    from advfeat.models import create_model
    from advfeat.presets import SMOKE_PRESET

    vgg = create_model("vgg_mini").eval()
    spatial = list(feature_map_layers("vgg_mini"))
    layers, content = choose_layers(vgg, 32, max_layers=3)
    assert len(spatial) == 6 and layers == [spatial[0], spatial[2], spatial[5]]  # linspace(0, 5, 3), rounded
    assert content == layers[-2]
    assert choose_layers(vgg, 32, ("trunk.5",), "trunk.9") == (["trunk.5"], "trunk.9")
    with pytest.raises(UserError, match="unknown style layer 'conv1'; choose from trunk.2, "):
        choose_layers(vgg, 32, ("conv1",))
    with pytest.raises(UserError, match="no feature-map layers|has none"):
        choose_layers(create_model("mlp").eval(), 32)
    d = SMOKE_PRESET.discussion
    with pytest.raises(UserError, match="unknown style layer 'relu4_2' for tiny; choose from trunk.2, trunk.6, "
                                        "activation"):
        dataclasses.replace(SMOKE_PRESET, discussion=dataclasses.replace(d, style=StyleSettings(
            content_layer="relu4_2")))
    for bad in (dict(steps=0), dict(contents=0), dict(style_weight=0), dict(content_weight=-1)):
        with pytest.raises(UserError):
            StyleSettings(**bad)


def test_eigenfeatures_scatter_is_written(tmp_path):
    from advfeat.discussion.eigenfeatures import EigenSettings, analyse, scatter_figure

    result = analyse(EigenSettings(), _toy_images(seed=0), _toy_images(seed=1))
    scatter_figure(result, 1.0, tmp_path / "scatter.png")
    assert (tmp_path / "scatter.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- stage bodies, end to end


class _Sources:
    def __init__(self, n=12):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)

    def test_tensors(self):
        return self.x, self.y


class _Ctx:
    def __init__(self, root, name):
        self.root, self.folder = root, root / name

    def folder_of(self, stage):
        return self.root / stage


def _random_models(root):
    from advfeat.checkpoint import save_model
    from advfeat.models import create_model

    for i, name in enumerate(("standard", "robust")):
        torch.manual_seed(i)
        save_model(root / name / "model", create_model("tiny", 10), {"arch": "tiny", "num_classes": 10})
    return {"standard": "standard", "robust": "robust"}


def test_model_reading_stage_bodies_run_and_judge(tmp_path):
    from advfeat.discussion import fourier, layer_robustness

    stages, sources = _random_models(tmp_path), _Sources()
    settings = fourier.FourierSettings(images=6, stride=8, fog_images=6)
    heat = fourier.fourier_heat_map_stage(settings, stages, sources, 0, torch.device("cpu"))(_Ctx(tmp_path, "heat"))
    saved = np.load(tmp_path / "heat" / "heat-robust.npy")
    assert saved.shape == (3, 4) and np.allclose(saved, heat["models"]["robust"]["map"], atol=1e-4)
    assert len(heat["models"]["standard"]["high_band"]) == 6
    fog = fourier.fog_stage(settings, stages, sources, 0, torch.device("cpu"))(_Ctx(tmp_path, "fog"))
    layers = layer_robustness.layer_robustness_stage(layer_robustness.LayerSettings(pairs=5, steps=2), stages,
                                                     sources, 0, torch.device("cpu"))(_Ctx(tmp_path, "layers"))
    assert list(layers["models"]["robust"]) == ["trunk.2", "trunk.6", "activation"]
    for claim in (fourier.judge_fourier_noise({0: heat}), fourier.judge_fog({0: fog}),
                  layer_robustness.judge_layer_robustness({0: layers})):
        assert claim["verdict"] in ("holds", "does not hold", "inconclusive") and claim["reference"]["setting"]
