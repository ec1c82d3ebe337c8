"""Rewrite a checkpoint's metadata for the one-world names, in place; the tensors stay bit-identical.

Before the course had one data collection, checkpoints named the collection's teacher ``"world"``
(``--teacher world``) and recorded a ``data`` setting (``--data world``). Now the embedded teacher
*is* that teacher and ``--data`` is gone. For each file given this script:

* drops ``data`` from the ``recipe`` settings (and from the recipe of the stage it started from);
* renames ``teacher: world`` to ``teacher: embedded`` wherever it appears (recipe, provenance, ...);
* renames ``recipe_file: teacher_world.yaml`` to ``teacher_embedded.yaml``;
* adds ``data`` (``world``), ``paired_targets`` and, with ``--teacher``, ``teacher``.

It reads the tensors with ``safe_open``, writes them back with ``save_file`` and checks that every
tensor is equal (values and dtype) to what was read. Usage::

    python scripts/oneworld_metadata.py data/weights/NAME.safetensors --paired-targets none --teacher embedded
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def fix_recipe(record: dict | None) -> dict | None:
    """A ``recipe`` record without the ``data`` setting and with ``teacher: embedded`` for ``world``."""
    if record is None:
        return None
    settings = record["settings"]
    settings.pop("data", None)
    if settings.get("teacher") == "world":
        settings["teacher"] = "embedded"
    record["init"] = fix_recipe(record.get("init"))
    return record


def fix_teacher(obj):
    """Any JSON value with ``"teacher": "world"`` renamed to ``"embedded"``, at any depth."""
    if isinstance(obj, dict):
        return {k: ("embedded" if k == "teacher" and v == "world" else fix_teacher(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fix_teacher(v) for v in obj]
    return obj


def rewrite(path: Path, paired_targets: str, teacher: str | None = None, data: str = "world") -> dict[str, str]:
    """Rewrite ``path``'s metadata in place (tensors unchanged, checked); returns the new metadata."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    new = {}
    for key, value in meta.items():
        if key == "recipe":
            value = json.dumps(fix_recipe(json.loads(value)))
        elif key == "recipe_file" and value == "teacher_world.yaml":
            value = "teacher_embedded.yaml"
        elif key == "teacher" and value == "world":
            value = "embedded"
        elif value[:1] in "{[":
            try:
                value = json.dumps(fix_teacher(json.loads(value)))
            except json.JSONDecodeError:
                pass
        new[key] = value
    new.update(data=data, paired_targets=paired_targets)
    if teacher:
        new["teacher"] = teacher
    save_file(tensors, str(path), metadata=new)
    with safe_open(str(path), framework="pt") as f:
        if set(f.keys()) != set(tensors) or not all(
                torch.equal(f.get_tensor(k), v) and f.get_tensor(k).dtype == v.dtype for k, v in tensors.items()):
            raise RuntimeError(f"{path}: tensors changed while rewriting the metadata")
    return new


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--paired-targets", required=True, choices=["none", "exact"])
    p.add_argument("--teacher", default=None, choices=["embedded", "hub"], help="the tier it was made with, if any")
    p.add_argument("--data", default="world")
    a = p.parse_args(argv)
    for path in a.files:
        new = rewrite(path, a.paired_targets, a.teacher, a.data)
        print(f"{path}: data={new['data']} paired_targets={new['paired_targets']} teacher={new.get('teacher', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
