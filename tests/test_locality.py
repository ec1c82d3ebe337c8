"""The locality term of supervised training and fine-tuning the image pathway alone (issue 37, item 4)."""
import dataclasses

import torch

from course_lib import grammar, world
from course_lib.student import Student, StudentConfig, load_student, read_metadata, save_student
from course_lib.train import student as TS

SMALL = StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,), readout=world.READOUT_LABELS)


def test_locality_term_sees_only_changes_where_the_target_is_unchanged():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(2, 3, 16, 16, generator=g)
    tgt = src.clone()
    tgt[:, :, :8] = (tgt[:, :, :8] + 0.2).clamp(0, 1)  # the edit: the top half only
    inside = torch.zeros(2, 1, 16, 16)
    inside[:, :, :8] = 1
    # wrong inside the region, exact outside: no locality loss (the plain squared error sees it)
    pred = tgt + 0.1 * inside
    assert TS.locality_loss(pred, tgt, src, 2 / 255) == 0
    # a change outside the region: the term grows with it
    losses = [float(TS.locality_loss(tgt + a * (1 - inside), tgt, src, 2 / 255)) for a in (0.01, 0.05, 0.1)]
    assert 0 < losses[0] < losses[1] < losses[2]
    assert abs(losses[2] - 0.1 ** 2 * 0.5) < 1e-6  # mean over all pixels; half of them unchanged
    # a request that names no edit: every pixel counts
    assert abs(float(TS.locality_loss(src + 0.1, src, src, 2 / 255)) - 0.01) < 1e-6


def test_image_only_fine_tuning_keeps_the_reader(tmp_path):
    cfg = dataclasses.replace(SMALL, film_reads="code", coords=True, word_vectors=True,
                              vocab=tuple(sorted(grammar.training_vocabulary())), readout_threshold=0.37)
    m = Student(cfg)
    src = save_student(m, tmp_path / "s.safetensors", metadata={"command": "x"})
    out = tmp_path / "f.safetensors"
    argv = ["--init", str(src), "--image-only", "--locality-weight", "2", "--steps", "2", "--batch-size", "2",
            "--size", "32", "--net-size", "32", "--grid-size", "8", "--channels", "16", "--code-forcing", "1",
            "--readout-weight", "1", "--lr", "1e-2", "--warmup", "1", "--out", str(out)]
    assert TS.main(argv) == 0
    new = load_student(out)
    before, after = m.state_dict(), new.state_dict()
    reader = [k for k in before if k.startswith(TS.READER_PREFIXES)]
    assert any(k.startswith("text_mlp_b.") for k in reader)  # the second reader is there and kept too
    assert all(torch.equal(before[k], after[k]) for k in reader)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in reader)  # the image pathway trained
    assert new.cfg.readout_threshold == 0.37  # not calibrated again
    assert '"locality_weight": 2.0' in read_metadata(out)["recipe"]
    # without --init there is nothing to fine-tune: one clear error
    assert TS.main(["--image-only", "--steps", "1", "--out", str(tmp_path / "g.safetensors")]) != 0
