"""The Distill discussion's pieces: the linear probe, the non-transferable attack, bad input.
(The stages run in tests/test_reproduce.py's reduced run, which includes --extra distill.)"""

from __future__ import annotations

import pytest
import torch

from advfeat.attacks import ReachTarget, make_threat, pgd
from advfeat.attacks.nontransferable import ReachTargetKeepEnsemble, StackedLogits, targets_and_labels
from advfeat.errors import UserError
from advfeat.models import create_model
from advfeat.probes import fit_linear_probe, probe_accuracy

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
    from advfeat.pipelines import load_dataset, make_loader
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
