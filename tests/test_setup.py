"""The two commands: CI calls the README's test command, and set-up is idempotent."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make course" in readme and "make test" in readme
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == "make test"


def test_lock_pins_exact_torch():
    lock = (ROOT / "requirements" / "lock.txt").read_text().split()
    assert "torch==2.14.1" in lock and "torchvision==0.29.1" in lock
    assert all("==" in line for line in lock if line and not line.startswith("#"))


@pytest.mark.skipif(not (Path(sys.prefix) / ".course-setup-stamp").exists(),
                    reason="not running inside an environment made by scripts/setup.sh")
def test_setup_rerun_is_a_no_op():
    env = {**os.environ, "COURSE_VENV": sys.prefix}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout
