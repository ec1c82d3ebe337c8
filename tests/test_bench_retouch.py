"""Tests of course_lib.eval.bench_retouch (lesson 08's results table) on a tiny subset."""
from __future__ import annotations

import math

import torch

from course_lib.eval import bench_retouch as br
from course_lib.metrics import kid


def test_kid_is_zero_in_expectation_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    assert abs(kid(a, b)) < 0.05
    assert kid(a, b + 1.0) > 0.5


def test_transfer_edit_carries_a_low_resolution_change():
    src = torch.rand(1, 3, 64, 64)
    small = torch.nn.functional.interpolate(src, size=(32, 32), mode="bilinear", antialias=True)
    out = br.transfer_edit(src, small, (small + 0.1).clamp(0, 1))
    assert out.shape == src.shape
    assert 0.05 < float((out - src).mean()) <= 0.1


def test_bench_retouch_tiny_subset(tmp_path):
    methods, notes = br.build_methods(steps_teacher=(50,))
    keep = ["identity", "student, supervised (lesson 03)", "teacher, 50 DDIM steps (lesson 04)"]
    result = br.run(n=4, size=32, repeats=1, methods={k: methods[k] for k in keep}, notes=notes)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == keep
    for r in result["rows"]:
        assert {"psnr", "de00", "kid", "accuracy", "drift", "ms_1080p", "speedup"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("psnr", "de00", "kid", "accuracy", "drift"))
    student, teacher = rows[keep[1]], rows[keep[2]]
    assert student["ms_1080p"] < teacher["ms_1080p"] and student["speedup"] > 1
    assert teacher["speedup"] == 1.0
    md = br.format_table(result)
    assert result["kid_label"] in md and "teacher, 50" in md
    paths = br.write(result, tmp_path)
    assert [p.name for p in paths] == ["bench_retouch.csv", "bench_retouch.md", "bench_retouch.png"]
    assert all(p.stat().st_size > 0 for p in paths) and not list(tmp_path.glob(".*part*"))


def test_bench_retouch_help(capsys):
    import pytest

    from course_lib.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "retouch", "--help"])
    assert e.value.code == 0 and "course_lib bench retouch" in capsys.readouterr().out


def test_papers_table_reads_every_number_from_the_results():
    """Lesson 08's "next to the papers" table: the course's side is rendered from a bench result and
    inversion-eval's file, so a changed result changes the table (nothing typed by hand)."""
    import json

    from course_lib import config

    def row(method, psnr, ms, drift):
        return {"method": method, "psnr": psnr, "de00": 5.0, "kid": 0.0, "accuracy": 10.0, "drift": drift,
                "ms_1080p": ms, "speedup": 1500.0 / ms}
    result = {"rows": [row("identity", 24.5, float("nan"), 0.0), row(br.PAPER_STUDENT, 28.88, 39.0, 0.31),
                       row("teacher, 50 DDIM steps (lesson 04)", 27.29, 1500.0, 3.06),
                       row("teacher, 4 DDIM steps (lesson 04)", 28.69, 167.0, 3.21),
                       row("Inverse-and-Edit, 4 + 4 steps (lesson 07)", 21.35, 354.0, 11.92)],
              "paraphrases": "train", "threads": 1}
    inv = json.loads((config.RESULTS_DIR / "inversion.json").read_text())
    md = br.papers_table(result, inv)
    for s in ("39 ms", "38.5× over the 50-step teacher (1500 ms)", "4.3× over the 4-step teacher (167 ms)",
              "0.31 levels", "3.06", "11.92", "28.88 dB", "27.29 dB", "45 ms"):
        assert s in md, s
    rec = {r["method"]: r for r in inv["reconstruction"]}
    assert f"{rec['DDIM-50']['psnr'] - rec['cycle-trained 4-step']['psnr']:.2f} dB" in md
    result["rows"][1]["ms_1080p"] = 78.0
    assert "78 ms" in br.papers_table(result) and "Inverse-and-Edit reconstruction" not in br.papers_table(result)
    # without the paper's student, the supervised one stands in, and its name is said
    result["rows"][1]["method"] = "student, supervised (lesson 03)"
    assert "(student, supervised)" in br.papers_table(result) and "trained without pairs" not in br.papers_table(result)


def test_latency_is_timed_round_robin():
    """Every repeat times every method once (a slow spell hits all methods alike), after a warm-up of
    each; the result is each method's median."""
    calls = []

    def fake(name):
        return lambda s, i, t: calls.append(name)
    ms = br.interleaved_latency({"a": fake("a"), "b": fake("b")}, repeats=3, size=(4, 4))
    assert calls == ["a", "b"] * 4 and set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
