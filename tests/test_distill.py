"""Tests of course_lib.distill: the VSD gradient, the LoRA fake score, and their wiring."""
from __future__ import annotations

import pytest
import torch

from course_lib.distill import (VSDConfig, fake_score_loss, load_lora_state_dict, lora_parameters, lora_state_dict,
                                make_fake_score, sample_timesteps, to_teacher_space, vsd_grad, vsd_loss)


def _inputs(T, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = T.resolution
    src = torch.rand(b, 3, r, r, generator=g)
    x0 = T.to_space(torch.rand(b, 3, r, r, generator=g))
    return src, x0, T.encode_source(src), T.encode_text(["make it warmer", "lift the shadows"][:b])


def test_vsd_loss_gradient_is_grad():
    x = torch.randn(3, 3, 5, 5, requires_grad=True)
    grad = torch.randn(3, 3, 5, 5)
    vsd_loss(x, grad).backward()
    # ∂/∂x ½‖x − sg(x − grad)‖² / B = grad / B
    torch.testing.assert_close(x.grad, grad / 3)


def test_fake_score_starts_as_teacher_and_only_lora_trains(tiny_teacher):
    T = tiny_teacher
    before = {k: v.clone() for k, v in T.unet.state_dict().items()}
    fake = make_fake_score(T, rank=4, alpha=8)
    params = lora_parameters(fake)
    assert params and all(p.requires_grad for p in params)
    assert all(not p.requires_grad for n, p in fake.unet.named_parameters() if "lora_" not in n)
    assert all(not p.requires_grad for p in T.unet.parameters())
    _, x0, cond, text = _inputs(T)
    t = torch.tensor([100, 700])
    noise = torch.randn_like(x0)
    # LoRA's B starts at zero: the fake equals the teacher, and with the same guidance the VSD gradient is 0
    for weighting in ("sds", "dmd"):
        g = vsd_grad(T, fake, x0, cond, text, t, noise, VSDConfig(guidance=(1, 1), weighting=weighting))
        assert g.shape == x0.shape and g.abs().max() < 1e-5
    # with teacher CFG it is not
    g = vsd_grad(T, fake, x0, cond, text, t, noise, VSDConfig(guidance=(1.5, 4.0)))
    assert g.abs().max() > 1e-4
    # a fake-score step moves the fake only
    opt = torch.optim.Adam(params, lr=1e-2)
    loss = fake_score_loss(fake, x0, cond, text, torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in T.unet.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    opt.step()
    for k, v in T.unet.state_dict().items():
        assert torch.equal(v, before[k]), k
    g = vsd_grad(T, fake, x0, cond, text, t, noise, VSDConfig(guidance=(1, 1)))
    assert g.abs().max() > 1e-5
    # LoRA state round trip
    state = lora_state_dict(fake)
    other = make_fake_score(T, rank=4, alpha=8)
    load_lora_state_dict(other, state)
    torch.testing.assert_close(other.eps(x0, t, cond, text, (1, 1)), fake.eps(x0, t, cond, text, (1, 1)))
    with pytest.raises(KeyError):
        load_lora_state_dict(other, {"nope": torch.zeros(1)})


def test_vsd_gradient_reaches_the_student_only(tiny_teacher):
    from course_lib.student import Student, StudentConfig

    T = tiny_teacher
    fake = make_fake_score(T, rank=4, alpha=8)
    student = Student(StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,)))
    torch.nn.init.normal_(student.head.weight, std=0.01)
    src = torch.rand(2, 3, 40, 40)
    text_s = torch.randn(2, 384)
    out = student(src, text_s)  # (2, 3, 40, 40)
    x0 = to_teacher_space(T, out)  # (2, 3, 16, 16) in [-1, 1]
    assert x0.shape == (2, 3, 16, 16) and x0.requires_grad
    cond = T.encode_source(torch.nn.functional.interpolate(src, size=(16, 16), mode="bilinear", antialias=True))
    text = T.encode_text(["make it warmer", "make it cooler"])
    cfg = VSDConfig(guidance=(1.5, 4.0))
    t = sample_timesteps(2, cfg, torch.Generator().manual_seed(0))
    assert ((t >= cfg.t_min) & (t < cfg.t_max)).all()
    grad = vsd_grad(T, fake, x0, cond, text, t, torch.randn_like(x0), cfg)
    vsd_loss(x0, grad).backward()
    assert student.head.weight.grad is not None and student.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in T.unet.parameters())
    assert all(p.grad is None for p in lora_parameters(fake))


def test_vsd_on_tiny_hub_pipeline(tiny_hub):
    T, _ = tiny_hub
    fake = make_fake_score(T, rank=2, alpha=4)
    img = torch.rand(2, 3, 16, 16, requires_grad=True)
    x0 = to_teacher_space(T, img)  # VAE latents (2, 4, 8, 8), differentiable
    cond = T.encode_source(img.detach())
    text = T.encode_text(["make it warmer", "make it cooler"])
    grad = vsd_grad(T, fake, x0, cond, text, torch.tensor([300, 600]), torch.randn_like(x0), VSDConfig())
    assert grad.shape == x0.shape and torch.isfinite(grad).all()
    vsd_loss(x0, grad).backward()
    assert img.grad is not None and img.grad.abs().sum() > 0  # through the VAE encoder
    loss = fake_score_loss(fake, x0, cond, text, torch.Generator().manual_seed(1))
    loss.backward()
    assert any(p.grad is not None for p in lora_parameters(fake))


def test_bad_weighting():
    with pytest.raises(ValueError):
        T = type("T", (), {})()
        vsd_grad(T, T, torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1),
                 VSDConfig(weighting="nope"))


def test_train_vsd_runs_and_resumes_exactly(tiny_teacher, tmp_path):
    from course_lib.student import Student, StudentConfig, load_student, save_student
    from course_lib.train.vsd import VSDArgs, train

    init = Student(StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,)))
    save_student(init, tmp_path / "init.safetensors")

    def args(steps, out):
        return VSDArgs(steps=steps, batch_size=2, size=24, init=str(tmp_path / "init.safetensors"),
                       guidance=(1.5, 3.0), lora_rank=2, lora_alpha=4, save_every=2,
                       out=str(tmp_path / out))

    straight, log = train(args(4, "a.safetensors"), teacher=tiny_teacher)
    assert len(log) == 4 and all(set(r) == {"step", "vsd", "align", "regress", "fake", "grad_rms", "mse_gt", "mse_id"} for r in log)
    assert log[0]["grad_rms"] > 0
    # the student moved away from the identity
    assert any((p - q).abs().max() > 0 for p, q in zip(straight.parameters(), init.parameters()))
    train(args(2, "b.safetensors"), teacher=tiny_teacher)
    resumed, log_b = train(args(4, "b.safetensors"), resume=True, teacher=tiny_teacher)
    assert [r["step"] for r in log_b] == [1, 2, 3, 4]
    for p, q in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    loaded = load_student(tmp_path / "a.safetensors")
    for p, q in zip(straight.parameters(), loaded.parameters()):
        torch.testing.assert_close(p, q)


def test_train_vsd_help(capsys):
    from course_lib.train.vsd import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--fake-steps" in capsys.readouterr().out


def test_train_vsd_with_alignment(tiny_teacher, tmp_path):
    from course_lib.align import EditCLIP, EditCLIPConfig, save_edit_clip
    from course_lib.student import Student, StudentConfig, save_student
    from course_lib.train.vsd import VSDArgs, train

    save_student(Student(StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,))),
                 tmp_path / "init.safetensors")
    save_edit_clip(EditCLIP(EditCLIPConfig(size=16, patch=8, width=32, layers=1, head_width=16, embed_dim=16)),
                   tmp_path / "clip.safetensors")
    args = VSDArgs(steps=2, batch_size=3, size=24, init=str(tmp_path / "init.safetensors"),
                   lora_rank=2, lora_alpha=4, align_weight=0.5,
                   align_path=str(tmp_path / "clip.safetensors"))
    _, log = train(args, teacher=tiny_teacher)
    assert all(r["align"] > 0 for r in log)  # InfoNCE over 3 items: about log 3 at the start


@pytest.mark.parametrize("weighting", ["sds", "dmd"])
def test_vsd_direction_points_from_fake_to_teacher(weighting):
    """With x̂0_teacher = 1 and x̂0_fake = x0 = 0, a descent step on grad must increase x0."""
    from course_lib.distill import vsd_direction

    ab = torch.tensor([0.3, 0.8]).view(-1, 1, 1, 1)
    x0 = torch.zeros(2, 3, 4, 4)
    noise = torch.randn(2, 3, 4, 4)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    eps_from = lambda x0_hat: (x_t - ab.sqrt() * x0_hat) / (1 - ab).sqrt()  # noqa: E731
    grad = vsd_direction(eps_from(torch.ones_like(x0)), eps_from(x0), x0, x_t, ab, weighting)
    assert (grad < 0).all()
    assert vsd_direction(eps_from(x0), eps_from(x0), x0, x_t, ab, weighting).abs().max() < 1e-6
    if weighting == "sds":  # (1 − ᾱ) √ᾱ / √(1 − ᾱ) (x̂0_fake − x̂0_teacher)
        torch.testing.assert_close(grad, -((1 - ab).sqrt() * ab.sqrt()).expand_as(grad))


@pytest.mark.parametrize("name", ["student_vsd_scratch.safetensors"])
def test_shipped_vsd_students_load_and_edit(name):
    import json

    from safetensors import safe_open

    from course_lib import config
    from course_lib.student import load_student

    path = config.WEIGHTS_DIR / name
    assert path.is_file(), f"missing shipped checkpoint {path}"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["method"] == "vsd"
    args = json.loads(meta["vsd_args"])
    assert (args["align_weight"] > 0) == ("align" in name)
    m = load_student(path, device="cpu").eval()
    src = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        out = m(src, m.embed(["make it warmer", "add contrast"]))
    assert out.shape == src.shape and torch.isfinite(out).all()
    assert float((out - src).abs().mean()) > 1e-3  # it edits


def test_gradient_alignment_diagnostic():
    """The first VSD gradient from the identity with the fake = teacher: zero without text
    guidance, and pointing towards the edit with it (the shipped teacher, a few test items)."""
    import matplotlib

    matplotlib.use("Agg")
    from course_lib import distill
    from course_lib.eval.heldout import heldout_batch
    from course_lib.teacher import load_teacher
    from course_lib.viz import alignment_plot

    t = load_teacher()
    from course_lib.world import GLOBAL_FAMILIES

    b = heldout_batch(6, 48, wording="train", families=GLOBAL_FAMILIES)
    bins = ((20, 300), (300, 700), (700, 980))
    none = distill.gradient_alignment(t, b["source"], b["target"], b["instruction"], t_bins=bins, draws=1,
                                      guidance=(1.0, 1.0))
    assert all(r["pixel"] == 0 and r["colour"] == 0 for r in none)
    rows = distill.gradient_alignment(t, b["source"], b["target"], b["instruction"], t_bins=bins, draws=2)
    assert [(r["t_lo"], r["t_hi"]) for r in rows] == list(bins)
    assert all(-1 <= r["pixel"] <= 1 for r in rows)
    assert sum(r["pixel"] for r in rows) / len(rows) > 0.2  # the guidance direction points towards the edit
    assert len(alignment_plot(rows).axes) == 1


def test_regression_loss_is_half_the_squared_distance_per_image():
    from course_lib.distill import regression_loss

    s = torch.rand(3, 3, 4, 4, requires_grad=True)
    t = torch.rand(3, 3, 4, 4)
    loss = regression_loss(s, t)
    torch.testing.assert_close(loss, 0.5 * ((s - t) ** 2).sum() / 3)
    loss.backward()
    torch.testing.assert_close(s.grad, (s - t).detach() / 3)  # the same units as vsd_loss's gradient
