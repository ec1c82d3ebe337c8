"""Course-wide configuration: the FAST/FULL switch, devices, seeds, paths, offline guard.

Everything a lesson needs to know about *where* and *how big* lives here, read in
one place:

* ``COURSE_MODE=fast|full`` (environment variable; ``full`` is the learner's
  default). FAST shrinks step counts and image sizes so that CI and quick looks
  finish in minutes; it still loads trained weights and shows losses that fall.
  Lessons never test the variable themselves: they call :func:`pick`.
* ``COURSE_DEVICE=cpu|cuda|mps`` overrides the automatic device choice.
* ``COURSE_ONLINE=1`` allows hub downloads (the *hub* tier). Without it the
  course is offline: Hugging Face libraries are told so before they are
  imported, and nothing on the default path waits on a network.
"""
from __future__ import annotations

import contextlib
import os
import random
import socket
from pathlib import Path
from typing import Iterator, TypeVar

T = TypeVar("T")

#: Where the course is published. The Colab badges and the first cell of every lesson
#: (``%pip install "instantretouch-course @ git+<REPO_URL>"``) are written from this one
#: constant by ``python -m course_lib notebooks``, which also rewrites README's badges:
#: to publish the course elsewhere, change this line and run that command.
REPO_URL: str = "https://github.com/instantretouch-course/instantretouch-course"
#: The branch the Colab badges open.
REPO_BRANCH: str = "main"

_PACKAGE_DIR: Path = Path(__file__).resolve().parent
#: Root of the repository (the folder that holds ``course_lib/``). In an installed
#: wheel this is site-packages; use :data:`SHIPPED_DIR` for shipped files.
REPO_ROOT: Path = _PACKAGE_DIR.parent
#: True when running from a checkout of the repository (``data/weights`` beside ``course_lib/``),
#: False when ``course_lib`` was installed from a wheel (e.g. ``%pip install`` on Colab).
FROM_CHECKOUT: bool = (REPO_ROOT / "data" / "weights").is_dir() and (REPO_ROOT / "pyproject.toml").is_file()
#: Read-only files shipped with the course (weights, photos, their manifests): ``data/`` of a
#: checkout, or the copy the wheel carries as package data (``course_lib/_data``, built by setup.py).
SHIPPED_DIR: Path = REPO_ROOT / "data" if FROM_CHECKOUT else _PACKAGE_DIR / "_data"
#: Data shipped with or prepared by the course (writable: prepared photos, caches). In a checkout
#: ``data/``; installed, a per-user cache folder. ``COURSE_DATA_DIR`` overrides.
DATA_DIR: Path = Path(os.environ.get("COURSE_DATA_DIR") or (
    REPO_ROOT / "data" if FROM_CHECKOUT
    else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "instantretouch-course"))
#: Small trained checkpoints (safetensors) shipped with the course (``COURSE_WEIGHTS_DIR`` overrides).
WEIGHTS_DIR: Path = Path(os.environ.get("COURSE_WEIGHTS_DIR") or SHIPPED_DIR / "weights")
#: Measured results (JSON) shipped with the course: the numbers lessons and the README quote.
RESULTS_DIR: Path = SHIPPED_DIR / "results"
#: Re-creatable files (prepared photos, caches); git-ignored.
CACHE_DIR: Path = DATA_DIR / "cache"
#: Where commands write results unless told otherwise; git-ignored. Installed: ``./outputs``.
OUTPUT_DIR: Path = Path(os.environ.get("COURSE_OUTPUT_DIR") or (
    REPO_ROOT / "outputs" if FROM_CHECKOUT else Path.cwd() / "outputs"))

MODES = ("fast", "full")


def mode() -> str:
    """The course mode, ``"fast"`` or ``"full"`` (env ``COURSE_MODE``, default ``full``).

    Raises:
        ValueError: if the variable holds anything else.
    """
    value = os.environ.get("COURSE_MODE", "full").strip().lower() or "full"
    if value not in MODES:
        raise ValueError(f"COURSE_MODE must be 'fast' or 'full', not {value!r}")
    return value


def is_fast() -> bool:
    """True in FAST mode (CI, quick looks)."""
    return mode() == "fast"


def pick(fast: T, full: T) -> T:
    """Choose a size or step count by mode: ``steps = pick(fast=20, full=2000)``."""
    return fast if is_fast() else full


def online() -> bool:
    """True only when the user allowed hub downloads with ``COURSE_ONLINE=1``."""
    return os.environ.get("COURSE_ONLINE", "0").strip().lower() in ("1", "true", "yes")


def apply_offline_env() -> None:
    """Tell Hugging Face libraries not to reach the network unless we are online.

    Called when ``course_lib`` is imported, so it takes effect before
    ``transformers``/``diffusers``/``huggingface_hub`` read their settings.
    Variables the user already set are left as they are.
    """
    if online():
        return
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class NetworkBlocked(RuntimeError):
    """Raised by :func:`no_network` when code tries to open a connection."""


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Context manager that makes any outgoing connection fail at once.

    Used by tests to prove that the default (embedded) path never touches the
    network, and usable by learners who want the same guarantee::

        with no_network():
            model = load_student()
    """
    real_connect = socket.socket.connect
    real_create = socket.create_connection

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003
        raise NetworkBlocked("network access attempted inside course_lib.config.no_network()")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.create_connection = real_create  # type: ignore[assignment]


def device(prefer: str | None = None):
    """Pick the compute device: ``COURSE_DEVICE`` / ``prefer``, else CUDA, MPS, CPU.

    Args:
        prefer: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``None`` for automatic.

    Returns:
        torch.device
    """
    import torch

    want = (prefer or os.environ.get("COURSE_DEVICE", "")).strip().lower()
    if want:
        if want.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {want!r} requested but CUDA is not available")
        return torch.device(want)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> "object":
    """Seed Python, NumPy and torch (all devices); return a seeded ``torch.Generator``.

    Args:
        seed: any non-negative int.

    Returns:
        A CPU ``torch.Generator`` seeded with ``seed``, for code that prefers an
        explicit generator over global state.
    """
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def progress(iterable=None, **kwargs):
    """A tqdm progress bar, silent in FAST mode (no noise in CI logs or nbval).

    Args:
        iterable: what to iterate; other keyword arguments go to ``tqdm.auto.tqdm``.
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", is_fast())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def summary() -> dict:
    """A dict of the settings above, for ``doctor`` and lesson headers."""
    return {
        "mode": mode(),
        "online": online(),
        "repo_root": str(REPO_ROOT),
        "from_checkout": FROM_CHECKOUT,
        "data_dir": str(DATA_DIR),
        "weights_dir": str(WEIGHTS_DIR),
        "output_dir": str(OUTPUT_DIR),
    }
