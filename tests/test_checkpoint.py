"""The one checkpoint convention (course_lib.util.checkpoint) and the shipped files in it."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from course_lib import config
from course_lib.util import checkpoint as ckpt
from course_lib.util.files import FileExists, atomic_write_text

SHIPPED_KINDS = {
    "student_supervised.safetensors": "student", "student_global_affine.safetensors": "student",
    "student_vsd_scratch.safetensors": "student",
    "teacher_embedded.safetensors": "teacher",
    "edit_clip.safetensors": "edit_clip",
    "inverter_lora.safetensors": "inverter_lora", "lpips_vgg_lin.safetensors": "lpips_lin",
}


def test_every_shipped_file_is_in_the_one_format():
    shipped = sorted(p.name for p in config.WEIGHTS_DIR.glob("*.safetensors"))
    assert shipped == sorted(SHIPPED_KINDS), "a new shipped file: add its kind here"
    for name in shipped:
        info = ckpt.read_checkpoint(config.WEIGHTS_DIR / name)
        assert info.metadata["format"] == ckpt.FORMAT and info.kind == SHIPPED_KINDS[name], name
        assert isinstance(info.config, dict)


#: Which shipped files were made with a teacher (the ``teacher`` key names its tier).
WITH_TEACHER = {"student_vsd_scratch.safetensors", "inverter_lora.safetensors"}


@pytest.mark.parametrize("name", sorted(SHIPPED_KINDS))
def test_every_shipped_file_says_where_it_came_from(name):
    """``data`` ("world"; LPIPS's layers name their package), ``paired_targets`` ("none" for the distilled
    students and the inverter, "exact" for what was fitted to the exact edits), ``teacher`` where one was
    used, and the full settings (``recipe``, its ``recipe_file``)."""
    meta = ckpt.read_checkpoint(config.WEIGHTS_DIR / name).metadata
    assert meta["data"] == "world" or (name.startswith("lpips") and "lpips" in meta["data"]), meta.get("data")
    assert meta["paired_targets"] == ("none" if "vsd" in name or "inverter" in name or "lpips" in name else "exact")
    assert ("teacher" in meta) == (name in WITH_TEACHER) and meta.get("teacher", "embedded") in ("embedded", "hub")
    assert meta["recipe"] and meta["recipe_file"] == name.replace(".safetensors", ".yaml")


def test_trainers_write_the_metadata_keys():
    from course_lib.train.common import PAIRED_TARGETS, recipe_metadata
    from course_lib.train.vsd import VSDArgs

    meta = recipe_metadata("train-vsd", VSDArgs())
    assert meta["data"] == "world" and meta["paired_targets"] == "none" and meta["teacher"] == "embedded"
    assert PAIRED_TARGETS["train-student"] == "exact" and "recipe" in meta


def test_round_trip_keeps_tensors_dtypes_config_and_provenance(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "h": torch.randn(2).half()}
    p = ckpt.save_checkpoint(tmp_path / "m.safetensors", tensors, "student", {"width": 3, "fc": [1, 2]},
                             {"command": "python -m x", "log": [{"step": 1, "loss": 0.5}], "trained_steps": 7})
    back, info = ckpt.load_checkpoint(p, "student")
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype
                                             for k in tensors)
    assert info.config == {"width": 3, "fc": [1, 2]} and info.kind == "student"
    assert info.provenance == {"command": "python -m x", "log": [{"step": 1, "loss": 0.5}], "trained_steps": 7}
    assert [q.name for q in tmp_path.iterdir()] == ["m.safetensors"]  # nothing temporary left
    with pytest.raises(FileExists):
        ckpt.save_checkpoint(p, tensors, "student", {}, overwrite=False)
    with pytest.raises(ValueError):
        ckpt.save_checkpoint(tmp_path / "x.safetensors", tensors, "no-such-kind", {})
    with pytest.raises(ValueError):
        ckpt.save_checkpoint(tmp_path / "x.safetensors", tensors, "student", {}, {"kind": "teacher"})


def test_errors_are_one_line(tmp_path):
    cases = []
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_checkpoint(tmp_path / "missing.safetensors")
    cases.append(str(e.value))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_checkpoint(tmp_path / "junk.safetensors")
    cases.append(str(e.value))
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ckpt.CheckpointError, match="not a course_lib checkpoint") as e:
        ckpt.load_checkpoint(tmp_path / "plain.safetensors")
    cases.append(str(e.value))
    p = ckpt.save_checkpoint(tmp_path / "t.safetensors", {"w": torch.zeros(1)}, "teacher", {})
    with pytest.raises(ckpt.CheckpointError, match="of kind 'teacher', expected 'student'") as e:
        ckpt.load_checkpoint(p, "student")
    cases.append(str(e.value))
    assert all("\n" not in c for c in cases)


def test_atomic_write_never_clobbers(tmp_path):
    p = atomic_write_text(tmp_path / "a.txt", "one")
    with pytest.raises(FileExists):
        atomic_write_text(p, "two", overwrite=False)
    assert p.read_text() == "one"
    atomic_write_text(p, "two")
    assert p.read_text() == "two" and [q.name for q in tmp_path.iterdir()] == ["a.txt"]

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    from course_lib.util.files import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(p, fail)
    assert p.read_text() == "two" and [q.name for q in tmp_path.iterdir()] == ["a.txt"]
