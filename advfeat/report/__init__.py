"""The reproduction report: judged claims, every number with its interval beside the paper's
reference, the figures and the timings.

Writes report.md, report.json and figures/ into the reproduction folder. The paper's numbers
(advfeat.paper) are shown as references with their setting and source, never subtracted
from ours: a small net on a CPU is not the paper's ResNet-50.

    collect.py    the stages' results -> the numbers (rows, claims, Figure 3, Distill, datasets)
    figures.py    every figure (matplotlib through advfeat.plotting)
    markdown.py   report.md, one function per section

The whole package is presentation: the stages' code digest leaves report/ out (by path), so
editing it never recomputes a stage.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from advfeat.data import CIFAR10_CLASSES
from advfeat.data.synthesized import read_images_at
from advfeat.io import atomic_path, write_json
from advfeat.report.collect import Numbers, collect, paper_eps_of, slim_stage
from advfeat.report.figures import draw_figures
from advfeat.report.markdown import render

__all__ = ["sample_images", "write_report"]


def write_report(out: Path, results: dict, samples: dict) -> dict:
    """report.md, report.json and figures/ in `out` from the stages' results; returns
    report.json's content. results: reproduce's record ("preset" as a dict, "results" the
    stages' results by id, "stages" their records, "theory_dir", "total_seconds", ...);
    samples: sample_images' output for the image grids."""
    numbers = collect(results)
    results = results | {"theory": numbers.theory}
    paths = draw_figures(out / "figures", numbers, samples, results["preset"]["claim_eps"],
                         results.get("theory_dir"), paper_eps_of(results["preset"]), style_folder(out, results),
                         tuple(results["data"].get("classes") or CIFAR10_CLASSES))
    figures = {k: os.path.relpath(v, out) for k, v in paths.items()}
    report = report_json(results, numbers, figures)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render(results, numbers, figures))
    write_json(out / "report.json", report)
    return report


def style_folder(out: Path, results: dict) -> str | None:
    """The first seed's style-transfer stage folder (its pictures make the report's grid), found
    from the stages' records as the pipeline names folders: stages/<id>-<key>; None if it did not run."""
    first = f"style-transfer@{results['seeds'][0]}" if results.get("seeds") else None
    for record in results["stages"]:
        if record.get("id") == first:
            return str(out / "stages" / f"{record['id']}-{record['key']}")
    return None


def report_json(results: dict, numbers: Numbers, figures: dict[str, str]) -> dict:
    """report.json: the numbers, reproduce's record without the stages' full results (those,
    per-image outcomes included, stay in their stage.json files), slim stage records, figures."""
    return {"claims": numbers.claims, "holm": numbers.holm,
            "distill_claims": numbers.distill["claims"] if numbers.distill else [],
            "distill": numbers.distill, "rows": numbers.rows, "figure3": numbers.figure3,
            "figure3_correlation": numbers.correlation, "synthesized": numbers.synthesized,
            **{k: v for k, v in results.items() if k not in ("results", "stages")},
            "stages": [slim_stage(record) for record in results["stages"]], "figures": figures}


def sample_images(dataset_folders: dict[str, Path], train, n: int = 8) -> dict:
    """n examples of each dataset (folder per kind), spread over it (and so over the classes: it
    is stored class by class), beside their originals in `train`, the split it came from:
    {kind: {"synthesized", "original", "start" (inversions only): (n, 3, 32, 32) floats in
    [0, 1], "labels": (n,)}}. A kind whose dataset cannot be read is left out."""
    samples = {}
    picks = np.linspace(0, len(train) - 1, n).astype(int)
    for kind, folder in dataset_folders.items():
        rows = read_images_at(folder, picks)
        if rows is None:
            continue
        images = rows["images"]
        entry = {"synthesized": images.astype(np.float32) / (255 if images.dtype == np.uint8 else 1),
                 "original": train.images[rows["position"]].astype(np.float32) / 255,
                 "labels": rows["labels"]}
        if "start_index" in rows:
            entry["start"] = train.images[rows["start_index"]].astype(np.float32) / 255
        samples[kind] = entry
    return samples
