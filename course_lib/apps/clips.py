"""Clips in and out: folders of frames, animated GIFs and videos (used by ``retouch`` and lesson 09).

Reading (:func:`iter_frames`, :func:`read_clip`): a folder of image frames (sorted by name,
numbers in natural order), an animated GIF, or a video file through ``imageio`` (MP4, MOV,
WebM, ... with the ffmpeg binary that ``imageio-ffmpeg`` ships in its wheel; without it a
one-line error says what to install). Frames are (3, H, W) float32 tensors in [0, 1].

Writing (:func:`write_frames`): a folder of PNG frames, an animated GIF or an H.264 video
(``.mp4``/``.mov``/``.mkv``), always to a temporary name first and renamed at the end, so an
existing output is never left half-written.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..images import ImageError, MAX_PIXELS, load_image, to_uint8

#: Suffixes read as still frames inside a frames folder.
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")
#: Suffixes read as video files (need an imageio plugin, e.g. ``imageio[ffmpeg]``).
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
#: Frame rate assumed for a folder of frames (used when writing a GIF).
DEFAULT_FPS = 12.0


class VideoError(ImageError):
    """A one-line, user-facing problem with a clip (reading or writing)."""


@dataclass
class ClipInfo:
    """What we know about a clip before decoding it.

    Attributes:
        kind: ``"frames"`` (a folder), ``"gif"`` or ``"video"``.
        n_frames: number of frames (``None`` when the container does not say).
        fps: frames per second (GIF: from its frame duration; folder: :data:`DEFAULT_FPS`).
    """

    kind: str
    n_frames: int | None
    fps: float


# ----------------------------------------------------------------------------- reading


def _natural_key(name: str) -> list:
    """``frame2.png`` sorts before ``frame10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a frames folder, in natural name order (hidden files skipped)."""
    d = Path(folder)
    files = [p for p in d.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: _natural_key(p.name))


def gif_frame_count(path: str | os.PathLike) -> int:
    """Number of frames of a GIF (1 for a still GIF, 0 if it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    except (OSError, SyntaxError, ValueError):
        return 0


def is_clip(path: str | os.PathLike) -> bool:
    """True for a frames folder, an animated GIF (more than one frame) or a video file."""
    p = Path(path)
    if p.is_dir():
        return True
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return True
    return suffix == ".gif" and p.is_file() and gif_frame_count(p) > 1


def _plugin_hint(path: Path, exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if "backend" in msg.lower() or "plugin" in msg.lower() or "ffmpeg" in msg.lower():
        return (f"{path}: no imageio plugin can read {path.suffix or 'this file'} here "
                f"(pip install 'imageio[ffmpeg]' or 'imageio[pyav]', or convert it to a GIF or a folder of frames)")
    return f"{path}: cannot read video ({msg[:160]})"


def clip_info(path: str | os.PathLike) -> ClipInfo:
    """Kind, frame count and frame rate of a clip, without decoding its pixels.

    Raises:
        VideoError: missing path, empty folder, unreadable file, no plugin for a video format.
    """
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{p}: no such file or folder")
    if p.is_dir():
        n = len(frame_files(p))
        if n == 0:
            raise VideoError(f"{p}: no image frames in this folder ({', '.join(FRAME_SUFFIXES)})")
        return ClipInfo("frames", n, DEFAULT_FPS)
    if p.suffix.lower() == ".gif":
        from PIL import Image

        try:
            with Image.open(p) as im:
                n = int(getattr(im, "n_frames", 1))
                duration = float(im.info.get("duration") or 0) or 1000.0 / DEFAULT_FPS
        except (OSError, SyntaxError, ValueError) as exc:
            raise VideoError(f"{p}: cannot read GIF ({' '.join(str(exc).split())[:160]})") from None
        return ClipInfo("gif", n, 1000.0 / duration)
    import imageio.v3 as iio

    try:
        meta = iio.immeta(p)
    except Exception as exc:  # imageio raises OSError/ValueError/RuntimeError depending on the plugin
        raise VideoError(_plugin_hint(p, exc)) from None
    fps = float(meta.get("fps") or DEFAULT_FPS)
    n = meta.get("nframes")
    n = int(n) if isinstance(n, (int, float)) and np.isfinite(n) else None
    return ClipInfo("video", n, fps)


def _array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W), (H, W, 3) or (H, W, 4) uint8/uint16/float array -> (3, H, W) float32 in [0, 1]."""
    a = np.asarray(arr)
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        x = a.astype(np.float32) / 65535.0
    else:
        x = np.clip(a.astype(np.float32), 0.0, 1.0)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    if x.shape[-1] == 4:  # composite over white, as images.load_image does
        x = x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])
    return torch.from_numpy(np.ascontiguousarray(x[..., :3].transpose(2, 0, 1)))


def iter_frames(path: str | os.PathLike, max_frames: int | None = None,
                max_pixels: int = MAX_PIXELS) -> Iterator[torch.Tensor]:
    """Decode a clip frame by frame (a stream: one frame in memory at a time).

    Args:
        path: a folder of image frames, an animated GIF or a video file.
        max_frames: stop after this many frames (``None``: all).
        max_pixels: refuse frames larger than this.

    Yields:
        (3, H, W) float32 tensors in [0, 1]; every frame has the first frame's size.

    Raises:
        VideoError: unreadable clip or frame, frames of different sizes, no plugin for a format.
    """
    p = Path(path)
    info = clip_info(p)
    size: tuple[int, int] | None = None
    count = 0

    def checked(frame: torch.Tensor, where: str) -> torch.Tensor:
        nonlocal size
        hw = tuple(frame.shape[-2:])
        if hw[0] * hw[1] > max_pixels:
            raise VideoError(f"{where}: {hw[1]}x{hw[0]} is more than the {max_pixels / 1e6:.0f} MP limit")
        if size is None:
            size = hw  # type: ignore[assignment]
        elif hw != size:
            raise VideoError(f"{where}: frame is {hw[1]}x{hw[0]}, the first frame is {size[1]}x{size[0]}")
        return frame

    if info.kind == "frames":
        for f in frame_files(p):
            if max_frames is not None and count >= max_frames:
                return
            try:
                frame = load_image(f, max_pixels=max_pixels)
            except ImageError as exc:
                raise VideoError(str(exc)) from None
            count += 1
            yield checked(frame, str(f))
        return
    import imageio.v3 as iio

    try:
        frames = iio.imiter(p)
        for i, arr in enumerate(frames):
            if max_frames is not None and count >= max_frames:
                return
            count += 1
            yield checked(_array_to_tensor(arr), f"{p} frame {i}")
    except VideoError:
        raise
    except Exception as exc:  # plugin errors are OSError, ValueError, SyntaxError, RuntimeError...
        if info.kind == "gif":
            raise VideoError(f"{p}: cannot read GIF frame {count} ({' '.join(str(exc).split())[:160]})") from None
        raise VideoError(_plugin_hint(p, exc)) from None


def read_clip(path: str | os.PathLike, max_frames: int | None = None) -> tuple[torch.Tensor, float]:
    """Read a whole clip into memory (small clips; use :func:`iter_frames` for long ones).

    Returns:
        ``(frames, fps)``: frames (T, 3, H, W) float32 in [0, 1].
    """
    info = clip_info(path)
    frames = list(iter_frames(path, max_frames))
    return torch.stack(frames), info.fps


# ----------------------------------------------------------------------------- writing


def _fresh_temp(dst: Path, suffix: str) -> Path:
    """A new hidden folder next to ``dst``, with the permissions a plain ``mkdir`` would give."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=suffix, dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
    return tmp


def _move_into_place(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``dst``; with ``overwrite``, the old ``dst`` is removed only after."""
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise VideoError(f"{dst}: exists (use --overwrite to replace it)")
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dst)


def frame_names(n: int, like: Sequence[Path] | None = None) -> list[str]:
    """Output file names: the input frames' names as PNG when known, else ``frame_00000.png``."""
    if like is not None and len(like) == n:
        return [p.stem + ".png" for p in like]
    return [f"frame_{i:05d}.png" for i in range(n)]


#: Suffixes :func:`write_frames` encodes as video (H.264, ``yuv420p`` when the size is even, else
#: ``yuv444p`` so that odd sizes are kept exactly; the latter plays in ffmpeg/VLC, not in every browser).
VIDEO_WRITABLE = (".mp4", ".mov", ".mkv", ".m4v")


class _VideoWriter:
    """Frames -> H.264 through the ffmpeg binary shipped by ``imageio-ffmpeg`` (started at the first frame)."""

    def __init__(self, path: Path, fps: float, where: str):
        self.path, self.fps, self.where = path, float(fps), where
        self.gen = None
        self.size: tuple[int, int] | None = None

    def send(self, arr: np.ndarray) -> None:
        """One (H, W, 3) uint8 frame."""
        h, w = arr.shape[:2]
        if self.gen is None:
            try:
                import imageio_ffmpeg
            except ImportError:
                raise VideoError(f"{self.where}: writing video needs the imageio-ffmpeg package "
                                 f"(pip install imageio-ffmpeg), or write a .gif or a folder of frames") from None
            self.gen = imageio_ffmpeg.write_frames(
                str(self.path), (w, h), fps=self.fps, codec="libx264", quality=8, macro_block_size=1,
                pix_fmt_out="yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p", ffmpeg_log_level="error")
            self._call(self.gen.send, None)  # start the generator: launches ffmpeg
            self.size = (w, h)
        if (w, h) != self.size:
            raise VideoError(f"{self.where}: frame is {w}x{h}, the first frame is {self.size[0]}x{self.size[1]}")
        self._call(self.gen.send, np.ascontiguousarray(arr))

    def close(self) -> None:
        """Finish the file (flushes ffmpeg); safe to call twice."""
        gen, self.gen = self.gen, None
        if gen is not None:
            self._call(gen.close)

    def _call(self, fn, *args) -> None:
        try:
            fn(*args)
        except (OSError, RuntimeError) as exc:
            raise VideoError(f"{self.where}: ffmpeg failed ({' '.join(str(exc).split())[:160]})") from None


def write_frames(frames: Iterable[torch.Tensor], dst: str | os.PathLike, fps: float = DEFAULT_FPS,
                 overwrite: bool = False, names: Sequence[str] | None = None) -> tuple[Path, int]:
    """Write a clip as a video (``.mp4``, ``.mov``, ``.mkv``: H.264 through the ffmpeg binary that
    ``imageio-ffmpeg`` ships), an animated GIF (``.gif``) or a folder of PNG frames (anything else).

    Everything is written under a temporary name in ``dst``'s folder and renamed at the end: if
    anything fails (or the process is killed), ``dst`` is untouched and nothing half-written has
    its name.

    Args:
        frames: an iterable of (3, H, W) tensors in [0, 1] (consumed as a stream for folders).
        dst: ``something.gif`` or a folder path.
        fps: frame rate of the GIF (ignored for folders).
        overwrite: replace an existing ``dst`` (only after the new one is complete).
        names: file names for the frames of a folder (default ``frame_00000.png``, ...).

    Returns:
        ``(dst, number of frames written)``.

    Raises:
        VideoError: ``dst`` exists (and not ``overwrite``), no frames, frames of different sizes.
    """
    from PIL import Image

    p = Path(dst)
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise VideoError(f"{p}: exists (use --overwrite to replace it)")
    is_gif = p.suffix.lower() == ".gif"
    is_video = p.suffix.lower() in VIDEO_WRITABLE
    tmp = _fresh_temp(p, ".part")
    try:
        n = 0
        pil: list = []
        encoder = _VideoWriter(tmp / p.name, fps, str(p)) if is_video else None
        for i, frame in enumerate(frames):
            if encoder is not None:
                encoder.send(to_uint8(frame))
                n += 1
                continue
            img = Image.fromarray(to_uint8(frame))
            if is_gif:
                pil.append(img)
            else:
                name = names[i] if names is not None and i < len(names) else f"frame_{i:05d}.png"
                img.save(tmp / name, format="PNG")
            n += 1
        if n == 0:
            raise VideoError(f"{p}: no frames to write")
        if encoder is not None:
            encoder.close()
            _move_into_place(tmp / p.name, p, overwrite)
        elif is_gif:
            if len({im.size for im in pil}) > 1:
                raise VideoError(f"{p}: frames of different sizes cannot make one GIF")
            part = tmp / p.name
            # duration per frame in ms; loop=0 repeats forever
            pil[0].save(part, format="GIF", save_all=True, append_images=pil[1:],
                        duration=max(20, round(1000.0 / max(fps, 1e-3))), loop=0)
            with open(part, "rb") as f:
                os.fsync(f.fileno())
            _move_into_place(part, p, overwrite)
        else:
            _move_into_place(tmp, p, overwrite)
            tmp = None  # type: ignore[assignment]  # it is dst now
    finally:
        if encoder is not None:
            with contextlib.suppress(VideoError):
                encoder.close()  # an error above: stop ffmpeg before the temporary folder goes
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return p, n


__all__ = ["VideoError", "ClipInfo", "clip_info", "is_clip", "iter_frames", "read_clip", "frame_files", "gif_frame_count",
           "write_frames", "frame_names", "FRAME_SUFFIXES", "VIDEO_SUFFIXES", "VIDEO_WRITABLE", "DEFAULT_FPS"]
