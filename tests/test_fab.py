"""FAB / FAB-T (advfeat.attacks.fab): the exact boundary distance of a linear model (closed form),
the hyperplane-box projections against torchattacks' and against their own optimality
conditions, agreement with torchattacks' FAB-T on a trained net, retirement that changes cost
and not verdicts, batch-width independence, bad input."""

from __future__ import annotations

import pytest
import torch

from advfeat.attacks.fab import fab, fab_targeted, flat_norm, project_l2, project_linf
from advfeat.errors import UserError

from advfeat.interop import ContiguousGradient
from conftest import LinearBinary

torchattacks = pytest.importorskip("torchattacks")
from torchattacks.attacks import fab as ta_fab  # the module, for its projections


def linear_case(seed: int = 0, n: int = 12):
    """A linear binary model and images well inside the box, labelled by the model."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 8, 8, generator=g) * 0.1
    model = LinearBinary(w, 0.05).eval()
    x = torch.rand(n, 3, 8, 8, generator=g) * 0.5 + 0.25
    margin = x.flatten(1) @ w.flatten() + 0.05
    return model, x, (margin > 0).long(), w.flatten(), margin


@pytest.mark.parametrize("norm,dual", [("l2", 2), ("linf", 1)])
@pytest.mark.parametrize("targeted", [True, False])
def test_fab_finds_the_exact_boundary_distance_of_a_linear_model(norm, dual, targeted):
    """The closest point of the other class is at |w.x + b| / ||w||_q (q the dual norm); FAB
    reaches it up to its overshoot: never closer (impossible), at most 1% farther."""
    model, x, y, w, margin = linear_case()
    exact = margin.abs() / w.norm(p=dual)
    result = fab(model, x, y, norm=norm, target=(1 - y) if targeted else None, n_iter=100)
    assert result.success.all()
    ratio = result.distance / exact
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.01).all(), ratio
    assert torch.allclose(flat_norm(result.x_adv - x, norm), result.distance, rtol=1e-5)
    with torch.no_grad():
        assert (model(result.x_adv).argmax(1) != y).all()


def random_hyperplanes(seed: int, b: int = 64, n: int = 300):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(b, n, generator=g)
    w = torch.randn(b, n, generator=g)
    w[:, :7] = 0  # coordinates the hyperplane ignores
    # Offsets from near the point to far beyond the box: feasible and infeasible cases.
    scale = torch.logspace(-2, 3, b)
    off = (w * torch.rand(b, n, generator=g)).sum(1) + scale * torch.randn(b, generator=g)
    return t, w, off


@pytest.mark.parametrize("norm,mine,theirs", [("l2", project_l2, "projection_l2"),
                                              ("linf", project_linf, "projection_linf")])
@pytest.mark.parametrize("seed", [0, 1])
def test_projections_agree_with_torchattacks_and_meet_their_constraints(norm, mine, theirs, seed):
    t, w, off = random_hyperplanes(seed)
    d = mine(t, w, off)
    reference = getattr(ta_fab, theirs)(t.clone(), w.clone(), off.clone())
    assert torch.allclose(d, reference, atol=1e-5), (d - reference).abs().max()
    inside = t + d
    assert inside.min() >= -1e-6 and inside.max() <= 1 + 1e-6
    assert (d[:, :7] == 0).all()
    # Where the box meets the hyperplane, the step lands on it; elsewhere it goes to the
    # box corner nearest to it, so no point of the box is on the far side.
    residual = (w * inside).sum(1) - off
    start = (w * t).sum(1) - off
    corner_gap = (start.abs() - (w.abs() * torch.where(w * start.sign()[:, None] > 0, t, 1 - t)).sum(1))
    feasible = corner_gap <= 0
    assert feasible.any() and (~feasible).any()
    assert (residual[feasible].abs() <= 1e-4 * (1 + start[feasible].abs())).all()


def test_l2_projection_is_optimal_among_feasible_perturbations():
    """No feasible step is shorter: the projection beats random feasible steps (each a point
    of the hyperplane inside the box) in L2."""
    t, w, off = random_hyperplanes(3, b=16, n=50)
    d = project_l2(t, w, off)
    ok = ((w * (t + d)).sum(1) - off).abs() < 1e-4
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        other = d + 0.05 * torch.randn(d.shape, generator=g)
        # Back onto the hyperplane along w, then keep the rows still inside the box.
        other = other - (((w * (t + other)).sum(1) - off) / w.square().sum(1))[:, None] * w
        inside = ((t + other) >= 0).all(1) & ((t + other) <= 1).all(1) & ok
        assert (d.norm(dim=1)[inside] <= other.norm(dim=1)[inside] + 1e-5).all()


@pytest.fixture(scope="module")
def correct_tiny(trained_tiny):
    model, x, y = trained_tiny
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:40], y[ok][:40]


def torchattacks_fab_t(model, x, y, norm: str, eps: float, steps: int):
    """torchattacks' FAB-T: (success within eps, distance of its point or inf)."""
    attack = torchattacks.FAB(ContiguousGradient(model).eval(), norm={"l2": "L2", "linf": "Linf"}[norm], eps=eps,
                              steps=steps, n_restarts=1, multi_targeted=True, n_classes=10)
    adv = attack(x, y)
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    distance = torch.where(fooled, flat_norm(adv - x, norm), torch.tensor(float("inf")))
    return fooled & (distance <= eps), distance


@pytest.mark.parametrize("norm,eps", [("l2", 0.25), ("linf", 2 / 255)])
def test_fab_t_agrees_with_torchattacks_fab_t(correct_tiny, norm, eps):
    """Same net, images, iterations and target classes. Distances (eps so large that the first
    target class breaks every image): per image within 1% for 90% of them, medians within 1%.
    Robust accuracy at eps over all 9 target classes: within 1 image of 20. (FAB has no
    randomness without restarts; batch norm folding and channels_last change the rounding.)"""
    model, x, y = correct_tiny
    x, y, steps = x[:20], y[:20], 20
    far = fab_targeted(model, x, y, norm=norm, eps=1e3, n_iter=steps, retire=False)
    _, distance = torchattacks_fab_t(model, x, y, norm, 1e3, steps)
    assert far.success.all() and torch.isfinite(distance).all()
    close = (far.distance - distance).abs() <= 0.01 * distance
    assert close.float().mean() >= 0.9, (far.distance, distance)
    assert far.distance.median() == pytest.approx(float(distance.median()), rel=0.01)
    ours = fab_targeted(model, x, y, norm=norm, eps=eps, n_iter=steps, retire=False)
    theirs, _ = torchattacks_fab_t(model, x, y, norm, eps, steps)
    assert 0 < int(theirs.sum()) < len(y)
    assert abs(int(ours.success.sum()) - int(theirs.sum())) <= 1, (ours.success.sum(), theirs.sum())
    # Success is what it claims: misclassified within eps.
    with torch.no_grad():
        assert (model(ours.x_adv[ours.success]).argmax(1) != y[ours.success]).all()
    assert (flat_norm(ours.x_adv[ours.success] - x[ours.success], norm) <= eps + 1e-6).all()


def test_retirement_and_batch_width_change_cost_not_verdicts(correct_tiny):
    model, x, y = correct_tiny
    x, y = x[:20], y[:20]
    full = fab_targeted(model, x, y, norm="l2", eps=0.25, n_iter=15, n_target_classes=3, retire=False)
    retired = fab_targeted(model, x, y, norm="l2", eps=0.25, n_iter=15, n_target_classes=3, retire=True,
                           batch_size=6)
    assert torch.equal(full.success, retired.success) and full.success.any() and not full.success.all()
    assert retired.image_steps < full.image_steps
    # A broken example stops at its first point within eps: farther than (or as far as) the closest.
    broken = full.success
    assert (retired.distance[broken] >= full.distance[broken] - 1e-6).all()
    assert (retired.distance[broken] <= 0.25 + 1e-6).all()


def test_untargeted_restarts_run_only_on_the_unbroken():
    model, x, y, w, margin = linear_case(n=6)
    exact = margin.abs() / w.norm()
    eps = 0.25
    near, far = exact * 1.01 < eps, exact > eps  # every example is one or the other here
    assert near.any() and far.any() and (near | far).all()
    result = fab(model, x, y, norm="l2", eps=eps, n_iter=20, restarts=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.success, near)
    # The unbroken ran all three restarts; the broken stopped within the first.
    assert (result.iterations[far] == 60).all() and (result.iterations[near] <= 20).all()


@pytest.mark.parametrize("call,needle", [
    (lambda m, x, y: fab(m, x, y, norm="l1", target=1 - y), "FAB supports the norms l2, linf, not 'l1'"),
    (lambda m, x, y: fab(m, x, y, norm="l2", eps=-1.0), "eps must be positive"),
    (lambda m, x, y: fab(m, x, y, norm="l2", n_iter=0), "n_iter must be at least 1"),
    (lambda m, x, y: fab(m, x, y, norm="l2", restarts=2), "give an eps"),
    (lambda m, x, y: fab(m, x, y, norm="l2", target=y), "different from its label"),
    (lambda m, x, y: fab_targeted(m, x, y, norm="linf", eps=0.1, n_target_classes=2), "n_target_classes must be"),
])
def test_bad_input_is_one_line_user_error(call, needle):
    model, x, y, _, _ = linear_case(n=2)
    with pytest.raises(UserError, match=needle) as error:
        call(model, x, y)
    assert len(str(error.value).splitlines()) == 1
