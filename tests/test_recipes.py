"""Recipes as files: every shipped checkpoint has one, and the settings it stores are its recipe's."""
from __future__ import annotations

import json

import pytest

from course_lib import config
from course_lib.apps import reproduce as R
from course_lib.util.checkpoint import read_metadata

SHIPPED = sorted(p.name for p in config.WEIGHTS_DIR.glob("*.safetensors"))
BY_FILE = {R.read(n)["checkpoint"]: n for n in R.names()}


def test_every_shipped_file_has_a_recipe_and_every_recipe_a_file():
    assert sorted(BY_FILE) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_checkpoint_stores_the_settings_of_its_recipe(name):
    """The checkpoint's ``recipe`` (every setting of every stage, the stage it started from inside)
    equals its recipe file's, resolved over the commands' defaults; paths and run-only options aside."""
    meta = read_metadata(config.WEIGHTS_DIR / name)
    assert meta["recipe_file"] == f"{BY_FILE[name]}.yaml"
    stored = R.comparable(json.loads(meta["recipe"]))
    assert stored == R.comparable(R.recipe_record(BY_FILE[name])), (
        f"{name} was made with other settings than course_lib/recipes/{BY_FILE[name]}.yaml says")


def test_the_tie_fails_when_a_recipe_changes(monkeypatch):
    """The comparison above sees one changed value (the recipe file read with a different lr)."""
    read = R.read

    def changed(name):
        recipe = read(name)
        recipe["stages"][-1]["settings"]["lr"] = 0.5
        return recipe

    monkeypatch.setattr(R, "read", changed)
    stored = R.comparable(json.loads(read_metadata(config.WEIGHTS_DIR / "student_supervised.safetensors")["recipe"]))
    assert stored != R.comparable(R.recipe_record("student_supervised"))


def test_reproduce_list_names_every_file_with_its_commands(capsys):
    from course_lib.__main__ import main

    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert f"{name}  (reproduce {name[:-len('.safetensors')]};" in out
    assert "python -m course_lib train-student --steps 8000" in out and "--reader-only" in out
    assert "accelerate launch --multi_gpu --num_processes 2 -m course_lib.train.teacher" in out


def test_reproduce_refuses_bad_input_in_one_line(capsys):
    from course_lib.__main__ import main

    assert main(["reproduce", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no recipe 'nope'")


def test_reproduce_runs_continues_and_records_the_recipe(tmp_path, monkeypatch):
    """A tiny recipe of two stages: the run writes both with ``recipe`` and ``recipe_file``; run again,
    nothing is redone; with a stage's state part-way, it resumes rather than restarts."""
    monkeypatch.setenv("COURSE_MODE", "fast")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny.yaml").write_text(
        "checkpoint: tiny.safetensors\n"
        "stages:\n"
        "  - name: first\n"
        "    command: train-align\n"
        "    settings: {steps: 2, batch_size: 2, size: 16, save_every: 1, threads: 1}\n"
        "  - command: train-student\n"
        "    settings: {steps: 2, batch_size: 2, size: 32, net_size: 32, grid_size: 4, channels: 8,\n"
        "               save_every: 1, threads: 1}\n")
    monkeypatch.setattr(R, "RECIPES_DIR", recipes)
    out = tmp_path / "out"
    assert R.run("tiny", out) == 0
    meta = read_metadata(out / "tiny.safetensors")
    assert meta["recipe_file"] == "tiny.yaml"
    assert R.comparable(json.loads(meta["recipe"])) == R.comparable(R.recipe_record("tiny"))
    assert [R.status(s) for s in R.stages("tiny", out)] == ["done", "done"]
    # part-way: the state says step 1 of 2 -> the stage resumes (and nothing finished is rerun)
    state = out / "tiny.safetensors.state" / "state.json"
    info = json.loads(state.read_text())
    state.write_text(json.dumps({**info, "step": 1, "losses": info["losses"][:1]}))
    assert [R.status(s) for s in R.stages("tiny", out)] == ["done", "resume"]
    assert R.run("tiny", out) == 0
    assert json.loads(state.read_text())["step"] == 2
