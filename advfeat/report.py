"""The reproduction report: judged claims, every number with its interval beside the paper's
reference, the figures and the timings.

Writes report.md, report.json and figures/ into the reproduction folder. The paper's numbers
(advfeat.paper) are shown as references with their setting and source, never subtracted
from ours: a small net on a CPU is not the paper's ResNet-50.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from advfeat.claims import Outcomes, judge
from advfeat.io import atomic_path, save_figure, write_json
from advfeat.data import CIFAR10_CLASSES
from advfeat.data.synthesized import SHARD_PATTERN, read_shard
from advfeat.paper import D6_REPLICATION, FIGURE3, FIGURE3_SOURCE, PAPER_SETTING, paper
from advfeat.stats import LEVEL, mean_interval, wilson_interval

ROWS = [
    ("standard", "Standard training on D"),
    ("robust", "Adversarial training on D (L2)"),
    ("r", "Standard training on D_R"),
    ("nr", "Standard training on D_NR"),
    ("rand", "Standard training on D_rand"),
    ("det", "Standard training on D_det"),
]
KINDS = ("r", "nr", "rand", "det")
THEORY_FIGURES = ("gaussian_contours.png", "gaussian_alignment.png")


# --------------------------------------------------------------------------- collecting


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
    (main PGD, strong PGD, CW) broke it."""
    rows = [_row_at(ev[k], eps) for k in ("main", "strong", "cw")]
    n = ev["strong"]["n"]
    if any(r is None for r in rows) or n == 0:
        return None
    survivors = set(range(n))
    for r in rows:
        survivors &= set(r["robust_index"])
    return len(survivors) / n


def summarize(values: list[float], n_images: int | None = None) -> dict | None:
    """Mean with its 95% interval: over seeds, or (one seed) Wilson over test images."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    if len(values) >= 2:
        return mean_interval(values).to_dict()
    if n_images:
        return wilson_interval(round(values[0] * n_images), n_images).to_dict()
    return {"estimate": values[0], "low": None, "high": None, "n": 1, "method": "one value"}


def table_rows(evals: dict[str, dict[int, dict]], eps_list: list[float], keys=ROWS) -> list[dict]:
    rows = []
    for key, label in keys:
        seeds = evals[key]
        n = next(iter(seeds.values()))["n"]
        n_sub = next(iter(seeds.values()))["strong"]["n"]
        row = {"key": key, "setting": label, "clean": summarize([e["clean_accuracy"] for e in seeds.values()], n)}
        for eps in eps_list:
            row[f"robust@{eps}"] = summarize([_row_at(e["main"], eps)["accuracy"] for e in seeds.values()], n)
        sub = [set(range(n_sub)) & set(_row_at(e["main"], 0.25)["robust_index"]) for e in seeds.values()]
        row["subset@0.25"] = summarize([len(s) / n_sub for s in sub], n_sub)
        row["strong@0.25"] = summarize([_row_at(e["strong"], 0.25)["accuracy"] for e in seeds.values()], n_sub)
        row["cw@0.25"] = summarize([_row_at(e["cw"], 0.25)["accuracy"] for e in seeds.values()], n_sub)
        row["worst@0.25"] = summarize([worst_case(e, 0.25) for e in seeds.values()], n_sub)
        row["shifted"] = summarize([e.get("shifted_accuracy") for e in seeds.values()], n)
        row["notes"] = sorted({e["label_shift_note"] for e in seeds.values() if e.get("label_shift") is None
                               and "label_shift_note" in e})
        row["warnings"] = sorted({w for e in seeds.values() for w in e["main"]["warnings"] + e["strong"]["warnings"]})
        for metric in ("clean", "robust@0.25"):
            ref = paper(key, metric)
            row[f"paper_{metric}"] = ref.to_dict() if ref else None
        rows.append(row)
    return rows


def figure3_points(fig3: dict[int, dict]) -> list[dict]:
    """Per architecture: transfer rate and accuracy trained on D_det, over seeds."""
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
                    "paper": FIGURE3.get(arch)})
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def draw_inversion_grid(samples: dict, path: Path) -> None:
    """Figure 2a / the journal-club picture: x, the start x0, its inversion by the standard
    model (D_NR) and by the robust model (D_R)."""
    plt = _pyplot()
    n = min(len(samples["r"]["original"]), len(samples["nr"]["original"]), 6)
    fig, axes = plt.subplots(n, 4, figsize=(4 * 1.2, n * 1.25), squeeze=False)
    for i in range(n):
        label = CIFAR10_CLASSES[int(samples["r"]["labels"][i])]
        _show(axes[i, 0], samples["r"]["original"][i], f"x ({label})" if i == 0 else label)
        _show(axes[i, 1], samples["nr"]["start"][i], "start x0 (D_NR)" if i == 0 else None)
        _show(axes[i, 2], samples["nr"]["synthesized"][i], "D_NR: standard" if i == 0 else None)
        _show(axes[i, 3], samples["r"]["synthesized"][i], "D_R: robust" if i == 0 else None)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def draw_targeted_grid(samples: dict, path: Path) -> None:
    """D_rand and D_det samples: the original and its relabelled adversarial version."""
    plt = _pyplot()
    n = min(len(samples["det"]["original"]), 6)
    fig, axes = plt.subplots(2, 2 * n, figsize=(2 * n * 1.0, 2 * 1.3), squeeze=False)
    for row, kind in enumerate(("rand", "det")):
        for i in range(n):
            s = samples[kind]
            _show(axes[row, 2 * i], s["original"][i], "x" if i == 0 else None)
            _show(axes[row, 2 * i + 1], s["synthesized"][i], f"-> {CIFAR10_CLASSES[int(s['labels'][i])]}")
        axes[row, 0].set_ylabel(f"D_{kind}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _mean(cell: dict | None) -> float:
    return float("nan") if cell is None else cell["estimate"]


def _errors(cells: list[dict | None]) -> np.ndarray:
    """Matplotlib's asymmetric error bars from interval cells (zero where there is none)."""
    lows = [0 if c is None or c["low"] is None else c["estimate"] - c["low"] for c in cells]
    highs = [0 if c is None or c["high"] is None else c["high"] - c["estimate"] for c in cells]
    return 100 * np.array([lows, highs])


def draw_bars(rows: list[dict], path: Path, claim_eps: float = 0.25) -> None:
    """Figure 2b: clean and robust (eps 0.25, and the claims' eps when another) accuracy of the
    models trained on D, D_R, D_NR, with 95% intervals; the paper's ResNet-50 values as black
    ticks (a reference)."""
    plt = _pyplot()
    keys = ["standard", "robust", "r", "nr"]
    chosen = [r for r in rows if r["key"] in keys]
    at = np.arange(len(chosen))
    metrics = [("clean", "clean (ours)"), ("robust@0.25", "robust eps=0.25 (ours)")]
    if claim_eps != 0.25:
        metrics.append((f"robust@{claim_eps:g}", f"robust eps={claim_eps:g} (ours)"))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for j, (metric, label) in enumerate(metrics):
        dx = (j - (len(metrics) - 1) / 2) * width
        cells = [r.get(metric) for r in chosen]
        ax.bar(at + dx, [100 * _mean(c) for c in cells], width, yerr=_errors(cells), capsize=3, label=label)
        for i, r in enumerate(chosen):
            ref = r.get(f"paper_{metric}")
            if ref is not None:
                ax.plot([i + dx - width * 0.45, i + dx + width * 0.45], [100 * ref["value"]] * 2, color="black",
                        lw=1.5)
    ax.plot([], [], color="black", lw=1.5, label="paper (ResNet-50)")
    ax.set_xticks(at, ["D (std)", "D (adv)", "D_R", "D_NR"])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def draw_transfer(points: list[dict], correlation: dict | None, path: Path,
                  nontransferable: list | None = None) -> None:
    """Figure 3 with the paper's axes: x = test accuracy trained on D_det, y = transfer success
    rate; every (architecture, seed) point, the architectures' means, and a trend line; with
    --extra distill, Nakkiran's non-transferable D_det too (the authors put it near (0, 0))."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    if nontransferable:
        ax.scatter([100 * p["det_accuracy"] for p in nontransferable],
                   [100 * (p["transfer_rate"] or 0) for p in nontransferable], marker="x", color="black",
                   label="non-transferable D_det")
    xs, ys = [], []
    for i, p in enumerate(points):
        color = f"C{i}"
        seeds = [s for s in p["seeds"] if s["transfer"] is not None]
        ax.scatter([100 * s["det_accuracy"] for s in seeds], [100 * s["transfer"] for s in seeds], color=color,
                   alpha=0.35, s=14)
        xs += [100 * s["det_accuracy"] for s in seeds]
        ys += [100 * s["transfer"] for s in seeds]
        if p["transfer"] is not None:
            x, y = 100 * _mean(p["det_accuracy"]), 100 * _mean(p["transfer"])
            ax.scatter([x], [y], color=color, s=40, label=p["arch"])
    if len(xs) >= 2 and np.ptp(xs) > 0:
        slope, intercept = np.polyfit(xs, ys, 1)
        grid = np.linspace(min(xs), max(xs), 10)
        label = "trend" + (f" (r = {correlation['estimate']:.2f})" if correlation else "")
        ax.plot(grid, slope * grid + intercept, ":", color="gray", label=label)
    ax.set_xlabel("Test accuracy (%; trained on D_{y+1})")
    ax.set_ylabel("Transfer success rate (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------- markdown


def _attack_name(spec: dict) -> str:
    if spec["name"].startswith("autoattack"):
        return (f"AutoAttack (APGD-CE, then APGD-T over {spec['target_classes']} target classes, "
                f"{spec['steps']} iterations each)")
    return f"a stronger PGD ({spec['steps']} steps x {spec['restarts']} restarts)"


def cell(c: dict | None) -> str:
    """'38.0 [35.1, 40.9]': an accuracy's mean (%) with its 95% interval, clipped to [0, 100]
    (a t interval is symmetric and can cross the bounds an accuracy cannot)."""
    if c is None:
        return "–"
    if c.get("low") is None:
        return f"{100 * c['estimate']:.1f}"
    low, high = max(c["low"], 0.0), min(c["high"], 1.0)
    return f"{100 * c['estimate']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def reference_cell(ref: dict | None) -> str:
    return "–" if ref is None else f"{100 * ref['value']:.1f}"


def _interval_text(interval: dict | None, percent: bool = True) -> str:
    """An effect with its interval: points of accuracy, or a correlation."""
    if interval is None:
        return "–"
    if not percent:
        return f"r = {interval['estimate']:.2f} [{interval['low']:.2f}, {interval['high']:.2f}]"
    return f"{100 * interval['estimate']:+.1f} pts [{100 * interval['low']:+.1f}, {100 * interval['high']:+.1f}]"


def _claims_section(claims: list[dict], seeds: int, n_test: int) -> list[str]:
    how = (f"mean over {seeds} seeds with Student's t interval" if seeds >= 2 else
           f"one seed: Wilson interval over the {n_test} test images for an accuracy, the paired normal interval "
           f"of per-image differences for a difference of two models")
    return ["## The paper's claims, judged", "",
            f"Each claim is one or more effects with a {round(LEVEL * 100)}% interval ({how}; Fisher's z interval for "
            "a correlation). **Rule:** a part *holds* when its whole interval lies on the claimed side of its margin, "
            "*does not hold* when the whole interval lies on the other side, and is *inconclusive* otherwise; a claim "
            "holds when all its parts hold and fails when any part fails. The margins were fixed before any run "
            "(advfeat/claims.py): 'far above' is 10 points, 'well' or 'clearly above' 5 points.", "",
            *_claims_table(claims, "the paper (reference, its setting)")]


def _claims_table(claims: list[dict], reference: str) -> list[str]:
    lines = [f"| claim | {reference} | effect: ours [95% interval] | rule | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        for i, part in enumerate(c["parts"]):
            statement, paper_text = (c["statement"], c["paper"]) if i == 0 else ("", "")
            verdict = f"**{c['verdict']}**" if i == 0 else ""
            if len(c["parts"]) > 1:
                verdict += f" (this part: {part['verdict']})"
            effect = _interval_text(part["interval"], percent=not part["rule"].startswith("correlation"))
            lines.append(f"| {statement} | {paper_text} | {effect} | {part['rule']} | {verdict} |")
    return lines


def render_markdown(results: dict, rows: list[dict], claims: list[dict], fig3: list[dict], correlation,
                    synth: dict, figures: dict[str, str], distill: dict | None = None) -> str:
    preset = results["preset"]
    eps_list = preset["eps"]
    seeds = preset["seeds"]
    n_test = preset["test_subset"] or 10000
    lines = [f"# advfeat reproduction: preset `{preset['name']}`", "",
             f"{preset['description'][:1].upper()}{preset['description'][1:]}", "",
             f"Device: {results['device']} (synthesis workers: {results['gpus']}). Data: `{results['data']['path']}` "
             f"(digest {str(results['data']['digest'])[:12]}), {preset['subset'] or 'all 50,000'} training images "
             f"drawn per seed, {n_test} test images shared by every seed. Model: {preset['arch']}. Seeds: {seeds}. "
             f"{_time_text(results)}", "",
             "Where this preset departs from the paper:", ""]
    lines += [f"- {d}" for d in preset["deviations"]] + [""]
    lines += _claims_section(claims, seeds, n_test) + [""]
    lines += ["## Accuracy on the real CIFAR-10 test set (%)", "",
              f"Ours: mean [95% interval] over {seeds} seed(s). Robust accuracy is under L2 PGD "
              f"({preset['attack']['steps']} steps). The paper's column is a reference: {PAPER_SETTING}; sources in "
              "report.json.", "",
              "| setting | clean | " + " | ".join(f"robust eps={e}" for e in eps_list) + " | paper: clean | "
              "paper: robust eps=0.25 |", "|" + "---|" * (3 + len(eps_list) + 1)]
    for r in rows:
        lines.append(f"| {r['setting']} | {cell(r['clean'])} | " + " | ".join(cell(r[f'robust@{e}']) for e in eps_list)
                     + f" | {reference_cell(r['paper_clean'])} | {reference_cell(r['paper_robust@0.25'])} |")
    strong = _attack_name(preset["strong_attack"])
    lines += ["", f"Checking the main attack at eps 0.25 on the first {preset['strong_subset']} (shuffled) test "
              f"images: the main PGD on them, {strong}, Carlini-Wagner L2, and the per-image worst case (an image "
              "is robust only if all three failed on it). A worst case far below the main PGD would mean the main "
              "attack is too weak.", "",
              f"| setting | main PGD | {strong.split(' (')[0]} | CW-L2 | worst case |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {cell(r['subset@0.25'])} | {cell(r['strong@0.25'])} | {cell(r['cw@0.25'])} "
                     f"| {cell(r['worst@0.25'])} |")
    warnings = [f"- {r['setting']}: {w}" for r in rows for w in r["warnings"]]
    if warnings:
        lines += ["", "Evaluation warnings:", *warnings]
    det = next(r for r in rows if r["key"] == "det")
    lines += ["", "## Appendix D.6: what the model trained on D_det learned", "",
              "D_det's images of class y carry non-robust features of y+1 and are labelled y+1, while their robust "
              "features still say y. On the real test set, accuracy on the true labels y measures the non-robust "
              "features learned; accuracy on the labels y+1 (the test set relabelled like D_det) measures the robust "
              "features learned with D_det's shifted labels.", "",
              "| test labels | ours | reference |", "|---|---|---|",
              *[f"| {name} | {cell(det[key])} | {100 * D6_REPLICATION[ref].value:.1f} ({D6_REPLICATION[ref].source}) |"
                for name, key, ref in (("true y", "clean", "true"), ("y+1", "shifted", "shifted"))]]
    lines += [f"- {note}: D.6 skipped" for r in rows for note in r["notes"] if r["key"] == "det"]
    lines += ["", "## The synthesized datasets", "", "Means over seeds.", "",
              "| dataset | quality | image-steps/s |", "|---|---|---|"]
    for kind, st in synth.items():
        if "target_success" in st:
            quality = (f"target success {100 * st['target_success']:.1f}% (stored {100 * st['stored_success']:.1f}%), "
                       f"mean perturbation {st['perturbation_norm']:.3f}")
        else:
            quality = (f"relative feature distance {st['initial_distance']:.3f} -> {st['final_distance']:.3f} "
                       f"(stored {st['stored_distance']:.3f})")
        lines.append(f"| D_{kind} | {quality} | {st['image_steps_per_s']:.0f} |")
    lines += ["", f"![inversions]({figures['inversion']})", "",
              "Seed 0. Columns: x, the start image x0, x0 optimized to match x's representation under the standard "
              "model (D_NR) and under the robust model (D_R).", "", f"![targeted]({figures['targeted']})", "",
              "## Figure 2b", "", f"![bars]({figures['bars']})", "",
              "## Figure 3: transferability vs learnability", "",
              "Transfer success rate: the source model (the standard model of the same seed) crafts targeted examples "
              f"toward y+1 on the first {preset['transfer_images']} shuffled test images with the D_det attack; among "
              "those that fool the source, the share that a model of the architecture trained on D (another seed) also "
              "classifies as y+1. Learnability: the test accuracy of the architecture trained on D_det.", "",
              "| architecture | transfer success rate | test acc. trained on D_det | trained on D | paper (D_det acc., "
              "transfer) |", "|---|---|---|---|---|"]
    for p in fig3:
        ref = "–" if p["paper"] is None else f"{100 * p['paper'][0]:.1f}, {100 * p['paper'][1]:.1f}"
        lines.append(f"| {p['arch']} | {cell(p['transfer'])} | {cell(p['det_accuracy'])} | {cell(p['d_accuracy'])} | "
                     f"{ref} |")
    if correlation:
        lines += ["", f"Correlation over the (architecture, seed) points: r = {correlation['estimate']:.2f} "
                      f"[{correlation['low']:.2f}, {correlation['high']:.2f}] ({correlation['method']})."]
    lines += ["", f"Paper values: {FIGURE3_SOURCE.source}.", "", f"![transfer]({figures['transfer']})", ""]
    if distill:
        lines += _distill_section(distill) + [""]
    lines += ["## Section 4: the Gaussian model", "", results["theory"]["headline"], ""]
    lines += [f"![{name}]({figures[name]})" for name in THEORY_FIGURES if name in figures]
    lines += ["", "## Timings", "", *_stage_rows(results["stages"]), "",
              f"Total wall-clock time of this run: {results['total_seconds']:.1f} s (reused stages cost nothing "
              f"now; their seconds are those of the run that made them).", "",
              "## Preset", "", "```json", json.dumps(preset, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def _slim(record: dict) -> dict:
    """A stage's record for report.json: what it was, when reused, how long, how fast."""
    result = record.get("result", {})
    slim = {k: record[k] for k in ("id", "name", "seed", "key", "seconds", "cached") if k in record}
    if result.get("images_per_s"):
        slim["training_images_per_s"] = result["images_per_s"]
    elif "image_steps_per_s" in result.get("stats", {}):
        slim["image_steps_per_s"] = result["stats"]["image_steps_per_s"]
    return slim


def _time_text(results: dict) -> str:
    """This run's wall clock, and what the stages it reused cost the runs that made them (a
    report over a folder that an earlier run filled would otherwise look cheaper than it was)."""
    stages = results["stages"]
    text = f"Wall-clock time of this run: {results['total_seconds']:.0f} s."
    reused = [s["seconds"] for s in stages if s.get("cached")]
    if reused:
        text += (f" {len(reused)} of its {len(stages)} stages were reused from earlier runs, which spent "
                 f"{sum(reused):.0f} s on them; all stages together: {sum(s['seconds'] for s in stages):.0f} s.")
    return text


def _stage_rows(stages: list[dict]) -> list[str]:
    lines = ["| stage | reused | seconds | throughput |", "|---|---|---|---|"]
    for s in map(_slim, stages):
        speed = ""
        if "training_images_per_s" in s:
            speed = f"{s['training_images_per_s']:.0f} training images/s"
        elif "image_steps_per_s" in s:
            speed = f"{s['image_steps_per_s']:.0f} image-steps/s"
        lines.append(f"| {s['id']} | {'yes' if s['cached'] else 'no'} | {s['seconds']:.1f} | {speed} |")
    return lines


DISTILL_ROWS = [
    ("det-nt", "Standard training on non-transferable D_det (Nakkiran)"),
    ("rand-linf", "Standard training on L-inf D_rand"),
    ("det-linf", "Standard training on L-inf D_det"),
    ("r-noise", "Standard training on D_R inverted from noise"),
]


def distill_summary(outcomes: Outcomes, evals: dict, extra_stages: dict, stage_results: dict, eps_list,
                    claim_eps: float) -> dict:
    """The Distill discussion's numbers: judged claims, the models' rows, the probe, the datasets."""
    from advfeat.claims import distill_claims_at

    leakage = extra_stages.get("leakage", {})
    nt_synth = [r["stats"] for r in by_seed(stage_results, "synth-det-nt").values()]
    return {
        "claims": judge(outcomes, claims=distill_claims_at(claim_eps)),
        "rows": table_rows(evals, eps_list, DISTILL_ROWS),
        "probe": {name: summarize([r[name] for r in leakage.values() if name in r])
                  for name in ("d", "rand", "det", "linear-d", "linear-rand", "linear-det")},
        "linear_model": {name: summarize([r["linear_model"][name] for r in leakage.values() if "linear_model" in r])
                         for name in ("clean_accuracy", "certified_stable_at_0.25")}
        | {"train_eps": sorted({r["linear_model"]["train_eps"] for r in leakage.values() if "linear_model" in r})},
        "probe_notes": sorted({n for r in leakage.values() for n in r.get("notes", [])}),
        "nontransferable": {
            "target_success": summarize([s["target_success"] for s in nt_synth]),
            "ensemble_keeps_label": summarize([s["ensemble_keeps_label"] for s in nt_synth]),
            "transfer": summarize([r["transfer_rate"] for r in extra_stages.get("fig3-nt", {}).values()])},
    }


def _distill_section(distill: dict) -> list[str]:
    lines = ["## The Distill discussion (--extra distill)", "",
             "The comments on the paper tested its claims; each experiment here states its claim, the number from the "
             "Distill article as a reference (its setting differs: see the reference column), and ours with its "
             "interval, judged by the same rule as the main claims.", ""]
    lines += _claims_table(distill["claims"], "the Distill article (reference, its setting)")
    probe, nt = distill["probe"], distill["nontransferable"]
    linear = distill["linear_model"]
    train_eps = " or ".join(f"{e:g}" for e in linear["train_eps"]) or "–"
    lines += ["", "Goh's robust-feature probe: a linear classifier on robust features, fit on each training set, "
              "tested on the real test set's true labels. Two sets of robust features: the penultimate layer of the "
              "(adversarially trained) robust network, and, as Goh did, the 10 logits of a robust linear model on the "
              f"pixels of D, trained against L2 perturbations of size {train_eps} (per seed, the smallest of 0.25, "
              "0.5, 1, 2 that meets Goh's specification on D). Its robustness is certified in closed form: its "
              f"prediction provably holds within L2 0.25 on {cell(linear['certified_stable_at_0.25'])}% of test "
              f"images (Goh's specification: 80%); its own test accuracy is {cell(linear['clean_accuracy'])}%.", "",
              "| probe trained on | on the robust network's features | on the robust linear model's features |",
              "|---|---|---|"]
    for name, label in (("d", "D (the real training images)"), ("rand", "D_rand"), ("det", "D_det")):
        lines.append(f"| {label} | {cell(probe[name])} | {cell(probe['linear-' + name])} |")
    lines += [f"- {note}" for note in distill["probe_notes"]]
    lines += ["", "Nakkiran's non-transferable D_det: targeted toward y+1 for the source model while an ensemble of "
              f"independently trained models keeps predicting y: target success {cell(nt['target_success'])}%, the "
              f"ensemble keeps the true label on {cell(nt['ensemble_keeps_label'])}% of them; transfer success to a "
              f"model trained on D: {cell(nt['transfer'])}% (Figure 3's x marker).", "",
              "| setting | clean | robust eps=0.25 | robust eps=0.5 | accuracy on y+1 (D.6) |", "|---|---|---|---|---|"]
    for r in distill["rows"]:
        lines.append(f"| {r['setting']} | {cell(r['clean'])} | {cell(r['robust@0.25'])} | {cell(r.get('robust@0.5'))} "
                     f"| {cell(r['shifted'])} |")
    return lines


def sample_images(dataset_folders: dict[str, Path], train, n: int = 8) -> dict:
    """n examples of each dataset (folder per kind), spread over it (and so over the classes: it
    is stored class by class), beside their originals in `train`, the split it came from."""
    samples = {}
    for kind, folder in dataset_folders.items():
        first = read_shard(folder / SHARD_PATTERN.format(0))
        if first is None:
            continue
        shard_size = len(first["labels"])
        picks = np.linspace(0, len(train) - 1, n).astype(int)
        shards = {s: read_shard(folder / SHARD_PATTERN.format(s)) for s in set(picks // shard_size)}
        # Per-image arrays only (a shard also holds its timing, one value).
        rows = [{k: v[p % shard_size] for k, v in shards[p // shard_size].items() if len(v) > 1} for p in picks]
        images = np.stack([r["images"] for r in rows])
        entry = {"synthesized": images.astype(np.float32) / (255 if images.dtype == np.uint8 else 1),
                 "original": train.images[[r["position"] for r in rows]].astype(np.float32) / 255,
                 "labels": np.array([r["labels"] for r in rows])}
        if "start_index" in rows[0]:
            entry["start"] = train.images[[r["start_index"] for r in rows]].astype(np.float32) / 255
        samples[kind] = entry
    return samples


def synth_summary(results: dict) -> dict:
    """Per kind, the mean over seeds of each dataset's quality statistics."""
    out = {}
    for kind in KINDS:
        stats = [r["stats"] for r in by_seed(results, f"synth-{kind}").values()]
        if not stats:
            continue
        mean = lambda f: float(np.mean([f(s) for s in stats]))  # noqa: E731
        entry = {"image_steps_per_s": mean(lambda s: s["image_steps_per_s"])}
        if "target_success" in stats[0]:
            entry |= {"target_success": mean(lambda s: s["target_success"]),
                      "stored_success": mean(lambda s: s["stored_success"]),
                      "perturbation_norm": mean(lambda s: s["perturbation_norm"]["mean"])}
        else:
            entry |= {k: mean(lambda s, k=k: s[k]["mean"]) for k in ("initial_distance", "final_distance",
                                                                     "stored_distance")}
        out[kind] = entry
    return out


def write_report(out: Path, results: dict, samples: dict) -> dict:
    """report.md, report.json and figures/ from the stages' results."""
    stage_results = results["results"]
    names = {stage_id.partition("@")[0] for stage_id in stage_results}
    evals = {name[len("eval-"):]: by_seed(stage_results, name) for name in sorted(names) if name.startswith("eval-")}
    fig3_raw = by_seed(stage_results, "fig3")
    extra_stages = {name: by_seed(stage_results, name) for name in ("leakage", "fig3-nt") if name in names}
    outcomes = Outcomes(evals, fig3_raw, extra_stages)
    claim_eps = results["preset"]["claim_eps"]
    claims = judge(outcomes, claim_eps)
    rows = table_rows(evals, results["preset"]["eps"])
    fig3 = figure3_points(fig3_raw)
    distill = distill_summary(outcomes, evals, extra_stages, stage_results, results["preset"]["eps"], claim_eps) \
        if "leakage" in names else None
    correlation = outcomes.transfer_correlation()
    correlation = correlation.to_dict() if correlation else None
    synth = synth_summary(stage_results)
    results = results | {"theory": stage_results.get("theory", {"headline": ""})}
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = {"inversion": figures_dir / "inversion.png", "targeted": figures_dir / "targeted.png",
             "bars": figures_dir / "figure2b.png", "transfer": figures_dir / "figure3.png"}
    draw_inversion_grid(samples, paths["inversion"])
    draw_targeted_grid(samples, paths["targeted"])
    draw_bars(rows, paths["bars"], claim_eps)
    draw_transfer(fig3, correlation, paths["transfer"],
                  list(extra_stages.get("fig3-nt", {}).values()) if distill else None)
    # The theory figures are copied beside the others: report.md and figures/ then make a
    # self-contained folder without the (large) stages/.
    for name in THEORY_FIGURES:
        source = Path(results.get("theory_dir", "")) / name
        if results.get("theory_dir") and source.is_file():
            paths[name] = figures_dir / name
            with atomic_path(paths[name]) as tmp:
                shutil.copyfile(source, tmp)
    figures = {k: os.path.relpath(v, out) for k, v in paths.items()}
    # The stages' own results (per-image outcomes included) stay in their stage.json files.
    report = {"claims": claims, "distill_claims": distill["claims"] if distill else [], "distill": distill,
              "rows": rows, "figure3": fig3, "figure3_correlation": correlation,
              "synthesized": synth, **{k: v for k, v in results.items() if k not in ("results", "stages")},
              "stages": [_slim(record) for record in results["stages"]], "figures": figures}
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_markdown(results, rows, claims, fig3, correlation, synth, figures, distill))
    write_json(out / "report.json", report)
    return report
