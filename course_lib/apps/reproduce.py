"""``python -m course_lib reproduce``: every shipped checkpoint from its recipe file.

A recipe (``course_lib/recipes/NAME.yaml``) names one file of ``data/weights/`` and the stages
that make it: each stage a training command and **only the settings that differ from that
command's defaults** (its settings dataclass). A stage with a ``name`` writes
``DIR/<name>.safetensors``, which a later stage can start from (``init: <name>``); the last stage
writes ``DIR/<checkpoint>``. ``processes: N`` runs a stage under ``accelerate launch`` with N
processes (``--batch-size`` is per process).

``reproduce --list`` prints each shipped file with its commands; ``reproduce NAME`` runs them.
Stages run in FULL mode (a recipe holds what differs from the FULL defaults). Rerunning continues: a stage whose output is complete is skipped, one with a saved state is
resumed (``--resume``), and nothing finished is overwritten. Every checkpoint a trainer writes
records its full settings under ``recipe`` and, when run from here, the recipe's file name under
``recipe_file`` (``tests/test_recipes.py`` ties each shipped file to its recipe).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import config
from ..train.common import RUN_ONLY, Floats, settings_of

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

#: command -> (module, settings dataclass name) of every trainer a recipe can use.
TRAINERS = {"train-student": ("course_lib.train.student", "TrainArgs"),
            "train-teacher": ("course_lib.train.teacher", "TrainConfig"),
            "train-vsd": ("course_lib.train.vsd", "VSDArgs"),
            "train-align": ("course_lib.train.align", "AlignArgs"),
            "train-inverter": ("course_lib.train.inverter", "InverterArgs")}
#: The one stage that is not training: LPIPS's linear layers, converted from the lpips package.
CONVERT = "convert-lpips"


class RecipeError(ValueError):
    """A recipe that cannot be read or run (unknown name, command or setting)."""


@dataclasses.dataclass
class Stage:
    """One command of a recipe, resolved: its settings (a trainer's dataclass) and output path."""

    command: str
    given: dict  # the settings the file names (init as written)
    settings: Any  # the trainer's settings dataclass, every field (None for the conversion)
    out: Path
    processes: int = 1

    def argv(self) -> list[str]:
        """The command line's options: the settings the file names, then ``--out`` and ``--recipe-file``."""
        args = []
        for key, value in self.given.items():
            value = getattr(self.settings, key)
            flag = "--" + key.replace("_", "-")
            if key == "init" and isinstance(value, str) and value.endswith(".safetensors"):
                value = _short(value)
            if isinstance(value, bool):
                args += [flag] if value else [flag, "false"]
            elif isinstance(value, (tuple, list)):
                args += [flag, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
            else:
                args += [flag, str(value)]
        return args + ["--out", _short(self.out), "--recipe-file", _short(self.settings.recipe_file)]

    def command_line(self) -> list[str]:
        """The whole command, as ``reproduce`` runs it."""
        if self.command == CONVERT:
            return [sys.executable, "-c", "from course_lib.perceptual import export_linear_layers; "
                                          f"export_linear_layers({str(self.out)!r})"]
        module = TRAINERS[self.command][0]
        if self.processes > 1:
            return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                    str(self.processes), "-m", module, *self.argv()]
        return [sys.executable, "-m", "course_lib", self.command, *self.argv()]

    def shown(self) -> str:
        """The command as a person types it."""
        if self.command == CONVERT:
            return f"python -c {shlex.quote(self.command_line()[2])}"
        if self.processes > 1:
            cpu = "" if _cuda() else "ACCELERATE_USE_CPU=1 "
            return (f"{cpu}accelerate launch --multi_gpu --num_processes {self.processes} -m "
                    f"{TRAINERS[self.command][0]} " + shlex.join(self.argv()))
        return f"python -m course_lib {self.command} " + shlex.join(self.argv())


def _short(path: str | os.PathLike) -> str:
    """``path`` relative to the current folder when it is inside it (as a person would type it)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def names() -> list[str]:
    """The recipes, by name (the file name without ``.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def read(name: str) -> dict:
    """A recipe file's contents.

    Raises:
        RecipeError: no such recipe.
    """
    import yaml

    path = RECIPES_DIR / f"{Path(name).stem}.yaml"
    if not path.is_file():
        raise RecipeError(f"no recipe {name!r} (python -m course_lib reproduce --list shows them)")
    return yaml.safe_load(path.read_text())


def settings_class(command: str) -> type:
    """The settings dataclass of a trainer command."""
    import importlib

    if command not in TRAINERS:
        raise RecipeError(f"unknown command {command!r} in a recipe (one of {', '.join([*TRAINERS, CONVERT])})")
    module, cls = TRAINERS[command]
    return getattr(importlib.import_module(module), cls)


def stages(name: str, folder: str | os.PathLike | None = None) -> list[Stage]:
    """Recipe ``name`` resolved: each stage's full settings (the file's, over the command's defaults)
    and output (``folder``, default ``outputs/reproduce/``)."""
    recipe = read(name)
    folder = Path(folder) if folder is not None else config.OUTPUT_DIR / "reproduce"
    file = RECIPES_DIR / f"{Path(name).stem}.yaml"
    outs: dict[str, Path] = {}
    result = []
    for i, st in enumerate(recipe["stages"]):
        last = i == len(recipe["stages"]) - 1
        out = folder / (recipe["checkpoint"] if last else f"{st['name']}.safetensors")
        given = dict(st.get("settings") or {})
        if st["command"] == CONVERT:
            result.append(Stage(CONVERT, given, None, out))
            continue
        cls = settings_class(st["command"])
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in given if k not in fields or k in ("out", "recipe_file", "resume")]
        if unknown:
            raise RecipeError(f"{file.name}: {st['command']} has no setting {unknown[0]!r}")
        values = {k: _typed(fields[k], v) for k, v in given.items()}
        if isinstance(values.get("init"), str) and values["init"] in outs:
            values["init"] = str(outs[values["init"]])
        settings = cls(**values, out=str(out), recipe_file=str(file))
        result.append(Stage(st["command"], given, settings, out, int(st.get("processes", 1))))
        if not last:
            outs[st["name"]] = out
    return result


def _typed(field: dataclasses.Field, value: Any) -> Any:
    """A YAML value as the field holds it (a list -> the field's tuple type)."""
    if isinstance(value, list) and isinstance(field.default, tuple):
        return type(field.default)(value)
    if isinstance(value, list):
        return Floats(value)
    return value


def recipe_record(name: str) -> dict:
    """What a checkpoint made by recipe ``name`` stores under ``recipe``: the last stage's command and
    full settings, with the stage it started from inside (``init``), as the trainers write it."""
    record = None
    for st in stages(name, Path("outputs") / "reproduce"):
        if st.command == CONVERT:
            record = {"command": CONVERT, "settings": {}, "init": None}
            continue
        init = getattr(st.settings, "init", None)
        record = {"command": st.command, "settings": settings_of(st.settings),
                  "init": record if record is not None and init and Path(str(init)).suffix == ".safetensors" else None}
    return json.loads(json.dumps(record))


def comparable(record: dict | None) -> dict | None:
    """A ``recipe`` record without what does not change the trained weights (:data:`RUN_ONLY`, paths).
    A setting the record lacks (a checkpoint made before the setting existed) counts at its default."""
    if record is None:
        return None
    try:
        defaults = json.loads(json.dumps(settings_of(settings_class(record["command"])())))
    except (RecipeError, TypeError):
        defaults = {}
    merged = {**{k: v for k, v in defaults.items() if k not in record["settings"]}, **record["settings"]}
    settings = {k: v for k, v in merged.items() if k not in RUN_ONLY}
    if isinstance(settings.get("init"), str) and settings["init"].endswith(".safetensors"):
        settings["init"] = "<the previous stage>"
    return {"command": record["command"], "settings": settings, "init": comparable(record.get("init"))}


# ----------------------------------------------------------------------------- running


def state_step(out: Path) -> int | None:
    """The step of the resumable state beside ``out`` (``None`` when there is none)."""
    info = Path(f"{out}.state") / "state.json"
    return int(json.loads(info.read_text())["step"]) if info.is_file() else None


def status(stage: Stage) -> str:
    """``"done"`` (the output is complete), ``"resume"`` (a saved state to continue) or ``"start"``."""
    step = state_step(stage.out)
    steps = getattr(stage.settings, "steps", None)
    if step is not None:
        return "done" if stage.out.is_file() and step >= steps else "resume"
    return "done" if stage.out.is_file() else "start"


def run(name: str, folder: str | os.PathLike | None = None, dry_run: bool = False) -> int:
    """Run recipe ``name``'s stages in order (skip finished ones, resume interrupted ones); exit code."""
    for st in stages(name, folder):
        state = status(st)
        cmd = st.command_line() + (["--resume"] if state == "resume" and st.command != CONVERT else [])
        shown = st.shown() + (" --resume" if state == "resume" and st.command != CONVERT else "")
        if state == "done":
            print(f"reproduce {name}: {st.out} is complete; skipped")
            continue
        print(f"reproduce {name}: {shown}", flush=True)
        if dry_run:
            continue
        st.out.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "COURSE_MODE": "full"}  # a recipe is over the FULL defaults, whatever the mode
        if st.processes > 1 and not _cuda():
            env["ACCELERATE_USE_CPU"] = "1"
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            print(f"error: reproduce {name}: the stage writing {st.out} failed (exit code {rc}); rerun to continue",
                  file=sys.stderr)
            return rc
    print(f"reproduce {name}: {'would write' if dry_run else 'wrote'} {stages(name, folder)[-1].out}")
    return 0


def listing() -> str:
    """Every file of ``data/weights/`` with the commands that reproduce it."""
    by_file = {read(n)["checkpoint"]: n for n in names()}
    lines = []
    for path in sorted(config.WEIGHTS_DIR.glob("*.safetensors")):
        name = by_file.get(path.name)
        lines.append(f"{path.name}  (reproduce {Path(name).stem if name else '-'}; "
                     f"{'recipe course_lib/recipes/' + name + '.yaml' if name else 'no recipe'})")
        for st in stages(name) if name else []:
            lines.append(f"    {st.shown()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib reproduce",
                                description="Reproduce a shipped checkpoint of data/weights/ from its recipe "
                                            "(course_lib/recipes/NAME.yaml). Rerunning continues where it stopped.")
    p.add_argument("name", nargs="?", help="the recipe: a file name of data/weights/ without .safetensors")
    p.add_argument("--list", action="store_true", help="print every shipped file with its commands")
    p.add_argument("--dir", default=None, help="where the stages write (default: outputs/reproduce/)")
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    a = p.parse_args(argv)
    try:
        if a.list:
            print(listing())
            return 0
        if not a.name:
            p.error("name a recipe, or --list")
        return run(a.name, a.dir, a.dry_run)
    except (RecipeError, TypeError, KeyError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
