"""Every setting of advfeat, as dataclasses: the one home of defaults, help texts and checks.

    TrainConfig     training (`advfeat train`, and every training stage of `reproduce`)
    AttackSpec      an evaluation attack (`advfeat eval`, the evaluation stages)
    SynthSettings   a synthesized dataset (`advfeat synth`, the synthesis stages)

Each field carries its help text; the CLI builds its flags from the fields (defaults and help
included), presets are built from these classes (so a typo fails when the preset is loaded,
not hours into a run), and cards record them with `dataclasses.asdict`. Each class checks
itself on construction and raises UserError with one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from advfeat.errors import UserError
from advfeat.models import model_names
from advfeat.data.augment import AUGMENTATIONS
from advfeat.data.synthesized import STORAGE

SCHEDULES = ("step", "onecycle")
LOADERS = ("auto", "tensor", "dali")
NORMS = ("l2", "linf")
STARTS = ("none", "sphere", "ball", "radius", "box")
ATTACKS = ("pgd-l2", "pgd-linf", "cw-l2", "autoattack-l2", "autoattack-linf")
ATTACK_ALIASES = {"autoattack": "autoattack-l2"}  # the paper's threat model is L2
AUTOATTACK_VERSIONS = ("fast", "standard", "plus")  # attacks/autoattack.py VERSIONS: what each runs
DEFAULT_STEPS = {"pgd": 20, "cw": 20, "autoattack": 100}  # AutoAttack's standard version: 100 iterations
KINDS = ("r", "nr", "rand", "det")
KEEP = ("best", "last")


def setting(default, help: str, choices=None, **kwargs):
    """A dataclass field with its help text (and allowed values) for the CLI."""
    return field(default=default, metadata={"help": help, "choices": choices}, **kwargs)


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _one_of(value, choices, what: str) -> tuple[bool, str]:
    return value in choices, f"unknown {what} {value!r}; choose one of {', '.join(map(str, choices))}"


# --------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """Defaults are the paper's (the robustness library's CIFAR defaults)."""

    arch: str = setting("resnet50", "architecture (see the model table)")
    epochs: int = setting(150, "training epochs")
    batch_size: int = setting(128, "training batch size")
    lr: float = setting(0.1, "peak learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(5e-4, "SGD weight decay")
    schedule: str = setting("step", "step: lr x lr_gamma at each milestone; onecycle: linear warm-up over the "
                                    "first 20% to lr, then linear decay to 0 (short runs)", SCHEDULES)
    lr_milestones: list[int] | None = setting(None, "epochs where a step schedule drops lr (default: 1/3 and 2/3)")
    lr_gamma: float = setting(0.1, "factor of each lr drop")
    augment: str = setting("crop-flip", "training augmentation: none; crop-flip (random crop from a 4-pixel pad, "
                                        "horizontal flip); library (crop, flip, colour jitter 0.25 and rotation "
                                        "2 degrees: the robustness library's, the paper's)", AUGMENTATIONS)
    seed: int = setting(0, "seed of the initialization, the order, augmentation and attacks")
    loader: str = setting("auto", "auto / tensor: the split on the device; dali: decode files with DALI", LOADERS)
    compile: bool = setting(False, "torch.compile the model")
    eval_every: int = setting(1, "test accuracy every N epochs (and after the last)")
    adv: str | None = setting(None, "adversarial training with PGD in this norm (default: standard training)",
                              NORMS)
    eps: float = setting(0.5, "adversarial training radius")
    attack_steps: int = setting(7, "PGD steps of adversarial training")
    attack_step_size: float = setting(0.1, "PGD step size of adversarial training (the paper: eps/5)")
    attack_start: str = setting("none", "random start of the training attack (the robustness library: none)",
                                STARTS)
    extra: dict = field(default_factory=dict)  # free-form notes recorded in the card

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # older cards and callers said True / False
            self.augment = "crop-flip" if self.augment else "none"
        if self.schedule == "step" and self.lr_milestones is None:
            self.lr_milestones = sorted({max(1, round(self.epochs * f)) for f in (1 / 3, 2 / 3)} - {self.epochs})
        _check([
            _one_of(self.arch, model_names(), "model"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            _one_of(self.schedule, SCHEDULES, "schedule"),
            _one_of(self.augment, AUGMENTATIONS, "augmentation"),
            _one_of(self.loader, LOADERS, "loader"),
            (self.eval_every >= 1, f"eval_every must be at least 1, got {self.eval_every}"),
            (self.adv in (None, *NORMS), f"unknown adversarial norm {self.adv!r}; choose l2 or linf"),
            (self.eps >= 0, f"eps must be >= 0, got {self.eps}"),
            (self.attack_steps >= 1, f"attack steps must be at least 1, got {self.attack_steps}"),
            (self.attack_step_size > 0, f"attack step size must be positive, got {self.attack_step_size}"),
            _one_of(self.attack_start, STARTS, "random start"),
        ])

    def lr_at(self, epoch: int, iteration: int, iterations_per_epoch: int) -> float:
        """Learning rate for this iteration of this epoch."""
        if self.schedule == "step":
            return self.lr * self.lr_gamma ** sum(epoch >= m for m in self.lr_milestones)
        progress = (epoch * iterations_per_epoch + iteration) / (self.epochs * iterations_per_epoch)
        warm = 0.2
        return self.lr * (progress / warm if progress < warm else (1 - progress) / (1 - warm))


# --------------------------------------------------------------------------- evaluation


@dataclass
class AttackSpec:
    """An evaluation attack: PGD in L2 or Linf (with restarts), or Carlini-Wagner L2."""

    name: str = setting("pgd-l2", "the attack; autoattack-l2 / -linf: APGD-CE then targeted APGD-DLR over the "
                                  "top target classes, per example the worst case (autoattack: -l2)",
                        ATTACKS + tuple(ATTACK_ALIASES))
    steps: int | None = setting(None, "PGD steps (CW: Adam steps per value of c; AutoAttack: APGD iterations) "
                                      "(default: 20 for PGD and CW, 100 for AutoAttack)")
    step_size: float | None = setting(None, "PGD step size (default: 2.5 * eps / steps, which reaches the "
                                            "boundary of the ball)")
    restarts: int = setting(1, "PGD restarts (AutoAttack: APGD-CE restarts); each re-attacks only the unbroken "
                               "examples")
    random_start: str | None = setting(None, "start distribution (default: none for 1 restart, else sphere (L2) / "
                                             "box (Linf))", STARTS)
    retire: bool = setting(True, "stop attacking an example once it is misclassified")
    share: bool = setting(True, "skip examples already broken at a smaller eps")
    batch_size: int = setting(512, "examples per batch (every model call respects it)")
    compile: bool | None = setting(None, "torch.compile the model inside the attack (default: on CUDA only)")
    cw_binary_steps: int = setting(9, "CW: binary search steps over c")
    cw_lr: float = setting(0.01, "CW: Adam learning rate")
    target_classes: int = setting(9, "AutoAttack: target classes of APGD-T (the top ones by clean logit)")
    square: bool = setting(False, "AutoAttack: end with the black-box Square attack (gradient-free)")
    square_queries: int = setting(5000, "AutoAttack: Square's queries")
    version: str = setting("fast", "AutoAttack version: fast = APGD-CE + APGD-T (+ Square with --square); "
                                   "standard = APGD-CE, APGD-T, FAB-T, Square 5000 (RobustBench's); plus = the "
                                   "reference's plus version", AUTOATTACK_VERSIONS)
    checkpoint_every: int = setting(4, "AutoAttack: save per-example results every N batches (with --out, to "
                                       "OUT.state.json; a killed eval resumes from it)")

    def __post_init__(self) -> None:
        self.name = ATTACK_ALIASES.get(self.name, self.name)
        if self.steps is None:
            self.steps = DEFAULT_STEPS[self.name.split("-")[0]]
        _check([
            _one_of(self.name, ATTACKS, "attack"),
            (self.steps >= 1, f"attack steps must be at least 1, got {self.steps}"),
            (self.step_size is None or self.step_size > 0, f"attack step size must be positive, got {self.step_size}"),
            (self.restarts >= 1, f"restarts must be at least 1, got {self.restarts}"),
            (self.random_start is None or self.random_start in STARTS, f"unknown random start {self.random_start!r}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.cw_binary_steps >= 1, f"CW binary steps must be at least 1, got {self.cw_binary_steps}"),
            (self.target_classes >= 1, f"target classes must be at least 1, got {self.target_classes}"),
            (self.square_queries >= 1, f"Square queries must be at least 1, got {self.square_queries}"),
            _one_of(self.version, AUTOATTACK_VERSIONS, "AutoAttack version"),
            (self.checkpoint_every >= 1, f"checkpoint every must be at least 1 batch, got {self.checkpoint_every}"),
        ])

    @property
    def norm(self) -> str:
        return "linf" if self.name.endswith("linf") else "l2"

    @property
    def family(self) -> str:
        """pgd, cw or autoattack."""
        return self.name.split("-")[0]

    def step_size_for(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else 2.5 * eps / self.steps

    def start(self) -> str:
        if self.random_start is not None:
            return self.random_start
        return "none" if self.restarts == 1 else ("sphere" if self.norm == "l2" else "box")


# --------------------------------------------------------------------------- synthesis

# The paper's settings per kind (docs/paper-settings.md has the sources). Inversion keeps the
# last iterate and has no eps (the authors' code: eps 1000, use_best=False); the targeted
# kinds keep the best iterate in the eps ball.
KIND_DEFAULTS = {
    "r": dict(steps=1000, step_size=0.1, eps=math.inf, keep="last"),
    "nr": dict(steps=1000, step_size=0.1, eps=math.inf, keep="last"),
    "rand": dict(steps=100, step_size=0.1, eps=0.5, keep="best"),
    "det": dict(steps=100, step_size=0.1, eps=0.5, keep="best"),
}
INVERSION_STARTS = ("image", "noise")
RAND_TARGETS = ("uniform", "other")


@dataclass
class SynthSettings:
    """One synthesized dataset. Build with `SynthSettings.of(kind, **overrides)` to get the
    kind's defaults (KIND_DEFAULTS) for every setting not given."""

    kind: str = setting("det", "r, nr: representation inversion; rand, det: targeted PGD", KINDS)
    steps: int = setting(100, "attack steps (default: 1000 for r and nr, 100 for rand and det)")
    step_size: float = setting(0.1, "attack step size")
    eps: float = setting(0.5, "attack radius (default: none for r and nr, 0.5 for rand and det)")
    keep: str = setting("best", "the iterate kept: best (targeted kinds) or last (inversion)", KEEP)
    norm: str = setting("l2", "rand, det: the norm of the targeted attack (the paper: l2; linf for the "
                              "replications of the Distill discussion)", NORMS)
    targets: str = setting("uniform", "rand: targets drawn uniformly from all classes (the paper's algorithm), "
                                      "or from the classes other than y", RAND_TARGETS)
    start: str = setting("image", "r, nr: start from another random training image (the paper's algorithm) "
                                  "or from noise clamp(N(0.5, 0.05^2)) (the authors' inversion code)",
                         INVERSION_STARTS)
    fake_relu: bool = setting(True, "r, nr: invert through fake_relu, as the authors' code does")
    batch_size: int = setting(500, "examples per batch")
    shard_size: int = setting(2000, "examples per shard file")
    storage: str = setting("float16", "pixel storage", tuple(STORAGE))
    seed: int = setting(0, "seed of the start images, random targets and the subset")
    subset: int | None = setting(None, "synthesize from N training images (stratified)")
    retire: bool = setting(False, "rand, det: stop an example at its first success")
    compile: bool | None = setting(None, "torch.compile the model (default: on CUDA only)")

    @classmethod
    def of(cls, kind: str, **overrides) -> SynthSettings:
        if kind not in KINDS:
            raise UserError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
        values = KIND_DEFAULTS[kind] | {k: v for k, v in overrides.items() if v is not None}
        return cls(kind=kind, **values)

    def __post_init__(self) -> None:
        _check([
            _one_of(self.kind, KINDS, "kind"),
            (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
            (self.step_size > 0, f"step size must be positive, got {self.step_size}"),
            (self.eps >= 0, f"eps must be >= 0, got {self.eps}"),
            _one_of(self.keep, KEEP, "keep"),
            _one_of(self.norm, NORMS, "norm"),
            (not (self.inversion and self.norm != "l2"), "inversion (r, nr) steps in L2 only"),
            _one_of(self.targets, RAND_TARGETS, "targets"),
            _one_of(self.start, INVERSION_STARTS, "start"),
            (self.batch_size >= 1 and self.shard_size >= 1, "batch and shard sizes must be at least 1"),
            _one_of(self.storage, tuple(STORAGE), "storage"),
            (self.subset is None or self.subset >= 1, f"subset must be at least 1, got {self.subset}"),
        ])

    @property
    def inversion(self) -> bool:
        return self.kind in ("r", "nr")
