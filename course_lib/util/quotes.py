"""Numbers quoted in a lesson's prose must come from the results files it cites.

A lesson either renders measured numbers from ``data/results/*.json`` in code cells, or quotes
them in Markdown. A Markdown cell that quotes measurements says where they come from with a
comment anywhere in the cell::

    <!-- results: data/results/inversion.json, data/results/student_world.json -->

and then every number it quotes - every decimal number, and every number followed by a unit
(``dB``, ``ms``, ``%``, ``×``) - must equal, at the precision it is written with, some number
of those files (or 100 times one, for a fraction quoted as a percentage). A cell without the
comment may not quote ``dB``, ``ms`` or ``×`` figures at all. Claims of papers (not measured
here) are listed as such, ``<!-- paper: 45 ms, 12 × -->``, and then accepted as written. :func:`stale_quotes` finds the
violations; ``tests/test_lessons_quotes.py`` runs it over every lesson, so a results file that
changes without its lesson (or a number typed by hand) fails the suite.

Not checked: code (fenced blocks and inline code), formulas between ``$``, links, arXiv ids and
section/exercise numbers ("Exercise 5.2", "lesson 04", "section 3.1").
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterable, Iterator

#: ``<!-- results: a.json, b.json -->``
MARK = re.compile(r"<!--\s*results:\s*(.*?)\s*-->", re.S)
_UNIT = r"(?:dB|ms|%|×)"
#: ``<!-- paper: 45 ms, 12 × -->``: numbers a paper claims, quoted as claims
PAPER = re.compile(r"<!--\s*paper:\s*(.*?)\s*-->", re.S)
#: a number, optionally signed, optionally followed by a unit
NUMBER = re.compile(r"(?<![\w.\-/])([+\-−]?\d+(?:\.\d+)?)(?:\s*(" + _UNIT + r"))?(?![\w.]*\d)")
#: what is never a measurement: code, formulas, links, ids, numbered parts of the course, comments
_SKIP = [re.compile(p, re.S) for p in (
    r"```.*?```", r"`[^`]*`", r"\$[^$]*\$", r"\]\([^)]*\)", r"https?://\S+",
    r"<!--r\s.*?<!--/r-->",  # rendered from a results file (course_lib.util.render checks these)
    r"<!--.*?-->",
    r"\b\d{4}\.\d{4,5}\b",  # arXiv ids
    r"(?i)\b(?:exercises?|lessons?|sections?|questions?|steps?|Q|figure|table|part|cell|issue)\s+\d+(?:\.\d+)*",
)]


def _leaves(obj) -> Iterator[float]:
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        if math.isfinite(obj):
            yield float(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)
    elif isinstance(obj, str):  # numbers inside stored tables or commands' text
        for m in re.finditer(r"[+\-]?\d+(?:\.\d+)?(?:[eE][+\-]?\d+)?", obj):
            yield float(m.group())


def numbers_of(paths: Iterable[str | Path], root: str | Path = ".") -> list[float]:
    """Every number in the JSON files (recursively, strings included)."""
    out: list[float] = []
    for p in paths:
        out.extend(_leaves(json.loads((Path(root) / p).read_text())))
    return out


def prose(text: str) -> str:
    """The cell's text without code, formulas, links, ids and numbered parts (see the module doc)."""
    for pat in _SKIP:
        text = pat.sub(" ", text)
    return text


def quoted(text: str) -> list[tuple[str, str]]:
    """``(number, unit)`` pairs quoted in ``text``'s prose; unit ``""`` for bare decimals. Bare
    integers are not measurements (counts, sizes, years) unless a unit follows."""
    out = []
    for m in NUMBER.finditer(prose(text)):
        num, unit = m.group(1), m.group(2) or ""
        if unit or "." in num:
            out.append((num, unit))
    return out


def matches(number: str, values: Iterable[float]) -> bool:
    """Is ``number`` (as written) some value, rounded to the digits it is written with (or a fraction x 100)?"""
    x = float(number.replace("−", "-"))
    decimals = len(number.split(".")[1]) if "." in number else 0
    tol = 0.5 * 10.0 ** -decimals + 1e-9
    return any(abs(v - x) <= tol or abs(100 * v - x) <= tol or abs(abs(v) - abs(x)) <= tol for v in values)


def stale_quotes(text: str, root: str | Path = ".", units_needing_source: str = "dB|ms|×") -> list[str]:
    """The problems of one Markdown cell: quoted numbers not in its cited results, cited files that
    do not exist, or measurements quoted without a citation. Empty when the cell is fine."""
    cited = [p.strip() for m in MARK.finditer(text) for p in m.group(1).split(",") if p.strip()]
    claims = {n for m in PAPER.finditer(text) for n, _ in quoted(m.group(1).replace(",", " , "))}
    if not cited:
        needy = [f"{n} {u}" for n, u in quoted(text)
                 if u and re.fullmatch(units_needing_source, u) and n not in claims]
        return [f"quotes {q} without a <!-- results: ... --> source" for q in needy]
    missing = [p for p in cited if not (Path(root) / p).is_file()]
    if missing:
        return [f"cites {p}, which does not exist" for p in missing]
    values = numbers_of(cited, root)
    return [f"{n}{' ' + u if u else ''} is not in {', '.join(cited)}" for n, u in quoted(text)
            if n not in claims and not matches(n, values)]


def notebook_problems(path: str | Path, root: str | Path = ".") -> list[str]:
    """:func:`stale_quotes` for every Markdown cell of a notebook, as ``"NAME cell ID: problem"`` lines
    (``ID`` the cell's id, which stays when cells are inserted before it; its index if it has none)."""
    nb = json.loads(Path(path).read_text())
    out = []
    for k, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        out += [f"{Path(path).name} cell {cell.get('id', k)}: {p}" for p in stale_quotes(src, root)]
    return out
