"""Tests for advfeat.theory: the Gaussian model of Section 4 (Theorems 1-3) and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from advfeat.cli import main
from advfeat.theory import gaussian as g

MU2 = np.array([1.0, 0.2])
SIGMA2 = np.diag([1.0, 0.01])


def random_spd(d, rng, low=0.05, high=2.0):
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (basis * np.exp(rng.uniform(np.log(low), np.log(high), d))) @ basis.T


@pytest.fixture(scope="module")
def quadrature_fits():
    """Population (Gauss-Hermite) robust fits of the 2-D example against the L2-ball adversary."""
    eps_grid = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0]
    return eps_grid, [g.fit_robust_from_quadrature(MU2, SIGMA2, eps=e, points_per_dim=40) for e in eps_grid]


# ---------------------------------------------------------------- inner maximization


def test_inner_max_beats_random_feasible_deltas_and_lies_on_sphere():
    rng = np.random.default_rng(0)
    d, eps = 4, 0.3
    precision = np.linalg.inv(random_spd(d, rng))
    u = rng.standard_normal((20, d)) * 0.5
    delta, nu = g.worst_case_perturbation(u, precision, eps)
    assert np.allclose(np.linalg.norm(delta, axis=1), eps, rtol=0, atol=1e-10)  # convex loss: on the sphere
    assert np.all(nu > np.linalg.eigvalsh(precision)[-1])
    best = 0.5 * np.einsum("ij,jk,ik->i", u + delta, precision, u + delta)
    for i in range(len(u)):
        rand = rng.standard_normal((20_000, d))
        rand *= eps * rng.uniform(0, 1, (20_000, 1)) ** (1 / d) / np.linalg.norm(rand, axis=1, keepdims=True)
        sphere = eps * rand / np.linalg.norm(rand, axis=1, keepdims=True)
        for cand in (rand, sphere):
            vals = 0.5 * np.einsum("ij,jk,ik->i", u[i] + cand, precision, u[i] + cand)
            assert vals.max() <= best[i] * (1 + 1e-12)


def test_inner_max_equals_brute_force_on_the_circle():
    rng = np.random.default_rng(1)
    precision = np.linalg.inv(np.array([[1.0, 0.3], [0.3, 0.2]]))
    u = rng.standard_normal((10, 2)) * 0.4
    delta, _ = g.worst_case_perturbation(u, precision, 0.5)
    angles = np.linspace(0, 2 * np.pi, 400_001)
    circle = 0.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    for ui, di in zip(u, delta):
        brute = (0.5 * np.einsum("ij,jk,ik->i", ui + circle, precision, ui + circle)).max()
        exact = 0.5 * (ui + di) @ precision @ (ui + di)
        assert exact == pytest.approx(brute, rel=1e-8)


def test_inner_max_hard_case():
    """u without a component on the top precision eigenvector: delta still on the sphere and optimal."""
    precision = np.diag([1.0, 100.0])
    u = np.array([[0.0, 0.0], [0.05, 0.0]])
    delta, nu = g.worst_case_perturbation(u, precision, 0.3)
    assert np.allclose(np.linalg.norm(delta, axis=1), 0.3)
    assert np.allclose(nu, 100.0)
    angles = np.linspace(0, 2 * np.pi, 200_001)
    circle = 0.3 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    for ui, di in zip(u, delta):
        brute = (0.5 * np.einsum("ij,jk,ik->i", ui + circle, precision, ui + circle)).max()
        assert 0.5 * (ui + di) @ precision @ (ui + di) == pytest.approx(brute, rel=1e-9)


# ---------------------------------------------------------------- robust MLE


def test_eps_zero_gives_the_ordinary_mle():
    rng = np.random.default_rng(2)
    x, y = g.sample_gaussian_model(np.array([0.5, -1.0, 2.0]), random_spd(3, rng), 500, rng)
    v = g.signed_points(x, y)
    for adversary in ("ball", "mean_square"):
        fit = g.fit_robust_gaussian(v, eps=0.0, adversary=adversary, init=(np.zeros(3), np.eye(3)))
        assert np.allclose(fit.mu, v.mean(axis=0), atol=1e-10)
        assert np.allclose(fit.sigma, np.cov(v.T, bias=True), atol=1e-10)


def test_mu_r_stays_mu(quadrature_fits):
    eps_grid, fits = quadrature_fits
    for fit in fits:
        assert np.allclose(fit.mu, MU2, atol=1e-10)
    # On antithetic samples the robust mean is exactly the sample mean (the objective is even about it).
    rng = np.random.default_rng(3)
    x, y = g.sample_gaussian_model(MU2, SIGMA2, 4000, rng, antithetic=True)
    center = g.signed_points(x, y).mean(axis=0)
    for eps in (0.25, 1.0):
        assert np.allclose(g.fit_robust_from_samples(x, y, eps=eps).mu, center, atol=1e-10)


def test_sigma_r_moves_monotonically_toward_isotropy(quadrature_fits):
    eps_grid, fits = quadrature_fits
    eig = np.array([np.linalg.eigvalsh(f.sigma) for f in fits])
    cond = eig[:, -1] / eig[:, 0]
    assert np.all(np.diff(cond) < 0) and cond[0] == pytest.approx(100.0) and cond[-1] < 1.5
    normalized = eig / eig.mean(axis=1, keepdims=True)
    distance = np.abs(np.log(normalized))  # each eigenvalue's distance from isotropy
    assert np.all(np.diff(distance, axis=0) < 0)
    assert np.all(np.diff(eig, axis=0) > 0)  # robustness only adds variance


def test_sigma_r_toward_isotropy_in_d_dimensions():
    rng = np.random.default_rng(4)
    sigma = random_spd(5, rng, 0.01, 1.0)
    x, y = g.sample_gaussian_model(np.ones(5) / np.sqrt(5), sigma, 3000, rng)
    conds = [np.linalg.cond(g.fit_robust_from_samples(x, y, eps=e).sigma) for e in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert np.all(np.diff(conds) < 0)
    lams = np.geomspace(1e3, 1e-3, 40)  # the closed form too, on a fine grid of multipliers
    assert np.all(np.diff([np.linalg.cond(g.robust_covariance_closed_form(sigma, lam)) for lam in lams]) < 0)


def test_robust_fit_minimizes_the_robust_objective(quadrature_fits):
    eps_grid, fits = quadrature_fits
    nodes, weights = g.gauss_hermite_grid(MU2, SIGMA2, 40)
    rng = np.random.default_rng(11)
    for eps, fit in zip(eps_grid, fits):
        if eps not in (0.25, 2.0):
            continue
        base = g.robust_objective(nodes, weights, fit.mu, fit.sigma, eps)
        assert base == pytest.approx(fit.objective, rel=1e-12)
        for _ in range(20):
            d_mu = rng.standard_normal(2) * 1e-3
            d_sigma = rng.standard_normal((2, 2)) * 1e-3 * np.sqrt(np.diag(fit.sigma))
            moved = fit.sigma + d_sigma + d_sigma.T
            assert g.robust_objective(nodes, weights, fit.mu + d_mu, moved, eps) > base


def test_mean_square_solver_matches_closed_form_exactly():
    """Closed form of Theorem 2 is the exact robust MLE against the mean-square (one-multiplier) adversary."""
    rng = np.random.default_rng(5)
    sigma = random_spd(3, rng, 0.02, 1.0)
    x, y = g.sample_gaussian_model(np.array([1.0, 0.0, 0.5]), sigma, 2000, rng)
    v = g.signed_points(x, y)
    sigma_hat = np.cov(v.T, bias=True)
    for eps in (0.1, 0.5, 2.0):
        fit = g.fit_robust_from_samples(x, y, eps=eps, adversary="mean_square")
        assert fit.residual < 1e-9
        assert np.allclose(fit.mu, v.mean(axis=0), atol=1e-9)
        assert fit.multiplier == pytest.approx(g.multiplier_for_eps(sigma_hat, eps), rel=1e-7)
        closed = g.robust_covariance_closed_form(sigma_hat, fit.multiplier)
        assert np.allclose(fit.sigma, closed, rtol=1e-7, atol=1e-10)
        direct, _ = g.robust_mle_mean_square(sigma_hat, eps)
        assert np.allclose(fit.sigma, direct, rtol=1e-7, atol=1e-10)


def test_ball_solver_matches_closed_form_approximately(quadrature_fits):
    """For the per-sample L2 ball, Theorem 2's closed form holds only approximately (a few percent)."""
    eps_grid, fits = quadrature_fits
    for eps, fit in zip(eps_grid[1:], fits[1:]):
        lam, err = g.closest_closed_form(SIGMA2, fit.sigma)
        assert err < 0.05, (eps, err)
        assert lam == pytest.approx(g.multiplier_for_eps(SIGMA2, eps), rel=0.25)
    # ...and it is not exact: a single lam cannot fit both eigenvalues at small eps.
    assert g.closest_closed_form(SIGMA2, fits[1].sigma)[1] > 1e-3
    implied = g.implied_multipliers(SIGMA2, fits[1].sigma)
    assert implied.max() / implied.min() > 1.1


def test_closed_form_solves_its_fixed_point_and_budget():
    """Sigma_r = (I - Sigma_r^-1/lam)^-2 Sigma, and the budget equals tr(Sigma_r^-1)/lam^2 (checked by Monte Carlo)."""
    rng = np.random.default_rng(6)
    sigma = random_spd(4, rng)
    lam = 3.0
    sigma_r = g.robust_covariance_closed_form(sigma, lam)
    m = np.linalg.inv(np.eye(4) - np.linalg.inv(sigma_r) / lam)
    assert np.allclose(m @ sigma @ m, sigma_r, rtol=1e-10)
    budget = g.mean_square_budget_of_multiplier(sigma, lam)
    assert budget == pytest.approx(np.trace(np.linalg.inv(sigma_r)) / lam**2, rel=1e-10)
    z = rng.standard_normal((400_000, 4)) @ g.symmetric_sqrt(sigma)
    delta = g.penalty_perturbation(z, np.linalg.inv(sigma_r), lam)
    assert np.mean(np.sum(delta**2, axis=1)) == pytest.approx(budget, rel=0.01)


def test_sample_and_quadrature_solvers_agree():
    rng = np.random.default_rng(7)
    x, y = g.sample_gaussian_model(MU2, SIGMA2, 8000, rng)
    v = g.signed_points(x, y)
    for eps in (0.25, 1.0):
        fit = g.fit_robust_from_samples(x, y, eps=eps)
        quad = g.fit_robust_from_quadrature(v.mean(axis=0), np.cov(v.T, bias=True), eps=eps, points_per_dim=40)
        ratios = np.linalg.eigvals(np.linalg.solve(quad.sigma, fit.sigma)).real
        assert np.max(np.abs(ratios - 1)) < 0.015
        assert np.allclose(fit.mu, quad.mu, atol=0.01)


def test_plain_fixed_point_fails_where_the_solver_converges():
    with pytest.raises(g.SolverDidNotConverge, match="did not converge"):
        g.fit_robust_from_quadrature(MU2, SIGMA2, eps=2.0, points_per_dim=30, method="plain", max_iter=100)
    for method in ("anderson", "damped"):
        fit = g.fit_robust_from_quadrature(MU2, SIGMA2, eps=2.0, points_per_dim=30, method=method, max_iter=1000)
        assert fit.residual < 1e-9


# ---------------------------------------------------------------- Theorem 3: gradient alignment


def test_alignment_increases_with_eps(quadrature_fits):
    eps_grid, fits = quadrature_fits
    cos = [g.gradient_alignment(f.sigma, MU2) for f in fits]
    assert np.all(np.diff(cos) > 0) and cos[0] < 0.3 and cos[-1] > 0.99
    worst = [g.worst_case_alignment(f.sigma) for f in fits]
    assert np.all(np.diff(worst) > 0)


def test_worst_case_alignment_is_the_minimum_over_mu():
    rng = np.random.default_rng(8)
    sigma = random_spd(4, rng)
    mus = rng.standard_normal((20_000, 4))
    cos = [g.gradient_alignment(sigma, m) for m in mus]
    vals, vecs = np.linalg.eigh(sigma)
    assert min(cos) >= g.worst_case_alignment(sigma) - 1e-12
    worst_mu = np.sqrt(vals[-1]) * vecs[:, -1] + np.sqrt(vals[0]) * vecs[:, 0]
    assert g.gradient_alignment(sigma, worst_mu) == pytest.approx(g.worst_case_alignment(sigma), rel=1e-12)


# ---------------------------------------------------------------- Theorem 1: loss gap


@pytest.mark.parametrize("penalty", [150.0, 400.0])
def test_loss_gap_formula_matches_monte_carlo(penalty):
    rng = np.random.default_rng(9)
    for sigma in (SIGMA2, random_spd(3, rng, 0.02, 1.0)):
        exact = g.loss_gap_closed_form(sigma, penalty)
        mc, se = g.loss_gap_monte_carlo(sigma, penalty, 200_000, rng)
        assert abs(mc - exact) < 4 * se + 1e-12


def test_loss_gap_is_smallest_for_isotropic_sigma_at_fixed_trace():
    rng = np.random.default_rng(10)
    d, trace, penalty = 4, 2.0, 50.0
    isotropic = g.loss_gap_closed_form(np.eye(d) * trace / d, penalty)
    for _ in range(200):
        spectrum = rng.dirichlet(np.ones(d)) * trace
        spectrum = np.maximum(spectrum, 1.5 / penalty)  # keep C > 1/sigma_min
        spectrum *= trace / spectrum.sum()
        if penalty * spectrum.min() <= 1:
            continue
        basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
        assert g.loss_gap_closed_form((basis * spectrum) @ basis.T, penalty) >= isotropic - 1e-12


# ---------------------------------------------------------------- CLI


def test_cli_writes_figures_and_json(tmp_path, capsys):
    assert main(["theory", "gaussian", "--out", str(tmp_path)]) == 0
    for name in ("gaussian_contours.png", "gaussian_alignment.png", "gaussian_eigenvalues.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    data = json.loads((tmp_path / "gaussian.json").read_text())
    assert data["headline"] == capsys.readouterr().out.strip()
    cond = [r["condition_number"] for r in data["two_dim"]["quadrature"]]
    assert np.all(np.diff(cond) < 0)
    assert all(r["max_rel_error"] < 0.05 for r in data["d_dim"]["closest_closed_form"])
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


@pytest.mark.parametrize("bad", [["--dims", "1"], ["--dims", "1000"], ["--seed", "-1"], "file"])
def test_cli_rejects_bad_input(tmp_path, capsys, bad):
    out = tmp_path / "out"
    if bad == "file":
        out.write_text("not a folder")
        bad = []
    assert main(["theory", "gaussian", "--out", str(out), *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advfeat: error:") and "\n" not in err
