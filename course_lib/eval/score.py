"""One method interface, one scoring function, one set of keys and units for every table.

A **method** is any ``fn(source (B, 3, H, W), instructions (B str), target (B, 3, H, W)) -> output
(B, 3, H, W)`` in [0, 1] (only oracles look at ``target``). :func:`run` applies one to a
test batch (:func:`course_lib.eval.heldout.heldout_batch`) in chunks, times it and scores it;
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

:data:`METRICS` is the one registry: each key's per-image function, its reduction over a set,
its table header and number format (:data:`COLUMNS`, used by :mod:`course_lib.eval.tables`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import torch

from .. import metrics
from .heldout import check_scoring_photos, size_of, take

Method = Callable[[torch.Tensor, list[str], torch.Tensor], torch.Tensor]

#: The scores of an editing table (every table of edits has these, in this order).
EDIT_KEYS = ("psnr", "de00", "accuracy", "direction", "drift")
#: The scores of a reconstruction table (target = source).
RECONSTRUCTION_KEYS = ("psnr", "ssim", "lpips")


def _finite_mean(v: torch.Tensor, empty: float) -> float:
    """Mean over the finite entries (``empty`` when there are none)."""
    finite = v[torch.isfinite(v)]
    return float(finite.mean()) if len(finite) else empty


def _percent(v: torch.Tensor) -> float:
    return 100 * float(v.float().mean())


def _pooled_percent(hits: torch.Tensor, tested: torch.Tensor) -> float:
    """Hits over tests pooled over all images, in %."""
    return 100.0 * int(hits.sum()) / max(int(tested.sum()), 1)


def _lpips(output: torch.Tensor, batch: dict, perceptual) -> torch.Tensor:
    if perceptual is None:
        raise ValueError("the lpips score needs a perceptual distance")
    return perceptual(output, batch["target"])


@dataclasses.dataclass(frozen=True)
class Metric:
    """One score: how each image gets it, how a set of images is reduced to one number, and how
    a table shows it. ``parts`` names the per-image tensors ``per_image`` returns (the key itself
    when one; ``direction`` keeps two counts that :func:`summarise` pools)."""

    key: str
    header: str
    fmt: str
    #: ``(output, batch, perceptual) -> (N,) tensor``, or a tuple of them (one per name in ``parts``)
    per_image: Callable | None = None
    #: the per-image tensors (in ``parts`` order) -> the set's number
    reduce: Callable = lambda v: float(v.float().mean())
    parts: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return self.parts or (self.key,)


#: Every score and every other column a table shows, in one place: adding a score is its function
#: in :mod:`course_lib.metrics` plus one line here. Columns with no ``per_image`` are written by
#: the tables' own code (method names, timings, set-level scores).
METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("method", "method", "{}"),
    Metric("steps", "steps", "{}"),
    Metric("paired_targets", "paired targets", "{}"),
    Metric("psnr", "PSNR (dB) ↑", "{:.2f}", lambda o, b, p: metrics.psnr(o, b["target"]),
           lambda v: _finite_mean(v, math.inf)),
    Metric("de00", "ΔE00 ↓", "{:.2f}", lambda o, b, p: metrics.mean_delta_e00(o, b["target"])),
    Metric("accuracy", "instruction acc. (%) ↑", "{:.0f}",
           lambda o, b, p: metrics.instruction_accuracy(o, b["source"], b["target"], b["edits"]), _percent),
    Metric("direction", "direction (%) ↑", "{:.0f}",
           lambda o, b, p: metrics.direction_counts(o, b["source"], b["target"], b["edits"]), _pooled_percent,
           parts=("direction_hits", "direction_tested")),
    Metric("drift", "drift (8-bit levels) ↓", "{:.2f}", lambda o, b, p: metrics.content_drift(o, b["source"])),
    Metric("edit_accuracy", "edit acc. (%) ↑", "{:.0f}",
           lambda o, b, p: metrics.edit_accuracy(o, b["source"], b["target"]), _percent),
    Metric("locality", "locality ↑", "{:.2f}", lambda o, b, p: metrics.change_locality(o, b["source"], b["target"]),
           lambda v: _finite_mean(v, math.nan)),
    Metric("understood", "understood (%) ↑", "{:.0f}"),
    Metric("family_direction", "family + direction (%) ↑", "{:.0f}"),
    Metric("refused", "refused (%) ↓", "{:.0f}"),
    Metric("ssim", "SSIM ↑", "{:.3f}", lambda o, b, p: metrics.ssim(o, b["target"])),
    Metric("lpips", "LPIPS ↓", "{:.4f}", _lpips),
    Metric("kid", "KID×10³ ↓", "{:.2f}"),
    Metric("ms_per_image", "ms / image", "{:.0f}"),
    Metric("ms_1080p", "ms / 1080p", "{:.1f}"),
    Metric("speedup", "speed-up vs teacher-50", "{:.1f}×"),
)}

#: key -> (table header, format); ``{}``-style formats, ``nan`` is shown as "-" (from :data:`METRICS`).
COLUMNS: dict[str, tuple[str, str]] = {k: (m.header, m.fmt) for k, m in METRICS.items()}
#: The keys :func:`per_item` can score.
SCORABLE = tuple(k for k, m in METRICS.items() if m.per_image is not None)


def per_item(output: torch.Tensor, batch: dict, keys: Sequence[str] = EDIT_KEYS, perceptual=None) -> dict[str, torch.Tensor]:
    """Scores of each image: name -> (N,) tensor.

    Args:
        output: (N, 3, H, W) in [0, 1], aligned with ``batch`` (``source``, ``target``, ``edits``).
        keys: any of :data:`SCORABLE`. ``direction`` is kept as two counts, ``direction_hits`` and
            ``direction_tested`` (:func:`summarise` pools them).
        perceptual: ``(x, y) -> (N,)`` distance, needed for ``lpips``.
    """
    s: dict[str, torch.Tensor] = {}
    for k in keys:
        m = METRICS.get(k)
        if m is None or m.per_image is None:
            raise KeyError(f"unknown score {k!r}; known: {', '.join(SCORABLE)}")
        values = m.per_image(output, batch, perceptual)
        s.update(zip(m.names, values if m.parts else (values,)))
    return s


def summarise(s: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-image scores (:func:`per_item`) -> one number per key, in the units of the module docstring
    (each metric's own reduction: PSNR over the images where it is finite, ``inf`` when all are;
    accuracies and direction in %). Names no metric owns are averaged."""
    part_of = {name: m for m in METRICS.values() if m.per_image is not None for name in m.names}
    out: dict[str, float] = {}
    for name, v in s.items():
        m = part_of.get(name)
        if m is None:
            out[name] = float(v.float().mean())
        elif name == m.names[0]:
            out[m.key] = m.reduce(*(s[n] for n in m.names))
    return out


def cat(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-image scores of consecutive chunks joined into one."""
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}


def score(output: torch.Tensor, batch: dict, keys: Sequence[str] = EDIT_KEYS, perceptual=None) -> dict[str, float]:
    """THE scoring function: outputs aligned with a held-out batch -> ``{key: value}`` (module docstring).

    Args:
        output: (N, 3, H, W) in [0, 1]. batch: see :func:`course_lib.eval.heldout.heldout_batch`.
        keys, perceptual: see :func:`per_item`.

    Raises:
        ValueError: the batch names a training photo (:func:`~course_lib.eval.heldout.check_scoring_photos`).
    """
    check_scoring_photos(batch.get("photo", ()))
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

    Raises:
        ValueError: the batch names a training photo (:func:`~course_lib.eval.heldout.check_scoring_photos`).
    """
    check_scoring_photos(batch.get("photo", ()))
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
