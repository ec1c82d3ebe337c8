"""Numbers in the lessons' prose come from the results files they cite (issue 21, part 3).

:mod:`course_lib.util.quotes` checks every Markdown cell of every lesson. ``KNOWN_STALE`` lists
the cells still typed by hand from older runs, to be re-rendered from results files (empty now: lessons
06 and 08 render theirs from ``vsd-study`` and ``bench retouch --json``). The test fails if a cell
*not* listed quotes a number its results do not hold, **and** if a listed cell has become clean
(then strike it from the list), so the list can only shrink.
"""
import json
from pathlib import Path

import pytest

from course_lib.util import quotes

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
KNOWN_STALE: dict[str, set[str]] = {}  # notebook -> ids of cells still typed by hand (none left)


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_quotes_come_from_results(path):
    problems = quotes.notebook_problems(path, ROOT)
    known = KNOWN_STALE.get(path.name, set())
    new = [p for p in problems if p.split(" cell ")[1].split(":")[0] not in known]
    assert not new, "\n".join(new)
    stale = {p.split(" cell ")[1].split(":")[0] for p in problems}
    assert known <= stale, f"cells {sorted(known - stale)} are clean now: strike them from KNOWN_STALE"


def test_the_check_fails_when_a_results_file_changes(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"rows": [{"psnr": 23.4512, "acc": 0.875}], "speedup": 10.31}))
    cell = ("The shipped model reaches 23.45 dB (87.5 % of ...; 88 %), 10.3× faster; lesson 07, "
            "exercise 7.2, arXiv 2506.19103, `--lr 1e-3`, $x_{0.5}$ are not quotes.\n"
            "<!-- results: r.json -->")
    assert quotes.stale_quotes(cell, tmp_path) == []
    (tmp_path / "r.json").write_text(json.dumps({"rows": [{"psnr": 23.61, "acc": 0.875}], "speedup": 10.31}))
    assert quotes.stale_quotes(cell, tmp_path) == ["23.45 dB is not in r.json"]
    assert quotes.stale_quotes(cell.replace("r.json", "gone.json"), tmp_path) == ["cites gone.json, which does not exist"]


def test_uncited_measurements_and_paper_claims():
    assert quotes.stale_quotes("about 40 ms per photo") == ["quotes 40 ms without a <!-- results: ... --> source"]
    assert quotes.stale_quotes("the paper's 45 ms <!-- paper: 45 ms -->") == []
    assert quotes.stale_quotes("a 3x4 matrix, 16 cells, 1.5 stops, 95 % of pixels") == []
    assert quotes.quoted("−1.25 dB and 7 % and 2.0") == [("−1.25", "dB"), ("7", "%"), ("2.0", "")]
