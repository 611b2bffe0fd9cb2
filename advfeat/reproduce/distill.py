"""`--extra distill`: the experiments of the paper's Distill discussion (2019), as stages.

Per seed s, beside the main stages (plan.py), through the same Planner (planner.py):
    leakage@s                  Goh (response 2): a linear probe on robust features (the robust
                               network's, and a robust linear model's as Goh did), trained on
                               D_rand and on D_det, tested on the real test set
    nt-ensemble-{i}@s          Nakkiran (response 5): independently trained models on D ...
    synth-det-nt@s             ... a D_det whose examples fool the source but not the ensemble
    train-on-det-nt@s, eval-det-nt@s, fig3-nt@s   what it teaches, and its Figure 3 point
    synth-{rand,det}-linf@s    the L-inf replications of D_rand and D_det (eps 8/255)
    synth-r-noise@s            D_R inverted from noise, as the authors' inversion code starts
    train-on-*@s, eval-*@s     a standard model on each, evaluated like the main ones
and the experiments of advfeat/discussion/ (`plan_discussion`, settings: preset.discussion):
    squares@s                  Nakkiran (response 5): adversarial squares
    wrong-labels@s             Wallace (response 6): mislabelled images, across classes, the 2-D toy
    gaussian-aug@s             Gilmer & Hendrycks (response 1): a Gaussian-augmented model ...
    fourier-noise@s            ... Fourier-basis noise heat maps (standard, robust, Gaussian)
    filtered@s, fog@s          ... training on filtered images; fog, standard vs robust
    eigenfeatures@s            Goh (response 3): useful non-robust eigenfeatures of truck vs frog
    layer-robustness@s         the authors' reply to Nakano (response 4): R(f) per layer
    style-transfer@s           Nakano (response 4): style transfer with each network (a grid)
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import torch

from advfeat.attacks import make_threat, pgd
from advfeat.attacks.nontransferable import ReachTargetKeepEnsemble, StackedLogits, targets_and_labels
from advfeat.checkpoint import load_model
from advfeat.evaluation import features_of, predict_tensor
from advfeat.data.arrays import Split
from advfeat.data.synthesized import store_images, write_dataset_card, write_shard
from advfeat.data.tensor_loader import to_unit_float
from advfeat.linear_probes import certified_stable, fit_goh_linear_model, fit_linear_probe, probe_accuracy
from advfeat.discussion import eigenfeatures, fourier, layer_robustness, squares, style_transfer, wrong_labels
from advfeat.discussion.settings import available_layers, feature_map_layers
from advfeat.reproduce.pipeline import Stage, Work
from advfeat.reproduce.planner import Planner, SeedStages
from advfeat.reproduce.stages import DATASET, MODEL, Sources
from advfeat.settings import SynthSettings

ENSEMBLE_SEED_OFFSET = 2000  # the ensemble's models never share a seed with the source or Figure 3's
LINF_EPS, LINF_STEP = 8 / 255, 2 / 255  # the L-inf replications' radius (Nakkiran: 8/255, steps of 2/255)
FORWARD = 1 / 3  # a forward pass costs about a third of an attack step (forward and backward)


def leakage_stage(robust_stage: str, dataset_stages: dict[str, str], sources: Sources, seed: int, batch_size: int,
                  device, log):
    """Goh's probe: a linear classifier on robust features, fit on each dataset (and on D itself,
    for scale), tested on the real test set's true labels y and (key "<name>@y+1") on y+1, the
    labels D_det's images carry: a probe that learned D_det's labels from robust features would
    score on y+1. Two sets of robust features: the robust
    network's penultimate layer, and (Goh's own) the logits of a certified-robust linear model."""

    def run(ctx) -> dict:
        from advfeat.data import load_dataset

        robust, card = load_model(ctx.folder_of(robust_stage) / MODEL, device)
        notes = []
        if not card.get("robust"):
            notes.append("the probe's model was trained without adversarial training: its features are not robust")
            log(f"advfeat: warning: {notes[-1]}")
        x_test, y_test = sources.test_tensors()
        y_next = (y_test + 1) % robust.num_classes  # Goh: D_det's labels are y+1; does the probe learn them?
        test_features = features_of(robust, x_test, batch_size)
        result = {"notes": notes}
        splits = {"d": sources.train_data(seed).train}
        splits |= {kind: load_dataset(ctx.folder_of(stage) / DATASET, test_data=sources.path).train
                   for kind, stage in dataset_stages.items()}
        tensors = {name: (to_unit_float(torch.from_numpy(split.images).to(device)),
                          torch.from_numpy(split.labels).to(device)) for name, split in splits.items()}
        # Goh's own features: the 10 logits of a robust linear model on the pixels of D.
        linear, train_eps, _ = fit_goh_linear_model(*tensors["d"], robust.num_classes)
        linear_test = linear(x_test.flatten(1))
        result["linear_model"] = {"train_eps": train_eps,
                                  "clean_accuracy": probe_accuracy(linear, x_test.flatten(1), y_test),
                                  "certified_stable_at_0.25":
                                      float(certified_stable(linear, x_test, 0.25).float().mean())}
        for name, (x, y) in tensors.items():
            probe = fit_linear_probe(features_of(robust, x, batch_size), y, robust.num_classes)
            result[name] = probe_accuracy(probe, test_features, y_test)
            result[f"{name}@y+1"] = probe_accuracy(probe, test_features, y_next)
            probe = fit_linear_probe(linear(x.flatten(1)), y, robust.num_classes)
            result[f"linear-{name}"] = probe_accuracy(probe, linear_test, y_test)
            result[f"linear-{name}@y+1"] = probe_accuracy(probe, linear_test, y_next)
        return result

    return run


def _write_dataset(folder, arrays: dict, source: dict, settings: dict, stats: dict, kind: str) -> None:
    """One shard and a card: a folder `load_dataset` reads like any advfeat dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(folder, 0, arrays)
    write_dataset_card(folder, kind=kind, train=Split(arrays["images"], arrays["labels"], arrays["source_index"]),
                       shards=1, storage=str(arrays["images"].dtype), settings=settings, source=source, stats=stats)


def _nontransferable(source, ensemble, x, y, attack: SynthSettings):
    """Targeted examples toward y + 1 for the source that the ensemble should still label y."""
    target = (y + 1) % source.num_classes
    model = StackedLogits(source, ensemble)
    result = pgd(model, x, targets_and_labels(target, y), threat=make_threat(attack.norm, attack.eps, "none"),
                 steps=attack.steps, step_size=attack.step_size, objective=ReachTargetKeepEnsemble(), keep="best",
                 batch_size=attack.batch_size)
    return result.x_adv, target, result


def nontransferable_synth_stage(source_stage: str, ensemble_stages: list[str], attack: SynthSettings,
                                sources: Sources, seed: int, device):
    """D_det-nt: D's images pushed toward y + 1 for the source only, labelled y + 1."""

    def run(ctx) -> dict:
        source, _ = load_model(ctx.folder_of(source_stage) / MODEL, device)
        ensemble = [load_model(ctx.folder_of(s) / MODEL, device)[0] for s in ensemble_stages]
        data = sources.train_data(seed)
        x = to_unit_float(torch.from_numpy(data.train.images).to(device))
        y = torch.from_numpy(data.train.labels).to(device)
        crafted, target, result = _nontransferable(source, ensemble, x, y, attack)
        stored = store_images(crafted.cpu().numpy(), attack.storage)
        restored = to_unit_float(torch.from_numpy(stored).to(device))
        kept = torch.stack([predict_tensor(m, restored, attack.batch_size) == y for m in ensemble]).float().mean()
        fooled = predict_tensor(source, restored, attack.batch_size) == target
        stats = {"n": len(y), "target_success": float(result.success.float().mean()),
                 "stored_success": float(fooled.float().mean()),
                 "ensemble_keeps_label": float(kept), "image_steps_per_s": round(result.image_steps_per_s, 1)}
        arrays = {"images": stored, "labels": target.cpu().numpy(), "orig_labels": data.train.labels,
                  "position": np.arange(len(y)), "source_index": data.train.source_index}
        _write_dataset(ctx.folder / DATASET, arrays, data.source, asdict(attack) | {"ensemble": len(ensemble)},
                       stats, "det-nt")
        return {"stats": stats}

    return run


def nontransferable_transfer_stage(source_stage: str, ensemble_stages: list[str], target_stage: str,
                                   learner_eval: str, attack: SynthSettings, n: int, sources: Sources, device):
    """D_det-nt's Figure 3 point: transfer of non-transferable examples crafted on test images to
    a model trained on D (the source's architecture, another seed); learnability: the test
    accuracy of the model trained on D_det-nt."""

    def run(ctx) -> dict:
        source, _ = load_model(ctx.folder_of(source_stage) / MODEL, device)
        ensemble = [load_model(ctx.folder_of(s) / MODEL, device)[0] for s in ensemble_stages]
        other, _ = load_model(ctx.folder_of(target_stage) / MODEL, device)
        x, y = sources.test_tensors()
        crafted, target, _ = _nontransferable(source, ensemble, x[:n], y[:n], attack)
        fooled = predict_tensor(source, crafted, attack.batch_size) == target
        hit = predict_tensor(other, crafted, attack.batch_size) == target
        return {"n": n, "source_success": float(fooled.float().mean()),
                "transfer_rate": float(hit[fooled].float().mean()) if fooled.any() else None,
                "det_accuracy": ctx.result_of(learner_eval)["clean_accuracy"]}

    return run


def plan_distill(planner: Planner, seed: int, main: SeedStages) -> None:
    """Add the Distill stages of one seed, reading the seed's main stages (`main`)."""
    preset, sources, device = planner.preset, planner.sources, planner.device
    n_train, batch = planner.n_train, preset.attack.batch_size
    models, datasets = dict(main.models), main.datasets
    settings = {"batch_size": batch, "subset": preset.subset, "test_images": sources.test_images}
    planner.add(Stage("leakage", seed, settings,
                      (models["robust"], datasets["rand"], datasets["det"]),
                      leakage_stage(models["robust"], {"rand": datasets["rand"], "det": datasets["det"]}, sources, seed,
                                    batch, device, planner.log),
                      Work("attack", preset.arch, n_train, batch)))  # forward passes over D, D_rand, D_det: ~1 step
    # Nakkiran's non-transferable D_det: an ensemble of independently trained models on D.
    ensemble = [planner.train(f"nt-ensemble-{i}", seed, preset.standard, None,
                              model_seed=seed + ENSEMBLE_SEED_OFFSET + i) for i in range(preset.distill_ensemble)]
    attack = replace(preset.synth["det"], seed=seed, subset=preset.subset)
    extra = {"det-nt": planner.add(Stage(
        "synth-det-nt", seed, {"attack": asdict(attack), "ensemble": len(ensemble)}, (models["standard"], *ensemble),
        nontransferable_synth_stage(models["standard"], ensemble, attack, sources, seed, device),
        Work("attack", preset.arch, n_train * (attack.steps + 2) * (1 + len(ensemble)), attack.batch_size)))}
    # The L-inf replications and D_R from noise: the main synthesis with one setting changed.
    for name, kind, change in (("rand-linf", "rand", dict(norm="linf", eps=LINF_EPS, step_size=LINF_STEP)),
                               ("det-linf", "det", dict(norm="linf", eps=LINF_EPS, step_size=LINF_STEP)),
                               ("r-noise", "r", dict(start="noise"))):
        source = models["robust" if kind == "r" else "standard"]
        extra[name] = planner.synth(f"synth-{name}", seed, replace(preset.synth[kind], **change), source)
    for name, dataset in extra.items():
        models[name] = planner.train(f"train-on-{name}", seed, preset.train_on[name.split("-")[0]], dataset)
        planner.evaluate(name, seed, models[name], dataset)
    if preset.arch in main.fig3:
        on_d, learner_eval = main.fig3[preset.arch][0], f"eval-det-nt@{seed}"
        planner.add(Stage("fig3-nt", seed, {"attack": asdict(attack), "n": preset.transfer_images},
                          (models["standard"], *ensemble, on_d, learner_eval),
                          nontransferable_transfer_stage(models["standard"], ensemble, on_d, learner_eval, attack,
                                                         preset.transfer_images, sources, device),
                          Work("attack", preset.arch, preset.transfer_images * attack.steps * (1 + len(ensemble)),
                               attack.batch_size)))
    plan_discussion(planner, seed, main)


def _forward_work(arch: str, images: float, batch_size: int) -> Work:
    """Forward passes only (evaluation, labelling), in attack image-steps."""
    return Work("attack", arch, images * FORWARD, batch_size)


def _wrong_labels_work(s: wrong_labels.WrongLabelsSettings) -> Work:
    """The four nets: teacher (half the images), student (the ~2/3 of the other half it labels
    wrongly, at CPU scale), cross teacher and student (a quarter each). The 2-D toy's seconds are
    left out: no rate describes its 32-point MLPs (about 5 s a draw on a CPU)."""
    half = s.n_images / 2
    passes = (half * s.teacher.epochs + 0.7 * half * s.student.epochs
              + half / 2 * (s.teacher.epochs + s.student.epochs))
    return Work("train", s.teacher.arch, passes, s.teacher.batch_size)


def _squares_seconds(s: squares.SquaresSettings) -> float:
    """The random-feature net's matrix products (hidden features of training and attacked test
    images), at about 20 GFLOP/s: the cpu preset's stage took 1-2 s alone on a 2-core CPU (23 s
    while another job loaded it); a GPU is far faster (an over-estimate there)."""
    d = 3 * 32 * 32
    return 5e-11 * (s.n_train + 2 * s.n_test * (s.attack_steps + 2)) * d * s.width + 2.0


def plan_discussion(planner: Planner, seed: int, main: SeedStages) -> None:
    """The discussion's stages of one seed (advfeat/discussion/, settings preset.discussion);
    their settings (asdict) enter their keys, with the seed's data (subset, test images)."""
    preset, sources, device, log = planner.preset, planner.sources, planner.device, planner.log
    d = preset.discussion
    data = {"subset": preset.subset, "test_images": sources.test_images}
    models = {"standard": main.models["standard"], "robust": main.models["robust"]}
    n_test = min(planner.n_test, len(sources.test()))

    planner.add(Stage("squares", seed, {"settings": asdict(d.squares)}, (),
                      squares.squares_stage(d.squares, seed, device),
                      Work("fixed", fixed_seconds=_squares_seconds(d.squares))))
    planner.add(Stage("wrong-labels", seed, {"settings": asdict(d.wrong_labels)} | data, (),
                      wrong_labels.wrong_labels_stage(d.wrong_labels, sources, seed, device, log),
                      _wrong_labels_work(d.wrong_labels)))

    f = d.fourier
    settings = {"settings": asdict(f)} | data
    epochs_images = f.train_images * f.train.epochs
    gaussian = planner.add(Stage("gaussian-aug", seed, settings, (),
                                 fourier.gaussian_model_stage(f, sources, seed, device, log),
                                 Work("train", f.train.arch, epochs_images * f.gaussian_copies, f.train.batch_size)))
    cells = len(fourier.frequency_grid(f.stride)[0]) * len(fourier.frequency_grid(f.stride)[1])
    heat_models = models | {"gaussian": gaussian}
    planner.add(Stage("fourier-noise", seed, settings, tuple(heat_models.values()),
                      fourier.fourier_heat_map_stage(f, heat_models, sources, seed, device),
                      _forward_work(preset.arch, len(heat_models) * (cells + 1) * min(f.images, n_test),
                                    f.batch_size)))
    planner.add(Stage("filtered", seed, settings, (), fourier.filtered_training_stage(f, sources, seed, device, log),
                      Work("train", f.train.arch, 2 * epochs_images, f.train.batch_size)))
    planner.add(Stage("fog", seed, settings, tuple(models.values()), fourier.fog_stage(f, models, sources, seed, device),
                      _forward_work(preset.arch, 2 * len(models) * min(f.fog_images, n_test), f.batch_size)))

    planner.add(Stage("eigenfeatures", seed, {"settings": asdict(d.eigen)} | data, (),
                      eigenfeatures.eigenfeatures_stage(d.eigen, sources, seed),
                      # measured on a loaded 2-core CPU: 5.5 s (2,000 images), 18 s (5,000): the Gram
                      # matrix of the truck and frog images and Goh's figure
                      Work("fixed", fixed_seconds=2.0 + 0.0035 * planner.n_train)))

    # R(f) for the standard and robust models, and a VGG-style net where Figure 3 trained one on D.
    layer_models = models | {arch: main.fig3[arch][0] for arch in main.fig3 if arch.startswith("vgg")}
    s = d.layers
    steps = sum(len(s.layers or available_layers(preset.arch)) if name in models else len(available_layers(name))
                for name in layer_models) * min(s.pairs, n_test) * (s.steps + 3)
    planner.add(Stage("layer-robustness", seed, {"settings": asdict(s)} | data, tuple(layer_models.values()),
                      layer_robustness.layer_robustness_stage(s, layer_models, sources, seed, device),
                      Work("attack", preset.arch, steps, s.batch_size)))
    # Nakano's style transfer with the same networks (not for an architecture without feature maps).
    if feature_map_layers(preset.arch):
        st = d.style
        runs = sum(min(st.max_layers, len(feature_map_layers(preset.arch if name in models else name))) + 1
                   for name in layer_models)  # one L-BFGS run per style layer, and one with all
        pictures = runs * st.contents
        planner.add(Stage("style-transfer", seed, {"settings": asdict(st)} | data, tuple(layer_models.values()),
                          style_transfer.style_transfer_stage(st, layer_models, sources, seed, device),
                          # L-BFGS: about 1.25 forward-backward passes per iteration, fp32, and about
                          # 5 ms of overhead per iteration on a small batch (cpu preset, 2 cores: 6-9 s
                          # a seed measured, 1.5 s estimated from the passes alone)
                          Work("attack", preset.arch, pictures * 1.25 * st.steps, st.contents,
                               fixed_seconds=0.005 * runs * st.steps)))
    else:
        log(f"advfeat: {preset.arch} has no feature-map layers: style transfer is left out")
