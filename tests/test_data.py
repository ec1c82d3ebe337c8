"""The image primitives of course_lib.data: the global colour operators' exact formulas, ranges,
per-sample amounts and gradients, resizing and random crops."""
import numpy as np
import pytest
import torch

from course_lib import data

FAMILIES = list(data.GLOBAL_OPS)


def rand_img(b=2, h=8, w=8, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- edits: ground truth

@pytest.mark.parametrize("name", FAMILIES)
def test_zero_amount_is_identity_and_range(name):
    x = rand_img()
    fn = data.GLOBAL_OPS[name][0]
    assert torch.allclose(fn(x, 0.0), x, atol=1e-6)
    for a in (-1.8, -0.5, 0.5, 1.8):
        y = fn(x, a)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("name", FAMILIES)
def test_per_sample_amounts_match_scalar_calls(name):
    x = rand_img(b=3)
    amounts = torch.tensor([-0.7, 0.0, 0.9])
    fn = data.GLOBAL_OPS[name][0]
    batched = fn(x, amounts)
    for i, a in enumerate(amounts.tolist()):
        assert torch.allclose(batched[i], fn(x[i:i + 1], a)[0], atol=1e-6)


def test_exact_formulas_on_known_pixels():
    px = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1)
    y = 0.2126 * 0.2 + 0.7152 * 0.5 + 0.0722 * 0.8
    assert torch.allclose(data.luma(px).flatten(), torch.tensor([y]))
    assert torch.allclose(data.exposure(px, 1.0).flatten(), (px * 2 ** (1 / 2.2)).clamp(0, 1).flatten())
    assert torch.allclose(data.contrast(px, 0.5).flatten(), torch.tensor([0.05, 0.5, 0.95]))
    assert torch.allclose(data.saturation(px, 1.0).flatten(), (y + 2 * (px.flatten() - y)).clamp(0, 1))
    assert torch.allclose(data.temperature(px, 1.0).flatten(), torch.tensor([0.24, 0.5, 0.64]))
    assert torch.allclose(data.tint(px, 1.0).flatten(), torch.tensor([0.22, 0.4, 0.88]))
    f = lambda v, a: v - 2 * a * v * (1 - v) * (1 - 2 * v)  # noqa: E731
    assert torch.allclose(data.tone_curve(px, 0.5).flatten(), torch.tensor([f(0.2, 0.5), 0.5, f(0.8, 0.5)]))
    # greys have no chroma: saturation and vibrance leave them alone
    grey = torch.full((1, 3, 2, 2), 0.4)
    assert torch.allclose(data.saturation(grey, 1.5), grey, atol=1e-6)
    assert torch.allclose(data.vibrance(grey, 1.5), grey, atol=1e-6)


def test_tone_curve_fixes_black_mid_white_and_is_monotone():
    v = torch.linspace(0, 1, 101).view(1, 1, 1, -1).expand(1, 3, 1, 101)
    for a in (-1.0, -0.5, 0.5, 1.0):
        out = data.tone_curve(v, a)[0, 0, 0]
        assert abs(out[0]) < 1e-6 and abs(out[50] - 0.5) < 1e-6 and abs(out[100] - 1) < 1e-6
        assert (out.diff() >= -1e-6).all()


def test_local_edits_are_local():
    dark = torch.full((1, 3, 1, 1), 0.1)
    bright = torch.full((1, 3, 1, 1), 0.9)
    assert (data.shadows(dark, 1.0) - dark).mean() > 0.1
    assert (data.shadows(bright, 1.0) - bright).abs().max() < 1e-6
    assert (data.shadows(dark, -1.0) - dark).mean() < -0.03
    assert (data.highlights(bright, -1.0) - bright).mean() < -0.2
    assert (data.highlights(dark, -1.0) - dark).abs().max() < 1e-6


def test_vibrance_prefers_muted_colours():
    muted = torch.tensor([0.45, 0.5, 0.55]).view(1, 3, 1, 1)
    vivid = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1)
    gain = lambda x: ((data.vibrance(x, 0.5) - data.luma(x)).abs().sum() / (x - data.luma(x)).abs().sum())  # noqa: E731
    assert gain(muted) > gain(vivid) > 1


def test_edits_are_differentiable():
    x = rand_img().requires_grad_(True)
    a = torch.tensor([0.3, -0.3], requires_grad=True)
    sum(fn(x, a).sum() for fn, _ in data.GLOBAL_OPS.values()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


# ---------------------------------------------------------------- resize and crops

def test_resize_keeps_aspect_and_random_crop_is_a_function_of_its_generator():
    x = torch.rand(3, 60, 90)
    assert data.resize(x, 30).shape == (3, 30, 45) and data.resize(x, 45, short_side=False).shape == (3, 30, 45)
    assert data.resize(x, (20, 20)).shape == (3, 20, 20) and data.resize(x[None], 30).shape == (1, 3, 30, 45)
    a = data.random_crop(x, np.random.default_rng(3), 16)
    b = data.random_crop(x, np.random.default_rng(3), 16)
    assert a.shape == (3, 16, 16) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1


def test_apply_edits_runs_callables_in_order_on_one_image_or_a_batch():
    x = torch.rand(3, 8, 8)
    edits = [lambda im: data.exposure(im, 0.5), lambda im: data.contrast(im, 0.3)]
    assert torch.equal(data.apply_edits(x, edits), data.contrast(data.exposure(x[None], 0.5), 0.3)[0])
    assert data.apply_edits(x[None], []).shape == (1, 3, 8, 8)
