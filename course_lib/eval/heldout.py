"""The held-out evaluation set: the one builder every evaluation table draws its items from.

Items come from :class:`course_lib.data.RetouchPairs` on the **held-out photos** (never seen in
training) with the **held-out paraphrases** (``paraphrases="heldout"``: wording never seen
either) or the training ones (``"train"``: new photos only). The same ``(n, size, seed,
paraphrases)`` always gives the same items in the same order.
"""
from __future__ import annotations

import functools

import torch

from .. import world
from ..data import RetouchPairs

#: The evaluation-set seed every table uses unless told otherwise.
SEED = 1234


def heldout_batch(n: int, size: int, seed: int = SEED, paraphrases: str = "heldout") -> dict:
    """``n`` held-out-photo pairs at ``size`` pixels, with ``"heldout"`` (default) or ``"train"`` phrasings.

    Returns:
        dict with ``source``, ``target`` (n, 3, size, size) in [0, 1], ``instruction`` and
        ``edits`` (lists of n str: the instruction and its edits' encoding, see
        :func:`course_lib.data.decode_edits`).
    """
    return _batch(RetouchPairs(split="heldout", paraphrases=paraphrases, size=size, length=n, seed=seed))


def _batch(ds) -> dict:
    """Every item of a dataset as one batch dict (``source``, ``target`` stacked; lists of the rest)."""
    items = [ds[i] for i in range(len(ds))]
    return {"source": torch.stack([it["source"] for it in items]),
            "target": torch.stack([it["target"] for it in items]),
            "instruction": [it["instruction"] for it in items], "edits": [it["edits"] for it in items]}


class WorldTestPairs(RetouchPairs):
    """The first world's edits and phrasings (the ones lesson 04's teacher knows) on the data world
    2.0's **test** photos, which no model of the course trains on (lesson 07's inversion table:
    the inverter trains on the world's training photos, the teacher on the first world's)."""

    def __init__(self, paraphrases: str = "train", size: int = 32, length: int = 16, seed: int = SEED) -> None:
        super().__init__(split="train", paraphrases=paraphrases, size=size, length=length, seed=seed)
        self.photos, self.split = world.photo_names("test"), "world-test"

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def _base(name: str) -> torch.Tensor:
        return world.load_photo(name, size=512)


def world_test_batch(n: int, size: int, seed: int = SEED, paraphrases: str = "train") -> dict:
    """:func:`heldout_batch` on :class:`WorldTestPairs` (the data world 2.0's test photos)."""
    return _batch(WorldTestPairs(paraphrases=paraphrases, size=size, length=n, seed=seed))


def take(batch: dict, index: slice) -> dict:
    """The items ``index`` of a batch (every field sliced alike)."""
    return {k: v[index] for k, v in batch.items()}


def size_of(batch: dict) -> int:
    """Number of items in a batch."""
    return len(batch["source"])
