"""The embedded dataset: photos, exact edits, instructions, determinism, splits."""
import json

import numpy as np
import pytest
import torch

from course_lib import data

FAMILIES = [f.name for f in data.FAMILIES]


def rand_img(b=2, h=8, w=8, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- photos

def test_photos_are_real_and_split_fixed():
    rows = data.manifest()
    assert len(rows) == 9
    train, held = data.photo_names("train"), data.photo_names("heldout")
    assert set(train).isdisjoint(held) and len(train) == 6 and len(held) == 3
    assert held == ["chelsea", "flower", "grace_hopper"]
    for r in rows:
        assert r["licence"] and r["package"] and r["height"] >= 300 and r["width"] >= 300
    x = data.load_photo("chelsea")
    assert x.shape == (3, 300, 451) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert x.std() > 0.1  # a real photograph, not a flat placeholder
    assert data.load_photo("chelsea", size=100).shape == (3, 100, 150)


def test_prepare_is_idempotent(tmp_path):
    out = data.prepare(tmp_path)
    files = sorted(p.name for p in out.iterdir())
    assert "manifest.json" in files and len(files) == 10
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    data.prepare(tmp_path)
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert json.loads((out / "manifest.json").read_text())[0]["name"] == "astronaut"


def test_unknown_photo_and_split():
    with pytest.raises(KeyError):
        data.load_photo("nope")
    with pytest.raises(ValueError):
        data.photo_names("test")


# ---------------------------------------------------------------- edits: ground truth

@pytest.mark.parametrize("name", FAMILIES)
def test_zero_amount_is_identity_and_range(name):
    x = rand_img()
    fn = data.FAMILY[name].fn
    assert torch.allclose(fn(x, 0.0), x, atol=1e-6)
    for a in (-1.8, -0.5, 0.5, 1.8):
        y = fn(x, a)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("name", FAMILIES)
def test_per_sample_amounts_match_scalar_calls(name):
    x = rand_img(b=3)
    amounts = torch.tensor([-0.7, 0.0, 0.9])
    fn = data.FAMILY[name].fn
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
    sum(f.fn(x, a).sum() for f in data.FAMILIES).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


# ---------------------------------------------------------------- instructions

def test_paraphrase_split_is_disjoint_and_complete():
    for fam in data.FAMILIES:
        for d in (1, -1):
            tr, ho = data.templates(fam.name, d, "train"), data.templates(fam.name, d, "heldout")
            assert len(ho) == 2 and len(tr) >= 3 and set(tr).isdisjoint(ho)
            assert set(tr) | set(ho) == set(data.templates(fam.name, d, "all"))


def test_strength_words_render():
    for strength in data.STRENGTHS:
        text = data.render("make it {cmp} warmer", strength, np.random.default_rng(1))
        assert "  " not in text and text.endswith("warmer") and "{" not in text
    assert data.render("warm up the photo {vrb}", "normal") == "warm up the photo"


def _all_renderings(split):
    """Every text a template of this paraphrase split can produce."""
    out = set()
    for f in data.FAMILIES:
        for d in (1, -1):
            for t in data.templates(f.name, d, split):
                for s in data.STRENGTHS:
                    for c in data.CMP_WORDS[s]:
                        for v in data.VRB_WORDS[s]:
                            out.add(" ".join(t.format(cmp=c, vrb=v).split()))
    return out


def test_heldout_paraphrases_never_render_like_training_ones():
    assert _all_renderings("train").isdisjoint(_all_renderings("heldout"))


def test_sampled_instruction_matches_edits():
    rng = np.random.default_rng(0)
    train_texts = _all_renderings("train")
    for _ in range(200):
        text, edits = data.sample_instruction(rng, "train", compose_prob=0.5)
        parts = text.split(" and ")
        assert len(parts) == len(edits) and len({e.family for e in edits}) == len(edits)
        assert all(p in train_texts for p in parts)
        for e in edits:
            factor = abs(e.amount) / data.FAMILY[e.family].unit
            assert min(abs(factor - v) for v in data.STRENGTHS.values()) < 1e-9
    assert data.decode_edits(data.encode_edits([data.Edit("tint", -0.25)])) == [data.Edit("tint", -0.25)]


# ---------------------------------------------------------------- dataset

def test_dataset_items_are_exact_and_deterministic():
    ds = data.RetouchPairs(size=32, length=12, seed=3)
    again = data.RetouchPairs(size=32, length=12, seed=3)
    other = data.RetouchPairs(size=32, length=12, seed=4)
    for i in range(12):
        a, b = ds[i], again[i]
        assert a["source"].shape == (3, 32, 32) and a["target"].shape == (3, 32, 32)
        assert torch.equal(a["source"], b["source"]) and a["instruction"] == b["instruction"]
        assert torch.allclose(a["target"], data.apply_edits(a["source"], data.decode_edits(a["edits"])))
        assert a["photo"] in data.photo_names("train")
    assert any(not torch.equal(ds[i]["source"], other[i]["source"]) for i in range(12))
    with pytest.raises(IndexError):
        ds[12]


def test_heldout_split_uses_heldout_photos_and_paraphrases():
    held_texts = _all_renderings("heldout")
    ds = data.RetouchPairs(split="heldout", paraphrases="heldout", size=24, length=30, seed=0)
    for i in range(30):
        item = ds[i]
        assert item["photo"] in data.photo_names("heldout")
        assert all(p in held_texts for p in item["instruction"].split(" and "))


def test_dataloader_collates():
    dl = torch.utils.data.DataLoader(data.RetouchPairs(size=16, length=8), batch_size=4)
    batch = next(iter(dl))
    assert batch["source"].shape == (4, 3, 16, 16) and len(batch["instruction"]) == 4
