"""Metrics of lesson 03: PSNR, CIEDE2000, instruction accuracy, content drift, baselines, evaluation."""
import math

import numpy as np
import pytest
import torch

from course_lib import data, world
from course_lib.metrics import (apply_affine, content_drift, delta_e2000, fit_global_affine, instruction_accuracy,
                                latency_ms, mean_delta_e00, psnr, srgb_to_lab)

# Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes,
# supplementary test data": pairs 1, 2, 3, 7, 17, 25, 13 and 34 with their published ΔE00.
SHARMA = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, 2.8361, -74.0200), (50.0, 0.0, -82.7485), 3.4412),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((50.0, 2.5, 0.0), (50.0, 0.0, -2.5), 4.3065),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def _items(n=40, seed=3, size=96):
    ds = world.RetouchWorld("test", "heldout_phrasing", size=size, length=n, seed=seed, p2=0.3, p3=0.0,
                            families=world.GLOBAL_FAMILIES)
    its = [it for it in (ds[i] for i in range(n)) if (it["target"] - it["source"]).abs().mean() > 0.01]  # a visible edit
    return (torch.stack([i["source"] for i in its]), torch.stack([i["target"] for i in its]), [i["edits"] for i in its])


def test_psnr():
    a = torch.rand(2, 3, 8, 8) * 0.8
    assert torch.isinf(psnr(a, a)).all()
    assert psnr(a, a + 0.1) == pytest.approx(torch.full((2,), 20.0), abs=1e-4)


def test_ciede2000_sharma_reference():
    lab1 = torch.tensor([p[0] for p in SHARMA])
    lab2 = torch.tensor([p[1] for p in SHARMA])
    expected = torch.tensor([p[2] for p in SHARMA], dtype=torch.float64)
    assert torch.allclose(delta_e2000(lab1, lab2), expected, atol=1e-4)
    assert torch.allclose(delta_e2000(lab2, lab1), expected, atol=1e-4)  # symmetric
    assert delta_e2000(lab1, lab1).abs().max() < 1e-6


def test_lab_matches_skimage():
    from skimage.color import rgb2lab

    img = world.load_photo("chelsea", 64)
    ours = srgb_to_lab(img).permute(1, 2, 0).numpy()
    assert np.abs(ours - rgb2lab(img.permute(1, 2, 0).numpy())).max() < 0.01
    assert mean_delta_e00(img, img).item() == pytest.approx(0.0, abs=1e-6)


def test_instruction_accuracy_ground_truth_identity_opposite():
    src, tgt, edits = _items()
    assert instruction_accuracy(tgt, src, tgt, edits).all()
    assert not instruction_accuracy(src, src, tgt, edits).any()
    opposite = torch.stack([world.apply_world_edits(s, [world.WorldEdit(e.family, -e.amount)
                                                        for e in world.decode_world_edits(x)])
                            for s, x in zip(src, edits)])
    assert not instruction_accuracy(opposite, src, tgt, edits).any()


def test_instruction_accuracy_untouched_attributes():
    src = world.load_photo("flower", 96)[None]
    edits = [[world.WorldEdit("temperature", 0.5)]]
    tgt = data.temperature(src, 0.5)
    assert instruction_accuracy(tgt, src, tgt, edits).all()
    # the right warmth but also much darker: an untouched attribute moved
    assert not instruction_accuracy(data.exposure(tgt, -1.0), src, tgt, edits).any()


def test_content_drift():
    img = world.load_photo("chelsea", 96)[None]
    colour = data.tone_curve(data.temperature(img, 0.5), 0.5)
    assert content_drift(img, img).item() < 0.05
    assert content_drift(colour, img).item() < 0.5
    assert content_drift(data.shadows(img, 1.0), img).item() < 0.5
    blurred = torch.nn.functional.avg_pool2d(img, 3, 1, 1)
    assert content_drift(blurred, img).item() > 3
    assert content_drift(img.roll(2, -1), img).item() > 3


def test_global_affine_oracle_recovers_affine():
    src = torch.rand(2, 3, 16, 16)
    A = torch.tensor([[0.9, 0.1, 0.0, 0.02], [0.0, 1.1, 0.0, -0.03], [0.05, 0.0, 0.8, 0.01]]).expand(2, 3, 4)
    tgt = torch.einsum("bij,bjhw->bihw", A[:, :, :3], src) + A[:, :, 3, None, None]
    assert torch.allclose(fit_global_affine(src, tgt), A, atol=1e-4)
    assert torch.allclose(apply_affine(A, src), tgt.clamp(0, 1), atol=1e-6)


def test_latency_ms():
    ms = latency_ms(lambda x: x * 2, size=(64, 64), repeats=2)
    assert 0 < ms < 1000 and math.isfinite(ms)


def test_compare_students_rows():
    from course_lib.eval.student import compare_students, rows_markdown
    from course_lib.student import load_student

    model = load_student()
    rows = compare_students({"a": model, "b": model}, n=4, size=48, wording="train")
    assert [r["method"] for r in rows] == ["identity", "a", "b"]
    assert {k: v for k, v in rows[1].items() if k != "method"} == {k: v for k, v in rows[2].items() if k != "method"}
    assert rows[1]["psnr"] > rows[0]["psnr"]
    assert rows_markdown(rows).count("\n") == 4
