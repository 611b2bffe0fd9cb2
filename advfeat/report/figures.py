"""The report's figures: Figure 2a's inversions, D_rand/D_det samples, Figure 2b's bars,
Figure 3's transfer plot, and the theory stage's figures copied beside them.

Every figure is drawn through advfeat.plotting.pyplot (the one backend choice) and written
atomically. Accuracies arrive as collect.py's cells (fractions); the axes show percent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from advfeat.data import CIFAR10_CLASSES
from advfeat.io import atomic_path, save_figure
from advfeat.plotting import pyplot
from advfeat.report.collect import Numbers

# The theory stage's figures that the report shows (it draws more), in the report's order.
THEORY_FIGURES = ("gaussian_contours.png", "gaussian_alignment.png")


def draw_figures(figures_dir: Path, numbers: Numbers, samples: dict, claim_eps: float,
                 theory_dir: str | None, paper_eps: float = 0.25, style_dir: str | None = None,
                 classes: tuple[str, ...] = CIFAR10_CLASSES) -> dict[str, Path]:
    """Every figure into figures_dir: {name: path}, the theory figures included when
    theory_dir holds them, and the style-transfer grid when style_dir (a style-transfer stage's
    folder) holds its pictures. Robust accuracy is drawn at paper_eps (and claim_eps); image
    grids name the labels by `classes`."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = {"inversion": figures_dir / "inversion.png", "targeted": figures_dir / "targeted.png",
             "bars": figures_dir / "figure2b.png", "transfer": figures_dir / "figure3.png"}
    draw_inversion_grid(samples, paths["inversion"], classes)
    draw_targeted_grid(samples, paths["targeted"], classes)
    draw_bars(numbers.rows, paths["bars"], claim_eps, paper_eps)
    draw_transfer(numbers.figure3, numbers.correlation, paths["transfer"], numbers.nontransferable)
    if numbers.distill:
        paths |= draw_discussion_figures(figures_dir, numbers.distill.get("discussion", {}))
        pictures = Path(style_dir or "") / "style.npz"
        if style_dir and pictures.is_file():
            from advfeat.discussion.style_transfer import load_pictures

            paths["style_transfer"] = figures_dir / "style_transfer.png"
            draw_style_grid(load_pictures(pictures), paths["style_transfer"],
                            numbers.distill.get("discussion", {}).get("layer_ratios"))
    return paths | copy_theory_figures(theory_dir, figures_dir)


def draw_discussion_figures(figures_dir: Path, d: dict) -> dict[str, Path]:
    """The Distill discussion's figures whose stages ran: {name: path}."""
    from advfeat.discussion.eigenfeatures import scatter_figure

    drawers = {"fourier_heat_maps": ("heat_maps", draw_heat_maps), "layer_ratios": ("layer_ratios", draw_layer_ratios),
               "squares": ("squares", draw_squares),
               "goh_scatter": ("eigen_scatter", lambda e, path: scatter_figure(e, e["eps"], path))}
    paths = {}
    for name, (key, draw) in drawers.items():
        if key in d:
            paths[name] = figures_dir / f"{name}.png"
            draw(d[key], paths[name])
    return paths


def draw_heat_maps(maps: dict, path: Path) -> None:
    """Gilmer & Hendrycks' figure: the error rate under Fourier-basis noise per frequency (u, v),
    one panel per model (standard, robust, Gaussian-augmented), on one colour scale."""
    plt = pyplot()
    models = [m for m in maps if m != "norm"]
    fig, axes = plt.subplots(1, len(models), figsize=(3.4 * len(models), 2.8), squeeze=False, layout="constrained")
    for ax, m in zip(axes[0], models):
        u, v = maps[m]["u"], maps[m]["v"]
        image = ax.imshow(np.asarray(maps[m]["map"]), vmin=0, vmax=1, cmap="viridis", origin="lower",
                          extent=(u[0] - 0.5, u[-1] + 0.5, v[0] - 0.5, v[-1] + 0.5), aspect="auto")
        ax.set(title=f"{m} (L2 {maps['norm']:g})", xlabel="u", ylabel="v")
    fig.colorbar(image, ax=axes[0].tolist(), label="error rate")
    save_figure(fig, path)
    plt.close(fig)


def draw_layer_ratios(ratios: dict, path: Path) -> None:
    """R(f) per layer for each model (lower: more robust), layers in forward order at their
    relative depth, named in the legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for m, rows in ratios.items():  # relative depth: nets of different depth on one axis
        depth = np.linspace(0, 1, len(rows)) if len(rows) > 1 else [1.0]
        ax.plot(depth, list(rows.values()), marker="o", label=f"{m} ({', '.join(rows)})")
    ax.set(xlabel="relative depth of the layer (0: first ReLU, 1: final activation)", ylabel="R(f)",
           title="layer robustness ratio (lower: more robust)")
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def draw_squares(per_seed: dict, path: Path) -> None:
    """Nakkiran's squares: the flip rate at eps 0.01 of the overfit and the early-stopped model per seed."""
    plt = pyplot()
    seeds = sorted(per_seed)
    at = np.arange(len(seeds))
    fig, ax = plt.subplots(figsize=(4, 3))
    for j, m in enumerate(("overfit", "early")):
        ax.bar(at + (j - 0.5) * 0.4, [100 * per_seed[s][m] for s in seeds], 0.4, label=m)
    ax.set_xticks(at, [f"seed {s}" for s in seeds])
    ax.set(ylabel="test points flipped (%)", ylim=(0, 100), title="adversarial squares")
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def copy_theory_figures(theory_dir: str | None, figures_dir: Path) -> dict[str, Path]:
    """The theory figures copied beside the others, so that report.md and figures/ make a
    self-contained folder without the (large) stages/. Those missing are left out."""
    paths = {}
    for name in THEORY_FIGURES:
        source = Path(theory_dir or "") / name
        if theory_dir and source.is_file():
            paths[name] = figures_dir / name
            with atomic_path(paths[name]) as tmp:
                shutil.copyfile(source, tmp)
    return paths


def _show(ax, image: np.ndarray, title: str | None = None) -> None:
    """One (3, H, W) image in [0, 1] on an axis without ticks."""
    ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def draw_inversion_grid(samples: dict, path: Path, classes: tuple[str, ...] = CIFAR10_CLASSES) -> None:
    """Figure 2a / the journal-club picture: x, the start x0, its inversion by the standard
    model (D_NR) and by the robust model (D_R); up to 6 rows."""
    plt = pyplot()
    n = min(len(samples["r"]["original"]), len(samples["nr"]["original"]), 6)
    fig, axes = plt.subplots(n, 4, figsize=(4 * 1.2, n * 1.25), squeeze=False)
    for i in range(n):
        label = classes[int(samples["r"]["labels"][i])]
        _show(axes[i, 0], samples["r"]["original"][i], f"x ({label})" if i == 0 else label)
        _show(axes[i, 1], samples["nr"]["start"][i], "start x0 (D_NR)" if i == 0 else None)
        _show(axes[i, 2], samples["nr"]["synthesized"][i], "D_NR: standard" if i == 0 else None)
        _show(axes[i, 3], samples["r"]["synthesized"][i], "D_R: robust" if i == 0 else None)
    _save(plt, fig, path)


def draw_targeted_grid(samples: dict, path: Path, classes: tuple[str, ...] = CIFAR10_CLASSES) -> None:
    """D_rand and D_det samples: the original and its relabelled adversarial version."""
    plt = pyplot()
    n = min(len(samples["det"]["original"]), 6)
    fig, axes = plt.subplots(2, 2 * n, figsize=(2 * n * 1.0, 2 * 1.3), squeeze=False)
    for row, kind in enumerate(("rand", "det")):
        for i in range(n):
            s = samples[kind]
            _show(axes[row, 2 * i], s["original"][i], "x" if i == 0 else None)
            _show(axes[row, 2 * i + 1], s["synthesized"][i], f"-> {classes[int(s['labels'][i])]}")
        axes[row, 0].set_ylabel(f"D_{kind}", fontsize=8)
    _save(plt, fig, path)


def _mean(cell: dict | None) -> float:
    return float("nan") if cell is None else cell["estimate"]


def _errors(cells: list[dict | None]) -> np.ndarray:
    """Matplotlib's asymmetric error bars (2, n) in percent from interval cells (zero where
    there is none)."""
    lows = [0 if c is None or c["low"] is None else c["estimate"] - c["low"] for c in cells]
    highs = [0 if c is None or c["high"] is None else c["high"] - c["estimate"] for c in cells]
    return 100 * np.array([lows, highs])


def draw_bars(rows: list[dict], path: Path, claim_eps: float = 0.25, paper_eps: float = 0.25) -> None:
    """Figure 2b: clean and robust (the paper's eps, and the claims' eps when another) accuracy
    of the models trained on D, D_R, D_NR, with 95% intervals; the paper's ResNet-50 values as
    black ticks (a reference, where the rows have one)."""
    plt = pyplot()
    keys = ["standard", "robust", "r", "nr"]
    chosen = [r for r in rows if r["key"] in keys]
    at = np.arange(len(chosen))
    metrics = [("clean", "clean (ours)"), (f"robust@{paper_eps:g}", f"robust eps={paper_eps:g} (ours)")]
    if claim_eps != paper_eps:
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
    _save(plt, fig, path)


def draw_transfer(points: list[dict], correlation: dict | None, path: Path,
                  nontransferable: list | None = None) -> None:
    """Figure 3 with the paper's axes: x = test accuracy trained on D_det, y = transfer success
    rate; every (architecture, seed) point, the architectures' means, and a least-squares trend
    line; with --extra distill, Nakkiran's non-transferable D_det too (the authors put it near
    (0, 0))."""
    plt = pyplot()
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
    _save(plt, fig, path)


def draw_style_grid(pictures: dict, path: Path, ratios: dict | None = None) -> None:
    """Nakano's grid: per network and content image a row (the content image, the style image,
    one picture per style layer alone, one with all of them); a column titled with the layer and,
    where measured, its R(f). pictures: load_pictures' {"content", "style", "<net>|<column>"}."""
    from advfeat.discussion.style_transfer import MULTI

    plt = pyplot()
    nets = list(dict.fromkeys(k.split("|")[0] for k in pictures if "|" in k))
    columns = {net: [k.split("|")[1] for k in pictures if k.startswith(f"{net}|")] for net in nets}
    n_content, width = len(pictures["content"]), 2 + max(len(c) for c in columns.values())
    fig, axes = plt.subplots(len(nets) * n_content, width, figsize=(1.25 * width, 1.35 * len(nets) * n_content),
                             squeeze=False)
    for i, net in enumerate(nets):
        for j in range(n_content):
            row = axes[i * n_content + j]
            _show(row[0], pictures["content"][j], f"{net}: content" if j == 0 else None)
            _show(row[1], pictures["style"][0], "style" if j == 0 else None)
            for k, column in enumerate(columns[net]):
                r = (ratios or {}).get(net, {}).get(column)
                title = (column if column == MULTI else f"{column} alone") + ("" if r is None else f"\nR={r:.2f}")
                _show(row[2 + k], pictures[f"{net}|{column}"][j], title if j == 0 else None)
            for ax in row[2 + len(columns[net]):]:
                ax.axis("off")
    _save(plt, fig, path)
