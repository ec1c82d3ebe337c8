"""Atomic file writing: the one helper behind every checkpoint, image, table and state file.

A file is written under a temporary name in its destination folder and renamed into place at
the end, so a crash or a full disk never leaves a half-written file under the real name, and an
existing file is never replaced unless the caller asks for it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


class FileExists(FileExistsError):
    """The destination exists and ``overwrite`` was not given (message: one line)."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = True,
                 mode: int = 0o644) -> Path:
    """Write ``path`` atomically.

    Args:
        path: the destination (its folder is created).
        write: called with a temporary path in the same folder; it writes the whole file there.
        overwrite: replace an existing file; with ``False`` an existing ``path`` (even one that
            appears while writing) raises :class:`FileExists` and stays untouched.
        mode: permission bits of the result (``mkstemp`` would leave 0600).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    p = Path(path)
    if not overwrite and (p.exists() or p.is_symlink()):
        raise FileExists(f"{p}: exists (use --overwrite to replace it)")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part", dir=p.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, p)
        else:
            try:  # link fails if the destination appeared meanwhile: never clobber
                os.link(tmp, p)
            except FileExistsError:
                raise FileExists(f"{p}: exists (use --overwrite to replace it)") from None
            except OSError:  # filesystems without hard links
                if p.exists():
                    raise FileExists(f"{p}: exists (use --overwrite to replace it)") from None
                os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """:func:`atomic_write` for a text file (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite)


__all__ = ["FileExists", "atomic_write", "atomic_write_text"]
