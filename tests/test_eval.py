"""Tests of the evaluation layer (course_lib.eval: heldout, score, tables); its layering: test_layers.py."""
from __future__ import annotations

import math

import pytest
import torch

from course_lib import world
from course_lib.eval import score as S, tables
from course_lib.eval.heldout import check_scoring_photos, heldout_batch, take


def test_heldout_batch_is_the_same_items_every_time():
    a = heldout_batch(3, 32, wording="train")
    b = heldout_batch(5, 32, wording="train")
    assert set(a["photo"]) <= set(world.photo_names("test"))
    assert a["source"].shape == (3, 3, 32, 32) and len(a["instruction"]) == len(a["edits"]) == 3
    assert torch.equal(a["source"], b["source"][:3]) and a["instruction"] == b["instruction"][:3]
    part = take(b, slice(1, 3))
    assert torch.equal(part["target"], b["target"][1:3]) and part["edits"] == b["edits"][1:3]


def test_score_keys_units_and_chunking():
    batch = heldout_batch(4, 32, wording="train", families=world.GLOBAL_FAMILIES)
    s = S.score(batch["target"], batch)  # the oracle: right on target
    assert list(s) == list(S.EDIT_KEYS)
    assert math.isinf(s["psnr"]) and s["de00"] == 0 and s["accuracy"] == 100.0 and s["direction"] == 100.0
    ident = S.score(batch["source"], batch)
    assert ident["accuracy"] == 0.0 and ident["direction"] == 0.0 and ident["drift"] < 0.05
    # chunked runs give the same numbers as one call
    fn = lambda src, texts, tgt: (0.5 * src + 0.5 * tgt)  # noqa: E731
    whole, chunked = S.run(fn, batch), S.run(fn, batch, batch_size=3, keep_output=True)
    assert whole["scores"] == chunked["scores"] and chunked["output"].shape == batch["source"].shape
    assert 0 < whole["scores"]["accuracy"] <= 100 and whole["ms_per_image"] >= 0
    with pytest.raises(KeyError):
        S.per_item(batch["source"], batch, keys=("nope",))


def test_every_scoring_entry_point_refuses_training_photos(monkeypatch):
    """The guard in the scoring code: a batch that names a training photo is refused (one line) by
    score, run and everything built on them (bench retouch, vsd-study, inversion-eval, teacher-eval,
    evaluate); the test-set builders refuse the training split."""
    from course_lib.eval import bench_retouch as br, world as W
    from course_lib.eval.inversion import evaluate_inversion

    train = world.RetouchWorld("train", "train", size=16, length=2, seed=0)
    items = [train[i] for i in range(2)]
    batch = {"source": torch.stack([it["source"] for it in items]), "target": torch.stack([it["target"] for it in items]),
             "instruction": [it["instruction"] for it in items], "edits": [it["edits"] for it in items],
             "photo": [it["photo"] for it in items]}
    for call in (lambda: S.score(batch["source"], batch), lambda: S.run(lambda s, i, t: s, batch, keys=())):
        with pytest.raises(ValueError, match="refusing to score on training photos") as err:
            call()
        assert "\n" not in str(err.value)
    for split in ("train", "nope"):
        with pytest.raises(ValueError, match="never on training photos"):
            heldout_batch(2, 16, split=split)
        with pytest.raises(ValueError):
            W.world_batch(2, 16, split=split)
    check_scoring_photos(world.photo_names("test") + world.photo_names("val") + ["an upload"])  # these pass
    # the entry points build their items with heldout_batch: handing them a training split fails there
    monkeypatch.setattr(W, "heldout_batch", lambda *a, **k: batch)
    with pytest.raises(ValueError, match="training photos"):
        br.run(n=2, size=16, latency=False, methods={"identity": lambda s, i, t: s}, notes=[])
    from course_lib.eval import inversion as I

    monkeypatch.setattr(I, "heldout_batch", lambda *a, **k: batch)
    with pytest.raises(ValueError, match="training photos"):
        evaluate_inversion(None, type("T", (), {"resolution": 16})(), n=2,
                           perceptual=lambda a, b: (a - b).abs().mean((1, 2, 3)))


def test_no_training_path_reads_a_validation_or_test_photo():
    """Every trainer's data (student, teacher, VSD and its regression set, inverter, edit encoder) and the
    instruction banks draw from the training photos only."""
    from course_lib.train import inverter as inv, student as st, teacher as te, vsd

    train = set(world.photo_names("train"))
    sets = [st.training_data(st.TrainArgs(size=16)), te.training_data(te.TrainConfig(resolution=16)),
            vsd.training_items(vsd.VSDArgs(size=16)), vsd.training_items(vsd.VSDArgs(size=16), seed_offset=20_000),
            inv.training_data(inv.InverterArgs(), 16), world.RetouchWorld("train", size=16, length=8)]
    for ds in sets:
        base = getattr(ds, "ds", ds)  # WithoutTargets wraps the dataset
        assert set(base.photos) == train
        assert all(ds[i]["photo"] in train for i in range(6))


def test_markdown_and_csv_formats():
    rows = [{"method": "a", "steps": 4, "psnr": 21.234, "accuracy": 37.5, "ms_1080p": float("nan"), "extra": 1.0}]
    md = tables.markdown(rows, ["method", "steps", "psnr", "accuracy", ("ms_1080p", "ms"), "extra"], title="T",
                         notes=["skipped b"])
    assert md.splitlines() == ["T", "", "| method | steps | PSNR (dB) ↑ | instruction acc. (%) ↑ | ms | extra |",
                               "|---|---:|---:|---:|---:|---:|", "| a | 4 | 21.23 | 38 | - | 1.00 |", "",
                               "- skipped b"]
    assert tables.csv_text(rows, ["method", "psnr"]).splitlines() == ["method,psnr", "a,21.234"]


def test_without_drops_columns_by_key_and_refer_points_elsewhere():
    cols = ["method", ("psnr", "PSNR"), "ms_per_image", ("speedup", "x")]
    assert tables.without(cols, ("ms_per_image", "speedup")) == ["method", ("psnr", "PSNR")]
    assert tables.without(cols, "psnr") == ["method", "ms_per_image", ("speedup", "x")]
    assert tables.without(cols, ("absent",)) == cols
    rows = [{"method": "identity", "ms_per_image": 0.0}, {"method": "teacher's own edit (lesson 04)", "ms_per_image": 668.1},
            {"method": "grid student (lesson 03)", "ms_per_image": 30.2}]
    shown = tables.refer(rows, ("teacher's own edit", "grid student"), ["ms_per_image"], "see lesson 04")
    assert [r["ms_per_image"] for r in shown] == [0.0, "see lesson 04", "see lesson 04"]
    assert rows[1]["ms_per_image"] == 668.1  # the rows given are not changed
    md = tables.markdown(shown, ["method", "ms_per_image"])
    assert "| teacher's own edit (lesson 04) | see lesson 04 |" in md and "668" not in md


def test_write_is_atomic_and_never_overwrites_unless_asked(tmp_path):
    rows = [{"method": "a", "psnr": 20.0}]
    paths = tables.write_table(rows, ["method", "psnr"], tmp_path / "t", formats=("csv", "md", "json"))
    assert [p.name for p in paths] == ["t.csv", "t.md", "t.json"]
    before = {p: p.read_text() for p in paths}
    with pytest.raises(FileExistsError, match="--overwrite"):
        tables.write_table([{"method": "b", "psnr": 1.0}], ["method", "psnr"], tmp_path / "t", formats=("md", "csv"))
    assert {p: p.read_text() for p in paths} == before  # nothing written when one exists
    tables.write_table([{"method": "b", "psnr": 1.0}], ["method", "psnr"], tmp_path / "t", overwrite=True)
    assert "| b |" in (tmp_path / "t.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json", "t.md"]  # no temporary files left



def test_command_line_spells_out_every_option_shell_quoted():
    """A results file's command: every option by name, quoted so that a pasted command gives the same
    arguments back; flags bare, unset and skipped options left out (0 is a value, not "unset")."""
    import argparse
    import shlex

    from course_lib.eval import tables

    a = argparse.Namespace(students="a b=x.safetensors,c=y; rm", n=0, fast=True, quiet=False, out=None,
                           json="r.json", overwrite=True)
    cmd = tables.command_line("vsd-study", a, skip=("json", "overwrite"))
    assert cmd == ("python -m course_lib vsd-study --fast --n 0 --students 'a b=x.safetensors,c=y; rm'")
    assert shlex.split(cmd)[4:] == ["--fast", "--n", "0", "--students", "a b=x.safetensors,c=y; rm"]


def test_metric_registry_one_entry_per_score():
    """Every score is one registry line: its per-image function, its reduction and its column."""
    out, batch = torch.full((2, 3, 8, 8), 0.5), {"source": torch.full((2, 3, 8, 8), 0.4),
                                                 "target": torch.full((2, 3, 8, 8), 0.6), "edits": [[], []]}
    assert S.SCORABLE and set(S.EDIT_KEYS + S.RECONSTRUCTION_KEYS) <= set(S.SCORABLE)
    for key in S.SCORABLE:
        assert S.COLUMNS[key] == (S.METRICS[key].header, S.METRICS[key].fmt)
    # a new metric is its registry line: scored, reduced and shown with no other change
    S.METRICS["mean_level"] = S.Metric("mean_level", "mean level", "{:.3f}",
                                      lambda o, b, p: o.mean(dim=(1, 2, 3)), lambda v: 2 * float(v.mean()))
    try:
        assert "| mean level |" in tables.markdown([{"mean_level": 0.5}], ["mean_level"]).replace("-", "")
        assert S.score(out, batch, ("psnr", "mean_level")) == pytest.approx({"psnr": 20 * math.log10(1 / 0.1),
                                                                             "mean_level": 1.0}, rel=1e-4)
    finally:
        del S.METRICS["mean_level"]
    with pytest.raises(KeyError, match="unknown score 'nope'"):
        S.per_item(out, batch, ("nope",))
