"""One notation and no project history in the lessons.

Lesson 00 carries the course's notation table and glossary; every lesson's Markdown is free of
project-history phrases (the same list ``lesson-check`` reports, plus "data world"), so a lesson
reads as a course, not as a log of how it was made.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "solutions").glob("[0-9][0-9]*.ipynb")) + sorted((ROOT / "notebooks").glob("[0-9][0-9]*.ipynb"))

#: phrases that tell the project's history instead of teaching (case-insensitive)
HISTORY = re.compile(r"(?i)first[ -]world|data world|the issue|shipped before|reads as the teacher")


def markdown(path: Path) -> list[tuple[str, str]]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(c.get("id", str(k)), "".join(c["source"])) for k, c in enumerate(cells) if c["cell_type"] == "markdown"]


def history_hits(text: str) -> list[str]:
    return sorted({m.group(0).lower() for m in HISTORY.finditer(text)})


@pytest.mark.parametrize("path", LESSONS, ids=[f"{p.parent.name}/{p.stem}" for p in LESSONS])
def test_no_project_history_in_lesson_prose(path):
    bad = [f"cell {cid}: {hits}" for cid, text in markdown(path) if (hits := history_hits(text))]
    assert not bad, f"{path.name}: project-history words in Markdown\n" + "\n".join(bad)


def test_the_history_check_catches_each_phrase():
    for phrase in ("the First World photos", "first-world", "data world 2.0", "as the issue asks",
                   "shipped before this", "Reads as the teacher"):
        assert history_hits(phrase), phrase
    assert history_hits("the world's test photos; the teacher reads the instruction; issues of a grid") == []


def test_lesson_00_has_the_notation_table_and_glossary():
    text = "\n".join(t for _, t in markdown(ROOT / "solutions" / "00_tour.ipynb"))
    rows = [r for r in text.splitlines() if r.startswith("| $")]
    firsts = [r.split("|")[1].strip() for r in rows]
    for sym in ("$x$", "$c$", "$y$", r"$f_\theta$", "$A$", "$g$", "$D, H_g, W_g$", "$s$", r"$\varepsilon_\phi$",
                r"$\varepsilon_\psi$", "$t, T$", r"$w_x, w_c$", r"$\tau$", "$F, G$"):
        assert sym in firsts, f"notation row {sym} missing from lesson 00"
    for term in ("bilateral grid", "slicing", "guidance map", "affine colour transform", "instruction reader",
                 "teacher", "distillation", "score", "SDS", "VSD", "DMD regression", "fake score", "LoRA",
                 "consistency model", "inversion", "PSNR", "ΔE00", "LPIPS", "edit accuracy", "leak ratio",
                 "held-out wording", "test photos"):
        assert re.search(rf"^- \*\*{re.escape(term)}\*\*", text, re.M), f"glossary entry {term!r} missing"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "solutions/00_tour.ipynb" in readme and "notation" in readme.lower()


def test_no_I_for_the_photo_or_the_identity_in_lesson_00_01_07_09():
    """The notation reserves no I: the photo is x, the identity grid A_id."""
    for name in ("00_tour", "01_bilateral_grid", "07_inversion", "09_studio"):
        for cid, text in markdown(ROOT / "solutions" / f"{name}.ipynb"):
            maths = " ".join(re.findall(r"\$[^$]+\$", text)) + " " + " ".join(re.findall(r"`[^`]+`", text))
            assert not re.search(r"(?<![\\\w])I(?![\w])", maths), f"{name} cell {cid} writes I in maths or code spans"
