"""One method interface, one scoring function, one set of keys and units for every table.

A **method** is any ``fn(source (B, 3, H, W), instructions (B str), target (B, 3, H, W)) -> output
(B, 3, H, W)`` in [0, 1] (only oracles look at ``target``). :func:`run` applies one to a
held-out batch (:func:`course_lib.eval.heldout.heldout_batch`) in chunks, times it and scores it;
:func:`score` scores outputs that are already there. Every table uses these keys and units:

========== ================================================================ ==========
key        what (formula in :mod:`course_lib.metrics`)                      unit
========== ================================================================ ==========
psnr       PSNR to the target, mean over images with a finite value          dB
de00       mean CIEDE2000 to the target                                     ΔE00
accuracy   instruction accuracy (:func:`~course_lib.metrics.instruction_accuracy`) % of images
direction  instructed attributes moved the target's way                     % of (image, family)
drift      content drift (:func:`~course_lib.metrics.content_drift`)        8-bit levels
edit_accuracy  went half-way to the target (:func:`~course_lib.metrics.edit_accuracy`) % of images
locality   changed where the target changed (:func:`~course_lib.metrics.change_locality`) [-1, 1]
ssim       SSIM to the target                                               [-1, 1]
lpips      perceptual distance to the target (``perceptual.label`` says which) -
kid        KID between the output and target sets, x 10³ (set-level)        -
ms_per_image  wall time of the method per image of the set                  ms
ms_1080p   median wall time for one 1080p photo                             ms
speedup    ms_1080p of the 50-step teacher / this row's                     x
========== ================================================================ ==========

:data:`COLUMNS` holds each key's table header and number format, used by
:mod:`course_lib.eval.tables`.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch

from .. import metrics
from .heldout import size_of, take

Method = Callable[[torch.Tensor, list[str], torch.Tensor], torch.Tensor]

#: The scores of an editing table (every table of edits has these, in this order).
EDIT_KEYS = ("psnr", "de00", "accuracy", "direction", "drift")
#: The scores of a reconstruction table (target = source).
RECONSTRUCTION_KEYS = ("psnr", "ssim", "lpips")

#: key -> (table header, format); ``{}``-style formats, ``nan`` is shown as "-".
COLUMNS: dict[str, tuple[str, str]] = {
    "method": ("method", "{}"),
    "steps": ("steps", "{}"),
    "paired_targets": ("paired targets", "{}"),
    "psnr": ("PSNR (dB) ↑", "{:.2f}"),
    "de00": ("ΔE00 ↓", "{:.2f}"),
    "accuracy": ("instruction acc. (%) ↑", "{:.0f}"),
    "direction": ("direction (%) ↑", "{:.0f}"),
    "drift": ("drift (8-bit levels) ↓", "{:.2f}"),
    "edit_accuracy": ("edit acc. (%) ↑", "{:.0f}"),
    "locality": ("locality ↑", "{:.2f}"),
    "understood": ("understood (%) ↑", "{:.0f}"),
    "family_direction": ("family + direction (%) ↑", "{:.0f}"),
    "refused": ("refused (%) ↓", "{:.0f}"),
    "ssim": ("SSIM ↑", "{:.3f}"),
    "lpips": ("LPIPS ↓", "{:.4f}"),
    "kid": ("KID×10³ ↓", "{:.2f}"),
    "ms_per_image": ("ms / image", "{:.0f}"),
    "ms_1080p": ("ms / 1080p", "{:.1f}"),
    "speedup": ("speed-up vs teacher-50", "{:.1f}×"),
}


def per_item(output: torch.Tensor, batch: dict, keys: Sequence[str] = EDIT_KEYS, perceptual=None) -> dict[str, torch.Tensor]:
    """Scores of each image: key -> (N,) tensor.

    Args:
        output: (N, 3, H, W) in [0, 1], aligned with ``batch`` (``source``, ``target``, ``edits``).
        keys: any of ``psnr, de00, accuracy, direction, drift, ssim, lpips``. ``direction`` is kept
            as two counts, ``direction_hits`` and ``direction_tested`` (:func:`summarise` pools them).
        perceptual: ``(x, y) -> (N,)`` distance, needed for ``lpips``.
    """
    src, tgt = batch["source"], batch["target"]
    s: dict[str, torch.Tensor] = {}
    for k in keys:
        if k == "psnr":
            s[k] = metrics.psnr(output, tgt)
        elif k == "de00":
            s[k] = metrics.mean_delta_e00(output, tgt)
        elif k == "accuracy":
            s[k] = metrics.instruction_accuracy(output, src, tgt, batch["edits"]).float()
        elif k == "direction":
            s["direction_hits"], s["direction_tested"] = metrics.direction_counts(output, src, tgt, batch["edits"])
        elif k == "drift":
            s[k] = metrics.content_drift(output, src)
        elif k == "edit_accuracy":
            s[k] = metrics.edit_accuracy(output, src, tgt).float()
        elif k == "locality":
            s[k] = metrics.change_locality(output, src, tgt)
        elif k == "ssim":
            s[k] = metrics.ssim(output, tgt)
        elif k == "lpips":
            if perceptual is None:
                raise ValueError("the lpips score needs a perceptual distance")
            s[k] = perceptual(output, tgt)
        else:
            raise KeyError(f"unknown score {k!r}; known: psnr, de00, accuracy, direction, drift, edit_accuracy, "
                           "locality, ssim, lpips")
    return s


def summarise(s: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-image scores (:func:`per_item`) -> one number per key, in the units of the module docstring.

    PSNR is averaged over the images where it is finite (an image equal to its target has
    ``inf``; ``inf`` when all are); accuracy and direction are percentages.
    """
    out: dict[str, float] = {}
    for k, v in s.items():
        if k == "psnr":
            finite = v[torch.isfinite(v)]
            out[k] = float(finite.mean()) if len(finite) else math.inf
        elif k in ("accuracy", "edit_accuracy"):
            out[k] = 100 * float(v.mean())
        elif k == "locality":
            finite = v[torch.isfinite(v)]
            out[k] = float(finite.mean()) if len(finite) else math.nan
        elif k == "direction_hits":
            out["direction"] = 100.0 * int(v.sum()) / max(int(s["direction_tested"].sum()), 1)
        elif k != "direction_tested":
            out[k] = float(v.mean())
    return out


def cat(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-image scores of consecutive chunks joined into one."""
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}


def score(output: torch.Tensor, batch: dict, keys: Sequence[str] = EDIT_KEYS, perceptual=None) -> dict[str, float]:
    """THE scoring function: outputs aligned with a held-out batch -> ``{key: value}`` (module docstring).

    Args:
        output: (N, 3, H, W) in [0, 1]. batch: see :func:`course_lib.eval.heldout.heldout_batch`.
        keys, perceptual: see :func:`per_item`.
    """
    return summarise(per_item(output, batch, keys, perceptual))


def run(fn: Method, batch: dict, batch_size: int | None = None, keys: Sequence[str] = EDIT_KEYS, perceptual=None,
        keep_output: bool = False) -> dict:
    """Apply a method to a batch in chunks (without gradients), time it and score it.

    Args:
        fn: the method (module docstring). batch: a held-out batch.
        batch_size: images per call (``None``: the whole batch in one call).
        keys, perceptual: what to score (see :func:`per_item`); ``keys=()`` scores nothing.
        keep_output: also return the outputs (N, 3, H, W).

    Returns:
        dict with ``items`` (per-image scores, key -> (N,)), ``scores`` (their :func:`summarise`),
        ``ms_per_image`` (wall time of the calls / N) and ``output`` (or ``None``).
    """
    n = size_of(batch)
    step = batch_size or n
    parts, outs, seconds = [], [], 0.0
    for k in range(0, n, step):
        chunk = take(batch, slice(k, k + step))
        t0 = time.perf_counter()
        with torch.no_grad():
            out = fn(chunk["source"], list(chunk["instruction"]), chunk["target"])
        seconds += time.perf_counter() - t0
        if keys:
            parts.append(per_item(out, chunk, keys, perceptual))
        if keep_output:
            outs.append(out)
    items = cat(parts)
    return {"items": items, "scores": summarise(items), "ms_per_image": 1000 * seconds / max(n, 1),
            "output": torch.cat(outs) if keep_output else None}
