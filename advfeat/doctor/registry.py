"""The doctor's checks, registered by name, and how a check reports a skip or a failure.

    @check("kernels", cpu_s=45, cuda_s=60)
    def check_kernels(ctx: Context) -> tuple[str, dict]:   # (one-line detail, numbers)
        ...

CHECKS holds every check by name (advfeat/doctor/__init__.py imports the area modules, which
registers them, and runs them in its RUN_ORDER). A check returns its detail and numbers on a pass, raises Skip where
it cannot run here, CheckFailed where it ran and found a problem, and anything else where it
broke; run_doctor reports each as one line and goes on with the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


class Skip(Exception):
    """A check that cannot run here: reported as "skipped" with this reason."""


class CheckFailed(Exception):
    """A check that ran and found a problem: reported as "fail", keeping its numbers."""

    def __init__(self, detail: str, numbers: dict | None = None):
        super().__init__(detail)
        self.numbers = numbers or {}


@dataclass(frozen=True)
class Check:
    """A registered check: its function and the seconds it should take at most on 2 CPU cores
    and on one H100 (one that runs over is flagged, not failed)."""

    name: str
    run: Callable
    cpu_s: float
    cuda_s: float

    def budget(self, cuda: bool) -> float:
        return self.cuda_s if cuda else self.cpu_s


CHECKS: dict[str, Check] = {}


def check(name: str, *, cpu_s: float, cuda_s: float) -> Callable:
    """Decorator: register `fn(ctx) -> (detail, numbers)` as the check `name`."""
    def register(fn: Callable) -> Callable:
        if name in CHECKS:
            raise ValueError(f"doctor check {name!r} is registered twice")
        CHECKS[name] = Check(name, fn, cpu_s, cuda_s)
        return fn

    return register


def one_line(err: BaseException) -> str:
    """'Type: first line of the message', at most 300 characters: how a broken check reads."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")[:300]
