"""The reader's training text: the world's training wording plus everyday wording (lesson 03).

The student's reader (text pathway and "understood as" heads) trains alone on a featurised bank of
instructions (:func:`course_lib.train.student.pretrain_text`). With ``--word-vectors`` it has a second
reader for clauses with a word outside the first one's vocabulary (:attr:`course_lib.student.StudentConfig.word_vectors`),
trained here (:func:`train_second_reader`) on a bank that :func:`reader_bank_texts` draws: the world's
training instructions (:func:`course_lib.world.instruction_bank`) and, for a share ``everyday`` of
them, edits worded with the reader's everyday patterns and objects
(:func:`course_lib.grammar.render_everyday_part`) or everyday requests that name no edit
(:data:`course_lib.grammar.NON_EDITS_EVERYDAY`). No held-out word is in any of it
(``tests/test_reader.py``). :func:`align_second_reader` gives it the first reader's threshold;
:func:`word_indicator_dropout` (``--indicator-dropout``) hides single word indicators.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import grammar, world
from ..student import StudentConfig, featurise, indicator_mask
from ..text import shared_encoder


def everyday_instruction(rng: np.random.Generator, p2: float = 0.25, p3: float = 0.1) -> tuple[str, list]:
    """One to three edits (as :func:`course_lib.world.sample_world_instruction`) in everyday wording."""
    names = list(world.WORLD_FAMILY)
    u = rng.random()
    n = 3 if u < p3 else 2 if u < p2 + p3 else 1
    chosen = rng.choice(len(names), size=n, replace=False)
    parts, edits = [], []
    for idx in chosen:
        fam = world.WORLD_FAMILY[names[int(idx)]]
        target = fam.targets[int(rng.integers(len(fam.targets)))]
        direction = 1 if rng.random() < 0.5 else -1
        strength = str(rng.choice(list(grammar.STRENGTHS)))
        parts.append(grammar.render_everyday_part(fam.name, direction, target, strength, rng))
        edits.append(world.WorldEdit(fam.name, direction * grammar.STRENGTHS[strength] * fam.unit, target))
    return grammar.compose(parts, rng, "train"), edits


def reader_bank_texts(n: int, rng: np.random.Generator, none_prob: float = 0.05,
                      everyday: float = 0.0) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """``n`` instructions for the reader and their readout targets ``(texts, P, S)``.

    ``everyday = 0`` is exactly :func:`course_lib.world.instruction_bank`; otherwise that bank's
    items are kept and a share ``everyday`` of them is replaced by everyday wording (a ``none_prob``
    share of those an everyday non-edit), drawn from a generator of its own."""
    texts, P, S = world.instruction_bank(n, rng, none_prob)
    if everyday <= 0:
        return texts, P, S
    g = np.random.default_rng([int(rng.integers(2 ** 31)), 1])
    for i in range(n):
        if g.random() >= everyday:
            continue
        if g.random() < none_prob:
            pool = grammar.NON_EDITS_EVERYDAY + grammar.NON_EDITS
            t, e = str(pool[int(g.integers(len(pool)))]), ""
        else:
            t, edits = everyday_instruction(g)
            e = world.encode_world_edits(edits)
        texts[i] = t
        P[i], S[i] = world.readout_targets(e)
    return texts, P, S


def reader_bank(n: int, seed: int, cfg: StudentConfig, none_prob: float = 0.05, everyday: float = 0.0) -> dict:
    """:func:`reader_bank_texts` featurised for ``cfg``: ``X`` (n, features), ``P``, ``S`` (n, K), ``texts``."""
    texts, P, S = reader_bank_texts(n, np.random.default_rng([30_000, seed]), none_prob, everyday)
    shared_encoder(cfg.text_encoder).for_open_wording()
    X = torch.cat([featurise(texts[k:k + 256], cfg) for k in range(0, n, 256)])
    return {"X": X, "P": P, "S": S, "texts": texts}


def word_indicator_dropout(x: torch.Tensor, cfg: StudentConfig, p: float, g: torch.Generator) -> torch.Tensor:
    """Hide each word indicator of ``x`` (featurised, (B, features)) with probability ``p``: a word
    whose indicator is hidden is read only through the sentence embedding and the word vectors."""
    if p <= 0 or not cfg.vocab:
        return x
    words = indicator_mask(cfg)  # (features,)
    keep = (torch.rand(x.shape, generator=g) >= p).to(x.dtype)
    return torch.where(words, x * keep, x)


def second_reader_noise(x: torch.Tensor, cfg: StudentConfig, sigma: float, g: torch.Generator) -> torch.Tensor:
    """Gaussian noise on what the second reader reads of featurised clauses ``x`` (B, features): the
    sentence embedding gets ``sigma / sqrt(D)`` per entry (a unit vector: noise of norm about ``sigma``)
    and the mean word vector ``sigma`` per entry (it is scaled to entries of about unit size), in clause
    slots only. A word it never trained on moves both away from where its training words put them; with
    the noise it learns regions of meaning rather than the exact points of its training words."""
    if sigma <= 0:
        return x
    D, V = cfg.text_dim, len(cfg.vocab)
    L = cfg.clauses
    slots = x.reshape(x.shape[0], L, cfg.slot_dim).clone()
    valid = slots[..., -1:] > 0 if L > 1 else torch.ones_like(slots[..., :1], dtype=torch.bool)
    slots[..., :D] += sigma * torch.randn(slots[..., :D].shape, generator=g) / D ** 0.5 * valid
    slots[..., D + V:D + V + D] += sigma * torch.randn(slots[..., D + V:D + V + D].shape, generator=g) * valid
    return slots.reshape(x.shape)


def train_second_reader(model, bank: dict, steps: int, loss_fn, lr: float = 1e-3, seed: int = 0,
                        batch: int = 64, noise: float = 0.0) -> list[float]:
    """Train the second reader (``cfg.word_vectors``: sentence embedding + word vectors) alone on a
    featurised bank, every clause through it; the first reader is untouched. It trains for fewer
    steps than the first: it is the one for wording it never saw, and a reader trained to
    certainty on the training wording refuses more of the rest (measured, ``data/results/reader.json``).

    ``loss_fn(logits, strength, present, target_strength)``: the reading loss
    (:func:`course_lib.train.student.readout_loss`). ``noise``: :func:`second_reader_noise`'s sigma.

    Returns:
        the readout losses, one per step.
    """
    params = list(model.text_mlp_b.parameters()) + list(model.readout_head_b.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(41_000 + seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(bank["X"]), (batch,), generator=g)
        x = second_reader_noise(bank["X"][idx], model.cfg, noise, g)
        loss = loss_fn(*model.understand(x, "b"), bank["P"][idx], bank["S"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def balanced_threshold(m_pos: torch.Tensor, m_neg: torch.Tensor) -> float:
    """The lowest presence threshold of best balanced accuracy ``(P[m_pos >= t] + P[m_neg < t]) / 2``
    (:func:`course_lib.student.calibrate_readout` takes the middle of the best; the lowest refuses
    the fewest real requests worded in a way the calibration texts are not)."""
    cands = torch.cat([m_pos, m_neg]).sort().values
    mids = torch.cat([cands[:1] / 2, (cands[1:] + cands[:-1]) / 2, (cands[-1:] + 1) / 2])
    bal = torch.stack([((m_pos >= t).float().mean() + (m_neg < t).float().mean()) / 2 for t in mids])
    return float(mids[int(torch.nonzero(bal >= bal.max() - 1e-9)[0])])


@torch.no_grad()
def align_second_reader(model, positives: list[str], negatives: list[str]) -> float:
    """Give the second reader the first's presence threshold: its own threshold ``t_b`` is calibrated
    on ``positives`` / ``negatives`` (:func:`balanced_threshold`) and its presence logits shifted by
    ``logit(t) - logit(t_b)`` (the last layer's bias), so ``cfg.readout_threshold`` serves both.
    Returns ``t_b``."""
    x_pos, x_neg = model.embed(positives), model.embed(negatives)
    m_pos = torch.sigmoid(model.understand(x_pos, "b")[0]).amax(1).cpu()
    m_neg = torch.sigmoid(model.understand(x_neg, "b")[0]).amax(1).cpu()
    t_b = balanced_threshold(m_pos, m_neg)
    t = model.cfg.readout_threshold
    shift = float(torch.logit(torch.tensor(t)) - torch.logit(torch.tensor(t_b)))
    K = len(model.cfg.readout)
    model.readout_head_b[-1].bias[:K] += shift
    return t_b
