"""course_lib.video, course_lib.apps.clips and ``retouch`` on clips: reading, EMA grids, flicker, atomic writing, the CLI."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib import video
from course_lib.apps import clips
from course_lib.__main__ import main
from course_lib.images import load_image


@pytest.fixture(scope="module")
def model():
    from course_lib.student import load_student

    torch.set_num_threads(1)
    return load_student()


@pytest.fixture(scope="module")
def clip():
    return video.make_demo_clip("coffee", 6, (24, 32))  # (6, 3, 24, 32)


def _run(capsys, *argv):
    code = main(["retouch", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- demo clip, EMA


def test_demo_clip_shape_range_and_motion():
    c = video.make_demo_clip("chelsea", 5, (20, 30))
    assert c.shape == (5, 3, 20, 30) and c.dtype == torch.float32
    assert 0 <= c.min() and c.max() <= 1
    assert (video.frame_change(c) > 0.5).all()  # the camera moves
    assert video.make_demo_clip("chelsea", 1, 16).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError):
        video.make_demo_clip("chelsea", 0)


def test_smooth_grids_is_the_ema():
    g = torch.randn(5, 12, 2, 3, 3)
    assert torch.equal(video.smooth_grids(g, 0.0), g)
    a = 0.7
    s = video.smooth_grids(g, a)
    manual = g[0]
    assert torch.equal(s[0], g[0])
    for t in range(1, 5):
        manual = a * manual + (1 - a) * g[t]
        assert torch.allclose(s[t], manual, atol=1e-6)
    const = g[:1].expand(4, -1, -1, -1, -1)
    assert torch.allclose(video.smooth_grids(const, 0.9), const, atol=1e-6)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError):
            video.smooth_grids(g, bad)


def test_stream_equals_predict_smooth_apply(model, clip):
    grids = video.predict_grids(model, clip, "lift the shadows", 1.0)
    assert grids.shape == (6, 12, model.cfg.luma_bins, model.cfg.grid_size, model.cfg.grid_size)
    batch = video.apply_grids(model, clip, video.smooth_grids(grids, 0.6))
    stream = video.retouch_clip(model, clip, "lift the shadows", 1.0, 0.6, progress=False)
    assert stream.shape == clip.shape
    assert (stream - batch).abs().max() < 1e-5
    # per frame (a = 0) is the student's own retouch of each frame
    from course_lib.student import retouch

    per = video.retouch_clip(model, clip, "lift the shadows", smoothing=0.0, progress=False)
    assert (per[3] - retouch(model, clip[3], "lift the shadows")).abs().max() < 1e-5


def test_flicker_metric_on_known_edits():
    frames = torch.full((4, 3, 8, 8), 0.5)
    assert video.flicker(frames, frames + 0.1)["edit_jump"] == pytest.approx(0.0, abs=1e-4)
    alternating = frames + torch.tensor([0.1, 0.0, 0.1, 0.0]).view(4, 1, 1, 1)
    r = video.flicker(frames, alternating)
    assert r["edit_jump"] == pytest.approx(25.5, rel=1e-3)  # 0.1 * 255 per frame
    assert r["excess_change"] == pytest.approx(25.5, rel=1e-3)
    with pytest.raises(ValueError):
        video.flicker(frames[:1], frames[:1])


def test_smoothing_reduces_flicker_of_a_flickering_predictor(tiny_teacher, clip):
    """Fresh diffusion noise per frame flickers; the EMA of the grids damps it."""
    tg = video.TeacherGrids(tiny_teacher, steps=2, fresh_noise=True)
    grids = video.predict_grids(tg, clip, "make it warmer")
    per = video.grid_flicker(tg, clip, grids).mean()
    smooth = video.grid_flicker(tg, clip, video.smooth_grids(grids, 0.8)).mean()
    assert per > 0.05 and smooth < 0.5 * per
    out_per = video.apply_grids(tg, clip, grids)
    out_smooth = video.apply_grids(tg, clip, video.smooth_grids(grids, 0.8))
    assert video.flicker(clip, out_smooth)["edit_jump"] < video.flicker(clip, out_per)["edit_jump"]


def test_shipped_student_grid_follows_content_smoothly(model, clip):
    """The shipped student looks at the photo (lesson 03), so on a moving clip its grid changes
    with the content - by a few levels at most - and the EMA removes most of that. (The first
    shipped student scored exactly 0 here: its image pathway was dead, the grid the same for
    every frame.)"""
    grids = video.predict_grids(model, clip, "increase the contrast")
    per = video.grid_flicker(model, clip, grids)  # 8-bit levels
    smooth = video.grid_flicker(model, clip, video.smooth_grids(grids, 0.8))
    assert per.max() < 4.0 and per.max() > 0
    assert smooth.mean() < 0.5 * per.mean()


# ----------------------------------------------------------------------------- reading and writing


def test_folder_natural_order_and_errors(tmp_path, clip):
    d = tmp_path / "frames"
    d.mkdir()
    for i in (0, 1, 2, 10):
        Image.fromarray((clip[i % 6].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(d / f"f{i}.png")
    (d / ".hidden.png").write_bytes(b"x")
    (d / "notes.txt").write_text("not a frame")
    assert [p.name for p in clips.frame_files(d)] == ["f0.png", "f1.png", "f2.png", "f10.png"]
    assert clips.is_clip(d) and clips.clip_info(d).n_frames == 4
    frames, fps = clips.read_clip(d)
    assert frames.shape == (4, 3, 24, 32) and fps == clips.DEFAULT_FPS
    assert len(list(clips.iter_frames(d, max_frames=2))) == 2
    Image.new("RGB", (10, 10)).save(d / "f11.png")
    with pytest.raises(clips.VideoError, match="first frame is 32x24"):
        clips.read_clip(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(clips.VideoError, match="no image frames"):
        clips.clip_info(empty)


def test_gif_roundtrip_and_bad_files(tmp_path, clip):
    gif = tmp_path / "a.gif"
    path, n = clips.write_frames(clip, gif, fps=10)
    assert path == gif and n == 6
    assert clips.is_clip(gif) and clips.gif_frame_count(gif) == 6
    info = clips.clip_info(gif)
    assert info.kind == "gif" and info.n_frames == 6 and info.fps == pytest.approx(10)
    frames, _ = clips.read_clip(gif)
    assert frames.shape == clip.shape
    assert (frames - clip).abs().mean() < 0.05  # palette quantisation only
    still = tmp_path / "still.gif"
    Image.new("RGB", (8, 8)).save(still)
    assert not clips.is_clip(still)
    bad = tmp_path / "bad.gif"
    bad.write_bytes(b"GIF89a this is not a gif")
    with pytest.raises(clips.VideoError) as e:
        list(clips.iter_frames(bad))
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_unreadable_video_is_one_line(tmp_path):
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    assert clips.is_clip(mp4)
    with pytest.raises(clips.VideoError) as e:
        list(clips.iter_frames(mp4))
    msg = str(e.value)
    assert msg.startswith(str(mp4)) and "\n" not in msg
    with pytest.raises(clips.VideoError, match="no such file"):
        clips.clip_info(tmp_path / "missing.mp4")


def test_write_is_atomic_and_never_overwrites(tmp_path, clip):
    out = tmp_path / "out"
    clips.write_frames(clip, out)
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:05d}.png" for i in range(6)]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it, not mkdtemp's 0700
    with pytest.raises(clips.VideoError, match="exists"):
        clips.write_frames(clip, out)

    def failing():
        yield clip[0]
        raise RuntimeError("disk on fire")

    for dst in (out, tmp_path / "anim.gif"):
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(RuntimeError):
            clips.write_frames(failing(), dst, overwrite=True)
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp left, old output intact
    assert len(list(out.iterdir())) == 6
    clips.write_frames(clip[:2], out, overwrite=True, names=["a.png", "b.png"])
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- MP4 (imageio-ffmpeg)


@pytest.mark.parametrize("size", [(24, 32), (23, 31)])  # even: yuv420p; odd: yuv444p keeps the size
def test_mp4_roundtrip(tmp_path, clip, size):
    frames = torch.nn.functional.interpolate(clip, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    mp4 = tmp_path / "clip.mp4"
    dst, n = clips.write_frames(frames, mp4, fps=12)
    assert dst == mp4 and n == 6 and mp4.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left behind
    info = clips.clip_info(mp4)
    assert info.kind == "video" and info.fps == pytest.approx(12, rel=0.01)
    back, fps = clips.read_clip(mp4)
    assert back.shape == frames.shape
    # H.264 at quality 8 is lossy: a few 8-bit levels on average on these small, smooth frames
    assert (back - frames).abs().mean() * 255 < 6
    with pytest.raises(clips.VideoError, match="exists"):
        clips.write_frames(frames, mp4)


def test_retouch_cli_mp4_to_mp4(tmp_path, clip, capsys):
    src = tmp_path / "clip.mp4"
    clips.write_frames(clip, src, fps=10)
    code, stdout, err = _run(capsys, src, "-i", "make it warmer", "-o", tmp_path / "out.mp4")
    assert code == 0, err
    assert "6 frames" in stdout
    before, _ = clips.read_clip(src)
    after, fps = clips.read_clip(tmp_path / "out.mp4")
    assert after.shape == before.shape and fps == pytest.approx(10, rel=0.01)
    assert (after[:, 0] - after[:, 2]).mean() > (before[:, 0] - before[:, 2]).mean()  # warmer
    # in a folder output a video keeps its name and kind
    code, _, err = _run(capsys, src, "-i", "make it cooler", "-o", tmp_path / "dir" / "")
    assert code == 0, err
    assert clips.clip_info(tmp_path / "dir" / "clip.mp4").kind == "video"


# ----------------------------------------------------------------------------- the retouch command


def test_retouch_cli_on_clips(tmp_path, clip, capsys):
    frames_dir = tmp_path / "in" / "shot"
    clips.write_frames(clip, frames_dir, names=[f"s{i}.png" for i in range(6)])
    gif = tmp_path / "in" / "anim.gif"
    clips.write_frames(clip, gif, fps=8)
    still = tmp_path / "in" / "still.png"
    Image.new("RGB", (16, 12), (120, 80, 40)).save(still)
    missing = tmp_path / "in" / "gone.mp4"
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, frames_dir, gif, still, missing, "-i", "make it warmer", "-o", out,
                             "--smoothing", "0.8")
    assert code == 1 and err.count("error:") == 1 and "gone.mp4" in err
    assert sorted(p.name for p in (out / "shot").iterdir()) == [f"s{i}.png" for i in range(6)]
    res = load_image(out / "shot" / "s2.png")
    src = load_image(frames_dir / "s2.png")
    assert res.shape == src.shape
    assert (res[0] - res[2]).mean() > (src[0] - src[2]).mean()  # warmer
    assert clips.gif_frame_count(out / "anim.gif") == 6
    assert clips.clip_info(out / "anim.gif").fps == pytest.approx(8, rel=0.05)
    assert load_image(out / "still.png").shape == (3, 12, 16)
    assert "6 frames" in stdout and "smoothing 0.8" in stdout
    # one clip, a .gif output; existing outputs are not replaced without --overwrite
    code, _, err = _run(capsys, frames_dir, "-i", "make it cooler", "-o", tmp_path / "one.gif", "--fps", "5")
    assert code == 0, err
    assert clips.clip_info(tmp_path / "one.gif").fps == pytest.approx(5, rel=0.05)
    code, _, err = _run(capsys, frames_dir, "-i", "make it cooler", "-o", tmp_path / "one.gif")
    assert code == 1 and "exists" in err
    code, _, err = _run(capsys, gif, "-i", "make it cooler", "-o", tmp_path / "clip.png")
    assert code == 1 and "a clip is written as" in err and not (tmp_path / "clip.png").exists()


@pytest.mark.parametrize("flag", [["--smoothing", "1"], ["--smoothing", "-0.2"], ["--fps", "0"]])
def test_retouch_cli_rejects_bad_clip_options(tmp_path, flag, capsys):
    code, _, err = _run(capsys, tmp_path, "-i", "x", "-o", tmp_path / "o", *flag)
    assert code == 2 and err.startswith("error:")
