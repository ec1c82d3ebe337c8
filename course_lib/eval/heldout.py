"""The evaluation set: the one builder every evaluation table draws its items from, and the guard
that keeps training photos out of every score.

Items are :class:`course_lib.world.RetouchWorld` crops of the **test photos** (never seen in
training; ``split="val"`` for choosing recipes) in one wording: the training grammar
(``"train"``), held-out whole phrasings (``"heldout_phrasing"``) or held-out synonyms
(``"heldout_synonym"``). The same ``(n, size, seed, wording, split)`` always gives the same items
in the same order.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .. import world

#: The evaluation-set seed every table uses unless told otherwise.
SEED = 1234
#: The splits a score may be computed on (never ``"train"``).
SCORING_SPLITS = ("test", "val")


def check_scoring_photos(photos: Iterable[str]) -> None:
    """Raise ``ValueError`` (one line) if any named photo is a training photo of the collection.

    Every scoring entry point calls this on the photos of its items; names outside the collection
    (uploads, synthetic images) pass.
    """
    known = set(world.photo_names())
    bad = sorted({p for p in photos if p in known and world.photo_info(p).split == "train"})
    if bad:
        raise ValueError(f"refusing to score on training photos {bad}: score on the test (or validation) photos")


def heldout_batch(n: int, size: int, seed: int = SEED, wording: str = "heldout_phrasing", split: str = "test",
                  families: Sequence[str] | None = None) -> dict:
    """``n`` items of the test (or validation) photos at ``size`` pixels in one wording, as one batch.

    Returns:
        dict with ``source``, ``target`` (n, 3, size, size) in [0, 1], and lists of n str:
        ``instruction``, ``edits`` (:func:`course_lib.world.encode_world_edits`) and ``photo``.
    """
    if split not in SCORING_SPLITS:
        raise ValueError(f"split must be one of {SCORING_SPLITS}, not {split!r}: scores are never on training photos")
    return _batch(world.RetouchWorld(split=split, wording=wording, size=size, length=n, seed=seed, families=families))


def _batch(ds) -> dict:
    """Every item of a dataset as one batch dict (``source``, ``target`` stacked; lists of the rest)."""
    items = [ds[i] for i in range(len(ds))]
    return {"source": torch.stack([it["source"] for it in items]),
            "target": torch.stack([it["target"] for it in items]),
            "instruction": [it["instruction"] for it in items], "edits": [it["edits"] for it in items],
            "photo": [it["photo"] for it in items]}


def take(batch: dict, index: slice) -> dict:
    """The items ``index`` of a batch (every field sliced alike)."""
    return {k: v[index] for k, v in batch.items()}


def size_of(batch: dict) -> int:
    """Number of items in a batch."""
    return len(batch["source"])
