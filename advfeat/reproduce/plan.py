"""The stages of a reproduction, for every seed: what runs, on what, with which settings.

Per seed s (the seed changes training, synthesis and the training subset; the test set is
shared):
    train-standard@s, train-robust@s        the two source models, on D
    synth-{r,nr,rand,det}@s                 the four datasets (D_R from the robust model)
    train-on-{kind}@s                       a standard model on each
    eval-{model}@s                          clean, main PGD, strong PGD, CW (and D.6 for D_det)
    fig3-d-{arch}@s, fig3-det-{arch}@s      Figure 3: each architecture on D and on D_det
    fig3@s                                  transfer vs learnability
Once: theory (the Gaussian model of Section 4). Extras (--extra) add their own stages.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from advfeat.presets import Preset
from advfeat.reproduce.pipeline import Stage, Work
from advfeat.reproduce.stages import (Sources, evaluate_stage, synth_stage, theory_stage, train_stage,
                                      transfer_stage)
from advfeat.settings import KINDS, TrainConfig

MODELS = ("standard", "robust", *KINDS)  # the report's rows: trained on D (x2), then on each dataset
FIG3_SEED_OFFSET = 1000  # Figure 3's models on D never share the source model's seed


def _train_work(config: TrainConfig, n: int) -> Work:
    passes = n * config.epochs * (1 + (config.attack_steps if config.adv else 0))
    return Work("train", config.arch, passes, config.batch_size)


def _attack_work(arch: str, images: float, steps: float, batch_size: int) -> Work:
    return Work("attack", arch, images * steps, batch_size)


def _eval_work(preset: Preset, arch: str, n_test: int) -> Work:
    """An upper-bound-ish guess: half the examples survive to the last step of each eps."""
    main = n_test * preset.attack.steps * len(preset.eps) * 0.5
    sub = min(preset.strong_subset, n_test)
    strong = preset.strong_attack
    # AutoAttack: APGD-CE, then APGD-T's targets on the (fewer) survivors.
    runs = strong.restarts + (strong.target_classes / 2 if strong.family == "autoattack" else 0)
    strong = sub * strong.steps * runs * len(preset.eps) * 0.5
    cw = sub * preset.cw_attack.steps * preset.cw_attack.cw_binary_steps
    return _attack_work(arch, 1, main + strong + cw, preset.attack.batch_size)


def train_config(preset: Preset, config: TrainConfig, seed: int) -> TrainConfig:
    # Test accuracy once, at the end: the report evaluates every model on its own.
    return replace(config, seed=seed, eval_every=10**6)


def synth_stage_for(name: str, seed: int, settings, source: str, preset: Preset, sources: Sources,
                    device_name: str, gpus: int, log) -> Stage:
    """A synthesis stage: `settings` (seed and subset included) with the model of stage `source`."""
    return Stage(name, seed, {"settings": asdict(settings), "gpus": gpus}, (source,),
                 synth_stage(settings, source, sources, device_name, gpus, log),
                 _attack_work(preset.arch, preset.subset or 50000, settings.steps + 2, settings.batch_size))


def plan_stages(preset: Preset, sources: Sources, device, device_name: str, gpus: int, log,
                extras: tuple[str, ...] = ()) -> list[Stage]:
    n_train = preset.subset or 50000
    n_test = preset.test_subset or 10000
    stages: list[Stage] = []

    def add(stage: Stage) -> str:
        stages.append(stage)
        return stage.id

    def train(name: str, seed: int, config: TrainConfig, data_stage: str | None) -> str:
        if data_stage is None:
            load = lambda ctx, s=seed: sources.train_data(s)  # noqa: E731
        else:
            load = lambda ctx, d=data_stage: sources.dataset_with_test(ctx.folder_of(d) / "dataset")  # noqa: E731
        settings = {"config": asdict(config), "data": "source" if data_stage is None else "stage",
                    "subset": preset.subset if data_stage is None else None, "test_subset": preset.test_subset}
        return add(Stage(name, seed, settings, () if data_stage is None else (data_stage,),
                         train_stage(config, load, device, log), _train_work(config, n_train)))

    for seed in range(preset.seeds):
        def evaluate(name: str, model: str, dataset: str | None, seed=seed) -> str:
            return add(Stage(f"eval-{name}", seed, _eval_settings(preset), (model,) + ((dataset,) if dataset else ()),
                             evaluate_stage(model, sources, list(preset.eps), preset.attack, preset.strong_attack,
                                            preset.cw_attack, preset.strong_subset, dataset, device),
                             _eval_work(preset, preset.arch, n_test)))

        ids = {"standard": train("train-standard", seed, train_config(preset, preset.standard, seed), None),
               "robust": train("train-robust", seed, train_config(preset, preset.robust, seed), None)}
        datasets = {}
        for kind in KINDS:
            settings = replace(preset.synth[kind], seed=seed, subset=preset.subset)
            source = ids["robust" if kind == "r" else "standard"]
            datasets[kind] = add(synth_stage_for(f"synth-{kind}", seed, settings, source, preset, sources,
                                                 device_name, gpus, log))
            ids[kind] = train(f"train-on-{kind}", seed, train_config(preset, preset.train_on[kind], seed),
                              datasets[kind])
        for name in MODELS:
            evaluate(name, ids[name], datasets.get(name))
        points = {}
        for arch in preset.transfer_archs:
            on_d = train(f"fig3-d-{arch}", seed,
                         train_config(preset, replace(preset.transfer_train, arch=arch), seed + FIG3_SEED_OFFSET), None)
            det_config = replace(preset.transfer_train, arch=arch, augment=preset.train_on["det"].augment)
            on_det = train(f"fig3-det-{arch}", seed, train_config(preset, det_config, seed), datasets["det"])
            points[arch] = (on_d, on_det)
        attack = preset.synth["det"]
        fig3_settings = {"n": preset.transfer_images, "attack": asdict(attack), "test_subset": preset.test_subset}
        add(Stage("fig3", seed, fig3_settings,
                  (ids["standard"], *[s for pair in points.values() for s in pair]),
                  transfer_stage(ids["standard"], points, attack, preset.transfer_images, sources, device,
                                 preset.attack.batch_size),
                  _attack_work(preset.arch, min(preset.transfer_images, n_test), attack.steps, attack.batch_size)))
        if "distill" in extras:
            from advfeat.reproduce.distill import plan_distill

            plan_distill(preset, seed, ids, datasets, points, add, train, sources, device, device_name, gpus, log,
                         evaluate)
    add(Stage("theory", None, {}, (), theory_stage(), Work("fixed", fixed_seconds=4.0)))
    return stages


def _eval_settings(preset: Preset) -> dict:
    return {"eps": list(preset.eps), "main": asdict(preset.attack), "strong": asdict(preset.strong_attack),
            "cw": asdict(preset.cw_attack), "strong_subset": preset.strong_subset, "test_subset": preset.test_subset,
            "format": 4}

