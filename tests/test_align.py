"""Tests of course_lib.align: InfoNCE, the embedded edit encoder, the hub directional loss."""
from __future__ import annotations

import math

import pytest
import torch

from course_lib.align import (AlignError, DirectionalCLIP, EditCLIP, EditCLIPConfig, info_nce, load_edit_clip,
                              retrieval_accuracy, save_edit_clip)

TINY = EditCLIPConfig(size=16, patch=8, width=32, layers=1, head_width=16, embed_dim=16)


def test_info_nce_values():
    a = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    aligned = info_nce(a, a, math.log(100.0))
    shuffled = info_nce(a, a[torch.tensor([1, 2, 3, 4, 5, 0])], math.log(100.0))
    assert aligned < 0.1 < math.log(6) < shuffled
    # all-equal embeddings carry no information: the loss is log N
    same = torch.nn.functional.normalize(torch.ones(6, 8), dim=-1)
    assert abs(float(info_nce(same, same, 0.0)) - math.log(6)) < 1e-5


def test_edit_clip_shapes_gradients_and_round_trip(tmp_path):
    m = EditCLIP(TINY)
    src, out = torch.rand(3, 3, 40, 30), torch.rand(3, 3, 40, 30, requires_grad=True)
    e = m.encode_edit(src, out)
    assert e.shape == (3, 16) and torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    t = m.encode_text(torch.randn(3, 384))
    assert t.shape == (3, 16)
    m.loss(src, out, torch.randn(3, 384)).backward()
    assert out.grad is not None and out.grad.abs().sum() > 0  # usable as a loss on a student's output
    p = save_edit_clip(m, tmp_path / "e.safetensors")
    m2 = load_edit_clip(p)
    torch.testing.assert_close(m2.encode_edit(src, out.detach()), m.encode_edit(src, out.detach()))
    with pytest.raises(AlignError):
        load_edit_clip(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        load_edit_clip(tmp_path / "bad.safetensors")


def test_edit_clip_learns_to_tell_edits_apart():
    """A few steps on the course data lower InfoNCE and lift retrieval above chance."""
    from course_lib.world import RetouchWorld

    torch.manual_seed(0)
    m = EditCLIP(TINY)
    ds = RetouchWorld(split="train", wording="train", size=16, length=8 * 150, seed=0,
                      families=("exposure", "temperature", "saturation"), p2=0.0, p3=0.0)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for step in range(150):
        items = [ds[step * 8 + j] for j in range(8)]
        src = torch.stack([it["source"] for it in items])
        tgt = torch.stack([it["target"] for it in items])
        loss = m.loss(src, tgt, m.embed_instructions([it["instruction"] for it in items]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.2
    test = RetouchWorld(split="test", wording="train", size=16, length=24, seed=5,
                        families=("exposure", "temperature", "saturation"), p2=0.0, p3=0.0)
    items = [test[i] for i in range(24)]
    src = torch.stack([it["source"] for it in items])
    tgt = torch.stack([it["target"] for it in items])
    fam_dir = [it["edits"].split(":")[0] + ("+" if ":+" in it["edits"] else "-") for it in items]
    acc = retrieval_accuracy(m, src, tgt, m.embed_instructions([it["instruction"] for it in items]), fam_dir)
    print("retrieval", acc)
    assert acc > 1 / 6 + 0.1  # 6 family-directions: chance is about 1/6


def test_directional_clip_on_a_tiny_open_clip_model():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8,
                                                        image_size=32),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    d = DirectionalCLIP(model, SimpleTokenizer())
    src = torch.rand(2, 3, 48, 40)
    out = (src * 1.3).clamp(0, 1).requires_grad_(True)
    loss = d.loss(src, out, ["make it brighter", "make it darker"])
    assert 0 <= float(loss.detach()) <= 2
    loss.backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    dirs = d.text_direction(["make it brighter"])
    assert dirs.shape == (1, 16) and abs(float(dirs.norm()) - 1) < 1e-5


def test_train_align_resumes_exactly_and_ships(tmp_path):
    from course_lib.align import EDIT_CLIP_WEIGHTS
    from course_lib.align import heldout_retrieval
    from course_lib.train.align import AlignArgs, main, train

    def args(steps, out):
        return AlignArgs(steps=steps, batch_size=4, size=16, save_every=2, warmup=2, out=str(tmp_path / out))

    a, la = train(args(4, "a.safetensors"))
    train(args(2, "b.safetensors"))
    b, lb = train(args(4, "b.safetensors"), resume=True)
    assert len(la) == len(lb) == 4
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # the shipped encoder loads and retrieves far above chance on the test photos
    shipped = load_edit_clip(EDIT_CLIP_WEIGHTS)
    r = heldout_retrieval(shipped, n=32, wording="train")
    assert r["accuracy"] > 3 * r["chance"]
    with pytest.raises(SystemExit):
        main(["--help"])


def test_temperature_sweep_finds_the_sharpest_useful_scale():
    import math

    from course_lib import align
    eye = torch.eye(6)  # perfect, orthogonal pairs: the sharper the better
    losses, best = align.temperature_sweep(eye, eye, torch.tensor([0.0, 2.0, 4.0]))
    assert losses.shape == (3,) and best == 4.0 and bool((losses[1:] < losses[:-1]).all())
    assert float(losses[0]) < math.log(6)
    same = torch.nn.functional.normalize(torch.ones(6, 3), dim=-1)  # no information: log N at every scale
    flat, _ = align.temperature_sweep(same, same, torch.tensor([0.0, 3.0]))
    assert torch.allclose(flat, torch.full((2,), math.log(6)), atol=1e-5)


def test_alignment_loss_is_info_nce_through_a_straight_through_clamp():
    from course_lib.align import alignment_loss

    torch.manual_seed(0)
    m = EditCLIP(TINY).eval()
    src = torch.rand(4, 3, 16, 16)
    out = (src + 0.8 * torch.randn(4, 3, 16, 16)).requires_grad_(True)  # many pixels outside [0, 1]
    text = torch.randn(4, m.cfg.text_dim if hasattr(m.cfg, "text_dim") else 384)
    loss = alignment_loss(m, src, out, text)
    with torch.no_grad():
        want = info_nce(m.encode_edit(src, out.clamp(0, 1)), m.encode_text(text), m.logit_scale)
    torch.testing.assert_close(loss, want)  # the encoder sees the clamped pixels
    loss.backward()
    # the gradient reaches every pixel, also those the clamp cut (straight-through)
    outside = (out < 0) | (out > 1)
    assert outside.any() and bool((out.grad[outside] != 0).any())
