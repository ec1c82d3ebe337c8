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


def test_format_table_without_latency_with_or_without_the_fields():
    """A held-out run made with ``--no-latency`` (``nan`` latencies, or none at all) and one whose latencies
    are quoted from another run render the same table: no latency columns."""
    def result(**ms):
        return {"rows": [{"method": "student, supervised (lesson 03)", "psnr": 37.4, "de00": 2.2, "kid": 0.0,
                          "accuracy": 79.2, "drift": 0.97, **ms}], "n": 96, "size": 128, "paraphrases": "heldout",
                "kid_label": "KID", "notes": []}
    timed, nan, absent = result(ms_1080p=40.48, speedup=36.5), result(ms_1080p=float("nan"), speedup=float("nan")), result()
    assert "ms / 1080p" in br.format_table(timed) and "40.5" in br.format_table(timed)
    md = br.format_table(timed, latency=False)
    assert md == br.format_table(nan, latency=False) == br.format_table(absent, latency=False)
    assert "1080p" not in md.split("\n", 2)[2] and "40.5" not in md and "36.5" not in md and "37.4" in md
    assert "latency: not shown" in md


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


def _fake_teacher_method(s, i, t):
    """A stand-in for the teacher (tests need not load it): a small uniform brightening."""
    return (s + 0.02).clamp(0, 1)


def test_bench_retouch_world_tiny_subset(tmp_path):
    """``data="world"``: the data world's val photos, rows with the PSNR per kind of edit, the speed-up
    reference found under the plain teacher label too, and every writer (table, CSV, plot) working."""
    import csv

    methods = {"identity": lambda s, i, t: s, "teacher, 50 DDIM steps": _fake_teacher_method}
    result = br.run(n=4, size=32, latency=False, methods=methods, notes=["a note"], data="world", split="val")
    assert result["data"] == "world" and result["split"] == "val" and result["wording"] == "heldout_phrasing"
    assert sum(result["groups"].values()) <= 4
    assert [r["method"] for r in result["rows"]] == list(methods)
    for r in result["rows"]:
        assert {"psnr", "psnr_global", "psnr_content", "de00", "kid", "accuracy", "drift", "speedup"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("psnr", "de00", "kid", "accuracy", "drift"))
        for k, g in (("psnr_global", "global"), ("psnr_content", "content-aware")):
            assert math.isfinite(r[k]) == (result["groups"][g] > 0)
    assert br.teacher_row(result, 50)["method"] == "teacher, 50 DDIM steps"
    md = br.format_table(result)
    assert "data world 2.0 val photos" in md and "PSNR content-aware" in md and "- a note" in md
    paths = br.write(result, tmp_path)
    with open(paths[0]) as f:
        header = next(csv.reader(f))
    assert header[:4] == ["method", "psnr", "psnr_global", "psnr_content"]
    # the same items again, from the first world: the pairs table, without the per-kind columns
    pairs = br.run(n=4, size=32, latency=False, methods=methods, notes=[])
    assert pairs["data"] == "pairs" and "psnr_global" not in pairs["rows"][0] and "split" not in pairs
    assert "PSNR global" not in br.format_table(pairs) and br.columns(pairs) == br.COLUMNS


def test_speedup_reference_is_the_50_step_teacher_of_either_world():
    assert br.is_teacher("teacher, 50 DDIM steps (lesson 04)", 50)
    assert br.is_teacher(br.teacher_label(50, "world"), 50)
    assert br.teacher_label(4, "world").startswith("teacher (data world), 4 ")
    assert not br.is_teacher("teacher, 500 DDIM steps", 50) and not br.is_teacher(br.teacher_label(4, "world"), 50)


def _tiny_student(path, data):
    import json

    from course_lib.student import Student, StudentConfig, save_student

    meta = {"provenance": json.dumps({"data": data}), "paired_targets": "none"} if data else None
    save_student(Student(StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,))), path,
                 metadata=meta)


def test_build_methods_world_keeps_only_students_trained_on_the_world(tmp_path):
    """A VSD student whose provenance says ``"data": "pairs"`` is skipped with the reason, one whose
    provenance says ``"data": "world"`` is a row, so is an extra and the inverter (trained on the world
    teacher); first-world models are noted as skipped."""
    import pytest

    _tiny_student(tmp_path / "student_supervised.safetensors", None)
    _tiny_student(tmp_path / "student_vsd_scratch.safetensors", "pairs")
    _tiny_student(tmp_path / "student_vsd_align_scratch.safetensors", "world")
    _tiny_student(tmp_path / "candidate.safetensors", "world")
    methods, notes = br.build_methods(steps_teacher=(50,), data="world", weights_dir=tmp_path, teacher=object(),
                                      extra={"candidate": tmp_path / "candidate.safetensors"})
    assert list(methods) == ["identity", "global affine (oracle: fitted to the target)",
                             "student, supervised (lesson 03)",
                             "student, VSD + alignment from scratch, no paired targets (lesson 06)", "candidate",
                             "teacher (data world), 50 DDIM steps (lesson 04)",
                             "Inverse-and-Edit, 4 + 8 steps, residual (lesson 07)"]  # the inverter of the world teacher
    assert ("student, VSD from scratch, no paired targets (lesson 05): skipped: trained on the first world "
            "(provenance data = pairs)") in notes
    for skipped in ("student, VSD (lesson 05)", "student, VSD + alignment (lesson 06)", "global affine (learned)"):
        assert any(n.startswith(skipped) and "skipped" in n for n in notes), skipped
    out = methods["candidate"](torch.rand(2, 3, 32, 32), ["make it warmer"] * 2, None)
    assert out.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError):
        br.build_methods(data="world", weights_dir=tmp_path, teacher=object(),
                         extra={"identity": tmp_path / "candidate.safetensors"})


def test_bench_retouch_cli_options(tmp_path, capsys, monkeypatch):
    """``--data world --split val --extra a=b`` parse (and reach ``run``); a bad ``--extra``, a missing
    checkpoint or ``--split`` with the first world's data is one error line and exit code 2."""
    ckpt = tmp_path / "b.safetensors"
    ckpt.write_bytes(b"")
    seen = {}

    def fake_run(*args, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")
    monkeypatch.setattr(br, "run", fake_run)
    assert br.main(["--data", "world", "--split", "val", "--extra", f"a={ckpt}", "--out", str(tmp_path)]) == 2
    assert seen["data"] == "world" and seen["split"] == "val" and seen["extra"] == {"a": ckpt}
    assert capsys.readouterr().err.strip() == "error: stop here"
    assert br.parse_extra(f"a={ckpt}, c = {ckpt}") == {"a": ckpt, "c": ckpt} and br.parse_extra(None) == {}
    for argv, says in ((["--extra", "nonsense"], "NAME=PATH"), (["--extra", f"a={tmp_path}/none"], "no checkpoint"),
                       (["--split", "val"], "--data world")):
        assert br.main(argv + ["--out", str(tmp_path)]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err


def test_first_world_copy_of_a_student_is_found_for_the_pairs_table(tmp_path):
    """The shipped name may hold the data world's student; the first world's table reads its copy."""
    from course_lib.eval import bench_retouch as B

    name = "student_vsd_scratch.safetensors"
    (tmp_path / name).write_bytes(b"world")
    assert B.first_world_path(tmp_path, name) == tmp_path / name  # no copy: the name itself
    (tmp_path / B.FIRST_WORLD_FILES[name]).write_bytes(b"first")
    assert B.first_world_path(tmp_path, name) == tmp_path / B.FIRST_WORLD_FILES[name]
    assert B.first_world_path(tmp_path, "student_vsd.safetensors") == tmp_path / "student_vsd.safetensors"


def test_student_method_clamps_without_touching_the_photo():
    """The bench's student method clamps its output to [0, 1] (in place when no gradient needs it) and
    never changes the source photo; with gradients on, the clamp keeps the graph."""
    from course_lib.eval.student import student_method

    class Doubler(torch.nn.Module):
        device = torch.device("cpu")

        def embed(self, instructions):
            return torch.zeros(len(instructions), 4)

        def forward(self, image, text):
            return 2 * image - 0.5

    src = torch.linspace(0, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    keep = src.clone()
    with torch.no_grad():
        out = student_method(Doubler())(src, ["a", "b"], None)
    assert torch.equal(src, keep) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, (2 * keep - 0.5).clamp(0, 1))
    x = src.clone().requires_grad_(True)
    y = student_method(Doubler())(x, ["a", "b"], None)
    y.sum().backward()
    assert torch.equal(x.grad, 2.0 * ((2 * keep - 0.5 > 0) & (2 * keep - 0.5 < 1)))
