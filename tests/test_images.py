"""load_image on every kind of awkward input, and save_image's safety."""
import numpy as np
import pytest
import torch
from PIL import Image

from course_lib.images import ImageError, check_image, load_image, save_image


def _rgb(h=20, w=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x.shape == (3, 20, 30) and x.dtype == torch.float32
    assert torch.allclose(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(_rgb()[..., 0]).save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    assert x.shape == (3, 20, 30) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_rgba_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:2, :, 3] = 255  # top opaque, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    x = load_image(tmp_path / "t.png")
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(x[:, 3, 0], torch.ones(3))  # transparent -> white


def test_palette_image(tmp_path):
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.png")
    x = load_image(tmp_path / "p.png")
    assert x.shape == (3, 20, 30) and 0 <= x.min() and x.max() <= 1


def test_16bit_keeps_precision(tmp_path):
    arr = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 97) % 65535
    Image.fromarray(arr.astype(np.uint16)).save(tmp_path / "d.png")
    x = load_image(tmp_path / "d.png")
    assert torch.allclose(x[0], torch.from_numpy(arr.astype(np.float32) / 65535), atol=1e-6)
    assert len(torch.unique(x[0])) > 256  # more levels than 8 bits hold


def test_exif_rotation_applied(tmp_path):
    arr = _rgb(10, 40)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    x = load_image(tmp_path / "r.jpg")
    assert x.shape == (3, 40, 10)


def test_truncated_file_one_line_error(tmp_path):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "cut.jpg")
    assert "cut.jpg" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"", b"hello, this is not an image\n", b"\x89PNG\r\n\x1a\n garbage"])
def test_not_an_image(tmp_path, content):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_huge_image_refused_before_decoding(tmp_path):
    Image.new("1", (9000, 8000)).save(tmp_path / "huge.png")  # 72 MP, tiny on disk
    with pytest.raises(ImageError, match="MP"):
        load_image(tmp_path / "huge.png")
    with pytest.raises(ImageError, match="limit"):
        load_image(tmp_path / "huge.png", max_pixels=1000)


def test_nan_float_tiff_refused(tmp_path):
    arr = np.full((5, 5), 0.5, np.float32)
    arr[2, 2] = np.nan
    Image.fromarray(arr, "F").save(tmp_path / "n.tif")
    with pytest.raises(ImageError, match="NaN"):
        load_image(tmp_path / "n.tif")


def test_check_image():
    with pytest.raises(ImageError, match="NaN"):
        check_image(torch.full((3, 2, 2), float("nan")))
    with pytest.raises(ImageError, match="shape"):
        check_image(torch.zeros(4, 2, 2))
    assert check_image(torch.full((1, 3, 2, 2), 1.0000001)).max() == 1.0


def test_save_never_overwrites_and_is_atomic(tmp_path):
    p = tmp_path / "out.png"
    save_image(torch.zeros(3, 4, 4), p)
    before = p.read_bytes()
    with pytest.raises(ImageError, match="exists"):
        save_image(torch.ones(3, 4, 4), p)
    assert p.read_bytes() == before
    with pytest.raises(ImageError):  # NaN input: nothing written, old file intact
        save_image(torch.full((3, 4, 4), float("nan")), p, overwrite=True)
    assert p.read_bytes() == before
    save_image(torch.ones(3, 4, 4), p, overwrite=True)
    assert load_image(p).min() == 1.0
    assert [f.name for f in tmp_path.iterdir()] == ["out.png"]  # no temp files left
    with pytest.raises(ImageError, match="format"):
        save_image(torch.ones(3, 4, 4), tmp_path / "x.xyz")


def test_load_image_u8_matches_load_image(tmp_path):
    from course_lib.images import load_image_u8, save_array

    gen = torch.Generator().manual_seed(0)
    arr = torch.randint(0, 256, (21, 34, 3), dtype=torch.uint8, generator=gen)
    p = save_array(arr, tmp_path / "x.png")
    u8 = load_image_u8(p)
    assert u8.dtype == torch.uint8 and u8.shape == (21, 34, 3) and torch.equal(u8, arr)
    assert torch.equal(u8.permute(2, 0, 1).float() / 255, load_image(p))
    with pytest.raises(ImageError):
        save_array(arr, p)  # exists
