"""The student on the data world 2.0 (issue 18): activation, "understood as" heads, refusal,
non-edit requests, world training and evaluation."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from course_lib import grammar, metrics, world
from course_lib.apps import retouch as retouch_app
from course_lib.student import (Student, StudentConfig, calibrate_readout, read_instruction, save_student,
                                understood_line)

SMALL = StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,), readout=world.READOUT_LABELS)


def test_config_act_default_and_legacy():
    assert StudentConfig().act == "leaky"
    legacy = json.loads(StudentConfig().to_json())
    del legacy["act"]
    assert StudentConfig.from_json(json.dumps(legacy)).act == "relu"  # checkpoints from before the field
    with pytest.raises(ValueError):
        StudentConfig(act="gelu")


def test_leaky_activation_passes_negative_values():
    m = Student(SMALL)
    x = torch.tensor([-1.0, 2.0])
    assert torch.equal(m.act(x), torch.tensor([-0.1, 2.0]))
    assert torch.equal(Student(dataclasses.replace(SMALL, act="relu")).act(x), torch.tensor([0.0, 2.0]))


def test_readout_heads_shapes_and_forward():
    m = Student(SMALL)
    text = torch.randn(3, SMALL.text_dim)
    logits, strength = m.understand(text)
    assert logits.shape == strength.shape == (3, len(world.READOUT_LABELS))
    out, grid, (lg, st) = m(torch.rand(3, 3, 40, 40), text, return_grid=True, return_readout=True)
    assert torch.equal(lg, logits) and out.shape == (3, 3, 40, 40)
    with pytest.raises(RuntimeError):
        Student(dataclasses.replace(SMALL, readout=())).understand(text)


def test_read_instruction_respects_threshold():
    m = Student(dataclasses.replace(SMALL, readout_threshold=1.01))
    assert read_instruction(m, ["make the sky warmer", "xxxx"]) == [[], []]
    m.cfg.readout_threshold = 0.0
    (r,) = read_instruction(m, "make the sky warmer")
    assert len(r) == len(world.READOUT_LABELS) and r[0]["p"] >= r[-1]["p"]
    assert understood_line(r[:1]).startswith("understood: ")
    assert understood_line([]) == "understood: nothing I can do"


class _Fake:
    """A model whose presence probability is the embedding's first value (for calibrate_readout)."""

    def embed(self, texts):
        return torch.tensor([[float(t)] for t in texts])

    def understand(self, text):
        p = text.clamp(1e-4, 1 - 1e-4)
        return torch.log(p / (1 - p)), torch.zeros_like(p)


def test_calibrate_readout_separates():
    t = calibrate_readout(_Fake(), ["0.9", "0.8", "0.7"], ["0.1", "0.3", "0.2"])
    assert 0.3 < t < 0.7
    # overlapping: the best balanced accuracy still wins
    t = calibrate_readout(_Fake(), ["0.9", "0.8", "0.25"], ["0.1", "0.3", "0.2"])
    assert 0.2 < t < 0.8  # two thresholds tie at 5/6: either is right


def test_describe_and_non_edits():
    assert grammar.describe("region_temperature", "sky", 1.0) == "sky warmer (+1.0)"
    assert grammar.describe("exposure", "", -0.5) == "darker (-0.5)"
    assert grammar.describe("hsl_hue", "greens", 1.8).startswith("greens more ")
    assert not set(grammar.NON_EDITS) & set(grammar.NON_EDITS_HELDOUT)
    rng = np.random.default_rng(0)
    texts = [grammar.non_edit_text(rng, "heldout") for _ in range(60)]
    assert all(t not in grammar.NON_EDITS for t in texts)
    assert any(t in grammar.NON_EDITS_HELDOUT for t in texts)


def test_readout_targets_and_non_edit_items():
    present, strength = world.readout_targets("region_temperature@sky:+2.200;exposure:-0.350")
    k_sky = world.READOUT_LABELS.index("region_temperature@sky")
    k_exp = world.READOUT_LABELS.index("exposure")
    assert present.sum() == 2 and present[k_sky] == present[k_exp] == 1
    assert math.isclose(float(strength[k_sky]), 2.2 / world.WORLD_FAMILY["region_temperature"].unit, rel_tol=1e-6)
    assert math.isclose(float(strength[k_exp]), -0.35 / world.WORLD_FAMILY["exposure"].unit, rel_tol=1e-6)
    assert world.readout_targets("")[0].sum() == 0
    ds = world.RetouchWorld(size=32, length=40, p_none=0.5, seed=1)
    items = [ds[i] for i in range(40)]
    none = [it for it in items if it["edits"] == ""]
    assert 5 < len(none) < 35
    assert all(torch.equal(it["source"], it["target"]) for it in none)
    # p_none = 0 keeps the items of the world as they were
    a, b = world.RetouchWorld(size=32, length=3, seed=2), world.RetouchWorld(size=32, length=3, seed=2, p_none=0.0)
    assert all(a[i]["instruction"] == b[i]["instruction"] and torch.equal(a[i]["target"], b[i]["target"]) for i in range(3))


def test_edit_accuracy_and_locality():
    src = torch.full((2, 3, 8, 8), 0.5)
    tgt = src.clone()
    tgt[:, :, :4] += 0.2  # the top half brightened
    half = src + 0.6 * (tgt - src)
    assert metrics.edit_accuracy(torch.stack([tgt[0], src[0]]), src, tgt).tolist() == [True, False]
    assert metrics.edit_accuracy(half, src, tgt).all()
    assert metrics.edit_accuracy(src, src, src).all()  # nothing to do, nothing done
    loc = metrics.change_locality(half, src, tgt)
    assert torch.allclose(loc, torch.ones(2))
    elsewhere = src.clone()
    elsewhere[:, :, 4:] += 0.2
    assert (metrics.change_locality(elsewhere, src, tgt) < 0).all()
    assert torch.isnan(metrics.change_locality(src, src, tgt)).all()


def test_batches_with_workers_equal_the_plain_ones():
    from course_lib.train.common import Shard
    from course_lib.train.student import Embed

    ds = world.RetouchWorld(size=24, length=10**6, seed=5, p_none=0.2)
    shard = Shard(3)
    plain = list(shard.batches(ds, 2, 5, workers=0, transform=Embed(SMALL, True)))
    ahead = list(shard.batches(ds, 2, 5, workers=1, transform=Embed(SMALL, True)))
    assert len(plain) == len(ahead) == 3
    for a, b in zip(plain, ahead):
        assert a["instruction"] == b["instruction"] and torch.equal(a["source"], b["source"])
        assert torch.equal(a["text"], b["text"]) and torch.equal(a["present"], b["present"])


def test_world_training_sets_threshold_and_resumes(tmp_path):
    from course_lib.student import load_student
    from course_lib.train.student import TrainArgs, train

    kw = dict(batch_size=4, size=32, net_size=32, grid_size=8, channels=16, warmup=2, lr=3e-3, seed=3)
    full, losses = train(TrainArgs(steps=4, out=str(tmp_path / "a.safetensors"), save_every=2, **kw))
    assert full.cfg.readout == world.READOUT_LABELS and full.cfg.act == "leaky"
    assert 0 < full.cfg.readout_threshold < 1
    saved = load_student(tmp_path / "a.safetensors")
    assert saved.cfg.readout_threshold == full.cfg.readout_threshold
    train(TrainArgs(steps=2, out=str(tmp_path / "b.safetensors"), save_every=2, **kw))
    resumed, losses_b = train(TrainArgs(steps=4, out=str(tmp_path / "b.safetensors"), save_every=2, **kw), resume=True)
    assert losses_b[:2] == losses[:2]
    for (k, v), (_, w) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-6), k


def test_evaluate_world_small():
    from course_lib.eval import world as EW

    m = Student(SMALL)
    r = EW.evaluate_world(m, None, n=6, size=32, wordings=("train", "heldout_synonym"))
    ident = EW.row(r, "train", "identity")
    assert ident["edit_accuracy"] == 0 and ident["n"] == 6
    assert EW.row(r, "train", "global affine (oracle)")["psnr"] > ident["psnr"]
    assert EW.row(r, "train", "grid (oracle)")
    assert not EW.row(r, "heldout_synonym", "grid (oracle)")  # the oracle does not read the text: once
    assert set(r["readout"]) == {"train", "heldout_synonym"} and 0 <= r["non_edit_refusal"] <= 100
    assert "Wording: train" in EW.markdown(r)


# threshold 2.01: nothing is understood, not even in the "not sure" band (half the threshold, student.interpret)
@pytest.mark.parametrize("threshold,code", [(2.01, 2), (0.0, 0)])
def test_retouch_refuses_what_it_does_not_understand(tmp_path, capsys, threshold, code):
    from course_lib.images import save_image

    m = Student(dataclasses.replace(SMALL, readout_threshold=threshold))
    ckpt = save_student(m, tmp_path / "s.safetensors")
    src = tmp_path / "in.png"
    save_image(torch.rand(3, 24, 32), src)
    out = tmp_path / "out.png"
    rc = retouch_app.main([str(src), "-i", "xxxx", "-o", str(out), "--checkpoint", str(ckpt)])
    err = capsys.readouterr()
    assert rc == code
    if code:
        assert not out.exists()
        lines = [x for x in err.err.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: no edit recognised")
        assert "the closest edits I know: \"make " in lines[0] or "make the sky warmer" in lines[0]
    else:
        assert out.exists() and "understood: " in err.out


def test_text_pretraining_touches_only_the_text_pathway():
    from course_lib.train.student import TrainArgs, pretrain_text

    m = Student(dataclasses.replace(SMALL, vocab=tuple(sorted(grammar.training_vocabulary()))))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    args = TrainArgs(text_pretrain_steps=30, text_bank=96, lr=3e-3, seed=1)
    losses = pretrain_text(m, args)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("text_mlp.", "readout_head.")) for k in changed), changed
    again = Student(dataclasses.replace(SMALL, vocab=m.cfg.vocab))
    again.load_state_dict(before)
    pretrain_text(again, args)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in again.state_dict().items())  # deterministic


def test_film_reads_code_uses_only_the_edit_code():
    from course_lib.student import edit_code
    cfg = dataclasses.replace(SMALL, film_reads="code", coords=True)
    m = Student(cfg)
    torch.nn.init.normal_(m.head.weight, std=0.1)  # a non-zero head, so the grid depends on the code
    K = len(world.READOUT_LABELS)
    img, text = torch.rand(2, 3, 32, 32), torch.randn(2, cfg.text_dim)
    present, strength = torch.zeros(2, K), torch.zeros(2, K)
    present[:, 3], strength[:, 3] = 1.0, torch.tensor([1.0, -0.5])
    code = edit_code(present, strength)
    assert code.shape == (2, 2 * K) and code[1, K + 3] == -0.5
    # the forced code decides the grid, whatever the text says
    g1 = m.predict_grid(img, text, code=code)
    g2 = m.predict_grid(img, torch.randn(2, cfg.text_dim), code=code)
    assert torch.equal(g1, g2)
    # without a code, the text is read through the readout heads: different text, different grid
    assert not torch.equal(m.predict_grid(img, text), m.predict_grid(img, torch.randn(2, cfg.text_dim)))
    # gradients reach the text pathway only through the readout heads' code
    m.zero_grad()
    m.predict_grid(img, text).sum().backward()
    assert m.readout_head[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        StudentConfig(film_reads="code")  # no readout labels: there is no code to read
    assert StudentConfig.from_json(StudentConfig().to_json()).film_reads == "text"


def test_coordinate_maps_locate_cells():
    from course_lib.student import coordinate_maps
    c = coordinate_maps(torch.zeros(2, 5, 4, 6))
    assert c.shape == (2, 3, 4, 6)
    y, x, r2 = c[0]
    assert y[0, 0] < 0 < y[-1, 0] and x[0, 0] < 0 < x[0, -1]  # y down, x right
    tol = 8 * torch.finfo(c.dtype).eps
    assert torch.allclose(y.mean(), torch.tensor(0.0), atol=tol) and torch.allclose(x.mean(), torch.tensor(0.0), atol=tol)
    assert r2.min() >= 0 and r2.max() <= 1 and r2[0, 0] > r2[2, 3]  # the corner is farther than the centre


def test_forced_code_mixes_true_and_own_codes():
    from course_lib.student import edit_code
    from course_lib.train.student import forced_code
    m = Student(dataclasses.replace(SMALL, film_reads="code"))
    K = len(world.READOUT_LABELS)
    text, present, strength = torch.randn(64, SMALL.text_dim), torch.zeros(64, K), torch.ones(64, K)
    present[:, 0] = 1
    true = edit_code(present, strength)
    assert torch.equal(forced_code(m, text, present, strength, 1.0, 0, 3), true)
    mixed = forced_code(m, text, present, strength, 0.5, 0, 3)
    is_true = (mixed == true).all(1)
    assert 0 < int(is_true.sum()) < 64  # some rows forced, some the student's own reading
    assert torch.equal(mixed, forced_code(m, text, present, strength, 0.5, 0, 3))  # drawn from (seed, step)


def test_change_masks_figure_renders():
    import matplotlib
    matplotlib.use("Agg")
    from course_lib import viz
    src = torch.rand(3, 16, 16)
    tgt = src.clone()
    tgt[:, :8] *= 0.5  # the top half changed
    m = viz.change_map(tgt, src)
    assert m.shape == (16, 16) and m[8:].abs().max() == 0 and m[:8].sum() > 0
    fig = viz.change_masks(src, tgt, {"student": src}, "darken the top")
    assert len(fig.axes) == 3


def test_wording_study_runs_and_scores(tmp_path):
    from course_lib.studies import wording
    res = wording.study(wording.StudyArgs(bank=120, test=30, steps=20),
                        {"reference": {}, "no word indicators (embedding only)": {"vocab": False},
                         "clauses": {"clauses": 3}})
    assert [r["variant"] for r in res["rows"]] == ["reference", "no word indicators (embedding only)", "clauses"]
    for r in res["rows"]:
        for w in grammar.WORDINGS_KINDS:
            s = r["scores"][w]
            assert 0 <= s["family_direction"] <= 100 and 0 <= s["understood"] <= 100 and 0 <= s["refused"] <= 100
    assert wording.markdown(res).count("\n") == 4
    assert res["rows"][2]["scores"] != res["rows"][0]["scores"]  # the clause reader is another reader
    # an existing results file is never overwritten
    out = tmp_path / "w.json"
    out.write_text("{}")
    assert wording.main(["--out", str(out)]) == 1 and out.read_text() == "{}"
    assert wording.main(["--out", str(tmp_path / "x.json"), "--variants", "nonsense"]) == 2


def test_reader_only_keeps_the_image_pathway(tmp_path):
    from course_lib.student import load_student, read_metadata
    from course_lib.train import student as TS

    cfg = dataclasses.replace(SMALL, film_reads="code", coords=True, vocab=tuple(sorted(grammar.training_vocabulary())))
    m = Student(cfg)
    torch.nn.init.normal_(m.head.weight, std=0.05)
    src = save_student(m, tmp_path / "s.safetensors", metadata={"command": "x"})
    out = tmp_path / "r.safetensors"
    argv = ["--init", str(src), "--reader-only", "--film-hidden", "48", "--text-pretrain-steps", "5",
            "--text-bank", "40", "--out", str(out)]
    assert TS.main(argv) == 0
    new = load_student(out)
    assert new.cfg.film_hidden == 48 and new.text_mlp[1].out_features == 48
    for k, v in m.state_dict().items():
        if not k.startswith(("text_mlp.", "readout_head.")):
            assert torch.equal(v, new.state_dict()[k]), k
    recipe = json.loads(read_metadata(out)["recipe"])
    assert recipe["settings"]["reader_only"] and recipe["settings"]["text_pretrain_steps"] == 5
    assert TS.main(argv) != 0  # never overwrites
    # a clause-by-clause reader on the same image pathway
    clause_out = tmp_path / "c.safetensors"
    assert TS.main(argv[:-1] + [str(clause_out), "--clauses", "3"]) == 0
    clausal = load_student(clause_out)
    assert clausal.cfg.clauses == 3 and json.loads(read_metadata(clause_out)["recipe"])["settings"]["clauses"] == 3
    text = clausal.embed(["make it warmer and brighter"])
    assert text.shape == (1, 3 * clausal.cfg.slot_dim) and clausal(torch.rand(1, 3, 24, 24), text).shape == (1, 3, 24, 24)
    plain = save_student(Student(SMALL), tmp_path / "p.safetensors")
    assert TS.main(["--init", str(plain), "--reader-only", "--out", str(tmp_path / "q.safetensors")]) != 0


def test_split_clauses_cuts_at_joins_and_punctuation():
    from course_lib.student import split_clauses
    assert split_clauses("make the reds richer, also get the shadows darker", 4) == [
        "make the reds richer", "get the shadows darker"]
    assert split_clauses("the sky should be warmer and then make it brighter", 4) == [
        "the sky should be warmer", "make it brighter"]
    assert split_clauses("Could you make it warmer, please?", 4) == ["could you make it warmer", "please"]
    assert split_clauses("a, b, c, d, e", 3) == ["a", "b", "c d e"]  # the tail joins the last slot
    assert split_clauses("xxxx", 4) == ["xxxx"] and split_clauses("", 4) == [""]


def test_clause_reader_is_a_noisy_or_of_its_clauses():
    from course_lib.student import featurise, indicator_mask
    from course_lib.train.student import word_dropout
    vocab = tuple(sorted(grammar.training_vocabulary()))
    cfg = dataclasses.replace(SMALL, film_reads="code", vocab=vocab, clauses=3)
    m = Student(cfg)
    texts = ["make the sky warmer and the shadows darker", "hello"]
    X = featurise(texts, cfg)
    slots = X.reshape(2, 3, cfg.slot_dim)
    assert X.shape == (2, 3 * cfg.slot_dim) and slots[:, :, -1].tolist() == [[1, 1, 0], [1, 0, 0]]
    assert slots[0, 2].abs().sum() == 0  # an empty slot is all zeros
    # each clause reads as it would alone
    one = dataclasses.replace(cfg, clauses=1, film_reads="text")
    assert torch.allclose(slots[0, 1, :-1], featurise(["the shadows darker"], one)[0])
    logits, strength = m.understand(X)
    lg, st = m.readout_head(m.text_mlp(slots[..., :-1])).chunk(2, dim=-1)  # (2, 3, K)
    p_l = torch.sigmoid(lg) * slots[..., -1:]
    # p = 1 - prod_l (1 - p_l); s = sum_l p_l s_l / sum_l p_l (over the clauses)
    p = 1 - (1 - p_l).prod(1)
    tol = 16 * torch.finfo(torch.float32).eps
    assert torch.allclose(torch.sigmoid(logits), p, atol=tol)
    assert torch.allclose(strength, (p_l * st).sum(1) / p_l.sum(1), atol=tol * st.abs().max().item())
    # a single clause reads exactly as the whole-sentence reader with the same weights
    assert torch.allclose(torch.sigmoid(logits[1]), torch.sigmoid(lg[1, 0]), atol=tol)
    # word dropout hides the indicators of every slot and nothing else
    mask = indicator_mask(cfg)
    assert int(mask.sum()) == 3 * len(vocab)
    hidden = word_dropout(X, cfg, 1.0, 0, 0)
    assert hidden[:, mask].abs().sum() == 0 and torch.equal(hidden[:, ~mask], X[:, ~mask])
    with pytest.raises(ValueError):
        StudentConfig(clauses=2)  # the image pathway must read the combined code alone
    # the image pathway reads the combined code
    assert m(torch.rand(2, 3, 40, 40), X).shape == (2, 3, 40, 40)
