"""The Planner: adds the stages of a reproduction (train, synthesize, evaluate) with their
settings, inputs and work estimates. The main plan (plan.py) and every extra (distill.py) build
their stages through one Planner, so a stage is described in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

from advfeat.presets import Preset
from advfeat.reproduce.pipeline import Stage, Work
from advfeat.reproduce.stages import Sources, evaluate_stage, synth_stage, train_stage
from advfeat.settings import SynthSettings, TrainConfig


@dataclass
class SeedStages:
    """The ids of one seed's main stages, which the extras read."""

    models: dict[str, str] = field(default_factory=dict)  # "standard", "robust", kind -> training stage
    datasets: dict[str, str] = field(default_factory=dict)  # kind -> synthesis stage
    fig3: dict[str, tuple[str, str]] = field(default_factory=dict)  # arch -> (trained on D, trained on D_det)


def train_config(config: TrainConfig, seed: int) -> TrainConfig:
    # Test accuracy once, at the end: the report evaluates every model on its own.
    return replace(config, seed=seed, eval_every=10**6)


class Planner:
    """Collects stages in order (inputs before the stages that read them)."""

    def __init__(self, preset: Preset, sources: Sources, device: torch.device, worker_device: str, gpus: int, log):
        self.preset, self.sources, self.device = preset, sources, device
        self.worker_device, self.gpus, self.log = worker_device, gpus, log
        self.n_train = preset.subset or 50000
        self.n_test = preset.test_subset or 10000
        self.stages: list[Stage] = []
        self.extra: str | None = None  # while an extra plans its stages: its name, recorded on each

    def add(self, stage: Stage) -> str:
        stage.extra = stage.extra or self.extra
        self.stages.append(stage)
        return stage.id

    def train(self, name: str, seed: int, config: TrainConfig, data_stage: str | None, *,
              model_seed: int | None = None) -> str:
        """Train `config` on D (data_stage None: seed `seed`'s training subset) or on a synthesized
        dataset. The model's own seed (init, order, augmentation) is `model_seed`, else `seed`."""
        config = train_config(config, seed if model_seed is None else model_seed)
        sources = self.sources
        if data_stage is None:
            load = lambda ctx, s=seed: sources.train_data(s)  # noqa: E731
        else:
            load = lambda ctx, d=data_stage: sources.dataset_with_test(ctx.folder_of(d) / "dataset")  # noqa: E731
        settings = {"config": asdict(config), "data": "source" if data_stage is None else "stage",
                    "subset": self.preset.subset if data_stage is None else None,
                    "test_images": self.sources.test_images}
        passes = self.n_train * config.epochs * (1 + (config.attack_steps if config.adv else 0))
        return self.add(Stage(name, seed, settings, () if data_stage is None else (data_stage,),
                              train_stage(config, load, self.device, self.log),
                              Work("train", config.arch, passes, config.batch_size)))

    def synth(self, name: str, seed: int, settings: SynthSettings, source: str) -> str:
        """Synthesize with `settings` (its seed and subset set here) from the model of stage `source`."""
        settings = replace(settings, seed=seed, subset=self.preset.subset)
        return self.add(Stage(name, seed, {"settings": asdict(settings), "gpus": self.gpus}, (source,),
                              synth_stage(settings, source, self.sources, self.worker_device, self.gpus, self.log),
                              attack_work(self.preset.arch, self.n_train, settings.steps + 2, settings.batch_size)))

    def evaluate(self, name: str, seed: int, model: str, dataset: str | None) -> str:
        """Clean, main, strong and CW accuracy of `model` (and D.6 when trained on `dataset`)."""
        p = self.preset
        return self.add(Stage(f"eval-{name}", seed, eval_settings(p, self.sources), (model,) + ((dataset,) if dataset else ()),
                              evaluate_stage(model, self.sources, list(p.eps), p.attack, p.strong_attack, p.cw_attack,
                                             p.strong_subset, dataset, self.device),
                              eval_work(p, p.arch, self.n_test)))


def attack_work(arch: str, images: float, steps: float, batch_size: int) -> Work:
    return Work("attack", arch, images * steps, batch_size)


def eval_work(preset: Preset, arch: str, n_test: int) -> Work:
    """An upper-bound-ish guess: half the examples survive to the last step of each eps."""
    main = n_test * preset.attack.steps * len(preset.eps) * 0.5
    sub = min(preset.strong_subset, n_test)
    strong = preset.strong_attack
    # AutoAttack: APGD-CE, then APGD-T's targets on the (fewer) survivors.
    runs = strong.restarts + (strong.target_classes / 2 if strong.family == "autoattack" else 0)
    strong = sub * strong.steps * runs * len(preset.eps) * 0.5
    cw = sub * preset.cw_attack.steps * preset.cw_attack.cw_binary_steps
    return attack_work(arch, 1, main + strong + cw, preset.attack.batch_size)


def eval_settings(preset: Preset, sources: Sources) -> dict:
    return {"eps": list(preset.eps), "main": asdict(preset.attack), "strong": asdict(preset.strong_attack),
            "cw": asdict(preset.cw_attack), "strong_subset": preset.strong_subset, "test_images": sources.test_images,
            "format": 4}
