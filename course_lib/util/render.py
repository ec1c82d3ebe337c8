"""Measured numbers written into a lesson's Markdown from the results files.

A lesson's prose quotes what was measured. Rather than typing a number, an author writes
where it comes from, and ``python -m course_lib notebooks`` writes the value in, in the
solution *and* the student notebook, so a lesson opened on GitHub or in a Colab preview
reads complete without running::

    The student reaches <!--r student_world.json /heldout/psnr .2f-->27.54<!--/r--> dB.

The comment is ``<!--r FILE POINTER FORMAT-->``:

- ``FILE``: a file under ``data/results/`` (no spaces);
- ``POINTER``: a JSON pointer into it (``/rows/0/psnr``). A segment ``[key=value&key2=value2]``
  picks the first element of a list whose fields equal those values (``/rows/[method=identity&group=all]/psnr``);
  ``~1`` is a ``/`` and ``~0`` a ``~`` inside a segment, as in RFC 6901. Two pointers joined by
  `` minus `` or `` over `` give their difference or ratio (``/a minus /b``);
- ``FORMAT``: a Python format spec (``.2f``, ``+.1f``, ``d``, ``.0%``, ``s``), or a verdict
  ``?NEGATIVE|POSITIVE`` (``?worse|better``) that writes one word by the value's sign
  (``?below|above|equal`` for three).

The text up to ``<!--/r-->`` is replaced. :func:`render_notebook` does a notebook;
``python -m course_lib notebooks --check`` reports any value that no longer matches its file
(``tests/test_lessons_quotes.py`` runs the check too), and a marker whose file or pointer does not
exist is an error, so a results file that changes without its lesson fails the suite.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from ..config import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "data" / "results"

#: ``<!--r FILE POINTER FORMAT-->TEXT<!--/r-->``
MARK = re.compile(r"<!--r\s+(?P<spec>.*?)\s*-->(?P<text>.*?)<!--/r-->", re.S)


class RenderError(ValueError):
    """A marker names a file, pointer or format that does not resolve."""


@lru_cache(maxsize=None)
def _load(path: str) -> object:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _segment(s: str) -> str:
    return s.replace("~1", "/").replace("~0", "~")


def resolve(doc: object, pointer: str) -> object:
    """The value at ``pointer`` (see the module doc) in the parsed JSON ``doc``."""
    if not pointer.startswith("/"):
        raise RenderError(f"pointer {pointer!r} must start with '/'")
    node = doc
    for raw in pointer[1:].split("/"):
        seg = _segment(raw)
        if seg.startswith("[") and seg.endswith("]"):
            want = dict(kv.split("=", 1) for kv in seg[1:-1].split("&"))
            if not isinstance(node, list):
                raise RenderError(f"{seg} selects from a list, found {type(node).__name__}")
            hits = [x for x in node if isinstance(x, dict) and all(str(x.get(k)) == v for k, v in want.items())]
            if not hits:
                raise RenderError(f"no element matches {seg}")
            node = hits[0]
        elif isinstance(node, list):
            try:
                node = node[int(seg)]
            except (ValueError, IndexError):
                raise RenderError(f"no index {seg!r} in a list of {len(node)}") from None
        elif isinstance(node, dict):
            if seg not in node:
                raise RenderError(f"no key {seg!r} (keys: {', '.join(map(str, list(node)[:8]))})")
            node = node[seg]
        else:
            raise RenderError(f"cannot index a {type(node).__name__} with {seg!r}")
    return node


def fmt(value: object, spec: str) -> str:
    """``value`` written with a format spec or a ``?neg|pos[|zero]`` verdict."""
    if spec.startswith("?"):
        words = spec[1:].split("|")
        if len(words) not in (2, 3) or not isinstance(value, (int, float)):
            raise RenderError(f"verdict {spec!r} needs 2 or 3 words and a number")
        if value == 0 and len(words) == 3:
            return words[2]
        return words[1] if value > 0 else words[0]
    try:
        return format(value, spec)
    except (ValueError, TypeError) as exc:
        raise RenderError(f"cannot format {value!r} with {spec!r}: {exc}") from None


def value_of(spec: str, results_dir: Path = RESULTS_DIR) -> str:
    """The text a marker's ``spec`` (``FILE POINTER FORMAT``) renders to."""
    parts = spec.split()
    if len(parts) < 3:
        raise RenderError(f"marker {spec!r} needs FILE POINTER FORMAT")
    file, form = parts[0], parts[-1]
    expr = spec[len(file):].strip()[: -len(form)].strip()
    path = Path(results_dir) / file
    if not path.is_file():
        raise RenderError(f"{file} is not a results file (looked in data/results/)")
    doc = _load(str(path))
    m = re.fullmatch(r"(.*?)\s+(minus|over)\s+(/.*)", expr)
    if m:
        a, b = resolve(doc, m.group(1)), resolve(doc, m.group(3))
        if not all(isinstance(x, (int, float)) for x in (a, b)):
            raise RenderError(f"{spec!r}: {m.group(2)} needs two numbers")
        value = a - b if m.group(2) == "minus" else a / b
    else:
        value = resolve(doc, expr)
    return fmt(value, form)


def render_text(text: str, results_dir: Path = RESULTS_DIR, where: str = "") -> str:
    """``text`` with every marker's value written in; raises :class:`RenderError` naming ``where``."""
    def sub(m: re.Match) -> str:
        try:
            new = value_of(m.group("spec"), results_dir)
        except RenderError as exc:
            raise RenderError(f"{where}: <!--r {m.group('spec')}-->: {exc}") from None
        return f"<!--r {m.group('spec')}-->{new}<!--/r-->"
    return MARK.sub(sub, text)


def render_notebook(nb: dict, results_dir: Path = RESULTS_DIR, where: str = "") -> dict:
    """A copy of ``nb`` with every Markdown cell's markers rendered (sources kept as one string
    or a list of lines, as they were)."""
    out = dict(nb)
    cells = []
    for k, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "markdown":
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            if "<!--r" in src:
                new = render_text(src, results_dir, where=f"{where} cell {cell.get('id', k)}")
                cell = dict(cell, source=new if isinstance(cell["source"], str) else new.splitlines(True))
        cells.append(cell)
    out["cells"] = cells
    return out


def clear_cache() -> None:
    """Forget loaded results files (after one was rewritten in the same process)."""
    _load.cache_clear()
