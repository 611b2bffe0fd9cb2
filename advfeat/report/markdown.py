"""report.md: one function per section, each returning its lines (no blank line at either
end); `render` joins the sections with one blank line. A new section is a new function and one
entry in `render`'s list; a new column is a header cell and a row cell in its section.

Accuracies are collect.py's cells (fractions with a 95% interval), printed in percent; the
paper's numbers are references printed beside ours, never subtracted from them.
"""

from __future__ import annotations

import json

from advfeat.paper import CIFAR10, D6_REPLICATION, FIGURE3_SOURCE, NO_REFERENCE, SETTINGS, paper_dataset
from advfeat.report.collect import Numbers, paper_eps_of, slim_stage
from advfeat.report.figures import THEORY_FIGURES
from advfeat.stats import LEVEL

MISSING = NO_REFERENCE  # a number not measured, or a reference the source does not give


def render(results: dict, numbers: Numbers, figures: dict[str, str]) -> str:
    """The whole report.md. results: reproduce's record (preset, device, data, stages,
    total_seconds); figures: {name: path relative to report.md}."""
    preset, rows = results["preset"], numbers.rows
    sections = [header(results),
                claims_section(numbers.claims, numbers.holm, results),
                rules_section(numbers.claims, paper_eps_of(preset)),
                accuracy_table(rows, preset),
                strong_check(rows, preset["strong_attack"], preset["strong_subset"], paper_eps_of(preset)),
                d6_section(rows, paper_dataset(preset) == CIFAR10),
                synthesized_section(numbers.synthesized),
                samples_section(figures, (results.get("seeds") or [0])[0]),
                figure2b_section(figures),
                figure3_section(numbers, preset["transfer_images"], figures)]
    if numbers.distill:
        sections.append(distill_section(numbers.distill, figures, preset["eps"]))
    sections += [theory_section(numbers.theory, figures), timings_section(results), preset_section(preset)]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def n_test_images(preset: dict) -> int:
    """How many test images every model is judged on (a test_subset of None: all 10,000)."""
    return preset["test_subset"] or 10000


# --------------------------------------------------------------------------- cells


def cell(c: dict | None) -> str:
    """'38.0 [35.1, 40.9]': an accuracy's mean (%) with its 95% interval, clipped to [0, 100]
    (a t interval is symmetric and can cross the bounds an accuracy cannot); the mean alone
    when there is no interval; MISSING for None."""
    if c is None:
        return MISSING
    if c.get("low") is None:
        return f"{100 * c['estimate']:.1f}"
    low, high = max(c["low"], 0.0), min(c["high"], 1.0)
    return f"{100 * c['estimate']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def reference_cell(ref: dict | None) -> str:
    """A paper value {"value": fraction, ...} in percent; MISSING where the paper gives none."""
    return MISSING if ref is None else f"{100 * ref['value']:.1f}"


def effect_text(interval: dict | None, percent: bool = True) -> str:
    """An effect with its interval: a difference in points of accuracy, or a correlation."""
    if interval is None:
        return MISSING
    if not percent:
        return f"r = {interval['estimate']:.2f} [{interval['low']:.2f}, {interval['high']:.2f}]"
    return f"{100 * interval['estimate']:+.1f} pts [{100 * interval['low']:+.1f}, {100 * interval['high']:+.1f}]"


def attack_name(spec: dict) -> str:
    """The strong check's attack in words, from its AttackSpec as a dict."""
    if spec["name"].startswith("autoattack"):
        return (f"AutoAttack (APGD-CE, then APGD-T over {spec['target_classes']} target classes, "
                f"{spec['steps']} iterations each)")
    return f"a stronger PGD ({spec['steps']} steps x {spec['restarts']} restarts)"


# --------------------------------------------------------------------------- sections


def header(results: dict) -> list[str]:
    """Title, the preset's description, device, data (and its form), seeds, test images, and the
    preset's deviations (the data's form among them when it is lossy)."""
    preset, data = results["preset"], results["data"]
    seeds = results.get("seeds") or list(range(preset["seeds"]))
    deviations = list(preset["deviations"]) + ([LOSSY_DEVIATION] if data.get("lossy") else [])
    all_train = f"all {data.get('train_images', 50000):,}"  # older reports: CIFAR-10's 50,000
    return [f"# advfeat reproduction: preset `{preset['name']}`", "",
            f"{preset['description'][:1].upper()}{preset['description'][1:]}", "",
            f"Device: {results['device']} (synthesis workers: {results['gpus']}). Data: `{data['path']}` "
            f"({data_form(data)}; digest {str(data['digest'])[:12]}), {preset['subset'] or all_train} training "
            f"images drawn per seed; {test_images_text(results)}, shared by every seed. Model: {preset['arch']}. "
            f"Seeds: {', '.join(map(str, seeds))}. {time_text(results)}", "",
            "Where this run departs from the paper:", "",
            *[f"- {d}" for d in deviations]]


LOSSY_DEVIATION = ("The data is CIFAR-10 re-encoded as lossy JPEG, not the original lossless release: JPEG removes "
                   "high-frequency content, the very kind of non-robust feature in question, so D_NR, D_rand and "
                   "D_det may carry less non-robust signal than they would on the original images.")


def data_form(data: dict) -> str:
    """The data's form as read from the input: the reader, and whether its images are lossy."""
    if data.get("lossy") is None:
        return f"format {data.get('format') or 'not recorded'}"
    return f"{data.get('format')}, {'lossy JPEG' if data['lossy'] else 'lossless'}"


def time_text(results: dict) -> str:
    """This run's wall clock, and what the stages it reused cost the runs that made them (a
    report over a folder that an earlier run filled would otherwise look cheaper than it was)."""
    stages = results["stages"]
    text = f"Wall-clock time of this run: {results['total_seconds']:.0f} s."
    reused = [s["seconds"] for s in stages if s.get("cached")]
    if reused:
        text += (f" {len(reused)} of its {len(stages)} stages were reused from earlier runs, which spent "
                 f"{sum(reused):.0f} s on them; all stages together: {sum(s['seconds'] for s in stages):.0f} s.")
    return text


def claims_section(claims: list[dict], holm: dict, results: dict) -> list[str]:
    """The claims' verdicts at the paper's eps (primary; CIFAR-10's 0.25) and the preset's own eps,
    how the intervals were made, the rule, the precondition, and Holm's family statement."""
    preset = results["preset"]
    paper_eps = f"{paper_eps_of(preset):g}"
    eps = list(claims[0]["verdicts"]) if claims else [paper_eps]
    seeds = results.get("seeds") or list(range(preset["seeds"]))
    papers, presets = "the paper's", "this preset's; a deviation"
    columns = [f"eps {e} ({papers if e == paper_eps else presets})" for e in eps]
    lines = ["## The paper's claims, judged", "",
             f"Judged on {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) and {test_images_text(results)}. Each "
             f"part is an effect with a {round(LEVEL * 100)}% interval from a two-level bootstrap over the seeds and "
             "the test images (paired: every model shares the draws), with Student's t over the seeds beside it. "
             "**Rule:** a part *holds* when its whole interval lies on the claimed side of its margin, *does not "
             "hold* when the whole interval lies on the other side, and is *inconclusive* otherwise; a claim holds "
             "when all its counted parts hold. Each rule is one the rival explanation named beside it would fail. "
             "Figure 3 is judged by Spearman's rank correlation over the architectures' means with its exact "
             "permutation p (holds at p <= 0.05), the least-squares slope and a leave-one-out check. The rules and "
             "margins live in advfeat/claims.py; the paper's numbers are references for its ResNet-50, not targets.",
             "", "| claim | the paper (reference, its setting) | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for c in claims:
        if c["counted"]:
            lines.append(f"| {c['statement']} | {c['paper']} | "
                         + " | ".join(f"**{c['verdicts'][e]}**" for e in eps) + " |")
    for c in claims:
        if not c["counted"]:
            for part in c["parts"]:
                if part["interval"]:
                    lines += ["", f"Precondition, not a claim of the paper: {c['statement']}. "
                                  f"{part['part']}: {judged_effect(part, paper_eps_of(preset))}, "
                                  f"{part['verdict']}."]
    for e in eps:
        if e in holm:
            lines += ["", f"Multiplicity: {holm[e]['statement']}"]
    return lines


def test_images_text(results: dict) -> str:
    """Which test images judged the claims: how many, and which earlier looks they were held out from."""
    images = results.get("test_images")
    if not images:
        return f"{n_test_images(results['preset'])} test images"
    looks = images.get("looked_at") or ([images["tuning"]] if images.get("tuning") else [])  # older reports
    if looks:
        drawn = " and then ".join(f"{n} drawn with seed {seed}" for n, seed in looks)
        return (f"{images['n']} test images no earlier run looked at (drawn from the test images left after the "
                f"earlier looks: {drawn}, the first being the images the preset's settings were chosen on)")
    return f"{images['n']} test images"


def rules_section(claims: list[dict], paper_eps: float = 0.25) -> list[str]:
    """Every part: its effect, both intervals, the rule, the rival it rules out, the verdict; the
    paper's value beside, measured at paper_eps."""
    lines = ["### Each rule", "",
             "| claim | part | ours [95% bootstrap interval] | t interval over seeds | rule | rival explanation it "
             "rules out | verdict |", "|---|---|---|---|---|---|---|"]
    for c in claims:
        for part in c["parts"]:
            t = part.get("t_interval")
            t_text = f"[{_effect_number(part, t['low'])}, {_effect_number(part, t['high'])}]" if t else MISSING
            note = f" ({part['note']})" if part.get("note") else ""
            lines.append(f"| {c['id']} | {part['part']}{note} | {judged_effect(part, paper_eps)} | {t_text} | "
                         f"{rule_text(part)} | "
                         f"{part['rival']} | {part['verdict']} |")
    return lines


def _is_points(part: dict) -> bool:
    """Whether a part's effect is a difference of accuracies (printed in points)."""
    return not (part["claim"] == "transfer-tracks-learnability" or "share" in part["part"])


def _effect_number(part: dict, value: float) -> str:
    if "share" in part["part"]:
        return f"{100 * value:.0f}%"
    return f"{100 * value:+.1f}" if _is_points(part) else f"{value:.2f}"


def judged_effect(part: dict, paper_eps: float = 0.25) -> str:
    """A judged part's effect with its interval, in its unit (points, a share, a rho or slope), and
    the paper's value (measured at paper_eps) where it has one."""
    if part["effect"] is None:
        return MISSING
    text = _effect_number(part, part["effect"]) + (" pts" if _is_points(part) else "")
    interval = part.get("interval")
    if interval and interval.get("low") is not None and "rho" not in part["part"]:
        text += f" [{_effect_number(part, interval['low'])}, {_effect_number(part, interval['high'])}]"
    if part.get("p") is not None and "Spearman" in part["part"]:
        text += f" (exact p = {part['p']:.4f})"
    if part.get("reference") is not None:
        text += f"; the paper: {_effect_number(part, part['reference'])} (ResNet-50, eps {paper_eps:g})"
    return text


def rule_text(part: dict) -> str:
    """The rule in symbols: the effect's side of its margin (points, a p-value, or a band)."""
    if part["verdict"].startswith("shown"):
        return "shown, no rule"
    if part["direction"] == "within":
        return "inside the trend's 95% prediction interval"
    if "Spearman" in part["part"]:
        return "exact p <= 0.05"
    side = ">" if part["direction"] == "above" else "<"
    return f"{side} {100 * part['margin']:g} pts" if _is_points(part) else f"{side} {part['margin']:g}"


def claims_table(claims: list[dict], reference: str) -> list[str]:
    """One line per part of each judged claim: the statement, reference and verdict on its first."""
    lines = [f"| claim | {reference} | effect: ours [95% interval] | rule | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        for i, part in enumerate(c["parts"]):
            statement, paper_text = (c["statement"], c["paper"]) if i == 0 else ("", "")
            verdict = f"**{c['verdict']}**" if i == 0 else ""
            if len(c["parts"]) > 1:
                verdict += f" (this part: {part['verdict']})"
            effect = effect_text(part["interval"], percent=not part["rule"].startswith("correlation"))
            lines.append(f"| {statement} | {paper_text} | {effect} | {part['rule']} | {verdict} |")
    return lines


def accuracy_table(rows: list[dict], preset: dict) -> list[str]:
    """Clean and robust accuracy (main PGD, each eps) per model, the paper's (on the preset's data,
    at its eps) beside."""
    eps_list, paper_eps, dataset = preset["eps"], paper_eps_of(preset), paper_dataset(preset)
    setting = SETTINGS.get(dataset, f"{MISSING} (the paper gives none for this data)")
    title = f"## Accuracy on the real {dataset} test set (%)" if dataset else "## Accuracy on the real test set (%)"
    lines = [title, "",
             f"Ours: mean [95% interval] over {preset['seeds']} seed(s). Robust accuracy is under L2 PGD "
             f"({preset['attack']['steps']} steps). The paper's column is a reference: {setting}; sources in "
             "report.json.", "",
             "| setting | clean | " + " | ".join(f"robust eps={e:g}" for e in eps_list) + " | paper: clean | "
             f"paper: robust eps={paper_eps:g} |", "|" + "---|" * (3 + len(eps_list) + 1)]
    for r in rows:
        lines.append(f"| {r['setting']} | {cell(r['clean'])} | "
                     + " | ".join(cell(r[f'robust@{e:g}']) for e in eps_list)
                     + f" | {reference_cell(r['paper_clean'])} | {reference_cell(r[f'paper_robust@{paper_eps:g}'])} |")
    return lines


def strong_check(rows: list[dict], strong_attack: dict, subset: int, paper_eps: float = 0.25) -> list[str]:
    """The main attack checked at the paper's eps against the strong attack, CW and their worst
    case, and the evaluations' warnings."""
    strong, at = attack_name(strong_attack), f"@{paper_eps:g}"
    lines = [f"Checking the main attack at eps {paper_eps:g} on the first {subset} (shuffled) test "
             f"images: the main PGD on them, {strong}, Carlini-Wagner L2, and the per-image worst case (an image "
             "is robust only if all three failed on it). A worst case far below the main PGD would mean the main "
             "attack is too weak.", "",
             f"| setting | main PGD | {strong.split(' (')[0]} | CW-L2 | worst case |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | " + " | ".join(cell(r[name + at]) for name in ("subset", "strong", "cw",
                                                                                           "worst")) + " |")
    warnings = [f"- {r['setting']}: {w}" for r in rows for w in r["warnings"]]
    if warnings:
        lines += ["", "Evaluation warnings:", *warnings]
    return lines


def d6_section(rows: list[dict], cifar: bool = True) -> list[str]:
    """Appendix D.6: the D_det model's accuracy on the true labels and on y+1, with the
    replication's numbers as references (CIFAR-10's: MISSING on other data); why it was skipped,
    when it was."""
    det = next(r for r in rows if r["key"] == "det")

    def reference(ref: str) -> str:
        return f"{100 * D6_REPLICATION[ref].value:.1f} ({D6_REPLICATION[ref].source})" if cifar else MISSING

    return ["## Appendix D.6: what the model trained on D_det learned", "",
            "D_det's images of class y carry non-robust features of y+1 and are labelled y+1, while their robust "
            "features still say y. On the real test set, accuracy on the true labels y measures the non-robust "
            "features learned; accuracy on the labels y+1 (the test set relabelled like D_det) measures the robust "
            "features learned with D_det's shifted labels.", "",
            "| test labels | ours | reference |", "|---|---|---|",
            *[f"| {name} | {cell(det[key])} | {reference(ref)} |"
              for name, key, ref in (("true y", "clean", "true"), ("y+1", "shifted", "shifted"))],
            *[f"- {note}: D.6 skipped" for note in det["notes"]]]


def synthesized_section(synth: dict[str, dict]) -> list[str]:
    """Each synthesized dataset's quality and synthesis rate."""
    lines = ["## The synthesized datasets", "", "Means over seeds.", "",
             "| dataset | quality | image-steps/s |", "|---|---|---|"]
    for kind, st in synth.items():
        if "target_success" in st:
            quality = (f"target success {100 * st['target_success']:.1f}% (stored {100 * st['stored_success']:.1f}%), "
                       f"mean perturbation {st['perturbation_norm']:.3f}")
        else:
            quality = (f"relative feature distance {st['initial_distance']:.3f} -> {st['final_distance']:.3f} "
                       f"(stored {st['stored_distance']:.3f})")
        lines.append(f"| D_{kind} | {quality} | {st['image_steps_per_s']:.0f} |")
    return lines


def samples_section(figures: dict[str, str], first_seed: int = 0) -> list[str]:
    """The inversion grid (Figure 2a) and the D_rand/D_det samples, from the first seed's datasets."""
    return [f"![inversions]({figures['inversion']})", "",
            f"Seed {first_seed}. Columns: x, the start image x0, x0 optimized to match x's representation under the standard "
            "model (D_NR) and under the robust model (D_R).", "", f"![targeted]({figures['targeted']})"]


def figure2b_section(figures: dict[str, str]) -> list[str]:
    return ["## Figure 2b", "", f"![bars]({figures['bars']})"]


def figure3_section(numbers: Numbers, transfer_images: int, figures: dict[str, str]) -> list[str]:
    """Figure 3: transfer success rate and learnability per architecture, the paper's beside,
    the correlation over (architecture, seed) points, and the plot."""
    lines = ["## Figure 3: transferability vs learnability", "",
             "Transfer success rate: the source model (the standard model of the same seed) crafts targeted examples "
             f"toward y+1 on the first {transfer_images} shuffled test images with the D_det attack; among "
             "those that fool the source, the share that a model of the architecture trained on D (another seed) also "
             "classifies as y+1. Learnability: the test accuracy of the architecture trained on D_det.", "",
             "| architecture | transfer success rate | test acc. trained on D_det | trained on D | paper (D_det acc., "
             "transfer) |", "|---|---|---|---|---|"]
    for p in numbers.figure3:
        ref = MISSING if p["paper"] is None else f"{100 * p['paper'][0]:.1f}, {100 * p['paper'][1]:.1f}"
        lines.append(f"| {p['arch']} | {cell(p['transfer'])} | {cell(p['det_accuracy'])} | {cell(p['d_accuracy'])} | "
                     f"{ref} |")
    c = numbers.correlation
    if c:
        lines += ["", f"Correlation over the (architecture, seed) points: r = {c['estimate']:.2f} "
                      f"[{c['low']:.2f}, {c['high']:.2f}] ({c['method']})."]
    return lines + ["", f"Paper values: {FIGURE3_SOURCE.source}.", "", f"![transfer]({figures['transfer']})"]


# Which Distill comment each experiment answers (claim id -> (comment, experiment)), in the
# article's order; the README copies the table `comments_table` makes.
COMMENTS = {
    "fourier-noise-robust": ("1. Gilmer & Hendrycks: robustness beyond L_p", "Fourier-noise heat maps, robust vs standard"),
    "fourier-noise-gaussian": ("1. Gilmer & Hendrycks", "Fourier-noise heat maps, Gaussian-augmented vs standard"),
    "filtered-training": ("1. Gilmer & Hendrycks", "training and testing on high- and low-passed images"),
    "fog": ("1. Gilmer & Hendrycks", "a fog-like low-frequency corruption"),
    "goh-leakage": ("2. Goh: robust feature leakage", "a linear probe on robust features trained on D_det / D_rand"),
    "goh-eigenfeatures": ("3. Goh: two examples of useful, non-robust features", "eigenfeatures of truck vs frog"),
    "layer-robustness": ("4. Nakano, and the authors' reply", "the layer-robustness ratio R(f)"),
    "nakkiran-squares": ("5. Nakkiran: adversarial examples are just bugs, too", "adversarial squares"),
    "nakkiran-bugs": ("5. Nakkiran", "non-transferable D_det"),
    "linf-datasets": ("5. Nakkiran (the L-inf replications)", "L-inf D_rand and D_det"),
    "wallace-mislabelled": ("6. Wallace: learning from incorrectly labeled data", "a student on a teacher's wrong labels"),
    "wallace-cross": ("6. Wallace", "five classes learned from labels of the other five"),
    "wallace-toy": ("6. Wallace", "his 2-D toy"),
}
DISCUSSION_FIGURES = (("fourier_heat_maps", "Fourier-noise error heat maps (Gilmer & Hendrycks)"),
                      ("goh_scatter", "Goh's usefulness against non-robustness"),
                      ("layer_ratios", "R(f) per layer (the authors' reply to Nakano)"),
                      ("squares", "Nakkiran's adversarial squares: flip rates"))


def distill_section(distill: dict, figures: dict[str, str] | None = None,
                    eps_list: list[float] = (0.25, 0.5)) -> list[str]:
    """--extra distill: which comment each experiment answers and its verdict, every claim with
    its rules, rivals, intervals and the comment's number, Goh's probe, Nakkiran's
    non-transferable D_det, the extra models' accuracies, and the discussion's figures."""
    figures = figures or {}
    return ["## The Distill discussion (--extra distill)", "",
            "The comments on the paper tested its claims; each experiment here states its claim, the number from the "
            "Distill article as a reference (its setting differs: see the reference column), and ours with its "
            "interval (over seeds with two or more, else over test images), judged by the same rule as the main "
            "claims. D_R from noise is judged with the main claims (above)."
            + (" Style transfer (Nakano) is shown, not judged (below)." if "style" in distill.get("discussion", {})
               else ""), "",
            *comments_table(distill["claims"], "style" in distill.get("discussion", {})), "",
            *discussion_rules(distill["claims"]), "",
            *_discussion_lines(distill.get("discussion", {})), "",
            *style_lines(distill.get("discussion", {}).get("style"), figures.get("style_transfer")),
            *_probe_lines(distill), "", *_nontransferable_lines(distill, eps_list),
            *[line for key, title in DISCUSSION_FIGURES if key in figures
              for line in ("", f"![{title}]({figures[key]})")]]


def comments_table(claims: list[dict], style_shown: bool = False) -> list[str]:
    """Which Distill comment each experiment answers, and its verdict (the README's table);
    with style_shown, Nakano's style transfer too, shown and not judged."""
    lines = ["| Distill comment | experiment | claim | verdict |", "|---|---|---|---|"]
    order = {claim_id: i for i, claim_id in enumerate(COMMENTS)}
    for c in sorted(claims, key=lambda c: order.get(c["id"], len(order))):
        comment, experiment = COMMENTS.get(c["id"], ("", c["id"]))
        lines.append(f"| {comment} | {experiment} | {c['statement']} | **{c['verdict']}** |")
        if c["id"] == "layer-robustness" and style_shown:
            lines.append("| 4. Nakano | style transfer with each network | a robust network transfers style far "
                         "better than a standard one | qualitative: pictures, not judged |")
    return lines


def _is_rate(rule: str) -> bool:
    """Whether a rule's effect is an accuracy, error or rate (printed in points)."""
    return any(word in rule for word in ("acc.", "rate", "error", "drop"))


def discussion_rules(claims: list[dict]) -> list[str]:
    """Every rule: the comment's number with its setting, ours with its interval, the rival."""
    lines = ["| claim | the comment (reference, its setting) | rule | ours [95% interval] | rival view it rules out "
             "| verdict |", "|---|---|---|---|---|---|"]
    for c in claims:
        for i, part in enumerate(c["parts"]):
            points = _is_rate(part["rule"])
            ours = _interval_text(part["interval"], points)
            lines.append(f"| {c['id'] if i == 0 else ''} | {c['paper'] if i == 0 else ''} | {_rule_in_units(part['rule'], points)} | {ours} "
                         f"| {part.get('rival', '')} | {part['verdict']} |")
    return lines


def _rule_in_units(rule: str, points: bool) -> str:
    """A rule whose margin is a fraction of accuracy ("... > 0.05"), in points as its effect is shown."""
    head, _, margin = rule.rpartition(" ")
    try:
        return f"{head} {100 * float(margin):g} pts" if points else rule
    except ValueError:
        return rule


def _interval_text(interval: dict | None, points: bool) -> str:
    if interval is None:
        return MISSING
    scale, unit = (100, " pts") if points else (1, "")
    low, high = interval.get("low"), interval.get("high")
    text = f"{scale * interval['estimate']:+.{1 if points else 3}f}{unit}"
    if low is not None:
        text += f" [{scale * low:+.{1 if points else 3}f}, {scale * high:+.{1 if points else 3}f}]"
    return text


def _discussion_lines(d: dict) -> list[str]:
    """A few numbers the claims' effects do not show directly (means over seeds)."""
    lines = []
    if "fog" in d:
        lines.append("Fog: " + "; ".join(f"{m} {cell(d['fog'][m]['clean_accuracy'])}% clean -> "
                                         f"{cell(d['fog'][m]['fog_accuracy'])}% under fog" for m in d["fog"]) + ".")
    if "filtered" in d:
        lines.append(f"Filtered training: low-passed {cell(d['filtered']['low'])}%, high-passed "
                     f"{cell(d['filtered']['high'])}% (chance 10%).")
    if "heat_maps" in d:
        lines.append("Fourier noise (L2 norm {:g}): clean error ".format(d["heat_maps"]["norm"])
                     + ", ".join(f"{m} {100 * v['clean_error']:.1f}%, mean noisy error "
                                 f"{100 * sum(map(sum, v['map'])) / sum(map(len, v['map'])):.1f}%"
                                 for m, v in d["heat_maps"].items() if m != "norm") + ".")
    if "layer_ratios" in d:
        lines.append("R(f): " + "; ".join(f"{m} " + ", ".join(f"{layer} {r:.3f}" for layer, r in rows.items())
                                          for m, rows in d["layer_ratios"].items()) + ".")
    return [f"- {line}" for line in lines]


def style_lines(style: dict | None, figure: str | None) -> list[str]:
    """Nakano's style transfer: qualitative (no rule judges it), its pictures and, per network,
    how far each picture's style loss fell on its own network and under the others."""
    if not style:
        return []
    nets = list(style["models"])
    lines = ["### Style transfer (Nakano, response 4): qualitative, not judged", "",
             "Gatys et al.'s style transfer (L-BFGS from the content image) with each network: one picture per style "
             "layer alone and one with all of them (advfeat/discussion/style_transfer.py states every deviation from "
             "Nakano's setting: 32x32 CIFAR-10 images, small networks, a procedural style texture). Nakano found a "
             "robust ResNet-50 far better for style transfer than a standard one; the authors found single-layer "
             "style transfer working where the layer is robust (R(f) above, printed over the grid's columns). No rule "
             "was fixed for these pictures, so they carry no verdict. The numbers: a picture's style loss as a share "
             f"of the content image's (1: no closer to the style; 0: matched), mean over {style['seeds']} seed(s) "
             "with its 95% t interval (the same content images in every seed); 'under' another network: the same "
             "share measured with that network's style layers.", "",
             f"| network | style layers (content layer) | own style-loss share, per column | multi-layer picture's "
             f"share under {', '.join(nets)} |", "|---|---|---|---|"]
    for net, m in style["models"].items():
        own = ", ".join(f"{c} {_share(v['style_share'])}" for c, v in m["columns"].items())
        cross = ", ".join(_share(m["cross"][j]) for j in nets)
        lines.append(f"| {net} | {', '.join(m['style_layers'])} ({m['content_layer']}) | {own} | {cross} |")
    return lines + ([""] + ([f"![style transfer (Nakano)]({figure})", ""] if figure else []))


def _share(interval: dict) -> str:
    """A style-loss share with its interval (not a percentage: it may pass 1)."""
    text = f"{interval['estimate']:.2f}"
    return text + (f" [{interval['low']:.2f}, {interval['high']:.2f}]" if interval.get("low") is not None else "")


def _probe_lines(distill: dict) -> list[str]:
    """Goh's robust-feature probe on two feature sets (on the true labels y and on y+1), with
    his robust linear model's numbers."""
    probe, linear = distill["probe"], distill["linear_model"]
    train_eps = " or ".join(f"{e:g}" for e in linear["train_eps"]) or MISSING
    lines = ["Goh's robust-feature probe: a linear classifier on robust features, fit on each training set, "
             "tested on the real test set's true labels y, and on y+1 (the labels D_det's images carry). Two sets of "
             "robust features: the penultimate layer of the "
             "(adversarially trained) robust network, and, as Goh did, the 10 logits of a robust linear model on the "
             f"pixels of D, trained against L2 perturbations of size {train_eps} (per seed, the smallest of 0.25, "
             "0.5, 1, 2 that meets Goh's specification on D). Its robustness is certified in closed form: its "
             f"prediction provably holds within L2 0.25 on {cell(linear['certified_stable_at_0.25'])}% of test "
             f"images (Goh's specification: 80%); its own test accuracy is {cell(linear['clean_accuracy'])}%.", "",
             "| probe trained on | robust network's features: y | y+1 | robust linear model's features: y | y+1 |",
             "|---|---|---|---|---|"]
    for name, label in (("d", "D (the real training images)"), ("rand", "D_rand"), ("det", "D_det")):
        lines.append(f"| {label} | {cell(probe[name])} | {cell(probe.get(name + '@y+1'))} | "
                     f"{cell(probe['linear-' + name])} | {cell(probe.get('linear-' + name + '@y+1'))} |")
    return lines + [f"- {note}" for note in distill["probe_notes"]]


def _nontransferable_lines(distill: dict, eps_list: list[float]) -> list[str]:
    """Nakkiran's non-transferable D_det, then the Distill models' accuracy table (robust
    accuracy at the preset's eps)."""
    nt = distill["nontransferable"]
    lines = ["Nakkiran's non-transferable D_det: targeted toward y+1 for the source model while an ensemble of "
             f"independently trained models keeps predicting y: target success {cell(nt['target_success'])}%, the "
             f"ensemble keeps the true label on {cell(nt['ensemble_keeps_label'])}% of them; transfer success to a "
             f"model trained on D: {cell(nt['transfer'])}% (Figure 3's x marker).", "",
             "| setting | clean | " + "".join(f"robust eps={e:g} | " for e in eps_list) + "accuracy on y+1 (D.6) |",
             "|---|---|" + "---|" * (len(eps_list) + 1)]
    for r in distill["rows"]:
        robust = "".join(f"{cell(r.get(f'robust@{e:g}'))} | " for e in eps_list)
        lines.append(f"| {r['setting']} | {cell(r['clean'])} | {robust}{cell(r['shifted'])} |")
    return lines


def theory_section(theory: dict, figures: dict[str, str]) -> list[str]:
    """Section 4: the theory stage's headline and its figures (those copied)."""
    rules = theory.get("rules", [])
    table = ["| theorem | rule | ours | verdict |", "|---|---|---|---|",
             *[f"| {r['theorem']} | {r['rule']} | {r['value']} | **{r['verdict']}** |" for r in rules]]
    return ["## Section 4: the Gaussian model", "", theory["headline"], "",
            *(["Each theorem judged by a stated numeric rule (advfeat/claims.py, section4_rules):", "", *table, ""]
              if rules else []),
            *[f"![{name}]({figures[name]})" for name in THEORY_FIGURES if name in figures]]


def timings_section(results: dict) -> list[str]:
    """Each stage's seconds and throughput, reused or not, and the run's wall clock."""
    lines = ["## Timings", "", "| stage | reused | seconds | throughput |", "|---|---|---|---|"]
    for s in map(slim_stage, results["stages"]):
        speed = ""
        if "training_images_per_s" in s:
            speed = f"{s['training_images_per_s']:.0f} training images/s"
        elif "image_steps_per_s" in s:
            speed = f"{s['image_steps_per_s']:.0f} image-steps/s"
        lines.append(f"| {s['id']} | {'yes' if s['cached'] else 'no'} | {s['seconds']:.1f} | {speed} |")
    return lines + ["", f"Total wall-clock time of this run: {results['total_seconds']:.1f} s (reused stages cost "
                        f"nothing now; their seconds are those of the run that made them)."]


def preset_section(preset: dict) -> list[str]:
    return ["## Preset", "", "```json", json.dumps(preset, indent=1, default=str), "```"]
