"""The course's drawn figures (issue 21): each renders, and the course map names real modules."""
import importlib
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from course_lib import config, viz  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("make", [
    lambda: viz.bilateral_grid_3d(),
    lambda: viz.bilateral_grid_3d((3, 5, 4), (0.1, 0.9), 0.95, image=__import__("torch").rand(3, 12, 16)),
    lambda: viz.student_diagram(),
    lambda: viz.teacher_conditioning_diagram(48),
    lambda: viz.vsd_loop_diagram(),
    lambda: viz.course_map(weights_dir=config.WEIGHTS_DIR),
], ids=["grid", "grid-photo-edge", "student", "teacher", "vsd", "map"])
def test_figure_renders(make, tmp_path):
    fig = make()
    fig.savefig(tmp_path / "f.png", dpi=40)
    assert (tmp_path / "f.png").stat().st_size > 1000
    matplotlib.pyplot.close(fig)


def test_student_diagram_shows_the_config_shapes():
    from course_lib.student import StudentConfig

    fig = viz.student_diagram(StudentConfig(net_size=64, grid_size=8, luma_bins=4, channels=32))
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "(B, 12, 4, 8, 8)" in texts and "(B, 3, 64, 64)" in texts
    matplotlib.pyplot.close(fig)


def test_course_map_names_real_modules_and_lessons():
    lessons = sorted(p.stem[:2] for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    assert [row[0][:2] for row in viz.COURSE_MAP] == lessons
    for _, modules, _ in viz.COURSE_MAP:
        for m in modules:
            if m.endswith("/"):
                assert (ROOT / "course_lib" / m).is_dir(), m
            else:
                importlib.import_module("course_lib." + m.replace("/", "."))


def test_readme_shows_the_course_map_and_it_is_written(tmp_path):
    from course_lib.apps.cli import COURSE_MAP_PNG, write_course_map

    assert str(COURSE_MAP_PNG.relative_to(ROOT)) in (ROOT / "README.md").read_text()
    assert COURSE_MAP_PNG.is_file()
    out = tmp_path / "map.png"
    assert write_course_map(out) is True and out.read_bytes()[:4] == b"\x89PNG"
    assert write_course_map(out) is False  # unchanged: not rewritten
