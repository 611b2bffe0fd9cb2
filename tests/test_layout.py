"""The package's layout: no import cycles, and a code digest that leaves out exactly the
presentation code (by path)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import advfeat
from advfeat.reproduce.pipeline import EXTRA_ONLY, code_digest, is_presentation

ROOT = Path(advfeat.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path, modules: set[str], everywhere: bool = False) -> set[str]:
    """The advfeat modules a file imports when it is imported (module level, not inside
    functions, unless `everywhere`): `from a.b import c` names a.b.c when that is a module, else a.b."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree) if everywhere else tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .m import x
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
    return {m for m in found if m in modules}


def import_graph(everywhere: bool = False) -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): top_level_imports(p, modules, everywhere) - {module_name(p)} for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (as a list of nodes), or None: depth-first search."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_advfeat():
    graph = import_graph()
    assert "advfeat.attacks.engine" in graph["advfeat.attacks.pgd"]  # the graph sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_presentation_is_matched_by_path_not_by_file_name():
    assert is_presentation("report/markdown.py") and is_presentation("doctor/kernels.py")
    assert is_presentation("cli.py") and is_presentation("paper.py")
    assert not is_presentation("attacks/pgd.py")
    assert not is_presentation("kernels/cases.py") and not is_presentation("theory/report.py")


def copy_package(tmp_path: Path) -> Path:
    copy = tmp_path / "advfeat"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_editing_presentation_code_keeps_every_stage_key(tmp_path):
    copy = copy_package(tmp_path)
    before = code_digest(copy)
    assert before == code_digest(ROOT)
    edited = [p for p in copy.rglob("*.py") if is_presentation(p.relative_to(copy).as_posix())]
    assert any("/" in p.relative_to(copy).as_posix() for p in edited)  # files inside packages are among them
    for path in edited:
        path.write_text(path.read_text() + "\n# an edit\n")
    assert code_digest(copy) == before


def test_editing_an_attack_changes_the_stage_keys(tmp_path):
    copy = copy_package(tmp_path)
    before = code_digest(copy)
    (copy / "attacks" / "pgd.py").write_text((copy / "attacks" / "pgd.py").read_text() + "\n# a bug fix\n")
    assert code_digest(copy) != before


def test_no_main_stage_reaches_code_only_the_extras_run():
    """Main stage keys leave out EXTRA_ONLY, so the modules whose functions main stages run
    (stages.py, and what they import, inside functions too) must never import it. The package
    __init__ files re-export; a parent package is not thereby imported code of the stage."""
    graph = import_graph(everywhere=True)
    extra = {m for m in graph if any(m == "advfeat." + p.removesuffix(".py").replace("/", ".").rstrip(".")
                                     or m.startswith("advfeat." + p.replace("/", ".")) for p in EXTRA_ONLY)}
    assert "advfeat.reproduce.distill" in extra and "advfeat.discussion.fourier" in extra
    seen, todo = set(), ["advfeat.reproduce.stages"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    assert not seen & extra, sorted(seen & extra)


def test_editing_an_extra_keeps_the_main_stage_keys(tmp_path):
    copy = copy_package(tmp_path)
    main, full = code_digest(copy, extras=False), code_digest(copy)
    path = copy / "discussion" / "fourier.py"
    path.write_text(path.read_text() + "\n# a bug fix\n")
    assert code_digest(copy, extras=False) == main and code_digest(copy) != full
