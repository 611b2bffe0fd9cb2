"""The reproduction report: every number beside the paper's, the figures, the timings.

Writes report.md and report.json (and figures/) into the reproduction folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from advfeat.io import atomic_path, write_json
from advfeat.pipelines import CIFAR10_CLASSES
from advfeat.presets import PAPER

ROWS = [
    ("standard", "Standard training on D"),
    ("robust", "Adversarial training on D (L2)"),
    ("r", "Standard training on D_R"),
    ("nr", "Standard training on D_NR"),
    ("rand", "Standard training on D_rand"),
    ("det", "Standard training on D_det"),
]
THEORY_FIGURES = ("gaussian_contours.png", "gaussian_alignment.png")


def _row_at(evaluation: dict, eps: float) -> dict | None:
    for row in evaluation.get("robust", []):
        if abs(row["eps"] - eps) < 1e-9:
            return row
    return None


def _robust_at(evaluation: dict, eps: float) -> float | None:
    row = _row_at(evaluation, eps)
    return None if row is None else row["accuracy"]


def _worst_case(evaluations: list[dict], eps: float, n: int) -> float | None:
    """Robust accuracy on the first n test images when every example counts as broken if any
    of the attacks broke it (all evaluations cover those n images, the first n of the set)."""
    rows = [_row_at(ev, eps) for ev in evaluations]
    if any(r is None or "robust_index" not in r for r in rows) or n == 0:
        return None
    survivors = set(range(n))
    for r in rows:
        survivors &= set(r["robust_index"])
    return len(survivors) / n


def table_rows(results: dict) -> list[dict]:
    """One row per trained model: our clean / robust accuracies beside the paper's."""
    rows = []
    eps_list = results["preset"]["eps"]
    for key, label in ROWS:
        ev = results["evaluations"][key]
        paper = PAPER.get(key, {})
        row = {"key": key, "setting": label, "clean": ev["main"]["clean_accuracy"],
               "paper_clean": paper.get("clean")}
        for eps in eps_list:
            row[f"robust@{eps}"] = _robust_at(ev["main"], eps)
        row["paper_robust@0.25"] = paper.get("robust@0.25")
        # The strong attacks run on the first n test images: compare on those.
        n = ev["strong"]["n"]
        row["subset_robust@0.25"] = _worst_case([ev["main"]], 0.25, n)
        row["strong_robust@0.25"] = _robust_at(ev["strong"], 0.25)
        row["cw_robust@0.25"] = _robust_at(ev["cw"], 0.25)
        row["worst_robust@0.25"] = _worst_case([ev["main"], ev["strong"], ev["cw"]], 0.25, n)
        row["warnings"] = ev["main"]["warnings"] + ev["strong"]["warnings"]
        rows.append(row)
    return rows


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _diff(ours, paper) -> str:
    return "–" if ours is None or paper is None else f"{100 * (ours - paper):+.1f}"


# --------------------------------------------------------------------------- figures


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
    fig.savefig(path, dpi=130)
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
    fig.savefig(path, dpi=130)
    plt.close(fig)


def draw_bars(rows: list[dict], path: Path) -> None:
    """Figure 2b: clean and robust (eps 0.25) accuracy of models trained on D, D_R, D_NR."""
    plt = _pyplot()
    keys = ["standard", "robust", "r", "nr"]
    chosen = [r for r in rows if r["key"] in keys]
    labels = ["D (std)", "D (adv)", "D_R", "D_NR"]
    at = np.arange(len(chosen))
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.bar(at - 0.2, [100 * r["clean"] for r in chosen], 0.4, label="clean (ours)")
    ax.bar(at + 0.2, [100 * (r["robust@0.25"] or 0) for r in chosen], 0.4, label="robust eps=0.25 (ours)")
    for i, r in enumerate(chosen):
        for dx, key in ((-0.2, "paper_clean"), (0.2, "paper_robust@0.25")):
            if r[key] is not None:
                ax.plot([i + dx - 0.18, i + dx + 0.18], [100 * r[key]] * 2, color="black", lw=1.5)
    ax.plot([], [], color="black", lw=1.5, label="paper")
    ax.set_xticks(at, labels)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def draw_transfer(transfer: list[dict], path: Path) -> None:
    """Figure 3: transfer rate of the source model's D_det examples vs accuracy when
    trained on D_det, per architecture, with a least-squares trend line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    xs = np.array([100 * t["transfer_rate"] for t in transfer])
    ys = np.array([100 * t["det_test_accuracy"] for t in transfer])
    ax.scatter(xs, ys)
    for t, x, y in zip(transfer, xs, ys):
        ax.annotate(t["arch"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if len(transfer) >= 2 and np.ptp(xs) > 0:
        slope, intercept = np.polyfit(xs, ys, 1)
        grid = np.linspace(xs.min(), xs.max(), 10)
        ax.plot(grid, slope * grid + intercept, "--", color="gray", label=f"trend (slope {slope:.2f})")
        ax.legend(fontsize=7)
    ax.set_xlabel("transfer rate of D_det examples (%)")
    ax.set_ylabel("test accuracy trained on D_det (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# --------------------------------------------------------------------------- markdown


def _stage_rows(stages: list[dict]) -> list[str]:
    lines = ["| stage | reused | seconds | throughput |", "|---|---|---|---|"]
    for s in stages:
        result = s.get("result", {})
        speed = ""
        if "images_per_s" in result and result["images_per_s"]:
            speed = f"{result['images_per_s']:.0f} training images/s"
        elif "stats" in result:
            speed = f"{result['stats']['image_steps_per_s']:.0f} image-steps/s"
        lines.append(f"| {s['name']} | {'yes' if s['cached'] else 'no'} | {s['seconds']:.1f} | {speed} |")
    return lines


def render_markdown(results: dict, rows: list[dict], figures: dict[str, str]) -> str:
    preset = results["preset"]
    eps_list = preset["eps"]
    lines = [f"# advfeat reproduction: preset `{preset['name']}`", "",
             f"Device: {results['device']} (workers for synthesis: {results['gpus']}). "
             f"Data: {results['data'].get('format')} at `{results['data'].get('path')}` "
             f"(digest {str(results['data'].get('digest'))[:12]}, {preset['subset'] or 'all'} training images, "
             f"{preset['test_subset'] or 'all'} test images). Model: {preset['arch']}.", ""]
    lines += [f"- {note}" for note in preset["notes"]] + [""]
    lines += ["## Accuracy on the real CIFAR-10 test set (%)", "",
              "Robust accuracy is under L2 PGD; the paper's is at eps 0.25. The last four columns check the "
              f"main attack on the first {preset['strong_subset']} test images: the main PGD on them, 'strong' PGD "
              "with more steps and restarts, Carlini-Wagner L2, and 'worst', where an image counts as robust only "
              "if all three failed on it. A 'worst' far below the main PGD means the main attack is too weak.", ""]
    head = ["setting", "clean", "paper", "diff"] + [f"robust eps={e}" for e in eps_list] + \
        ["paper eps=0.25", "diff", "subset PGD", "strong", "CW", "worst"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["setting"], _pct(r["clean"]), _pct(r["paper_clean"]), _diff(r["clean"], r["paper_clean"])]
        cells += [_pct(r[f"robust@{e}"]) for e in eps_list]
        cells += [_pct(r["paper_robust@0.25"]), _diff(r.get("robust@0.25"), r["paper_robust@0.25"]),
                  _pct(r["subset_robust@0.25"]), _pct(r["strong_robust@0.25"]), _pct(r["cw_robust@0.25"]),
                  _pct(r["worst_robust@0.25"])]
        lines.append("| " + " | ".join(cells) + " |")
    warnings = [f"- {r['setting']}: {w}" for r in rows for w in r["warnings"]]
    if warnings:
        lines += ["", "Evaluation warnings:", *warnings]
    lines += ["", "## The synthesized datasets", "", "| dataset | n | quality | seconds | image-steps/s |",
              "|---|---|---|---|---|"]
    for kind, record in results["synthesized"].items():
        st = record["stats"]
        if "target_success" in st:
            quality = (f"target success {_pct(st['target_success'])}% (stored {_pct(st['stored_success'])}%), "
                       f"mean perturbation {st['perturbation_norm']['mean']:.3f}")
        else:
            quality = (f"relative feature distance {st['initial_distance']['mean']:.3f} -> "
                       f"{st['final_distance']['mean']:.3f} (stored {st['stored_distance']['mean']:.3f})")
        lines.append(f"| D_{kind} | {st['n']} | {quality} | {st['wall_seconds']:.1f} | {st['image_steps_per_s']:.0f} |")
    lines += ["", "![inversions](" + figures["inversion"] + ")", "",
              "Columns: x, the start image x0, x0 optimized to match x's representation under the standard model "
              "(D_NR) and under the robust model (D_R).", "", "![targeted](" + figures["targeted"] + ")", "",
              "## Figure 2b", "", "![bars](" + figures["bars"] + ")", "",
              "## Figure 3: transferability vs learnability", "",
              "| architecture | transfer rate of D_det examples | test accuracy trained on D_det | trained on D |",
              "|---|---|---|---|"]
    for t in results["transfer"]:
        lines.append(f"| {t['arch']} | {_pct(t['transfer_rate'])} | {_pct(t['det_test_accuracy'])} | "
                     f"{_pct(t['standard_test_accuracy'])} |")
    lines += ["", "![transfer](" + figures["transfer"] + ")", "",
              "Transfer rate: the fraction of the source model's D_det images that each architecture, trained "
              "normally on D, classifies as the D_det target label.", "",
              "## Section 4: the Gaussian model", "", results["theory"]["headline"], ""]
    lines += [f"![{name}]({figures[name]})" for name in THEORY_FIGURES if name in figures]
    lines += ["", "## Timings", "", *_stage_rows(results["stages"]), "",
              f"Total wall-clock time of this run: {results['total_seconds']:.1f} s (reused stages cost nothing "
              f"now; their own seconds are those of the run that made them).", "",
              "## Preset", "", "```json", json.dumps(preset, indent=1), "```", ""]
    return "\n".join(lines)


def write_report(out: Path, results: dict, samples: dict) -> dict:
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    rows = table_rows(results)
    paths = {"inversion": figures_dir / "inversion.png", "targeted": figures_dir / "targeted.png",
             "bars": figures_dir / "figure2b.png", "transfer": figures_dir / "figure3.png"}
    draw_inversion_grid(samples, paths["inversion"])
    draw_targeted_grid(samples, paths["targeted"])
    draw_bars(rows, paths["bars"])
    draw_transfer(results["transfer"], paths["transfer"])
    # The theory figures are copied beside the others: report.md and figures/ then make a
    # self-contained folder without the (large) stages/.
    for name in THEORY_FIGURES:
        source = Path(results["theory"]["folder"]) / name
        if source.is_file():
            paths[name] = figures_dir / name
            with atomic_path(paths[name]) as tmp:
                shutil.copyfile(source, tmp)
    figures = {k: os.path.relpath(v, out) for k, v in paths.items()}
    report = {"rows": rows, **results, "figures": figures}
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_markdown(results, rows, figures))
    write_json(out / "report.json", report)
    return report
