"""Wallace's "Learning from Incorrectly Labeled Data" (Distill discussion, response 6).

Three experiments, each a student that sees only labels a teacher got wrong:
1. Mislabelled images. A briefly trained teacher labels training images it never saw; only the
   images it labels wrongly are kept, with its (wrong) labels; a fresh student trained on them
   alone is tested on the real test set. Wallace: ResNet-18, 2 epochs (62.5% train, 63.1%
   test), 18,768 of 50,000 kept, the student (50 epochs) reaches 49.7%.
2. Across datasets, within CIFAR-10 (his MNIST-from-Fashion-MNIST needs data that is not
   here): a teacher trained on five classes (airplane..deer) labels images of the other five
   (dog..truck); a student trained on those alone is tested on the teacher's five classes
   (chance 20%). Wallace: 91.04% on MNIST from Fashion-MNIST images.
3. His 2-D toy: 32 random points in [0, 1]^2 with random binary labels; an MLP fits them;
   L-inf eps 0.12 targeted adversarial examples toward the other label, labelled so; a new MLP
   trained on them alone is scored on the original points. Wallace: 23/32.

The teacher's and the student's images are disjoint halves of the training subset
(`disjoint_halves`). Deviations (cpu scale): the tiny net, at most `n_images` training images
of the seed's subset, a teacher of `teacher.epochs` epochs and a student of `student.epochs`.
The toy's MLP (common.PixelMLP, two hidden layers of 256, full-batch Adam) is ours: the comment
gives no architecture.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from advfeat.attacks import ReachTarget, make_threat, pgd
from advfeat.discussion.common import (
    PixelMLP,
    Reference,
    fit_adam,
    judged,
    rate_interval,
    seeds_of,
    train_on_tensors,
    training_tensors,
)
from advfeat.errors import UserError
from advfeat.evaluation import predict_tensor
from advfeat.settings import TrainConfig
from advfeat.stats import shift

TEACHER_CLASSES = (0, 1, 2, 3, 4)  # airplane, automobile, bird, cat, deer; the student's images: the rest
_brief = TrainConfig(arch="tiny", epochs=2, lr=0.2, batch_size=128, schedule="onecycle", augment="none",
                     eval_every=1000)  # the card's test accuracy after the last epoch only

REFERENCES = {
    "wallace-mislabelled": Reference("49.7% test accuracy from 18,768 wrongly labelled images",
                                     "Wallace, response 6: ResNet-18 teacher trained 2 epochs (63.1% test), "
                                     "student ResNet-18 trained 50 epochs, all of CIFAR-10"),
    "wallace-cross": Reference("91.04% on MNIST test (94.5% with MNIST normalization)",
                               "Wallace, response 6: a CNN (99.1% on MNIST) labels Fashion-MNIST; a new CNN "
                               "trained on those labels; here within CIFAR-10, five classes label the other five"),
    "wallace-toy": Reference("23/32 original points right", "Wallace, response 6: 32 random 2-D points, random "
                             "labels, an MLP, L-inf eps 0.12 adversarial examples, a new MLP"),
}


@dataclass(frozen=True)
class WrongLabelsSettings:
    n_images: int = 5000  # training images used (split in two halves: teacher's, student's)
    teacher: TrainConfig = field(default_factory=lambda: _brief)
    student: TrainConfig = field(default_factory=lambda: replace(_brief, epochs=10))
    batch_size: int = 500  # labelling and testing
    toy_points: int = 32
    toy_eps: float = 0.12
    toy_draws: int = 5  # independent toys per seed (each 32 points)
    toy_steps: int = 400  # Adam steps (full batch, lr 0.01) of each toy MLP (two hidden layers of 256)
    toy_attack_steps: int = 50

    def __post_init__(self):
        if self.n_images < 20:
            raise UserError(f"n_images must be at least 20, got {self.n_images}")
        if not self.toy_eps > 0:
            raise UserError(f"toy eps must be > 0, got {self.toy_eps}")
        if self.toy_points < 2 or self.toy_draws < 1:
            raise UserError(f"the toy needs >= 2 points and >= 1 draw, got {self.toy_points}, {self.toy_draws}")


# --------------------------------------------------------------------------- the pieces


def disjoint_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(teacher's positions, student's positions): a random half of range(n) and the rest, sorted."""
    order = np.random.default_rng([seed, 0xBAD1AB]).permutation(n)
    return np.sort(order[:n // 2]), np.sort(order[n // 2:])


def wrongly_labelled(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Positions whose predicted label differs from the true one."""
    return torch.nonzero(predicted != true).flatten()


def wrong_label_set(teacher, x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """(images the teacher labels wrongly, its labels for them, their true labels)."""
    predicted = predict_tensor(teacher, x, batch_size)
    keep = wrongly_labelled(predicted, y)
    return x[keep], predicted[keep], y[keep]


def of_classes(y: torch.Tensor, classes: tuple[int, ...]) -> torch.Tensor:
    """Positions of the labels in `classes`."""
    return torch.nonzero(torch.isin(y, torch.tensor(classes, device=y.device))).flatten()


def accuracy_outcomes(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> np.ndarray:
    """Per image: 1 if the model's prediction is y."""
    return (predict_tensor(model, x, batch_size) == y).int().cpu().numpy()


# --------------------------------------------------------------------------- the experiments


def mislabelled(settings: WrongLabelsSettings, train, test, folder, seed: int, device, log=None) -> dict:
    """Experiment 1 on train = (x, y) (the training images), test = (x, y) (the real test set)."""
    x, y = train
    teacher_idx, student_idx = (torch.from_numpy(i).to(x.device) for i in disjoint_halves(len(y), seed))
    teacher = train_on_tensors(replace(settings.teacher, seed=seed), (x[teacher_idx], y[teacher_idx]), test,
                               folder / "teacher", device, log=log)
    kept_x, kept_labels, kept_true = wrong_label_set(teacher, x[student_idx], y[student_idx], settings.batch_size)
    if len(kept_labels) < 2:
        raise UserError(f"the teacher labels {len(kept_labels)} student images wrongly: too few to train on")
    student = train_on_tensors(replace(settings.student, seed=seed + 1), (kept_x, kept_labels), test,
                               folder / "student", device, log=log)
    correct = accuracy_outcomes(student, *test, settings.batch_size)
    return {"teacher_train_accuracy": float(accuracy_outcomes(teacher, x[teacher_idx], y[teacher_idx],
                                                              settings.batch_size).mean()),
            "teacher_test_accuracy": float(accuracy_outcomes(teacher, *test, settings.batch_size).mean()),
            "student_images": len(student_idx), "kept": len(kept_labels),
            "kept_labels_wrong": float((kept_labels != kept_true).float().mean()),
            "student_test_accuracy": float(correct.mean()), "correct": correct.tolist()}


def cross_classes(settings: WrongLabelsSettings, train, test, folder, seed: int, device, log=None) -> dict:
    """Experiment 2: the teacher learns TEACHER_CLASSES on its half; it labels the student half's
    images of the other classes; the student learns those labels; tested on the teacher's classes."""
    x, y = train
    teacher_idx, student_idx = (torch.from_numpy(i).to(x.device) for i in disjoint_halves(len(y), seed))
    k = len(TEACHER_CLASSES)
    own = teacher_idx[of_classes(y[teacher_idx], TEACHER_CLASSES)]
    others = student_idx[~torch.isin(y[student_idx], torch.tensor(TEACHER_CLASSES, device=y.device))]
    test_own = of_classes(test[1], TEACHER_CLASSES)
    test_k = (test[0][test_own], test[1][test_own])  # labels 0..4 already: TEACHER_CLASSES is 0..4
    teacher = train_on_tensors(replace(settings.teacher, seed=seed), (x[own], y[own]), test_k,
                               folder / "cross-teacher", device, num_classes=k, log=log)
    labels = predict_tensor(teacher, x[others], settings.batch_size)
    student = train_on_tensors(replace(settings.student, seed=seed + 1), (x[others], labels), test_k,
                               folder / "cross-student", device, num_classes=k, log=log)
    correct = accuracy_outcomes(student, *test_k, settings.batch_size)
    return {"teacher_test_accuracy": float(accuracy_outcomes(teacher, *test_k, settings.batch_size).mean()),
            "student_images": len(others), "chance": 1 / k, "student_test_accuracy": float(correct.mean()),
            "correct": correct.tolist()}


def toy_fit(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> PixelMLP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PixelMLP(x.shape[1], 256, 2)
    return fit_adam(model, x, y, steps=steps, lr=0.01)


def toy_draw(settings: WrongLabelsSettings, draw_seed: int) -> dict:
    """One toy: the first MLP's training accuracy, the attack's success, and how many original
    points the second MLP (trained on the adversarial examples and their target labels) gets right."""
    g = torch.Generator().manual_seed(draw_seed)
    x = torch.rand(settings.toy_points, 2, generator=g)
    y = torch.randint(0, 2, (settings.toy_points,), generator=g)
    first = toy_fit(x, y, settings.toy_steps, draw_seed)
    target = 1 - y
    crafted = pgd(first, x, target, threat=make_threat("linf", settings.toy_eps, "none"),
                  steps=settings.toy_attack_steps, step_size=2.5 * settings.toy_eps / settings.toy_attack_steps,
                  objective=ReachTarget(), keep="best")
    second = toy_fit(crafted.x_adv, target, settings.toy_steps, draw_seed + 500)
    with torch.no_grad():
        return {"fit": float((first(x).argmax(1) == y).float().mean()),
                "attack_success": float(crafted.success.float().mean()),
                "right": int((second(x).argmax(1) == y).sum())}


def toy(settings: WrongLabelsSettings, seed: int) -> dict:
    """Experiment 3, settings.toy_draws times: per draw, the first MLP's training accuracy, the
    attack's success, and how many original points the second MLP gets right."""
    rows, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-point MLP step is all overhead: more threads only contend (4x slower on 2)
    try:
        for draw in range(settings.toy_draws):
            rows.append(toy_draw(settings, seed * 1000 + draw))
    finally:
        torch.set_num_threads(threads)
    right = sum(r["right"] for r in rows)
    return {"draws": rows, "right": right, "points": settings.toy_points * settings.toy_draws,
            "accuracy": right / (settings.toy_points * settings.toy_draws)}


def wrong_labels_stage(settings: WrongLabelsSettings, sources, seed: int, device: torch.device, log=None):
    """Stage body `wrong-labels@seed`; reads no stage: the seed's training subset
    (sources.train_data(seed), settings.n_images of them drawn by the seed) and the shared test set
    (sources.test_tensors()). Trains four tiny nets into <folder>/{teacher, student,
    cross-teacher, cross-student}; result: the three experiments with per-image outcomes."""

    def run(ctx) -> dict:
        start = time.perf_counter()
        x, y = training_tensors(sources, seed, settings.n_images, device)
        test = sources.test_tensors()
        result = {"settings": asdict(settings)}
        for name, experiment in (("mislabelled", mislabelled), ("cross", cross_classes)):
            began = time.perf_counter()
            result[name] = experiment(settings, (x, y), test, ctx.folder, seed, device, log)
            result[name]["seconds"] = round(time.perf_counter() - began, 1)
        began = time.perf_counter()
        result["toy"] = toy(settings, seed) | {"seconds": round(time.perf_counter() - began, 1)}
        result["seconds"] = round(time.perf_counter() - start, 1)
        return result

    return run


# --------------------------------------------------------------------------- the claims


def _above_chance(results: dict[int, dict], key: str, value: str, outcomes, chance: float):
    seeds = seeds_of(results)
    interval = rate_interval([results[s][key][value] for s in seeds], [outcomes(results[s][key]) for s in seeds])
    return shift(interval, chance)


def judge_wrong_labels(results: dict[int, dict]) -> list[dict]:
    """Wallace's three claims from each seed's stage result. Each is an accuracy minus chance
    that must exceed 5 points ("well above chance"). The rival view (a student learns only the
    labels it is shown, and every label it is shown is wrong) predicts at or below chance."""
    mis = _above_chance(results, "mislabelled", "student_test_accuracy", lambda r: np.asarray(r["correct"]), 0.10)
    chance = results[seeds_of(results)[0]]["cross"]["chance"]
    cross = _above_chance(results, "cross", "student_test_accuracy", lambda r: np.asarray(r["correct"]), chance)
    toy_points = lambda r: np.r_[np.ones(r["right"]), np.zeros(r["points"] - r["right"])]
    toy_acc = _above_chance(results, "toy", "accuracy", toy_points, 0.5)
    return [
        judged("wallace-mislabelled", "A student learns from images its teacher labelled wrongly, and only those",
               REFERENCES["wallace-mislabelled"],
               [("student's test acc. - chance (10%)", mis, "above", 0.05)]),
        judged("wallace-cross", "A student learns five classes from a teacher's labels of images of other classes",
               REFERENCES["wallace-cross"],
               [(f"student's test acc. on the teacher's classes - chance ({chance:.0%})", cross, "above", 0.05)]),
        judged("wallace-toy", "Adversarial examples of a 2-D toy, labelled as the attack's target, teach the "
               "original labels", REFERENCES["wallace-toy"],
               [("second MLP's acc. on the original points - chance (50%)", toy_acc, "above", 0.05)]),
    ]
