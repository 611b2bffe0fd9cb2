"""`advfeat theory gaussian`: the figures and numbers for Section 4's Gaussian model.

Two examples are studied at increasing eps:

* 2-D: mu = (1, 0.2), Sigma = diag(1, 0.01).  The second coordinate is a "non-robust feature": it
  separates the classes well (mean 0.2, std 0.1) but an L2 perturbation of size ~0.2 erases it.
* d-D: Sigma with eigenvalues log-spaced from 1 to 0.01 in a random basis, mu a random unit vector.

For each eps we fit the robust MLE against the per-sample L2-ball adversary (on samples, and for
2-D also on a Gauss-Hermite grid, i.e. the population), compare it with Theorem 2's closed form, and
track the gradient alignment cos(Sigma_r^-1 mu_r, mu) of Theorem 3.  Outputs: gaussian_contours.png
(like the paper's Figure 4), gaussian_alignment.png, gaussian_eigenvalues.png and gaussian.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from advfeat.errors import UserError
from advfeat.io import save_figure, write_json
from advfeat.plotting import pyplot
from advfeat.theory import gaussian as g

EPS_2D = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0]
EPS_CONTOURS = [0.0, 0.25, 0.5, 1.0, 2.0]
EPS_DD = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0]
EPS_FINE = np.concatenate([[0.0], np.geomspace(1e-3, 8.0, 120)])  # closed-form curves are cheap
N_2D, N_DD = 6_000, 4_000
MAX_DIMS = 32  # d = 32 takes ~35 s on two CPU cores; the cost grows with d
GAP_PENALTY = 300.0  # Theorem 1's penalty constant C for the loss-gap numbers (> 1/sigma_min = 100)


def run(out_dir: Path, *, dims: int = 10, seed: int = 0) -> dict:
    """Write the figures and gaussian.json into out_dir; return the numbers (with a "headline")."""
    out_dir = Path(out_dir)
    _validate(out_dir, dims, seed)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)

    mu2, sigma2 = np.array([1.0, 0.2]), np.diag([1.0, 0.01])
    two = _study(mu2, sigma2, EPS_2D, N_2D, rng, quadrature=True)
    mud, sigmad = _d_dim_model(dims, rng)
    many = _study(mud, sigmad, EPS_DD, N_DD, rng, quadrature=False)
    gap = _loss_gap_numbers(sigma2, rng)

    _plot_contours(out_dir / "gaussian_contours.png", two)
    _plot_alignment(out_dir / "gaussian_alignment.png", two, many, dims)
    _plot_eigenvalues(out_dir / "gaussian_eigenvalues.png", many, dims)

    summary = {
        "headline": _headline(two, many, gap, dims),
        "source": "Ilyas et al. (NeurIPS 2019), Section 4 and Appendix: Theorems 1-3",
        "seed": seed,
        "dims": dims,
        "two_dim": _jsonable(two),
        "d_dim": _jsonable(many),
        "loss_gap": gap,
        "figures": ["gaussian_contours.png", "gaussian_alignment.png", "gaussian_eigenvalues.png"],
        "runtime_s": round(time.perf_counter() - start, 2),
    }
    write_json(out_dir / "gaussian.json", summary)
    return summary


def _validate(out_dir: Path, dims, seed) -> None:
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or not 2 <= dims <= MAX_DIMS:
        raise UserError(f"--dims must be an integer between 2 and {MAX_DIMS}, got {dims!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is an existing file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {out_dir}: {err.strerror or err}") from None


def _d_dim_model(dims: int, rng: np.random.Generator):
    """Sigma with eigenvalues logspace(0, -2, d) in a random orthonormal basis; mu a random unit vector."""
    basis, _ = np.linalg.qr(rng.standard_normal((dims, dims)))
    sigma = (basis * np.logspace(0.0, -2.0, dims)) @ basis.T
    mu = rng.standard_normal(dims)
    return mu / np.linalg.norm(mu), 0.5 * (sigma + sigma.T)


def _study(mu, sigma, eps_grid, n, rng, *, quadrature: bool) -> dict:
    """Robust fits of one example over eps: samples (ball), quadrature (ball), closed form."""
    x, y = g.sample_gaussian_model(mu, sigma, n, rng)
    assert eps_grid[0] == 0.0, "the first fit is the ordinary MLE"
    out = {"mu": mu, "sigma": sigma, "n_samples": n, "eps": list(eps_grid), "samples": [], "closed_form": []}
    for eps in eps_grid:
        out["samples"].append(_fit_record(g.fit_robust_from_samples(x, y, eps=eps), mu, sigma))
        sigma_cf, lam = g.robust_mle_mean_square(sigma, eps)
        out["closed_form"].append(_closed_form_record(eps, lam, sigma_cf, mu))
    out["closed_form_curve"] = []
    for eps in EPS_FINE:
        sigma_cf, lam = g.robust_mle_mean_square(sigma, eps)
        out["closed_form_curve"].append(_closed_form_record(eps, lam, sigma_cf, mu))
    # Closed form of the data's own Gaussian: the population one for quadrature, the MLE for samples.
    fits_for_closed_form, base_sigma = out["samples"], out["samples"][0]["sigma_r"]
    if quadrature:
        out["quadrature"] = [_fit_record(g.fit_robust_from_quadrature(mu, sigma, eps=e), mu, sigma) for e in eps_grid]
        fits_for_closed_form, base_sigma = out["quadrature"], sigma
        out["plain_fixed_point"] = [_plain_iteration(mu, sigma, e) for e in eps_grid if e > 0]
        out["samples_vs_quadrature_max_rel_diff"] = max(
            float(np.max(np.abs(s["eigenvalues"] / q["eigenvalues"] - 1.0)))
            for s, q in zip(out["samples"], out["quadrature"])
        )
    # Theorem 2 for the ball adversary: the single lam whose closed form is closest to the fit.
    out["closest_closed_form"] = []
    for rec in fits_for_closed_form:
        if rec["eps"] > 0:
            lam, err = g.closest_closed_form(base_sigma, rec["sigma_r"])
            out["closest_closed_form"].append({"eps": rec["eps"], "lambda": lam, "max_rel_error": err})
    x_plot = x[: min(n, 1500)]
    out["scatter"] = {"x": x_plot, "y": y[: len(x_plot)]}
    return out


def _fit_record(fit: g.RobustFit, mu, sigma) -> dict:
    eig = np.linalg.eigvalsh(fit.sigma)
    return {
        "eps": fit.eps,
        "mu_r": fit.mu,
        "sigma_r": fit.sigma,
        "eigenvalues": eig,
        "condition_number": float(eig[-1] / eig[0]),
        "alignment": _alignment(fit.sigma, fit.mu, mu),
        "worst_case_alignment": g.worst_case_alignment(fit.sigma),
        "iterations": fit.iterations,
        "residual": fit.residual,
        "objective": fit.objective,
        "mean_multiplier": fit.multiplier,
    }


def _closed_form_record(eps, lam, sigma_r, mu) -> dict:
    eig = np.linalg.eigvalsh(sigma_r)
    return {
        "eps": float(eps),
        "lambda": float(lam),
        "eigenvalues": eig,
        "condition_number": float(eig[-1] / eig[0]),
        "alignment": _alignment(sigma_r, mu, mu),
        "worst_case_alignment": g.worst_case_alignment(sigma_r),
    }


def _alignment(sigma_r, mu_r, mu) -> float:
    """cos angle between the learned classifier's input gradient Sigma_r^-1 mu_r and the class axis mu."""
    grad = np.linalg.solve(sigma_r, mu_r)
    return float(grad @ mu / (np.linalg.norm(grad) * np.linalg.norm(mu)))


def _plain_iteration(mu, sigma, eps, max_iter: int = 200) -> dict:
    """Does the undamped fixed point Theta <- T(Theta) converge on the population (quadrature) problem?"""
    try:
        fit = g.fit_robust_from_quadrature(mu, sigma, eps=eps, points_per_dim=40, method="plain", max_iter=max_iter)
        return {"eps": eps, "converged": True, "iterations": fit.iterations}
    except g.SolverDidNotConverge:
        return {"eps": eps, "converged": False, "iterations": max_iter}


def _loss_gap_numbers(sigma, rng) -> dict:
    """Theorem 1: closed-form gap vs Monte Carlo, and the isotropic covariance with the same trace."""
    iso = np.eye(len(sigma)) * np.trace(sigma) / len(sigma)
    mc, se = g.loss_gap_monte_carlo(sigma, GAP_PENALTY, 100_000, rng)
    return {
        "penalty_C": GAP_PENALTY,
        "sigma_eigenvalues": np.linalg.eigvalsh(sigma).tolist(),
        "closed_form": g.loss_gap_closed_form(sigma, GAP_PENALTY),
        "monte_carlo": mc,
        "monte_carlo_se": se,
        "isotropic_same_trace": g.loss_gap_closed_form(iso, GAP_PENALTY),
    }


def _headline(two, many, gap, dims) -> str:
    def span(study, key):
        recs = study.get("quadrature", study["samples"])
        return recs[0][key], recs[-1][key]

    c2, a2 = span(two, "condition_number"), span(two, "alignment")
    cd, ad = span(many, "condition_number"), span(many, "alignment")
    mu_shift = max(float(np.max(np.abs(r["mu_r"] - two["mu"]))) for r in two["quadrature"])
    return (
        f"eps 0->{two['eps'][-1]:g}: 2-D cond(Sigma_r) {c2[0]:.0f}->{c2[1]:.2f}, "
        f"cos(grad, mu) {a2[0]:.2f}->{a2[1]:.2f}, |mu_r - mu| <= {mu_shift:.0e}; "
        f"{dims}-D cond {cd[0]:.0f}->{cd[1]:.2f}, cos {ad[0]:.2f}->{ad[1]:.2f}; "
        f"loss gap (C={gap['penalty_C']:g}) {gap['closed_form']:.3f} vs isotropic {gap['isotropic_same_trace']:.3f}"
    )


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _ellipse(mean, cov, radius, n=200):
    """Points of {x : (x - mean)^T cov^-1 (x - mean) = radius^2}."""
    t = np.linspace(0.0, 2.0 * np.pi, n)
    return mean + radius * np.stack([np.cos(t), np.sin(t)], axis=1) @ g.symmetric_sqrt(cov)


def _eps_axis(ax) -> None:
    """eps on a symlog axis (linear near 0, so eps = 0 fits), with plain tick labels."""
    from matplotlib.ticker import NullLocator

    ticks = [0, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8]
    ax.set_xscale("symlog", linthresh=0.05)
    ax.set_xlim(0, 8)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def _plot_contours(path: Path, two: dict) -> None:
    """Figure 4 analogue: learned class Gaussians at increasing eps (mean fixed, covariance blending)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(EPS_CONTOURS), figsize=(3.3 * len(EPS_CONTOURS), 3.6), sharey=True)
    x, y = two["scatter"]["x"], two["scatter"]["y"]
    fits = {r["eps"]: r for r in two["samples"]}
    forms = {r["eps"]: r for r in two["closed_form"]}
    for ax, eps in zip(axes, EPS_CONTOURS):
        ax.scatter(*x[y > 0].T, s=2, c="tab:blue", alpha=0.25, lw=0)
        ax.scatter(*x[y < 0].T, s=2, c="tab:red", alpha=0.25, lw=0)
        fit = fits[eps]
        sigma_cf = g.robust_covariance_closed_form(two["sigma"], forms[eps]["lambda"])
        for sign, color in ((1, "tab:blue"), (-1, "tab:red")):
            for radius in (1.0, 2.0):
                ax.plot(*_ellipse(sign * fit["mu_r"], fit["sigma_r"], radius).T, color=color, lw=1.4)
            ax.plot(*_ellipse(sign * two["mu"], sigma_cf, 1.0).T, color="k", lw=0.8, ls="--")
        w = np.linalg.solve(fit["sigma_r"], fit["mu_r"])  # boundary x^T Sigma_r^-1 mu_r = 0
        xs = np.array([-4.0, 4.0])
        ax.plot(xs, -w[0] * xs / w[1], color="0.3", lw=0.8, ls=":")
        ax.set_xlim(-4, 4)
        ax.set_ylim(-3, 3)
        ax.set_aspect("equal")
        ax.set_title(f"eps = {eps:g}\ncond = {fit['condition_number']:.1f}, cos = {fit['alignment']:.2f}", fontsize=9)
    axes[0].set_ylabel("x2 (non-robust feature)")
    for ax in axes:
        ax.set_xlabel("x1")
    fig.suptitle(
        "Robust MLE of y*mu + N(0, Sigma), mu=(1, 0.2), Sigma=diag(1, 0.01): solid 1- and 2-sigma contours "
        "(L2-ball adversary), dashed Theorem 2 closed form, dotted decision boundary",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _plot_alignment(path: Path, two: dict, many: dict, dims: int) -> None:
    """cos(Sigma_r^-1 mu, mu) against eps, with Theorem 3's worst case over mu."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, study, title in ((axes[0], two, "2-D example"), (axes[1], many, f"{dims}-D example")):
        curve = study["closed_form_curve"]
        eps_c = [r["eps"] for r in curve]
        ax.plot(eps_c, [r["alignment"] for r in curve], "k--", lw=1, label="closed form (mean-square budget)")
        ax.plot(eps_c, [r["worst_case_alignment"] for r in curve], "k:", lw=1, label="closed form, worst mu (Thm 3)")
        cos_samples = [r["alignment"] for r in study["samples"]]
        ax.plot(study["eps"], cos_samples, "o-", color="tab:blue", label="L2-ball robust MLE, samples")
        if "quadrature" in study:
            cos_quad = [r["alignment"] for r in study["quadrature"]]
            ax.plot(study["eps"], cos_quad, "s", mfc="none", color="tab:orange", label="L2-ball robust MLE, quadrature")
        _eps_axis(ax)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("eps")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cos(Sigma_r^-1 mu_r, mu)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _plot_eigenvalues(path: Path, many: dict, dims: int) -> None:
    """Eigenvalues of Sigma_r divided by their mean: isotropy is the line at 1."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    curve = many["closed_form_curve"]
    eps_c = np.array([r["eps"] for r in curve])
    eig_c = np.array([r["eigenvalues"] for r in curve])
    ax.plot(eps_c, eig_c / eig_c.mean(axis=1, keepdims=True), "k--", lw=0.8)
    eig_s = np.array([r["eigenvalues"] for r in many["samples"]])
    ax.plot(many["eps"], eig_s / eig_s.mean(axis=1, keepdims=True), "o", color="tab:blue", ms=3)
    ax.axhline(1.0, color="0.5", lw=0.8)
    _eps_axis(ax)
    ax.set_yscale("log")
    ax.set_xlabel("eps")
    ax.set_ylabel("eigenvalue / mean eigenvalue")
    ax.set_title(f"{dims}-D: Sigma_r eigenvalues (dots: L2-ball fit; dashed: Theorem 2)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------------------------


def _jsonable(obj):
    """Arrays to lists, numpy scalars to floats, recursively; drops the scatter subsample."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if k != "scatter"}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
