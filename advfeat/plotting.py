"""matplotlib's pyplot for files, never a window: the one place advfeat picks a backend.

Both the report's figures (advfeat.report.figures) and the theory stage's figures
(advfeat.theory.figures) draw through it. It lives outside report/ on purpose: report/ is left
out of the stages' code digest, and the theory stage's stored figures depend on this choice.
"""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (selected before pyplot is first
    imported, so a machine without a display never opens one). Imported on call: advfeat's
    modules stay importable, and fast to import, without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
