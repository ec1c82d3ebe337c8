"""Numbers rendered into the lessons' Markdown from the results files (course_lib.util.render),
and the key figures drawn from them (course_lib.util.figures)."""
import json
import re
from pathlib import Path

import pytest

from course_lib.util import figures, notebooks, render

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def results_dir(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({
        "rows": [{"method": "a", "group": "all", "psnr": 27.456}, {"method": "b, c", "group": "all", "psnr": 26.0}],
        "x/y": 3, "n": 96, "acc": 0.25}))
    return tmp_path


@pytest.mark.parametrize("spec, want", [
    ("r.json /rows/0/psnr .2f", "27.46"),
    ("r.json /rows/[method=b, c&group=all]/psnr .1f", "26.0"),
    ("r.json /x~1y d", "3"),
    ("r.json /n d", "96"),
    ("r.json /acc .0%", "25%"),
    ("r.json /rows/0/psnr minus /rows/1/psnr +.2f", "+1.46"),
    ("r.json /rows/1/psnr minus /rows/0/psnr ?worse|better", "worse"),
    ("r.json /rows/0/psnr over /rows/1/psnr .3f", "1.056"),
])
def test_value_of(spec, want, results_dir):
    render.clear_cache()
    assert render.value_of(spec, results_dir) == want


@pytest.mark.parametrize("spec, says", [
    ("nope.json /n d", "not a results file"),
    ("r.json /m d", "no key 'm'"),
    ("r.json /rows/7/psnr d", "no index"),
    ("r.json /rows/[method=z]/psnr .2f", "no element matches"),
    ("r.json n d", "must start with '/'"),
    ("r.json /n", "FILE POINTER FORMAT"),
    ("r.json /rows .2f", "cannot format"),
])
def test_bad_markers_say_what_is_wrong(spec, says, results_dir):
    render.clear_cache()
    with pytest.raises(render.RenderError, match=re.escape(says)):
        render.value_of(spec, results_dir)


def test_render_text_rewrites_only_the_value(results_dir):
    render.clear_cache()
    text = "PSNR <!--r r.json /rows/0/psnr .2f-->old<!--/r--> dB, and <!--r r.json /n d-->?<!--/r--> photos."
    out = render.render_text(text, results_dir)
    assert out == "PSNR <!--r r.json /rows/0/psnr .2f-->27.46<!--/r--> dB, and <!--r r.json /n d-->96<!--/r--> photos."
    assert render.render_text(out, results_dir) == out


def test_generate_renders_both_notebooks_and_check_reports_drift(tmp_path, monkeypatch):
    sol, nbs = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    cell = {"cell_type": "markdown", "id": "m1", "metadata": {},
            "source": "It reached <!--r inversion.json /reconstruction/[method=DDIM-50]/psnr .2f-->0<!--/r--> dB."}
    nb = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (sol / "01_x.ipynb").write_text(notebooks.dumps(nb))
    problems = notebooks.generate(check=True, solutions=sol, notebooks=nbs)
    assert any("differs from its results file" in p for p in problems)
    notebooks.generate(solutions=sol, notebooks=nbs)
    want = render.value_of("inversion.json /reconstruction/[method=DDIM-50]/psnr .2f")
    for folder in (sol, nbs):
        text = json.loads((folder / "01_x.ipynb").read_text())["cells"][0]["source"]
        assert f"-->{want}<!--/r-->" in text
    assert notebooks.generate(check=True, solutions=sol, notebooks=nbs) == []


def test_every_lesson_marker_resolves_and_is_current():
    render.clear_cache()
    stale = []
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        if notebooks.dumps(render.render_notebook(nb, where=path.name)) != notebooks.dumps(nb):
            stale.append(path.name)
    assert not stale, f"numbers in Markdown differ from the results files: {stale}; run python -m course_lib notebooks"


@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_key_figures_are_committed_and_shown(name, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    written = figures.write_figures([name], out_dir=tmp_path)
    assert written and (tmp_path / name).stat().st_size > 2000
    assert (figures.FIGURES_DIR / name).is_file(), f"data/figures/{name} is not committed"
    shown = [p.name for p in (ROOT / "solutions").glob("*.ipynb") if f"data/figures/{name}" in p.read_text()]
    assert shown, f"no lesson shows data/figures/{name}"


def test_a_figure_is_rewritten_only_when_its_picture_changes():
    import io

    import numpy as np
    from PIL import Image

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    a = np.zeros((100, 100, 3), np.uint8)
    b = a.copy()
    b[0, :7] = 1  # anti-aliased edge pixels one level apart
    c = a.copy()
    c[50, 50] = 255  # a single pixel of a changed digit
    assert figures.same_picture(png(a), png(b))
    assert not figures.same_picture(png(a), png(c))
    assert not figures.same_picture(png(a), png(a[:50]))
