"""The Gaussian model of Section 4 of Ilyas et al., "Adversarial Examples Are Not Bugs, They Are Features".

Setting.  y is uniform on {-1, +1} and x ~ N(y * mu, Sigma).  A model Theta = (mu, Sigma) is scored by
the Gaussian negative log-likelihood

    l(x; y*mu, Sigma) = 1/2 (x - y mu)^T Sigma^-1 (x - y mu) + 1/2 log det Sigma + d/2 log(2 pi),

and classifies with sign(x^T Sigma^-1 mu).  Because y x = mu + y z with z ~ N(0, Sigma) independent
of y, every expectation below only needs the *signed points* v = y x ~ N(mu, Sigma); the residual of
a model mean m is u = v - m, and an L2 perturbation delta of x is, up to the sign y, a perturbation
of u with the same norm.  So "robust MLE" means

    min_{m, S}  E_v [ max_{||delta||_2 <= eps} l(v + delta; m, S) ].

Three adversaries appear:

* the *ball* adversary (the real objective): each sample gets its own ||delta||_2 <= eps;
* the *penalty* adversary with a fixed multiplier C: max_delta l(v + delta) - C/2 ||delta||^2,
  which is Theorem 1's adversary (the paper's "Lagrangian penalty form");
* the *mean-square* adversary: one budget shared by all samples, E ||delta||^2 <= eps^2.  Its
  maximizer is the penalty adversary with the single multiplier lam that spends the budget, and the
  paper's closed form Sigma_r = Sigma/2 + I/lam + sqrt(Sigma/lam + Sigma^2/4) is its *exact*
  robust MLE.  For the ball adversary (per-sample multipliers) that closed form is an approximation.

What is exact and what is approximate (all checked in tests/test_theory.py):

* Theorem 1 (loss gap of the true model under the penalty adversary): exact, see
  loss_gap_closed_form; the isotropic Sigma minimises it at fixed trace (Jensen).
* Theorem 2: mu_r = mu exactly in the population (and on any point set symmetric about its
  mean); on plain samples only up to sampling error.  The closed form is exact for the
  mean-square adversary; for the L2-ball adversary it fits to a few percent for the best lam
  (closest_closed_form), and at small eps the per-direction multipliers differ by ~2x.
* Theorem 3 is about the worst case over mu (worst_case_alignment), which improves exactly when
  the condition number falls; for a fixed mu the alignment rose with eps in every example here.

The paper's text was not available while writing this module, so its statements are paraphrased
from memory; every formula is derived in its docstring and verified numerically instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize_scalar

LOG_2PI = float(np.log(2.0 * np.pi))


# ----------------------------------------------------------------------------------------------
# The model: sampling, quadrature, likelihood
# ----------------------------------------------------------------------------------------------


def sample_gaussian_model(mu, sigma, n: int, rng: np.random.Generator, *, antithetic: bool = False):
    """Draw n labelled samples: y uniform on {-1,+1}, x = y * mu + z, z ~ N(0, Sigma).

    antithetic=True pairs every z with -z (n must be even).  The signed points y x then sit
    symmetrically around their sample mean, which makes "mu_r equals the sample mean" exact for the
    ball adversary too (an even, convex objective is minimized at the symmetry centre).
    Returns (x of shape (n, d), y of shape (n,)).
    """
    mu = np.asarray(mu, dtype=float)
    root = symmetric_sqrt(np.asarray(sigma, dtype=float))
    if antithetic:
        if n % 2:
            raise ValueError("antithetic sampling needs an even n")
        half = rng.standard_normal((n // 2, mu.size)) @ root
        z = np.concatenate([half, -half])
        y = np.tile(rng.choice([-1.0, 1.0], size=n // 2), 2)
    else:
        z = rng.standard_normal((n, mu.size)) @ root
        y = rng.choice([-1.0, 1.0], size=n)
    return y[:, None] * mu + z, y


def signed_points(x, y):
    """v_i = y_i x_i, distributed N(mu, Sigma): the only statistic of (x, y) the model needs."""
    return np.asarray(y, dtype=float)[:, None] * np.asarray(x, dtype=float)


def gauss_hermite_grid(mu, sigma, points_per_dim: int):
    """Tensor-product Gauss-Hermite rule for E_{v ~ N(mu, Sigma)}[f(v)] = sum_k w_k f(v_k).

    Nodes are mu + Sigma^{1/2} g with g on the probabilists' Hermite grid, so the rule is exact for
    polynomials of degree < 2 * points_per_dim in each coordinate.  The grid is symmetric under
    g -> -g, so robust solvers on it keep mu exactly.  Size points_per_dim ** d: small d only.
    """
    mu = np.asarray(mu, dtype=float)
    d = mu.size
    if points_per_dim ** d > 2_000_000:
        raise ValueError(f"a {points_per_dim}^{d} grid is too large; use samples in this dimension")
    nodes, weights = np.polynomial.hermite_e.hermegauss(points_per_dim)
    weights = weights / np.sqrt(2.0 * np.pi)  # normalise to a probability rule
    mesh = np.stack(np.meshgrid(*([nodes] * d), indexing="ij"), axis=-1).reshape(-1, d)
    wmesh = np.prod(np.stack(np.meshgrid(*([weights] * d), indexing="ij"), axis=-1).reshape(-1, d), axis=1)
    return mu + mesh @ symmetric_sqrt(np.asarray(sigma, dtype=float)), wmesh


def gaussian_nll(points, mu, sigma):
    """Per-point l(v; mu, Sigma) = 1/2 (v-mu)^T Sigma^-1 (v-mu) + 1/2 log det Sigma + d/2 log 2pi."""
    points = np.atleast_2d(points)
    sigma = np.asarray(sigma, dtype=float)
    resid = points - mu
    _, logdet = np.linalg.slogdet(sigma)
    maha = np.einsum("ij,ij->i", resid, np.linalg.solve(sigma, resid.T).T)
    return 0.5 * (maha + logdet + points.shape[1] * LOG_2PI)


def symmetric_sqrt(matrix):
    """Sigma^{1/2} of a symmetric positive semidefinite matrix, via its eigendecomposition."""
    vals, vecs = np.linalg.eigh(matrix)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def spectral_function(matrix, fn):
    """fn applied to the eigenvalues of a symmetric matrix: V diag(fn(s)) V^T."""
    vals, vecs = np.linalg.eigh(matrix)
    return (vecs * fn(vals)) @ vecs.T


# ----------------------------------------------------------------------------------------------
# Inner maximization: the worst perturbation of a quadratic loss
# ----------------------------------------------------------------------------------------------


def worst_case_perturbation(residuals, precision, eps: float, *, tol: float = 1e-12, max_iter: int = 100):
    """Exact argmax_{||delta||_2 <= eps} 1/2 (u + delta)^T A (u + delta) for every row u of residuals.

    A = Sigma^-1 is positive definite, so the objective is convex and its maximum over the ball lies
    on the sphere ||delta|| = eps.  The KKT conditions give delta = (nu I - A)^-1 A u with a multiplier
    nu >= a_max (the largest eigenvalue of A; nu > a_max makes the Hessian of the Lagrangian negative
    definite, which is what singles out the *global* maximizer of this trust-region problem).
    In A's eigenbasis (eigenvalues a_j, coordinates w_j = (V^T u)_j) the norm condition reads

        sum_j a_j^2 w_j^2 / (nu - a_j)^2 = eps^2,

    one decreasing 1-D equation per sample.  We solve all of them at once with Newton's method on
    psi(nu) = 1/||delta(nu)|| - 1/eps, which is concave and increasing, so Newton started left of the
    root converges monotonically.  The "hard case" (u has no component along the top eigenvector and
    the rest of delta is shorter than eps) takes nu = a_max and tops delta up along that eigenvector.

    Returns (delta of shape (n, d), nu of shape (n,)).
    """
    u = np.atleast_2d(np.asarray(residuals, dtype=float))
    n, d = u.shape
    if eps < 0:
        raise ValueError("eps must be >= 0")
    if eps == 0:
        return np.zeros_like(u), np.full(n, np.inf)
    a, vecs = np.linalg.eigh(np.asarray(precision, dtype=float))  # once for all samples
    w = u @ vecs
    c = (a * w) ** 2  # c_j = a_j^2 w_j^2
    a_max = a[-1]
    top = a >= a_max * (1.0 - 1e-12)  # the (possibly repeated) top eigenvalue

    # Hard case: nothing pushes nu above a_max and the remaining components fit inside the ball.
    c_top = c[:, top].sum(axis=1)
    gap = np.where(top, np.inf, a_max - a)
    rest_sq = (c / gap**2).sum(axis=1)
    hard = (c_top <= 1e-30 * np.maximum(1.0, c.sum(axis=1))) & (rest_sq <= eps**2)

    # Every term alone is a lower bound on the norm, so nu_j = a_j + sqrt(c_j)/eps is left of the root.
    nu = np.max(a + np.sqrt(c) / eps, axis=1)
    nu = np.maximum(nu, a_max * (1.0 + 1e-15) + 1e-300)
    active = ~hard
    todo = np.flatnonzero(active)  # rows still iterating; converged rows drop out
    for _ in range(max_iter):
        if todo.size == 0:
            break
        inv = 1.0 / (nu[todo, None] - a)
        c_inv2 = c[todo] * inv * inv
        norm_sq = c_inv2.sum(axis=1)
        norm = np.sqrt(norm_sq)
        # psi = 1/norm - 1/eps;  d psi / d nu = norm^-3 * sum_j c_j / (nu - a_j)^3
        step = -(1.0 / norm - 1.0 / eps) * norm_sq * norm / (c_inv2 * inv).sum(axis=1)
        nu[todo] += step
        todo = todo[np.abs(step) > tol * np.maximum(nu[todo], 1.0)]
    if todo.size:
        raise RuntimeError(f"worst_case_perturbation: Newton did not converge for {todo.size} samples")

    nu = np.where(active, nu, a_max + 1.0)  # placeholder for hard rows, set below
    delta_w = np.where(active[:, None], a * w / (nu[:, None] - a), 0.0)
    if np.any(hard):
        # nu = a_max: components off the top eigenspace as usual, the slack along the top eigenvector.
        rest = np.where(top, 0.0, a * w / np.where(top, 1.0, a_max - a))
        delta_w[hard] = rest[hard]
        first_top = int(np.flatnonzero(top)[0])
        delta_w[hard, first_top] = np.sqrt(np.maximum(eps**2 - rest_sq[hard], 0.0))
        nu[hard] = a_max
    return delta_w @ vecs.T, nu


def penalty_perturbation(residuals, precision, multiplier: float):
    """argmax_delta 1/2 (u + delta)^T A (u + delta) - multiplier/2 ||delta||^2, for multiplier > a_max.

    Setting the gradient A (u + delta) - C delta to zero gives delta = (C I - A)^-1 A u, and then
    u + delta = (I - A/C)^-1 u = (I + (C Sigma - I)^-1) u.  This is Theorem 1's "Lagrangian penalty"
    adversary; with C chosen to spend a mean-square budget it is also the mean-square adversary.
    """
    a, vecs = np.linalg.eigh(np.asarray(precision, dtype=float))
    if multiplier <= a[-1]:
        raise ValueError(f"the multiplier {multiplier:.4g} must exceed the largest precision eigenvalue {a[-1]:.4g}")
    u = np.atleast_2d(np.asarray(residuals, dtype=float))
    return ((u @ vecs) * (a / (multiplier - a))) @ vecs.T


def multiplier_for_mean_square_budget(residuals, weights, precision, eps: float) -> float:
    """The lam > a_max with E_w ||(lam I - A)^-1 A u||^2 = eps^2 (the mean-square adversary's multiplier).

    In A's eigenbasis the left side is sum_j a_j^2 m_j / (lam - a_j)^2 with m_j = E_w[w_j^2]: it only
    needs second moments and is strictly decreasing on (a_max, inf), so a bracketed root find is safe.
    """
    if eps <= 0:
        return np.inf
    a, vecs = np.linalg.eigh(np.asarray(precision, dtype=float))
    m = np.asarray(weights) @ ((np.atleast_2d(residuals) @ vecs) ** 2)
    c = a**2 * m
    if c[a >= a[-1] * (1 - 1e-12)].sum() <= 0:
        raise ValueError("the residuals have no component along the top precision eigenvector")
    hi = a[-1] + np.sqrt(c.sum()) / eps  # here every (lam - a_j) >= sqrt(sum c)/eps, so norm <= eps
    lo = np.max(a + np.sqrt(c) / eps)  # each term alone already reaches eps^2 here
    if hi - lo <= 1e-14 * hi:
        return float(hi)
    return float(brentq(lambda lam: np.sum(c / (lam - a) ** 2) - eps**2, lo, hi, xtol=1e-14 * hi, rtol=1e-15))


def adversarial_perturbations(residuals, weights, precision, eps: float, adversary: str):
    """Perturbations of all residuals for one adversary ("ball" or "mean_square") and its multiplier.

    Returns (delta, multiplier): per-sample multipliers for "ball", one scalar for "mean_square".
    """
    if adversary == "ball":
        return worst_case_perturbation(residuals, precision, eps)
    if adversary == "mean_square":
        if eps == 0:
            return np.zeros_like(np.atleast_2d(residuals)), np.inf
        lam = multiplier_for_mean_square_budget(residuals, weights, precision, eps)
        return penalty_perturbation(residuals, precision, lam), lam
    raise ValueError(f"unknown adversary {adversary!r}; use 'ball' or 'mean_square'")


# ----------------------------------------------------------------------------------------------
# Robust maximum likelihood: a safeguarded, Anderson-accelerated fixed point
# ----------------------------------------------------------------------------------------------


class SolverDidNotConverge(RuntimeError):
    """The robust MLE iteration hit max_iter before its residual fell below tol."""


@dataclass
class RobustFit:
    """Result of fit_robust_gaussian."""

    mu: np.ndarray
    sigma: np.ndarray
    objective: float  # E_w[ max_delta l(v + delta; mu, sigma) ] at the solution
    iterations: int
    residual: float  # ||T(Theta) - Theta|| / ||Theta||, the relative fixed-point residual
    multiplier: float  # lam for "mean_square"; the weighted mean of the per-sample nu for "ball"
    eps: float
    adversary: str


def robust_objective(points, weights, mu, sigma, eps: float, adversary: str = "ball") -> float:
    """E_w[ max_{delta} l(v + delta; mu, Sigma) ]: the adversarial negative log-likelihood."""
    resid = points - mu
    precision = np.linalg.inv(sigma)
    delta, _ = adversarial_perturbations(resid, weights, precision, eps, adversary)
    return float(weights @ gaussian_nll(points + delta, mu, sigma))


def _fixed_point_map(points, weights, mu, sigma, eps, adversary):
    """T(mu, Sigma) = (E_w[v + delta*], E_w[(u + delta*)(u + delta*)^T]) with u = v - mu.

    By Danskin's theorem the gradient of the robust objective is the ordinary NLL gradient at the
    perturbed points, so a stationary point satisfies mu = E[v + delta*] and Sigma = E[(u+delta*)(u+delta*)^T].
    Returns (mu_T, Sigma_T, robust objective at (mu, Sigma), multiplier).
    """
    resid = points - mu
    precision = np.linalg.inv(sigma)
    delta, mult = adversarial_perturbations(resid, weights, precision, eps, adversary)
    moved = resid + delta
    sigma_t = (moved * weights[:, None]).T @ moved  # about the current mu, as the gradient in Sigma needs
    value = float(weights @ gaussian_nll(points + delta, mu, sigma))
    mult = float(weights @ mult) if np.ndim(mult) else float(mult)
    return mu + weights @ moved, 0.5 * (sigma_t + sigma_t.T), value, mult


def _anderson_step(thetas, images):
    """Anderson (type II) extrapolation from past iterates theta_i and their images T(theta_i).

    With residuals r_i = T(theta_i) - theta_i it picks gamma minimising ||r_k - dR gamma|| over the
    differences of consecutive residuals and returns T(theta_k) - dT gamma.  For a linear map this
    is GMRES on (I - J)x = b: the plain map's Jacobian here has real eigenvalues in [-L, 0] with
    L > 1 for large eps (hence the oscillation), but I - J is well conditioned.
    """
    res = [g - t for t, g in zip(thetas, images)]
    d_res = np.stack([b - a for a, b in zip(res[:-1], res[1:])], axis=1)
    d_img = np.stack([b - a for a, b in zip(images[:-1], images[1:])], axis=1)
    gamma = np.linalg.lstsq(d_res, res[-1], rcond=1e-12)[0]
    return images[-1] - d_img @ gamma


def fit_robust_gaussian(
    points,
    weights=None,
    *,
    eps: float,
    adversary: str = "ball",
    tol: float = 1e-9,
    kink_tol: float | None = None,
    max_iter: int = 300,
    method: str = "anderson",
    memory: int = 5,
    init=None,
) -> RobustFit:
    """Robust MLE  argmin_{mu, Sigma} E_w[ max_{delta} l(v + delta; mu, Sigma) ]  on weighted points.

    points are signed samples v = y x (weights 1/n) or a quadrature grid (weights from the rule).

    The stationarity condition is the fixed point Theta = T(Theta) of _fixed_point_map.  Plain
    iteration (method="plain") oscillates once eps is large next to the thin standard deviations:
    the adversary spends its budget on the thinnest direction, the update fattens it, the adversary
    moves elsewhere, ...  Two facts make a safe solver:

    * In the precision A = Sigma^-1 the objective is a max of affine functions plus -1/2 log det A,
      hence convex: its stationary point is the unique minimizer.
    * D = T(Theta) - Theta is a descent direction: the objective's directional derivative along it
      is -1/2 tr(A D_Sigma A D_Sigma) - D_mu^T A D_mu <= 0.

    method="damped" takes Theta + t D with the largest t in {1, 1/2, 1/4, ...} passing an Armijo
    test on the objective; Sigma stays positive definite (a convex combination of PD and PSD).
    method="anderson" (default) first tries an Anderson extrapolation over the last `memory`
    iterates and keeps it only if Sigma stays positive definite and the objective decreases;
    otherwise it falls back to the damped step.  Near the optimum objective changes fall below float
    resolution; there a step is accepted when the objective is flat to rounding and the fixed-point
    residual ||T(Theta) - Theta|| shrinks.  Convergence: relative residual ||T(Theta) - Theta|| /
    ||Theta|| < tol.  Raises SolverDidNotConverge after max_iter.

    Finite samples and kinks: a point whose residual is orthogonal to the top precision eigenvector
    has two worst perturbations (+/- along it), so each point adds a kink to the objective.  On a
    quadrature grid symmetric about the optimum no node sits on one and the objective is smooth
    there; on n samples the minimizer generically sits *on* kinks (like a median), the fixed-point
    residual cannot fall below about 1/n, and iterates hover within that distance of the minimizer.
    kink_tol (default: tol) accepts such a point: residual < kink_tol *and* no objective decrease
    over the last `memory` iterations.  fit_robust_from_samples sets kink_tol = 10/n, which is far
    below the statistical error 1/sqrt(n).  RobustFit.residual reports what was reached.
    """
    if method not in ("anderson", "damped", "plain"):
        raise ValueError(f"unknown method {method!r}")
    points = np.atleast_2d(np.asarray(points, dtype=float))
    n, d = points.shape
    weights = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float)
    if init is None:  # start from the ordinary MLE: weighted mean and (biased) covariance
        mu = weights @ points
        sigma = ((points - mu) * weights[:, None]).T @ (points - mu)
    else:
        mu, sigma = (np.array(p, dtype=float) for p in init)

    pack = lambda m, s: np.concatenate([m, s.ravel()])  # noqa: E731
    unpack = lambda th: (th[:d], 0.5 * (th[d:].reshape(d, d) + th[d:].reshape(d, d).T))  # noqa: E731

    def evaluate(m, s):
        m_t, s_t, value, mult = _fixed_point_map(points, weights, m, s, eps, adversary)
        return pack(m_t, s_t), value, mult

    kink_tol = tol if kink_tol is None else max(kink_tol, tol)
    theta = pack(mu, sigma)
    image, value, mult = evaluate(mu, sigma)
    thetas, images, values = [theta], [image], [value]
    step = 1.0
    for it in range(max_iter + 1):
        mu, sigma = unpack(theta)
        direction = image - theta
        residual = float(np.linalg.norm(direction) / np.linalg.norm(theta))
        slack = 1e-12 * (1.0 + abs(value))  # objective differences below this are rounding noise
        stalled = len(values) > memory and min(values[-memory:]) >= min(values[:-memory]) - slack
        if residual < tol or (residual < kink_tol and stalled):
            return RobustFit(mu, sigma, value, it, residual, mult, eps, adversary)
        if it == max_iter:
            break

        def flat_but_closer(cand, cand_image, cand_value):
            # Where objective changes drown in rounding, ask for a smaller fixed-point residual instead.
            return abs(cand_value - value) <= slack and np.linalg.norm(cand_image - cand) < np.linalg.norm(direction)

        accepted = None
        if method == "plain":
            accepted = (image,) + evaluate(*unpack(image))
        if method == "anderson" and len(thetas) > 1:
            cand = _anderson_step(thetas, images)
            cand_mu, cand_sigma = unpack(cand)
            if np.all(np.linalg.eigvalsh(cand_sigma) > 0):
                cand_image, cand_value, cand_mult = evaluate(cand_mu, cand_sigma)
                if cand_value < value - slack or flat_but_closer(cand, cand_image, cand_value):
                    accepted = (cand, cand_image, cand_value, cand_mult)
        if accepted is None:  # damped step along the descent direction D, Armijo backtracking
            d_mu, d_sigma = unpack(direction)
            precision = np.linalg.inv(sigma)
            slope = -0.5 * np.trace(precision @ d_sigma @ precision @ d_sigma) - d_mu @ precision @ d_mu
            step = min(1.0, 2.0 * step)  # let the step grow back after a hard stretch
            while True:
                cand = theta + step * direction
                cand_image, cand_value, cand_mult = evaluate(*unpack(cand))
                armijo = cand_value <= min(value + 1e-4 * step * slope, value - slack)  # a real decrease
                if armijo or flat_but_closer(cand, cand_image, cand_value) or step < 1e-12:
                    break
                step *= 0.5
            accepted = (cand, cand_image, cand_value, cand_mult)
        theta, image, value, mult = accepted
        thetas, images = (thetas + [theta])[-(memory + 1) :], (images + [image])[-(memory + 1) :]
        values.append(value)
    raise SolverDidNotConverge(
        f"robust MLE ({adversary}, eps={eps}, {method}) did not converge in {max_iter} iterations "
        f"(relative fixed-point residual {residual:.2e} > tol {tol:.0e}, kink_tol {kink_tol:.0e})"
    )


def fit_robust_from_samples(x, y, *, eps: float, adversary: str = "ball", **kwargs) -> RobustFit:
    """Robust MLE on labelled samples (x, y), each weighted 1/n; kink_tol defaults to 10/n (see above)."""
    v = signed_points(x, y)
    kwargs.setdefault("kink_tol", 10.0 / len(v))
    return fit_robust_gaussian(v, None, eps=eps, adversary=adversary, **kwargs)


def fit_robust_from_quadrature(mu, sigma, *, eps: float, points_per_dim: int = 60, adversary: str = "ball", **kwargs):
    """Population robust MLE for N(mu, Sigma), the expectation taken on a Gauss-Hermite grid."""
    nodes, weights = gauss_hermite_grid(mu, sigma, points_per_dim)
    return fit_robust_gaussian(nodes, weights, eps=eps, adversary=adversary, **kwargs)


# ----------------------------------------------------------------------------------------------
# Theorem 2: the closed form of the robust covariance
# ----------------------------------------------------------------------------------------------


def robust_covariance_closed_form(sigma, lam: float):
    """Sigma_r = Sigma/2 + I/lam + (Sigma/lam + Sigma^2/4)^{1/2}  (all terms share Sigma's eigenbasis).

    Derivation: the penalty adversary with multiplier lam moves u to (I - A_r/lam)^-1 u, so the
    fixed point Sigma_r = E[(u + delta)(u + delta)^T] = (I - A_r/lam)^-2 Sigma.  Per eigenvalue,
    s_r = s (lam s_r)^2 / (lam s_r - 1)^2, i.e. s_r - 1/lam = sqrt(s s_r); solving the quadratic in
    sqrt(s_r) gives sqrt(s_r) = (sqrt(s) + sqrt(s + 4/lam)) / 2, whose square is the formula above.
    lam = inf gives Sigma_r = Sigma; small lam gives Sigma_r ~ I/lam, a blend toward the identity.
    Exact for the penalty / mean-square adversary; for the per-sample ball adversary it is an
    approximation (the paper states it for small eps, with lam only bounded in terms of eps).
    """
    if np.isinf(lam):
        return np.array(sigma, dtype=float)
    return spectral_function(sigma, lambda s: s / 2.0 + 1.0 / lam + np.sqrt(s / lam + s**2 / 4.0))


def mean_square_budget_of_multiplier(sigma, lam: float) -> float:
    """E||delta||^2 spent by the penalty adversary with multiplier lam against the robust fit.

    E||(lam I - A_r)^-1 A_r z||^2 for z ~ N(0, Sigma), A_r = Sigma_r(lam)^-1:
    sum_i s_i / (lam s_{r,i} - 1)^2, which the fixed point simplifies to tr(Sigma_r^-1) / lam^2.
    Strictly decreasing in lam from +inf (lam -> 0) to 0 (lam -> inf).
    """
    s = np.linalg.eigvalsh(sigma)
    t = lam * s
    lam_s_r_minus_1 = t / 2.0 + np.sqrt(t + t**2 / 4.0)  # lam * s_r - 1, written without cancellation
    return float(np.sum(s / lam_s_r_minus_1**2))


def multiplier_for_eps(sigma, eps: float) -> float:
    """The lam(eps) with mean_square_budget_of_multiplier(sigma, lam) = eps^2 (1-D root find in log lam).

    Asymptotics: lam ~ sqrt(tr Sigma^-1) / eps as eps -> 0, and lam ~ d / eps^2 as eps -> inf.
    """
    if eps == 0:
        return np.inf
    f = lambda log_lam: np.log(mean_square_budget_of_multiplier(sigma, np.exp(log_lam))) - 2 * np.log(eps)  # noqa: E731
    lo, hi = -5.0, 5.0
    while f(lo) < 0:
        lo -= 5.0
    while f(hi) > 0:
        hi += 5.0
    return float(np.exp(brentq(f, lo, hi, xtol=1e-14)))


def robust_mle_mean_square(sigma, eps: float):
    """Direct solve of the mean-square robust MLE: Sigma_r(lam(eps)) and lam(eps).  (mu_r = mu.)"""
    lam = multiplier_for_eps(sigma, eps)
    return robust_covariance_closed_form(sigma, lam), lam


def implied_multipliers(sigma, sigma_r):
    """Per-eigendirection lam_i solving the closed form for sigma_r: 1/lam_i = s_r,i - sqrt(s_i s_r,i).

    If sigma_r is exactly the closed form for some lam, all lam_i are equal; their spread measures how
    far a solver's answer is from the closed form.  s_r,i are the diagonal entries of V^T sigma_r V in
    sigma's eigenbasis V, exact when sigma_r shares that basis (as every robust fit here does).
    """
    s, vecs = np.linalg.eigh(sigma)
    s_r = np.einsum("ji,jk,ki->i", vecs, sigma_r, vecs)
    return 1.0 / (s_r - np.sqrt(s * s_r))


def closest_closed_form(sigma, sigma_r) -> tuple[float, float]:
    """The lam whose closed form best matches sigma_r, and the remaining relative mismatch.

    "The lam the solver implies" for an adversary without one global multiplier (the L2 ball).
    Mismatch is measured basis-free through the eigenvalues g_i of sigma_r^-1 Sigma_cf(lam):
    lam minimises sum_i log^2 g_i (the affine-invariant distance) and the error is max_i |g_i - 1|.
    """
    root_inv = np.linalg.inv(symmetric_sqrt(sigma_r))

    def ratios(log_lam):
        return np.linalg.eigvalsh(root_inv @ robust_covariance_closed_form(sigma, np.exp(log_lam)) @ root_inv)

    def loss(log_lam):
        return np.sum(np.log(ratios(log_lam)) ** 2)

    grid = np.linspace(-12.0, 16.0, 113)  # coarse scan over log lam, then refine around the best
    k = int(np.argmin([loss(t) for t in grid]))
    bounds = (grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)])
    best = minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-10})
    return float(np.exp(best.x)), float(np.max(np.abs(ratios(best.x) - 1.0)))


# ----------------------------------------------------------------------------------------------
# Theorem 1: the adversarial loss gap and the Mahalanobis / L2 misalignment
# ----------------------------------------------------------------------------------------------


def loss_gap_closed_form(sigma, penalty: float) -> float:
    """E[l(x + delta*)] - E[l(x)] for the true model and Theorem 1's penalty adversary with constant C.

    With u + delta* = M u, M = I + (C Sigma - I)^-1 (C > 1/sigma_min(Sigma) for a finite maximum),
    E[1/2 u^T M Sigma^-1 M u] = 1/2 tr(M^2), and the clean term is d/2, so

        gap = 1/2 ( tr[(I + (C Sigma - I)^-1)^2] - d ).

    The paper (as recalled) writes tr[...] - d, i.e. without the factor 1/2 of the NLL.  Per eigenvalue the summand
    (C s / (C s - 1))^2 is convex and decreasing in s, so at fixed tr(Sigma) the gap is smallest for
    isotropic Sigma (Jensen): the gap comes from the L2 ball meeting thin Mahalanobis directions.
    """
    s = np.linalg.eigvalsh(sigma)
    if penalty * s[0] <= 1.0:
        raise ValueError(f"the penalty C={penalty:.4g} must exceed 1/sigma_min = {1 / s[0]:.4g}")
    return float(0.5 * (np.sum((penalty * s / (penalty * s - 1.0)) ** 2) - s.size))


def loss_gap_monte_carlo(sigma, penalty: float, n: int, rng: np.random.Generator) -> tuple[float, float]:
    """Monte Carlo estimate (and its standard error) of the gap loss_gap_closed_form computes."""
    d = sigma.shape[0]
    z = rng.standard_normal((n, d)) @ symmetric_sqrt(sigma)
    delta = penalty_perturbation(z, np.linalg.inv(sigma), penalty)
    diff = gaussian_nll(z + delta, np.zeros(d), sigma) - gaussian_nll(z, np.zeros(d), sigma)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(n))


# ----------------------------------------------------------------------------------------------
# Theorem 3: gradient alignment
# ----------------------------------------------------------------------------------------------


def gradient_alignment(sigma, mu) -> float:
    """cos angle(Sigma^-1 mu, mu): how well the classifier's input gradient points along the class axis."""
    g = np.linalg.solve(sigma, mu)
    return float(g @ mu / (np.linalg.norm(g) * np.linalg.norm(mu)))


def worst_case_alignment(sigma) -> float:
    """min over mu of gradient_alignment(sigma, mu) = 2 sqrt(kappa) / (1 + kappa), kappa = cond(Sigma).

    (Kantorovich; attained at mu = sqrt(s_max) v_max + sqrt(s_min) v_min, v the eigenvectors of
    Sigma with eigenvalues s.)  Theorem 3 is a statement about this worst case: the robust Sigma_r
    has a smaller condition number, so its worst alignment is larger.
    """
    s = np.linalg.eigvalsh(sigma)
    kappa = s[-1] / s[0]
    return float(2.0 * np.sqrt(kappa) / (1.0 + kappa))
