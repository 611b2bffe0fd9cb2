"""APGD and the AutoAttack ensemble: the paper's step-size schedule, step-for-step agreement with
torchattacks from the same start, robust accuracy against torchattacks and against advfeat's
PGD, the closed form of a linear model, invariants, the slot engine (retirement, restarts,
host syncs, batch widths), gradient masking, shared work across eps, bad input."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from advfeat.attacks import frozen_view, make_threat, pgd
from advfeat.attacks.apgd import apgd, apgd_targeted, checkpoints
from advfeat.attacks.engine import top_classes
from advfeat.attacks.autoattack import autoattack
from advfeat.attacks.square import square_attack
from advfeat.evaluation import autoattack_accuracy
from advfeat.errors import UserError
from advfeat.models import create_model

from advfeat.interop import ContiguousGradient
from conftest import LinearBinary, Quantized

torchattacks = pytest.importorskip("torchattacks")


# --------------------------------------------------------------------------- models and data


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    return create_model("tiny").eval()


@pytest.fixture(scope="module")
def correct_tiny(trained_tiny):
    """The test images the trained net classifies correctly (about 100 of the 300)."""
    model, x, y = trained_tiny
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok], y[ok]


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(1)


def predict(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


TA_NORM = {"l2": "L2", "linf": "Linf"}
EPS = {"l2": 0.5, "linf": 8 / 255}


# --------------------------------------------------------------------------- the algorithm


def test_checkpoints_follow_the_papers_schedule():
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), times n_iter."""
    for n_iter in (100, 1000):
        p, expected = [0.0, 0.22], []
        while p[-1] <= 1:
            expected.append(round(p[-1] * n_iter))
            p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        assert [at for at, _ in checkpoints(n_iter)] == expected
    assert [at for at, _ in checkpoints(100)] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert all(window == at - previous for (at, window), previous in
               zip(checkpoints(100), [0] + [at for at, _ in checkpoints(100)]))


def torchattacks_start(x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The random start torchattacks' APGD draws first after torch.manual_seed(0)."""
    torch.manual_seed(0)
    if norm == "l2":
        t = torch.randn(x.shape)
        return (x + eps * t / ((t ** 2).sum(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-12)).clamp(0, 1)
    t = 2 * torch.rand(x.shape) - 1
    return (x + eps * t / t.reshape(len(t), -1).abs().amax(1).view(-1, 1, 1, 1)).clamp(0, 1)


@pytest.mark.parametrize("norm,loss", [("l2", "ce"), ("linf", "dlr"), ("linf", "dlr-targeted")])
def test_from_the_same_start_the_best_loss_matches_torchattacks(correct_tiny, norm, loss):
    """Step sizes, momentum, checkpoints and jumps back to the best point, iteration by
    iteration: from torchattacks' own start, 100 iterations reach the same best loss. (Not L2
    targeted: torchattacks' APGDT steps every L2 example with the first example's step size.)"""
    model, x, y = correct_tiny
    x, y = x[:48], y[:48]
    eps = EPS[norm]
    wrapped = ContiguousGradient(frozen_view(model, False, x.device))
    start = torchattacks_start(x, norm, eps)
    if loss == "dlr-targeted":
        atk = torchattacks.APGDT(wrapped, norm=TA_NORM[norm], eps=eps, steps=100, n_restarts=1)
        atk.target_class = 2  # the second-highest clean logit: our first target
        torch.manual_seed(0)
        theirs = atk.attack_single_run(x, y)[2]
        with torch.no_grad():
            target = top_classes(model(x), y, 1)[:, 0]
    else:
        atk = torchattacks.APGD(wrapped, norm=TA_NORM[norm], eps=eps, steps=100, n_restarts=1, loss=loss)
        torch.manual_seed(0)
        theirs = atk.perturb(x, y, best_loss=True)[0]
        target = None
    ours = apgd(model, x, y, norm=norm, eps=eps, n_iter=100, loss=loss, target=target, x_init=start, retire=False,
                success_when="misclassified")
    close = (ours.loss - theirs).abs() <= 1e-3 * theirs.abs().clamp(min=1)
    assert close.float().mean() >= 0.9, (ours.loss - theirs).abs().max()
    assert (ours.loss - theirs).abs().mean() <= 1e-3 * theirs.abs().mean()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_robust_accuracy_agrees_with_torchattacks_and_beats_pgd(trained_tiny, norm):
    """APGD-CE and APGD-T (3 target classes) at 100 iterations on 300 test images: robust
    accuracy within 1 point of torchattacks', and never above advfeat's 20-step PGD."""
    model, x, y = trained_tiny
    eps = EPS[norm]
    correct = predict(model, x) == y
    xc, yc = x[correct], y[correct]
    wrapped = ContiguousGradient(frozen_view(model, False, x.device))
    n = len(y)

    def accuracy(survivors: torch.Tensor) -> float:
        return float(survivors.sum()) / n

    ce = apgd(model, xc, yc, norm=norm, eps=eps, n_iter=100, generator=generator(0))
    theirs_ce = torchattacks.APGD(wrapped, norm=TA_NORM[norm], eps=eps, steps=100, n_restarts=1, loss="ce")(xc, yc)
    targeted = apgd_targeted(model, xc, yc, norm=norm, eps=eps, n_iter=100, n_target_classes=3,
                             generator=generator(1))
    theirs_t = torchattacks.APGDT(wrapped, norm=TA_NORM[norm], eps=eps, steps=100, n_restarts=1, n_classes=4)(xc, yc)
    reference = pgd(model, xc, yc, threat=make_threat(norm, eps), steps=20, step_size=2.5 * eps / 20, retire=True,
                    generator=generator(2))
    acc = {"ce": accuracy(~ce.success), "ta-ce": accuracy(predict(model, theirs_ce) == yc),
           "t": accuracy(~targeted.success), "ta-t": accuracy(predict(model, theirs_t) == yc),
           "pgd": accuracy(~reference.success), "clean": accuracy(correct)}
    assert acc["clean"] - acc["ce"] > 0.05, acc  # the comparison must mean something
    assert abs(acc["ce"] - acc["ta-ce"]) <= 0.01 + 1e-9, acc
    assert abs(acc["t"] - acc["ta-t"]) <= 0.01 + 1e-9, acc
    assert acc["ce"] <= acc["pgd"], acc
    # What the attacks report is what the model does at their points.
    assert torch.equal(predict(model, ce.x_adv) != yc, ce.success)
    assert torch.equal(predict(model, targeted.x_adv) != yc, targeted.success)


def linear_examples(factors: torch.Tensor, eps: float, seed: int = 1):
    """A linear binary model and images whose L2 distance to its boundary is factor * eps."""
    g = generator(seed)
    w = torch.randn(3, 4, 4, generator=g)
    model = LinearBinary(w, 0.0)
    x0 = 0.5 + 0.02 * torch.randn(len(factors), 3, 4, 4, generator=g)
    w = w.flatten()
    shift = (factors * eps * w.norm() - x0.flatten(1) @ w) / w.norm() ** 2
    x0 = (x0.flatten(1) + shift[:, None] * w[None]).view(-1, 3, 4, 4)
    assert x0.min() > 0.05 and x0.max() < 0.95  # far from the walls: the ball alone binds
    return model, x0, w


def test_apgd_finds_the_exact_l2_boundary_distance_of_a_linear_model():
    eps = 0.3
    factors = torch.tensor([0.5, 0.8, 0.9, 0.95, 0.98, 1.02, 1.05, 1.1, 1.3, 2.0])
    model, x0, w = linear_examples(factors, eps)
    y = torch.ones(len(x0), dtype=torch.long)  # class 1: w.x > 0
    result = apgd(model, x0, y, norm="l2", eps=eps, n_iter=100, generator=generator(0))
    assert result.success.tolist() == (factors < 1).tolist()
    distance = (result.x_adv - x0).flatten(1).norm(dim=1)
    # A broken example's point lies past the boundary, so at least its distance away.
    assert (distance[result.success] >= factors[result.success] * eps - 1e-5).all()
    # An unbroken one sits at the cross-entropy maximum over the ball: eps along -w.
    margin = x0.flatten(1) @ w
    optimum = nn.functional.softplus(-(margin - eps * w.norm()))
    hold = ~result.success
    torch.testing.assert_close(result.loss[hold], optimum[hold], atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- invariants and the engine


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr-targeted"])
def test_perturbations_stay_in_the_ball_and_the_box(random_net, norm, loss):
    g = generator(1)
    x = torch.rand(6, 3, 32, 32, generator=g)
    x[0], x[1] = 0.0, 1.0  # pixels on the walls of the box
    y = torch.randint(0, 10, (6,), generator=g)
    target = (y + 1) % 10 if loss == "dlr-targeted" else None
    eps = {"l2": 2.0, "linf": 16 / 255}[norm]
    result = apgd(random_net, x, y, norm=norm, eps=eps, n_iter=10, loss=loss, target=target, restarts=2,
                  generator=g)
    assert (size(result.x_adv - x, norm) <= eps + 1e-6).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    pred = predict(random_net, result.x_adv)
    assert torch.equal(result.success, pred == target if target is not None else pred != y)


def test_retirement_and_batch_width_change_cost_not_results(correct_tiny):
    model, x, y = correct_tiny
    options = dict(norm="l2", eps=0.5, n_iter=20)
    retired = apgd(model, x, y, batch_size=32, generator=generator(5), **options)
    full = apgd(model, x, y, batch_size=32, retire=False, generator=generator(5), **options)
    wide = apgd(model, x, y, generator=generator(5), **options)
    assert 0 < retired.success.sum() < len(y)
    for other in (full, wide):
        assert torch.equal(other.success, retired.success)
        assert torch.equal(other.success_iteration, retired.success_iteration)
        torch.testing.assert_close(other.x_adv, retired.x_adv, atol=1e-5, rtol=0)
    hold = ~retired.success
    torch.testing.assert_close(full.loss[hold], retired.loss[hold], atol=1e-5, rtol=1e-5)
    assert (retired.iterations[retired.success] == retired.success_iteration[retired.success]).all()
    assert (full.iterations == 20).all() and full.image_steps >= len(y) * 20
    # Retired examples free their slots for the queue: fewer image-steps for the same results.
    assert retired.image_steps < 0.8 * full.image_steps


def test_restarts_only_improve(correct_tiny):
    model, x, y = correct_tiny
    options = dict(norm="linf", eps=2 / 255, n_iter=5)
    one = apgd(model, x, y, generator=generator(3), **options)
    three = apgd(model, x, y, restarts=3, generator=generator(3), **options)
    # The first restart is the single run; later ones start elsewhere, on the unbroken only.
    assert (three.success >= one.success).all()
    hold = ~one.success
    assert hold.sum() > 10
    assert (three.loss[hold] >= one.loss[hold]).all()
    assert (three.loss[hold] > one.loss[hold] + 1e-4).float().mean() > 0.3
    assert torch.equal(three.iterations[one.success], one.iterations[one.success])
    assert (three.iterations[~three.success] == 3 * 5).all()
    # The point returned for an unbroken example is the one with the loss reported.
    hold = ~three.success
    with torch.no_grad():
        at_point = nn.functional.cross_entropy(model(three.x_adv[hold]), y[hold], reduction="none")
    torch.testing.assert_close(at_point, three.loss[hold], atol=1e-4, rtol=1e-4)


def test_step_size_halves_when_the_loss_oscillates_or_stalls():
    """The checkpoint rule on hand-set slots at iteration 57 (the third checkpoint of 100,
    a window of 16 steps): halve eta and jump back to the best point when the loss rose in at
    most 0.75 * 16 = 12 steps, or when eta was not halved last time and the best loss is no higher."""
    from advfeat.attacks.apgd import APGDSlots, _checkpoint, window_table

    x0p = torch.rand(5, 3, 4, 4)
    slots = APGDSlots(4, x0p, torch.zeros(5, 2, dtype=torch.long), 4, eta0=1.0)
    slots.fill(torch.arange(4).numpy(), torch.arange(4), x0p[:4].clone(), x0p, torch.zeros(5, 2, dtype=torch.long))
    slots.best_x, slots.best_grad = torch.rand(4, 3, 4, 4), torch.rand(4, 3, 4, 4)
    slots.t = torch.full((4,), 57)
    slots.increases = torch.tensor([12, 13, 13, 13])  # at most 12 of 16: oscillates
    slots.reduced = torch.tensor([False, False, True, False])
    slots.best_loss, slots.check_loss = torch.tensor([2.0, 1.0, 1.0, 2.0]), torch.ones(4)
    grad = torch.rand(4, 3, 4, 4)
    x_before, best_x, best_grad = slots.x.clone(), slots.best_x.clone(), slots.best_grad.clone()
    stepped = _checkpoint(slots, torch.ones(4, dtype=torch.bool), grad, window_table(100, x0p.device), 0.75)
    halved = [True, True, False, False]  # oscillates (improved); stalls; stalls but was halved; improved
    assert slots.eta.tolist() == [0.5 if h else 1.0 for h in halved]
    assert slots.reduced.tolist() == halved and slots.increases.tolist() == [0] * 4
    assert slots.check_loss.tolist() == slots.best_loss.tolist()
    for i, h in enumerate(halved):
        assert torch.equal(slots.x[i], best_x[i] if h else x_before[i])
        assert torch.equal(stepped[i], best_grad[i] if h else grad[i])
    slots.t = torch.full((4,), 58)  # not a checkpoint: nothing changes
    eta = slots.eta.clone()
    _checkpoint(slots, torch.ones(4, dtype=torch.bool), grad, window_table(100, x0p.device), 0.75)
    assert torch.equal(slots.eta, eta)


def test_one_host_sync_per_step_at_most_and_a_ladder_of_widths(correct_tiny, monkeypatch):
    """Syncs are counted as the engine's reads of device state (`alive`) plus every op that
    forces one; a draining queue shrinks the batch along width, width/2, width/4, ..."""
    from torch.utils._python_dispatch import TorchDispatchMode

    engine = importlib.import_module("advfeat.attacks.apgd")
    syncing = {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::item"}

    class CountSyncs(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountSyncs.count += func.name().split(".")[0] in syncing
            return func(*args, **(kwargs or {}))

    slot_engine = importlib.import_module("advfeat.attacks.engine")  # the drain loop APGD shares with PGD
    reads, steps_run, sizes = [], [], []
    read_alive, step = slot_engine.read_alive, engine._step
    monkeypatch.setattr(slot_engine, "read_alive", lambda slots: reads.append(1) or read_alive(slots))
    monkeypatch.setattr(engine, "_step", lambda *args: steps_run.append(1) or step(*args))
    model, x, y = correct_tiny
    hook = model.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]))
    try:
        for retire, refill_every in ((False, 1), (True, 1), (True, 4)):
            reads.clear()
            steps_run.clear()
            CountSyncs.count = 0
            with CountSyncs():
                apgd(model, x[:100], y[:100], norm="l2", eps=0.5, n_iter=9, retire=retire, batch_size=32,
                     refill_every=refill_every, generator=generator(0))
            assert CountSyncs.count == 0
            if not retire:
                assert not reads
            else:
                assert 0 < len(reads) <= -(-len(steps_run) // refill_every) + 1
    finally:
        hook.remove()
    assert max(sizes) == 32 and set(sizes) <= {32, 16, 8, 4, 2, 1} and len(set(sizes)) >= 3


def test_attack_computes_no_weight_gradients_and_restores_the_model(random_net):
    random_net.zero_grad(set_to_none=True)
    random_net.train()
    try:
        apgd(random_net, torch.rand(4, 3, 32, 32), torch.arange(4), norm="l2", eps=0.5, n_iter=3)
        assert random_net.training and all(p.requires_grad for p in random_net.parameters())
    finally:
        random_net.eval()
    assert all(p.grad is None for p in random_net.parameters())


# --------------------------------------------------------------------------- the ensemble


def test_ensemble_is_the_worst_case_over_its_stages(correct_tiny):
    model, x, y = correct_tiny
    x, y = torch.cat([x[:60], torch.rand(4, 3, 32, 32)]), torch.cat([y[:60], torch.zeros(4, dtype=torch.long)])
    eps = 4 / 255
    result = autoattack(model, x, y, norm="linf", eps=eps, n_iter=20, n_target_classes=3, generator=generator(0))
    ce_alone = apgd(model, x, y, norm="linf", eps=eps, n_iter=20, generator=generator(0))
    records, robust = result["records"], result["robust"]
    assert result["robust_accuracy"] == pytest.approx(float(robust.float().mean()))
    assert [r["attack"] is None for r in records] == robust.tolist()
    pred_clean, pred_adv = predict(model, x), predict(model, result["x_adv"])
    assert [r["attack"] == "clean" for r in records] == (pred_clean != y).tolist()
    # Every broken example is broken at the returned point, inside the ball.
    assert torch.equal(pred_adv != y, ~robust)
    assert (size(result["x_adv"] - x, "linf") <= eps + 1e-6).all()
    # Each stage runs only on what the earlier ones left: APGD-T adds to APGD-CE.
    ce, t = result["stages"]
    assert ce["attacked"] == int((pred_clean == y).sum()) and t["attacked"] == ce["attacked"] - ce["broken"]
    assert t["broken"] > 0
    assert result["robust_accuracy"] < float((~ce_alone.success & (pred_clean == y)).float().mean())
    broken_t = [r for r in records if r["attack"] == "apgd-t"]
    assert all(r["target"] is not None and 0 <= r["iteration"] <= 20 for r in broken_t)


def test_shared_eps_work_keeps_records_and_attacks_only_survivors(correct_tiny):
    model, x, y = correct_tiny
    x, y = x[:60], y[:60]
    report = autoattack_accuracy(model, x, y, [0.5, 0.25], norm="l2", n_iter=10, n_target_classes=2, seed=0)
    small, large = report["robust"]
    assert [small["eps"], large["eps"]] == [0.25, 0.5]
    assert report["clean_accuracy"] == 1.0 and report["warnings"] == []
    assert large["accuracy"] <= small["accuracy"] < 1.0
    assert large["attacked"] == len(small["robust_index"]) < small["attacked"] == len(y)
    for row in (small, large):
        assert row["robust_index"] == [i for i, r in enumerate(row["per_example"]) if r is None]
        assert row["accuracy"] == pytest.approx(len(row["robust_index"]) / len(y))
        assert row["image_steps"] > 0 and row["image_steps_per_s"] > 0 and row["images_per_s"] > 0
    for before, after in zip(small["per_example"], large["per_example"]):
        if before is not None:
            assert after == before  # broken at 0.25: the same point breaks it at 0.5
    assert sum(large["broken_by"].values()) == large["attacked"] - len(large["robust_index"])


def test_gradient_masking_fools_apgd_is_flagged_and_square_breaks_through(correct_tiny):
    model, x, y = correct_tiny
    masked = Quantized(model).eval()
    ok = predict(masked, x) == y
    x, y = x[ok][:60], y[ok][:60]
    eps = 8 / 255
    grads = apgd(masked, x, y, norm="linf", eps=eps, n_iter=20, generator=generator(0))
    assert grads.zero_grad.all()  # the simple check: no gradient to follow
    report = autoattack_accuracy(masked, x, y, [eps], norm="linf", n_iter=10, n_target_classes=2)
    assert any("zero gradient" in w for w in report["warnings"])
    square = square_attack(masked, x, y, norm="linf", eps=eps, n_queries=300, generator=generator(0))
    assert (square.success & ~grads.success).sum() >= 10, (square.success.sum(), grads.success.sum())
    assert (size(square.x_adv - x, "linf") <= eps + 1e-6).all()
    assert torch.equal(predict(masked, square.x_adv) != y, square.success)
    with_square = autoattack(masked, x, y, norm="linf", eps=eps, n_iter=10, n_target_classes=2, square=True,
                             square_queries=300, generator=generator(0))
    assert with_square["stages"][-1]["broken"] > 0
    assert with_square["robust_accuracy"] < report["robust"][0]["accuracy"]


def test_l2_square_stays_on_the_sphere_and_breaks_examples(correct_tiny):
    model, x, y = correct_tiny
    x, y = x[:60], y[:60]
    result = square_attack(model, x, y, norm="l2", eps=0.5, n_queries=200, generator=generator(0))
    assert result.success.sum() >= 3  # torchattacks' Square breaks 5 of them with the same budget
    assert (size(result.x_adv - x, "l2") <= 0.5 + 1e-5).all() and result.x_adv.min() >= 0
    assert torch.equal(predict(model, result.x_adv) != y, result.success)


# --------------------------------------------------------------------------- bad input


X2, Y2 = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])


@pytest.mark.parametrize("call,needle", [
    (lambda m: apgd(m, X2, Y2, norm="l2", eps=0.0), "eps must be positive"),
    (lambda m: apgd(m, X2, Y2, norm="l2", eps=-0.5), "eps must be positive"),
    (lambda m: apgd(m, X2, Y2, norm="l2", eps=0.5, n_iter=0), "n_iter must be at least 1"),
    (lambda m: apgd(m, X2, Y2, norm="l1", eps=0.5), "unknown norm 'l1'"),
    (lambda m: apgd(m, X2, Y2, norm="l2", eps=0.5, loss="hinge"), "unknown loss 'hinge'"),
    (lambda m: apgd(m, X2, Y2, norm="l2", eps=0.5, loss="dlr-targeted"), "needs a target class"),
    (lambda m: apgd(m, X2, Y2, norm="l2", eps=0.5, loss="dlr-targeted", target=Y2), "equals the true label"),
    (lambda m: apgd(m, X2, Y2, norm="l2", eps=0.5, loss="dlr-targeted", target=torch.tensor([3, 12])),
     "targets must be classes 0..9"),
    (lambda m: apgd(m, X2, Y2, norm="l2", eps=0.5, restarts=0), "restarts must be at least 1"),
    (lambda m: autoattack(m, X2, Y2, norm="linf", eps=0.0), "eps must be positive"),
    (lambda m: autoattack(m, X2, Y2, norm="linf", eps=0.1, n_iter=0), "n_iter must be at least 1"),
    (lambda m: autoattack(m, X2, Y2, norm="l3", eps=0.1), "unknown norm 'l3'"),
    (lambda m: autoattack(m, X2, Y2, norm="linf", eps=0.1, n_target_classes=0), "n_target_classes must be in 1..9"),
    (lambda m: autoattack(m, X2, Y2, norm="linf", eps=0.1, n_target_classes=10), "n_target_classes must be in 1..9"),
    (lambda m: autoattack_accuracy(m, X2, Y2, [0.5, 0.0], norm="l2"), "eps must be positive"),
    (lambda m: autoattack_accuracy(m, X2, Y2, [0.5], norm="l2", n_target_classes=10),
     "n_target_classes must be in 1..9"),
    (lambda m: apgd(LinearBinary(torch.ones(3, 32, 32), 0.0), X2, torch.tensor([0, 1]), norm="l2", eps=0.5,
                    loss="dlr"), "at least 3 classes"),
])
def test_bad_input_is_one_line_user_error(random_net, call, needle):
    with pytest.raises(UserError, match=needle) as error:
        call(random_net)
    assert len(str(error.value).splitlines()) == 1
