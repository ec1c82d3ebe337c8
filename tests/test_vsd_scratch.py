"""VSD from scratch (issue 19): no ground truth reaches the trainer, the recipe knobs, the checkpoint's word."""
import json
import math

import pytest
import torch

from course_lib import config
from course_lib.student import Student, StudentConfig, save_student
from course_lib.train import vsd as train_vsd
from course_lib.world import RetouchWorld


def _tiny_init(tmp_path):
    """A tiny fresh student, written once per test (every run of a test starts from the same one)."""
    path = tmp_path / "init.safetensors"
    if not path.is_file():
        torch.manual_seed(0)
        save_student(Student(StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,), coords=True)),
                     path)
    return str(path)


def _args(tmp_path, out, steps=4, **kw):
    base = dict(steps=steps, batch_size=2, size=24, init=_tiny_init(tmp_path),
                lora_rank=2, lora_alpha=4, save_every=2, out=str(tmp_path / out), monitor_items=3,
                regress_items=4, regress_batch=2, regress_steps=2)
    return train_vsd.VSDArgs(**{**base, **kw})


def test_training_items_have_no_targets():
    ds = train_vsd.training_items(train_vsd.VSDArgs(size=16))
    item = ds[0]
    assert set(item) == {"source", "instruction", "photo"}


def test_no_ground_truth_reaches_the_trainer(tiny_teacher, tmp_path, monkeypatch):
    """The training photos' targets are poisoned with NaN: were any of them used (in a loss, the
    regression set or a log), the student or its log would turn NaN. The monitor uses validation photos."""
    plain = RetouchWorld.__getitem__

    def poisoned(self, i):
        item = plain(self, i)
        if self.split == "train":
            item = {**item, "target": torch.full_like(item["target"], float("nan")), "edits": None}
        return item

    monkeypatch.setattr(RetouchWorld, "__getitem__", poisoned)
    student, log = train_vsd.train(_args(tmp_path, "s.safetensors", steps=3, regress_weight=1.0, noise_samples=2),
                                   teacher=tiny_teacher)
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert all(math.isfinite(r[k]) for r in log for k in ("vsd", "regress", "fake", "mse_gt", "mse_id")), log
    assert log[0]["regress"] > 0


def test_regression_alone_skips_the_fake_score(tiny_teacher, tmp_path):
    """``--vsd-weight 0`` (the regression-alone ablation): nothing reads the fake score, so it is not
    trained (its loss is logged as NaN, "not computed"), and the student still learns from the regression."""
    student, log = train_vsd.train(_args(tmp_path, "r.safetensors", steps=2, regress_weight=1.0, vsd_weight=0.0),
                                   teacher=tiny_teacher)
    assert all(math.isnan(r["fake"]) for r in log) and all(r["regress"] > 0 for r in log)
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_recipe_knobs_resume_exactly_and_metadata(tiny_teacher, tmp_path):
    """EMA, K noise samples, annealed t_max and the regression term together: resuming gives the
    same EMA student as one run; the checkpoint says it saw no paired targets."""
    from safetensors import safe_open

    kw = dict(ema_decay=0.5, noise_samples=2, t_anneal=4, t_anneal_to=300, regress_weight=0.5)
    straight, log = train_vsd.train(_args(tmp_path, "a.safetensors", **kw), teacher=tiny_teacher)
    train_vsd.train(_args(tmp_path, "b.safetensors", steps=2, **kw), teacher=tiny_teacher)
    resumed, _ = train_vsd.train(_args(tmp_path, "b.safetensors", **kw), resume=True, teacher=tiny_teacher)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["paired_targets"] == "none"
    prov = json.loads(meta["provenance"])
    assert prov["teacher"] == "embedded" and prov["data"] == "world"
    assert json.loads(meta["recipe"])["settings"]["noise_samples"] == 2
    assert "teacher's own" in prov["regression"]


def test_t_max_anneals_linearly():
    a = train_vsd.VSDArgs(t_range=(20, 980), t_anneal=100, t_anneal_to=500)
    assert [train_vsd.t_max_at(s, a) for s in (0, 50, 100, 200)] == [980, 740, 500, 500]
    assert train_vsd.t_max_at(50, train_vsd.VSDArgs()) == 980


def test_noise_samples_average_the_gradient(tiny_teacher):
    """K draws per item give the mean of the K single-draw gradients (the repeat/view bookkeeping)."""
    from course_lib.distill import make_fake_score, vsd_grad

    fake = make_fake_score(tiny_teacher, 2, 4)
    torch.nn.init.normal_(next(p for n, p in fake.unet.named_parameters() if "lora_B" in n), std=0.1)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    cond = tiny_teacher.encode_source(torch.rand(2, 3, 16, 16, generator=g))
    text = tiny_teacher.encode_text(["warmer", "cooler"])
    t = torch.tensor([[100, 700], [300, 900]])
    noise = torch.randn(2, 2, 3, 16, 16, generator=g)
    k = 2
    both = vsd_grad(tiny_teacher, fake, x0.repeat_interleave(k, 0), cond.repeat_interleave(k, 0),
                    text.repeat_interleave(k, 0), t.reshape(-1), noise.reshape(4, 3, 16, 16)).view(2, k, 3, 16, 16).mean(1)
    each = sum(vsd_grad(tiny_teacher, fake, x0, cond, text, t[:, j], noise[:, j]) for j in range(k)) / k
    scale = each.abs().max().item()
    torch.testing.assert_close(both, each, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


def test_library_vsd_step_is_the_trainers_step(tiny_teacher, tmp_path):
    """:func:`course_lib.distill.vsd_step` (exercise 5.4's reference) makes the same update as one
    step of the trainer on one process with its extras off."""
    from course_lib.distill import lora_parameters, make_fake_score, vsd_step
    from course_lib.student import load_student

    init = _tiny_init(tmp_path)
    args = train_vsd.VSDArgs(steps=1, batch_size=2, size=24, init=init, tv_weight=0.0,
                             guidance=(1.0, 2.0), lora_rank=2, lora_alpha=4, fake_steps=2,
                             monitor_items=2)
    trained, log = train_vsd.train(args, teacher=tiny_teacher)
    config.seed_everything(args.seed)  # as the trainer: the same random LoRA A matrices
    model = load_student(init).train()
    fake = make_fake_score(tiny_teacher, 2, 4)
    opt_s = torch.optim.Adam(model.parameters(), lr=args.lr)
    opt_f = torch.optim.Adam(lora_parameters(fake), lr=args.fake_lr)
    items = [RetouchWorld("train", "train", size=24, length=2, seed=0)[i] for i in range(2)]
    out = vsd_step(model, fake, tiny_teacher, torch.stack([it["source"] for it in items]),
                   [it["instruction"] for it in items], opt_s, opt_f, args.vsd, torch.Generator().manual_seed(0))
    for p, q in zip(trained.parameters(), model.parameters()):
        torch.testing.assert_close(p, q)
    assert out["vsd"] == pytest.approx(log[0]["vsd"], rel=1e-5) and out["fake"] == pytest.approx(log[0]["fake"], rel=1e-5)


def test_run_vsd_steps_tells_a_wrong_step_apart(tiny_teacher):
    """Exercise 5.4's check: the reference agrees with itself and a step that forgets the fake
    score's update (or uses SDS's ε instead of the fake's) does not."""
    from course_lib import distill

    ref = distill.run_vsd_steps(distill.vsd_step, tiny_teacher, seed=1)
    again = distill.run_vsd_steps(distill.vsd_step, tiny_teacher, seed=1)
    for a, b in zip(ref, again):
        torch.testing.assert_close(a, b)

    def no_fake_update(student, fake, teacher, source, instr, opt_s, opt_f, cfg, gen):
        import dataclasses
        return distill.vsd_step(student, fake, teacher, source, instr, opt_s, opt_f,
                                dataclasses.replace(cfg, fake_steps=0), gen)

    wrong = distill.run_vsd_steps(no_fake_update, tiny_teacher, seed=1)
    assert not torch.allclose(wrong[0], ref[0], atol=1e-6)


def test_vsd_study_scores_students_and_reads_their_records(tiny_teacher, tmp_path):
    from course_lib.studies import vsd_study

    student, _ = train_vsd.train(_args(tmp_path, "s.safetensors", steps=2), teacher=tiny_teacher)
    result = vsd_study.study({"from scratch": str(tmp_path / "s.safetensors"), "init": _tiny_init(tmp_path)},
                             tiny_teacher, n=3, size=24, teacher_steps=2)
    assert [r["method"] for r in result["rows"] if r["group"] == "all"] == [
        "identity", "teacher, 2 DDIM steps", "from scratch", "init"]
    rec = result["records"]["from scratch"]
    assert rec["paired_targets"] == "none" and rec["steps"] == 2 and len(rec["curve"]) == 2
    assert result["records"]["init"]["paired_targets"] == "yes"  # no word of it in the file: assume it did
    vsd_study.plot_curves(result)
    assert vsd_study.main(["--students", "x=" + str(tmp_path / "absent.safetensors")]) == 2
    # the validation photos: one row per method and group of edits, the world's scores
    world = vsd_study.study({"from scratch": str(tmp_path / "s.safetensors")}, tiny_teacher, n=4, size=24,
                            teacher_steps=2, split="val")
    assert sorted(r["group"] for r in world["rows"] if r["method"] == "identity") == ["all", "content-aware", "global"]
    assert {r["method"] for r in world["rows"]} == {"identity", "teacher, 2 DDIM steps", "from scratch"}
    alls = [r for r in world["rows"] if r["group"] == "all"]
    assert all(r["n"] == 4 and "edit_accuracy" in r and "locality" in r for r in alls)
    assert world["records"]["from scratch"]["paired_targets"] == "none" and world["split"] == "val"


def test_verdict_reads_the_target_from_the_rows():
    """Best student without paired targets against the teacher and the identity + 3 dB, per group."""
    from course_lib.studies import vsd_study

    def rows(group, ident, teach, a, b):
        return [{"method": "identity", "group": group, "psnr": ident}, {"method": "teacher, 50 DDIM steps",
                "group": group, "psnr": teach}, {"method": "a", "group": group, "psnr": a},
                {"method": "sup", "group": group, "psnr": b}]

    result = {"rows": rows("all", 23.0, 26.5, 26.6, 40.0) + rows("global", 25.0, 32.0, 30.0, 40.0),
              "records": {"a": {"paired_targets": "none"}, "sup": {"paired_targets": "yes"}}}
    v = vsd_study.verdict(result)
    assert v["best"] == "a" and v["meets"] and abs(v["gain"] - 3.6) < 1e-9 and abs(v["vs_teacher"] - 0.1) < 1e-9
    assert not vsd_study.verdict(result, "global")["meets"]  # below the teacher there
    result["rows"][2]["psnr"] = 25.9  # below the teacher (26.5) and the identity + 3 (26.0)
    assert not vsd_study.verdict(result)["meets"]
    with pytest.raises(KeyError):
        vsd_study.verdict({"rows": rows("all", 1, 2, 3, 4), "records": {}})


def test_by_group_and_changes_read_the_world_rows():
    """Lesson 05 section 6's table (one row per method, PSNR per group) and its list of changes come
    from the study's rows: a changed row changes them."""
    from course_lib.studies import vsd_study

    rows = [{"method": m, "group": g, "steps": 600, "psnr": p, "edit_accuracy": 10.0 + p, "drift": 1.0}
            for m, base in (("a", 25.0), ("b", 27.5)) for g, p in (("all", base), ("global", base + 3),
                                                                 ("content-aware", base - 1))]
    result = {"rows": rows, "records": {}}
    t = vsd_study.by_group(result)
    assert [r["method"] for r in t] == ["a", "b"]
    assert t[1] == {"method": "b", "steps": 600, "psnr": 27.5, "psnr_global": 30.5, "psnr_content": 26.5,
                    "edit_accuracy": 37.5, "drift": 1.0}
    c = vsd_study.changes(result, [("x", "a", "b")])
    assert c[0]["delta"] == pytest.approx(2.5) and c[0]["psnr_before"] == 25.0
    assert vsd_study.changes(result, [("x", "a", "b")], "global")[0]["psnr_after"] == 30.5
    with pytest.raises(KeyError):
        vsd_study.changes(result, [("x", "a", "nope")])


@pytest.mark.parametrize("name, align", [("student_vsd_scratch.safetensors", 0.0)])
def test_shipped_student_from_scratch_saw_no_pairs_and_edits_the_asked_way(tmp_path, name, align):
    """The students distilled from scratch (lesson 05; lesson 06 with the alignment loss): the metadata
    says no paired targets and where they came from, and ``retouch --checkpoint`` edits unseen (test)
    photos in the asked direction."""
    from course_lib import world as W
    from course_lib.__main__ import main
    from course_lib.images import load_image, save_image
    from course_lib.student import read_metadata

    path = config.WEIGHTS_DIR / name
    meta = read_metadata(path)
    assert meta["paired_targets"] == "none"
    prov = json.loads(meta["provenance"])
    assert prov["init"] == "identity" and "teacher's own" in prov["regression"]
    assert prov["recipe"]["align_weight"] == align
    # distilled from the embedded teacher on the training photos
    assert prov["teacher"] == "embedded" and prov["data"] == "world" and meta["data"] == "world"
    photo = W.load_photo(W.photo_names("test")[0], size=96)
    save_image(photo, tmp_path / "in.png")
    warm, bright = tmp_path / "warm.png", tmp_path / "bright.png"
    for instruction, out in (("make it warmer", warm), ("make it brighter", bright)):
        assert main(["retouch", str(tmp_path / "in.png"), "--instruction", instruction, "--checkpoint", str(path),
                     "--output", str(out)]) == 0
    w, b = load_image(warm), load_image(bright)
    assert (w[0] - w[2]).mean() > (photo[0] - photo[2]).mean() + 0.01  # red minus blue went up
    assert b.mean() > photo.mean() + 0.01


def test_seed_summary_mean_and_spread():
    """Lesson 06's two-seed table: the mean and half-range of each recipe's runs, never a single run shown as the recipe."""
    from course_lib.studies import vsd_study

    rows = [{"method": m, "psnr": p, "de00": 5.0, "accuracy": a, "direction": 80.0, "drift": 0.5}
            for m, p, a in [("a0", 28.0, 10.0), ("a1", 29.0, 14.0), ("b0", 27.5, 9.0)]]
    summ = vsd_study.seed_summary(rows, {"A": ["a0", "a1"], "B": ["b0"]})
    assert summ[0]["seeds"] == 2 and summ[0]["psnr"] == 28.5 and summ[0]["psnr_spread"] == 0.5
    assert summ[0]["accuracy"] == 12.0 and summ[0]["accuracy_spread"] == 2.0
    assert summ[1]["psnr"] == 27.5 and summ[1]["psnr_spread"] == 0.0
    md = vsd_study.seed_table(summ)
    assert "| A | 2 | 28.50 ± 0.50 |" in md and "12 ± 2" in md
    with pytest.raises(KeyError):
        vsd_study.seed_summary(rows, {"C": ["c0"]})


@pytest.fixture(scope="module")
def reader_teacher():
    """A 16x16 world-style teacher with an instruction reader (readout heads over the world's labels)."""
    from conftest import HashText
    from course_lib.grammar import training_vocabulary
    from course_lib.teacher import EmbeddedTeacher, InstructionReader, build_embedded_unet
    from course_lib.world import READOUT_LABELS

    torch.manual_seed(0)
    unet = build_embedded_unet(resolution=16, channels=(8, 16), film=True)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    reader = InstructionReader(384, 16, 2, len(READOUT_LABELS), vocab=tuple(sorted(training_vocabulary())))
    torch.nn.init.normal_(reader.readout.weight, std=2.0)  # a decisive reading: presences spread over (0, 1)
    return EmbeddedTeacher(unet, text_encoder=HashText(), reader=reader)


def test_reader_student_learns_the_teachers_reading(reader_teacher, tiny_teacher):
    """``--student reader``: the heads fit the teacher's reading (texts only), and the code the
    image pathway trains on is the teacher's thresholded reading."""
    student = train_vsd.reader_student(reader_teacher, grid_size=8)
    assert student.cfg.film_reads == "code" and student.cfg.vocab == reader_teacher.reader.vocab
    x = student.embed(["make the sky warmer", "brighten the shadows"])
    p, s = train_vsd.teacher_reading(reader_teacher, x)
    code = train_vsd.teacher_code(reader_teacher, x)
    assert code.shape == (2, 2 * p.shape[1])
    torch.testing.assert_close(code[:, :p.shape[1]], (p >= 0.5).float())
    torch.testing.assert_close(code[:, p.shape[1]:], (p >= 0.5).float() * s)
    other = student.embed(["warm up the sky", "make it darker", "more contrast please", "cool the greens"])
    p_t = train_vsd.teacher_reading(reader_teacher, other)[0]

    def gap():  # mean |p_student − p_teacher| on instructions the distillation does not see
        with torch.no_grad():
            return float((torch.sigmoid(student.understand(other)[0]) - p_t).abs().mean())

    before = gap()
    info = train_vsd.distil_reading(student, reader_teacher, n=256, steps=150, seed=0, batch=64, lr=3e-3)
    assert gap() < 0.5 * before and sum(info["losses"][-10:]) < sum(info["losses"][:10])
    assert 0 <= info["agreement"] <= 1
    with pytest.raises(ValueError, match="--teacher world"):
        train_vsd.reader_student(tiny_teacher)


def test_reader_student_trains_its_image_pathway_on_the_teachers_code(reader_teacher, tmp_path, monkeypatch):
    """In VSD the reading stays as distilled (frozen), the image pathway learns, every forward
    reads the teacher's code, and the checkpoint says how the student reads."""
    from safetensors import safe_open

    seen = []
    plain = Student.forward

    def spy(self, image, text, *a, code=None, **kw):
        seen.append(code)
        return plain(self, image, text, *a, code=code, **kw)

    monkeypatch.setattr(Student, "forward", spy)
    args = _args(tmp_path, "r.safetensors", steps=2, init="identity", student="reader", reader_steps=5,
                 reader_bank=64, grid_size=8, regress_weight=1.0)
    monkeypatch.setattr(train_vsd, "_student", lambda a, t: _distilled(t))
    student, log = train_vsd.train(args, teacher=reader_teacher)
    training = [c for c in seen[:6] if c is not None]
    assert len(training) >= 4 and all(c.shape[1] == 2 * reader_teacher.reader.labels for c in training)
    before = _distilled(reader_teacher)
    for name, q in before.state_dict().items():
        if name.startswith(("text_mlp", "readout_head")):
            torch.testing.assert_close(student.state_dict()[name], q, msg=name)
    assert not torch.equal(student.state_dict()["head.weight"], before.state_dict()["head.weight"])
    with safe_open(str(tmp_path / "r.safetensors"), "pt") as f:
        prov = json.loads(f.metadata()["provenance"])
    assert prov["student"] == "reader" and "teacher's reader" in prov["reading"]


def _distilled(teacher):
    torch.manual_seed(1)
    s = train_vsd.reader_student(teacher, grid_size=8)
    train_vsd.distil_reading(s, teacher, n=64, steps=5, seed=0, batch=16)
    return s
