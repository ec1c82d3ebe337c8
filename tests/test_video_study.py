"""Lesson 09's flicker-vs-lag study: ``video.smoothing_study``, ``python -m course_lib video-study``, and the
lesson's cells that render the student's grid and the smoothing table from measurements, not typed numbers."""
import json
import types
from pathlib import Path

import IPython.display
import pytest
import torch

from course_lib import config, video
from course_lib.__main__ import main
from course_lib.studies import video_study

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / "solutions" / "09_studio.ipynb"
ROW_KEYS = {"a", "edit_jump", "grid_flicker", "lag"}


@pytest.fixture(scope="module")
def model():
    from course_lib.student import load_student

    torch.set_num_threads(1)
    return load_student()


@pytest.fixture(scope="module")
def clip():
    return video.make_demo_clip("china", 4, (12, 16))  # (4, 3, 12, 16)


def _cell(marker: str) -> str:
    """The source of lesson 09's one code cell that contains ``marker``."""
    cells = [c for c in json.loads(LESSON.read_text())["cells"] if c["cell_type"] == "code"]
    found = ["".join(c["source"]) for c in cells if marker in "".join(c["source"])]
    assert len(found) == 1, f"{len(found)} code cells of {LESSON.name} contain {marker!r}"
    return found[0]


def _run_cell(source: str, namespace: dict, monkeypatch) -> str:
    """Execute a lesson cell; return the Markdown it displayed."""
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs: shown.extend(objs))
    namespace.setdefault("display", IPython.display.display)
    namespace.setdefault("Markdown", IPython.display.Markdown)
    exec(compile(source, LESSON.name, "exec"), namespace)
    return "\n".join(getattr(o, "data", str(o)) for o in shown)


def test_smoothing_study_keys_on_a_tiny_clip(tiny_teacher, model, clip):
    factors = (0.0, 0.5, 0.9)
    r = video.smoothing_study(tiny_teacher, clip, "make it warmer", factors, steps=1, student=model)
    assert set(r) == {"frame_change", "ms_per_frame", "teacher", "same_noise", "student"}
    for who in ("teacher", "student"):
        assert [row["a"] for row in r[who]] == list(factors)
        assert all(set(row) == ROW_KEYS and all(v >= 0 for v in row.values()) for row in r[who])
        assert r[who][0]["lag"] == 0.0  # a = 0 is the per-frame edit itself
    assert set(r["same_noise"]) == {"edit_jump", "grid_flicker"}
    assert r["teacher"][-1]["grid_flicker"] < r["teacher"][0]["grid_flicker"]  # smoothing damps the noise
    assert "student" not in video.smoothing_study(tiny_teacher, clip, "make it warmer", (0.0,), steps=1)
    with pytest.raises(ValueError):
        video.smoothing_study(tiny_teacher, clip, "make it warmer", (1.0,), steps=1)
    with pytest.raises(ValueError):
        video.smoothing_study(tiny_teacher, clip[:1], "make it warmer", steps=1)


def test_cli_writes_json_with_its_command_and_never_overwrites(tmp_path, tiny_teacher, monkeypatch, capsys):
    monkeypatch.setattr(video_study, "load_teacher", lambda tier, path=None: tiny_teacher)
    out = tmp_path / "video_smoothing.json"
    argv = ["video-study", "--frames", "3", "--height", "12", "--width", "16", "--steps", "1",
            "--factors", "0,0.5", "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["command"].startswith("python -m course_lib video-study ")
    assert "--factors 0,0.5" in res["command"] and "--frames 3 " in res["command"] and "--photo china" in res["command"]
    assert f"--json {out}" in res["command"] and "--overwrite" not in res["command"]
    assert [r["a"] for r in res["teacher"]] == [0.0, 0.5] and len(res["student"]) == 2
    assert "| teacher, same noise | 0 |" in capsys.readouterr().out
    before = out.read_text()
    assert main(argv) == 2 and "exists" in capsys.readouterr().err and out.read_text() == before
    assert main(argv + ["--overwrite", "--no-student"]) == 0
    assert "student" not in json.loads(out.read_text())
    with pytest.raises(SystemExit):
        main(["video-study", "--factors", "0,1"])
    assert main(["video-study", "--frames", "1"]) == 2


def test_lesson_renders_the_smoothing_table_from_the_results_file(tmp_path, monkeypatch):
    """Lesson 09: change video_smoothing.json, and the table (code cell) and the bullets (Markdown
    rendered from the file) change with it."""
    from course_lib.util import render

    source = _cell("video_smoothing.json")
    shipped = json.loads((config.RESULTS_DIR / "video_smoothing.json").read_text())
    assert shipped["command"].startswith("python -m course_lib video-study")
    ns = lambda: {"config": types.SimpleNamespace(RESULTS_DIR=tmp_path)}  # noqa: E731
    (tmp_path / "video_smoothing.json").write_text(json.dumps(shipped))
    t0 = shipped["teacher"][0]["edit_jump"]
    assert f"| teacher, fresh noise | 0 | {t0:.2f} |" in _run_cell(source, ns(), monkeypatch)
    bullets = next("".join(c["source"]) for c in json.loads(LESSON.read_text())["cells"]
                   if c["cell_type"] == "markdown" and "video_smoothing.json /same_noise" in "".join(c["source"]))
    strip = lambda t: render.MARK.sub(lambda m: m.group("text"), t)  # noqa: E731
    text = strip(render.render_text(bullets, tmp_path))
    assert f"edit jump by {t0:.2f} levels" in text and "lower than the strongest smoothing" in text
    changed = json.loads(json.dumps(shipped))
    changed["teacher"][0]["edit_jump"] = 9.87
    changed["same_noise"]["edit_jump"] = 5.43  # now worse than smoothing: the verdict turns
    (tmp_path / "video_smoothing.json").write_text(json.dumps(changed))
    render.clear_cache()
    text2 = strip(render.render_text(bullets, tmp_path))
    render.clear_cache()
    assert "9.87" in text2 and "5.43" in text2 and "9.87" not in text
    assert "higher than the strongest smoothing" in text2
    assert "| teacher, fresh noise | 0 | 9.87 |" in _run_cell(source, ns(), monkeypatch)


def test_lesson_grid_verdict_follows_the_measurement(monkeypatch):
    """Section 1 says 'the same in every cell' only when the measured grid is."""
    source = _cell("SAME = ")
    cfg = types.SimpleNamespace(coords=True)
    flat = _run_cell(source, {"cell_std": 0.0, "photo_diff": 0.0, "bin_std": 0.02, "one_cell": 0.0, "G": 16,
                              "model": types.SimpleNamespace(cfg=cfg)}, monkeypatch)
    local = _run_cell(source, {"cell_std": 0.03, "photo_diff": 0.14, "bin_std": 0.04, "one_cell": 1.23, "G": 16,
                               "model": types.SimpleNamespace(cfg=cfg)}, monkeypatch)
    assert "same transform in every cell" in flat and "changes nothing" in flat
    assert "varies over the cells" in local and "1.23 levels" in local and "changes nothing" not in local


def test_lesson_student_flicker_verdict_follows_the_measurement(model, clip, monkeypatch):
    source = _cell("student_flicker = video.grid_flicker")
    text = _run_cell(source, {"video": video, "model": model, "clip": clip}, monkeypatch)
    still = types.SimpleNamespace(**{k: getattr(video, k) for k in video.__all__})
    still.predict_grids = lambda m, c, i: video.predict_grids(m, c[:1], i).expand(c.shape[0], -1, -1, -1, -1)
    frozen = _run_cell(source, {"video": still, "model": model, "clip": clip}, monkeypatch)
    assert "does change from frame to frame" in text and "No flicker from the grid" not in text
    assert "No flicker from the grid at all" in frozen
