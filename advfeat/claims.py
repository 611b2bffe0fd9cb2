"""The paper's claims as data, and their verdicts on a reproduction's results.

Each claim is one or more parts; a part is an effect (a difference of accuracies, an accuracy
minus chance, or a correlation) with a direction and a margin. The effect gets a 95% interval
(advfeat.stats: over seeds when there are several, over test images when there is one), and
the verdict follows from the interval by the rule in stats.verdict. The margins are fixed here,
before any run, from the claims' own words: "far above" is 10 points, "well" or "clearly above"
5 points, "not more robust" means less than 5 points more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from advfeat.paper import CIFAR10, NO_REFERENCE, paper
from advfeat.stats import (BOOT_SEED, FAILS, HOLDS, INCONCLUSIVE, N_BOOT, Interval, bootstrap_p, combine,
                           correlation_interval, holm, leave_one_out, mean_interval, ols_slope, p_from_t_interval,
                           paired_difference_interval, percentile_interval, prediction_interval, shift,
                           spearman_exact_test,
                           two_level_replicates, verdict, wilson_interval)

# Chance is 1 / the number of classes, taken from the data: each evaluation records the
# model's num_classes (reproduce/stages.py); results from before that record are CIFAR-10's.
DEFAULT_CLASSES = 10


def num_classes_of(evals: dict[str, dict[int, dict]]) -> int:
    """The class count the evaluations record (one value for all of them), else DEFAULT_CLASSES."""
    counts = {ev.get("num_classes", DEFAULT_CLASSES) for by_seed in evals.values() for ev in by_seed.values()}
    if len(counts) != 1:
        raise ValueError(f"evaluations of different class counts {sorted(counts)} cannot be judged together")
    return counts.pop()


def chance_text(num_classes: int) -> str:
    """Chance in words: "chance (10%)" for CIFAR-10's ten classes."""
    return f"chance ({100 / num_classes:.3g}%)"


class Outcomes:
    """Per-seed, per-image results of a reproduction's evaluations, as the claims read them."""

    def __init__(self, evals: dict[str, dict[int, dict]], fig3: dict[int, dict], stages: dict | None = None):
        self.evals, self.fig3, self.stages = evals, fig3, stages or {}
        self.seeds = sorted(next(iter(evals.values())))
        self.num_classes = num_classes_of(evals)
        self.chance = 1 / self.num_classes

    def _row(self, model: str, seed: int, eps: float) -> dict:
        return next(r for r in self.evals[model][seed]["main"]["robust"] if abs(r["eps"] - eps) < 1e-9)

    def value(self, model: str, metric: str, seed: int) -> float:
        ev = self.evals[model][seed]
        if metric == "clean":
            return ev["clean_accuracy"]
        if metric == "shifted":
            return ev.get("shifted_accuracy", float("nan"))
        return self._row(model, seed, float(metric.split("@")[1]))["accuracy"]

    def per_image(self, model: str, metric: str, seed: int) -> np.ndarray:
        ev = self.evals[model][seed]
        correct = np.asarray(ev["correct"], dtype=float)
        if metric == "clean":
            return correct
        survivors = np.zeros(ev["n"])
        survivors[self._row(model, seed, float(metric.split("@")[1]))["robust_index"]] = 1
        return survivors

    def difference(self, a: tuple[str, str], b: tuple[str, str]) -> Interval:
        """metric a minus metric b, each (model, metric)."""
        if len(self.seeds) >= 2:
            return mean_interval([self.value(*a, s) - self.value(*b, s) for s in self.seeds])
        s = self.seeds[0]
        return paired_difference_interval(self.per_image(*a, s), self.per_image(*b, s))

    def above_chance(self, model: str, metric: str = "clean") -> Interval:
        if len(self.seeds) >= 2:
            return shift(mean_interval([self.value(model, metric, s) for s in self.seeds]), self.chance)
        outcome = self.per_image(model, metric, self.seeds[0])
        return shift(wilson_interval(int(outcome.sum()), len(outcome)), self.chance)

    def stage_value_above_chance(self, stage: str, key: str) -> Interval | None:
        """A per-seed accuracy that a stage result holds (a probe's), minus chance."""
        by_seed = self.stages.get(stage, {})
        values = [by_seed[s][key] for s in self.seeds if s in by_seed and by_seed[s].get(key) is not None]
        if not values:
            return None
        if len(values) >= 2:
            return shift(mean_interval(values), self.chance)
        n = self.evals["standard"][self.seeds[0]]["n"]
        return shift(wilson_interval(round(values[0] * n), n), self.chance)

    def transfer_correlation(self) -> Interval | None:
        points = [(p["transfer_rate"], p["det_accuracy"]) for s in self.seeds for p in self.fig3[s]["points"]
                  if p["transfer_rate"] is not None]
        if len(points) < 4:
            return None
        x, y = zip(*points)
        return correlation_interval(x, y)


@dataclass(frozen=True)
class Part:
    effect: str  # what is measured, in words
    direction: str  # "above" or "below" (stats.verdict)
    margin: float
    interval: Callable[[Outcomes], Interval | None]

    @property
    def rule(self) -> str:
        side = ">" if self.direction == "above" else "<"
        margin = f"{self.margin:g}" if self.effect.startswith("correlation") else f"{100 * self.margin:g} pts"
        return f"{self.effect} {side} {margin}"


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    paper: str  # the paper's evidence, with its setting and source
    parts: tuple[Part, ...]


def claims_at(eps: float, dataset: str | None = CIFAR10, num_classes: int = DEFAULT_CLASSES) -> tuple[Claim, ...]:
    """The claims, judging robustness at `eps`: the paper's (CIFAR-10's 0.25, where its standard
    ResNet-50 keeps 4.5%), or a preset's own (Preset.claim_eps). The paper's evidence is quoted
    for `dataset` (local_evidence); chance is 1 / num_classes."""
    r = f"robust@{eps:g}"
    at = f"eps {eps:g}"
    chance = chance_text(num_classes)
    return local_evidence(dataset, (
        Claim("adversarial-training", "Standard training is not robust; adversarial training is",
              "robust accuracy at eps 0.25: 4.5% standard vs 82.3% adversarially trained (ResNet-50; Figure 2b, "
              "'Table 7')",
              (Part(f"robust acc. (adversarial) - robust acc. (standard), {at}", "above", 0.10,
                    lambda o: o.difference(("robust", r), ("standard", r))),)),
        Claim("robust-features", "Robust features alone give robustness (D_R)",
              "trained on D_R: 84.1% clean, 48.3% robust at eps 0.25, vs 0.8% for D_NR and 4.5% for D (ResNet-50; "
              "Figure 2b)",
              (Part(f"robust acc. (D_R) - robust acc. (D_NR), {at}", "above", 0.05,
                    lambda o: o.difference(("r", r), ("nr", r))),
               Part(f"robust acc. (D_R) - robust acc. (standard on D), {at}", "above", 0.05,
                    lambda o: o.difference(("r", r), ("standard", r))))),
        Claim("non-robust-features-accuracy", "Non-robust features alone give accuracy, not robustness (D_NR)",
              "trained on D_NR: 87.7% clean, 0.8% robust at eps 0.25 (ResNet-50; Figure 2b)",
              (Part(f"clean acc. (D_NR) - {chance}", "above", 0.05, lambda o: o.above_chance("nr")),
               Part(f"robust acc. (D_NR) - robust acc. (standard on D), {at}", "below", 0.05,
                    lambda o: o.difference(("nr", r), ("standard", r))))),
        Claim("non-robust-features-suffice", "Non-robust features suffice for generalization (D_rand)",
              "trained on D_rand: 63.3% on the real test set (ResNet-50; Table 1)",
              (Part(f"clean acc. (D_rand) - {chance}", "above", 0.05, lambda o: o.above_chance("rand")),)),
        Claim("against-robust-features", "... even when robust features point the other way (D_det)",
              "trained on D_det: 43.7% on the real test set (ResNet-50; Table 1)",
              (Part(f"clean acc. (D_det) - {chance}", "above", 0.05, lambda o: o.above_chance("det")),)),
        Claim("transfer-tracks-learnability", "Transferability tracks learnability (Figure 3)",
              "five architectures from VGG-16 (27.9% on D_det, 65.7% transfer) to ResNet-50 (44.7%, 98.8%) on a "
              "rising trend line (Figure 3, read from pixels)",
              (Part("correlation of transfer rate and accuracy trained on D_det, over (architecture, seed) points",
                    "above", 0.0, lambda o: o.transfer_correlation()),)),
    ))


# Claims whose evidence text quotes no CIFAR-10 number (so it holds on any data).
NO_CIFAR_NUMBER = {"dr-from-noise"}
# Claims whose evidence on other data is one model's clean accuracy: claim id -> the model key.
CLEAN_EVIDENCE = {"non-robust-features-suffice": "rand", "against-robust-features": "det"}


def local_evidence(dataset: str | None, claims: tuple[Claim, ...]) -> tuple[Claim, ...]:
    """The claims with the paper's evidence on `dataset`: the CIFAR-10 texts as written for
    CIFAR-10; elsewhere the dataset's own number where advfeat.paper has one (Restricted ImageNet's
    Table 1), else NO_REFERENCE, so that a CIFAR-10 number never passes for another dataset's."""
    if dataset == CIFAR10:
        return claims
    return tuple(c if c.id in NO_CIFAR_NUMBER else replace(c, paper=_clean_evidence(c.id, dataset)) for c in claims)


def _clean_evidence(claim_id: str, dataset: str | None) -> str:
    """A claim's evidence on non-CIFAR data: the paper's clean accuracy of its model there, or NO_REFERENCE."""
    key = CLEAN_EVIDENCE.get(claim_id)
    ref = paper(key, "clean", dataset) if key else None
    if ref is None:
        return NO_REFERENCE
    return f"trained on D_{key}: {100 * ref.value:.1f}% on the real test set (ResNet-50, {dataset}; {ref.source})"


CLAIMS = claims_at(0.25)


def distill_claims_at(eps: float, dataset: str | None = CIFAR10,
                      num_classes: int = DEFAULT_CLASSES) -> tuple[Claim, ...]:
    """The Distill discussion's experiments (--extra distill), judged by the same rule; their
    evidence (CIFAR-10's) and chance as in claims_at (`eps` kept for the callers; no part reads
    robust accuracy now). D_R from noise is judged with the main claims (dr_from_noise_rules)."""
    chance = chance_text(num_classes)
    return local_evidence(dataset, (
        Claim("goh-leakage", "D_det controls for robust-feature leakage (Goh; the authors' reply)",
              "Goh (response 2): a linear classifier on a robust linear model's features gets 6.81% trained on D_det "
              "and 23.5% on D_rand (out of 44% / 88%)",
              (Part(f"probe on the robust network's features, trained on D_det: test acc. - {chance}", "below",
                    0.05, lambda o: o.stage_value_above_chance("leakage", "det")),
               Part(f"probe on a robust linear model's features (Goh's), trained on D_det: test acc. - {chance}",
                    "below", 0.05, lambda o: o.stage_value_above_chance("leakage", "linear-det")))),
        Claim("nakkiran-bugs", "Non-transferable adversarial examples teach almost nothing (Nakkiran)",
              "Nakkiran (response 5, ResNet-18, L2): trained on his non-transferable D_det, 2.8% on the true labels "
              "(70.8% on y+1), against 33.2% for PGD's D_det",
              (Part(f"clean acc. (non-transferable D_det) - {chance}", "below", 0.05,
                    lambda o: o.above_chance("det-nt")),)),
        Claim("linf-datasets", "L-inf D_rand and D_det also generalize (the replications the authors cite)",
              "Nakkiran (response 5, ResNet-18, L-inf eps 8/255): PGD D_det gives 23.7% on the true labels",
              (Part(f"clean acc. (L-inf D_rand) - {chance}", "above", 0.05, lambda o: o.above_chance("rand-linf")),
               Part(f"clean acc. (L-inf D_det) - {chance}", "above", 0.05, lambda o: o.above_chance("det-linf")))),
    ))


# D_R from noise is judged once, by issue 19's rules (dr_from_noise_rules, in the main claims'
# list); this is its text for the report.
DR_FROM_NOISE = Claim("dr-from-noise", "D_R inverted from noise also gives robustness (the authors' inversion code)",
                      "the authors' inversion notebook starts from clamp(N(0.5, 0.05^2)); the paper's algorithm from "
                      "another image", ())
# Nakkiran's point against Figure 3's trend (nakkiran_against_trend): its text for the report.
NAKKIRAN_TREND = Claim("nakkiran-trend", "Non-transferable D_det sits on Figure 3's trend (the authors' reply to Nakkiran)",
                       "the authors' reply: Nakkiran's D_det transfers little and teaches little, as Figure 3 predicts",
                       ())

# The rival view each Distill experiment's rule rules out, by claim id (the discussion's judges
# in advfeat/discussion/ state theirs in their docstrings; here for the report).
DISTILL_RIVALS = {
    "goh-leakage": "D_det teaches through leaked robust features (then a probe on robust features trained on D_det "
                   "would be well above chance)",
    "nakkiran-bugs": "every adversarial perturbation carries transferable features (then the non-transferable D_det "
                     "would teach like PGD's)",
    "linf-datasets": "the L2 datasets' generalization is an artefact of the L2 threat model",
    "nakkiran-squares": "adversarial examples come only from useful non-robust features of the data (these data have "
                        "none: no flips predicted)",
    "wallace-mislabelled": "a student learns only the labels it is shown, all wrong here (chance or below predicted)",
    "wallace-cross": "a student learns only the labels it is shown, of other classes here (chance predicted)",
    "wallace-toy": "a student learns only the labels it is shown, the opposite ones here (chance or below predicted)",
    "fourier-noise-robust": "L_p robustness is robustness (then lower error at every frequency)",
    "fourier-noise-gaussian": "noise robustness is uniform across frequencies (then lower error everywhere)",
    "filtered-training": "models use only what humans see: low frequencies, shapes (then high-pass at chance)",
    "fog": "adversarial training makes models robust in general (then no larger drop under fog)",
    "goh-eigenfeatures": "useful features are robust ones; non-robust directions carry no signal (then usefulness <= 0)",
    "layer-robustness": "robustness lives only in the classifier's output, not its representations (then no "
                        "difference at early layers)",
}


def judge(outcomes: Outcomes, eps: float = 0.25, claims: tuple[Claim, ...] | None = None) -> list[dict]:
    """Every claim with its parts' intervals and verdicts, and the claim's verdict."""
    judged = []
    for claim in claims if claims is not None else claims_at(eps):
        parts = []
        for part in claim.parts:
            interval = part.interval(outcomes)
            parts.append({"rule": part.rule, "interval": interval.to_dict() if interval else None,
                          "verdict": verdict(interval, part.direction, part.margin) if interval else "inconclusive"})
        judged.append({"id": claim.id, "statement": claim.statement, "paper": claim.paper, "parts": parts,
                       "verdict": combine([p["verdict"] for p in parts])})
    return judged


# =========================================================================== rules that can fail
#
# Issue 19's rules: each part names the rival explanation it rules out (`rival`), and the rule
# is one the rival would fail. Effects are linear combinations (or, for D_R's share, a ratio)
# of per-model mean accuracies, computed from per-image correctness [seeds, images]; every
# effect's interval is the two-level bootstrap over seeds and test images, paired (one set of
# draws for every model: stats.two_level_replicates), and its verdict follows stats.verdict.
# Student's t interval over the per-seed effects stands beside it (t_interval, S >= 2), and the
# one-sided bootstrap p for the rule (stats.bootstrap_p) feeds Holm's family statement (`holm_family`).

NOT_JUDGED_DISTILL = "not judged (needs --extra distill)"
NOT_JUDGED = "not judged"
SHOWN = "shown (not judged)"
PROBES = {"rand": "the robust network's features", "linear-rand": "a robust linear model's features (Goh's)"}


def paper_dr_share(dataset: str | None, eps: float) -> float | None:
    """The paper's D_R share of adversarial training's robustness gain at its eps on `dataset`
    (CIFAR-10: (48.3 - 4.5) / (82.3 - 4.5) = 56%); None where it lacks one of the three numbers."""
    refs = [paper(key, f"robust@{eps:g}", dataset) for key in ("r", "standard", "robust")]
    if None in refs:
        return None
    r, standard, robust = (ref.value for ref in refs)
    return (r - standard) / (robust - standard)


PAPER_DR_SHARE = paper_dr_share(CIFAR10, 0.25)


@dataclass(frozen=True)
class Judged:
    """One judged part: the effect, its interval, the rule (direction, margin) and the verdict."""
    claim: str  # claim id (Claim.id above, or "adversarial-training" for the precondition)
    part: str  # the effect, in words
    effect: float | None
    interval: Interval | None  # two-level bootstrap: the verdict's interval
    margin: float
    direction: str  # "above" or "below" (stats.verdict)
    verdict: str  # holds / does not hold / inconclusive / not judged (...) / shown (not judged)
    rival: str  # the rival explanation this rule rules out, in one sentence
    eps: float | None = None  # the eps of robust accuracy in the effect (None: clean accuracy only)
    counted: bool = True  # False: a precondition or a quantity shown, not a claim of the paper
    p: float | None = None  # one-sided p for the rule: Holm's input
    t_interval: Interval | None = None  # Student's t over the per-seed effects, shown beside
    reference: float | None = None  # the paper's value where it has one
    note: str = ""  # e.g. that this eps is the preset's deviation

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return d | {k: d[k].to_dict() if d[k] else None for k in ("interval", "t_interval")}


@dataclass(frozen=True)
class Evidence:
    """Plain inputs of the rules.

    correct: (model, metric) -> per-image correctness [S seeds, N test images] (bool), every
        array on the same S seeds and N images. Models are the report's keys ("standard",
        "robust", "r", "nr", "rand", "det", optionally "r-noise"); metrics "clean" and
        "robust@<eps>" (an image counts when the attack failed on it).
    leakage: probe ("rand", "linear-rand") -> the probe's test accuracy when trained on D_rand,
        per seed [S] or per image [S, N]; None when the Distill `leakage` stage did not run.
    fig3: architecture -> (mean transfer success rate, mean accuracy trained on D_det) over seeds.
    nakkiran: (mean transfer rate, mean accuracy trained on) Nakkiran's non-transferable D_det, or None.
    num_classes: the data's class count; chance is its inverse.
    """
    correct: dict
    leakage: dict | None = None
    fig3: dict | None = None
    nakkiran: tuple | None = None
    num_classes: int = DEFAULT_CLASSES

    @property
    def chance(self) -> float:
        return 1 / self.num_classes

    @property
    def chance_text(self) -> str:
        return chance_text(self.num_classes)

    def has(self, *keys) -> bool:
        return all(k in self.correct for k in keys)


def _stack(evidence: Evidence, keys: list) -> np.ndarray:
    """[M, S, N] of the keys' per-image values; a leakage probe's per-seed accuracy [S] becomes a
    row of constants, its accuracy taken as known per seed (its own test-image noise is then
    left out of the interval; per-image probe outcomes [S, N] avoid that)."""
    n = next(iter(evidence.correct.values())).shape[1]
    rows = []
    for key in keys:
        v = np.asarray(evidence.leakage[key[1]] if key[0] == "probe" else evidence.correct[key], dtype=float)
        rows.append(np.repeat(v[:, None], n, axis=1) if v.ndim == 1 else v)
    return np.stack(rows)


def _measure(evidence: Evidence, keys: list, effect: Callable, n_boot: int, seed: int):
    """(point, two-level bootstrap interval, replicates, t interval over seeds) of effect(means),
    where means[i] is key i's mean accuracy: an array of replicates, of per-seed means, or a number."""
    values = _stack(evidence, keys)
    replicates = effect(list(two_level_replicates(values, n_boot, seed).T))
    point = float(effect([v.mean() for v in values]))
    per_seed = effect([v.mean(axis=1) for v in values])
    method = f"{values.shape[1]} seeds x {values.shape[2]} test images, paired two-level bootstrap"
    interval = percentile_interval(replicates, point, method, values.shape[1])
    t = mean_interval(per_seed) if values.shape[1] >= 2 else None
    return point, interval, replicates, t


def _part(evidence: Evidence, claim: str, part: str, keys: list, effect: Callable, direction: str, margin: float,
          rival: str, eps: float | None = None, n_boot: int = N_BOOT, seed: int = BOOT_SEED, **extra) -> Judged:
    point, interval, replicates, t = _measure(evidence, keys, effect, n_boot, seed)
    return Judged(claim, part, point, interval, margin, direction, verdict(interval, direction, margin), rival, eps,
                  p=bootstrap_p(replicates, margin, direction), t_interval=t, **extra)


def _not_judged(claim: str, part: str, margin: float, direction: str, rival: str, why: str,
                eps: float | None = None) -> Judged:
    return Judged(claim, part, None, None, margin, direction, why, rival, eps)


def _r(eps: float) -> str:
    return f"robust@{eps:g}"


def adversarial_training_precondition(ev: Evidence, eps: float, **kw) -> list[Judged]:
    """Shown, not counted: the rules below presume the attack tells robust models apart."""
    j = _part(ev, "adversarial-training", f"robust acc. (adversarial) - robust acc. (standard), eps {eps:g}",
              [("robust", _r(eps)), ("standard", _r(eps))], lambda m: m[0] - m[1], "above", 0.10,
              "the attack cannot tell robust models apart (then adversarial training would show no gain)", eps, **kw)
    return [replace(j, counted=False, note="a precondition, not a claim of the paper")]


def robust_features_rules(ev: Evidence, eps: float, share_reference: tuple = (PAPER_DR_SHARE, 0.25),
                          **kw) -> list[Judged]:
    """D_R: more robust than D_NR and than standard training; its share of adversarial training's
    gain, shown beside share_reference: (the paper's share or None, the eps it was measured at)."""
    r = _r(eps)
    return [
        _part(ev, "robust-features", f"robust acc. (D_R) - robust acc. (D_NR), eps {eps:g}", [("r", r), ("nr", r)],
              lambda m: m[0] - m[1], "above", 0.05,
              "inversion itself, not the robust model's features, sets robustness (then D_R = D_NR)", eps, **kw),
        _part(ev, "robust-features", f"robust acc. (D_R) - robust acc. (standard on D), eps {eps:g}",
              [("r", r), ("standard", r)], lambda m: m[0] - m[1], "above", 0.05,
              "D_R is merely as robust as ordinary training (then D_R - standard <= 0)", eps, **kw),
        dr_share(ev, eps, *share_reference, **kw)]


def dr_share(ev: Evidence, eps: float, reference: float | None = PAPER_DR_SHARE, reference_eps: float = 0.25,
             **kw) -> Judged:
    """(D_R - standard) / (adversarial - standard) robust accuracy, beside the paper's share at its
    eps (CIFAR-10: 56% at 0.25) where it has one; shown."""
    r = _r(eps)
    beside = (f"shown beside the paper's {100 * reference:.0f}% (ResNet-50, eps {reference_eps:g}); no rule"
              if reference is not None else "shown; the paper gives no share on this data; no rule")
    with np.errstate(divide="ignore", invalid="ignore"):  # a draw where adversarial training gains nothing
        j = _part(ev, "robust-features", f"D_R's share of adversarial training's robustness gain, eps {eps:g}",
                  [("r", r), ("standard", r), ("robust", r)], lambda m: (m[0] - m[1]) / (m[2] - m[1]), "above", 0.0,
                  beside, eps, **kw)
    finite = lambda i: i is not None and np.isfinite([i.estimate, i.low, i.high]).all()  # noqa: E731
    if not finite(j.interval):
        j = replace(j, interval=None, note="undefined: adversarial training's robustness gain is 0 in some draws")
    j = replace(j, t_interval=j.t_interval if finite(j.t_interval) else None)
    return replace(j, verdict=SHOWN, counted=False, p=None, reference=reference)


def half_gain_rule(ev: Evidence, **kw) -> Judged:
    """D_NR keeps at least half of standard training's gain over chance."""
    return _part(ev, "non-robust-features-accuracy",
                 "clean acc. (D_NR) - chance - half of (clean acc. (standard) - chance)",
                 [("nr", "clean"), ("standard", "clean")], lambda m: m[0] - ev.chance - (m[1] - ev.chance) / 2,
                 "above", 0.0,
                 "D_NR teaches little: its accuracy is a remnant of what survived inversion", **kw)


def less_robust_than_standard(ev: Evidence, eps: float, **kw) -> Judged:
    r = _r(eps)
    return _part(ev, "non-robust-features-accuracy", f"robust acc. (D_NR) - robust acc. (standard on D), eps {eps:g}",
                 [("nr", r), ("standard", r)], lambda m: m[0] - m[1], "below", 0.0,
                 "D_NR is D in disguise (the inversion changed nothing): then it is as robust as standard training",
                 eps, **kw)


def d_rand_rules(ev: Evidence, **kw) -> list[Judged]:
    """D_rand: above chance, and above what a probe on robust features learns from D_rand."""
    parts = [_part(ev, "non-robust-features-suffice", f"clean acc. (D_rand) - {ev.chance_text}", [("rand", "clean")],
                   lambda m: m[0] - ev.chance, "above", 0.05, "D_rand's mislabeled images teach nothing", **kw)]
    for probe, features in PROBES.items():
        part = f"clean acc. (D_rand) - acc. of a linear probe on {features} trained on D_rand"
        rival = "robust features leaking into D_rand explain its accuracy (a probe on them learns as much)"
        if ev.leakage is None or probe not in ev.leakage:
            parts.append(_not_judged("non-robust-features-suffice", part, 0.05, "above", rival, NOT_JUDGED_DISTILL))
            continue
        parts.append(_part(ev, "non-robust-features-suffice", part, [("rand", "clean"), ("probe", probe)],
                           lambda m: m[0] - m[1], "above", 0.05, rival, **kw))
    return parts


def d_det_rules(ev: Evidence, **kw) -> list[Judged]:
    return [_part(ev, "against-robust-features", f"clean acc. (D_det) - {ev.chance_text}", [("det", "clean")],
                  lambda m: m[0] - ev.chance, "above", 0.05,
                  "only robust features were learned: they say y where D_det's label is y+1, so accuracy on the true "
                  "labels would fall below chance", **kw)]


def dr_from_noise_rules(ev: Evidence, eps: float, **kw) -> list[Judged]:
    """D_R inverted from noise (--extra distill): more robust than D_NR and than standard training."""
    r, parts = _r(eps), []
    for other, label in (("nr", "D_NR"), ("standard", "standard on D")):
        part = f"robust acc. (D_R from noise) - robust acc. ({label}), eps {eps:g}"
        rival = f"robustness comes from the inversion, not the robust features (then as robust as {label})"
        if not ev.has(("r-noise", r), (other, r)):
            parts.append(_not_judged("dr-from-noise", part, 0.05, "above", rival, NOT_JUDGED_DISTILL, eps))
            continue
        parts.append(_part(ev, "dr-from-noise", part, [("r-noise", r), (other, r)], lambda m: m[0] - m[1], "above",
                           0.05, rival, eps, **kw))
    return parts


FIG3 = "transfer-tracks-learnability"
ALPHA = 0.05


def figure3_rules(fig3: dict | None) -> list[Judged]:
    """Over k architecture means (transfer rate x, accuracy trained on D_det y): Spearman's rho
    with its exact one-sided p (k <= 8), the OLS slope's t interval, and leave-one-out."""
    rivals = ("the ordering is chance: k architectures fall in this order with probability p",
              "no linear trend: D_det accuracy does not rise with transfer rate (slope <= 0)",
              "the trend rests on one architecture or two clusters (dropping one point removes it)")
    parts = ("Spearman's rho over architecture means (exact permutation p <= 0.05)",
             "OLS slope of D_det accuracy on transfer rate over architecture means",
             "leave one architecture out: smallest rho (every rho and slope must stay > 0)")
    points = sorted((fig3 or {}).items())
    if len(points) < 4:
        why = f"{NOT_JUDGED}: {len(points)} architectures, the rules need at least 4 (6 planned)"
        return [_not_judged(FIG3, part, 0.0, "above", rival, why) for part, rival in zip(parts, rivals)]
    names, x, y = [n for n, _ in points], [p[0] for _, p in points], [p[1] for _, p in points]
    rho, p = spearman_exact_test(x, y)
    rank_verdict = HOLDS if p <= ALPHA else FAILS if not rho > 0 else INCONCLUSIVE
    slope = ols_slope(x, y)
    drops = leave_one_out(x, y, names)
    loo_ok = all(d["rho"] > 0 and d["slope"] > 0 for d in drops)
    weakest = min(drops, key=lambda d: (d["rho"] if d["rho"] == d["rho"] else -2))
    return [
        Judged(FIG3, parts[0], rho, None, ALPHA, "above", rank_verdict, rivals[0], p=p,
               note=f"{len(x)} architectures, {math.factorial(len(x))} orderings"),
        Judged(FIG3, parts[1], slope.estimate, slope, 0.0, "above", verdict(slope, "above", 0.0), rivals[1],
               p=p_from_t_interval(slope, 0.0, "above", dof=len(x) - 2)),
        Judged(FIG3, parts[2], weakest["rho"], None, 0.0, "above", HOLDS if loo_ok else FAILS, rivals[2],
               note="; ".join(f"without {d['dropped']}: rho {d['rho']:.2f}, slope {d['slope']:.2f}" for d in drops)),
    ]


def nakkiran_against_trend(fig3: dict, point: tuple[float, float]) -> Judged:
    """Nakkiran's non-transferable D_det (transfer rate, accuracy trained on it) against Figure 3's
    OLS trend over the architecture means: "holds" when the point lies inside the trend's 95%
    prediction interval at its transfer rate (it teaches what its transferability predicts).
    effect: the point minus the trend's prediction; interval: the prediction band around 0."""
    part = "accuracy trained on non-transferable D_det, against Figure 3's trend at its transfer rate"
    rival = "non-transferable examples teach less (or more) than their transfer rate predicts: off the trend"
    if len(fig3 or {}) < 4:
        return _not_judged("nakkiran-trend", part, 0.0, "within", rival, f"{NOT_JUDGED}: fewer than 4 architectures")
    x, y = zip(*fig3.values())
    predicted = prediction_interval(x, y, point[0])
    inside = predicted.low <= point[1] <= predicted.high
    return Judged("nakkiran-trend", part, point[1] - predicted.estimate, shift(predicted, predicted.estimate), 0.0,
                  "within", HOLDS if inside else FAILS, rival,
                  note=f"trend predicts {100 * predicted.estimate:.1f}% at transfer {100 * point[0]:.1f}%")


def judge_parts(evidence: Evidence, eps: tuple = (0.25,), preset_note: str = "", n_boot: int = N_BOOT,
                seed: int = BOOT_SEED, paper_eps: float = 0.25, dataset: str | None = CIFAR10) -> list[Judged]:
    """Every rule on plain inputs. Robustness parts are judged at each eps in `eps`: the paper's
    paper_eps first (the primary column; CIFAR-10's 0.25); any other is the preset's own, marked
    with preset_note (the deviation and its reason). The paper's numbers shown beside are those
    of `dataset` (advfeat.paper.paper_dataset), none where it has none. Parts that need --extra
    distill (the leakage probes, D_R from noise) are "not judged" when it did not run. Returned in
    the paper's claim order, then the Distill discussion's; each claim's parts together, at each
    eps in turn."""
    kw = {"n_boot": n_boot, "seed": seed}
    share = (paper_dr_share(dataset, paper_eps), paper_eps)

    def at_each_eps(rules: Callable) -> list[Judged]:
        out = []
        for e in eps:
            note = "" if e == paper_eps else f"deviation: the preset's eps. {preset_note}".strip()
            out += [replace(j, note=f"{j.note}; {note}".strip("; ")) if note else j for j in rules(evidence, e, **kw)]
        return out

    # In the paper's order, then the Distill discussion's; each claim's parts at each eps together.
    parts = (at_each_eps(adversarial_training_precondition)
             + at_each_eps(lambda ev, e, **k: robust_features_rules(ev, e, share, **k))
             + [half_gain_rule(evidence, **kw)]
             + at_each_eps(lambda ev, e, **k: [less_robust_than_standard(ev, e, **k)])
             + d_rand_rules(evidence, **kw) + d_det_rules(evidence, **kw) + figure3_rules(evidence.fig3)
             + at_each_eps(dr_from_noise_rules))
    if evidence.nakkiran is not None:
        parts.append(nakkiran_against_trend(evidence.fig3, evidence.nakkiran))
    return parts


def claim_verdicts(parts: list[Judged], eps: float = 0.25) -> dict[str, str]:
    """Each claim's verdict at one eps from its counted parts (clean-only parts count at every eps):
    holds if every part holds, does not hold if any fails; a part not judged counts as inconclusive."""
    by_claim: dict[str, list[str]] = {}
    for j in parts:
        if j.counted and (j.eps is None or j.eps == eps):
            by_claim.setdefault(j.claim, []).append(j.verdict if j.verdict in (HOLDS, FAILS) else INCONCLUSIVE)
    return {claim: combine(verdicts) for claim, verdicts in by_claim.items()}


def holm_family(parts: list[Judged], eps: float = 0.25, alpha: float = ALPHA) -> dict:
    """Holm's step-down over the counted parts at one eps that have a p-value (the rules'
    one-sided p: bootstrap for effects, exact for Spearman, t for the slope; leave-one-out and
    parts not judged have none and are not in the family). Returns the adjusted p per part,
    which "holds" survive, and a one-sentence statement."""
    family = [j for j in parts if j.counted and j.p is not None and (j.eps is None or j.eps == eps)]
    adjusted, rejected = holm([j.p for j in family], alpha) if family else ([], [])
    holds = [j for j in family if j.verdict == HOLDS]
    survive = [j for j, r in zip(family, rejected) if r and j.verdict == HOLDS]
    statement = (f"Holm's step-down over the {len(family)} judged parts at eps {eps:g} (family-wise alpha {alpha:g}, "
                 f"one-sided p per part): {len(survive)} of the {len(holds)} parts that hold stay significant.")
    return {"alpha": alpha, "eps": eps, "parts": [(j.claim, j.part) for j in family], "adjusted_p": adjusted,
            "rejected": rejected, "holds": len(holds), "holds_surviving": len(survive), "statement": statement}


def evidence_from_outcomes(outcomes: Outcomes, eps: tuple) -> Evidence:
    """The rules' plain inputs from a reproduction's stage results (the report's Outcomes)."""
    correct = {}
    for model in outcomes.evals:
        for metric in ("clean", *(_r(e) for e in eps)):
            try:
                correct[(model, metric)] = np.stack([outcomes.per_image(model, metric, s) for s in outcomes.seeds])
            except (KeyError, StopIteration):  # a model evaluated without this eps
                continue
    leakage = outcomes.stages.get("leakage")
    if leakage:
        leakage = {probe: np.array([leakage[s][probe] for s in outcomes.seeds]) for probe in PROBES
                   if all(s in leakage and leakage[s].get(probe) is not None for s in outcomes.seeds)}
    nt = [r["transfer_rate"] for r in outcomes.stages.get("fig3-nt", {}).values() if r.get("transfer_rate") is not None]
    nakkiran = (float(np.mean(nt)), float(correct[("det-nt", "clean")].mean())) \
        if nt and ("det-nt", "clean") in correct else None
    return Evidence(correct, leakage or None, figure3_means(outcomes.fig3), nakkiran, outcomes.num_classes)


def figure3_means(fig3: dict) -> dict:
    """architecture -> (mean transfer rate, mean accuracy trained on D_det) over the seeds."""
    points: dict[str, list] = {}
    for result in fig3.values():
        for p in result["points"]:
            if p["transfer_rate"] is not None:
                points.setdefault(p["arch"], []).append((p["transfer_rate"], p["det_accuracy"]))
    return {arch: tuple(np.mean(v, axis=0).tolist()) for arch, v in points.items()}


def judge_outcomes(outcomes: Outcomes, eps: tuple = (0.25,), preset_note: str = "", **kw) -> list[Judged]:
    """judge_parts on a reproduction's stage results: what the report calls."""
    return judge_parts(evidence_from_outcomes(outcomes, eps), eps, preset_note, **kw)


# =========================================================================== Section 4: the Gaussian model
#
# The theory stage computes the paper's Section 4 exactly (advfeat/theory). These rules check the
# three theorems' statements on its numbers; they are checks of a computation, not statistics.

THEORY_TOLERANCE = 0.05  # Theorem 2: the L2-ball fit vs the closed form's family, max relative error


def section4_rules(gaussian: dict) -> list[dict]:
    """Theorems 1-3 judged on the theory stage's gaussian.json: each {"theorem", "rule", "value",
    "verdict"}.

    Theorem 1: the penalty adversary's loss gap is gap = 1/2 (tr[(I + (C Sigma - I)^-1)^2] - d)
        (the NLL's factor 1/2; the paper writes tr[...] - d); the closed form must agree with
        Monte Carlo within 3 standard errors, and exceed the gap of the isotropic covariance of
        the same trace (the theorem's point: misalignment makes the gap).
    Theorem 2: the robust MLE keeps the mean (|mu_r - mu| <= 1e-6) and its covariance is the
        closed form's Sigma_r(lambda) for some lambda (max relative error <= THEORY_TOLERANCE).
    Theorem 3: the worst-case alignment of the input gradient with the class axis never falls
        as eps grows, and ends above where it starts, in 2 and in d dimensions.
    """
    gap = gaussian["loss_gap"]
    agree = abs(gap["closed_form"] - gap["monte_carlo"]) <= 3 * gap["monte_carlo_se"]
    bigger = gap["closed_form"] > gap["isotropic_same_trace"]
    two, many = gaussian["two_dim"], gaussian["d_dim"]
    mean_kept = max(max(abs(a - b) for a, b in zip(r["mu_r"], two["mu"])) for r in _fits(two))
    worst_fit = max(c["max_rel_error"] for study in (two, many) for c in study["closest_closed_form"])
    rising = all(_non_decreasing([r["worst_case_alignment"] for r in _fits(study)]) for study in (two, many))
    return [
        {"theorem": "Theorem 1 (loss gap)",
         "rule": "closed form within 3 Monte Carlo SE, and above the isotropic covariance's gap",
         "value": (f"gap {gap['closed_form']:.3f} (the paper's tr[...] - d form: {2 * gap['closed_form']:.3f}); Monte "
                   f"Carlo {gap['monte_carlo']:.3f} +- {gap['monte_carlo_se']:.3f}; isotropic "
                   f"{gap['isotropic_same_trace']:.3f} (C = {gap['penalty_C']:g})"),
         "verdict": HOLDS if agree and bigger else FAILS},
        {"theorem": "Theorem 2 (robust MLE)",
         "rule": (f"mean kept (max abs(mu_r - mu) <= 1e-6); covariance within {100 * THEORY_TOLERANCE:g}% of the "
                  "closed form"),
         "value": f"max abs(mu_r - mu) = {mean_kept:.1e}; max relative error {100 * worst_fit:.1f}%",
         "verdict": HOLDS if mean_kept <= 1e-6 and worst_fit <= THEORY_TOLERANCE else FAILS},
        {"theorem": "Theorem 3 (gradient alignment)",
         "rule": "worst-case alignment non-decreasing in eps (2-D and d-D)",
         "value": ", ".join(f"{len(s['mu'])}-D {_span(s)}" for s in (two, many)),
         "verdict": HOLDS if rising else FAILS},
    ]


def _non_decreasing(values: list[float], tol: float = 1e-9) -> bool:
    return all(b >= a - tol for a, b in zip(values, values[1:])) and values[-1] > values[0]


def _fits(study: dict) -> list[dict]:
    """A study's robust fits over eps: by quadrature where it has them (exact), else from samples."""
    return study["quadrature"] if "quadrature" in study else study["samples"]


def _span(study: dict) -> str:
    fits = _fits(study)
    return f"{fits[0]['worst_case_alignment']:.2f} -> {fits[-1]['worst_case_alignment']:.2f}"
