"""The one writer: atomic, complete files with the permissions open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from advfeat.io import atomic_path, read_json, save_figure, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_get_ordinary_permissions_not_mkstemps_0600(tmp_path, umask_022):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_json(tmp_path / "a.json", {"x": 1})
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, tmp_path / "f.png")
    plt.close(fig)
    with atomic_path(tmp_path / "t.txt") as tmp:
        tmp.write_text("hello")
    for name in ("a.json", "f.png", "t.txt"):
        assert mode(tmp_path / name) == 0o644, name
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
