"""The paper's claims as data, and their verdicts on a reproduction's results.

Each claim is one or more parts; a part is an effect (a difference of accuracies, an accuracy
minus chance, or a correlation) with a direction and a margin. The effect gets a 95% interval
(advfeat.stats: over seeds when there are several, over test images when there is one), and
the verdict follows from the interval by the rule in stats.verdict. The margins are fixed here,
before any run, from the claims' own words: "far above" is 10 points, "well" or "clearly above"
5 points, "not more robust" means less than 5 points more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from advfeat.stats import (Interval, combine, correlation_interval, mean_interval, paired_difference_interval,
                           shift, verdict, wilson_interval)

CHANCE = 0.10  # ten classes


class Outcomes:
    """Per-seed, per-image results of a reproduction's evaluations, as the claims read them."""

    def __init__(self, evals: dict[str, dict[int, dict]], fig3: dict[int, dict], stages: dict | None = None):
        self.evals, self.fig3, self.stages = evals, fig3, stages or {}
        self.seeds = sorted(next(iter(evals.values())))

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
            return shift(mean_interval([self.value(model, metric, s) for s in self.seeds]), CHANCE)
        outcome = self.per_image(model, metric, self.seeds[0])
        return shift(wilson_interval(int(outcome.sum()), len(outcome)), CHANCE)

    def stage_value_above_chance(self, stage: str, key: str) -> Interval | None:
        """A per-seed accuracy that a stage result holds (a probe's), minus chance."""
        by_seed = self.stages.get(stage, {})
        values = [by_seed[s][key] for s in self.seeds if s in by_seed and by_seed[s].get(key) is not None]
        if not values:
            return None
        if len(values) >= 2:
            return shift(mean_interval(values), CHANCE)
        n = self.evals["standard"][self.seeds[0]]["n"]
        return shift(wilson_interval(round(values[0] * n), n), CHANCE)

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


def claims_at(eps: float) -> tuple[Claim, ...]:
    """The claims, judging robustness at `eps`: the paper's 0.25, where its standard ResNet-50
    keeps 4.5%; a preset on a smoother small net may judge at a larger eps (Preset.claim_eps)."""
    r = f"robust@{eps:g}"
    at = f"eps {eps:g}"
    return (
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
              (Part("clean acc. (D_NR) - chance (10%)", "above", 0.05, lambda o: o.above_chance("nr")),
               Part(f"robust acc. (D_NR) - robust acc. (standard on D), {at}", "below", 0.05,
                    lambda o: o.difference(("nr", r), ("standard", r))))),
        Claim("non-robust-features-suffice", "Non-robust features suffice for generalization (D_rand)",
              "trained on D_rand: 63.3% on the real test set (ResNet-50; Table 1)",
              (Part("clean acc. (D_rand) - chance (10%)", "above", 0.05, lambda o: o.above_chance("rand")),)),
        Claim("against-robust-features", "... even when robust features point the other way (D_det)",
              "trained on D_det: 43.7% on the real test set (ResNet-50; Table 1)",
              (Part("clean acc. (D_det) - chance (10%)", "above", 0.05, lambda o: o.above_chance("det")),)),
        Claim("transfer-tracks-learnability", "Transferability tracks learnability (Figure 3)",
              "five architectures from VGG-16 (27.9% on D_det, 65.7% transfer) to ResNet-50 (44.7%, 98.8%) on a "
              "rising trend line (Figure 3, read from pixels)",
              (Part("correlation of transfer rate and accuracy trained on D_det, over (architecture, seed) points",
                    "above", 0.0, lambda o: o.transfer_correlation()),)),
    )


CLAIMS = claims_at(0.25)


def distill_claims_at(eps: float) -> tuple[Claim, ...]:
    """The Distill discussion's experiments (--extra distill), judged by the same rule."""
    r = f"robust@{eps:g}"
    return (
        Claim("goh-leakage", "D_det controls for robust-feature leakage (Goh; the authors' reply)",
              "Goh (response 2): a linear classifier on a robust linear model's features gets 6.81% trained on D_det "
              "and 23.5% on D_rand (out of 44% / 88%)",
              (Part("probe on the robust network's features, trained on D_det: test acc. - chance (10%)", "below",
                    0.05, lambda o: o.stage_value_above_chance("leakage", "det")),
               Part("probe on a robust linear model's features (Goh's), trained on D_det: test acc. - chance (10%)",
                    "below", 0.05, lambda o: o.stage_value_above_chance("leakage", "linear-det")))),
        Claim("nakkiran-bugs", "Non-transferable adversarial examples teach almost nothing (Nakkiran)",
              "Nakkiran (response 5, ResNet-18, L2): trained on his non-transferable D_det, 2.8% on the true labels "
              "(70.8% on y+1), against 33.2% for PGD's D_det",
              (Part("clean acc. (non-transferable D_det) - chance (10%)", "below", 0.05,
                    lambda o: o.above_chance("det-nt")),)),
        Claim("linf-datasets", "L-inf D_rand and D_det also generalize (the replications the authors cite)",
              "Nakkiran (response 5, ResNet-18, L-inf eps 8/255): PGD D_det gives 23.7% on the true labels",
              (Part("clean acc. (L-inf D_rand) - chance (10%)", "above", 0.05, lambda o: o.above_chance("rand-linf")),
               Part("clean acc. (L-inf D_det) - chance (10%)", "above", 0.05, lambda o: o.above_chance("det-linf")))),
        Claim("dr-from-noise", "D_R inverted from noise also gives robustness (the authors' inversion code)",
              "the authors' inversion notebook starts from clamp(N(0.5, 0.05^2)); the paper's algorithm from another "
              "image",
              (Part(f"robust acc. (D_R from noise) - robust acc. (D_NR), eps {eps:g}", "above", 0.05,
                    lambda o: o.difference(("r-noise", r), ("nr", r))),)),
    )


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
