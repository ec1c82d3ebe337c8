"""Tests of course_lib.inversion, course_lib.perceptual and course_lib.train.inverter (lesson 07)."""
from __future__ import annotations

import pytest
import torch

from course_lib import inversion as inv
from course_lib.distill import lora_parameters


def _l2(x, y):
    """A cheap stand-in for LPIPS: (B,) mean squared error."""
    return (x - y).pow(2).flatten(1).mean(1)


def test_boundaries():
    assert inv.boundaries(4) == (19, 259, 519, 779, 999)  # iCD's schedule
    b = inv.boundaries(50)
    assert len(b) == 51 and b[0] == 19 and b[-1] == 999 and all(x < y for x, y in zip(b, b[1:]))
    with pytest.raises(ValueError):
        inv.boundaries(0)


def test_ddim_step_is_exactly_invertible_for_a_fixed_eps():
    z = torch.randn(2, 3, 8, 8)
    eps = torch.randn(2, 3, 8, 8)
    up = inv.ddim_step(z, eps, 0.9, 0.3)
    torch.testing.assert_close(inv.ddim_step(up, eps, 0.3, 0.9), z, atol=1e-5, rtol=1e-5)
    # to ᾱ_s = 1 the step returns x̂0 = (z − √(1−ᾱ) ε)/√ᾱ
    torch.testing.assert_close(inv.ddim_step(z, eps, 0.25, 1.0), (z - 0.75 ** 0.5 * eps) / 0.5)


def test_invert_generate_shapes_tiny(tiny_teacher):
    T = tiny_teacher
    x0 = T.to_space(torch.rand(2, 3, 16, 16))
    null = T.null_text(2)
    z = inv.invert(T, x0, null, 3)
    rec = inv.generate(T, z, null, 3, guidance=2.0, tau=0.5)
    assert z.shape == x0.shape == rec.shape and torch.isfinite(z).all() and torch.isfinite(rec).all()


def test_more_ddim_steps_reconstruct_better():
    """With the trained teacher, DDIM inversion error shrinks with the step count (lesson 07's first plot)."""
    from course_lib.eval.heldout import heldout_batch
    from course_lib.metrics import psnr
    from course_lib.teacher import load_teacher

    T = load_teacher("embedded")
    x = heldout_batch(2, T.resolution, paraphrases="train")["source"]
    p = [float(psnr(inv.reconstruct(T, T, x, n)[0], x).mean()) for n in (2, 25)]
    assert p[1] > p[0] + 5


def test_cycle_loss_gradients_reach_only_the_forward_lora(tiny_teacher):
    T = tiny_teacher
    fwd = inv.make_forward_model(T, rank=4, alpha=16)
    with torch.no_grad():  # move LoRA off zero so F differs from plain DDIM inversion
        for p in lora_parameters(fwd):
            p.normal_(std=0.05)
    x0 = T.to_space(torch.rand(2, 3, 16, 16))
    null = T.null_text(2)
    z_ref = inv.invert(T, x0, null, 4).detach()
    loss, parts = inv.cycle_loss(fwd, T, x0, null, _l2, 4, 1.0, 0.1, z_ref)
    loss.backward()
    grads = [p.grad for p in lora_parameters(fwd)]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in T.unet.parameters())  # the generator stays frozen
    assert all(p.grad is None for n, p in fwd.unet.named_parameters() if "lora_" not in n)
    assert set(parts) == {"lpips", "pixel", "preserve"} and parts["preserve"] > 0


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    y = (x + 0.1 * torch.randn(1, 3, 32, 32, generator=g)).clamp(0, 1)
    ref = structural_similarity(x[0].permute(1, 2, 0).numpy(), y[0].permute(1, 2, 0).numpy(), channel_axis=2,
                                data_range=1.0, win_size=7)
    from course_lib.metrics import ssim

    assert abs(float(ssim(x, y)[0]) - ref) < 2e-3
    assert float(ssim(x, x)[0]) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- LPIPS


def test_lpips_offline_is_the_labelled_fallback():
    from course_lib import config
    from course_lib.perceptual import FALLBACK_LABEL, load_lpips

    with config.no_network():
        p = load_lpips()
    assert not p.real and p.label == FALLBACK_LABEL and "fallback" in p.label
    x = torch.rand(2, 3, 32, 32)
    d = p(x, x.flip(-1))
    assert torch.allclose(p(x, x), torch.zeros(2)) and (d > 0).all()
    # seeded: the same random backbone every time
    assert torch.allclose(load_lpips()(x, x.flip(-1)), d)


def test_lpips_hub_backbone_loading_path(tmp_path):
    """The real-backbone code path, on a stand-in file with timm's key names (random values)."""
    from safetensors.torch import save_file

    from course_lib.perceptual import REAL_LABEL, load_lpips

    fb = load_lpips()
    state = {"features." + n.split(".", 1)[1]: torch.randn_like(p) * 0.05 for n, p in fb.net.net.named_parameters()}
    save_file(state, str(tmp_path / "model.safetensors"))
    real = load_lpips(backbone=str(tmp_path / "model.safetensors"))
    assert real.real and real.label == REAL_LABEL
    w = dict(real.net.net.named_parameters())["slice2.5.weight"]
    torch.testing.assert_close(w, state["features.5.weight"])
    bad = {k: v for k, v in state.items() if not k.startswith("features.28")}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(KeyError):
        load_lpips(backbone=str(tmp_path / "bad.safetensors"))


# ----------------------------------------------------------------------------- training and checkpoints


def test_train_inverter_resume_is_exact_and_checkpoint_loads(tiny_teacher, tmp_path):
    from course_lib.distill import lora_state_dict
    from course_lib.inversion import load_inverter
    from course_lib.train.inverter import InverterArgs, train

    T = tiny_teacher
    a = InverterArgs(steps=2, batch_size=2, lr=1e-3, lora_rank=4, out=str(tmp_path / "full.safetensors"))
    full, log = train(a, teacher=T, perceptual=_l2)
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    half = InverterArgs(**{**a.__dict__, "steps": 1, "out": str(tmp_path / "half.safetensors")})
    train(half, teacher=T, perceptual=_l2)
    resumed, log2 = train(InverterArgs(**{**half.__dict__, "steps": 2}), resume=True, teacher=T, perceptual=_l2)
    for k, v in lora_state_dict(full).items():
        torch.testing.assert_close(lora_state_dict(resumed)[k], v)
    assert [r["loss"] for r in log2] == pytest.approx([r["loss"] for r in log])
    fwd, meta = load_inverter(tmp_path / "full.safetensors", teacher=T)
    assert meta["trained_steps"] == "2"
    for k, v in lora_state_dict(full).items():
        torch.testing.assert_close(lora_state_dict(fwd)[k], v)
    with pytest.raises(FileNotFoundError, match="no inverter checkpoint"):
        load_inverter(tmp_path / "missing.safetensors", teacher=T)


def test_hub_tier_inversion_round_trip(tiny_hub):
    T, _ = tiny_hub
    img = torch.rand(1, 3, *T.working_size(64, 64))
    x0 = T.to_space(img)
    null = T.null_text(1)
    z = inv.invert(T, x0, null, 4)
    rec = inv.generate(T, z, null, 4)
    assert z.shape == x0.shape == rec.shape and torch.isfinite(rec).all()
    fwd = inv.make_forward_model(T, rank=2, alpha=4)
    loss, _ = inv.cycle_loss(fwd, T, x0, null, _l2, 2)
    loss.backward()
    assert any(p.grad is not None for p in lora_parameters(fwd))


def test_shipped_inverter_beats_plain_ddim4():
    """The claim of lesson 07 in miniature, on held-out photos (measured, can fail)."""
    from course_lib.eval.heldout import heldout_batch
    from course_lib.metrics import psnr
    from course_lib.teacher import load_teacher
    from course_lib.inversion import load_inverter, shipped_path

    if not shipped_path().is_file():
        pytest.fail(f"missing shipped inverter {shipped_path()}")
    T = load_teacher("embedded")
    x = heldout_batch(4, T.resolution, paraphrases="train")["source"]
    fwd, meta = load_inverter(teacher=T)
    plain, _ = inv.reconstruct(T, T, x, 4)
    cycle, _ = inv.reconstruct(fwd, T, x, 4)
    assert float(psnr(cycle, x).mean()) > float(psnr(plain, x).mean()) + 1.0
    assert "perceptual" in meta


def test_edit_image_any_size_keeps_shape_and_rejects_bad_input():
    """The studio's entry point: any (3, H, W) photo in, the same shape out, one clear error otherwise."""
    img = torch.rand(3, 50, 70)
    out = inv.edit_image(img, "", "make it warmer")
    assert out.shape == img.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert float((out - img).abs().mean()) > 0  # it edits
    with pytest.raises(ValueError, match="expected a"):
        inv.edit_image(torch.rand(4, 50, 70), "", "make it warmer")


def test_optimise_noise_lowers_the_reconstruction_error(tiny_teacher):
    T = tiny_teacher
    x0 = T.to_space(torch.rand(2, 3, 16, 16))
    null = T.null_text(2)
    z0 = inv.invert(T, x0, null, 2).detach()
    z, hist = inv.optimise_noise(T, x0, null, z0, steps=15, gen_steps=2, lr=0.05)
    assert len(hist) == 15 and hist[-1] < hist[0] and z.shape == z0.shape
    assert all(p.grad is None for p in T.unet.parameters())


def test_inversion_eval_command(tmp_path, capsys):
    from course_lib.eval.inversion import main

    out = tmp_path / "table.md"
    assert main(["--n", "2", "--no-student", "--threads", "1", "--out", str(out)]) == 0
    md = out.read_text()
    for row in ("DDIM-50", "DDIM-4", "cycle-trained 4-step", "Inverse-and-Edit", "teacher's own edit", "LPIPS"):
        assert row in md
    assert md.strip() in capsys.readouterr().out
    assert main(["--n", "2", "--inverter", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["--n", "2", "--no-student", "--out", str(out)]) == 2  # never replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == md
