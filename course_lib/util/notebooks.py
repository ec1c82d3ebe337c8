"""Student notebooks from solution notebooks (the single source), and the drift check.

``solutions/NN_name.ipynb`` is what authors edit. Code between the markers::

    def exposure(image, ev):
        ### BEGIN SOLUTION
        return image * 2.0 ** ev
        ### END SOLUTION

becomes, in ``notebooks/NN_name.ipynb``::

    def exposure(image, ev):
        raise NotImplementedError("Exercise 0.1")

at the marker's indentation, so the signature and docstring stay. Exercises are
numbered ``<lesson>.<k>`` in order of appearance, where the lesson number is the
file name's ``NN`` prefix; ``### BEGIN SOLUTION (Exercise 3.2)`` gives a label
explicitly. In markdown cells, text between ``<!-- BEGIN ANSWER -->`` and
``<!-- END ANSWER -->`` becomes ``*Your answer here.*``.

Both kinds of notebook are written with outputs and execution counts stripped.
Markdown markers ``<!--r FILE POINTER FORMAT-->value<!--/r-->`` get their values from
``data/results/`` in both notebooks (:mod:`course_lib.util.render`).

``python -m course_lib notebooks`` regenerates; ``--check`` exits non-zero when
any student notebook differs from what its solution would generate, or a rendered number
differs from its results file.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from .. import config
from ..config import REPO_ROOT
from .render import RenderError, render_notebook

SOLUTIONS_DIR = REPO_ROOT / "solutions"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
README = REPO_ROOT / "README.md"

# Links that name the published repository: the Colab badges and the Colab install cell.
_COLAB = re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w./-]+?/notebooks/")
_PIP = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+?(?=[\"'@#\s]|$)")

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION(?:\s*\((?P<label>[^)]*)\))?\s*$")
_END = re.compile(r"^[ \t]*### END SOLUTION\s*$")
_ANSWER = re.compile(r"<!--\s*BEGIN ANSWER\s*-->.*?<!--\s*END ANSWER\s*-->", re.S)
ANSWER_PLACEHOLDER = "*Your answer here.*"


class NotebookError(ValueError):
    """A solution notebook's markers are malformed."""


def lesson_number(path: Path) -> str:
    """``solutions/03_student.ipynb`` -> ``"3"`` (the leading digits, without zeros)."""
    m = re.match(r"(\d+)", Path(path).name)
    return str(int(m.group(1))) if m else "0"


def strip_code(source: str, lesson: str, counter: list[int], where: str = "") -> str:
    """Replace every BEGIN/END SOLUTION region of one code cell with a stub.

    Args:
        source: the cell's source text.
        lesson: lesson number used in the exercise label.
        counter: one-element list holding the last exercise number (updated).
        where: text for error messages (file and cell).

    Returns:
        The cell source with each solution region replaced by
        ``raise NotImplementedError("Exercise L.k")``.
    """
    out: list[str] = []
    inside = False
    for lineno, line in enumerate(source.split("\n"), 1):
        begin = _BEGIN.match(line)
        if begin:
            if inside:
                raise NotebookError(f"{where} line {lineno}: nested '### BEGIN SOLUTION'")
            inside = True
            counter[0] += 1
            label = begin.group("label") or f"Exercise {lesson}.{counter[0]}"
            out.append(f'{begin.group("indent")}raise NotImplementedError({label!r})')
            continue
        if _END.match(line):
            if not inside:
                raise NotebookError(f"{where} line {lineno}: '### END SOLUTION' without BEGIN")
            inside = False
            continue
        if not inside:
            out.append(line)
    if inside:
        raise NotebookError(f"{where}: '### BEGIN SOLUTION' is never closed")
    return "\n".join(out)


def publish_links(text: str, repo_url: str | None = None, branch: str | None = None) -> str:
    """Point every Colab badge and ``%pip install ... @ git+<url>`` in ``text`` at ``repo_url``.

    ``config.REPO_URL`` is the one place that names where the course is published; this is how
    the notebooks and README follow it (``python -m course_lib notebooks`` applies it).
    """
    repo_url = repo_url or config.REPO_URL
    branch = branch or config.REPO_BRANCH
    if not repo_url.startswith("https://github.com/"):
        raise ValueError(f"REPO_URL must be a https://github.com/OWNER/NAME address (Colab opens those), not {repo_url!r}")
    slug = repo_url.removeprefix("https://github.com/").strip("/")
    text = _COLAB.sub(f"https://colab.research.google.com/github/{slug}/blob/{branch}/notebooks/", text)
    return _PIP.sub(f"git+https://github.com/{slug}", text)


def _publish(nb: dict) -> dict:
    nb = copy.deepcopy(nb)
    for cell in nb.get("cells", []):
        cell["source"] = publish_links(_source(cell))
    return nb


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_outputs(nb: dict) -> dict:
    """Return a copy of a notebook dict with outputs, counts and volatile metadata removed."""
    nb = copy.deepcopy(nb)
    for cell in nb.get("cells", []):
        cell["source"] = _source(cell)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        meta = cell.get("metadata", {})
        for key in ("execution", "collapsed", "scrolled", "ExecuteTime"):
            meta.pop(key, None)
        cell["metadata"] = meta
    meta = nb.setdefault("metadata", {})
    meta.pop("widgets", None)
    return nb


def make_student(nb: dict, lesson: str, where: str = "") -> dict:
    """The student version of a solution notebook dict (outputs stripped)."""
    nb = strip_outputs(nb)
    counter = [0]
    for i, cell in enumerate(nb["cells"]):
        src = cell["source"]
        if cell["cell_type"] == "code":
            cell["source"] = strip_code(src, lesson, counter, where=f"{where} cell {i}")
        elif cell["cell_type"] == "markdown":
            cell["source"] = _ANSWER.sub(ANSWER_PLACEHOLDER, src)
    return nb


_DEF = re.compile(r"^\s*def\s+(\w+)\s*\(")
#: The README's generated exercise table sits between these markers.
EXERCISES_BEGIN, EXERCISES_END = "<!-- BEGIN EXERCISES -->", "<!-- END EXERCISES -->"


def exercises(nb: dict, lesson: str) -> list[tuple[str, str]]:
    """The exercises of a solution notebook, in order: ``(label, function written)``.

    The function is the last ``def`` above the ``### BEGIN SOLUTION`` marker in its cell
    (``"-"`` when there is none); labels are numbered as :func:`strip_code` numbers them.
    """
    out, k = [], 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        name = "-"
        for line in _source(cell).split("\n"):
            d = _DEF.match(line)
            if d:
                name = d.group(1)
            begin = _BEGIN.match(line)
            if begin:
                k += 1
                out.append((begin.group("label") or f"Exercise {lesson}.{k}", name))
    return out


def exercise_table(solutions: Path = SOLUTIONS_DIR) -> str:
    """Markdown: per lesson, how many exercises and what the student writes (README)."""
    rows, total = [], 0
    for sol in sorted(Path(solutions).glob("[0-9]*.ipynb")):
        found = exercises(load(sol), lesson_number(sol))
        if not found and sol.stem.endswith("_lab"):  # optional lab notes (NNx_name_lab) without exercises
            continue
        total += len(found)
        what = ", ".join(f"`{name}`" for _, name in found) or "-"
        rows.append(f"| {sol.name.split('_')[0]} | {len(found)} | {what} |")  # 03x: lab notes
    return "\n".join(["| lesson | exercises | what the student writes |", "|---|---:|---|", *rows,
                      f"| all | {total} | |"])


def with_exercise_table(text: str, solutions: Path = SOLUTIONS_DIR) -> str:
    """``text`` with the part between the README's exercise markers replaced by :func:`exercise_table`."""
    if EXERCISES_BEGIN not in text or EXERCISES_END not in text:
        return text
    head, rest = text.split(EXERCISES_BEGIN, 1)
    _, tail = rest.split(EXERCISES_END, 1)
    return f"{head}{EXERCISES_BEGIN}\n{exercise_table(solutions)}\n{EXERCISES_END}{tail}"


def dumps(nb: dict) -> str:
    """Serialise a notebook the way Jupyter does (1-space indent, trailing newline)."""
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def has_outputs(nb: dict) -> bool:
    """True when any code cell of the notebook carries outputs or an execution count."""
    return any(
        c.get("cell_type") == "code" and (c.get("outputs") or c.get("execution_count") is not None)
        for c in nb.get("cells", [])
    )


def generate(check: bool = False, solutions: Path = SOLUTIONS_DIR, notebooks: Path = NOTEBOOKS_DIR,
             readme: Path | None = None) -> list[str]:
    """Write (or, with ``check``, compare) every student notebook.

    Solutions and notebooks get their Colab links from ``config.REPO_URL`` (:func:`publish_links`),
    and so does ``readme`` when given.

    Args:
        check: do not write; report notebooks that differ from their solution's generation.
        solutions: folder of solution notebooks.
        notebooks: folder of student notebooks.
        readme: a README whose Colab badges follow ``config.REPO_URL`` too (the CLI passes README.md).

    Returns:
        A list of problems (``check``) or of written paths (otherwise).
    """
    results: list[str] = []
    sources = sorted(Path(solutions).glob("[0-9]*.ipynb"))
    expected_names = {p.name for p in sources}
    for sol in sources:
        raw = load(sol)
        try:
            nb = _publish(render_notebook(raw, where=sol.name))
        except RenderError as exc:
            raise NotebookError(str(exc)) from None
        student = dumps(make_student(nb, lesson_number(sol), where=str(sol.name)))
        target = Path(notebooks) / sol.name
        if check:
            if dumps(strip_outputs(_publish(raw))) != dumps(strip_outputs(raw)):
                results.append(f"{sol}: its Colab links do not name config.REPO_URL; run python -m course_lib notebooks")
            if dumps(strip_outputs(render_notebook(raw))) != dumps(strip_outputs(raw)):
                results.append(f"{sol}: a number in its Markdown differs from its results file; "
                               "run python -m course_lib notebooks")
            if has_outputs(nb):
                results.append(f"{sol}: has outputs; strip them (python -m course_lib notebooks strips both)")
            if not target.exists():
                results.append(f"{target}: missing; run python -m course_lib notebooks")
            elif target.read_text(encoding="utf-8") != student:
                results.append(f"{target}: differs from what {sol.name} generates; run python -m course_lib notebooks")
        else:
            sol_text = dumps(strip_outputs(nb))
            if sol.read_text(encoding="utf-8") != sol_text:
                sol.write_text(sol_text, encoding="utf-8")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.read_text(encoding="utf-8") != student:
                target.write_text(student, encoding="utf-8")
                results.append(str(target))
    for extra in sorted(Path(notebooks).glob("[0-9]*.ipynb")):
        if check and extra.name not in expected_names:
            results.append(f"{extra}: has no solution notebook")
    if readme is not None and Path(readme).exists():
        text = Path(readme).read_text(encoding="utf-8")
        fixed = with_exercise_table(publish_links(text), solutions)
        if fixed != text:
            if check:
                results.append(f"{readme}: its Colab links do not name config.REPO_URL or its exercise table is "
                               "stale; run python -m course_lib notebooks")
            else:
                Path(readme).write_text(fixed, encoding="utf-8")
                results.append(str(readme))
    return results
