"""The README is a front door and docs/ holds the reference: generated pages match their sources,
every command a page names exists and answers --help, every library module is described."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from course_lib import config
from course_lib.__main__ import COMMANDS
from course_lib.apps import docs

ROOT = config.REPO_ROOT
HAND_WRITTEN = ("README.md", "docs/workshops.md", "docs/library.md")


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for page in re.findall(r"\]\((docs/[^)#]+)\)", text):
        assert (ROOT / page).is_file(), page
    assert {"docs/commands.md", "docs/photos.md", "docs/reproduce.md", "docs/workshops.md", "docs/library.md"} <= set(
        re.findall(r"\]\((docs/[^)#]+)\)", text))


def test_generated_pages_match_their_sources(tmp_path):
    assert docs.generate_docs(check=True) == [], "run python -m course_lib notebooks"
    # a stale page is reported, and writing fixes it
    (tmp_path / "photos.md").write_text("old\n")
    assert len(docs.generate_docs(check=True, folder=tmp_path)) == len(docs.PAGES)
    docs.generate_docs(folder=tmp_path)
    assert docs.generate_docs(check=True, folder=tmp_path) == []


@pytest.mark.parametrize("page", HAND_WRITTEN)
def test_every_command_a_page_names_answers_help(page):
    text = (ROOT / page).read_text()
    named = set(re.findall(r"python -m course_lib ([a-z][a-z-]+)", text))
    named |= {m.split(".")[-1] for m in re.findall(r"-m (course_lib\.train\.[a-z]+)", text)}
    assert named, page
    for name in named:
        key = name if name in COMMANDS else f"train-{name}"  # -m course_lib.train.NAME is train-NAME
        assert key in COMMANDS, f"{page} names {name!r}, which is not a command"
        assert docs.command_help(key).startswith("usage:"), key


def test_library_page_describes_every_module():
    text = (ROOT / "docs" / "library.md").read_text()
    for path in sorted((ROOT / "course_lib").rglob("*.py")):
        if path.name.startswith("_"):
            continue
        assert re.search(rf"\b{path.stem}\b", text), f"docs/library.md does not describe {path.relative_to(ROOT)}"
