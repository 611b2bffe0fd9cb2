"""The report's numbers from the stages' results: per-model rows of accuracies with their 95%
intervals, the judged claims, Figure 3's points, the Distill numbers, the datasets' statistics.

No prose and no drawing: everything here is JSON-ready data that markdown.py writes as text and
figures.py draws. A stage's results are keyed "<stage name>@<seed>" (e.g. "eval-r@1"); seedless
stages (the theory) have no "@".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from advfeat.claims import (DISTILL_RIVALS, DR_FROM_NOISE, NAKKIRAN_TREND, NOT_JUDGED, SHOWN, Outcomes,
                            claim_verdicts, claims_at, distill_claims_at, holm_family, judge, judge_outcomes, section4_rules)
from advfeat.discussion import eigenfeatures, fourier, layer_robustness, squares, wrong_labels
from advfeat.paper import CIFAR10, FIGURE3, paper, paper_dataset
from advfeat.settings import KINDS
from advfeat.stats import mean_interval, wilson_interval

# The main table: (evaluation name "eval-<key>", the setting's label), in the paper's order.
ROWS = [
    ("standard", "Standard training on D"),
    ("robust", "Adversarial training on D (L2)"),
    ("r", "Standard training on D_R"),
    ("nr", "Standard training on D_NR"),
    ("rand", "Standard training on D_rand"),
    ("det", "Standard training on D_det"),
]
# The Distill discussion's models (--extra distill), as ROWS.
DISTILL_ROWS = [
    ("det-nt", "Standard training on non-transferable D_det (Nakkiran)"),
    ("rand-linf", "Standard training on L-inf D_rand"),
    ("det-linf", "Standard training on L-inf D_det"),
    ("r-noise", "Standard training on D_R inverted from noise"),
]


@dataclass
class Numbers:
    """What the report shows. claims/rows/figure3/distill are lists and dicts of JSON values;
    an accuracy is a cell {"estimate", "low", "high", "n", "method"} or None when not measured."""

    claims: list[dict]  # judged at the paper's eps (paper_eps) and the preset's claim eps (judged_claims)
    holm: dict  # eps -> Holm's family statement over the counted parts at that eps
    rows: list[dict]
    figure3: list[dict]
    correlation: dict | None  # transfer rate vs D_det accuracy over (architecture, seed) points
    synthesized: dict[str, dict]
    distill: dict | None  # None without --extra distill
    nontransferable: list[dict] | None  # the fig3-nt results (Figure 3's x markers), with distill
    theory: dict  # the theory stage's result (its "headline")


def collect(results: dict) -> Numbers:
    """The numbers from `results` (reproduce's record: "preset" as a dict, "results" the
    stages' results by stage id)."""
    stage_results = results["results"]
    names = {stage_id.partition("@")[0] for stage_id in stage_results}
    evals = {name[len("eval-"):]: by_seed(stage_results, name) for name in sorted(names) if name.startswith("eval-")}
    extra_stages = {name: by_seed(stage_results, name) for name in ("leakage", "fig3-nt") if name in names}
    fig3_raw = by_seed(stage_results, "fig3")
    outcomes = Outcomes(evals, fig3_raw, extra_stages)
    preset = results["preset"]
    eps_list, dataset = preset["eps"], paper_dataset(preset)
    distill = distill_summary(outcomes, evals, extra_stages, stage_results, preset) if "leakage" in names else None
    correlation = outcomes.transfer_correlation()
    claims, holm = judged_claims(outcomes, preset)
    return Numbers(claims=claims, holm=holm, rows=table_rows(evals, eps_list, paper_eps=paper_eps_of(preset),
                                                             dataset=dataset),
                   figure3=figure3_points(fig3_raw, dataset),
                   correlation=correlation.to_dict() if correlation else None,
                   synthesized=synth_summary(stage_results), distill=distill,
                   nontransferable=list(extra_stages.get("fig3-nt", {}).values()) if distill else None,
                   theory=theory_numbers(stage_results.get("theory", {"headline": ""}), results.get("theory_dir")))


def paper_eps_of(preset: dict) -> float:
    """The paper's eps for the preset's data; records from before presets declared it are CIFAR-10's 0.25."""
    return float(preset.get("paper_eps", 0.25))


def judged_claims(outcomes: Outcomes, preset: dict) -> tuple[list[dict], dict]:
    """The claims judged by claims.py's rules, at the paper's eps (paper_eps: the primary verdict)
    and at the preset's own claim eps beside it; and Holm's statement at each. A claim whose parts
    were all not judged (they need --extra distill) says so instead of a verdict."""
    paper_eps, dataset = paper_eps_of(preset), paper_dataset(preset)
    eps = tuple(dict.fromkeys((paper_eps, float(preset["claim_eps"]))))
    parts = judge_outcomes(outcomes, eps, paper_eps=paper_eps, dataset=dataset)
    verdicts = {e: claim_verdicts(parts, e) for e in eps}
    texts = {c.id: c for c in claims_at(paper_eps, dataset, outcomes.num_classes)
             + distill_claims_at(paper_eps, dataset, outcomes.num_classes) + (DR_FROM_NOISE, NAKKIRAN_TREND)}
    claims = []
    for claim_id in dict.fromkeys(j.claim for j in parts):
        mine = [j for j in parts if j.claim == claim_id]
        judged = any(not j.verdict.startswith(NOT_JUDGED) for j in mine)
        at = {f"{e:g}": (verdicts[e].get(claim_id, SHOWN) if judged else mine[0].verdict) for e in eps}
        text = texts.get(claim_id)
        claims.append({"id": claim_id, "statement": text.statement if text else claim_id,
                       "paper": text.paper if text else "", "counted": any(j.counted for j in mine),
                       "verdict": at[f"{paper_eps:g}"], "verdicts": at, "parts": [j.to_dict() for j in mine]})
    return claims, {f"{e:g}": holm_family(parts, e) for e in eps}


def theory_numbers(theory: dict, folder: str | None) -> dict:
    """The theory stage's result, with Section 4's theorems judged on its gaussian.json."""
    path = Path(folder) / "gaussian.json" if folder else None
    if path is None or not path.is_file():
        return theory
    return theory | {"rules": section4_rules(json.loads(path.read_text()))}


def by_seed(results: dict, name: str) -> dict[int, dict]:
    """The results of stage `name` for every seed: {seed: result}."""
    out = {}
    for stage_id, result in results.items():
        base, _, seed = stage_id.partition("@")
        if base == name and seed:
            out[int(seed)] = result
    return out


def _row_at(evaluation: dict, eps: float) -> dict | None:
    return next((r for r in evaluation.get("robust", []) if abs(r["eps"] - eps) < 1e-9), None)


def worst_case(ev: dict, eps: float) -> float | None:
    """Robust accuracy on the strong-attack subset when an image counts as broken if any attack
    (main PGD, strong check, CW) broke it; None when one of them did not run at eps."""
    rows = [_row_at(ev[k], eps) for k in ("main", "strong", "cw")]
    n = ev["strong"]["n"]
    if any(r is None for r in rows) or n == 0:
        return None
    survivors = set(range(n))
    for r in rows:
        survivors &= set(r["robust_index"])
    return len(survivors) / n


def summarize(values: list[float | None], n_images: int | None = None) -> dict | None:
    """Mean with its 95% interval: Student's t over seeds, or (one seed) Wilson over the
    n_images test images; missing values (None, NaN) are dropped, None when none is left."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    if len(values) >= 2:
        return mean_interval(values).to_dict()
    if n_images:
        return wilson_interval(round(values[0] * n_images), n_images).to_dict()
    return {"estimate": values[0], "low": None, "high": None, "n": 1, "method": "one value"}


def table_rows(evals: dict[str, dict[int, dict]], eps_list: list[float], keys=ROWS, paper_eps: float = 0.25,
               dataset: str | None = CIFAR10) -> list[dict]:
    """One row per (key, label) of `keys`, from evals[key] = {seed: evaluation}: clean and robust
    accuracy at each eps (main PGD, all n test images), the strong check at the paper's eps on the
    first n_sub images (main PGD there, strong attack, CW, worst case), D.6's shifted accuracy,
    notes and warnings, and the paper's values on `dataset` as references (None where it has none).
    Keys name the eps as f"{eps:g}": "robust@0.25", "strong@0.25" for CIFAR-10, "robust@3" at 3."""
    return [_table_row(key, label, evals[key], eps_list, paper_eps, dataset) for key, label in keys]


def _table_row(key: str, label: str, seeds: dict[int, dict], eps_list: list[float], paper_eps: float,
               dataset: str | None) -> dict:
    first = next(iter(seeds.values()))
    n, n_sub = first["n"], first["strong"]["n"]
    row = {"key": key, "setting": label, "clean": summarize([e["clean_accuracy"] for e in seeds.values()], n)}
    for eps in eps_list:
        row[f"robust@{eps:g}"] = summarize([_row_at(e["main"], eps)["accuracy"] for e in seeds.values()], n)
    at = f"@{paper_eps:g}"
    sub = [set(range(n_sub)) & set(_row_at(e["main"], paper_eps)["robust_index"]) for e in seeds.values()]
    row["subset" + at] = summarize([len(s) / n_sub for s in sub], n_sub)
    row["strong" + at] = summarize([_row_at(e["strong"], paper_eps)["accuracy"] for e in seeds.values()], n_sub)
    row["cw" + at] = summarize([_row_at(e["cw"], paper_eps)["accuracy"] for e in seeds.values()], n_sub)
    row["worst" + at] = summarize([worst_case(e, paper_eps) for e in seeds.values()], n_sub)
    row["shifted"] = summarize([e.get("shifted_accuracy") for e in seeds.values()], n)
    row["notes"] = sorted({e["label_shift_note"] for e in seeds.values() if e.get("label_shift") is None
                           and "label_shift_note" in e})
    row["warnings"] = sorted({w for e in seeds.values() for w in e["main"]["warnings"] + e["strong"]["warnings"]})
    for metric in ("clean", "robust" + at):
        ref = paper(key, metric, dataset)
        row[f"paper_{metric}"] = ref.to_dict() if ref else None
    return row


def figure3_points(fig3: dict[int, dict], dataset: str | None = CIFAR10) -> list[dict]:
    """Per architecture: transfer rate and accuracy trained on D_det (and on D), over seeds,
    each seed's point, and the paper's (D_det accuracy, transfer) when it has the architecture
    (Figure 3 is CIFAR-10's: none on other data)."""
    archs = {}
    for result in fig3.values():
        for p in result["points"]:
            archs.setdefault(p["arch"], []).append(p)
    out = []
    for arch, points in archs.items():
        out.append({"arch": arch,
                    "transfer": summarize([p["transfer_rate"] for p in points]),
                    "det_accuracy": summarize([p["det_accuracy"] for p in points]),
                    "d_accuracy": summarize([p["d_accuracy"] for p in points]),
                    "seeds": [{"transfer": p["transfer_rate"], "det_accuracy": p["det_accuracy"]} for p in points],
                    "paper": FIGURE3.get(arch) if dataset == CIFAR10 else None})
    return out


def distill_summary(outcomes: Outcomes, evals: dict, extra_stages: dict, stage_results: dict, preset: dict) -> dict:
    """The Distill discussion's numbers: judged claims (at the preset's claim eps), the models'
    rows, Goh's probes and robust linear model, Nakkiran's non-transferable dataset."""
    dataset = paper_dataset(preset)
    leakage = extra_stages.get("leakage", {})
    nt_synth = [r["stats"] for r in by_seed(stage_results, "synth-det-nt").values()]
    linear = [r["linear_model"] for r in leakage.values() if "linear_model" in r]
    discussion = discussion_summary(stage_results)
    claims = judge(outcomes, claims=distill_claims_at(preset["claim_eps"], dataset, outcomes.num_classes)) \
        + discussion.pop("claims")
    for claim in claims:  # each rule with the rival view it rules out
        for part in claim["parts"]:
            part.setdefault("rival", DISTILL_RIVALS.get(claim["id"], ""))
    probes = ("d", "rand", "det", "linear-d", "linear-rand", "linear-det")
    return {
        "claims": claims,
        "discussion": discussion,
        "rows": table_rows(evals, preset["eps"], DISTILL_ROWS, paper_eps_of(preset), dataset),
        "probe": {name: summarize([r[name] for r in leakage.values() if name in r])
                  for name in probes + tuple(f"{p}@y+1" for p in probes)},
        "linear_model": {name: summarize([m[name] for m in linear])
                         for name in ("clean_accuracy", "certified_stable_at_0.25")}
        | {"train_eps": sorted({m["train_eps"] for m in linear})},
        "probe_notes": sorted({n for r in leakage.values() for n in r.get("notes", [])}),
        "nontransferable": {
            "target_success": summarize([s["target_success"] for s in nt_synth]),
            "ensemble_keeps_label": summarize([s["ensemble_keeps_label"] for s in nt_synth]),
            "transfer": summarize([r["transfer_rate"] for r in extra_stages.get("fig3-nt", {}).values()])},
    }


# The discussion's stages (advfeat/discussion/), each judged by its module's judge(s).
DISCUSSION_JUDGES = {
    "squares": lambda r: [squares.judge_squares(r)],
    "wrong-labels": wrong_labels.judge_wrong_labels,
    "fourier-noise": lambda r: [fourier.judge_fourier_noise(r, "robust"), fourier.judge_fourier_noise(r, "gaussian")],
    "filtered": lambda r: [fourier.judge_filtered(r)],
    "fog": lambda r: [fourier.judge_fog(r)],
    "eigenfeatures": lambda r: [eigenfeatures.judge_eigenfeatures(r)],
    "layer-robustness": lambda r: [layer_robustness.judge_layer_robustness(r)],
}


def discussion_summary(stage_results: dict) -> dict:
    """The discussion's judged claims (those whose stages ran) and what its figures draw:
    heat maps and layer ratios averaged over seeds, the first seed's eigenfeature scatter,
    squares' flip rates and fog's accuracies per seed; and style transfer's numbers (not
    judged: its pictures are qualitative) over seeds, with t intervals."""
    claims, stages = [], {}
    for name, judge_of in DISCUSSION_JUDGES.items():
        stages[name] = by_seed(stage_results, name)
        if stages[name]:
            claims += judge_of(stages[name])
    out = {"claims": claims}
    if stages["fourier-noise"]:
        runs = list(stages["fourier-noise"].values())
        out["heat_maps"] = {m: {"u": runs[0]["models"][m]["u"], "v": runs[0]["models"][m]["v"],
                                "map": np.mean([r["models"][m]["map"] for r in runs], 0).tolist(),
                                "clean_error": float(np.mean([r["models"][m]["clean_error"] for r in runs]))}
                            for m in runs[0]["models"]} | {"norm": runs[0]["settings"]["norm"]}
    if stages["layer-robustness"]:
        runs = list(stages["layer-robustness"].values())
        out["layer_ratios"] = {m: {layer: float(np.mean([r["models"][m][layer]["ratio"] for r in runs]))
                                   for layer in runs[0]["models"][m]} for m in runs[0]["models"]}
    if stages["eigenfeatures"]:
        first = stages["eigenfeatures"][min(stages["eigenfeatures"])]
        out["eigen_scatter"] = {k: first[k] for k in ("non_robustness", "test_usefulness", "chosen", "ensemble",
                                                      "containment")} | {"eps": first["settings"]["eps"]}
    style = by_seed(stage_results, "style-transfer")
    if style:  # qualitative: no judge; the numbers beside the pictures, over seeds (t intervals)
        runs = list(style.values())
        out["style"] = {"seeds": len(runs), "models": {
            net: {"style_layers": m["style_layers"], "content_layer": m["content_layer"],
                  "columns": {c: {k: summarize([r["models"][net]["columns"][c][k] for r in runs])
                                  for k in ("style_share", "content_loss")} for c in m["columns"]},
                  "cross": {j: summarize([r["models"][net]["cross"][j] for r in runs]) for j in m["cross"]}}
            for net, m in runs[0]["models"].items()}}
    if stages["squares"]:
        out["squares"] = {s: {m: r[m]["flip_rate"] for m in ("overfit", "early")} | {"linear_radius":
                                                                                   r["linear"]["min_radius"]}
                          for s, r in stages["squares"].items()}
    if stages["fog"]:
        out["fog"] = {m: {k: summarize([r["models"][m][k] for r in stages["fog"].values()])
                          for k in ("clean_accuracy", "fog_accuracy")} for m in ("standard", "robust")}
    if stages["filtered"]:
        out["filtered"] = {k: summarize([r[k]["test_accuracy"] for r in stages["filtered"].values()])
                           for k in ("low", "high")}
    return out


def synth_summary(results: dict) -> dict[str, dict]:
    """Per kind with a synth stage, the mean over seeds of its dataset's statistics: the
    synthesis rate, and targeted success and perturbation norm (D_rand, D_det) or the relative
    feature distance before, after and as stored (D_R, D_NR)."""
    out = {}
    for kind in KINDS:
        stats = [r["stats"] for r in by_seed(results, f"synth-{kind}").values()]
        if not stats:
            continue
        entry = {"image_steps_per_s": _seed_mean(stats, "image_steps_per_s")}
        if "target_success" in stats[0]:
            entry |= {"target_success": _seed_mean(stats, "target_success"),
                      "stored_success": _seed_mean(stats, "stored_success"),
                      "perturbation_norm": _seed_mean(stats, "perturbation_norm", "mean")}
        else:
            entry |= {k: _seed_mean(stats, k, "mean") for k in ("initial_distance", "final_distance",
                                                                "stored_distance")}
        out[kind] = entry
    return out


def _seed_mean(stats: list[dict], key: str, inner: str | None = None) -> float:
    """The mean over seeds of each one's stats[key] (or stats[key][inner], a per-image mean)."""
    return float(np.mean([s[key] if inner is None else s[key][inner] for s in stats]))


def slim_stage(record: dict) -> dict:
    """A stage's record for report.json: what it was, whether reused, how long, how fast."""
    result = record.get("result", {})
    slim = {k: record[k] for k in ("id", "name", "seed", "key", "seconds", "cached") if k in record}
    if result.get("images_per_s"):
        slim["training_images_per_s"] = result["images_per_s"]
    elif "image_steps_per_s" in result.get("stats", {}):
        slim["image_steps_per_s"] = result["stats"]["image_steps_per_s"]
    return slim
