"""How the library is organised, checked: imports go one way and there are no cycles.

Layers (README, "How the library is organised"):
    course_lib.util.*                       machinery every layer shares (imports only config and util)
    course_lib.<lesson modules>             what the lessons show (bilateral, student, teacher, ...)
    course_lib.train.* / eval.* / apps.*    trainers, evaluation, applications (built on the lessons)
    course_lib.studies.* / harness.*        study drivers and acceptance harnesses (built on all of the above)
A lesson module never imports train/eval/apps; nothing below the outer layer imports a study or a harness. Imports of course_lib modules sit at the top of
a module; a late (function-level) import is only for an optional heavy package (ALLOWED_LATE). A module loaded by name
(``importlib.import_module("course_lib.x")`` or a module-level constant holding that name) counts as a late import too, and
is allowed only where LOADED_BY_NAME says why.
"""
from __future__ import annotations

import ast
from pathlib import Path

from course_lib import config

PKG = config.REPO_ROOT / "course_lib"
MACHINERY = ("course_lib.train", "course_lib.eval", "course_lib.apps")
OUTER = ("course_lib.studies", "course_lib.harness")
# (importer, imported) pairs allowed inside functions: the imported module needs an optional package at import time
ALLOWED_LATE = {("course_lib.fastslice", "course_lib.triton_slice"),  # triton: only where it is installed
                ("course_lib.gpu_check", "course_lib.triton_slice"),
                ("course_lib.harness.gpu_check", "course_lib.triton_slice")}
# (importer, imported) pairs loaded by name inside a function -> why. "plugin": the loaded module imports the loader at
# its top and registers itself in the loader's registry, so the dependency runs the other way (no edge importer ->
# imported: the graph keeps the loaded module's own top-level import of the loader, which this file checks).
LOADED_BY_NAME = {
    # lesson 01's dispatcher (slice_apply(impl="auto")) loads lesson 02's fused kernels on first use: every caller gets
    # the fastest kernel without importing lesson 02, and lesson 01 never depends on lesson 02 (it runs without it)
    ("course_lib.bilateral", "course_lib.fastslice"): "plugin",
    # the studio offers the inversion edit only where that lesson module exists and loads (optional)
    ("course_lib.apps.studio", "course_lib.inversion"): "optional",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _loaded_name(node: ast.Call, constants: dict[str, str]) -> str | None:
    """The module a call ``importlib.import_module(NAME)`` / ``import_module(NAME)`` / ``__import__(NAME)`` loads, when
    NAME is a string literal or a module-level string constant; else ``None``."""
    f = node.func
    called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    if called not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.Name):
        return constants.get(arg.id)
    return None


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported course_lib module, is_late, line) for every import in a file (loads by name count as late)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    # module-level NAME = "course_lib...." constants (also annotated)
    constants = {}
    for n in tree.body:
        targets_ = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
        value = getattr(n, "value", None)
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            constants.update({t.id: value.value for t in targets_ if isinstance(t, ast.Name)})
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            loaded = _loaded_name(node, constants)
            if loaded and (loaded == "course_lib" or loaded.startswith("course_lib.")):
                found.append((loaded, True, node.lineno))
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t == "course_lib" or t.startswith("course_lib."):
                found.append((t, id(node) not in top, node.lineno))
    return found


def graph() -> tuple[dict[str, set[str]], list[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    late = []
    for m, path in files.items():
        for t, is_late, line in imports(path):
            # "from course_lib import data" names a module; "from .config import X" names one too
            target = t if t in files else t.rsplit(".", 1)[0]
            if target not in files or target == m or target == "course_lib":
                continue
            if LOADED_BY_NAME.get((m, target)) == "plugin":
                continue  # the loaded module depends on the loader, not the other way (test_plugin_loads_...)
            edges[m].add(target)
            if is_late and (m, target) not in ALLOWED_LATE and (m, target) not in LOADED_BY_NAME:
                late.append(f"{path.relative_to(PKG.parent)}:{line} imports {target} inside a function")
    return edges, sorted(set(late))


def layer(m: str) -> str:
    if m.startswith("course_lib.util"):
        return "util"
    if m.startswith(MACHINERY):
        return "machinery"
    if m.startswith(OUTER):
        return "outer"
    return "lesson"


def test_no_import_cycles():
    edges, _ = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_go_one_way():
    edges, _ = graph()
    bad = []
    for m, targets in edges.items():
        for t in targets:
            if layer(m) == "lesson" and layer(t) in ("machinery", "outer"):
                bad.append(f"lesson module {m} imports {t}")
            if layer(m) == "machinery" and layer(t) == "outer":
                bad.append(f"{m} imports the study or harness {t}")
            if layer(m) == "util" and layer(t) != "util" and t != "course_lib.config":
                bad.append(f"util module {m} imports {t}")
    assert not bad, "\n".join(sorted(bad))


def test_no_late_imports_of_the_course_itself():
    _, late = graph()
    assert not late, "\n".join(sorted(late))


def test_plugin_loads_are_registrations_of_a_later_lesson():
    """A "plugin" load by name is the loaded module registering itself with the loader: it imports the loader at
    its top, and the loader works without it (the pair is listed, so no other module is loaded by name unseen)."""
    for (loader, loaded), kind in LOADED_BY_NAME.items():
        assert (PKG.parent / (loaded.replace(".", "/") + ".py")).exists(), f"{loaded} does not exist"
        found = [(t, late) for t, late, _ in imports(PKG.parent / (loader.replace(".", "/") + ".py"))]
        assert (loaded, True) in found, f"{loader} no longer loads {loaded} by name: drop it from LOADED_BY_NAME"
        if kind == "plugin":
            back = [t for t, late, _ in imports(PKG.parent / (loaded.replace(".", "/") + ".py")) if not late]
            assert loader in back or any(t.startswith(loader + ".") for t in back), f"{loaded} does not import {loader}"


def test_the_checker_sees_cycles_and_late_imports(tmp_path, monkeypatch):
    """The test above can fail: a fake package with a cycle and a late import is caught."""
    pkg = tmp_path / "course_lib"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "c.py").write_text("from .train import run\n")
    (pkg / "d.py").write_text("import importlib\nNAME = 'course_lib.a'\ndef f():\n    importlib.import_module(NAME)\n")
    (pkg / "train" / "run.py").write_text("from .. import a\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    edges, late = graph()
    assert edges["course_lib.a"] == {"course_lib.b"} and "course_lib.a" in edges["course_lib.b"]
    assert late and "inside a function" in late[0]
    assert "course_lib.a" in edges["course_lib.d"] and any(x.startswith("course_lib/d.py:4") for x in late)
    assert layer("course_lib.c") == "lesson" and "course_lib.train.run" in edges["course_lib.c"]
    assert layer("course_lib.studies.x") == "outer" and layer("course_lib.harness.gpu_check") == "outer"
