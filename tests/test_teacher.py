"""Tests of the diffusion teacher (course_lib.teacher (both tiers), course_lib.train.teacher, eval.teacher)."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from conftest import HashText
from course_lib import config
from course_lib.checks import float_tol
from course_lib.teacher import (EMBEDDED_WEIGHTS, KIND, EmbeddedTeacher, TeacherError, build_embedded_unet,
                                cfg_combine, checkpoint_info, ddpm_config, load_embedded_teacher, load_teacher)

from course_lib.util.checkpoint import read_metadata

# ----------------------------------------------------------------------------- guidance


def test_cfg_combine_formula_and_limits():
    g = torch.Generator().manual_seed(0)
    u, i, f = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    out = cfg_combine(u, i, f, 1.5, 7.5)
    torch.testing.assert_close(out, u + 1.5 * (i - u) + 7.5 * (f - i))
    torch.testing.assert_close(cfg_combine(u, i, f, 1.0, 1.0), f)  # s = (1, 1): the conditional prediction
    torch.testing.assert_close(cfg_combine(u, i, f, 0.0, 0.0), u)
    torch.testing.assert_close(cfg_combine(u, i, f, 1.0, 0.0), i)


def test_eps_batches_three_conditionings(tiny_teacher):
    T = tiny_teacher
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=g)
    src = T.encode_source(torch.rand(2, 3, 16, 16, generator=g))
    txt = T.encode_text(["make it warmer", "fade the photo"])
    assert txt.shape == (2, 1, 384)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        full = T._unet(torch.cat([x, src], 1), t, txt)
        img = T._unet(torch.cat([x, src], 1), t, T.null_text(2))
        unc = T._unet(torch.cat([x, torch.zeros_like(src)], 1), t, T.null_text(2))
        guided = T.eps(x, t, src, txt, guidance=(1.5, 3.0))
        plain = T.eps(x, t, src, txt, guidance=(1.0, 1.0))
    # one batch of 6 vs three batches of 2: the CPU's conv kernels may sum in another order (a 2-core
    # AMD EPYC: 4.2e-5 off, values up to ~160). depth: the UNet's conv/linear layers, each rounding its sums
    depth = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in T.unet.modules())
    torch.testing.assert_close(guided, cfg_combine(unc, img, full, 1.5, 3.0), **float_tol(full, depth))
    torch.testing.assert_close(plain, full, atol=0, rtol=0)  # guidance (1, 1): the very same UNet call


# ----------------------------------------------------------------------------- schedules


def test_alpha_bar_and_add_noise(tiny_teacher):
    T = tiny_teacher
    ab = T.alpha_bar(torch.arange(1000))
    assert ab.shape == (1000,) and torch.all(ab[1:] < ab[:-1]) and ab[0] > 0.99 and ab[-1] < 1e-3
    g = torch.Generator().manual_seed(2)
    x0, e = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    a = T.alpha_bar(t).view(-1, 1, 1, 1)
    # x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε
    torch.testing.assert_close(T.train_scheduler.add_noise(x0, e, t), a.sqrt() * x0 + (1 - a).sqrt() * e)


@pytest.mark.parametrize("spacing_steps", [4, 50])
def test_ddim_step_with_true_eps_recovers_x0(tiny_teacher, spacing_steps):
    T = tiny_teacher
    sched = T.sample_scheduler()
    sched.set_timesteps(spacing_steps)
    assert int(sched.timesteps[0]) == 999  # "trailing" spacing starts at pure noise
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 1.8 - 0.9  # inside the clip range [-1, 1]
    e = torch.randn(2, 3, 8, 8, generator=g)
    t, t_prev = int(sched.timesteps[1]), int(sched.timesteps[2])
    x_t = T.train_scheduler.add_noise(x0, e, torch.tensor([t]))
    out = sched.step(e, t, x_t)
    torch.testing.assert_close(out.pred_original_sample, x0, atol=1e-4, rtol=1e-4)
    ab = T.alpha_bar(t_prev)
    torch.testing.assert_close(out.prev_sample, ab.sqrt() * x0 + (1 - ab).sqrt() * e, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- edit()


def test_edit_shapes_range_and_seed(tiny_teacher):
    T = tiny_teacher
    img = torch.rand(3, 20, 28)
    a = T.edit(img, "make it warmer", steps=3, seed=7)
    b = T.edit(img, "make it warmer", steps=3, seed=7)
    c = T.edit(img, "make it warmer", steps=3, seed=8)
    assert a.shape == img.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    batch = T.edit(torch.rand(2, 3, 16, 16), ["a", "b"], steps=2, guidance=(1.0, 1.0))
    assert batch.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError):
        T.edit(torch.rand(2, 3, 16, 16), ["only one", "two", "three"], steps=2)


def test_fresh_teacher_is_identity_and_eps_matches_x0():
    from course_lib.teacher import x0_to_eps

    T = EmbeddedTeacher(build_embedded_unet(resolution=16, channels=(8, 16)), text_encoder=HashText())
    img = torch.rand(2, 3, 16, 16)
    # x̂0 = source whatever the text: any text scale leaves the photo as it is
    torch.testing.assert_close(T.edit(img, "make it warmer", steps=4, guidance=(1.0, 3.0)), img, atol=1e-5, rtol=0)
    x0, e, t = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([3, 700])
    x_t = T.train_scheduler.add_noise(x0, e, t)
    torch.testing.assert_close(x0_to_eps(x0, x_t, T.alpha_bar(t)), e, atol=1e-3, rtol=1e-3)


def test_space_round_trip(tiny_teacher):
    img = torch.rand(2, 3, 16, 16)
    x = tiny_teacher.to_space(img)
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(tiny_teacher.from_space(x), img)


# ----------------------------------------------------------------------------- the shipped checkpoint


def test_shipped_checkpoint_loads_with_safetensors_only():
    assert EMBEDDED_WEIGHTS.is_file(), "data/weights/teacher_embedded.safetensors is missing"
    assert EMBEDDED_WEIGHTS.stat().st_size < 20e6
    info = checkpoint_info()
    assert info["kind"] == KIND and info["config"]["text_encoder"] == "minilm"
    assert info["train"]["steps"] > 0 and math.isfinite(info["train"]["final_loss"])
    with config.no_network():
        T = load_teacher("embedded", device="cpu", text_encoder=HashText())
    assert T.resolution == 32 and T.channels == 3
    n = sum(p.numel() for p in T.unet.parameters())
    assert 1e6 < n < 5e6
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in T.unet.parameters())
    out = T.edit(torch.rand(3, 32, 32), "make it warmer", steps=2, seed=0)
    assert out.shape == (3, 32, 32)


def test_missing_or_wrong_checkpoint(tmp_path):
    with pytest.raises(TeacherError, match="no teacher checkpoint"):
        load_embedded_teacher(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "something"})
    with pytest.raises(TeacherError, match="not a course_lib checkpoint"):
        load_embedded_teacher(tmp_path / "other.safetensors")
    from course_lib.util.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "student.safetensors", {"w": torch.zeros(1)}, "student", {})
    with pytest.raises(TeacherError, match="expected 'teacher'"):
        load_embedded_teacher(tmp_path / "student.safetensors")


# ----------------------------------------------------------------------------- hub tier (tiny, offline)


def test_hub_interface_on_tiny_pipeline(tiny_hub):
    from course_lib.teacher import hub_weights_present

    T, folder = tiny_hub
    assert hub_weights_present(folder)
    assert T.channels == 4 and T.resolution == 16 and T.vae_scale == 2
    img = torch.rand(2, 3, 16, 16)
    z = T.to_space(img)
    assert z.shape == (2, 4, 8, 8)
    assert T.from_space(z).shape == (2, 3, 16, 16)
    src = T.encode_source(img)
    torch.testing.assert_close(src * T.scaling_factor, z)  # the condition is the unscaled latent
    txt = T.encode_text(["make it warmer", ""])
    assert txt.shape == (2, 16, 16)
    torch.testing.assert_close(T.null_text(2), T.encode_text(["", ""]))
    e = T.eps(torch.randn(2, 4, 8, 8), 500, src, txt, guidance=(1.5, 7.5))
    assert e.shape == (2, 4, 8, 8) and torch.isfinite(e).all()
    a = T.edit(torch.rand(3, 24, 20), "make it warmer", steps=3, seed=1)
    assert a.shape == (3, 24, 20) and 0 <= a.min() and a.max() <= 1
    img1 = torch.rand(3, 24, 20)
    assert torch.equal(T.edit(img1, "x", steps=2, seed=3), T.edit(img1, "x", steps=2, seed=3))
    assert T.working_size(24, 20) == (20, 16)


def test_hub_missing_weights_is_one_line_error(tmp_path, monkeypatch):
    from course_lib.teacher import hub_weights_present, load_hub_teacher

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("COURSE_ONLINE", raising=False)
    assert not hub_weights_present(str(tmp_path / "missing"))
    with config.no_network(), pytest.raises(TeacherError) as err:
        load_hub_teacher("no-such-user/no-such-model", device="cpu")
    assert "\n" not in str(err.value) and "COURSE_ONLINE=1" in str(err.value)


# ----------------------------------------------------------------------------- training


def test_optimizer_state_round_trip():
    from course_lib.train.common import load_optimizer_tensors, optimizer_tensors

    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_tensors(opt, prefix="opt.")
    opt2 = torch.optim.AdamW(m.parameters(), lr=1e-3)
    load_optimizer_tensors(opt2, {**tensors, "model.w": torch.zeros(1)}, meta, prefix="opt.")
    for k, v in opt.state_dict()["state"][0].items():
        torch.testing.assert_close(torch.as_tensor(opt2.state_dict()["state"][0][k]), torch.as_tensor(v))


def test_training_is_seeded_and_resumable(tmp_path):
    from course_lib.train.teacher import TrainConfig, train

    def cfg(steps, out, resume=False):
        return TrainConfig(steps=steps, batch_size=2, resolution=16, channels=(8, 16), warmup=2, ema_decay=0.9,
                           out=str(out), save_every=2, log_every=1, resume=resume)

    straight = train(cfg(4, tmp_path / "a.safetensors"), text_encoder=HashText())
    train(cfg(2, tmp_path / "b.safetensors"), text_encoder=HashText())
    resumed = train(cfg(4, tmp_path / "b.safetensors", resume=True), text_encoder=HashText())
    for (k, v), v2 in zip(straight["unet"].state_dict().items(), resumed["unet"].state_dict().values()):
        torch.testing.assert_close(v, v2, msg=k)
    assert [s for s, _ in resumed["losses"]] == [1, 2, 3, 4]
    T = load_embedded_teacher(tmp_path / "a.safetensors", device="cpu", text_encoder=HashText())
    assert T.resolution == 16
    assert json.loads(json.dumps(checkpoint_info(tmp_path / "a.safetensors")["train"]))["steps"] == 4


def test_train_teacher_command_help(capsys):
    from course_lib.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["train-teacher", "--help"])
    assert e.value.code == 0 and "--resume" in capsys.readouterr().out


# ----------------------------------------------------------------------------- measuring


def test_quality_vs_steps_and_widget_callback(tiny_teacher):
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.eval.heldout import heldout_batch
    from course_lib.eval.teacher import (edit_preview, format_table, plot_quality_vs_steps, teacher_quality_vs_steps,
                                         x0_trajectory)

    batch = heldout_batch(2, 16, families=("temperature", "exposure"))
    rows = teacher_quality_vs_steps(tiny_teacher, steps=(1, 2), batch=batch,
                                    others={"oracle": lambda src, texts, tgt: tgt})
    assert [r["method"] for r in rows] == ["identity", "oracle", "teacher", "teacher"]
    assert math.isinf(rows[0]["psnr"]) or rows[0]["psnr"] > 5
    assert rows[0]["direction"] == 0 and rows[1]["direction"] == 100 and rows[1]["accuracy"] == 100
    assert "| identity |" in format_table(rows)
    plot_quality_vs_steps(rows)
    traj = x0_trajectory(tiny_teacher, batch["source"][0], batch["instruction"][0], steps=3)
    assert len(traj) == 3 and traj[0][1].shape == (3, 16, 16)
    fig, out = edit_preview(tiny_teacher, batch["source"][0], "make it warmer", steps=2, s_img=1.2, s_txt=2.0,
                            target=batch["target"][0])
    assert out.shape == (3, 16, 16) and fig is not None


def test_train_teacher_init_from_checkpoint(tmp_path):
    """``--init`` starts from an exported checkpoint's weights and records where they came from."""
    from course_lib.train.teacher import TrainConfig, train

    def cfg(out, init=None, seed=0):
        return TrainConfig(steps=2, batch_size=2, resolution=16, channels=(8, 16), warmup=1, out=str(tmp_path / out),
                           init=init, seed=seed, save_every=10, log_every=1)

    train(cfg("a.safetensors"), text_encoder=HashText())
    first = load_embedded_teacher(tmp_path / "a.safetensors", device="cpu", text_encoder=HashText())
    # zero steps of fine-tuning: the weights are the initial checkpoint's (up to fp16 storage)
    out = train(dataclasses.replace(cfg("b.safetensors", init=str(tmp_path / "a.safetensors")), steps=0),
                text_encoder=HashText())
    for (k, v), (_, w) in zip(first.unet.state_dict().items(), out["unet"].state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)
    train(cfg("c.safetensors", init=str(tmp_path / "a.safetensors"), seed=1), text_encoder=HashText())
    info = checkpoint_info(tmp_path / "c.safetensors")["train"]
    assert info["init"]["file"] == "a.safetensors" and info["init"]["train"]["steps"] == 2
    # the recipe: this run's settings, and inside it the recipe of the checkpoint it started from
    recipe = json.loads(read_metadata(tmp_path / "c.safetensors")["recipe"])
    assert recipe["command"] == "train-teacher" and recipe["settings"]["seed"] == 1
    assert recipe["init"]["settings"]["seed"] == 0 and recipe["init"]["init"] is None



def test_train_teacher_on_the_training_photos(tmp_path):
    """The teacher trains on the collection's training photos (content-aware edits included) and records it."""
    from course_lib.train.teacher import TrainConfig, train, training_data

    cfg = TrainConfig(steps=2, batch_size=2, resolution=16, channels=(8, 16), warmup=1, out=str(tmp_path / "w.safetensors"),
                      save_every=10, log_every=1)
    ds = training_data(cfg)
    assert type(ds).__name__ == "RetouchWorld" and ds.split == "train" and ds[0]["source"].shape == (3, 16, 16)
    out = train(cfg, text_encoder=HashText())
    assert len(out["losses"]) == 2 and all(math.isfinite(v) for _, v in out["losses"])
    info = checkpoint_info(tmp_path / "w.safetensors")
    assert info["train"]["data"] == "world" and info["data"] == "world" and info["paired_targets"] == "exact"


def test_tiers_and_world_quality_table(tiny_teacher, tmp_path):
    """The tiers are embedded and hub (a missing file is one clear error, an unknown tier too);
    ``teacher-eval`` scores the test photos by wording and kind of edit."""
    from course_lib.eval.teacher import world_quality_vs_steps, world_table
    from course_lib.teacher import TIERS, TeacherError, load_teacher

    assert TIERS == ("embedded", "hub")
    with pytest.raises(TeacherError, match="no teacher checkpoint"):
        load_teacher("embedded", tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="tier must be one of"):
        load_teacher("world")
    rows = world_quality_vs_steps(tiny_teacher, steps=(1,), n=3, wordings=("train",),
                                  others={"oracle": lambda s, i, t: t})
    by = {(r["method"], r["group"]): r for r in rows}
    assert by[("oracle", "all")]["edit_accuracy"] == 100 and by[("oracle", "all")]["n"] == 3
    assert by[("identity", "all")]["edit_accuracy"] == 0
    assert {r["method"] for r in rows} == {"identity", "oracle", "teacher"}
    table = world_table(rows)
    assert "| teacher | 1 |" in table and "train, content-aware" in table


def test_teacher_eval_writes_its_results(tmp_path, monkeypatch, tiny_teacher):
    """``teacher-eval --json`` writes the rows and the command (lesson 04 renders them); never over a file."""
    from course_lib.eval import teacher as teacher_eval

    monkeypatch.setattr(teacher_eval, "load_teacher", lambda *a, **k: tiny_teacher)
    args = ["--n", "2", "--steps", "1", "--out", str(tmp_path / "q.png"), "--json", str(tmp_path / "q.json")]
    assert teacher_eval.main(args) == 0
    saved = json.loads((tmp_path / "q.json").read_text())
    assert {(r["method"], r["wording"]) for r in saved["rows"]} == {
        (m, w) for m in ("identity", "teacher") for w in ("train", "heldout_phrasing")}
    assert saved["command"].startswith("python -m course_lib teacher-eval") and "--n 2" in saved["command"]
    assert teacher_eval.main(args) == 2  # exists: refused before running


def test_instruction_reader_teacher_trains_resumes_exports_and_edits(tmp_path):
    """``--reader-tokens T --film``: the reader's tokens condition the UNet, its readout heads
    learn from the auxiliary loss (pre-training lowers it), resuming reproduces a straight run,
    the export holds the reader and loads into a teacher whose text is T tokens (∅ too), and a
    checkpoint without a reader loads as before."""
    from course_lib.grammar import training_vocabulary
    from course_lib.teacher import InstructionReader, reader_features
    from course_lib.train.teacher import TrainConfig, hide_words, pretrain_reader, reader_bank, train
    from course_lib.world import READOUT_LABELS

    K, V = len(READOUT_LABELS), tuple(sorted(training_vocabulary()))
    r = InstructionReader(384, 32, 3, K)
    e = torch.randn(5, 384)
    tok, (logits, strength) = r(e, return_readout=True)
    assert tok.shape == (5, 3, 384) and logits.shape == strength.shape == (5, K)
    # the LayerNorm'd tokens: zero mean per token (its init affine is the identity)
    assert tok.mean(-1).abs().max() < 1e-4 * tok.abs().max()
    # the features: the sentence embedding, then the training words present
    x = reader_features(["make it warmer", "zzz"], HashText().encode, V)
    assert x.shape == (2, 384 + len(V)) and x[0, 384 + V.index("warmer")] == 1 and not x[1, 384:].any()
    hidden = hide_words(torch.ones(400, 384 + len(V)), 384, 0.3, seed=0, step=0)
    assert (hidden[:, :384] == 1).all() and 0.15 < float((hidden[:, 384:].sum(1) == 0).float().mean()) < 0.45
    bank = reader_bank(HashText(), 256, seed=0, vocab=V)
    assert bank["X"].shape == (256, 384 + len(V)) and bank["P"].shape == (256, K) and bank["P"].sum(1).min() == 0
    losses = pretrain_reader(InstructionReader(384, 32, 3, K, vocab=V), bank, steps=150, seed=0, lr=3e-3)
    assert sum(losses[-20:]) / 20 < 0.7 * sum(losses[:20]) / 20

    def cfg(steps, out, resume=False):
        return TrainConfig(steps=steps, batch_size=2, resolution=16, channels=(8, 16), warmup=1, ema_decay=0.9,
                           reader_tokens=3, reader_hidden=32, reader_pretrain=5, reader_bank=64, film=True,
                           out=str(tmp_path / out), save_every=2, log_every=1, resume=resume)

    straight = train(cfg(4, "a.safetensors"), text_encoder=HashText())
    train(cfg(2, "b.safetensors"), text_encoder=HashText())
    resumed = train(cfg(4, "b.safetensors", resume=True), text_encoder=HashText())
    for (k, v), v2 in zip(straight["reader"].state_dict().items(), resumed["reader"].state_dict().values()):
        torch.testing.assert_close(v, v2, msg=k)
    assert any(k.startswith("reader.") for k in straight["ema"])
    # --export-only from the resumable state: the reader and FiLM come back from the run's config
    from course_lib.train.teacher import export_from_state

    (tmp_path / "b.safetensors").unlink()  # written at the end of the run; --export-only writes it again
    export_from_state(dataclasses.replace(TrainConfig(), out=str(tmp_path / "b.safetensors")))
    Tb = load_embedded_teacher(tmp_path / "b.safetensors", device="cpu", text_encoder=HashText())
    assert Tb.reader is not None and Tb.reader.tokens == 3 and Tb.unet.config.resnet_time_scale_shift == "scale_shift"
    for k, v in Tb.reader.state_dict().items():  # the state's EMA weights, stored in fp16
        torch.testing.assert_close(v, resumed["ema"]["reader." + k].half().float(), msg=k)
    T = load_embedded_teacher(tmp_path / "a.safetensors", device="cpu", text_encoder=HashText())
    info = checkpoint_info(tmp_path / "a.safetensors")
    assert info["config"]["reader"]["tokens"] == 3 and info["train"]["reader_tokens"] == 3
    emb = T.encode_text(["make the sky warmer", "brighten it"])
    assert emb.shape == (2, 3, 384) and T.null_text(2).shape == (2, 3, 384) and not T.null_text(1).any()
    assert T.reader.vocab == V and info["train"]["reader_vocab"] and info["train"]["film"]
    assert T.unet.config.resnet_time_scale_shift == "scale_shift"  # FiLM: the embedding scales and shifts
    torch.testing.assert_close(emb, T.reader(reader_features(["make the sky warmer", "brighten it"], HashText().encode, V)))
    out = T.edit(torch.rand(1, 3, 16, 16), "make the sky warmer", steps=2, guidance=(1.5, 2.0))
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    # the shipped teacher reads with 4 tokens
    assert load_embedded_teacher(device="cpu", text_encoder=HashText()).encode_text(["x"]).shape == (1, 4, 384)
    # teacher-eval --probe --json: the probe and the checkpoint's training record are in the file
    from course_lib.eval import teacher as teacher_eval

    real_load = teacher_eval.load_teacher
    try:
        teacher_eval.load_teacher = lambda *a, **k: T
        args = ["--teacher-path", str(tmp_path / "a.safetensors"), "--n", "2",
                "--steps", "1", "--probe", "--split", "val", "--out", str(tmp_path / "w.png"),
                "--json", str(tmp_path / "w.json")]
        assert teacher_eval.main(args) == 0
    finally:
        teacher_eval.load_teacher = real_load
    saved = json.loads((tmp_path / "w.json").read_text())
    assert saved["split"] == "val" and set(saved["probe"]["t"]) == {"999", "800", "500", "200", "50"}
    rec = saved["teacher_train"]
    assert rec["file"] == "a.safetensors" and rec["reader"] and rec["film"] and rec["steps"] == 4 and rec["parameters"] > 0


def test_x0_probe_reads_an_oracle_and_a_no_edit_teacher():
    """The t = 999 probe: a teacher that guesses exactly the edit gives cosine 1 and the true RMS;
    a fresh (no-edit) teacher gives a zero change and the identity's PSNR at every t."""
    from course_lib.eval.teacher import x0_probe
    from course_lib.world import RetouchWorld

    fresh_teacher = EmbeddedTeacher(build_embedded_unet(16, (8, 16)), text_encoder=HashText(), device="cpu")
    fresh = x0_probe(fresh_teacher, n=6, ts=(999, 50), draws=2)
    assert set(fresh["t"]) == {999, 50} and fresh["rms_pred"] < 1e-6 < fresh["rms_true"]
    for v in fresh["t"].values():
        assert abs(v["text"] - fresh["identity"]) < 1e-3 * fresh["identity"]

    ds = RetouchWorld("train", "train", size=16, length=6, seed=123)
    x0 = torch.stack([ds[i]["target"] for i in range(6)]) * 2 - 1

    class Oracle(EmbeddedTeacher):  # x̂0 = the true target, whatever the noise
        def predict_x0(self, x_in, t, text):
            return x0

    best = x0_probe(Oracle(build_embedded_unet(16, (8, 16)), text_encoder=HashText(), device="cpu"), n=6, ts=(999,),
                    draws=2)
    assert best["cosine"] > 0.999 and abs(best["rms_pred"] - best["rms_true"]) < 1e-4
    assert best["t"][999]["text"] == 100.0  # every item exact: the cap


def test_world_eval_on_validation_photos(tiny_teacher):
    """``--split val`` scores the validation photos (where a checkpoint or its guidance is chosen), not the test ones."""
    from course_lib.eval import world as W
    from course_lib.eval.teacher import world_quality_vs_steps

    val, test = W.world_batch(4, 16, split="val"), W.world_batch(4, 16)
    assert not torch.equal(val["source"], test["source"])
    rows = world_quality_vs_steps(tiny_teacher, steps=(1,), n=2, wordings=("train",), split="val")
    assert {r["method"] for r in rows} == {"identity", "teacher"}


def _study_file(identity, train50, heldout50, t999, steps=1000):
    rows = []
    for w, v in (("train", train50), ("heldout_phrasing", heldout50)):
        rows += [{"wording": w, "method": "identity", "steps": 0, "group": "all", "psnr": identity},
                 {"wording": w, "method": "teacher", "steps": 4, "group": "all", "psnr": v - 1},
                 {"wording": w, "method": "teacher", "steps": 50, "group": "all", "psnr": v},
                 {"wording": w, "method": "teacher", "steps": 50, "group": "global", "psnr": 0.0}]
    probe = {"identity": 27.0, "t": {"999": {"text": t999, "no_text": t999 - 2}, "50": {"text": 33.0, "no_text": 32.0}},
             "cosine": 0.4, "rms_true": 0.1, "rms_pred": 0.05, "n": 64}
    return {"rows": rows, "probe": probe, "teacher_train": {"steps": steps, "parameters": 4_700_000,
                                                             "init": {"file": "a.safetensors"}}}


def test_world_teacher_study_summary_table_and_plot():
    """The study's verdict, table and figure are computed from the results files: a changed file changes them."""
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.studies.teacher_study import plot_x0_probe, study_summary, study_table

    weak, strong = study_summary(_study_file(25.0, 24.0, 23.0, 24.5)), study_summary(_study_file(25.0, 28.5, 25.5, 29.0))
    assert weak["meets"] == {"train": False, "heldout": False} and strong["meets"] == {"train": True, "heldout": True}
    assert strong["train"] == {4: 27.5, 50: 28.5} and strong["groups"] == {}  # no per-group identity rows
    grouped = _study_file(25.0, 28.5, 25.5, 29.0)
    grouped["rows"] += [{"wording": "train", "method": "identity", "steps": 0, "group": g, "psnr": 24.0 + k}
                        for k, g in enumerate(("global", "content-aware"))]
    assert study_summary(grouped)["groups"] == {"global": (24.0, 0.0)}  # the file has no content-aware teacher row
    table = study_table({"film_scratch": strong, "pooled_token": weak})
    assert "| from scratch: instruction reader + FiLM | 1000 after a.safetensors | 4.70 M | 29.00 | 27.00 | 0.40 | 0.50 |" in table
    assert "| 27.50 | 28.50 | 24.50 | 25.50 |" in table and "identity (no edit): 25.00 dB" in table
    assert plot_x0_probe({"film_scratch": strong, "pooled_token": weak}) is not None
    cooled = _study_file(25.0, 28.5, 25.5, 29.0, steps=3000)
    cooled["teacher_train"].update(cooldown=500, init=None)
    assert "| the same, trained on, the rate cooled down at the end | 3000 (the last 500 cooling) | 4.70 M |" in \
        study_table({"film_cooled": study_summary(cooled)})


def test_size_study_summary_and_table_come_from_the_files():
    """The size study's gains are the teacher's PSNR minus the identity's at the fewest steps, its cost the
    record's seconds over its steps: a changed file changes the row."""
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.studies.teacher_study import plot_size_study, size_summary, size_table

    saved = _study_file(25.0, 28.5, 25.5, 29.0, steps=400)
    for r in saved["rows"]:
        r["ms_per_image"] = 70.0
    saved["resolution"] = 48
    saved["teacher_train"]["seconds_this_run"] = 600.0
    s = size_summary(saved)
    assert s["sample_steps"] == 4 and s["resolution"] == 48 and s["s_per_step"] == 1.5
    assert abs(s["train"] - 2.5) < 1e-9 and abs(s["heldout"] + 0.5) < 1e-9 and s["probe"] == 2.0
    table = size_table({"48px": s})
    assert "| 48 px, widths 32-64-128 | 4.70 M | 1.50 | 400 | 10 | 70 | +2.00 | 0.40 | +2.50 | -0.50 |" in table
    saved["teacher_train"]["seconds_this_run"] = 1200.0
    assert size_summary(saved)["s_per_step"] == 3.0
    assert plot_size_study({"48px": s}) is not None


def test_lr_cooldown_is_constant_then_a_cosine_to_the_floor():
    """``--cooldown K``: the rate of a constant-rate run until the last K steps, then a cosine to floor·lr, so
    a constant run resumed with a larger ``--steps`` and a cool-down is the schedule of one run."""
    from course_lib.train.common import lr_at

    lr, steps, k, floor = 5e-4, 20, 8, 0.1
    sched = [lr_at(s, lr, 2, steps, floor=floor, cooldown=k) for s in range(steps)]
    plain = [lr_at(s, lr, 2, 1000) for s in range(steps)]
    assert sched[:steps - k] == plain[:steps - k] and sched[1] == lr
    assert sched[steps - k] == lr and all(a > b for a, b in zip(sched[steps - k:], sched[steps - k + 1:]))
    assert math.isclose(sched[-1], lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (k - 1) / k))),
                        rel_tol=1e-12)
    assert lr_at(steps, lr, 2, steps, floor=floor, cooldown=k) == pytest.approx(floor * lr, rel=1e-12)
    from course_lib.train.teacher import parse_args
    cfg = parse_args(["--cooldown", "8", "--lr-floor", "0.2", "--channels", "8,16", "--default-guidance", "1,2"])
    assert (cfg.cooldown, cfg.lr_floor, cfg.channels, cfg.default_guidance) == (8, 0.2, (8, 16), (1.0, 2.0))


def test_teacher_eval_times_methods_after_one_untimed_call():
    """``ms_per_image`` leaves out one-time costs: ``warm_up`` calls the method once on one item, so a
    first call that is slow (a text encoder loading) does not land in the timed calls."""
    import time as _time

    from course_lib.eval import score as S
    from course_lib.eval.teacher import warm_up

    calls = []

    def fn(s, i, t):
        if not calls:
            _time.sleep(0.3)  # the one-time cost
        calls.append(len(s))
        return s

    batch = {"source": torch.rand(3, 3, 8, 8), "instruction": ["a", "b", "c"], "target": torch.rand(3, 3, 8, 8)}
    warm_up(fn, batch)
    assert calls == [1]
    r = S.run(fn, batch, keys=())
    assert r["ms_per_image"] < 50  # without the warm-up: at least 100 ms per image


def test_diffusion_loss_is_the_forward_process_and_the_weighted_x0_loss():
    from diffusers import DDPMScheduler

    from course_lib.teacher import ddpm_config, diffusion_loss

    sched = DDPMScheduler(**ddpm_config())
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    t, noise = torch.tensor([0, 10, 500, 999]), torch.randn(4, 3, 8, 8, generator=g)
    seen = {}

    def half(x_t, tt):
        seen["x_t"], seen["t"] = x_t, tt
        return 0.5 * x0

    loss = diffusion_loss(half, x0, t, noise, sched.alphas_cumprod)
    torch.testing.assert_close(seen["x_t"], sched.add_noise(x0, noise, t))  # diffusers' forward process
    assert torch.equal(seen["t"], t)
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    w = torch.clamp(1 + ab / (1 - ab), max=5.0)  # min(1 + SNR_t, 5)
    torch.testing.assert_close(loss, (w * (0.5 * x0 - x0) ** 2).mean())
    assert float(diffusion_loss(lambda x_t, tt: x0, x0, t, noise, sched.alphas_cumprod)) == 0.0
