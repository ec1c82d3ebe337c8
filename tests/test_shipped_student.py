"""The shipped student (data/weights/student_supervised.safetensors) on photos it never saw, with
instructions worded as a person would write them (issue 18's "done when"): it edits in the asked
direction, and it refuses gibberish with one line and no output file.

The sentences were fixed before the checkpoint was evaluated, and none is a training sentence
(checked below), so the test can fail."""
import pytest
import torch

from course_lib import grammar, world
from course_lib.apps import retouch as retouch_app
from course_lib.images import load_image, save_image
from course_lib.student import load_student, read_instruction, retouch

#: (instruction, statistic, sign): the statistic of the output minus that of the photo must have this sign.
EVERYDAY = [
    ("could you brighten this photo a bit", "luma", +1),
    ("it's too bright, tone it down", "luma", -1),
    ("warm it up please", "warmth", +1),
    ("I'd like the colours cooler", "warmth", -1),
]
GIBBERISH = ["xxxx", "asdf qwerty zxcv"]


def _stat(img: torch.Tensor, which: str) -> float:
    r, g, b = img[0].mean(), img[1].mean(), img[2].mean()
    return float(0.299 * r + 0.587 * g + 0.114 * b) if which == "luma" else float(r - b)


@pytest.fixture(scope="module")
def shipped():
    m = load_student()
    if not m.cfg.readout:
        pytest.skip("the shipped student has no 'understood as' heads")
    return m


def test_everyday_sentences_are_not_training_sentences():
    train = set(grammar.training_texts())
    assert not any(t in train for t, _, _ in EVERYDAY)


@pytest.mark.parametrize("instruction,stat,sign", EVERYDAY)
def test_edits_unseen_photos_in_the_asked_direction(shipped, instruction, stat, sign):
    photos = [world.load_photo(n, 96) for n in world.photo_names("test")[:6]]
    deltas = [_stat(retouch(shipped, p, instruction), stat) - _stat(p, stat) for p in photos]
    # the right direction on every photo, by more than 1/255 on average (a real edit, not rounding)
    assert all(d * sign > 0 for d in deltas), (instruction, deltas)
    assert sum(d * sign for d in deltas) / len(deltas) > 1 / 255, (instruction, deltas)


@pytest.mark.parametrize("text", GIBBERISH)
def test_refuses_gibberish_with_one_line_and_no_output(shipped, tmp_path, capsys, text):
    assert read_instruction(shipped, text) == [[]]
    src = tmp_path / "in.png"
    save_image(world.load_photo(world.photo_names("test")[0], 64), src)
    out = tmp_path / "out.png"
    rc = retouch_app.main([str(src), "-i", text, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no edit recognised")


def test_writes_what_it_understands(shipped, tmp_path, capsys):
    src = tmp_path / "in.png"
    photo = world.load_photo(world.photo_names("test")[0], 64)
    save_image(photo, src)
    out = tmp_path / "out.png"
    assert retouch_app.main([str(src), "-i", "warm it up please", "-o", str(out)]) == 0
    assert "understood: " in capsys.readouterr().out
    assert load_image(out).shape == photo.shape


def test_fused_8bit_path_matches_the_float_path_on_a_test_photo(shipped):
    """The one-pass 8-bit pipeline (photo in, photo out) against the float path (network input by
    ``data.resize``, guide module, grid_sample slice + apply), clamped and rounded: within 1/255."""
    from course_lib.student import retouch_fused

    name = world.photo_names("test")[0]
    photo = (world.load_photo(name, 384) * 255 + 0.5).to(torch.uint8)  # (3, H, W) 8-bit
    hwc = photo.permute(1, 2, 0).contiguous()  # as decoded: (H, W, 3)
    text = shipped.embed(["warm it up please"])
    x = photo[None].float() / 255
    with torch.enable_grad():  # the training path: torch resize, guide module, grid_sample
        ref = shipped(x, text, impl="grid_sample").detach()
    ref8 = (ref.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    timings: dict = {}
    out = retouch_fused(shipped, hwc.permute(2, 0, 1)[None], text, timings=timings)
    assert out.dtype == torch.uint8 and out.stride()[1] == 1  # interleaved like the input
    assert (out.int() - ref8.int()).abs().max() <= 1
    assert set(timings) == {"input", "grid", "pass"}
    with torch.no_grad():  # the float inference path (fused pass, unclamped) agrees with it too
        torch.testing.assert_close(shipped(x, text), ref, atol=1e-4, rtol=1e-4)
    assert (retouch(shipped, photo, "warm it up please").int() - ref8[0].int()).abs().max() <= 1
