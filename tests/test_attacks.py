"""Attacks: invariants, closed forms on linear models, agreement with torchattacks, engine
behaviour (retirement, refill, restarts, frozen weights), masking warnings, bad input."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from advfeat.attacks import MatchFeatures, ReachTarget, cw_l2, frozen_view, make_threat, pgd
from advfeat.errors import UserError
from advfeat.evaluation import AttackSpec, robust_accuracy
from advfeat.models import create_model

from advfeat.interop import ContiguousGradient
from conftest import LinearBinary, Quantized, run_cli


def linear_setup(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 4, 4, generator=g)
    x0 = 0.5 + 0.02 * torch.randn(n, 3, 4, 4, generator=g)  # far from the [0, 1] walls
    return LinearBinary(w, 0.0), x0


def l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    return create_model("tiny").eval()


@pytest.mark.parametrize("norm,start", [("l2", "none"), ("l2", "sphere"), ("l2", "ball"), ("l2", "radius"),
                                        ("linf", "none"), ("linf", "box")])
@pytest.mark.parametrize("eps", [0.0, 0.3, 2.0])
def test_perturbations_stay_in_the_ball_and_the_box(random_net, norm, start, eps):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 32, 32, generator=g)
    x[0] = 0.0  # pixels on the walls of the box
    x[1] = 1.0
    y = torch.randint(0, 10, (6,), generator=g)
    result = pgd(random_net, x, y, threat=make_threat(norm, eps, start), steps=5, step_size=max(eps, 0.1) / 2,
                 generator=g, restarts=2)
    delta = result.x_adv - x
    size = l2(delta) if norm == "l2" else delta.flatten(1).abs().amax(1)
    assert (size <= eps + 1e-6).all(), size
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    if eps == 0:
        assert torch.equal(result.x_adv, x)


@pytest.mark.parametrize("start,expected", [("sphere", (1.0, 1.0)), ("ball", (0.99, 1.0)), ("radius", (0.4, 0.6))])
def test_random_start_distributions(start, expected):
    x0 = torch.full((400, 3, 8, 8), 0.5)
    eps = 0.2  # small enough that clamping to [0, 1] never binds
    points = make_threat("l2", eps, start).random_start(x0, torch.Generator().manual_seed(0))
    radius = l2(points - x0) / eps
    assert (radius <= 1 + 1e-5).all()
    low, high = expected
    # sphere: every radius is eps; ball: mean of r^(1/n) is n/(n+1) = 0.995; radius: mean 1/2.
    stat = radius.min() if start == "sphere" else radius.mean()
    assert low - 1e-5 <= stat <= high + 1e-5, (start, float(stat))


def test_untargeted_pgd_reaches_the_closed_form_optimum_of_a_linear_model():
    model, x0 = linear_setup()
    y = torch.ones(len(x0), dtype=torch.long)
    eps = 0.3
    result = pgd(model, x0, y, threat=make_threat("l2", eps, "none"), steps=50, step_size=0.05)
    w = model.w.detach()
    margin0 = x0.flatten(1) @ w
    # max CE over the ball: move by eps against w, the margin drops by eps * ||w||.
    optimum = nn.functional.softplus(-(margin0 - eps * w.norm()))
    torch.testing.assert_close(result.objective, optimum, atol=1e-5, rtol=1e-5)
    direction = (result.x_adv - x0).flatten(1) / eps
    torch.testing.assert_close(direction, (-w / w.norm()).expand_as(direction), atol=1e-4, rtol=0)


def test_targeted_pgd_crosses_the_boundary_exactly_when_the_margin_is_below_eps_norm_w():
    model, x0 = linear_setup(n=10, seed=1)
    w = model.w.detach()
    eps = 0.3
    # Shift each example along w so that its margin is eps*||w|| times a factor around 1.
    factors = torch.tensor([0.5, 0.8, 0.9, 0.95, 0.98, 1.02, 1.05, 1.1, 1.3, 2.0])
    shift = (factors * eps * w.norm() - x0.flatten(1) @ w) / w.norm() ** 2
    x0 = (x0.flatten(1) + shift[:, None] * w[None]).view(-1, 3, 4, 4)
    assert x0.min() > 0 and x0.max() < 1
    target = torch.zeros(10, dtype=torch.long)  # class 1 now; push to class 0
    result = pgd(model, x0, target, threat=make_threat("l2", eps, "none"), steps=60, step_size=0.02,
                 objective=ReachTarget())
    assert result.success.tolist() == (factors < 1).tolist()


def test_cw_finds_the_minimal_distance_of_a_linear_model():
    model, x0 = linear_setup(n=6, seed=2)
    w = model.w.detach()
    margin = x0.flatten(1) @ w
    y = (margin > 0).long()
    exact = margin.abs() / w.norm()
    result = cw_l2(model, x0, y, steps=300, binary_steps=10, lr=0.01)
    assert result.success.all()
    assert ((result.distance - exact) / exact).abs().max() < 0.05, (result.distance, exact)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_agrees_with_torchattacks(trained_tiny, norm):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = trained_tiny
    eps, alpha = (0.5, 0.1) if norm == "l2" else (4 / 255, 1 / 255)
    ours = pgd(model, x, y, threat=make_threat(norm, eps, "none"), steps=10, step_size=alpha, keep="last").x_adv
    cls = torchattacks.PGDL2 if norm == "l2" else torchattacks.PGD
    # The same function for both: advfeat attacks the model's frozen view (batch norm folded),
    # whose rounding differs from the model's; test_frozen_view_* checks the view itself.
    theirs = cls(ContiguousGradient(frozen_view(model, False, x.device)), eps=eps, alpha=alpha, steps=10,
                 random_start=False)(x, y)
    with torch.no_grad():
        acc_ours = (model(ours).argmax(1) == y).float().mean()
        acc_theirs = (model(theirs).argmax(1) == y).float().mean()
        clean = (model(x).argmax(1) == y).float().mean()
    assert clean - acc_ours > 0.05, "the attack must do something for the comparison to mean anything"
    assert abs(acc_ours - acc_theirs) <= 0.01
    if norm == "l2":
        torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=0)
    else:
        # sign() flips on gradient components at rounding level: a few pixels may differ by
        # a step or two, nearly all agree exactly.
        differ = (ours - theirs).abs() > 1e-5
        assert differ.float().mean() < 1e-3 and (ours - theirs).abs().max() <= 2 * eps + 1e-6


def test_retirement_and_refill_change_cost_not_results(trained_tiny):
    model, x, y = trained_tiny
    threat = make_threat("l2", 0.5, "none")
    full = pgd(model, x, y, threat=threat, steps=10, step_size=0.1)
    retired = pgd(model, x, y, threat=threat, steps=10, step_size=0.1, retire=True)
    refilled = pgd(model, x, y, threat=threat, steps=10, step_size=0.1, retire=True, batch_size=37)
    assert torch.equal(full.success, retired.success)
    # 10 gradient passes each; the last iterate is evaluated by a forward pass only.
    assert retired.image_steps < full.image_steps == len(x) * 10
    assert (retired.steps[retired.success] < 10).any()
    assert torch.equal(refilled.success, retired.success)
    torch.testing.assert_close(refilled.x_adv, retired.x_adv, atol=1e-5, rtol=0)


def test_restarts_differ_and_only_improve(trained_tiny):
    model, x, y = trained_tiny
    threat = make_threat("l2", 0.5, "sphere")
    one = pgd(model, x, y, threat=threat, steps=2, step_size=0.1, generator=torch.Generator().manual_seed(3))
    five = pgd(model, x, y, threat=threat, steps=2, step_size=0.1, restarts=5,
               generator=torch.Generator().manual_seed(3))
    assert (five.success >= one.success).all()
    # The first restart is the single run; later ones start elsewhere, and the best is kept.
    hold = ~five.success
    assert hold.sum() > 10
    assert (five.objective[hold] >= one.objective[hold] - 1e-6).all()
    assert (five.objective[hold] > one.objective[hold] + 1e-4).float().mean() > 0.5
    assert (five.steps[hold] == 5 * 2).all() and (five.steps[one.success] == 2).all()


def test_attack_computes_no_weight_gradients_and_restores_the_model(trained_tiny):
    model, x, y = trained_tiny
    model.zero_grad(set_to_none=True)
    model.train()
    seen_training = []
    hook = model.register_forward_pre_hook(lambda m, inp: seen_training.append(m.training))
    try:
        pgd(model, x[:8], y[:8], threat=make_threat("l2", 0.5), steps=2, step_size=0.1)
        assert model.training and all(p.requires_grad for p in model.parameters())
    finally:
        hook.remove()
        model.eval()
    assert seen_training and not any(seen_training), "attacks run the model in eval mode"
    assert all(p.grad is None for p in model.parameters())


def test_feature_objective_and_custom_losses(trained_tiny):
    model, x, _ = trained_tiny
    with torch.no_grad():
        _, target = model(x[:16], return_features=True)
    start = x[16:32]
    result = pgd(model, start, target, threat=make_threat("l2", math.inf, "none"), steps=30, step_size=0.1,
                 objective=MatchFeatures())
    with torch.no_grad():
        _, before = model(start, return_features=True)
    initial = (before - target).norm(dim=1) / target.norm(dim=1)
    assert (-result.objective < initial).all()


def test_shared_eps_work_is_consistent_with_independent_attacks(trained_tiny):
    model, x, y = trained_tiny
    shared = robust_accuracy(model, x, y, [0.25, 0.5], AttackSpec(steps=5))
    alone = robust_accuracy(model, x, y, [0.25, 0.5], AttackSpec(steps=5, share=False))
    for s, a in zip(shared["robust"], alone["robust"]):
        assert s["accuracy"] <= a["accuracy"] + 1e-9
    assert shared["robust"][1]["attacked"] < alone["robust"][1]["attacked"]  # sharing saves work


def test_gradient_masking_is_flagged(trained_tiny):
    model, x, y = trained_tiny
    report = robust_accuracy(Quantized(model).eval(), x, y, [0.5, 2.0], AttackSpec(steps=5))
    text = " ".join(report["warnings"])
    assert "zero gradient" in text
    assert "beats the main attack" in text or "no example was broken" in text


def test_robust_training_raises_robust_accuracy(shared_data, tmp_path):
    from advfeat.evaluation import split_tensors
    from advfeat.data import load_dataset
    from advfeat.training import TrainConfig, train
    from advfeat.checkpoint import load_model

    data = load_dataset(shared_data, subset=3000, test_subset=400, seed=2)
    common = dict(arch="tiny", epochs=4, schedule="onecycle", lr=0.2, seed=2)
    quiet = dict(device=torch.device("cpu"), progress=False, log=lambda message: None)
    train(TrainConfig(**common), data, tmp_path / "std", **quiet)
    train(TrainConfig(adv="l2", eps=1.0, attack_steps=3, attack_step_size=0.5, **common), data, tmp_path / "rob",
          **quiet)
    x, y = split_tensors(data.test, torch.device("cpu"))
    spec = AttackSpec(steps=10)
    std = robust_accuracy(load_model(tmp_path / "std")[0], x, y, [1.0], spec)["robust"][0]["accuracy"]
    rob = robust_accuracy(load_model(tmp_path / "rob")[0], x, y, [1.0], spec)["robust"][0]["accuracy"]
    assert rob > std + 0.05, (std, rob)


def test_targets_outside_the_classes_are_refused(random_net):
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(UserError, match="targets must be classes 0..9"):
        pgd(random_net, x, torch.tensor([3, 12]), threat=make_threat("l2", 0.5), steps=1, step_size=0.1,
            objective=ReachTarget())


@pytest.mark.parametrize("bad,needle", [
    (lambda: make_threat("l2", -0.1), "eps must be >= 0"),
    (lambda: make_threat("l3", 0.1), "unknown norm"),
    (lambda: make_threat("l2", 0.1, "cube"), "random start 'cube'"),
    (lambda: pgd(nn.Identity(), torch.rand(1, 3), torch.zeros(1, dtype=torch.long),
                 threat=make_threat("l2", 0.1), steps=0, step_size=0.1), "steps must be at least 1"),
])
def test_bad_attack_arguments(bad, needle):
    with pytest.raises(UserError, match=needle):
        bad()


@pytest.mark.parametrize("args,needle", [
    (["--attack", "pgd-l2", "--eps", "-0.5"], "eps must be >= 0"),
    (["--attack", "pgd-l2", "--steps", "0"], "must be at least 1"),
    (["--attack", "fgsm"], "invalid choice"),
])
def test_bad_attack_input_from_the_cli(args, needle, tmp_path, shared_data):
    code, _, stderr = run_cli("eval", "--model", str(tmp_path), "--data", str(shared_data), *args)
    assert code == 2 and needle in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_eval_cli_reports_robust_accuracy(shared_data, tmp_path):
    import json

    model_dir = tmp_path / "m"
    code, _, err = run_cli("train", "--data", str(shared_data), "--arch", "tiny", "--epochs", "1", "--subset", "500",
                           "--test-subset", "50", "--out", str(model_dir), "--quiet")
    assert code == 0, err
    code, out, err = run_cli("eval", "--model", str(model_dir), "--data", str(shared_data), "--test-subset", "100",
                             "--attack", "pgd-l2", "--eps", "0.25", "1.0", "--steps", "5", "--out",
                             str(tmp_path / "e.json"), "--quiet")
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    rows = result["attack"]["robust"]
    assert [r["eps"] for r in rows] == [0.25, 1.0]
    assert rows[0]["images_per_s"] > 0 and rows[0]["image_steps_per_s"] > 0
    assert result["attack"]["attack"]["steps"] == 5 and "robust accuracy" in out


def test_attacks_compile_by_default_on_cuda_only(random_net):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # only the device type is read: no GPU needed
    eager = frozen_view(random_net, None, cpu)
    assert not hasattr(eager, "_orig_mod") and eager is frozen_view(random_net, False, cuda)
    compiled = frozen_view(random_net, None, cuda)
    assert compiled._orig_mod is eager and frozen_view(random_net, True, cpu) is compiled


# --------------------------------------------------------------------------- the frozen view and the engine


@pytest.mark.parametrize("arch", ["tiny", "resnet18", "googlenet", "densenet121"])
def test_frozen_view_folds_batch_norm_exactly_up_to_rounding(arch):
    torch.manual_seed(0)
    model = create_model(arch)
    with torch.no_grad():  # non-trivial running statistics, so folding has something to fold
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    view = frozen_view(model, False, x.device)
    folded = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) - \
        sum(isinstance(m, nn.BatchNorm2d) for m in view.modules())
    assert folded > 0 if arch != "densenet121" else folded >= 0  # DenseNet's BN precede their convs
    for fake_relu in (False, True):
        ours, ours_features = view(x, return_features=True, fake_relu=fake_relu)
        theirs, theirs_features = model(x, return_features=True, fake_relu=fake_relu)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours_features, theirs_features, rtol=1e-4, atol=1e-4)
        (g_ours,) = torch.autograd.grad(ours_features.sum(), x)
        (g_theirs,) = torch.autograd.grad(theirs_features.sum(), x)
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-3, atol=1e-5)


def test_frozen_view_follows_the_models_weights_and_dies_with_it():
    import gc
    import weakref

    torch.manual_seed(0)
    model = create_model("tiny").eval()
    x = torch.rand(2, 3, 32, 32)
    view = frozen_view(model, False, x.device)
    with torch.no_grad():
        before = view(x).clone()
        model.trunk[0].weight.mul_(2.0)  # an optimizer step writes weights in place
        model.trunk[1].running_mean.add_(0.1)
        changed = model(x)
        assert not torch.allclose(before, changed)
        torch.testing.assert_close(frozen_view(model, False, x.device)(x), changed, rtol=1e-4, atol=1e-4)
    alive = weakref.ref(model)
    del model, view
    gc.collect()
    assert alive() is None, "the view must not keep its model alive"


def test_a_draining_queue_sees_a_bounded_ladder_of_batch_sizes(trained_tiny):
    model, x, y = trained_tiny
    sizes = []
    hook = model.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]))
    try:
        result = pgd(model, x, y, threat=make_threat("l2", 0.5, "none"), steps=20, step_size=0.1, retire=True,
                     batch_size=64)
    finally:
        hook.remove()
    assert max(sizes) == 64 and set(sizes) <= {64, 32, 16, 8, 4, 2, 1}
    assert len(set(sizes)) >= 3, "the tail of the queue should shrink the batch"
    assert result.success.sum() > 0 and result.success.sum() < len(y)


def test_one_host_sync_per_step_at_most(trained_tiny, monkeypatch):
    """Syncs are counted as the engine's reads of device state (`alive`, which on a GPU is a
    device-to-host copy) plus every op that forces one (item, nonzero, bool of a tensor)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    pgd_module = importlib.import_module("advfeat.attacks.pgd")  # the package exports the function pgd
    engine = importlib.import_module("advfeat.attacks.engine")  # the drain loop and its one device read

    syncing = {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::item"}

    class CountSyncs(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountSyncs.count += func.name().split(".")[0] in syncing
            return func(*args, **(kwargs or {}))

    reads, steps_run = [], []
    read_alive, step = engine.read_alive, pgd_module._step
    monkeypatch.setattr(engine, "read_alive", lambda slots: reads.append(1) or read_alive(slots))
    monkeypatch.setattr(pgd_module, "_step", lambda *args: steps_run.append(1) or step(*args))
    model, x, y = trained_tiny
    for retire, refill_every in ((False, 1), (True, 1), (True, 4)):
        reads.clear()
        steps_run.clear()
        CountSyncs.count = 0
        with CountSyncs():
            pgd(model, x[:100], y[:100], threat=make_threat("l2", 0.5, "none"), steps=9, step_size=0.1,
                retire=retire, batch_size=32, refill_every=refill_every)
        # (The check that targets are classes reads their min and max once per call, via tolist,
        # which the mode does not see.)
        assert CountSyncs.count == 0
        if not retire:
            assert not reads, "without retirement the host knows every slot's state"
        else:
            assert 0 < len(reads) <= -(-len(steps_run) // refill_every) + 1


def test_compiled_attack_over_a_draining_queue_compiles_a_bounded_number_of_times():
    """torch.compile with inductor on CPU (about 25 s): the ladder of batch widths and the
    forward-only last pass compile a handful of graphs once; a second attack compiles none;
    results equal eager's."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = create_model("tiny").eval()
    x, y = torch.rand(150, 3, 32, 32), torch.randint(0, 10, (150,))
    options = dict(threat=make_threat("l2", 0.5, "none"), steps=8, step_size=0.1, retire=True, batch_size=64)
    eager = pgd(model, x, y, compile=False, **options)
    counters.clear()
    compiled = pgd(model, x, y, compile=True, **options)
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 6, dict(counters["stats"])
    pgd(model, x, y, compile=True, **options)
    assert counters["stats"]["unique_graphs"] == graphs, "the second attack must reuse the graphs"
    assert torch.equal(compiled.success, eager.success)
    torch.testing.assert_close(compiled.x_adv, eager.x_adv, atol=1e-5, rtol=0)
