"""One checkpoint convention for every model the course ships or trains (in the spirit of
diffusers' ``save_pretrained``/``from_pretrained``: the config travels with the weights).

A checkpoint is ONE ``.safetensors`` file (never pickle). Its string metadata holds::

    format      "course_lib/1"          the convention (this module)
    kind        "student" | "teacher" | "edit_clip" | "inverter_lora" | "lpips_lin" | ...
    config      JSON: everything needed to rebuild the module before loading the tensors
    recipe      JSON: the command, its full settings, the recipe of the checkpoint it started from
    <other>     provenance, one key each: trained_steps, loss_curve, log, ...
                (strings; structured values as JSON)

:func:`save_checkpoint` writes it atomically; :func:`load_checkpoint` checks format and kind and
returns the tensors with a :class:`CheckpointInfo`; every error is one line
(:class:`CheckpointError`). The settings a trainer ran with are one key, ``recipe`` (JSON), and,
for a run of ``python -m course_lib reproduce``, ``recipe_file`` (:mod:`course_lib.apps.reproduce`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from .files import atomic_write

FORMAT = "course_lib/1"
#: The kinds of checkpoint the course writes (a new model adds its kind here).
KINDS = ("student", "teacher", "edit_clip", "inverter_lora", "lpips_lin")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, of another kind, or does not fit its model (one line)."""


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself (no tensors)."""

    path: Path
    kind: str
    config: dict
    #: every other metadata key, decoded from JSON where it is JSON (command, train_args, log, ...)
    provenance: dict = field(default_factory=dict)
    #: the raw string metadata, as stored
    metadata: dict = field(default_factory=dict)


def _encode(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _decode(value: str):
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], kind: str, config: dict,
                    provenance: dict | None = None, overwrite: bool = True) -> Path:
    """Write tensors + config + provenance to one safetensors file, atomically.

    Args:
        path: destination ``.safetensors``.
        tensors: name -> tensor (moved to the CPU, made contiguous; dtypes kept).
        kind: one of :data:`KINDS`.
        config: JSON-serialisable dict that rebuilds the module.
        provenance: more metadata (values: strings, or anything JSON-serialisable).
        overwrite: replace an existing file (default; trainers write their own output path again
            as they go). ``False`` refuses an existing file.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r} (one of {', '.join(KINDS)})")
    reserved = {"format", "kind", "config"} & set(provenance or {})
    if reserved:
        raise ValueError(f"provenance may not use the reserved keys {sorted(reserved)}")
    meta = {"format": FORMAT, "kind": kind, "config": json.dumps(config, sort_keys=True)}
    meta.update({k: _encode(v) for k, v in (provenance or {}).items()})
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta), overwrite=overwrite)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The raw string metadata of a safetensors file (no tensors are read)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint")
    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{p}: not a readable safetensors file ({' '.join(str(exc).split())[:120]})") from None


def read_checkpoint(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> CheckpointInfo:
    """Read and check a checkpoint's metadata (no tensors).

    Raises:
        CheckpointError: missing, unreadable, not this convention, or not of ``kind``.
    """
    p = Path(path)
    meta = read_metadata(p)
    if meta.get("format") != FORMAT or "kind" not in meta or "config" not in meta:
        raise CheckpointError(f"{p}: not a course_lib checkpoint (format {meta.get('format')!r})")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and meta["kind"] not in kinds:
        raise CheckpointError(f"{p}: a checkpoint of kind {meta['kind']!r}, expected {' or '.join(map(repr, kinds))}")
    provenance = {k: _decode(v) for k, v in meta.items() if k not in ("format", "kind", "config")}
    return CheckpointInfo(p, meta["kind"], json.loads(meta["config"]), provenance, meta)


def load_checkpoint(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None,
                    device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Read a checkpoint: ``(tensors, info)``; see :func:`read_checkpoint` for the checks."""
    from safetensors.torch import load_file

    info = read_checkpoint(path, kind)
    try:
        tensors = load_file(str(info.path), device=str(device))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{info.path}: cannot read its tensors ({' '.join(str(exc).split())[:120]})") from None
    return tensors, info


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | os.PathLike,
              strict: bool = True) -> None:
    """``module.load_state_dict(tensors)`` with a one-line :class:`CheckpointError` when they do not fit."""
    try:
        module.load_state_dict(tensors, strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match its config ({str(exc).splitlines()[0]})") from None


__all__ = ["FORMAT", "KINDS", "CheckpointError", "CheckpointInfo", "save_checkpoint", "read_metadata",
           "read_checkpoint", "load_checkpoint", "load_into"]
