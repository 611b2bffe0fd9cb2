"""The Distill discussion's pieces: the linear probe, the non-transferable attack, bad input.
(The stages run in tests/test_reproduce.py's reduced run, which includes --extra distill.)"""

from __future__ import annotations

import pytest
import torch

from advfeat.attacks import ReachTarget, make_threat, pgd
from advfeat.attacks.nontransferable import ReachTargetKeepEnsemble, StackedLogits, targets_and_labels
from advfeat.errors import UserError
from advfeat.models import create_model
from advfeat.linear_probes import fit_linear_probe, probe_accuracy

from conftest import run_cli


def test_linear_probe_matches_a_closed_form_least_squares_fit_on_separable_features():
    g = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(5, 16, generator=g)
    labels = torch.arange(5).repeat_interleave(200)
    features = centers[labels] + torch.randn(1000, 16, generator=g)
    test_labels = torch.arange(5).repeat_interleave(100)
    test = centers[test_labels] + torch.randn(500, 16, generator=g)
    # Closed form: least squares onto one-hot targets, with a bias column.
    design = torch.cat([features, torch.ones(1000, 1)], 1)
    weights = torch.linalg.lstsq(design, torch.nn.functional.one_hot(labels).float()).solution
    scores = torch.cat([test, torch.ones(500, 1)], 1) @ weights
    least_squares = float((scores.argmax(1) == test_labels).float().mean())
    probe = fit_linear_probe(features, labels, 5)
    assert least_squares > 0.95  # separable enough that both should be near perfect
    assert probe_accuracy(probe, test, test_labels) >= least_squares - 0.01
    # Labels the features say nothing about: the probe is at chance on fresh data.
    noise_probe = fit_linear_probe(features, labels[torch.randperm(1000, generator=g)], 5)
    assert probe_accuracy(noise_probe, test, test_labels) < 0.35


def test_the_probe_takes_raw_features_its_standardization_is_folded_in():
    g = torch.Generator().manual_seed(1)
    features = 100 + 50 * torch.randn(400, 3, generator=g)
    labels = (features[:, 0] > 100).long()
    probe = fit_linear_probe(features, labels, 2)
    assert probe_accuracy(probe, features, labels) > 0.97


@pytest.fixture(scope="module")
def three_tiny_models(shared_data):
    """Three tiny nets trained on the same 3,000 real images from different seeds, and test images."""
    from advfeat.evaluation import split_tensors
    from advfeat.data import load_dataset, make_loader
    from advfeat.runtime import prepare_model
    from advfeat.settings import TrainConfig
    from advfeat.training import train_epoch

    data = load_dataset(shared_data, subset=3000, test_subset=200, seed=0)
    cpu = torch.device("cpu")
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = prepare_model(create_model("tiny"), cpu)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
        config = TrainConfig(arch="tiny", epochs=3, lr=0.2, schedule="onecycle", seed=seed)
        loader = make_loader(data, "train", batch_size=128, device=cpu, shuffle=True, augment="crop-flip", seed=seed)
        for epoch in range(3):
            train_epoch(model, model, loader, optimizer, config, epoch, cpu, None, progress=False)
        models.append(model.eval())
    x, y = split_tensors(data.test, cpu)
    return models, x, y


def test_nontransferable_examples_flip_the_source_and_keep_the_ensemble(three_tiny_models):
    (source, *ensemble), x, y = three_tiny_models
    target = (y + 1) % 10
    threat, options = make_threat("l2", 3.0, "none"), dict(steps=40, step_size=0.25, keep="best")
    nt = pgd(StackedLogits(source, ensemble), x, targets_and_labels(target, y), threat=threat,
             objective=ReachTargetKeepEnsemble(), **options)
    plain = pgd(source, x, target, threat=threat, objective=ReachTarget(), **options)
    with torch.no_grad():
        def rates(images):
            fooled = source(images).argmax(1) == target
            others = torch.stack([m(images).argmax(1) for m in ensemble])
            kept, moved = (others == y)[:, fooled], (others == target)[:, fooled]
            return fooled.float().mean(), kept.float().mean(), moved.float().mean()

        nt_fooled, nt_kept, nt_transfer = rates(nt.x_adv)
        plain_fooled, plain_kept, plain_transfer = rates(plain.x_adv)
    assert nt_fooled > 0.6 and plain_fooled > 0.6
    # The ensemble keeps its label on the non-transferable examples far more than on plain PGD's,
    # and plain PGD's examples transfer to it far more.
    assert nt_kept > plain_kept + 0.2, (nt_kept, plain_kept)
    assert nt_transfer < plain_transfer / 2, (nt_transfer, plain_transfer)
    assert ((nt.x_adv - x).flatten(1).norm(dim=1) <= 3.0 + 1e-5).all()
    with pytest.raises(UserError, match="at least one model"):
        StackedLogits(source, [])


def test_bad_distill_input(tmp_path):
    code, _, err = run_cli("reproduce", "--preset", "smoke", "--extra", "bugs", "--out", str(tmp_path / "o"))
    assert code == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1, err
    import dataclasses

    from advfeat.presets import SMOKE_PRESET

    with pytest.raises(UserError, match="ensemble of at least one model"):
        dataclasses.replace(SMOKE_PRESET, distill_ensemble=0)


def _blobs(n_per_class: int, classes: int, dim: int, seed: int, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centers[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def test_certified_stability_is_the_exact_distance_to_the_linear_boundary():
    from advfeat.linear_probes import certified_stable, fit_robust_linear_model

    x, y = _blobs(100, 4, 8, seed=2)
    model = fit_robust_linear_model(x, y, 4, eps=0.0)
    eps = 0.3
    stable = certified_stable(model, x, eps)
    assert 0 < int(stable.sum()) < len(x)  # both kinds present: the test means something
    logits = model(x)
    predicted = logits.argmax(1)
    for i in range(len(x)):
        p = int(predicted[i])
        # The closest boundary: the smallest margin / ||w_p - w_j|| over j != p, crossed along w_j - w_p.
        distances = [(float(logits[i, p] - logits[i, j]) / float((model.weight[p] - model.weight[j]).norm()), j)
                     for j in range(4) if j != p]
        distance, j = min(distances)
        direction = (model.weight[j] - model.weight[p]) / (model.weight[j] - model.weight[p]).norm()
        if stable[i]:
            assert distance > eps
        else:  # a perturbation of norm <= eps that changes the prediction exists: this one
            assert distance <= eps
            moved = x[i] + min(distance * 1.001, eps) * direction
            assert int(model(moved[None]).argmax(1)) != p or distance * 1.001 > eps


def test_robust_linear_training_trades_accuracy_for_certified_stability():
    from advfeat.linear_probes import certified_stable, fit_goh_linear_model, fit_robust_linear_model, probe_accuracy

    # Five robust features (overlapping classes: means and spread of scale 1) and five thin ones (small separation,
    # tiny spread), as in Section 4: a standard linear model leans on the thin ones.
    g = torch.Generator().manual_seed(3)
    y = torch.arange(3).repeat_interleave(150)
    robust_part = torch.randn(3, 5, generator=g)[y] + torch.randn(len(y), 5, generator=g)
    thin_part = 0.2 * torch.randn(3, 5, generator=g)[y] + 0.02 * torch.randn(len(y), 5, generator=g)
    x = torch.cat([robust_part, thin_part], 1)
    standard, robust = (fit_robust_linear_model(x, y, 3, eps) for eps in (0.0, 0.5))
    stable = [float(certified_stable(m, x, 0.5).float().mean()) for m in (standard, robust)]
    assert stable[1] > stable[0] + 0.2
    assert probe_accuracy(standard, x, y) > probe_accuracy(robust, x, y)
    # For two classes the training loss is the exact worst case: the worst perturbation of size
    # eps moves x by eps against w_y - w_other, and no other perturbation of that size costs more.
    x2, y2 = _blobs(100, 2, 6, seed=4)
    model = fit_robust_linear_model(x2, y2, 2, eps=0.4)
    w = model.weight
    push = (w[1 - y2] - w[y2]) / (w[1 - y2] - w[y2]).norm(dim=1, keepdim=True)
    worst = torch.nn.functional.cross_entropy(model(x2 + 0.4 * push), y2, reduction="none")
    for _ in range(20):
        d = torch.randn(x2.shape, generator=g)
        other = torch.nn.functional.cross_entropy(model(x2 + 0.4 * d / d.norm(dim=1, keepdim=True)), y2,
                                                  reduction="none")
        assert (other <= worst + 1e-5).all()
    # Goh's choice: the first eps on the ladder whose model is stable on enough training points.
    goh, train_eps, share = fit_goh_linear_model(x, y, 3, radius=0.25, stable=0.9)
    assert share >= 0.9 and share == float(certified_stable(goh, x, 0.25).float().mean())
    for k in (1, 2, 4, 8):
        if 0.25 * k >= train_eps:
            break
        assert float(certified_stable(fit_robust_linear_model(x, y, 3, 0.25 * k), x, 0.25).float().mean()) < 0.9


# --------------------------------------------------------------------------- the discussion's stages (issue 20)

DISCUSSION_STAGES = ("squares", "wrong-labels", "gaussian-aug", "fourier-noise", "filtered", "fog", "eigenfeatures",
                     "layer-robustness", "style-transfer")
DISCUSSION_CLAIMS = {"nakkiran-squares", "wallace-mislabelled", "wallace-cross", "wallace-toy", "fourier-noise-robust",
                     "fourier-noise-gaussian", "filtered-training", "fog", "goh-eigenfeatures", "layer-robustness"}


def tiny_discussion_preset():
    """The smoke preset with fewer images and one-epoch source models: the discussion stages in
    about a minute on a CPU (the smoke preset's own discussion settings, which are seconds)."""
    import dataclasses
    from dataclasses import replace

    from advfeat.presets import SMOKE_PRESET

    fast = replace(SMOKE_PRESET.standard, epochs=1)
    return dataclasses.replace(SMOKE_PRESET, subset=400, test_subset=200, standard=fast,
                               robust=replace(fast, adv="l2", eps=0.5, attack_steps=2, attack_step_size=0.25))


def test_the_smoke_preset_plans_every_discussion_stage_with_its_settings_in_the_key(shared_data, tmp_path):
    import dataclasses
    from dataclasses import replace

    from advfeat.presets import SMOKE_PRESET
    from advfeat.reproduce import prepare

    pipeline, _, _ = prepare(SMOKE_PRESET, str(shared_data), tmp_path / "o", device="cpu", extras=("distill",),
                             log=lambda m: None)
    for name in DISCUSSION_STAGES:
        stage = pipeline.stages[f"{name}@0"]
        assert stage.extra == "distill" and stage.work.what in ("train", "attack", "fixed"), name
        assert stage.work.passes > 0 or stage.work.fixed_seconds > 0, name
    assert pipeline.stages["fourier-noise@0"].inputs == ("train-standard@0", "train-robust@0", "gaussian-aug@0")
    assert pipeline.stages["squares@0"].settings["settings"] == dataclasses.asdict(SMOKE_PRESET.discussion.squares)
    # A discussion setting changes that stage's key, and no main stage's.
    d = SMOKE_PRESET.discussion
    changed = dataclasses.replace(SMOKE_PRESET, discussion=replace(d, squares=replace(d.squares, eps=0.02)))
    other, _, _ = prepare(changed, str(shared_data), tmp_path / "o", device="cpu", extras=("distill",),
                          log=lambda m: None)
    differ = {s for s in pipeline.keys if pipeline.keys[s] != other.keys[s]}
    assert differ == {"squares@0"}, differ


@pytest.fixture(scope="module")
def discussion_run(shared_data, tmp_path_factory):
    """The discussion's stages of the tiny preset run through the pipeline, with their inputs."""
    from advfeat.reproduce import prepare

    pipeline, _, _ = prepare(tiny_discussion_preset(), str(shared_data), tmp_path_factory.mktemp("disc") / "run",
                             device="cpu", extras=("distill",), log=lambda m: None)
    for stage_id in ("train-standard@0", "train-robust@0", *[f"{name}@0" for name in DISCUSSION_STAGES]):
        pipeline.run(stage_id)
    return pipeline


def test_every_discussion_stage_runs_and_the_report_shows_each_experiment_with_a_verdict(discussion_run, tmp_path):
    from advfeat.report.collect import discussion_summary
    from advfeat.discussion.style_transfer import load_pictures
    from advfeat.report.figures import draw_discussion_figures, draw_style_grid
    from advfeat.report.markdown import comments_table, discussion_rules

    summary = discussion_summary(discussion_run.results)
    claims = {c["id"]: c for c in summary["claims"]}
    assert set(claims) == DISCUSSION_CLAIMS
    for c in claims.values():
        assert c["verdict"] in ("holds", "does not hold", "inconclusive"), c
        assert c["reference"]["value"] and c["reference"]["setting"]
        assert all(p["interval"] is None or p["interval"]["low"] <= p["interval"]["high"] for p in c["parts"])
    # The heat map has the stride's grid; the layer ratios name the tiny net's layers.
    stride = tiny_discussion_preset().discussion.fourier.stride
    assert len(summary["heat_maps"]["standard"]["u"]) == len(range(-15, 17, stride))
    assert set(summary["layer_ratios"]["robust"]) == {"trunk.2", "trunk.6", "activation"}
    table = "\n".join(comments_table(summary["claims"]) + discussion_rules(summary["claims"]))
    for claim_id, c in claims.items():
        assert f"**{c['verdict']}**" in table and claim_id in table
    paths = draw_discussion_figures(tmp_path, summary)
    assert set(paths) == {"fourier_heat_maps", "layer_ratios", "squares", "goh_scatter"}
    assert all(p.stat().st_size > 1000 for p in paths.values())
    # Style transfer: shown, not judged; the table names it, its pictures make the grid.
    style = summary["style"]["models"]
    assert set(style) == {"standard", "robust"} and style["robust"]["content_layer"] == "trunk.6"
    for net, m in style.items():
        assert set(m["columns"]) == {"trunk.2", "trunk.6", "activation", "all layers"}
        assert set(m["cross"]) == {"standard", "robust"} and m["cross"][net]["estimate"] == m["columns"]["all layers"]["style_share"]["estimate"]
    assert "qualitative: pictures, not judged" in "\n".join(comments_table(summary["claims"], True))
    pictures = load_pictures(discussion_run.folder("style-transfer@0") / "style.npz")
    assert pictures["standard|all layers"].shape == pictures["content"].shape
    draw_style_grid(pictures, tmp_path / "style.png", summary["layer_ratios"])
    assert (tmp_path / "style.png").stat().st_size > 1000


def test_bad_discussion_settings_are_one_line_user_errors():
    import dataclasses
    from dataclasses import replace

    from advfeat.discussion.fourier import FourierSettings
    from advfeat.discussion.layer_robustness import LayerSettings
    from advfeat.presets import SMOKE_PRESET

    for cutoff in (0, -1, 16.5, 40):
        with pytest.raises(UserError, match=r"cutoff must be in \(0, 16\]"):
            FourierSettings(lowpass_cutoff=cutoff)
        with pytest.raises(UserError, match=r"cutoff must be in \(0, 16\]"):
            FourierSettings(highpass_cutoff=cutoff)
    FourierSettings(lowpass_cutoff=16, highpass_cutoff=0.5)  # the ends of the range are fine
    for norm in (0, -4):
        with pytest.raises(UserError, match="noise norm must be > 0"):
            FourierSettings(norm=norm)
    d = SMOKE_PRESET.discussion
    with pytest.raises(UserError, match="unknown layer 'conv9' for tiny; choose from trunk.2, trunk.6, activation"):
        dataclasses.replace(SMOKE_PRESET, discussion=replace(d, layers=LayerSettings(layers=("conv9",))))
    chosen = dataclasses.replace(SMOKE_PRESET, discussion=replace(d, layers=LayerSettings(layers=("trunk.6",))))
    assert chosen.discussion.layers.layers == ("trunk.6",)


def test_the_fourier_command_draws_a_heat_map_and_rejects_bad_input_in_one_line(discussion_run, shared_data,
                                                                               tmp_path):
    import json

    model = discussion_run.folder("train-standard@0") / "model"
    for flags, message in ((("--norm", "0"), "noise norm must be > 0"), (("--norm", "-1"), "noise norm must be > 0"),
                           (("--cutoff", "17"), "cutoff must be in (0, 16]"), (("--cutoff", "0"), "cutoff must be in (0, 16]"),
                           (("--stride", "0"), "frequency stride must be at least 1")):
        code, _, err = run_cli("fourier", str(model), "--data", str(shared_data), "--out", str(tmp_path / "bad"),
                               *flags)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (flags, err)
        assert not (tmp_path / "bad").exists()
    code, _, err = run_cli("fourier", str(model), "--data", str(shared_data), "--out", str(tmp_path / "map"),
                             "--images", "20", "--stride", "8", "--cutoff", "8", "--quiet", "--device", "cpu")
    assert code == 0, err
    result = json.loads((tmp_path / "map" / "fourier.json").read_text())
    assert result["u"] == list(range(-15, 17, 8)) and result["v"] == [0, 8, 16] and result["images"] == 20
    assert all(0 <= e <= 1 for row in result["error_map"] for e in row)
    assert set(result["filtered_accuracy"]) == {"low", "high"}
    assert (tmp_path / "map" / "heat_map.png").stat().st_size > 1000


def test_the_style_command_draws_a_grid_and_rejects_bad_input_in_one_line(discussion_run, tmp_path):
    import json

    import numpy as np
    from PIL import Image

    model = str(discussion_run.folder("train-robust@0") / "model")
    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(content)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(style)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    for flags, message in ((("--layers", "relu4_2"), "unknown style layer 'relu4_2'; choose from trunk.2, trunk.6"),
                           (("--content-layer", "head"), "unknown style layer 'head'"),
                           (("--style", str(tmp_path / "broken.png")), "cannot read the image"),
                           (("--steps", "0"), "--steps"), (("--data", "x"), "--content FILE or as --data")):
        code, _, err = run_cli("style", model, "--content", str(content), "--out", str(tmp_path / "bad"), *flags)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (flags, err)
    code, _, err = run_cli("style", model, "--content", str(content), "--style", str(style), "--steps", "3",
                           "--layers", "trunk.2,activation", "--out", str(tmp_path / "out"))
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "style.json").read_text())
    assert record["columns"] == ["trunk.2", "activation", "all layers"] and record["content_layer"] == "trunk.2"
    assert (tmp_path / "out" / "style_transfer.png").stat().st_size > 1000
    with np.load(tmp_path / "out" / "style.npz") as pictures:
        assert pictures["model|all layers"].shape == (1, 3, 24, 20) and pictures["style"].shape == (1, 3, 24, 20)
    assert not (tmp_path / "bad").exists()
