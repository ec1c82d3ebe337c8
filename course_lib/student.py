"""The student: a text-conditioned bilateral-grid predictor (HDRNet-style, lesson 03).

A small network looks at a low-resolution copy of the photo and at the
instruction's embedding, and predicts an affine bilateral grid; a learned guide
slices it at full resolution (:func:`course_lib.bilateral.slice_apply`)::

    image (B, 3, H, W) --resize--> (B, 3, n, n)          n = net_size (256 by default)
      splat: log2(n / G) stride-2 3x3 convs             -> (B, C, G, G)    G = grid_size (16)
      FiLM(text): f = gamma(t) * f + beta(t)             (Perez et al. 2018), t = MLP(LN(embedding))
      local:  two 3x3 convs                              -> (B, C, G, G)
      global: two stride-2 convs + FC 256/128/C          -> (B, C)
      fuse:   relu(FiLM(text)(local + global))           -> (B, C, G, G)
      head:   1x1 conv to 12 D channels, reshape         -> (B, 12, D, G, G) = I + delta
    guide = CurveGuide(image)                            -> (B, H, W) in [0, 1]
    out   = slice_apply(I + s * delta, guide, image)     -> (B, 3, H, W)

The head is zero-initialised and the identity grid ``I`` is added as a bias, so an
untrained student returns its input unchanged (whatever the FiLM layers do). ``s`` is the *strength*: 0 is no edit, 1 the predicted
edit, more exaggerates it (``grid = I + s (G - I)``).

Checkpoints are ``safetensors`` files: the weights, plus the
:class:`StudentConfig` as JSON in the file's metadata (no pickle anywhere).
The shipped checkpoint ``data/weights/student_supervised.safetensors`` is made by
:mod:`course_lib.train.student` (the exact command is in its docstring).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import config, world
from . import fastslice  # noqa: F401 - registers lesson 02's fused kernels for slice_apply(impl="auto")
from .fastslice import load_cpu_extension, resize_fast, retouch_pass
from .text import bag_of_words, shared_encoder
from .bilateral import CurveGuide, LumaGuide, grid_tv, identity_grid, make_guide, slice_apply
from .data import resize
from .grammar import describe, example_instruction
from .util.checkpoint import CheckpointError, load_checkpoint, load_into, read_metadata, save_checkpoint

#: With ``StudentConfig.route == "unsure"``: a clause with a new word keeps the first reader's reading only
#: where its largest presence reaches this; otherwise the second reader reads it.
SURE = 0.9
#: File name of the shipped supervised checkpoint, in ``config.WEIGHTS_DIR``.
SHIPPED = "student_supervised.safetensors"
#: The checkpoint kind of a student (:mod:`course_lib.util.checkpoint`).
KIND = "student"




@dataclasses.dataclass
class StudentConfig:
    """Architecture of a :class:`Student` (stored with every checkpoint).

    Attributes:
        net_size: side of the low-resolution copy the network sees (a power-of-two multiple of
            ``grid_size``).
        grid_size: spatial grid cells per side (Hg = Wg).
        luma_bins: D, the grid's intensity bins.
        channels: C, feature channels of the fused stream.
        fc: hidden sizes of the global path's fully connected layers.
        text_dim: size of the instruction embedding.
        text_encoder: name of the encoder the student was trained with (see :mod:`course_lib.text`).
        film_hidden: hidden size of the text MLP that produces FiLM parameters.
        guide: ``"curve"`` (HDRNet's learned guide), ``"luma"`` or ``"mlp"``.
        global_affine: ablation/baseline: average the head over all cells and bins, so the grid
            is one 3x4 colour transform for the whole photo (a *learned* global-affine model that
            reads the instruction; it keeps every other part of the network).
        act: activation of the image pathway: ``"leaky"`` (LeakyReLU 0.1) or ``"relu"``
            (checkpoints from before this field: with plain ReLU the first student's image
            pathway died in training, see lesson 03).
        readout: labels of the "understood as" heads (``"family"`` or ``"family@target"``, see
            :data:`course_lib.world.READOUT_LABELS`); empty: no heads.
        vocab: words whose presence the student also reads (:func:`course_lib.text.bag_of_words`),
            appended to the sentence embedding by :meth:`Student.embed`; empty: the embedding alone.
        text_layers: linear layers of the text MLP (the adapter between the frozen sentence
            embedding and the FiLM layers and readout heads).
        readout_threshold: presence probability from which an edit counts as understood (chosen on
            validation data by :func:`calibrate_readout` at the end of training).
        film_reads: what the FiLM layers read: ``"text"`` (the text MLP's features, then the edit
            code when there are readout heads) or ``"code"`` (the edit code ``[p, p * s]`` alone:
            the instruction reaches the image pathway only through what the student understood;
            training can then feed the true code, see :func:`edit_code`).
        coords: the local path also reads three coordinate maps (y, x and the squared distance
            from the centre, CoordConv): convolutions with zero padding hardly know *where* a cell
            is, which graduated and radial filters need.
        word_vectors: a second reader for clauses with a word it never trained on. The first reader
            (sentence embedding and word indicators) reads its training words precisely, but a word
            outside ``vocab`` is invisible to the indicators. Each clause also gets the mean
            sentence-encoder embedding of its content words, each embedded alone
            (:func:`word_vector_mean`), and a flag: does it have a content word outside ``vocab``?
            A flagged clause in which the first reader reads nothing is read by the second reader
            (``text_mlp_b``, ``readout_head_b``: the sentence embedding and the word vectors, no
            indicators), where a new word lands near training words of similar meaning
            (:meth:`Student.understand`).
        clauses: how many clauses the reader reads one at a time (:func:`split_clauses`); 1 reads
            the whole sentence at once. A sentence embedding and a bag of words are *bags*: in
            "make the sky warmer and the shadows darker" nothing says which adjective goes with
            which object. Read clause by clause, each edit is a short sentence of its own; the
            presences of the clauses are combined by a noisy OR (:meth:`Student.understand`).
            Needs ``film_reads == "code"`` (the image pathway reads only the combined code).
        route: with ``word_vectors``, which clauses the second reader reads (:meth:`Student._read_clauses`):
            ``"blind"``, those with a new word in which the first reader reads nothing; ``"unsure"``, those
            with a new word in which the first reader is not sure (its largest presence below :data:`SURE`).
            The first reader never trained on a word outside its vocabulary, so what it reads in such a
            clause comes from the words around the new one ("make the heavens a bit warmer" read as a
            warmer photo); the second trained for exactly that.
        second_margin: with ``word_vectors``, when reading (not in training), the second reader keeps only the
            labels whose presence logit is within this margin of its most likely label in the clause (the others
            get a logit of -10); 0 keeps them all. A clause names about one edit, and a reader trained for
            words it never saw is less certain of its second guesses.
    """

    net_size: int = 256
    grid_size: int = 16
    luma_bins: int = 8
    channels: int = 64
    fc: tuple[int, ...] = (256, 128)
    text_dim: int = 384
    text_encoder: str = "minilm"
    film_hidden: int = 128
    guide: str = "curve"
    global_affine: bool = False
    act: str = "leaky"
    readout: tuple[str, ...] = ()
    readout_threshold: float = 0.5
    text_layers: int = 1
    vocab: tuple[str, ...] = ()
    film_reads: str = "text"
    coords: bool = False
    clauses: int = 1
    word_vectors: bool = False
    route: str = "blind"
    second_margin: float = 0.0

    def __post_init__(self) -> None:
        self.fc = tuple(int(v) for v in self.fc)
        self.readout = tuple(str(v) for v in self.readout)
        self.vocab = tuple(str(v) for v in self.vocab)
        if self.act not in ("relu", "leaky"):
            raise ValueError(f"act must be 'relu' or 'leaky', got {self.act!r}")
        if self.film_reads not in ("text", "code") or (self.film_reads == "code" and not self.readout):
            raise ValueError(f"film_reads must be 'text' or 'code' (with readout labels), got {self.film_reads!r}")
        if self.route not in ("blind", "unsure"):
            raise ValueError(f"route must be 'blind' or 'unsure', got {self.route!r}")
        if self.word_vectors and self.film_reads != "code":
            raise ValueError("word_vectors needs film_reads='code' (the image pathway reads what was understood)")
        if self.clauses < 1 or (self.clauses > 1 and self.film_reads != "code"):
            raise ValueError(f"clauses must be >= 1, and > 1 only with film_reads='code', got {self.clauses}")
        ratio = self.net_size // self.grid_size
        if ratio < 2 or self.net_size % self.grid_size or ratio & (ratio - 1):
            raise ValueError(f"net_size / grid_size must be a power of two >= 2, got {self.net_size}/{self.grid_size}")
        if self.grid_size < 4 or self.grid_size % 4:
            raise ValueError(f"grid_size must be a multiple of 4, got {self.grid_size}")

    @property
    def slot_dim(self) -> int:
        """Features of one clause: the sentence embedding and the word indicators (and with
        ``clauses > 1`` a last 0/1 entry: is this slot a clause or padding)."""
        return self.text_dim + len(self.vocab) + self.word_dim + (1 if self.clauses > 1 else 0)

    @property
    def word_dim(self) -> int:
        """Features of the word vectors (:attr:`word_vectors`): their mean (``text_dim``) and the
        new-word flag, or 0."""
        return self.text_dim + 1 if self.word_vectors else 0

    @property
    def n_down(self) -> int:
        """Number of stride-2 convolutions from ``net_size`` to ``grid_size``."""
        return int(round(math.log2(self.net_size // self.grid_size)))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StudentConfig":
        d = json.loads(text)
        d.setdefault("act", "relu")  # written before the field existed: those students used ReLU
        d.setdefault("word_vectors", False)
        d.setdefault("route", "blind")
        d.setdefault("second_margin", 0.0)
        return cls(**d)


def film(features: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Feature-wise linear modulation (Perez et al. 2018): scale and shift every channel.

    Args:
        features: (B, C, H, W).
        gamma, beta: (B, C) per-example, per-channel scale and shift.

    Returns:
        (B, C, H, W): ``gamma[b, c] * features[b, c, y, x] + beta[b, c]``.
    """
    # FiLM(f) = gamma * f + beta, broadcast over (H, W)
    return gamma[:, :, None, None] * features + beta[:, :, None, None]


def edit_code(presence: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """The edit code the FiLM layers read: ``[p, p * s]``.

    Args:
        presence: (B, K) probabilities in [0, 1] that each readout label is asked for (the
            readout heads' sigmoid, or the 0/1 truth of :func:`course_lib.world.readout_targets`).
        strength: (B, K) signed strengths (amount / unit).

    Returns:
        (B, 2K).
    """
    # c = [p, p * s]: an absent edit contributes zeros whatever its strength reads
    return torch.cat([presence, presence * strength], dim=-1)


def coordinate_maps(x: torch.Tensor) -> torch.Tensor:
    """Where each cell is: (B, C, H, W) -> (B, 3, H, W) maps ``y``, ``x`` in [-1, 1] (cell centres,
    y down) and ``r^2 = (x^2 + y^2) / 2`` in [0, 1]."""
    B, _, H, W = x.shape
    ys = (torch.arange(H, device=x.device, dtype=x.dtype) + 0.5) / H * 2 - 1
    xs = (torch.arange(W, device=x.device, dtype=x.dtype) + 0.5) / W * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    # r^2 = (x^2 + y^2) / 2: 0 at the centre, 1 in the corners
    maps = torch.stack([yy, xx, (xx ** 2 + yy ** 2) / 2])  # (3, H, W)
    return maps[None].expand(B, -1, -1, -1)


def grid_from_head(head_out: torch.Tensor, luma_bins: int) -> torch.Tensor:
    """Reshape the 1x1 head's output into an affine bilateral grid.

    Channel ``k = c * D + z`` of the head holds coefficient ``c`` (``c = 4 i + j``, see
    :mod:`course_lib.bilateral`) of intensity bin ``z``.

    Args:
        head_out: (B, 12 * D, Hg, Wg).
        luma_bins: D.

    Returns:
        (B, 12, D, Hg, Wg).
    """
    B, K, Hg, Wg = head_out.shape
    if K != 12 * luma_bins:
        raise ValueError(f"head output has {K} channels, expected 12 * {luma_bins}")
    # (B, 12 D, Hg, Wg) -> (B, 12, D, Hg, Wg)
    return head_out.reshape(B, 12, luma_bins, Hg, Wg)


class FiLM(nn.Module):
    """Text features -> per-channel ``(gamma, beta) = (1 + dgamma, beta)``, applied with :func:`film`.

    The projection starts with small random weights (std ``init_std``) and zero bias, so the
    instruction changes the features from the first step. (With a zero FiLM *and* the zero
    head, the gradients of both vanish at initialisation - a saddle - and the text takes
    hundreds of steps to matter.) The zero head alone keeps the untrained output equal to
    the input.

    Args:
        hidden: size of the (shared) text features it reads.
        channels: C, the channels it modulates.
        init_std: standard deviation of the initial projection weights.
    """

    def __init__(self, hidden: int, channels: int, init_std: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, 2 * channels)
        nn.init.normal_(self.proj.weight, std=init_std)
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: torch.Tensor, text_h: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, hidden) -> (B, C, H, W)."""
        d_gamma, beta = self.proj(text_h).chunk(2, dim=-1)  # (B, C) each
        # gamma = 1 + d_gamma, so a zero projection is the identity
        return film(features, 1.0 + d_gamma, beta)


class SplitNorm(nn.Module):
    """LayerNorm on the sentence embedding (the first ``dim`` features), the word indicators after it
    passed as they are: (..., dim + V) -> (..., dim + V)."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.norm(text[..., :self.dim]), text[..., self.dim:]], dim=-1)


#: Where :func:`split_clauses` cuts: punctuation, and the words that join two requests.
CLAUSE_BREAK = re.compile(r"\s*[,;.!?]+\s*|\s+(?:and|then|also|but)\s+")
#: Joining words left at the start of a clause (", and then make ...").
CLAUSE_LEAD = re.compile(r"^(?:(?:and|then|also|but)\s+)+")


def split_clauses(text: str, max_clauses: int) -> list[str]:
    """Cut an instruction into at most ``max_clauses`` clauses, one request each (usually).

    A plain rule, no learning: cut at punctuation and at "and", "then", "also", "but"; drop
    joining words left at the start of a clause and empty pieces; clauses beyond
    ``max_clauses`` are joined into the last. Some cuts fall inside one request ("flat and
    grey"): the reader learns that such a piece names nothing on its own, since the training
    targets only reward the edits the whole instruction names.

    Returns:
        1 to ``max_clauses`` non-empty strings (the text itself if nothing is left).
    """
    parts = [CLAUSE_LEAD.sub("", p.strip()) for p in CLAUSE_BREAK.split(str(text).strip().lower())]
    parts = [p for p in parts if p]
    if not parts:
        return [str(text)]
    if len(parts) > max_clauses:
        parts = parts[:max_clauses - 1] + [" ".join(parts[max_clauses - 1:])]
    return parts


#: Words that carry no edit, left out of :func:`word_vector_mean`.
STOPWORDS = frozenset("a an the it its it's is are be was this that to of in on and or but then also so too please "
                      "could can would you i i'd me my make get give let look looks feel feels should want like "
                      "bit little lot some more less much way very".split())


def word_vector_mean(pieces: Sequence[str], encode) -> torch.Tensor:
    """The mean embedding of each text's content words, every word embedded alone: (N, D).

    Words outside :data:`STOPWORDS` are encoded one by one (a few thousand distinct words: the
    encoder's cache holds them) and averaged, times ``sqrt(D)`` (entries of about unit size, as the
    layer-normalised sentence embedding); a text without content words gives zeros."""
    split = [[w for w in re.findall(r"[a-z]+(?:[-'][a-z]+)*", str(t).lower()) if w not in STOPWORDS]
             for t in pieces]
    vocab = sorted({w for ws in split for w in ws})
    if not vocab:
        return torch.zeros(len(pieces), int(encode(["a"]).shape[1]))
    emb = encode(vocab).detach().float().cpu()  # (W, D)
    index = {w: i for i, w in enumerate(vocab)}
    out = torch.zeros(len(pieces), emb.shape[1])
    for n, ws in enumerate(split):
        if ws:
            out[n] = emb[[index[w] for w in ws]].mean(0)
    return out * math.sqrt(emb.shape[1])


def featurise(texts: Sequence[str], cfg: "StudentConfig", encode=None) -> torch.Tensor:
    """What a student reads of its instructions: the sentence embedding of ``cfg.text_encoder``,
    then, with a vocabulary, the word indicators: (N, text_dim + V) on the CPU.

    With ``cfg.clauses = L > 1``, the same for each clause of :func:`split_clauses` in L slots,
    each followed by a 1 (a clause) or a 0 (an empty slot, all zeros): (N, L * (text_dim + V + 1)),
    the slots one after the other (:meth:`Student.understand` reshapes to (N, L, slot_dim)).

    Args:
        encode: texts -> (n, text_dim) embeddings; default the shared encoder with its disk cache
            (``gpu-check`` passes the uncached one to time it).
    """
    enc = shared_encoder(cfg.text_encoder)
    if enc.dim != cfg.text_dim:
        raise CheckpointError(f"text encoder {enc.name} gives {enc.dim}-d embeddings, the student expects "
                              f"{cfg.text_dim}")
    encode = encode or enc.encode

    def read(pieces: list[str]) -> torch.Tensor:
        emb = encode(list(pieces)).detach().float().cpu()  # (n, text_dim)
        parts = [emb] + ([bag_of_words(pieces, cfg.vocab)] if cfg.vocab else [])
        if cfg.word_vectors:  # (n, text_dim + 1): the words' own embeddings and the new-word flag
            known = set(cfg.vocab)
            new = [any(w not in known and w not in STOPWORDS for w in re.findall(r"[a-z]+(?:[-'][a-z]+)*", p.lower()))
                   for p in pieces]
            parts += [word_vector_mean(pieces, encode), torch.tensor(new, dtype=torch.float32)[:, None]]
        return torch.cat(parts, dim=1)

    texts = list(texts)
    if cfg.clauses == 1:
        return read(texts)
    L = cfg.clauses
    split = [split_clauses(t, L) for t in texts]
    flat = read([c for cs in split for c in cs])  # (sum of clauses, text_dim + V)
    out = torch.zeros(len(texts), L, cfg.slot_dim)
    k = 0
    for n, cs in enumerate(split):
        out[n, :len(cs), :-1] = flat[k:k + len(cs)]
        out[n, :len(cs), -1] = 1.0
        k += len(cs)
    return out.flatten(1)  # (N, L * slot_dim)


def combine_clauses(logit_l: torch.Tensor, s_l: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a whole instruction asks for, from what each of its clauses asks for (lesson 03,
    exercise 3.4).

    An edit is asked for unless *no* clause asks for it: a noisy OR of the clauses' presences,
    computed on logits so that it stays exact when every ``p_l`` is tiny. Its strength is the
    clauses' strengths weighted by their presence.

    Args:
        logit_l: (B, L, K) presence logits of each clause slot.
        s_l: (B, L, K) signed strengths of each slot.
        valid: (B, L) 1 for a clause, 0 for an empty slot (ignored).

    Returns:
        ``(logits, strength)``, (B, K) each: ``sigmoid(logits) = 1 - prod_l (1 - p_l)`` and
        ``strength = sum_l p_l s_l / sum_l p_l`` over the valid slots.
    """
    v = valid[..., None].to(logit_l.dtype)  # (B, L, 1)
    # log(1 - p) = sum_l log(1 - p_l) = -sum_l softplus(logit_l) =: S < 0
    S = -(F.softplus(logit_l) * v).sum(1).clamp_min(1e-30)  # (B, K)
    # logit(p) = log(p) - log(1 - p) = log(-expm1(S)) - S
    logits = torch.log(-torch.expm1(S)) - S  # (B, K)
    # s = sum_l p_l s_l / sum_l p_l
    p_l = torch.sigmoid(logit_l) * v  # (B, L, K)
    strength = (p_l * s_l).sum(1) / p_l.sum(1).clamp_min(1e-6)  # (B, K)
    return logits, strength


def indicator_mask(cfg: "StudentConfig") -> torch.Tensor:
    """(features,) bool: which entries of :func:`featurise`'s output are word indicators."""
    slot = torch.zeros(cfg.slot_dim, dtype=torch.bool)
    slot[cfg.text_dim:cfg.text_dim + len(cfg.vocab)] = True
    return slot.repeat(cfg.clauses)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


@torch.no_grad()
def curve_guide_fast(guide: CurveGuide, image: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """:class:`CurveGuide` evaluated without its (B, 3, K, H, W) intermediate (inference only).

    Each curve ``f(x) = sum_k slope_k relu(x - shift_k)`` is piecewise linear: with the shifts
    sorted and ``i`` the number of shifts below ``x``,
    ``f(x) = (sum_{k<i} slope_k) x - sum_{k<i} slope_k shift_k``. ``torch.searchsorted`` finds
    ``i``; the result equals the module's to float rounding, ~20x faster on a 1080p photo.

    Args:
        guide: a CurveGuide. image: (B, 3, H, W).
        impl: ``"auto"`` (the C++ kernel when possible), ``"cpu"`` (require it) or ``"torch"``.

    On the CPU the fused C++ kernel of lesson 02 (``fastslice``) computes the same sums in one
    pass over the pixels (no intermediate tensors, float32 arithmetic), when it is available.

    Returns:
        (B, H, W) in [0, 1].
    """
    if impl not in ("auto", "cpu", "torch"):
        raise ValueError(f"impl must be 'auto', 'cpu' or 'torch', not {impl!r}")
    if impl != "torch" and image.device.type == "cpu" and image.dtype in (torch.float32, torch.float16,
                                                                           torch.bfloat16):
        ext = load_cpu_extension()
        if impl == "cpu" and (ext is None or not hasattr(ext, "curve_guide")):
            raise RuntimeError("the C++ curve-guide kernel is not available (see fastslice.cpu_extension_error())")
        if ext is not None and hasattr(ext, "curve_guide"):
            return ext.curve_guide(image, guide.ccm, guide.ccm_bias, guide.shifts, guide.slopes, guide.mix,
                                   float(guide.mix_bias))
    # x' = M x + b
    x = torch.einsum("dc,bchw->bdhw", guide.ccm, image) + guide.ccm_bias.view(1, 3, 1, 1)  # (B, 3, H, W)
    out = torch.zeros_like(x[:, 0]) + guide.mix_bias
    for c in range(3):
        shifts, order = guide.shifts[c].sort()
        slopes = guide.slopes[c][order]
        zero = slopes.new_zeros(1)
        # prefix sums: slope_sum[i] = sum_{k<i} slope_k, offset[i] = sum_{k<i} slope_k shift_k
        slope_sum = torch.cat([zero, slopes.cumsum(0)])
        offset = torch.cat([zero, (slopes * shifts).cumsum(0)])
        xc = x[:, c].contiguous()
        i = torch.searchsorted(shifts.contiguous(), xc)  # number of shifts < x
        # guide += mix_c f_c(x')
        out += guide.mix[c] * (slope_sum[i] * xc - offset[i])
    return out.clamp(0, 1)


class Student(nn.Module):
    """Text-conditioned HDRNet: predicts a (B, 12, D, G, G) grid, applies it at full resolution.

    Args:
        cfg: a :class:`StudentConfig` (defaults if ``None``).
    """

    def __init__(self, cfg: StudentConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or StudentConfig()
        C, n = cfg.channels, cfg.n_down
        # splat stream: channels C / 2^(n-1), ..., C / 2, C
        widths = [max(4, C // 2 ** (n - 1 - i)) for i in range(n)]
        self.splat = nn.ModuleList(_conv(cin, cout, 2) for cin, cout in zip([3] + widths[:-1], widths))
        # text MLP shared by the FiLM layers; LayerNorm brings unit-norm embeddings to unit scale
        V = len(cfg.vocab)
        norm = SplitNorm(cfg.text_dim, V) if V or cfg.word_vectors else nn.LayerNorm(cfg.text_dim)
        layers: list[nn.Module] = [norm, nn.Linear(cfg.text_dim + V, cfg.film_hidden), nn.ReLU()]
        for _ in range(cfg.text_layers - 1):  # a deeper adapter for open wording
            layers += [nn.Linear(cfg.film_hidden, cfg.film_hidden), nn.ReLU()]
        self.text_mlp = nn.Sequential(*layers)
        # with readout heads, the FiLM layers read the text features *and* what the heads read
        # (presence p and p * strength per label): a code of the edit that training supervises
        film_in = (cfg.film_hidden if cfg.film_reads == "text" else 0) + (2 * len(cfg.readout) if cfg.readout else 0)
        self.film_splat = FiLM(film_in, C)
        # global path: two stride-2 convs, then fully connected layers to C
        self.global_convs = nn.ModuleList([_conv(C, C, 2), _conv(C, C, 2)])
        flat = C * (cfg.grid_size // 4) ** 2
        sizes = [flat, *cfg.fc, C]
        self.global_fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        # local path: two 3x3 convs, the second without activation or bias (as HDRNet)
        self.local1 = _conv(C + (3 if cfg.coords else 0), C)
        self.local2 = nn.Conv2d(C, C, 3, padding=1, bias=False)
        self.film_fuse = FiLM(film_in, C)
        # head: 1x1 conv to 12 D coefficients, zero-initialised (the grid starts at the identity)
        self.head = nn.Conv2d(C, 12 * cfg.luma_bins, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("identity", identity_grid(1, cfg.luma_bins, cfg.grid_size, cfg.grid_size),
                             persistent=False)  # (1, 12, D, G, G)
        self.guide = make_guide(cfg.guide)
        # "understood as" heads on the shared text features: per label, a presence logit and a
        # signed strength (amount / unit)
        self.readout_head = (nn.Sequential(nn.Linear(cfg.film_hidden, cfg.film_hidden), nn.ReLU(),
                                           nn.Linear(cfg.film_hidden, 2 * len(cfg.readout)))
                             if cfg.readout else None)
        if cfg.word_vectors:  # the second reader: sentence embedding + word vectors, for clauses with a new word
            self.text_mlp_b = nn.Sequential(SplitNorm(cfg.text_dim, cfg.text_dim),
                                            nn.Linear(2 * cfg.text_dim, cfg.film_hidden), nn.ReLU())
            self.readout_head_b = nn.Sequential(nn.Linear(cfg.film_hidden, cfg.film_hidden), nn.ReLU(),
                                                nn.Linear(cfg.film_hidden, 2 * len(cfg.readout)))

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """The image pathway's activation (LeakyReLU keeps a gradient where ReLU would be dead)."""
        return F.leaky_relu(x, 0.1) if self.cfg.act == "leaky" else F.relu(x)

    # ------------------------------------------------------------------ the grid
    def features(self, low: torch.Tensor, text: torch.Tensor, record: dict | None = None,
                 code: torch.Tensor | None = None) -> torch.Tensor:
        """Fused, text-modulated features of the low-resolution copy.

        Args:
            low: (B, 3, n, n) image in [0, 1], n = ``cfg.net_size``.
            text: (B, text_dim [+ V]) instruction features (:meth:`embed`).
            record: if a dict, the activations of every layer are stored in it (``splat0``, ...,
                ``global``, ``local``, ``fused``) for :func:`pathway_report`.
            code: (B, 2K) edit code to use instead of the one read from ``text`` (:func:`edit_code`).

        Returns:
            (B, C, G, G).
        """
        th = self.text_features(text, code)  # (B, [film_hidden +] 2K) or (B, film_hidden)
        x = low
        for i, conv in enumerate(self.splat):
            x = conv(x)
            if i == len(self.splat) - 1:
                # the last splat layer is conditioned on the instruction
                x = self.film_splat(x, th)
            x = self.act(x)  # (B, c_i, n / 2^(i+1), ...)
            if record is not None:
                record[f"splat{i}"] = x
        # global path
        g = x
        for conv in self.global_convs:
            g = self.act(conv(g))  # (B, C, G/2, G/2) then (B, C, G/4, G/4)
        g = g.flatten(1)
        for k, fc in enumerate(self.global_fc):
            g = fc(g)
            if k < len(self.global_fc) - 1:
                g = self.act(g)  # (B, C) at the end, no activation
        # local path
        if self.cfg.coords:
            x = torch.cat([x, coordinate_maps(x)], dim=1)  # (B, C + 3, G, G)
        loc = self.local2(self.act(self.local1(x)))  # (B, C, G, G)
        # fuse: act(FiLM(local + global))
        fused = self.act(self.film_fuse(loc + g[:, :, None, None], th))  # (B, C, G, G)
        if record is not None:
            record.update({"global": g, "local": loc, "fused": fused})
        return fused

    def delta(self, low: torch.Tensor, text: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
        """The predicted grid minus the identity: (B, 3, n, n), (B, text_dim) -> (B, 12, D, G, G)."""
        d = grid_from_head(self.head(self.features(low, text, code=code)), self.cfg.luma_bins)  # (B, 12, D, G, G)
        if self.cfg.global_affine:
            # one transform per photo: the mean over bins and cells, broadcast back (slicing a
            # constant grid returns the constant, whatever the guide)
            d = d.mean(dim=(2, 3, 4), keepdim=True).expand_as(d)
        return d

    def predict_grid(self, image: torch.Tensor, text: torch.Tensor,
                     strength: float | torch.Tensor = 1.0, code: torch.Tensor | None = None) -> torch.Tensor:
        """The affine grid for an image of any size and an instruction embedding.

        Args:
            image: (B, 3, H, W) in [0, 1]; resized to ``net_size``² for the network.
            text: (B, text_dim [+ V]) instruction features (see :meth:`embed`).
            strength: float or (B,) tensor, >= 0: ``grid = I + s (G - I)``.
            code: optional (B, 2K) edit code replacing the one read from the text (training).

        Returns:
            (B, 12, D, G, G).
        """
        low = self.network_input(image)  # (B, 3, n, n)
        s = torch.as_tensor(strength, dtype=low.dtype, device=image.device).reshape(-1, 1, 1, 1, 1)
        # G_s = I + s (G - I)
        return self.identity + s * self.delta(low, text, code)

    def network_input(self, image: torch.Tensor) -> torch.Tensor:
        """The network's view of a photo: its antialiased resize to ``net_size``² (as in training).

        Without gradients on the CPU, the C++ pass of :func:`course_lib.fastslice.resize_fast` reads
        the photo itself (8-bit or float, any layout; the same taps as :func:`course_lib.data.resize`,
        no full-resolution float copy).

        Args:
            image: (B, 3, H, W) float in [0, 1], or uint8 (0..255).

        Returns:
            (B, 3, n, n) float in [0, 1].
        """
        n = self.cfg.net_size
        if image.shape[-2:] == (n, n) and image.is_floating_point():
            return image  # already the network's view
        if not torch.is_grad_enabled() and image.device.type == "cpu" and image.dtype in (torch.uint8, torch.float32):
            return resize_fast(image, (n, n))
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image
        return resize(image, (n, n)) if image.shape[-2:] != (n, n) else image

    # ------------------------------------------------------------------ full resolution
    def guide_map(self, image: torch.Tensor, rows_per_chunk: int | None = None) -> torch.Tensor:
        """The learned guide at full resolution: (B, 3, H, W) -> (B, H, W) in [0, 1].

        Without gradients the curve guide is evaluated by :func:`curve_guide_fast` (exact, no
        16-knot intermediate per pixel); other guides are pointwise, so they are computed in
        chunks of rows to keep memory small on 4K photos.
        """
        if not torch.is_grad_enabled() and isinstance(self.guide, CurveGuide):
            return curve_guide_fast(self.guide, image)
        if rows_per_chunk is None or torch.is_grad_enabled() or image.shape[-2] <= rows_per_chunk:
            return self.guide(image)
        return torch.cat([self.guide(image[..., r:r + rows_per_chunk, :])
                          for r in range(0, image.shape[-2], rows_per_chunk)], dim=-2)

    def forward(self, image: torch.Tensor, text: torch.Tensor, strength: float | torch.Tensor = 1.0,
                impl: str = "auto", return_grid: bool = False, return_readout: bool = False,
                code: torch.Tensor | None = None):
        """Retouch a batch.

        Args:
            image: (B, 3, H, W) in [0, 1], any H, W.
            text: (B, text_dim [+ V]) instruction features (:meth:`embed`).
            strength: float or (B,) tensor (0: output = input).
            impl: :func:`course_lib.bilateral.slice_apply` implementation.
            return_grid: also return the grid (training regularises it).
            return_readout: also return :meth:`understand`'s ``(logits, strength)`` (training
                them in the same forward pass keeps multi-process gradient averaging simple).
            code: optional (B, 2K) edit code (:func:`edit_code`) that the FiLM layers read instead
                of the one the readout heads read from ``text`` (teacher forcing in training).

        Returns:
            (B, 3, H, W), not clipped (training compares it with the target as is); with
            ``return_grid``, ``(output, grid)`` with grid (B, 12, D, G, G); with
            ``return_readout`` the readout is appended to the tuple.
        """
        grid = self.predict_grid(image, text, strength, code)  # (B, 12, D, G, G)
        if (not torch.is_grad_enabled() and impl in ("auto", "cpu") and image.device.type == "cpu"
                and image.dtype == torch.float32):
            # inference: guide, slice and apply in one pass over the pixels (lesson 02)
            out = retouch_pass(grid, image, self.guide, clamp=False)  # (B, 3, H, W)
        else:
            guide = self.guide_map(image, rows_per_chunk=512)  # (B, H, W)
            out = slice_apply(grid, guide, image, impl=impl)  # (B, 3, H, W)
        extra = ((grid,) if return_grid else ()) + ((self.understand(text),) if return_readout else ())
        return (out, *extra) if extra else out

    # ------------------------------------------------------------------ understood as
    def text_features(self, text: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
        """What the FiLM layers read: the text MLP's features, then (with readout heads) the edit
        code ``[p, p * s]`` of :meth:`understand` (p = sigmoid(logits)): (B, film_hidden [+ 2K]);
        with ``cfg.film_reads == "code"`` the code alone, (B, 2K), with ``p`` made 0/1 at
        ``cfg.readout_threshold`` (what :func:`read_instruction` reports is what is applied).
        ``code`` replaces the code read from the text."""
        if self.readout_head is None:
            return self.text_mlp(text)  # (B, film_hidden)
        if code is None:
            if self.cfg.film_reads == "code":
                logits, strength = self.understand(text)  # (B, K) each
                # the image pathway gets exactly what the student says it understood: a 0/1
                # presence per label (as the true codes it trained on), the strengths it read
                p = torch.sigmoid(logits)
                return edit_code((p >= self.cfg.readout_threshold).to(p.dtype), strength)  # (B, 2K)
            th = self.text_mlp(text)  # (B, film_hidden)
            logits, strength = self.readout_head(th).chunk(2, dim=-1)  # (B, K) each
            return torch.cat([th, edit_code(torch.sigmoid(logits), strength)], dim=-1)  # (B, film_hidden + 2K)
        return code if self.cfg.film_reads == "code" else torch.cat([self.text_mlp(text), code], dim=-1)

    def understand(self, text: torch.Tensor, which: str = "route") -> tuple[torch.Tensor, torch.Tensor]:
        """What the instruction asks for, read from its embedding alone.

        With ``cfg.clauses > 1`` every clause is read alone by the same MLP and heads, and the
        clauses are combined: an edit is asked for unless *no* clause asks for it (noisy OR),
        with the strength of the clauses that ask for it, weighted by their presence.

        Args:
            text: (B, features) instruction features (:meth:`embed`).
            which: with ``cfg.word_vectors``: ``"route"`` (each clause to the reader that suits it),
                ``"a"`` or ``"b"`` (one reader for every clause; training).

        Returns:
            ``(logits, strength)``: (B, K) presence logits and (B, K) signed strengths over
            ``cfg.readout`` (K labels).

        Raises:
            RuntimeError: the student has no readout heads (``cfg.readout`` empty).
        """
        if self.readout_head is None:
            raise RuntimeError("this student has no 'understood as' heads (trained before they existed)")
        if self.cfg.clauses == 1:
            return self._read_clauses(text, which)  # (B, K) each
        B, L = text.shape[0], self.cfg.clauses
        slots = text.reshape(B, L, self.cfg.slot_dim)
        logit_l, s_l = self._read_clauses(slots[..., :-1], which)  # (B, L, K) each
        return combine_clauses(logit_l, s_l, slots[..., -1])

    def _read_clauses(self, x: torch.Tensor, which: str = "route") -> tuple[torch.Tensor, torch.Tensor]:
        """Presence logits and strengths of clause features (..., text_dim + V [+ text_dim + 1]):
        the first reader, or with ``cfg.word_vectors`` the second one where the clause has a new word
        (``which``: ``"route"``, ``"a"`` or ``"b"``, the last two for training)."""
        D, V = self.cfg.text_dim, len(self.cfg.vocab)
        if not self.cfg.word_vectors or which == "a":
            return self.readout_head(self.text_mlp(x[..., :D + V])).chunk(2, dim=-1)
        xb = torch.cat([x[..., :D], x[..., D + V:D + V + D]], dim=-1)  # sentence + word vectors
        lb, sb = self.readout_head_b(self.text_mlp_b(xb)).chunk(2, dim=-1)
        if which == "b":
            return lb, sb
        if self.cfg.second_margin > 0:  # reading: only the second reader's labels close to its most likely one
            lb = torch.where(lb >= lb.amax(-1, keepdim=True) - self.cfg.second_margin, lb, lb.clamp_max(-10.0))
        la, sa = self.readout_head(self.text_mlp(x[..., :D + V])).chunk(2, dim=-1)
        # the second reader only where the clause has a new word and the first reads nothing in it ("blind")
        # or is not sure of what it reads ("unsure"); what the first is sure of it reads with its strengths
        # (routing every new-word clause to the second cost 2.9 dB (global) and 1.3 dB (content-aware) on
        # held-out phrasings in `evaluate`)
        new = x[..., D + V + D:D + V + D + 1] > 0.5  # (..., 1)
        pa = torch.sigmoid(la).amax(-1, keepdim=True)  # (..., 1)
        use_b = new & (pa < (SURE if self.cfg.route == "unsure" else self.cfg.readout_threshold))
        return torch.where(use_b, lb, la), torch.where(use_b, sb, sa)

    # ------------------------------------------------------------------ text
    def embed(self, instructions: Sequence[str] | str) -> torch.Tensor:
        """Featurise instructions as this student was trained (:func:`featurise`): (N, text_dim [+ V]) on its device."""
        texts = [instructions] if isinstance(instructions, str) else list(instructions)
        return featurise(texts, self.cfg).to(self.identity.device)

    @property
    def device(self) -> torch.device:
        return self.identity.device


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_step(model: Student, opt: torch.optim.Optimizer, source: torch.Tensor, text: torch.Tensor,
               target: torch.Tensor, tv_weight: float = 1e-4) -> float:
    """One supervised step of lesson 03 (exercise 3.5): forward, loss, backward, update.

    ``L = mean (pred − target)² + λ_TV TV(grid)``; the trainer (:mod:`course_lib.train.student`) adds
    the reading loss and code forcing when the student has readout heads, and averages gradients over
    processes; without those it makes exactly this step (tested).

    Args:
        source, target: (B, 3, S, S) in [0, 1]; text: (B, text_dim) from :meth:`Student.embed`.

    Returns:
        the step's MSE (before the update).
    """
    pred, grid = model(source, text, return_grid=True)  # (B, 3, S, S), (B, 12, D, G, G)
    # L = mean (pred − target)² + λ TV(grid)
    mse = (pred - target).pow(2).mean()
    loss = mse + tv_weight * grid_tv(grid)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(mse.detach())


def run_train_steps(step, seed: int = 0, steps: int = 3, size: int = 32, batch: int = 4) -> list[torch.Tensor]:
    """Exercise 3.3's check: ``steps`` calls of ``step`` (a function like :func:`train_step`) from the
    same tiny fresh student and training items (global families, :class:`course_lib.world.RetouchWorld`). Returns ``[parameters, MSEs]``, flat."""
    torch.manual_seed(seed)
    model = Student(StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ds = world.RetouchWorld("train", "train", size=size, length=steps * batch, seed=seed, families=world.GLOBAL_FAMILIES)
    mses = []
    for k in range(steps):
        items = [ds[k * batch + i] for i in range(batch)]
        src, tgt = torch.stack([it["source"] for it in items]), torch.stack([it["target"] for it in items])
        with torch.no_grad():
            text = model.embed([it["instruction"] for it in items])
        mses.append(step(model, opt, src, text, tgt, 1e-4))
    return [torch.cat([p.detach().flatten() for p in model.parameters()]), torch.tensor(mses)]


@torch.no_grad()
def retouch_fused(model: Student, image: torch.Tensor, text: torch.Tensor, strength: float = 1.0,
                  out: torch.Tensor | None = None, timings: dict | None = None) -> torch.Tensor:
    """The student's inference pipeline, photo to result: the network's input read straight from the
    photo, the grid, then one pass per pixel (guide, slice, apply, clamp, rounding for 8-bit photos).

    Args:
        model: a :class:`Student`; on the CPU the passes are C++, on a CUDA GPU the pass over the
            pixels is the Triton kernel (``image`` is moved to the model's device).
        image: (B, 3, H, W) uint8 (0..255) or float32 in [0, 1], any strides: a decoded (B, H, W, 3)
            photo permuted to (B, 3, H, W) is read in place, and the result has its layout.
        text: (B, features) instruction features (:meth:`Student.embed`).
        strength: >= 0.
        out: optional buffer like ``image`` to write the result into (reuse it across photos).
        timings: if a dict, the stages' seconds are added to it: ``input`` (the network's input),
            ``grid`` (the network) and ``pass`` (the pass over the pixels).

    Returns:
        (B, 3, H, W) of ``image``'s dtype, clipped to [0, 1] (8-bit: rounded).
    """
    import time

    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + now - clock[0]
        clock[0] = now

    model.eval()
    image = image.to(model.device)
    low = model.network_input(image)  # (B, 3, n, n)
    lap("input")
    grid = model.predict_grid(low, text.to(model.device), strength)  # (B, 12, D, G, G)
    lap("grid")
    res = retouch_pass(grid, image, model.guide, out=out)  # (B, 3, H, W)
    lap("pass")
    return res


@torch.no_grad()
def retouch(model: Student, image: torch.Tensor, instruction: str | Sequence[str], strength: float = 1.0,
            impl: str = "auto") -> torch.Tensor:
    """Edit photos with a student, as the ``retouch`` command does.

    Args:
        model: a :class:`Student` (its device is used).
        image: (3, H, W) or (B, 3, H, W) in [0, 1] (or uint8, 0..255: the result is then uint8), any
            size (4K is fine: the network sees a ``net_size`` copy; the grid is sliced at full
            resolution).
        instruction: one instruction for all images, or one per image.
        strength: >= 0 (0: unchanged, 1: as predicted).
        impl: slicing implementation (``"auto"``: the fused pass of :func:`retouch_fused`).

    Returns:
        Same shape as ``image``, clipped to [0, 1], on the CPU.
    """
    squeeze = image.dim() == 3
    x = image[None] if squeeze else image
    texts = [instruction] * x.shape[0] if isinstance(instruction, str) else list(instruction)
    if len(texts) != x.shape[0]:
        raise ValueError(f"{len(texts)} instructions for {x.shape[0]} images")
    model.eval()
    if impl == "auto" and x.dtype in (torch.uint8, torch.float32):
        out = retouch_fused(model, x, model.embed(texts), strength).cpu()
    else:
        x = (x.float() / 255.0 if x.dtype == torch.uint8 else x).to(model.device, torch.float32)
        out = model(x, model.embed(texts), strength, impl=impl).clamp(0, 1).cpu()
    return out[0] if squeeze else out


@torch.no_grad()
def pathway_report(model: Student, images: torch.Tensor, instruction: str) -> dict:
    """Is the image pathway alive? Diagnostics of lesson 03 for one instruction over several photos.

    Args:
        images: (B, 3, n, n) photos at the network's size ``cfg.net_size``, B >= 2.
        instruction: the text every photo is paired with.

    Returns:
        dict with ``alive`` (layer -> share of activations > 0), ``photo_std`` (layer -> std over
        the photos, averaged over the rest: 0 means the layer ignores the photo), ``grid_photo_std``
        and ``grid_cell_std`` (std of the predicted grid over photos, and over spatial cells,
        largest over coefficients and bins).
    """
    rec: dict[str, torch.Tensor] = {}
    text = model.embed([instruction] * images.shape[0])
    model.features(images.to(model.device), text, record=rec)
    d = model.delta(images.to(model.device), text)  # (B, 12, D, G, G)
    return {"alive": {k: float((v > 0).float().mean()) for k, v in rec.items()},
            "photo_std": {k: float(v.std(0).mean()) for k, v in rec.items()},
            "grid_photo_std": float(d.std(0).amax()), "grid_cell_std": float(d.flatten(3).std(-1).amax())}


PATHWAY_INSTRUCTIONS = ("make it warmer", "make the sky warmer", "shade the edges of the frame")


def pathway_study(model: Student, n: int = 8, split: str = "test",
                  instructions: Sequence[str] = PATHWAY_INSTRUCTIONS) -> dict:
    """:func:`pathway_report` on the first ``n`` photos of a data-world split, per instruction.

    Returns:
        dict ``photos`` (names) and ``reports`` (instruction -> :func:`pathway_report` dict).
    """
    names = world.photo_names(split)[:n]
    size = model.cfg.net_size
    photos = torch.stack([resize(world.load_photo(k, 2 * size), (size, size)) for k in names])  # (n, 3, s, s)
    return {"photos": names, "reports": {i: pathway_report(model, photos, i) for i in instructions}}


def read_instruction(model: Student, instructions: str | Sequence[str]) -> list[list[dict]]:
    """What the student understood, per instruction: the edits whose presence probability
    reaches ``cfg.readout_threshold``, most confident first.

    Returns:
        One list per instruction of dicts ``label``, ``family``, ``target``, ``strength`` (signed,
        +1 = "normal"), ``p`` (presence probability); an empty list means "not understood".
    """
    texts = [instructions] if isinstance(instructions, str) else list(instructions)
    with torch.no_grad():
        logits, strength = model.understand(model.embed(texts))
    probs = torch.sigmoid(logits).cpu()
    strength = strength.cpu()
    out = []
    for b in range(len(texts)):
        found = []
        for k in torch.nonzero(probs[b] >= model.cfg.readout_threshold).flatten().tolist():
            fam, _, target = model.cfg.readout[k].partition("@")
            found.append({"label": model.cfg.readout[k], "family": fam, "target": target,
                          "strength": float(strength[b, k]), "p": float(probs[b, k])})
        out.append(sorted(found, key=lambda r: -r["p"]))
    return out


#: A refused instruction whose most likely edit reaches this share of the presence threshold is not
#: refused: the student applies that edit and says it was unsure (:func:`interpret`).
UNSURE_FACTOR = 0.5


def closest_readings(model: Student, instructions: str | Sequence[str], k: int = 3) -> list[list[dict]]:
    """The ``k`` most likely edits of each instruction whatever the threshold (dicts as
    :func:`read_instruction`'s, most likely first; the sign is the strength the student read)."""
    texts = [instructions] if isinstance(instructions, str) else list(instructions)
    with torch.no_grad():
        logits, strength = model.understand(model.embed(texts))
    probs = torch.sigmoid(logits).cpu()
    out = []
    for b in range(len(texts)):
        top = probs[b].topk(min(k, probs.shape[1]))
        rows = []
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            fam, _, target = model.cfg.readout[i].partition("@")
            rows.append({"label": model.cfg.readout[i], "family": fam, "target": target,
                         "strength": float(strength[b, i]), "p": float(p)})
        out.append(rows)
    return out


def interpret(model: Student, instruction: str, k: int = 3, unsure_factor: float = UNSURE_FACTOR) -> dict:
    """What the student will do with an instruction, for the ``retouch`` command and the studio.

    Returns:
        dict ``readings`` (the edits it applies, :func:`read_instruction`'s dicts), ``unsure`` (True when
        nothing reached the threshold and the most likely edit, at least ``unsure_factor`` times the
        threshold, is applied alone), ``apply_text`` (the text to embed: the instruction, or when
        unsure a plain instruction of that edit, :func:`course_lib.grammar.example_instruction`),
        ``alternatives`` (up to ``k`` other likely edits: dicts with ``line`` and ``instruction``, one
        click each in the studio; for a refused instruction the closest edits it knows).
    """
    readings = read_instruction(model, instruction)[0]
    close = closest_readings(model, instruction, k + max(len(readings), 1))[0]
    unsure, apply_text = False, instruction
    if not readings and close and close[0]["p"] >= unsure_factor * model.cfg.readout_threshold:
        readings, unsure = [close[0]], True
        apply_text = example_instruction(close[0]["family"], close[0]["target"], close[0]["strength"] >= 0)
    chosen = {r["label"] for r in readings}
    alts = [{"line": describe(r["family"], r["target"], r["strength"]),
             "instruction": example_instruction(r["family"], r["target"], r["strength"] >= 0), "p": r["p"]}
            for r in close if r["label"] not in chosen][:k]
    return {"readings": readings, "unsure": unsure, "apply_text": apply_text, "alternatives": alts}


def understood_line(readings: Sequence[dict]) -> str:
    """``"understood: sky warmer (+1.0), darker (-0.5)"`` (see :func:`course_lib.grammar.describe`)."""
    if not readings:
        return "understood: nothing I can do"
    return "understood: " + ", ".join(describe(r["family"], r["target"], r["strength"]) for r in readings)


def calibrate_readout(model: Student, positives: Sequence[str], negatives: Sequence[str]) -> float:
    """The presence threshold that best separates instructions from non-edits.

    With ``m(x)`` the largest presence probability of text ``x``, the threshold ``t`` maximises
    the balanced accuracy ``(P[m(pos) >= t] + P[m(neg) < t]) / 2`` (midpoint between neighbours).

    Args:
        positives: instructions that name edits (validation data). negatives: requests that name none.

    Returns:
        The threshold in (0, 1).
    """
    with torch.no_grad():
        m_pos = torch.sigmoid(model.understand(model.embed(list(positives)))[0]).amax(1).cpu()
        m_neg = torch.sigmoid(model.understand(model.embed(list(negatives)))[0]).amax(1).cpu()
    cands = torch.cat([m_pos, m_neg]).sort().values
    mids = torch.cat([cands[:1] / 2, (cands[1:] + cands[:-1]) / 2, (cands[-1:] + 1) / 2])
    bal = torch.stack([((m_pos >= t).float().mean() + (m_neg < t).float().mean()) / 2 for t in mids])
    return float(mids[int(bal.argmax())])


def explore(model: Student, photo: str | torch.Tensor = "chelsea", instruction: str = "make it warmer",
            strength: float = 1.0, size: int = 256) -> dict:
    """The lesson's interactive retoucher: one photo, one typed instruction, a strength.

    Args:
        model: a :class:`Student`.
        photo: a photo name (:func:`course_lib.world.photo_names`) or a (3, H, W) tensor.
        instruction: any text (empty: no edit).
        strength: >= 0.
        size: shorter side of the shown image.

    Returns:
        dict with (3, H, W) images ``before``, ``after``, ``difference`` (``|after - before|`` x4,
        clipped); ``grid`` (1, 12, D, G, G); ``seconds`` (float); ``understood`` (the
        :func:`understood_line`, ``None`` for a student without readout heads or an empty instruction).
    """
    import time

    t0 = time.perf_counter()
    if isinstance(photo, str):
        before = world.load_photo(photo, size)
    else:
        before = resize(photo, size)
    understood = (understood_line(read_instruction(model, instruction)[0])
                  if model.cfg.readout and instruction.strip() else None)
    if instruction.strip():
        after = retouch(model, before, instruction, strength)
        with torch.no_grad():
            grid = model.predict_grid(before[None].to(model.device), model.embed([instruction]), strength).cpu()
    else:
        after, grid = before.clone(), model.identity.cpu().clone()
    return {"before": before, "after": after, "difference": ((after - before).abs() * 4).clamp(0, 1),
            "grid": grid, "seconds": time.perf_counter() - t0, "understood": understood}


# ---------------------------------------------------------------------- checkpoints


def save_student(model: Student, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save weights + config to one safetensors file (atomically; the course's one checkpoint
    convention, :mod:`course_lib.util.checkpoint`, kind ``"student"``).

    Args:
        model: the student.
        path: destination ``.safetensors``.
        metadata: provenance (e.g. the training command, the loss curve).

    Returns:
        The path written.
    """
    return save_checkpoint(path, model.state_dict(), KIND, json.loads(model.cfg.to_json()), metadata)


def shipped_path() -> Path:
    """Where the shipped supervised checkpoint lives."""
    return config.WEIGHTS_DIR / SHIPPED


def load_student(path: str | os.PathLike | None = None, device: str | torch.device | None = "cpu") -> Student:
    """Load a student checkpoint (default: the shipped one).

    Args:
        path: a ``.safetensors`` file written by :func:`save_student`; ``None`` for
            ``config.WEIGHTS_DIR / "student_supervised.safetensors"``.
        device: where to put it (``None``: :func:`course_lib.config.device`).

    Returns:
        A :class:`Student` in eval mode.

    Raises:
        CheckpointError: missing file, not a student checkpoint, or mismatching weights.
    """
    p = Path(path) if path is not None else shipped_path()
    if not p.is_file():
        hint = " (train it: python -m course_lib train-student)" if path is None else ""
        raise CheckpointError(f"student checkpoint {p} not found{hint}")
    tensors, info = load_checkpoint(p, KIND)
    model = Student(StudentConfig.from_json(json.dumps(info.config)))
    load_into(model, tensors, p)
    dev = config.device() if device is None else torch.device(device)
    return model.to(dev).eval()


__all__ = ["Student", "StudentConfig", "pathway_report", "read_instruction", "understood_line", "interpret",
           "closest_readings", "calibrate_readout", "FiLM", "film", "grid_from_head", "retouch", "retouch_fused", "curve_guide_fast", "explore", "save_student",
           "load_student", "read_metadata", "KIND", "shipped_path", "n_parameters", "CheckpointError",
           "CurveGuide", "LumaGuide"]
