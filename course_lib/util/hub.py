"""Hugging Face / torch hub look-ups that never touch the network unless ``COURSE_ONLINE=1``.

The hub tier (InstructPix2Pix, open_clip's pretrained CLIP, LPIPS's ImageNet backbone) is used
when its weights are on this machine; these helpers are the one place that looks.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import config


def hf_cache_dir() -> Path:
    """The local Hugging Face hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    home = os.environ.get("HF_HUB_CACHE")
    if home:
        return Path(home)
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"


def hf_cached(repo_id: str) -> bool:
    """True when a Hugging Face model repo has a snapshot in the local cache (no network)."""
    snap = hf_cache_dir() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    return snap.is_dir() and any(snap.iterdir())


def hf_file(repo_id: str, filename: str, download: bool | None = None) -> str | None:
    """Local path of ``filename`` from ``repo_id``: from the cache, or downloaded when allowed.

    Args:
        repo_id: a hub repo id (or a local folder, looked in directly).
        filename: the file inside the repo.
        download: fetch it when not cached (default: only with ``COURSE_ONLINE=1``).

    Returns:
        The path, or ``None`` when it is not on this machine (and not downloaded).
    """
    if Path(repo_id).is_dir():
        p = Path(repo_id) / filename
        return str(p) if p.is_file() else None
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return found
        if config.online() if download is None else download:
            return hf_hub_download(repo_id, filename)
    except (OSError, ValueError):  # hub errors derive from these (offline, unknown repo, bad id)
        return None
    return None


def torch_hub_cached(filename: str) -> bool:
    """True when a torchvision checkpoint is in torch's hub cache (no network)."""
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / filename).is_file()


__all__ = ["hf_cache_dir", "hf_cached", "hf_file", "torch_hub_cached"]
