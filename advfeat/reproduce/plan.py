"""The stages of a reproduction, for every seed: what runs, on what, with which settings.

Per seed s of preset.seed_list (the seed changes training, synthesis and the training subset;
the test set is shared, and held out from tuning where the preset names its tuning images):
    train-standard@s, train-robust@s        the two source models, on D
    synth-{r,nr,rand,det}@s                 the four datasets (D_R from the robust model)
    train-on-{kind}@s                       a standard model on each
    eval-{model}@s                          clean, main PGD, strong PGD, CW (and D.6 for D_det)
    fig3-d-{arch}@s, fig3-det-{arch}@s      Figure 3: each architecture on D and on D_det
    fig3@s                                  transfer vs learnability
Once: theory (the Gaussian model of Section 4). Each extra (--extra, EXTRA_PLANS) adds its
own stages per seed, reading the seed's main stages.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from advfeat.presets import Preset
from advfeat.reproduce.distill import plan_distill
from advfeat.reproduce.pipeline import Stage, Work
from advfeat.reproduce.planner import Planner, SeedStages, attack_work
from advfeat.reproduce.stages import Sources, theory_stage, transfer_stage
from advfeat.settings import KINDS

MODELS = ("standard", "robust", *KINDS)  # the report's rows: trained on D (x2), then on each dataset
FIG3_SEED_OFFSET = 1000  # Figure 3's models on D never share the source model's seed
EXTRA_PLANS = {"distill": plan_distill}  # name -> function(planner, seed, SeedStages) adding its stages


def plan_stages(preset: Preset, sources: Sources, device, worker_device: str, gpus: int, log,
                extras: tuple[str, ...] = ()) -> list[Stage]:
    planner = Planner(preset, sources, device, worker_device, gpus, log)
    for seed in preset.seed_list:
        main = plan_seed(planner, seed)
        for extra in extras:
            planner.extra = extra
            EXTRA_PLANS[extra](planner, seed, main)
            planner.extra = None
    planner.add(Stage("theory", None, {}, (), theory_stage(), Work("fixed", fixed_seconds=4.0)))
    return planner.stages


def plan_seed(planner: Planner, seed: int) -> SeedStages:
    """The main stages of one seed: source models, datasets, models on them, evaluations, Figure 3."""
    preset, main = planner.preset, SeedStages()
    main.models = {"standard": planner.train("train-standard", seed, preset.standard, None),
                   "robust": planner.train("train-robust", seed, preset.robust, None)}
    for kind in KINDS:
        source = main.models["robust" if kind == "r" else "standard"]
        main.datasets[kind] = planner.synth(f"synth-{kind}", seed, preset.synth[kind], source)
        main.models[kind] = planner.train(f"train-on-{kind}", seed, preset.train_on[kind], main.datasets[kind])
    for name in MODELS:
        planner.evaluate(name, seed, main.models[name], main.datasets.get(name))
    for arch in preset.transfer_archs:
        on_d = planner.train(f"fig3-d-{arch}", seed, replace(preset.transfer_train, arch=arch), None,
                             model_seed=seed + FIG3_SEED_OFFSET)
        det_config = replace(preset.transfer_train, arch=arch, augment=preset.train_on["det"].augment)
        main.fig3[arch] = (on_d, planner.train(f"fig3-det-{arch}", seed, det_config, main.datasets["det"]))
    attack = preset.synth["det"]
    settings = {"n": preset.transfer_images, "attack": asdict(attack), "test_images": planner.sources.test_images}
    planner.add(Stage("fig3", seed, settings, (main.models["standard"], *[s for pair in main.fig3.values() for s in pair]),
                      transfer_stage(main.models["standard"], main.fig3, attack, preset.transfer_images, planner.sources,
                                     planner.device, preset.attack.batch_size),
                      attack_work(preset.arch, min(preset.transfer_images, planner.n_test), attack.steps,
                                  attack.batch_size)))
    return main
