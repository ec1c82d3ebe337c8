"""``python -m course_lib retouch``: sizes, orientation, odd inputs, errors, no overwrite, no partial files."""
import io

import numpy as np
import pytest
from PIL import Image

from course_lib.__main__ import main
from course_lib.images import load_image


def _photo(w=160, h=96, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, 0.5 + 0.3 * np.sin(x / 7.0)], -1) * 200 + rng.integers(0, 40, (h, w, 3))
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


def _run(capsys, *argv):
    code = main(["retouch", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _photo().save(d / "plain.png")
    _photo().convert("RGBA").save(d / "alpha.png")
    _photo().convert("L").save(d / "grey.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _photo(120, 80).save(d / "rotated.jpg", exif=exif)
    return d


def test_single_file_keeps_size(photos, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, stdout, err = _run(capsys, photos / "plain.png", "-i", "make it warmer", "-o", out)
    assert code == 0, err
    assert "wrote" in stdout
    src, res = load_image(photos / "plain.png"), load_image(out)
    assert res.shape == src.shape
    assert (res[0] - res[2]).mean() > (src[0] - src[2]).mean()  # warmer: more red than blue


def test_batch_odd_inputs_and_orientation(photos, tmp_path, capsys):
    outdir = tmp_path / "out"
    files = sorted(photos.iterdir())
    code, stdout, err = _run(capsys, *files, "-i", "lift the shadows", "-o", outdir, "--strength", "0.5")
    assert code == 0, err
    for f in files:
        assert load_image(outdir / f.name).shape == load_image(f).shape
    assert load_image(outdir / "rotated.jpg").shape == (3, 120, 80)  # upright: portrait
    assert not list(outdir.glob("*.part")) and not list(outdir.glob(".*"))


def test_strength_zero_is_unchanged(photos, tmp_path, capsys):
    out = tmp_path / "same.png"
    assert _run(capsys, photos / "plain.png", "-i", "make it darker", "-o", out, "--strength", "0")[0] == 0
    assert (load_image(out) - load_image(photos / "plain.png")).abs().max() <= 1 / 255 + 1e-6


def test_4k_keeps_size(tmp_path, capsys):
    src = tmp_path / "big.jpg"
    _photo(3840, 2160).save(src, quality=90)
    out = tmp_path / "big_out.jpg"
    code, _, err = _run(capsys, src, "-i", "make it cooler", "-o", out)
    assert code == 0, err
    with Image.open(out) as im:
        assert im.size == (3840, 2160)


def test_bad_inputs_are_reported_and_others_processed(photos, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("this is not an image\n")
    buf = io.BytesIO()
    _photo().save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    outdir = tmp_path / "out"
    code, stdout, err = _run(capsys, tmp_path / "missing.jpg", tmp_path / "notes.png", tmp_path / "truncated.jpg",
                             photos / "plain.png", "-i", "add contrast", "-o", outdir)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 3 and "missing.jpg" in lines[0] and "not an image" in lines[1] and "truncated" in lines[2]
    assert "Traceback" not in err
    assert sorted(p.name for p in outdir.iterdir()) == ["plain.png"]


def test_existing_output_needs_overwrite(photos, tmp_path, capsys):
    out = tmp_path / "exists.png"
    out.write_bytes(b"precious")
    code, _, err = _run(capsys, photos / "plain.png", "-i", "make it warmer", "-o", out)
    assert code != 0 and "exists" in err and len(err.strip().splitlines()) == 2
    assert out.read_bytes() == b"precious"
    code, _, err = _run(capsys, photos / "plain.png", "-i", "make it warmer", "-o", out, "--overwrite")
    assert code == 0, err
    assert load_image(out).shape == (3, 96, 160)


def test_bad_arguments(photos, tmp_path, capsys):
    assert _run(capsys, photos / "plain.png", "-i", "x", "-o", tmp_path / "a.png", "--strength", "-1")[0] == 2
    code, _, err = _run(capsys, photos / "plain.png", "-i", "x", "-o", tmp_path / "a.png",
                        "--checkpoint", tmp_path / "nope.safetensors")
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a.png").exists()
