"""Supervised training of the student on exact (source, instruction, target) triples (lesson 03).

    loss = mean((student(source, embed(instruction)) - target)^2) + tv_weight * TV(grid)
           [+ readout_weight * (BCE(presence) + squared error of the named edits' strengths)]
           [+ locality_weight * mean(w_out * (student - target)^2)]

on the photo collection (:class:`course_lib.world.RetouchWorld`: training photos, training
wording; the bracket when the student has "understood as" heads), with Adam and a cosine learning-rate schedule. It is written with 🤗 Accelerate:
``Accelerator`` wraps the model and optimiser, so the same file runs as one CPU process
(``python -m course_lib train-student``) and on GPUs (``accelerate launch -m
course_lib.train.student ...``; ``--batch-size`` is per process and the processes split each
step's items, see :mod:`course_lib.train.common`).

Everything is seeded, and item ``i`` of the data is a pure function of
``(seed, i)``: in one process step ``k`` always sees items ``k B .. (k + 1) B - 1``. Training is
therefore resumable exactly: every ``--save-every`` steps it writes the weights
(``OUT``, safetensors with the config in its metadata) and, next to it,
``OUT.state/`` with ``optimizer.safetensors`` (Adam's moments, flattened) and
``state.json`` (step, loss history, arguments). ``--resume`` continues from there.
No pickle is written or read.

The shipped checkpoint ``data/weights/student_supervised.safetensors`` is one resumable run of
its recipe (``course_lib/recipes/student_supervised.yaml``, ``python -m course_lib reproduce
student_supervised``), the learned global-affine baseline the same recipe
with ``--global-affine`` (``student_global_affine.yaml``):

1. stage 0 (``--text-pretrain-steps``): the text pathway and the "understood as" heads alone, on
   a featurised bank of training instructions (:func:`pretrain_text`);
2. the image pathway reads only the *edit code* ``[p, p * s]`` of the heads
   (``--film-reads code``), the true code for 80 % of the items (``--code-forcing``, teacher
   forcing) and the student's own 0/1 reading for the rest; ``--coords`` lets its local path
   know where each cell is. The heads keep training on the same batches (``--readout-weight``);
3. at the end the presence threshold is chosen on validation wording (:func:`calibration_texts`);
4. ``--reader-only`` (:func:`retrain_reader`): a wider reader that reads the instruction clause
   by clause (``--clauses 4``, :func:`course_lib.student.split_clauses`), trained alone for
   longer, replaces the first; the image pathway is untouched (the wording study measured each
   change alone).
5. ``--image-only --locality-weight`` (:func:`locality_loss`): the image pathway fine-tuned alone, the reader
   frozen, with the squared error once more where the target leaves the photo unchanged (``w_out``), so that
   region and colour-range edits leak less outside what they name.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from .. import config
from ..bilateral import grid_tv
from ..world import READOUT_LABELS, RetouchWorld, instruction_bank, readout_targets
from ..grammar import non_edit_text, training_vocabulary
from ..student import (CheckpointError, Student, StudentConfig, calibrate_readout, edit_code, featurise,
                       indicator_mask, load_student, read_metadata, save_student)
from ..text import shared_encoder
from .reader import align_second_reader, reader_bank, train_second_reader, word_indicator_dropout
from .common import (Names, RunOptions, run_command, Shard, is_main_process, load_optimizer_tensors, lr_at,
                     mean_over_processes, optimizer_tensors, parse_settings, read_state, recipe_metadata, run_option,
                     save_on_main, set_lr, setting, state_dir, summary, write_state)

@dataclasses.dataclass
class TrainArgs(RunOptions):
    """Settings of :func:`train` and of the command (one option per field; ``batch_size`` is per process)."""

    steps: int = run_option("steps", 4000, fast=40)
    batch_size: int = run_option("batch_size", 16)
    save_every: int = run_option("save_every", 250)
    size: int = setting(128, "training crop side (pixels)", fast=64)
    net_size: int = setting(128, "side of the low-resolution copy the network sees", fast=64)
    grid_size: int = setting(16, "spatial cells of the grid per side", fast=8)
    luma_bins: int = setting(8, "luma bins of the grid")
    channels: int = setting(64, "width of the image pathway", fast=32)
    lr: float = setting(2e-3, "Adam learning rate (cosine to 5 %% of it)")
    warmup: int = setting(100, "linear warm-up steps", fast=5)
    tv_weight: float = setting(1e-4, "total-variation weight on the predicted grid")
    compose_prob: float = setting(0.3, "share of items with two or three edits")
    families: Names | None = setting(None, "comma-separated edit families to train on (default: all)")
    text_encoder: str = setting("minilm", "the sentence encoder")
    global_affine: bool = setting(False, "train the global-affine baseline (one 3x4 transform per photo) instead of "
                                         "the grid")
    act: Literal["leaky", "relu"] = setting("leaky", "image pathway activation")
    readout_weight: float = setting(0.1, "weight of the 'understood as' heads' loss (0: no heads)")
    none_prob: float = setting(0.05, "share of requests that name no edit (target = the photo)")
    workers: int = setting(0, "background processes that make the batches (0: none; 1 suits a 2-core CPU)")
    text_layers: int = setting(1, "layers of the text adapter MLP")
    film_hidden: int = setting(128, "width of the text adapter MLP")
    vocab: bool = setting(True, "also read the training words; --no-vocab: the sentence embedding only")
    word_dropout: float = setting(0.3, "share of instructions whose word indicators are hidden in training")
    text_pretrain_steps: int = setting(0, "stage 0: train the text pathway alone for this many steps on a bank of "
                                          "instructions first")
    text_bank: int = setting(20000, "instructions in the stage-0 bank")
    film_reads: Literal["text", "code"] = setting("text", "what the image pathway reads: the text features and edit "
                                                          "code, or the edit code alone")
    code_forcing: float = setting(1.0, "with --film-reads code: share of items whose true edit code the image "
                                       "pathway reads in training (the rest read the student's own)")
    coords: bool = setting(False, "the local path also reads where each cell is (CoordConv maps y, x, r^2)")
    clauses: int = setting(1, "with --film-reads code: read up to this many clauses of an instruction one at a time "
                              "(1: the whole sentence at once)")
    init: str | None = setting(None, "fine-tune: start from this student checkpoint (its architecture; fresh "
                                     "optimiser)")
    reader_only: bool = setting(False, "with --init: keep its image pathway and train only a new text reader "
                                       "(--film-hidden, --text-layers, --clauses, --text-pretrain-steps, --text-bank, "
                                       "--word-dropout); needs --film-reads code")
    word_vectors: bool = setting(False, "a second reader for clauses with a word outside the training vocabulary: "
                                        "the sentence embedding and the mean embedding of the words, each embedded "
                                        "alone (words it never trained on land near known ones)")
    second_reader_steps: int = setting(4000, "with --word-vectors: steps of the second reader (alone, on the bank)")
    everyday: float = setting(0.0, "with --word-vectors: share of the second reader's bank in the reader's everyday "
                                   "wording (grammar.EVERYDAY)")
    indicator_dropout: float = setting(0.0, "hide each word indicator of the reader's bank with this probability")
    second_reader_noise: float = setting(0.0, "with --word-vectors: Gaussian noise on what the second reader reads in "
                                              "training (train.reader.second_reader_noise), so that a new word's "
                                              "embedding lands in a region it learnt")
    second_margin: float = setting(0.0, "with --word-vectors: when reading, the second reader keeps only the labels "
                                        "within this presence-logit margin of its most likely one (0: all; "
                                        "StudentConfig.second_margin)")
    locality_weight: float = setting(0.0, "weight of the locality term: the squared error once more on the pixels "
                                          "the target leaves unchanged (outside the asked region or colour range; "
                                          "locality_loss)")
    locality_tol: float = setting(2 / 255, "a pixel counts as unchanged when no channel of target - source moves "
                                           "more than this")
    image_only: bool = setting(False, "with --init: train only the image pathway; the reader (text pathway, "
                                      "'understood as' heads, second reader, threshold) stays as it is")
    route: str = setting("blind", "with --word-vectors: which clauses with a word outside the vocabulary the second "
                                  "reader reads: 'blind' (the first reader reads nothing there) or 'unsure' (the first "
                                  "is not sure there; StudentConfig.route)")


def schedule(step: int, args: TrainArgs) -> float:
    """Linear warm-up then cosine decay to 5 % of ``lr`` (:func:`course_lib.train.common.lr_at`)."""
    return lr_at(step, args.lr, args.warmup, args.steps, "cosine", floor=0.05)


def training_data(args: TrainArgs) -> RetouchWorld:
    """The run's items: training photos and wording (:class:`course_lib.world.RetouchWorld`, with
    ``none_prob`` of requests that name no edit), item ``i`` a pure function of ``(seed, i)``."""
    return RetouchWorld(split="train", wording="train", size=args.size, length=2**31 - 1, seed=args.seed,
                        p2=args.compose_prob * 0.7, p3=args.compose_prob * 0.3, families=args.families,
                        p_none=args.none_prob)


class Embed:
    """Batch transform: add ``text`` (the instructions as the student reads them,
    :func:`course_lib.student.featurise`) and, for world items, the readout targets ``present``
    and ``strength`` (B, K). Runs in the data workers."""

    def __init__(self, cfg: StudentConfig, readout: bool) -> None:
        self.cfg, self.readout = cfg, readout

    def __call__(self, batch: dict) -> dict:
        shared_encoder(self.cfg.text_encoder).for_open_wording()  # nearly every training sentence is new
        batch["text"] = featurise(batch["instruction"], self.cfg)  # (B, text_dim [+ V])
        if self.readout:
            present, strength = zip(*(readout_targets(e) for e in batch["edits"]))
            batch["present"], batch["strength"] = torch.stack(present), torch.stack(strength)  # (B, K)
        return batch


def word_dropout(text: torch.Tensor, cfg: StudentConfig, p: float, seed: int, step: int,
                 shard: Shard | None = None) -> torch.Tensor:
    """Hide the word indicators of a random ``p`` of the rows, so the student also learns to read
    the sentence embedding alone - all it has for words it never saw.

    The mask is drawn for the step's whole global batch from ``(seed, step)`` and this process
    takes its rows (``shard``), so several processes hide exactly what one process would.
    """
    if not cfg.vocab or p <= 0:
        return text
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    drawn = torch.rand(shard.global_batch if shard else text.shape[0], generator=g)
    keep = ((shard.take(drawn) if shard else drawn) >= p).to(text.dtype).to(text.device)  # (B,)
    words = indicator_mask(cfg).to(text.device)  # (features,)
    # hidden rows keep everything but their word indicators (in every clause slot)
    return torch.where(words, text * keep[:, None], text)


def forced_code(model: Student, text: torch.Tensor, present: torch.Tensor, strength: torch.Tensor, p: float,
                seed: int, step: int, shard: Shard | None = None) -> torch.Tensor:
    """Teacher forcing of the edit code (``film_reads == "code"``): the true code
    ``[present, present * strength]`` for a random ``p`` of the rows, the code the student reads
    itself (0/1 at the readout threshold, detached) for the rest, so the image pathway learns
    edits from exact codes and also from its own readings, mistakes included. The rows are drawn per global batch from
    ``(seed, step)`` as in :func:`word_dropout`.

    Returns:
        (B, 2K).
    """
    true = edit_code(present, strength)  # (B, 2K)
    if p >= 1:
        return true
    with torch.no_grad():
        logits, s = model.understand(text)
    g = torch.Generator().manual_seed(seed * 1_000_033 + step)
    drawn = torch.rand(shard.global_batch if shard else text.shape[0], generator=g)
    m = ((shard.take(drawn) if shard else drawn) < p).to(true.dtype).to(true.device)[:, None]  # (B, 1)
    own = (torch.sigmoid(logits) >= model.cfg.readout_threshold).to(true.dtype)  # as at inference
    return m * true + (1 - m) * edit_code(own, s)


def readout_loss(logits: torch.Tensor, pred: torch.Tensor, present: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """The "understood as" heads' loss: BCE on presence + squared error of the named edits' strengths.

    Args:
        logits, pred: (B, K) from :meth:`course_lib.student.Student.understand`.
        present, strength: (B, K) from :func:`course_lib.world.readout_targets`.
    """
    # L = BCE(sigmoid(logits), present) + mean_b sum_{k named in b} (s_bk - s*_bk)^2
    # (both are means over instructions, so several processes' average is the global batch's loss)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, present)
    return bce + ((pred - strength).pow(2) * present).sum(1).mean()


def locality_loss(pred: torch.Tensor, target: torch.Tensor, source: torch.Tensor, tol: float) -> torch.Tensor:
    """The squared error on the pixels that the edits leave unchanged (outside the asked region or colour range,
    or everywhere for a request that names no edit), so that an edit's change does not leak there.

    Args:
        pred, target, source: (B, 3, S, S) in [0, 1].
        tol: a pixel is unchanged when no channel of ``target - source`` moves more than this.

    Returns:
        a scalar >= 0, a mean over all pixels (0 when ``pred == target`` wherever the target is unchanged).
    """
    # w_out = [max_c |target - source| <= tol]: 1 where the target leaves the photo as it is  (B, 1, S, S)
    w_out = ((target - source).abs().amax(1, keepdim=True) <= tol).to(pred.dtype)
    # L_loc = mean w_out (pred - target)^2
    return (w_out * (pred - target).pow(2)).mean()


#: The reader's weights (text pathway, "understood as" heads and the second reader); ``--image-only`` keeps them.
READER_PREFIXES = ("text_mlp.", "readout_head.", "text_mlp_b.", "readout_head_b.")


def save_training_state(out: Path, model: Student, opt: torch.optim.Optimizer, step: int, losses: list[float],
                        args: TrainArgs, processes: int = 1) -> None:
    """Write ``out`` (weights) and ``out.state/`` (optimiser, step, losses): resumable."""
    every = max(1, len(losses) // 200)
    curve = [sum(losses[i:i + every]) / len(losses[i:i + every]) for i in range(0, len(losses), every)]
    meta = {"trained_steps": str(step), **recipe_metadata("train-student", args), "processes": str(processes),
            # the training MSE, averaged over groups of `loss_curve_every` steps
            "loss_curve": json.dumps([round(v, 7) for v in curve]), "loss_curve_every": str(every)}
    save_student(model, out, metadata=meta)
    tensors, opt_meta = optimizer_tensors(opt)
    write_state(state_dir(out), tensors, {"optimizer": opt_meta},
                {"step": step, "losses": losses, "args": dataclasses.asdict(args)})


def identity_losses(args: TrainArgs, steps: int | None = None) -> list[float]:
    """The MSE of doing nothing (output = source) on each training batch of a one-process run with ``args``.

    Batches differ in difficulty (a strong exposure edit costs more than a slight tint), so
    the training loss divided by this is the fairer curve to watch: it starts at 1.
    """
    ds, shard = training_data(args), Shard(args.batch_size)
    out = []
    for k in range(args.steps if steps is None else steps):
        items = [ds[i] for i in shard.items(k)]
        out.append(float(torch.stack([(it["source"] - it["target"]).pow(2).mean() for it in items]).mean()))
    return out


def train(args: TrainArgs, resume: bool = False, callback: Callable[[int, float], None] | None = None,
          model: Student | None = None, log_every: int = 50) -> tuple[Student, list[float]]:
    """Train (or continue training) a student.

    Args:
        args: hyper-parameters; ``args.out`` (a ``.safetensors`` path) enables checkpoints.
        resume: continue from ``args.out`` and ``args.out.state/``.
        callback: called as ``callback(step, loss)`` after every step.
        model: start from this model instead of a fresh one (ignored when resuming).
        log_every: how often the progress bar shows the running loss.

    Returns:
        ``(model, losses)``: the trained student (unwrapped, on its device, eval mode) and the
        per-step training losses (averaged over processes).
    """
    from accelerate import Accelerator

    accelerator = Accelerator()
    config.seed_everything(args.seed)
    readout = args.readout_weight > 0
    cfg = StudentConfig(net_size=args.net_size, grid_size=args.grid_size, luma_bins=args.luma_bins,
                        channels=args.channels, text_encoder=args.text_encoder,
                        global_affine=args.global_affine, act=args.act, text_layers=args.text_layers,
                        film_hidden=args.film_hidden,
                        vocab=tuple(sorted(training_vocabulary())) if args.vocab else (),
                        readout=READOUT_LABELS if readout else (), film_reads=args.film_reads, coords=args.coords,
                        clauses=args.clauses)
    out = Path(args.out) if args.out else None
    start, losses = 0, []
    if resume:
        if out is None:
            raise FileNotFoundError("nothing to resume: no output checkpoint given")
        opt_tensors, opt_meta, st = read_state(state_dir(out))
        start, losses = int(st["step"]), list(st["losses"])
        model = load_student(out, device="cpu")
    fresh = model is None
    model = model if model is not None else Student(cfg)
    if fresh and args.text_pretrain_steps and model.cfg.readout:
        pretrain_text(model, args)  # stage 0: the text pathway alone, on a bank of instructions
    model.train()
    if args.image_only:  # fine-tune the image pathway alone: the reader is frozen
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(READER_PREFIXES))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    if resume:
        load_optimizer_tensors(opt, opt_tensors, opt_meta["optimizer"])
    readout = readout and bool(model.cfg.readout)
    ds = training_data(args)
    # this process's share of each step: batch_size of the batch_size x num_processes items
    shard = Shard.of(accelerator, args.batch_size)
    model, opt = accelerator.prepare(model, opt)
    bar = config.progress(total=args.steps, initial=start, desc="train-student",
                          disable=config.is_fast() or not accelerator.is_local_main_process)
    batches = shard.batches(ds, start, args.steps, args.workers, Embed(accelerator.unwrap_model(model).cfg, readout))
    for step, batch in zip(range(start, args.steps), batches):
        set_lr(opt, schedule(step, args))
        text = batch["text"].to(accelerator.device)  # (B, text_dim [+ V])
        text = word_dropout(text, accelerator.unwrap_model(model).cfg, args.word_dropout, args.seed, step, shard)
        src, tgt = batch["source"].to(accelerator.device), batch["target"].to(accelerator.device)  # (B, 3, S, S)
        code = None
        if readout and accelerator.unwrap_model(model).cfg.film_reads == "code" and args.code_forcing > 0:
            code = forced_code(accelerator.unwrap_model(model), text, batch["present"].to(text.device),
                               batch["strength"].to(text.device), args.code_forcing, args.seed, step, shard)
        pred, grid, *read = model(src, text, return_grid=True, return_readout=readout,
                                  code=code)  # (B, 3, S, S), (B, 12, D, G, G)
        # L = mean (pred - target)^2 + lambda TV(grid) [+ lambda_loc L_loc] [+ w L_readout]
        mse = (pred - tgt).pow(2).mean()
        loss = mse + args.tv_weight * grid_tv(grid)
        if args.locality_weight > 0:
            loss = loss + args.locality_weight * locality_loss(pred, tgt, src, args.locality_tol)
        if readout and not args.image_only:
            loss = loss + args.readout_weight * readout_loss(*read[0], batch["present"].to(text.device),
                                                             batch["strength"].to(text.device))
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)  # several processes: gradients averaged over them
        opt.step()
        losses.append(mean_over_processes(accelerator, {"mse": float(mse.detach())})["mse"])
        if callback is not None:
            callback(step + 1, losses[-1])
        bar.update(1)
        if (step + 1) % log_every == 0:
            bar.set_postfix(mse=f"{sum(losses[-log_every:]) / log_every:.5f}")
        if out is not None:
            save_on_main(accelerator, step + 1, args.steps, args.save_every,
                         lambda: save_training_state(out, accelerator.unwrap_model(model), opt, step + 1, losses,
                                                     args, accelerator.num_processes))
    bar.close()
    accelerator.wait_for_everyone()
    final = accelerator.unwrap_model(model)
    final.eval()
    if readout and not args.image_only and accelerator.is_main_process:
        # the "understood as" threshold, chosen on validation wording (never the test's)
        final.cfg.readout_threshold = calibrate_readout(final, *calibration_texts(args.seed))
        if out is not None:
            save_training_state(out, final, opt, args.steps, losses, args, accelerator.num_processes)
    return final, losses


def text_bank(n: int, seed: int, cfg: StudentConfig, none_prob: float = 0.05, everyday: float = 0.0) -> dict[str, torch.Tensor]:
    """``n`` training instructions (training wording, a ``none_prob`` share naming no edit), featurised
    once: ``X`` (n, text_dim + V), readout targets ``P`` and ``S`` (n, K). Encoding is the cost
    (about 3 minutes for 20,000 on one CPU thread); training on the bank is then cheap."""
    if everyday > 0:  # the reader's everyday wording mixed in (course_lib.train.reader)
        return reader_bank(n, seed, cfg, none_prob, everyday)
    texts, P, S = instruction_bank(n, np.random.default_rng([30_000, seed]), none_prob)
    shared_encoder(cfg.text_encoder).for_open_wording()
    X = torch.cat([featurise(texts[k:k + 256], cfg) for k in range(0, n, 256)])
    return {"X": X, "P": P, "S": S}


def pretrain_text(model: Student, args: TrainArgs, batch: int = 64, bank: dict | None = None) -> list[float]:
    """Stage 0: train the text MLP and the "understood as" heads alone on a bank of instructions.

    Reading the instruction is the slow part of learning the world (with the edits given as
    the text, the image network learns several times faster), and it needs no image: on a
    featurised bank (:func:`text_bank`) thousands of steps take seconds. Deterministic given
    ``args.seed``; the other weights are untouched. ``bank``: an already featurised
    :func:`text_bank` (the wording study trains several variants on one).

    Returns:
        the readout losses, one per step.
    """
    bank = bank if bank is not None else text_bank(args.text_bank, args.seed, model.cfg, args.none_prob,
                                                   getattr(args, "everyday", 0.0))
    params = list(model.text_mlp.parameters()) + list(model.readout_head.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    g = torch.Generator().manual_seed(40_000 + args.seed)
    losses = []
    for step in config.progress(range(args.text_pretrain_steps), desc="text pathway", disable=config.is_fast()):
        idx = torch.randint(0, len(bank["X"]), (batch,), generator=g)
        x = word_dropout(bank["X"][idx], model.cfg, args.word_dropout, 50_000 + args.seed, step)
        if getattr(args, "indicator_dropout", 0.0) > 0:
            x = word_indicator_dropout(x, model.cfg, args.indicator_dropout, g)
        loss = readout_loss(*model.understand(x), bank["P"][idx], bank["S"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def retrain_reader(model: Student, args: TrainArgs) -> tuple[Student, list[float]]:
    """Give a student that reads the edit code (``film_reads == "code"``) a new reader.

    The image pathway sees the instruction only through the code, so the text pathway (text MLP
    and "understood as" heads) can be replaced without touching it: a fresh one with
    ``args.film_hidden`` / ``args.text_layers`` is trained alone (:func:`pretrain_text`,
    ``args.text_pretrain_steps`` steps on a ``args.text_bank`` bank), the image weights are copied
    unchanged, and the threshold is calibrated again on validation wording.

    Returns:
        ``(new_student, reader_losses)``.
    """
    if model.cfg.film_reads != "code":
        raise ValueError("--reader-only needs a student whose image pathway reads the edit code "
                         "(trained with --film-reads code)")
    cfg = dataclasses.replace(model.cfg, film_hidden=args.film_hidden, text_layers=args.text_layers,
                              clauses=args.clauses, word_vectors=args.word_vectors, route="blind")
    config.seed_everything(args.seed)
    new = Student(cfg)
    # the image pathway only (a second reader of the init is not kept: both readers train afresh)
    keep = {k: v for k, v in model.state_dict().items()
            if not k.startswith(READER_PREFIXES)}
    missing, unexpected = new.load_state_dict(keep, strict=False)
    assert not unexpected and all(k.startswith(("text_mlp", "readout_head")) for k in missing), missing
    # the first reader: the world's training wording, its words (as before the second reader existed)
    losses = pretrain_text(new, dataclasses.replace(args, everyday=0.0),
                           bank=text_bank(args.text_bank, args.seed, new.cfg, args.none_prob))
    if cfg.word_vectors:  # the reader of clauses with a new word, also on everyday wording (course_lib.train.reader)
        bank = text_bank(args.text_bank, args.seed, new.cfg, args.none_prob, args.everyday)
        train_second_reader(new, bank, args.second_reader_steps, readout_loss, args.lr, args.seed,
                            noise=args.second_reader_noise)
    new.eval()
    new.cfg.readout_threshold = calibrate_readout(new, *calibration_texts(args.seed))
    if cfg.word_vectors:
        align_second_reader(new, *calibration_texts(args.seed))
        new.cfg.route = args.route  # both readers trained and calibrated as before; this routing reads with them
        new.cfg.second_margin = args.second_margin
    return new, losses


def calibration_texts(seed: int = 0, n: int | None = None) -> tuple[list[str], list[str]]:
    """Validation instructions (validation photos' crops, training wording, a fresh seed) and as
    many requests that name no edit, for :func:`course_lib.student.calibrate_readout` (``n``:
    400 each, 60 in FAST mode)."""
    n = n or config.pick(fast=60, full=400)
    pos = RetouchWorld(split="val", wording="train", size=32, length=n, seed=10_000 + seed)
    rng = np.random.default_rng([20_000, seed])
    return [pos[i]["instruction"] for i in range(n)], [non_edit_text(rng, "train") for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    args = parse_settings(TrainArgs, argv, "python -m course_lib train-student",
                          "Train the text-conditioned grid predictor with supervised L2 on the synthetic retouch pairs "
                          "(training photos, training wording). Resumable; runs under 'accelerate launch' unchanged. "
                          "The shipped student: python -m course_lib reproduce student_supervised",
                          "student.safetensors")

    def run():
        if args.reader_only:
            if not args.init:
                raise ValueError("--reader-only needs --init CHECKPOINT (the student whose reader is replaced)")
            out = Path(args.out)
            if out.exists():
                raise FileExistsError(f"{out} exists; choose another --out (nothing is overwritten)")
            src = load_student(args.init, device="cpu")
            model, losses = retrain_reader(src, args)
            # the image pathway's record (loss curve, steps) stays; the recipe is this run's, its init's inside
            meta = {k: v for k, v in read_metadata(args.init).items()
                    if k not in ("format", "kind", "config", "recipe", "recipe_file")}
            meta.update(recipe_metadata("train-student", args))
            save_student(model, out, metadata=meta)
            return model, []
        init = None
        if args.image_only and not args.init:
            raise ValueError("--image-only needs --init CHECKPOINT (the student whose image pathway is fine-tuned)")
        if args.init and not args.resume:
            init = load_student(args.init, device="cpu")
            args.global_affine = init.cfg.global_affine
            if args.image_only and init.cfg.film_reads != "code":
                raise ValueError("--image-only needs a student whose image pathway reads the edit code "
                                 "(trained with --film-reads code)")
        return train(args, resume=args.resume, model=init)

    result, seconds, code = run_command(run, (FileNotFoundError, FileExistsError, ValueError, CheckpointError))
    if code:
        return code
    model, losses = result
    if losses and is_main_process():
        print(summary("train-student", losses, seconds, "mse", args.out, ".5f", most=100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
