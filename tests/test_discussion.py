"""The Distill discussion's experiments (advfeat.discussion): closed forms, invariants, brute force."""

from __future__ import annotations

import math

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
    from advfeat.discussion.squares import SCALE, SHAPE, brightness_classifier, linf_radius

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
    from advfeat.discussion.squares import SquaresSettings, squares_data, train_squares_models

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

    for bad in (dict(eps=0), dict(label_noise=0.6), dict(width=10, n_train=100)):
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
