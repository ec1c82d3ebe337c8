"""``python -m course_lib gpu-check``: the GPU acceptance script, tested without a GPU.

The real check needs CUDA; here: the one-line no-CUDA exit, the tiny CPU dry run (steps 1-3
under the Triton interpreter, step 4 on two throw-away notebooks) and its report, refusing
to overwrite, a failing step's one-line reason, and --help.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib import config
from course_lib.harness import gpu_check
from course_lib.config import REPO_ROOT


def _notebook(path: Path, sources: list[str]) -> Path:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    nbformat.write(nb, str(path))
    return path


def test_no_cuda_prints_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(config, "OUTPUT_DIR", tmp_path / "outputs")
    assert gpu_check.main([]) == 0
    out, err = capsys.readouterr()
    assert out == gpu_check.NO_CUDA_LINE + "\n" and err == ""
    assert "no CUDA device" in out and not (tmp_path / "outputs").exists()
    # with --out and --skip too: still one line, no file
    assert gpu_check.main(["--out", str(tmp_path / "r.md"), "--skip", "nbval"]) == 0
    assert capsys.readouterr().out.count("\n") == 1 and not (tmp_path / "r.md").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the command would run the check")
def test_no_cuda_command_line(tmp_path):
    env = dict(os.environ, COURSE_OUTPUT_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "course_lib", "gpu-check"], capture_output=True, text=True,
                       timeout=120, cwd=REPO_ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [gpu_check.NO_CUDA_LINE]
    assert list(tmp_path.iterdir()) == []


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m course_lib gpu-check" in out
    for word in ("--out", "--skip", "--budget", "nbval", "8 minutes", "overwritten"):
        assert word in out, word
    assert "--worker" not in out and "--tiny" not in out  # testing options stay hidden


def test_bad_options(capsys):
    for argv in (["--skip", "kernels,frobnicate"], ["--budget", "bench"], ["--budget", "x=3"], ["--device", "cpu"]):
        with pytest.raises(SystemExit) as exc:
            gpu_check.main(argv)
        assert exc.value.code == 2, argv
    capsys.readouterr()


def test_refuses_to_overwrite(tmp_path, capsys):
    report = tmp_path / "report.md"
    report.write_text("an earlier report\n")
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(report)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "refusing to overwrite" in err
    assert report.read_text() == "an earlier report\n"


def test_tiny_cpu_dry_run_writes_every_section(tmp_path):
    """Steps 1-3 on the CPU (Triton interpreter, tiny sizes), step 4 on a passing and a failing notebook."""
    pytest.importorskip("triton")
    good = _notebook(tmp_path / "good.ipynb", ["import os\nassert os.environ['COURSE_MODE'] == 'fast'"])
    bad = _notebook(tmp_path / "bad.ipynb", ["x = 1", "raise ValueError('boom')"])
    report = tmp_path / "sub" / "report.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "course_lib", "gpu-check", "--device", "cpu", "--tiny", "--out",
                        str(report), "--nbval-paths", f"{good},{bad}"], capture_output=True, text=True, timeout=300,
                       cwd=REPO_ROOT, env=env)
    assert r.returncode == 1, r.stdout + r.stderr  # step 4 failed (on purpose): non-zero exit
    text = report.read_text()
    assert f"wrote {report}" in r.stdout and "FAILED (nbval)" in r.stdout
    # header: device, versions, overall status
    assert "Dry run on the CPU" in text and "| device | cpu (DRY RUN" in text
    assert f"| torch | {torch.__version__} |" in text and "| triton |" in text and "| CUDA (torch build) |" in text
    assert f"| overall | **FAILED (1 of {len(gpu_check.STEPS)} steps)** |" in text
    # every section, in order, with its table
    headings = ["## Summary"] + [f"## {k + 1}. {title}" for k, title in enumerate(gpu_check.STEPS.values())]
    positions = [text.index(h) for h in headings]
    assert positions == sorted(positions)
    for name in ("kernels", "bench", "student"):
        assert f"| {list(gpu_check.STEPS).index(name) + 1}. {name} | **PASSED** |" in text, name
    assert "| shape B×H×W×D×Hg×Wg | dtype | quantity | max error | tolerance | ok | note |" in text
    for dtype in gpu_check.KERNEL_DTYPES:
        for q in ("out", "d grid", "d guide", "d image"):
            assert f"| {dtype} | {q} |" in text, (dtype, q)
    assert "**NO**" not in text
    assert "| size | MP | dtype | impl | pass | ms (median) |" in text and "× off the floor" in text
    assert "| float16 | triton | fwd+bwd |" in text and "| float32 | naive | fwd |" in text
    assert "Copy bandwidth (floor)" in text
    assert "| stage | runs | ms (median) | ms (min) | note |" in text
    for stage in ("load shipped checkpoint", "text encoding (uncached)", "predict grid", "slice + apply",
                  "end to end, cached text"):
        assert f"| {stage} |" in text, stage
    # step 4: FAILED with its one-line reason, counts per notebook
    assert "| 4. nbval | **FAILED** |" in text and "bad.ipynb: 1 of 2 cells failed" in text
    assert "| good.ipynb | passed | 1 | 0 | 0 | 0 |" in text
    assert "| bad.ipynb | FAILED | 1 | 1 | 0 | 0 |" in text and "| Cell 1 |" in text
    assert "ValueError: boom" in text  # the tail of its output, for the failing notebook
    assert "| 5. hub | **SKIPPED** |" in text  # the real-size hub tier: CUDA only (make hub-check on the CPU)


def test_hub_step_reads_hub_check_lines():
    out = ("hub-check: pipeline /x ready in 2 s\nhub-check: teacher-eval: ok in 12.5 s, peak RSS 6.19 GB\n"
           "hub-check: train-vsd: timeout 60 s in 60.2 s, peak RSS 12.40 GB\n")
    rows = gpu_check.parse_hub_output(out)
    assert rows == [{"command": "teacher-eval", "status": "ok", "seconds": 12.5, "rss_gb": 6.19},
                    {"command": "train-vsd", "status": "timeout 60 s", "seconds": 60.2, "rss_gb": 12.4}]
    res = gpu_check.StepResult("hub", status="FAILED", reason="train-vsd: timeout 60 s", rows=rows)
    text = gpu_check.render([res], {"device": "cuda"}, "now", 1.0, [])
    assert "| command | status | seconds | peak RSS GB |" in text and "| train-vsd | timeout 60 s | 60.2 | 12.40 |" in text


def test_failing_worker_step_reports_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_WEIGHTS_DIR", str(tmp_path))  # no shipped student here
    res = gpu_check.run_worker_step("student", "cpu", tiny=True, timeout=120)
    assert res.status == "FAILED" and "\n" not in res.reason
    assert "CheckpointError" in res.reason and "not found" in res.reason
    text = gpu_check.render([res], {"device": "cpu"}, "now", 1.0, [])
    assert "| 1. student | **FAILED** |" in text and "| overall | **FAILED (1 of 1 steps)** |" in text


def test_parse_pytest_finished_and_cut_off():
    finished = ("solutions/02_fast_slicing.ipynb::Cell 0 PASSED\n::Cell 1 FAILED\n"
                "\x1b[32m===== 1 failed, 11 passed, 2 skipped in 30.12s =====\x1b[0m\n")
    row = gpu_check.parse_pytest(finished)
    assert (row["passed"], row["failed"], row["errors"], row["skipped"]) == (11, 1, 0, 2)
    assert row["first_failure"] == "Cell 1" and row["summary"] == "1 failed, 11 passed, 2 skipped in 30.12s"
    cut = "solutions/03_student::ipynb::Cell 0 PASSED\nsolutions/03_student::ipynb::Cell 1 ERROR\n::Cell 2"
    row = gpu_check.parse_pytest(cut)
    assert (row["passed"], row["errors"], row["summary"]) == (1, 1, "")


def test_budgets_fit_eight_minutes():
    assert sum(gpu_check.BUDGETS.values()) + gpu_check.RESERVE_S <= gpu_check.TOTAL_BUDGET_S <= 480
    assert gpu_check.tolerance("float32", "d guide", 8) == pytest.approx(9e-5)
    assert gpu_check.tolerance("float16", "out", 8) < gpu_check.tolerance("bfloat16", "out", 8)
    names = [p.name[:2] for p in gpu_check.nbval_paths()]
    assert names == ["02", "03", "04", "05"]
    make = (REPO_ROOT / "Makefile").read_text()
    assert "\ngpu-check:" in make and "-m course_lib gpu-check" in make
