"""The student-notebook generator, its drift check, and the committed notebooks."""
import json
from pathlib import Path

import pytest

from course_lib.util import notebooks as nbtools
from course_lib.__main__ import main as cli_main

SOLUTION_CELL = '''def exposure(image, ev):
    """Brighten by ev stops."""
    ### BEGIN SOLUTION
    scale = 2.0 ** ev
    return image * scale
    ### END SOLUTION

def other(x):
    ### BEGIN SOLUTION (Exercise 9.9)
    return x
    ### END SOLUTION'''


def _nb(cells):
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _code(src, outputs=None):
    return {"cell_type": "code", "source": src, "metadata": {}, "outputs": outputs or [], "execution_count": 3 if outputs else None}


def test_strip_code_keeps_signature_and_indent():
    out = nbtools.strip_code(SOLUTION_CELL, "4", [0])
    assert 'def exposure(image, ev):\n    """Brighten by ev stops."""\n    raise NotImplementedError(\'Exercise 4.1\')' in out
    assert "raise NotImplementedError('Exercise 9.9')" in out
    assert "scale" not in out and "BEGIN" not in out and "END" not in out
    ns = {}
    exec(out, ns)  # the stub still defines the functions
    with pytest.raises(NotImplementedError, match="Exercise 4.1"):
        ns["exposure"](1, 2)


def test_numbering_runs_across_cells():
    cell = "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n"
    nb = _nb([_code(cell), _code(cell)])
    student = nbtools.make_student(nb, "7")
    assert "Exercise 7.1" in student["cells"][0]["source"] and "Exercise 7.2" in student["cells"][1]["source"]


@pytest.mark.parametrize("bad", [
    "### BEGIN SOLUTION\nx = 1\n",
    "x = 1\n### END SOLUTION\n",
    "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n",
])
def test_malformed_markers_raise(bad):
    with pytest.raises(nbtools.NotebookError):
        nbtools.strip_code(bad, "1", [0])


def test_answers_hidden_and_outputs_stripped():
    md = {"cell_type": "markdown", "metadata": {}, "source": "Q: why?\n<!-- BEGIN ANSWER -->\nBecause.\n<!-- END ANSWER -->\n"}
    nb = _nb([md, _code("print(1)", outputs=[{"output_type": "stream", "name": "stdout", "text": "1\n"}])])
    student = nbtools.make_student(nb, "1")
    assert "Because" not in student["cells"][0]["source"] and nbtools.ANSWER_PLACEHOLDER in student["cells"][0]["source"]
    assert student["cells"][1]["outputs"] == [] and student["cells"][1]["execution_count"] is None
    assert nbtools.has_outputs(nb) and not nbtools.has_outputs(student)


def test_generate_and_check_detect_drift(tmp_path):
    sol, stu = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    (sol / "05_demo.ipynb").write_text(json.dumps(_nb([_code(SOLUTION_CELL)])))
    assert nbtools.generate(check=True, solutions=sol, notebooks=stu)  # missing student notebook
    written = nbtools.generate(solutions=sol, notebooks=stu)
    assert written == [str(stu / "05_demo.ipynb")]
    assert nbtools.generate(check=True, solutions=sol, notebooks=stu) == []
    assert "Exercise 5.1" in (stu / "05_demo.ipynb").read_text()
    # drift: somebody edits the student notebook by hand
    text = (stu / "05_demo.ipynb").read_text().replace("Exercise 5.1", "Exercise 5.7")
    (stu / "05_demo.ipynb").write_text(text)
    problems = nbtools.generate(check=True, solutions=sol, notebooks=stu)
    assert problems and "differs" in problems[0]
    # an orphan student notebook is reported too
    (stu / "06_orphan.ipynb").write_text("{}")
    assert any("no solution" in p for p in nbtools.generate(check=True, solutions=sol, notebooks=stu))


def test_committed_notebooks_in_sync_and_stripped():
    """The real repository: notebooks/ is exactly what solutions/ generates, with no outputs."""
    solutions = sorted(nbtools.SOLUTIONS_DIR.glob("[0-9]*.ipynb"))
    assert solutions, "no lessons found"
    assert nbtools.generate(check=True) == []
    for path in solutions + sorted(nbtools.NOTEBOOKS_DIR.glob("[0-9]*.ipynb")):
        assert not nbtools.has_outputs(nbtools.load(path)), f"{path} has outputs"


def test_every_lesson_has_the_promised_sections():
    for path in sorted(nbtools.SOLUTIONS_DIR.glob("[0-9]*.ipynb")):
        nb = nbtools.load(path)
        md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown").lower()
        lab = path.stem.endswith("_lab")  # optional lab notes (NNx_name_lab): a badge and the install cell only
        for heading in ("objectives", "prerequisites", "running time", "summary", "further reading", "check your understanding"):
            assert lab or heading in md, f"{path.name} lacks '{heading}'"
        assert "colab.research.google.com" in md, f"{path.name} lacks a Colab badge"
        first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
        assert "google.colab" in "".join(first_code["source"]), f"{path.name}: first code cell must install on Colab"


def test_cli_check_mode_exit_code(capsys):
    assert cli_main(["notebooks", "--check"]) == 0
    assert "in sync" in capsys.readouterr().out


def test_one_constant_names_the_published_repository(tmp_path, monkeypatch):
    """Badges and the Colab install cell follow config.REPO_URL; publishing elsewhere is a one-line change."""
    from course_lib import config

    root = config.REPO_ROOT
    slug = config.REPO_URL.removeprefix("https://github.com/")
    texts = [(root / "README.md").read_text()] + [p.read_text() for p in sorted((root / "solutions").glob("*.ipynb"))]
    texts += [p.read_text() for p in sorted((root / "notebooks").glob("*.ipynb"))]
    for text in texts:
        assert nbtools.publish_links(text) == text
    assert sum(f"colab.research.google.com/github/{slug}/blob/" in t for t in texts) == len(texts)
    assert all(f"git+https://github.com/{slug}" in t for t in texts[1:])

    # another address: every link moves, nothing else changes
    sol, nbs = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    src = root / "solutions" / "00_tour.ipynb"
    (sol / src.name).write_text(src.read_text())
    readme = tmp_path / "README.md"
    readme.write_text((root / "README.md").read_text())
    nbtools.generate(solutions=sol, notebooks=nbs, readme=readme)
    assert nbtools.generate(check=True, solutions=sol, notebooks=nbs, readme=readme) == []
    monkeypatch.setattr(config, "REPO_URL", "https://github.com/someone/fork")  # the one-line change
    problems = nbtools.generate(check=True, solutions=sol, notebooks=nbs, readme=readme)
    assert len(problems) == 3 and all("REPO_URL" in p or "differs" in p for p in problems), problems
    nbtools.generate(solutions=sol, notebooks=nbs, readme=readme)
    assert nbtools.generate(check=True, solutions=sol, notebooks=nbs, readme=readme) == []
    for path in (sol / src.name, nbs / src.name, readme):
        text = path.read_text()
        assert "someone/fork" in text and slug not in text, path
    with pytest.raises(ValueError):
        nbtools.publish_links("x", repo_url="https://gitlab.com/a/b")


def test_exercise_table_follows_the_solutions(tmp_path):
    """The README's exercise table is generated from the solutions and flagged when stale."""
    sol, stu = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    (sol / "05_demo.ipynb").write_text(json.dumps(_nb([_code(SOLUTION_CELL)])))
    assert nbtools.exercises(nbtools.load(sol / "05_demo.ipynb"), "5") == [("Exercise 5.1", "exposure"),
                                                                          ("Exercise 9.9", "other")]
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{nbtools.EXERCISES_BEGIN}\nold\n{nbtools.EXERCISES_END}\nrest\n")
    nbtools.generate(solutions=sol, notebooks=stu, readme=readme)
    text = readme.read_text()
    assert "| 05 | 2 | `exposure`, `other` |" in text and "| all | 2 | |" in text and text.endswith("rest\n")
    assert nbtools.generate(check=True, solutions=sol, notebooks=stu, readme=readme) == []
    (sol / "06_more.ipynb").write_text(json.dumps(_nb([_code(SOLUTION_CELL)])))
    nbtools.generate(solutions=sol, notebooks=stu)  # the notebooks, not the README
    assert any("exercise table" in p for p in nbtools.generate(check=True, solutions=sol, notebooks=stu, readme=readme))
    # the real README's table is the real solutions'
    assert nbtools.with_exercise_table(nbtools.README.read_text()) == nbtools.README.read_text()
