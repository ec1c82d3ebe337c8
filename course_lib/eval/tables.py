"""The one table writer: rows of scores as markdown, CSV or JSON, written atomically.

A table is a list of row dicts (keys of :data:`course_lib.eval.score.METRICS`, or any others)
and a list of columns: a key, or ``(key, header)`` to override the header. Numbers are
formatted per key (:data:`~course_lib.eval.score.METRICS`; other keys: 2 decimals), ``nan`` is
"-". Files are written through :func:`course_lib.util.files.atomic_write` and an existing file
is never replaced unless ``overwrite=True`` (the commands' ``--overwrite``); every destination
is checked before anything is written.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shlex
from pathlib import Path
from typing import Callable, Sequence, Union

from ..util.files import FileExists, atomic_write
from .score import METRICS

Column = Union[str, tuple]


def _spec(column: Column) -> tuple[str, str, str]:
    """``(key, header, format)`` of a column."""
    key, header = (column, None) if isinstance(column, str) else (column[0], column[1])
    m = METRICS.get(key)
    return key, header or (m.header if m else key), m.fmt if m else ""


def cell(value, fmt: str = "") -> str:
    """One value as table text: ``nan`` -> "-", numbers by ``fmt`` (default 2 decimals), the rest ``str``."""
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not fmt:
        fmt = "{}" if isinstance(value, int) else "{:.2f}"
    return fmt.format(value)


def markdown(rows: Sequence[dict], columns: Sequence[Column], title: str | None = None,
             notes: Sequence[str] = ()) -> str:
    """A markdown table (numeric columns right-aligned), an optional title line above and notes below."""
    specs = [_spec(c) for c in columns]
    numeric = [bool(rows) and isinstance(rows[0].get(k), (int, float)) and not isinstance(rows[0].get(k), bool)
               for k, _, _ in specs]
    lines = [title, ""] if title else []
    lines += ["| " + " | ".join(h for _, h, _ in specs) + " |",
              "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(cell(r.get(k, math.nan), f) for k, _, f in specs) + " |" for r in rows]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines)


def without(columns: Sequence[Column], keys: Union[str, Sequence[str]]) -> list[Column]:
    """``columns`` less those whose key is in ``keys``, in their order.

    For a table shown without some of its columns, e.g. a run whose latencies are quoted from
    another run only: ``markdown(rows, without(columns, ("ms_1080p", "speedup")))``.
    """
    drop = {keys} if isinstance(keys, str) else set(keys)
    return [c for c in columns if _spec(c)[0] not in drop]


def refer(rows: Sequence[dict], methods: Sequence[str], keys: Sequence[str], text: str) -> list[dict]:
    """Copies of ``rows`` in which the rows whose ``"method"`` starts with one of ``methods`` hold
    ``text`` (e.g. ``"see lesson 04"``) under ``keys`` instead of their values.

    For a table that measured, on the side, something another lesson quotes: the number is shown
    once, where that lesson quotes it, and here the table points there. The rows given are not changed.
    """
    prefixes = tuple(methods)
    return [{**r, **{k: text for k in keys}} if str(r.get("method", "")).startswith(prefixes) else dict(r)
            for r in rows]


def command_line(prog: str, args, skip: Sequence[str] = ("overwrite",)) -> str:
    """The command line that reproduces a run, for a results file's ``"command"``.

    Args:
        prog: the subcommand, e.g. ``"vsd-study"`` (after ``python -m course_lib``).
        args: the parsed options (``argparse.Namespace``): every one is spelled out, sorted by name,
            so a later change of a default does not change what the record means; values are
            shell-quoted, ``True`` flags written bare, ``None`` and ``False`` left out.
        skip: option names (``dest``) to leave out, e.g. output-only ones.

    Returns:
        ``"python -m course_lib PROG --opt value ..."``, safe to paste into a shell.
    """
    parts = [f"python -m course_lib {prog}"]
    for k, v in sorted(vars(args).items()):
        if v is None or v is False or k in skip:
            continue
        flag = "--" + k.replace("_", "-")
        parts.append(flag if v is True else f"{flag} {shlex.quote(str(v))}")
    return " ".join(parts)


def csv_text(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """CSV with the column keys as header and full-precision values (``csv`` module dialect)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[_spec(c)[0] for c in columns], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def json_text(rows, indent: int | None = None) -> str:
    """Rows (or any result dict) as JSON, full precision (``NaN``/``Infinity`` as Python writes them)."""
    return json.dumps(rows, indent=indent)


Content = Union[str, Callable[[Path], None]]


def check_free(paths: Sequence[str | os.PathLike], overwrite: bool = False) -> None:
    """Raise :class:`~course_lib.util.files.FileExists` if a destination exists and ``overwrite`` is not set.

    Call it before a long evaluation so that a run is not wasted on an output it may not write.
    """
    if overwrite:
        return
    for p in map(Path, paths):
        if p.exists() or p.is_symlink():
            raise FileExists(f"{p}: exists (use --overwrite to replace it)")


def write(files: dict[str | os.PathLike, Content], overwrite: bool = False) -> list[Path]:
    """Write several outputs atomically: path -> text, or ``fn(temporary path)`` that writes the file.

    Every destination is checked first (:func:`check_free`), so either all are written or none.

    Returns:
        the paths written, in order.
    """
    check_free(list(files), overwrite)
    written = []
    for path, content in files.items():
        if isinstance(content, str):
            def fill(tmp: Path, text: str = content) -> None:
                with open(tmp, "w", encoding="utf-8", newline="") as f:
                    f.write(text)
        else:
            fill = content
        written.append(atomic_write(path, fill, overwrite=overwrite))
    return written


def write_table(rows: Sequence[dict], columns: Sequence[Column], stem: str | os.PathLike,
                formats: Sequence[str] = ("csv", "md"), markdown_text: str | None = None,
                overwrite: bool = False) -> list[Path]:
    """Write one table as ``stem.csv``, ``stem.md`` and/or ``stem.json``.

    Args:
        markdown_text: the ``.md`` content (default: :func:`markdown` of ``rows``).
    """
    stem = Path(stem)
    makers = {"csv": lambda: csv_text(rows, columns), "json": lambda: json_text(list(rows), indent=1) + "\n",
              "md": lambda: (markdown_text if markdown_text is not None else markdown(rows, columns)) + "\n"}
    unknown = set(formats) - set(makers)
    if unknown:
        raise ValueError(f"unknown table format(s) {sorted(unknown)}; known: csv, md, json")
    return write({stem.with_name(f"{stem.name}.{fmt}"): makers[fmt]() for fmt in formats}, overwrite=overwrite)
