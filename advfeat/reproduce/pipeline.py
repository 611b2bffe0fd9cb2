"""Content-addressed stages: run each once, reuse it while nothing it depends on changes.

A stage's key hashes everything that determines its output: its name and seed, its settings,
the keys of the stages it reads, the digest of the source data, and the digest of advfeat's
own code. No path enters a key, so a reproduction folder can move and a rerun from another
working directory reuses it; a code change (a bug fix) recomputes what it may have changed.
A stage lives in `stages/<id>-<key>/` and is finished once its `stage.json` exists; an
interrupted stage resumes through its own mechanism (training's resume state, synthesis's
finished shards). A stage's result holds no absolute paths either: a stage reads its inputs
from their folders, which the pipeline gives it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import advfeat
from advfeat.io import read_json, write_json

STAGE_FORMAT = 2  # bump to invalidate every stored stage
# Code that only presents or checks results, by path inside the package (a folder ends in
# "/"): editing it must not recompute any stage. Paths, not file names, so that a module moved
# into a package, or a new module that happens to share a name, is never silently left out.
# presets.py is data whose every value that computes enters the stages' settings (and so their
# keys); its prose (descriptions, deviations) must not recompute anything either.
PRESENTATION = ("cli.py", "report.py", "report/", "doctor.py", "doctor/", "claims.py", "stats.py", "paper.py",
                "presets.py")


# Code only the extras' stages run (--extra distill): it enters their keys, not the main
# stages', so adding or fixing an extra reuses a finished main run. tests/test_layout.py checks
# that no main stage's module imports it.
EXTRA_ONLY = ("reproduce/distill.py", "discussion/")


def _matches(relative: str, paths: tuple[str, ...]) -> bool:
    return any(relative == p or (p.endswith("/") and relative.startswith(p)) for p in paths)


def is_presentation(relative: str) -> bool:
    """Whether a source file (its path relative to the package, with "/") only presents."""
    return _matches(relative, PRESENTATION)


def code_digest(root: Path | None = None, *, extras: bool = True) -> str:
    """sha256 over advfeat's own source files (those that compute, not those that present);
    without `extras`, also leaving out the code only the extras run (EXTRA_ONLY). `root` is the
    package folder (default: the installed advfeat)."""
    root = Path(root) if root is not None else Path(advfeat.__file__).resolve().parent
    h = hashlib.sha256(advfeat.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if not is_presentation(relative) and (extras or not _matches(relative, EXTRA_ONLY)):
            h.update(relative.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Work:
    """What a stage computes, for time estimates: `passes` forward+backward passes of `arch`
    over single images (training images, or attack image-steps), plus forward-only passes."""

    what: str  # "train" or "attack": which measured rate applies
    arch: str | None = None
    passes: float = 0.0
    batch_size: int = 128
    fixed_seconds: float = 0.0  # work no rate describes (the theory figures; per-step overheads), added


@dataclass
class Stage:
    name: str
    seed: int | None  # None: once per reproduction
    settings: dict  # JSON-able: everything besides its inputs that determines the output
    inputs: tuple[str, ...]  # ids of the stages it reads
    run: Callable[[StageContext], dict]  # writes into ctx.folder; returns a small JSON result
    work: Work = field(default_factory=lambda: Work("none"))
    extra: str | None = None  # the extra (--extra) that added it; None: a main stage

    @property
    def id(self) -> str:
        return self.name if self.seed is None else f"{self.name}@{self.seed}"


@dataclass
class StageContext:
    folder: Path  # this stage's folder
    pipeline: Pipeline

    def folder_of(self, stage_id: str) -> Path:
        return self.pipeline.folder(stage_id)

    def result_of(self, stage_id: str) -> dict:
        return self.pipeline.results[stage_id]


class Pipeline:
    """Keys, folders and status of a list of stages (inputs before the stages that read them)."""

    def __init__(self, out: Path, stages: list[Stage], data_digest: str, log: Callable[[str], None],
                 compute: str = "fp32"):
        self.out, self.log, self.data_digest, self.compute = Path(out), log, data_digest, compute
        self.stages = {s.id: s for s in stages}
        code = {False: code_digest(extras=False), True: code_digest()}
        self.keys: dict[str, str] = {}
        for s in stages:
            missing = [i for i in s.inputs if i not in self.keys]
            if missing:
                raise ValueError(f"stage {s.id} reads {missing}, which come after it or do not exist")
            material = {"stage": s.name, "seed": s.seed, "format": STAGE_FORMAT, "settings": s.settings,
                        "inputs": {i: self.keys[i] for i in s.inputs}, "data": data_digest,
                        "code": code[s.extra is not None]}
            if compute != "fp32":  # bf16 results differ from fp32 ones (fp32 keys are unchanged)
                material["compute"] = compute
            text = json.dumps(material, sort_keys=True, default=str)
            self.keys[s.id] = hashlib.sha256(text.encode()).hexdigest()[:12]
        self.results: dict[str, dict] = {}
        self.records: list[dict] = []

    def folder(self, stage_id: str) -> Path:
        return self.out / "stages" / f"{stage_id}-{self.keys[stage_id]}"

    def status(self, stage_id: str) -> str:
        """done (finished), partial (started: it will resume) or todo."""
        folder = self.folder(stage_id)
        if (folder / "stage.json").is_file():
            return "done"
        return "partial" if folder.is_dir() and any(folder.iterdir()) else "todo"

    def run(self, stage_id: str) -> dict:
        stage, folder = self.stages[stage_id], self.folder(stage_id)
        marker = folder / "stage.json"
        if marker.is_file():
            record = read_json(marker)
            self.log(f"[{stage_id}] reused")
            self.records.append(record | {"cached": True})
        else:
            folder.mkdir(parents=True, exist_ok=True)
            self.log(f"[{stage_id}] running in {folder}")
            start = time.perf_counter()
            result = stage.run(StageContext(folder, self))
            record = {"id": stage_id, "name": stage.name, "seed": stage.seed, "key": self.keys[stage_id],
                      "seconds": round(time.perf_counter() - start, 2), "result": result, "settings": stage.settings}
            write_json(marker, record)
            self.records.append(record | {"cached": False})
        self.results[stage_id] = record["result"]
        return record["result"]

    def run_all(self) -> dict[str, dict]:
        for stage_id in self.stages:
            self.run(stage_id)
        return self.results
