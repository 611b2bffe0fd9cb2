"""The state file of a resumable evaluation: per-example results, chunk by chunk, written
atomically (advfeat.io) after every chunk, so a killed `advfeat eval` resumes where it stopped.

The file records a fingerprint of what it was computed from: the model's digest (SHA-256 of
its parameters and buffers), the data's digest (the images and labels evaluated) and the
settings that change results (attack, version, eps, iterations, seeds, batch and chunk sizes,
device type). Resuming with any of them different is refused (UserError) and the file is left
as it is. The file is JSON, read with json.loads only: never code.

Layout: {"format": FORMAT, "fingerprint": {...}, "chunks": {"<chunk index>": <the chunk's
results, as the caller wrote them>}}.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from advfeat.errors import UserError
from advfeat.io import write_json

FORMAT = "advfeat-eval-state-1"


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' dtypes, shapes and bytes (on the CPU, contiguous)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's class name and its state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_digest(value).encode())
    return h.hexdigest()


class EvalState:
    """The chunks done so far, and where they are saved. `EvalState(None, ...)` keeps them in
    memory only (no file: nothing to resume)."""

    def __init__(self, path: Path | str | None, fingerprint: dict):
        self.path = Path(path) if path is not None else None
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it will read back
        self.chunks: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            self.chunks = self._read()

    def _read(self) -> dict:
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"resume file {self.path} is unreadable ({type(error).__name__}); "
                            f"delete it to start over") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT or not isinstance(saved.get("chunks"), dict):
            raise UserError(f"{self.path} is not an advfeat evaluation state ({FORMAT}); delete it to start over")
        theirs = saved.get("fingerprint")
        if theirs != self.fingerprint:
            differ = sorted(k for k in set(self.fingerprint) | set(theirs or {})
                            if (theirs or {}).get(k) != self.fingerprint.get(k))
            raise UserError(f"resume file {self.path} was written for a different {', '.join(differ)}; "
                            f"delete it to start over, or run with the same ones")
        return saved["chunks"]

    def done(self, chunk: int) -> dict | None:
        return self.chunks.get(str(chunk))

    def record(self, chunk: int, results: dict) -> None:
        """Keep a finished chunk's results and rewrite the file (atomically)."""
        self.chunks[str(chunk)] = results
        if self.path is not None:
            write_json(self.path, {"format": FORMAT, "fingerprint": self.fingerprint, "chunks": self.chunks})

    def remove(self) -> None:
        """Delete the file once the evaluation's own output is written."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
