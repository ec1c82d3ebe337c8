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


SCORES = ("psnr", "de00", "kid", "edit_accuracy", "drift")


def test_bench_retouch_tiny_subset(tmp_path):
    keep = ["identity", "student, supervised (lesson 03)", "teacher, 50 DDIM steps (lesson 04)"]
    methods, notes = br.build_methods(names=keep)
    result = br.run(n=4, size=32, repeats=1, methods=methods, notes=notes)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == keep and result["split"] == "test" and result["wordings"] == list(br.WORDINGS)
    for r in result["rows"]:
        assert {"ms_1080p", "speedup", "psnr_global", "psnr_content"} <= set(r)
        assert all(math.isfinite(r[k + x]) for k in SCORES for x in ("", "_heldout"))
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
                          "edit_accuracy": 79.2, "drift": 0.97, "psnr_heldout": 36.1, **ms}], "n": 96, "size": 128,
                "kid_label": "KID", "notes": []}
    timed, nan, absent = result(ms_1080p=40.48, speedup=36.5), result(ms_1080p=float("nan"), speedup=float("nan")), result()
    assert "ms / 1080p" in br.format_table(timed) and "40.5" in br.format_table(timed)
    md = br.format_table(timed, latency=False)
    assert md == br.format_table(nan, latency=False) == br.format_table(absent, latency=False)
    assert "1080p" not in md.split("\n", 2)[2] and "40.5" not in md and "36.5" not in md and "37.4" in md
    assert "36.1" in md  # the held-out phrasing column
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
        return {"method": method, "psnr": psnr, "de00": 5.0, "kid": 0.0, "edit_accuracy": 10.0, "drift": drift,
                "ms_1080p": ms, "speedup": 1500.0 / ms}
    result = {"rows": [row("identity", 24.5, float("nan"), 0.0), row(br.PAPER_STUDENT, 28.88, 39.0, 0.31),
                       row("teacher, 50 DDIM steps (lesson 04)", 27.29, 1500.0, 3.06),
                       row("teacher, 4 DDIM steps (lesson 04)", 28.69, 167.0, 3.21),
                       row("Inverse-and-Edit, 4 + 4 steps (lesson 07)", 21.35, 354.0, 11.92)],
              "split": "test", "threads": 1}
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


def test_bench_retouch_scores_both_wordings_on_the_same_crops(tmp_path):
    """One run: the same validation crops with the training wording and with held-out phrasings, the PSNR per
    kind of edit, the speed-up reference found by its label, and every writer (table, CSV, plot) working."""
    import csv

    methods = {"identity": lambda s, i, t: s, "teacher, 50 DDIM steps": _fake_teacher_method}
    result = br.run(n=4, size=32, latency=False, methods=methods, notes=["a note"], split="val")
    assert result["split"] == "val" and result["wordings"] == ["train", "heldout_phrasing"]
    assert all(sum(g.values()) <= 4 for g in result["groups"].values())
    assert [r["method"] for r in result["rows"]] == list(methods)
    for r in result["rows"]:
        assert all(math.isfinite(r[k + x]) for k in SCORES for x in ("", "_heldout"))
        for k, g in (("psnr_global", "global"), ("psnr_content", "content-aware")):
            assert math.isfinite(r[k]) == (result["groups"]["train"][g] > 0)
    assert br.teacher_row(result, 50)["method"] == "teacher, 50 DDIM steps"
    md = br.format_table(result)
    assert "val photos" in md and "PSNR content-aware" in md and "PSNR held-out phrasing" in md and "- a note" in md
    paths = br.write(result, tmp_path)
    with open(paths[0]) as f:
        header = next(csv.reader(f))
    assert header[:4] == ["method", "psnr", "psnr_global", "psnr_content"] and "psnr_heldout" in header


def test_speedup_reference_is_the_50_step_teacher():
    assert br.is_teacher(br.teacher_label(50), 50) and br.teacher_label(4).startswith("teacher, 4 ")
    assert not br.is_teacher("teacher, 500 DDIM steps", 50) and not br.is_teacher(br.teacher_label(4), 50)


def _tiny_student(path, data, global_affine=False):
    from course_lib.student import Student, StudentConfig, save_student

    meta = {"data": data, "paired_targets": "none"} if data else None
    save_student(Student(StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,),
                                       global_affine=global_affine)), path, metadata=meta)


def test_the_registry_builds_each_method_once_and_skips_what_it_cannot_trust(tmp_path):
    """The methods are the registry's entries in its order; a student trained on other data, or missing,
    is a note, never a row; extras go after the shipped students; one more entry is one more row."""
    import pytest

    _tiny_student(tmp_path / "student_supervised.safetensors", "world")
    _tiny_student(tmp_path / "student_global_affine.safetensors", "world", global_affine=True)
    _tiny_student(tmp_path / "student_vsd_scratch.safetensors", "pairs")
    _tiny_student(tmp_path / "candidate.safetensors", "world")
    methods, notes = br.build_methods(weights_dir=tmp_path, teacher=object(),
                                      extra={"candidate": tmp_path / "candidate.safetensors"})
    names = list(methods)
    assert names[:5] == ["identity", "global affine (oracle: fitted to the target)",
                         "grid (oracle: BGU fitted to the target)", "global affine (learned)",
                         "student, supervised (lesson 03)"]
    assert names[5:8] == ["candidate", "teacher, 50 DDIM steps (lesson 04)", "teacher, 4 DDIM steps (lesson 04)"]
    assert set(names) - {"candidate"} <= set(br.REGISTRY) and len(names) == len(set(names))
    assert any(n.startswith("student, VSD from scratch") and "data = pairs" in n for n in notes)
    out = methods["candidate"](torch.rand(2, 3, 32, 32), ["make it warmer"] * 2, None)
    assert out.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError):
        br.build_methods(weights_dir=tmp_path, teacher=object(), extra={"identity": tmp_path / "candidate.safetensors"})
    with pytest.raises(ValueError, match="unknown methods"):
        br.build_methods(names=["nope"])
    monkey = dict(br.REGISTRY, sepia=lambda ctx: (lambda s, i, t: s))
    try:
        br.REGISTRY, old = monkey, br.REGISTRY
        assert "sepia" in br.build_methods(names=["identity", "sepia"])[0]
    finally:
        br.REGISTRY = old


def test_bench_retouch_cli_options(tmp_path, capsys, monkeypatch):
    """``--split val --extra a=b`` parse (and reach ``run``); a bad ``--extra`` or a missing checkpoint is
    one error line and exit code 2."""
    ckpt = tmp_path / "b.safetensors"
    ckpt.write_bytes(b"")
    seen = {}

    def fake_run(*args, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")
    monkeypatch.setattr(br, "run", fake_run)
    assert br.main(["--split", "val", "--extra", f"a={ckpt}", "--out", str(tmp_path)]) == 2
    assert seen["split"] == "val" and seen["extra"] == {"a": ckpt}
    assert capsys.readouterr().err.strip() == "error: stop here"
    assert br.parse_extra(f"a={ckpt}, c = {ckpt}") == {"a": ckpt, "c": ckpt} and br.parse_extra(None) == {}
    for argv, says in ((["--extra", "nonsense"], "NAME=PATH"), (["--extra", f"a={tmp_path}/none"], "no checkpoint")):
        assert br.main(argv + ["--out", str(tmp_path)]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err


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


def test_student_method_runs_a_student_as_retouch_does():
    """Without gradients the bench runs a student through the fused pipeline (the clamp inside the pass),
    with the same result as its forward pass clamped afterwards."""
    from course_lib.eval.student import student_method
    from course_lib.student import Student, StudentConfig

    torch.manual_seed(0)
    model = Student(StudentConfig(net_size=64, grid_size=16, channels=8, fc=(16,))).eval()
    with torch.no_grad():
        for p in model.head.parameters():  # a grid far from the identity: results reach past [0, 1]
            p.normal_(0, 0.5)
        src = torch.rand(2, 3, 40, 56)
        got = student_method(model)(src, ["make it warmer", "darker"], None)
        want = model(src, model.embed(["make it warmer", "darker"])).clamp(0, 1)
    assert got.min() >= 0 and got.max() <= 1 and (want == 0).any() and (want == 1).any()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
