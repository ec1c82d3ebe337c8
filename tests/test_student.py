"""The student network (lesson 03): shapes, identity start, conditioning, checkpoints, training."""
import dataclasses
import json
import struct

import pytest
import torch

from course_lib import data
from course_lib.bilateral import CurveGuide
from course_lib.checks import float_tol
from course_lib.student import (CheckpointError, Student, StudentConfig, curve_guide_fast, film, grid_from_head,
                                load_student, n_parameters, read_metadata, retouch, save_student, shipped_path)

SMALL = StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,))


def _perturb(model: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_shapes():
    m = Student(SMALL)
    x, t = torch.rand(2, 3, 40, 56), torch.randn(2, 384)
    assert m.predict_grid(x, t).shape == (2, 12, 4, 8, 8)
    out, grid = m(x, t, return_grid=True)
    assert out.shape == (2, 3, 40, 56) and grid.shape == (2, 12, 4, 8, 8)
    assert m.guide_map(x).shape == (2, 40, 56)


def test_config_validation_and_default_size():
    with pytest.raises(ValueError):
        StudentConfig(net_size=48, grid_size=16)
    cfg = StudentConfig()
    assert (cfg.net_size, cfg.grid_size, cfg.luma_bins, cfg.n_down) == (256, 16, 8, 4)
    assert StudentConfig.from_json(cfg.to_json()) == cfg


def test_identity_initialisation():
    m = Student(SMALL)
    x = torch.rand(2, 3, 37, 61)
    out = m(x, torch.randn(2, 384))
    assert torch.allclose(out, x, atol=1e-5)


def test_strength_zero_is_identity_and_strength_scales():
    m = Student(SMALL)
    _perturb(m)
    x, t = torch.rand(1, 3, 24, 24), torch.randn(1, 384)
    assert torch.allclose(m(x, t, strength=0.0), x, atol=1e-5)
    g1, g2 = m.predict_grid(x, t, 1.0), m.predict_grid(x, t, 2.0)
    assert torch.allclose(g2 - m.identity, 2 * (g1 - m.identity), atol=1e-5)


def test_conditioning_changes_the_grid():
    m = Student(SMALL)
    _perturb(m)
    x = torch.rand(1, 3, 32, 32).expand(2, -1, -1, -1)
    t = torch.randn(2, 384)
    grid = m.predict_grid(x, t)
    assert (grid[0] - grid[1]).abs().max() > 1e-3
    # same instruction, same grid
    grid_same = m.predict_grid(x, t[:1].expand(2, -1))
    # two rows of one batch: kernels may block them differently; depth = the network's conv/linear layers
    depth = sum(isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) for mod in m.modules())
    torch.testing.assert_close(grid_same[0], grid_same[1], **float_tol(grid_same, depth))


def test_film_and_head_reshape():
    f, g, b = torch.randn(2, 5, 3, 4), torch.randn(2, 5), torch.randn(2, 5)
    out = film(f, g, b)
    assert torch.allclose(out[1, 2], g[1, 2] * f[1, 2] + b[1, 2])
    head = torch.randn(2, 12 * 8, 4, 4)
    grid = grid_from_head(head, 8)
    assert grid.shape == (2, 12, 8, 4, 4)
    assert torch.equal(grid[1, 5, 3], head[1, 5 * 8 + 3])  # channel c * D + z
    with pytest.raises(ValueError):
        grid_from_head(torch.randn(1, 50, 4, 4), 8)


@pytest.mark.parametrize("impl", ["torch", "cpu"])
@pytest.mark.parametrize("knots", [16, 5])
def test_curve_guide_fast_matches_module(impl, knots):
    from course_lib import fastslice

    if impl == "cpu" and fastslice.load_cpu_extension() is None:
        pytest.skip(f"no C++ extension: {fastslice.cpu_extension_error()}")
    guide = CurveGuide(n_knots=knots)
    _perturb(guide, 0.2)
    x = torch.rand(2, 3, 33, 47) * 1.2 - 0.1
    ref = guide(x)  # depth: 3-term colour matrix, a sum over the knots, 3-channel mix, summed in another order
    torch.testing.assert_close(curve_guide_fast(guide, x, impl=impl), ref, **float_tol(ref, knots + 6))
    if impl == "cpu":  # half precision in, half out, same values to fp16 rounding
        half = curve_guide_fast(guide, x.half(), impl=impl)
        assert half.dtype == torch.float16 and torch.allclose(half.float(), guide(x.half().float()), atol=2e-3)


def test_checkpoint_round_trip(tmp_path):
    m = Student(SMALL)
    _perturb(m)
    path = save_student(m, tmp_path / "s.safetensors", metadata={"note": "test"})
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])  # safetensors: length + JSON header
    assert "__metadata__" in header
    meta = read_metadata(path)
    assert meta["note"] == "test" and meta["kind"] == "student" and StudentConfig.from_json(meta["config"]) == SMALL
    m2 = load_student(path)
    x, t = torch.rand(1, 3, 20, 30), torch.randn(1, 384)
    with torch.no_grad():
        assert torch.equal(m(x, t), m2(x, t))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_student(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError):
        load_student(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a course_lib checkpoint"):
        load_student(other)
    from course_lib.align import EditCLIP, EditCLIPConfig, save_edit_clip

    clip = save_edit_clip(EditCLIP(EditCLIPConfig()), tmp_path / "clip.safetensors")
    with pytest.raises(CheckpointError, match="of kind 'edit_clip', expected 'student'"):
        load_student(clip)


def test_shipped_checkpoint_beats_identity():
    path = shipped_path()
    assert path.is_file(), "the shipped student checkpoint is missing"
    assert path.stat().st_size < 5_000_000
    assert json.loads(read_metadata(path)["recipe"])["command"] == "train-student"
    m = load_student()
    # the data world's test photos, training wording (held-out wording: see the lesson's evaluation)
    from course_lib import world
    ds = world.RetouchWorld(split="test", wording="train", size=96, length=24, seed=7)
    items = [ds[i] for i in range(len(ds))]
    src = torch.stack([it["source"] for it in items])
    tgt = torch.stack([it["target"] for it in items])
    out = retouch(m, src, [it["instruction"] for it in items])
    assert out.shape == src.shape and 0 <= out.min() and out.max() <= 1
    mse_student = (out - tgt).pow(2).mean()
    mse_identity = (src - tgt).pow(2).mean()
    assert mse_student < 0.5 * mse_identity, (mse_student, mse_identity)


def test_training_resumes_exactly(tmp_path):
    from course_lib.train.common import load_optimizer_tensors, optimizer_tensors
    from course_lib.train.student import TrainArgs, train

    kw = dict(batch_size=4, size=32, net_size=32, grid_size=8, channels=16, warmup=2, lr=3e-3, seed=3)
    full, losses = train(TrainArgs(steps=6, out=str(tmp_path / "a.safetensors"), save_every=3, **kw))
    assert len(losses) == 6 and all(l == l for l in losses)
    train(TrainArgs(steps=3, out=str(tmp_path / "b.safetensors"), save_every=3, **kw))
    resumed, losses_b = train(TrainArgs(steps=6, out=str(tmp_path / "b.safetensors"), save_every=3, **kw), resume=True)
    assert len(losses_b) == 6 and losses_b[:3] == losses[:3]
    for (k, v), (_, w) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-6), k
    # optimiser state survives the safetensors flattening
    opt = torch.optim.Adam(full.parameters())
    full(torch.rand(1, 3, 32, 32), full.embed(["make it warmer"])).sum().backward()
    opt.step()
    tensors, meta = optimizer_tensors(opt)
    opt2 = torch.optim.Adam(full.parameters())
    load_optimizer_tensors(opt2, tensors, meta)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_parameter_count_is_small():
    assert n_parameters(Student()) < 1_000_000


def test_explore_callback_headless():
    from course_lib.student import explore

    m = Student(SMALL)
    _perturb(m)
    r = explore(m, "flower", "make it warmer", strength=0.7, size=48)
    assert r["before"].shape == r["after"].shape == r["difference"].shape
    assert min(r["before"].shape[-2:]) == 48 and r["grid"].shape == (1, 12, 4, 8, 8) and r["seconds"] > 0
    same = explore(m, "flower", "   ", size=48)
    assert torch.equal(same["before"], same["after"])


def test_global_affine_student_is_one_colour_matrix():
    """``global_affine=True`` collapses the grid: the output is one 3x4 transform of the input."""
    m = Student(dataclasses.replace(SMALL, global_affine=True))
    _perturb(m)
    x = torch.rand(2, 3, 40, 56)
    text = torch.randn(2, SMALL.text_dim)
    with torch.no_grad():
        out = m(x, text)
        grid = m.predict_grid(x, text)
    assert torch.allclose(grid, grid[:, :, :1, :1, :1].expand_as(grid))  # constant over bins and cells
    A = grid[:, :, 0, 0, 0].reshape(2, 3, 4)  # channel c = 4 i + j
    # out_i = sum_j A_ij x_j + A_i3 at every pixel, whatever the guide
    expected = torch.einsum("bij,bjhw->bihw", A[:, :, :3], x) + A[:, :, 3, None, None]
    torch.testing.assert_close(out, expected, **float_tol(expected, 32))  # depth: 8 tent corners x 4 affine terms
    assert (out - x).abs().max() > 1e-3  # it does edit
    # the full student's grid varies over cells and bins
    full = Student(SMALL)
    _perturb(full)
    with torch.no_grad():
        g_full = full.predict_grid(x, text)
    assert (g_full - g_full[:, :, :1, :1, :1]).abs().max() > 1e-3


def test_train_step_is_the_trainers_step():
    """:func:`course_lib.student.train_step` (exercise 3.5's reference) makes the trainer's update
    when the trainer's extras (reading loss, word dropout, several processes) are off."""
    from course_lib import config
    from course_lib.student import Student, StudentConfig, featurise, train_step
    from course_lib.train.common import Shard, set_lr
    from course_lib.train.student import TrainArgs, schedule, train, training_data

    args = TrainArgs(steps=1, batch_size=2, size=24, net_size=32, grid_size=8, luma_bins=4, channels=16, lr=1e-3,
                     warmup=1, readout_weight=0.0, vocab=False, word_dropout=0.0)
    trained, losses = train(args)
    config.seed_everything(args.seed)
    cfg = StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, act=args.act, film_hidden=args.film_hidden)
    model = Student(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    set_lr(opt, schedule(0, args))
    batch = Shard(2).fetch(training_data(args), 0)
    mse = train_step(model, opt, batch["source"], featurise(batch["instruction"], cfg), batch["target"], args.tv_weight)
    assert mse == pytest.approx(losses[0], rel=1e-6)
    for p, q in zip(trained.parameters(), model.parameters()):
        torch.testing.assert_close(p, q)


def test_run_train_steps_tells_a_wrong_step_apart():
    from course_lib.student import run_train_steps, train_step

    ref, again = run_train_steps(train_step, seed=2), run_train_steps(train_step, seed=2)
    torch.testing.assert_close(ref[0], again[0])

    def no_tv(model, opt, source, text, target, tv_weight):
        return train_step(model, opt, source, text, target, 0.0)

    assert not torch.allclose(run_train_steps(no_tv, seed=2)[0], ref[0], atol=1e-7)
