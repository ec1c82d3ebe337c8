"""Tests of course_lib.inversion, course_lib.perceptual and course_lib.train.inverter (lesson 07)."""
from __future__ import annotations

import json

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


def test_residual_edit_removes_the_round_trip_error(tiny_teacher):
    """x̃ = x + G(z; y) − G(z; ∅): with the empty instruction it returns the photo itself (whatever the
    round trip's error), and otherwise differs from the photo by exactly the plain edit's change
    over the reconstruction."""
    T = tiny_teacher
    img = torch.rand(2, 3, 16, 16)
    plain = inv.invert_and_edit(T, T, img, ["warmer", "brighter"], 3, residual=False)
    res = inv.invert_and_edit(T, T, img, ["warmer", "brighter"], 3, residual=True)
    x0 = T.to_space(img)
    z = inv.invert(T, x0, T.null_text(2), 3)
    rec = inv.generate(T, z, T.null_text(2), 3)
    want = T.from_space(x0 + T.to_space(plain) - rec)
    inside = (plain > 0) & (plain < 1)  # where the plain edit was not clipped
    torch.testing.assert_close(res[inside], want[inside], atol=1e-5, rtol=0)
    # the tiny teacher edits, and its round trip is not exact: the residual edit is not the plain one
    assert (res - plain).abs().max() > 1e-3
    null = T.null_text(2)
    orig = T.encode_text  # an instruction embedding equal to ∅: the residual edit is the photo
    try:
        T.encode_text = lambda texts: null
        torch.testing.assert_close(inv.invert_and_edit(T, T, img, ["", ""], 3, residual=True), img, atol=1e-5, rtol=0)
    finally:
        T.encode_text = orig


def test_more_ddim_steps_reconstruct_better():
    """With the trained teacher, DDIM inversion error shrinks with the step count (lesson 07's first plot)."""
    from course_lib.eval.heldout import heldout_batch
    from course_lib.metrics import psnr
    from course_lib.teacher import load_teacher

    T = load_teacher("embedded")
    x = heldout_batch(2, T.resolution, wording="train")["source"]
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
    # pixels alone: LPIPS is reported but adds nothing to the loss
    pix_only, p0 = inv.cycle_loss(fwd, T, x0, null, _l2, 4, 1.0, 0.1, z_ref, perceptual_weight=0.0)
    assert p0["lpips"] == pytest.approx(parts["lpips"], rel=1e-5)
    assert float(pix_only.detach()) == pytest.approx(p0["pixel"] + 0.1 * p0["preserve"], rel=1e-5)


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
    """The claim of lesson 07 in miniature, on the test photos (measured, can fail):
    a regression of the inverter towards plain DDIM inversion loses the margin."""
    from course_lib.eval.heldout import heldout_batch
    from course_lib.metrics import psnr
    from course_lib.teacher import load_teacher
    from course_lib.inversion import load_inverter, shipped_path

    if not shipped_path().is_file():
        pytest.fail(f"missing shipped inverter {shipped_path()}")
    fwd, meta = load_inverter()  # on the teacher it was trained on, as its metadata says
    assert meta["teacher"] == "embedded" and meta["data"] == "world"
    T = load_teacher("embedded")
    x = heldout_batch(8, T.resolution, wording="train")["source"]
    plain, _ = inv.reconstruct(T, T, x, 4)
    cycle, _ = inv.reconstruct(fwd, T, x, 4)
    assert float(psnr(cycle, x).mean()) > float(psnr(plain, x).mean()) + 3.0
    assert "perceptual" in meta


def test_edit_image_any_size_keeps_shape_and_rejects_bad_input():
    """The studio's entry point: any (3, H, W) photo in, the same shape out, one clear error otherwise."""
    img = torch.rand(3, 50, 70)
    out = inv.edit_image(img, "", "make it warmer")
    assert out.shape == img.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert float((out - img).abs().mean()) > 0  # it edits
    # the residual change is edit − reconstruction: asking for the source instruction changes nothing,
    # where the plain change (edit − photo) carries the round trip's error
    same = inv.edit_image(img, "make it warmer", "make it warmer")
    torch.testing.assert_close(same, img.clamp(0, 1), atol=1e-6, rtol=0)
    plain = inv.edit_image(img, "make it warmer", "make it warmer", residual=False)
    assert float((plain - img).abs().mean()) > 1e-3
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

    out, js = tmp_path / "table.md", tmp_path / "table.json"
    from course_lib.inversion import save_inverter, make_forward_model
    from course_lib.teacher import load_teacher
    plain = save_inverter(make_forward_model(load_teacher("embedded")), tmp_path / "plain.safetensors", {})
    assert main(["--n", "2", "--no-student", "--threads", "1", "--out", str(out), "--json", str(js),
                 "--stages", f"plain={plain}", "--curve", "1,2", "--ref-steps", "10", "--residual"]) == 0
    md = out.read_text()
    result = json.loads(js.read_text())
    assert result["photos"] == "test" and result["n"] == 2 and "inversion-eval" in result["command"]
    assert {r["method"] for r in result["reconstruction"]} == {"DDIM-10", "DDIM-4", "cycle-trained 4-step"}
    # a LoRA at zero is plain DDIM inversion: its stage row equals the DDIM-4 row
    ddim4 = next(r for r in result["reconstruction"] if r["method"] == "DDIM-4")
    assert result["stages"][0]["psnr"] == pytest.approx(ddim4["psnr"], abs=1e-3)
    assert [r["steps"] for r in result["steps_curve"]] == [1, 2] and set(result["targets"]) == {
        "psnr_gap_db", "speedup", "direction_gain", "drift_excess", "direction_gain_residual",
        "drift_excess_residual", "direction_gain_vs_residual", "drift_excess_vs_residual"}
    ed = {r["method"]: r for r in result["editing"]}
    assert result["targets"]["drift_excess_residual"] == pytest.approx(
        ed["Inverse-and-Edit (cycle 4-step), reconstruction error removed"]["drift"] - ed["DDIM-10 inversion + edit"]["drift"])
    assert "by training stage" in md
    assert sum("reconstruction error removed" in r["method"] for r in result["editing"]) == 2
    for row in ("DDIM-10", "DDIM-4", "cycle-trained 4-step", "Inverse-and-Edit", "teacher's own edit", "LPIPS"):
        assert row in md
    assert md.strip() in capsys.readouterr().out
    assert main(["--n", "2", "--inverter", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["--n", "2", "--no-student", "--out", str(out)]) == 2  # never replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == md


def test_consistency_map_boundary_and_one_invert_step(tiny_teacher):
    T = tiny_teacher
    x0 = T.to_space(torch.rand(2, 3, 16, 16))
    null = T.null_text(2)
    z = torch.randn_like(x0)
    assert torch.equal(inv.consistency_map(T, z, 519, 519, null), z)  # F(z, t_end) = z
    # from a boundary, f is one step of the 4-step inversion
    ab = T.alpha_bar(torch.tensor([19, 259]))
    torch.testing.assert_close(inv.consistency_map(T, x0, 19, 259, null),
                               inv.ddim_step(x0, inv.eps_text(T, x0, 19, null), ab[0], ab[1]))
    grid = inv.solver_grid(50, 4)
    assert set(inv.boundaries(4)) <= set(grid) and grid[0] == 19 and grid[-1] == 999


def cd(fwd, T, x0, null, g):
    """One consistency-distillation example at a drawn point: ``(loss, t_n)``."""
    noise, t_n, t_next, t_end = inv.cd_point(x0, g)
    return inv.forward_cd_loss(fwd, T, x0, null, noise, t_n, t_next, t_end), t_n


def test_forward_cd_loss_trains_only_the_lora_and_is_seeded(tiny_teacher):
    T = tiny_teacher
    fwd = inv.make_forward_model(T, rank=4, alpha=16)
    with torch.no_grad():
        for p in lora_parameters(fwd):
            p.normal_(std=0.05)
    x0 = T.to_space(torch.rand(2, 3, 16, 16))
    null = T.null_text(2)
    loss, t = cd(fwd, T, x0, null, torch.Generator().manual_seed(3))
    again, t2 = cd(fwd, T, x0, null, torch.Generator().manual_seed(3))
    assert t == t2 and float(loss) == float(again) and t in inv.solver_grid()
    # the target carries no gradient: x0's gradient is the prediction's alone
    noise, t_n, t_next, t_end = inv.cd_point(x0, torch.Generator().manual_seed(3))
    x_req = x0.clone().requires_grad_(True)
    inv.forward_cd_loss(fwd, T, x_req, null, noise, t_n, t_next, t_end).backward()
    x_pred = x0.clone().requires_grad_(True)
    if noise is None:
        z_n = x_pred
    else:
        ab = T.alpha_bar(torch.tensor([t_n]))
        z_n = ab.sqrt() * x_pred + (1 - ab).sqrt() * noise
    with torch.no_grad():
        ab2 = T.alpha_bar(torch.tensor([t_n, t_next]))
        z_next = inv.ddim_step(z_n, inv.eps_text(T, z_n, t_n, null), ab2[0], ab2[1])
        target = inv.consistency_map(fwd, z_next, t_next, t_end, null)
    (inv.consistency_map(fwd, z_n, t_n, t_end, null) - target).pow(2).mean().backward()
    torch.testing.assert_close(x_req.grad, x_pred.grad)
    loss.backward()
    grads = [p.grad for p in lora_parameters(fwd)]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in T.unet.parameters())
    # the noise cycle: F(G(z)) = z is a regression; only the LoRA gets gradients
    for p in lora_parameters(fwd):
        p.grad = None
    nc, part = inv.noise_cycle_loss(fwd, T, torch.randn_like(x0), null)
    nc.backward()
    assert part["noise_cycle"] > 0 and all(p.grad is not None for p in lora_parameters(fwd))
    assert all(p.grad is None for p in T.unet.parameters())


def test_forward_cm_self_consistency_improves_with_distillation(tiny_teacher):
    """A few steps of consistency distillation make the tiny forward model map two points of one
    teacher trajectory (z_n and the teacher's step from it) closer to the same segment end."""
    T = tiny_teacher
    torch.manual_seed(0)
    fwd = inv.make_forward_model(T, rank=4, alpha=16)
    x0 = T.to_space(torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    null = T.null_text(8)

    def gap() -> float:
        # mean over segments of |f(z_n, t_n) - f(z_{n+1}, t_{n+1})|^2 at fixed points and noise
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            return sum(float(cd(fwd, T, x0, null, g)[0]) for _ in range(12)) / 12

    before = gap()
    opt = torch.optim.Adam(lora_parameters(fwd), lr=3e-4)
    g = torch.Generator().manual_seed(7)
    for _ in range(40):
        loss, _ = cd(fwd, T, x0, null, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = gap()
    assert after < 0.85 * before, (before, after)


def test_train_inverter_stages_on_world_photos(tiny_teacher, tmp_path):
    """Stage 1 (consistency distillation + noise cycle) on the training photos, then stage 2
    (cycle) started from its checkpoint; both resumable checkpoints in the one format."""
    from course_lib.distill import lora_state_dict
    from course_lib.inversion import load_inverter
    from course_lib.train.inverter import InverterArgs, train

    T = tiny_teacher
    cd = InverterArgs(steps=2, batch_size=2, lr=1e-3, lora_rank=4, stage="cd", noise_weight=0.5,
                      out=str(tmp_path / "cd.safetensors"))
    fwd, log = train(cd, teacher=T, perceptual=_l2)
    assert len(log) == 2 and {"cd", "noise_cycle", "loss"} <= set(log[0]) and "lpips" not in log[0]
    stage1, _ = load_inverter(tmp_path / "cd.safetensors", teacher=T)
    cyc = InverterArgs(steps=1, batch_size=2, lr=0.0, lora_rank=4, init=str(tmp_path / "cd.safetensors"),
                       out=str(tmp_path / "cycle.safetensors"))
    fwd2, log2 = train(cyc, teacher=T, perceptual=_l2)
    assert "lpips" in log2[0]
    for k, v in lora_state_dict(stage1).items():  # lr 0: the cycle stage starts exactly at stage 1's LoRA
        torch.testing.assert_close(lora_state_dict(fwd2)[k], v)
    with pytest.raises(ValueError):
        train(InverterArgs(steps=1, batch_size=2, stage="nonsense"), teacher=T, perceptual=_l2)


def test_cycle_and_consistency_figures_render():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from course_lib import viz

    for fig in (viz.cycle_diagram(), viz.cycle_diagram((19, 339, 699, 999)), viz.consistency_figure()):
        assert len(fig.axes) == 1 and fig.axes[0].texts or fig.axes[0].lines
        plt.close(fig)
