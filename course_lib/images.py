"""Reading and writing user photos safely.

``load_image`` accepts what people actually have: JPEG/PNG/TIFF/WebP/BMP,
EXIF-rotated phone photos, grayscale, palette, RGBA and 16-bit files. Anything it
cannot use raises :class:`ImageError` with a one-line message (unreadable,
truncated, not an image, absurdly large). ``save_image`` writes atomically and
never overwrites an existing file unless asked to.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .util.files import FileExists, atomic_write

#: Largest image accepted by default: 64 megapixels (an 8K frame is 33 MP).
MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """A one-line, user-facing problem with an input or output image."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def open_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS):
    """Open and decode a photo with Pillow, upright (EXIF orientation applied), with
    :func:`load_image`'s checks.

    Returns:
        A loaded ``PIL.Image``.

    Raises:
        ImageError: missing, unreadable, truncated, non-image or too-large files.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(p)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{p}: {w}x{h} is {w * h / 1e6:.0f} MP, more than the {max_pixels / 1e6:.0f} MP limit")
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # no copy of an upright photo (a 4K one is 33 MB)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{p}: not an image file (or a format Pillow cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{p}: too large ({_one_line(exc)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = _one_line(exc)
        if "truncated" in msg.lower() or "end of file" in msg.lower() or "premature" in msg.lower():
            raise ImageError(f"{p}: truncated or damaged image file ({msg})") from None
        raise ImageError(f"{p}: cannot read image ({msg})") from None
    return img




def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Load a photo as a float RGB tensor, upright.

    Args:
        path: an image file.
        max_pixels: refuse images with more pixels than this (decompression bombs,
            mistakes); the check happens before pixels are decoded.

    Returns:
        (3, H, W) float32 tensor in [0, 1], rotated as its EXIF orientation says.
        Grayscale is repeated to three channels; alpha is composited over white;
        16-bit and float images keep their precision until the final conversion.

    Raises:
        ImageError: missing, unreadable, truncated, non-image or too-large files.
    """
    return pil_to_tensor(open_image(path, max_pixels))


def load_image_u8(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """An 8-bit RGB photo as decoded: (H, W, 3) uint8, upright, no float copy.

    Photos that are not 8-bit RGB or grayscale (16-bit, float, with alpha, CMYK, ...) are converted
    exactly as :func:`load_image` converts them, then rounded to 8 bits.

    Raises:
        ImageError: as :func:`load_image`.
    """
    img = open_image(path, max_pixels)
    if img.mode in ("RGB", "L"):
        if img.mode == "L":
            img = img.convert("RGB")
        # copied out in strips of rows into memory the tensor owns (Pillow's buffer is read-only): a
        # whole-image np.array would pass through a second full-size bytes copy
        w, h = img.size
        out = np.empty((h, w, 3), dtype=np.uint8)
        step = max(1, (1 << 22) // max(1, 3 * w))  # about 4 MB a strip
        for y in range(0, h, step):
            out[y:y + step] = np.asarray(img.crop((0, y, w, min(h, y + step))))
        return torch.from_numpy(out)
    return torch.from_numpy(to_uint8(pil_to_tensor(img)))


def pil_to_tensor(img) -> torch.Tensor:
    """Convert any PIL image mode to a (3, H, W) float32 tensor in [0, 1]."""
    from PIL import Image

    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
    elif mode == "I":
        arr = np.asarray(img, dtype=np.int32).astype(np.float32)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top, 0.0, 1.0)
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ImageError("image contains NaN or infinite values")
        arr = np.clip(arr, 0.0, 1.0) if arr.max(initial=0) <= 1.0 else np.clip(arr / 255.0, 0.0, 1.0)
    elif mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
        arr = rgb * alpha + (1.0 - alpha)  # composite over white
    elif mode == "RGB":
        arr = np.asarray(img, dtype=np.float32) / 255.0
    elif mode in ("1", "L"):
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    else:  # CMYK, YCbCr, LAB, HSV, ...
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 4:  # 16-bit RGBA as decoded by some plug-ins
        arr = arr[..., :3]
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()
    return t


def check_image(x: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Validate an image tensor: (3, H, W) or (B, 3, H, W), finite, values in [0, 1].

    Small excursions outside [0, 1] (from arithmetic) are clamped; NaN or inf raise.

    Raises:
        ImageError: wrong shape, non-finite values.
    """
    if not isinstance(x, torch.Tensor):
        raise ImageError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ImageError(f"{name}: expected shape (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ImageError(f"{name}: contains NaN or infinite values")
    return x.clamp(0.0, 1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8 array (rounded)."""
    x = check_image(x.detach().float().cpu())
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ImageError(f"to_uint8 takes one image, got a batch of {x.shape[0]}")
        x = x[0]
    return (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def save_image(x: torch.Tensor, path: str | os.PathLike, overwrite: bool = False, quality: int = 95) -> Path:
    """Write an image atomically: a temporary file in the same folder, then a rename.

    Args:
        x: (3, H, W) float tensor in [0, 1].
        path: destination; the format comes from its suffix (.png, .jpg, .tif, .webp).
        overwrite: replace an existing file (otherwise :class:`ImageError`).
        quality: JPEG/WebP quality.

    Returns:
        The path written.

    Raises:
        ImageError: the file exists (and not ``overwrite``), or the format is unknown.
        Nothing is left behind on failure: an existing file is never partially overwritten.
    """
    return save_array(to_uint8(x), path, overwrite=overwrite, quality=quality)


def save_array(array: np.ndarray, path: str | os.PathLike, overwrite: bool = False, quality: int = 95) -> Path:
    """:func:`save_image` for an (H, W, 3) uint8 array (or tensor): encoded as it is, atomically."""
    from PIL import Image

    p = Path(path)
    if p.exists() and not overwrite:
        raise ImageError(f"{p}: exists (use --overwrite to replace it)")
    ext = p.suffix.lower()
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".bmp": "BMP"}
    if ext not in formats:
        raise ImageError(f"{p}: unknown output format {ext!r} (use one of {', '.join(sorted(formats))})")
    arr = array.numpy() if isinstance(array, torch.Tensor) else array
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    kwargs = {"quality": quality} if formats[ext] in ("JPEG", "WEBP") else {}
    try:
        atomic_write(p, lambda tmp: img.save(tmp, format=formats[ext], **kwargs), overwrite=overwrite)
    except FileExists as exc:
        raise ImageError(str(exc)) from None
    return p
