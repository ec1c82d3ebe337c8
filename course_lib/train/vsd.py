"""``python -m course_lib train-vsd``: distil the teacher into the grid student with VSD (lesson 05).

Per step (one batch of training photos and instructions; the data's ground-truth targets
are **not** used for training, only logged as a monitor):

1. the student edits the photos in one pass; its output is resized to the teacher's working
   size and mapped to teacher space: ``x0`` (:func:`course_lib.distill.to_teacher_space`);
2. ``grad = w(t) (eps_teacher_cfg(x_t) - eps_fake(x_t))`` (:func:`course_lib.distill.vsd_grad`),
   applied through ``0.5 ||x0 - sg(x0 - grad)||^2`` (:func:`course_lib.distill.vsd_loss`);
   one Adam step on the student;
   with ``--align-weight λ > 0`` the student's loss also gets ``λ · InfoNCE`` between its
   edits and their instructions from the frozen edit encoder (lesson 06,
   :mod:`course_lib.align`);
3. ``fake_steps`` Adam steps on the fake score's LoRA with its denoising loss on the
   student's (detached) samples (:func:`course_lib.distill.fake_score_loss`).

Update ratio: ``fake_steps`` fake-score updates per student update (default 1, as
threestudio; DMD2 uses more).

The recipe knobs for VSD **from scratch** (``--init identity``), each off by default so
the pure-VSD run stays the ablation: ``--noise-samples K`` (K draws of ``(t, ε)`` per item, their
gradients averaged: less one-sample variance), ``--ema-decay`` (the checkpoint holds an EMA of the
student), ``--t-anneal`` (``t_max`` falls linearly to a lower value over the run, as
ProlificDreamer/DreamTime do) and ``--regress-weight λ`` (DMD's regression term:
``λ ½||student(x) − teacher_50(x)||²`` per image (the units of the VSD surrogate) on a fixed set of the teacher's *own* 50-step edits of
training photos, :func:`teacher_edits`: teacher outputs, never ground truth).

**No paired targets**: the training items pass through :class:`WithoutTargets`, which drops the
data's ground truth (``target``, ``edits``) before the trainer sees them. The only ground truth
in a run is the *monitor* (``mse_gt`` / ``mse_id`` in the log): a fixed batch of validation photos
scored without gradients and never fed back. Seeded; item ``i`` of the data is a pure function of
``(seed, i)``; ``--resume`` continues exactly from ``OUT`` and ``OUT.state/`` (student
weights, LoRA weights, both optimisers, step and logs, all safetensors/JSON, no pickle).
Written with 🤗 Accelerate, so ``accelerate launch -m course_lib.train.vsd ...`` runs it on
GPUs unchanged: ``--batch-size`` is per process, the processes split each step's items and
random draws, the student's gradients are averaged by DDP and the fake score's by
:func:`course_lib.train.common.average_gradients`, so every process keeps the same fake score.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import safetensors.torch
import torch

from .. import config
from ..align import alignment_loss, load_edit_clip
from ..bilateral import grid_tv
from ..data import resize
from ..world import READOUT_LABELS, RetouchWorld, instruction_bank
from ..distill import (VSDConfig, fake_score_loss, load_lora_state_dict, lora_parameters, lora_state_dict,
                       make_fake_score, regression_loss, sample_timesteps, to_teacher_space, vsd_grad, vsd_loss)
from ..student import Student, StudentConfig, edit_code, load_student, save_student, shipped_path
from ..teacher import TEACHER_HELP, TEACHER_PATH_HELP, TIERS, frozen_dtype, load_teacher
from .student import readout_loss
from .common import (Floats, Ints, RunOptions, run_command, settings_error, Shard, average_gradients, gather_with_grad, is_main_process,
                     load_optimizer_tensors, mean_over_processes, optimizer_tensors, parse_settings, read_state,
                     recipe_metadata, run_option, save_on_main, setting, state_dir, strip_prefix, sync_parameters,
                     with_prefix, write_state)


@dataclasses.dataclass
class VSDArgs(RunOptions):
    """Settings of :func:`train` and of the command (one option per field; ``batch_size`` is per process)."""

    steps: int = run_option("steps", 1000, fast=20)
    batch_size: int = run_option("batch_size", 8, fast=4)
    size: int = setting(64, "training crop side (pixels)")
    init: str = setting("supervised", "'supervised' (the shipped student), 'identity' (a fresh one) or a checkpoint "
                                      "path")
    student: Literal["film", "reader"] = setting(
        "film", "a fresh student (--init identity): 'film' (FiLM on its own text features) or 'reader' (its readout "
                "heads first learn the teacher's reading of instructions, texts only; its image pathway reads that "
                "edit code; needs the embedded teacher)")
    reader_steps: int = setting(3000, "--student reader: steps distilling the teacher's reading")
    reader_bank: int = setting(20000, "--student reader: training-wording instructions (texts only) for those steps")
    grid_size: int = setting(16, "spatial grid cells per side of a fresh student (--init identity only)")
    lr: float = setting(1e-4, "student learning rate")
    fake_lr: float = setting(1e-3, "fake-score LoRA learning rate")
    fake_steps: int = setting(1, "fake-score updates per student update")
    t_range: Ints = setting(Ints((20, 980)), "timestep range t_min,t_max")
    guidance: Floats | None = setting(None, "teacher s_img,s_txt (default: the teacher's)")
    weighting: Literal["sds", "dmd"] = setting("sds", "w(t): 1 - alpha_bar (sds) or DMD's per-sample normalisation")
    lora_rank: int = setting(8, "rank of the fake score's LoRA")
    lora_alpha: float | None = setting(None, "the LoRA's alpha (default: 4 x its rank)")
    teacher: str = setting("embedded", TEACHER_HELP, choices=list(TIERS))
    teacher_path: str | None = setting(None, TEACHER_PATH_HELP)
    tv_weight: float = setting(1e-4, "total-variation weight on the predicted grid (as supervised; 0 = off)")
    align_weight: float = setting(0.0, "weight of the prompt-alignment InfoNCE loss (lesson 06; 0 = VSD only)")
    align_path: str | None = setting(None, "edit encoder checkpoint (default: the shipped one)")
    # the recipe for VSD from scratch (each off by default: the pure-VSD ablation)
    noise_samples: int = setting(1, "(t, noise) draws per item, their gradients averaged")
    ema_decay: float = setting(0.0, "keep an EMA of the student and save it (0 = off)")
    t_anneal: int = setting(0, "over this many steps t_max falls linearly to --t-anneal-to (0 = off)")
    t_anneal_to: int = setting(500, "where --t-anneal ends")
    regress_weight: float = setting(0.0, "DMD's regression on the teacher's own multi-step edits of training photos "
                                         "(teacher outputs, never ground truth; 0 = pure VSD)")
    vsd_weight: float = setting(1.0, "weight of the VSD gradient (0 with --regress-weight: the regression alone, "
                                     "an ablation)")
    regress_items: int = setting(256, "size of the teacher-edit set")
    regress_batch: int = setting(8, "teacher edits per step and process")
    regress_steps: int = setting(50, "the teacher's DDIM steps per edit")
    monitor_items: int = setting(16, "validation items of the monitor (logged, never trained on)")

    @property
    def vsd(self) -> VSDConfig:
        """The knobs of the VSD gradient (:class:`course_lib.distill.VSDConfig`)."""
        t_min, t_max = self.t_range
        return VSDConfig(t_min=t_min, t_max=t_max, guidance=tuple(self.guidance) if self.guidance else None,
                         weighting=self.weighting, lora_rank=self.lora_rank,
                         lora_alpha=self.lora_alpha if self.lora_alpha is not None else 4.0 * self.lora_rank,
                         fake_steps=self.fake_steps)


def _student(args: VSDArgs, teacher=None) -> Student:
    if args.init == "supervised":
        return load_student(shipped_path(), device="cpu")
    if args.init == "identity" and args.student == "reader":
        student = reader_student(teacher, args.grid_size)
        info = distil_reading(student, teacher, args.reader_bank, args.reader_steps, args.seed)
        if is_main_process():
            print(f"train-vsd: the student's heads read as the teacher's (every label's presence) on "
                  f"{info['agreement']:.1%} of 1024 other training-wording instructions")
        return student
    if args.init == "identity":
        # a fresh student: its head starts at zero, so its first edit is the identity; it also
        # reads coordinates (graduated and radial filters need them)
        return Student(StudentConfig(net_size=128, grid_size=args.grid_size, act="leaky", coords=True))
    return load_student(args.init, device="cpu")


def reader_student(teacher, grid_size: int = 16) -> Student:
    """A fresh student that reads instructions as the teacher does (``--student reader``).

    Its readout heads have the labels of the teacher's :class:`course_lib.teacher.InstructionReader`
    and read the same features (sentence embedding + the reader's vocabulary, one clause); its image
    pathway reads only the edit code ``[p, p·s]`` (``film_reads="code"``), as the supervised world
    student does, and the coordinates (graduated and radial filters). Head at zero: the identity.

    Raises:
        ValueError: the teacher has no reader with readout heads (only the world teacher has).
    """
    reader = getattr(teacher, "reader", None)
    if reader is None or reader.labels != len(READOUT_LABELS):
        raise ValueError("--student reader needs a teacher whose instruction reader has the world's readout heads "
                         "(--teacher world)")
    return Student(StudentConfig(net_size=128, grid_size=grid_size, act="leaky", coords=True, readout=READOUT_LABELS,
                                 vocab=tuple(reader.vocab), film_reads="code", film_hidden=256, clauses=1))


@torch.no_grad()
def teacher_reading(teacher, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's reading of instructions: ``features`` (N, 384 + V) (:meth:`Student.embed` of a
    :func:`reader_student`, the reader's own features) -> presence ``p`` in [0, 1] and signed strength
    ``s``, (N, K) each, float32 on the CPU."""
    r = teacher.reader
    _, (logits, strength) = r(features.to(next(r.parameters())), return_readout=True)
    return torch.sigmoid(logits).float().cpu(), strength.float().cpu()


def teacher_code(teacher, features: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The edit code the student's image pathway reads in training: ``[1(p ≥ τ), 1(p ≥ τ)·s]`` of
    the teacher's reading, (N, 2K): 0/1 presences, as the student's own code at inference
    (:meth:`Student.text_features`)."""
    p, s = teacher_reading(teacher, features)
    return edit_code((p >= threshold).float(), s)


def distil_reading(student: Student, teacher, n: int, steps: int, seed: int, batch: int = 256,
                   lr: float = 1e-3) -> dict:
    """Stage 0 of ``--student reader``: the student's text MLP and readout heads learn the
    *teacher's* reading of ``n`` training-wording instructions: texts only, labelled by the
    teacher's reader (the grammar's labels are dropped), no photo. Deterministic given ``seed``.

    Returns:
        ``{"losses": [...], "agreement": a}``: the loss per step and the share of 1024 other
        instructions on which student and teacher agree on every label's presence (thresholded at 0.5).
    """
    texts = instruction_bank(n + 1024, np.random.default_rng([32_000, seed]))[0]  # texts only
    X = torch.cat([student.embed(texts[k:k + 256]).cpu() for k in range(0, len(texts), 256)])  # (n + 1024, 384 + V)
    P, S = teacher_reading(teacher, X)  # (n + 1024, K) each: the teacher's reading is the target
    params = list(student.text_mlp.parameters()) + list(student.readout_head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(42_000 + seed)
    losses = []
    for _ in config.progress(range(steps), desc="reading (from the teacher)", disable=config.is_fast()):
        idx = torch.randint(0, n, (batch,), generator=g)
        # L = BCE(σ(logits), p_T) + Σ_k p_T,k (s_k − s_T,k)²
        loss = readout_loss(*student.understand(X[idx]), P[idx], S[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        logits, _ = student.understand(X[n:])
    # the share of instructions whose every label is read as the teacher reads it
    agreement = float(((torch.sigmoid(logits) >= 0.5) == (P[n:] >= 0.5)).all(dim=1).float().mean())
    return {"losses": losses, "agreement": agreement}


class WithoutTargets(torch.utils.data.Dataset):
    """A view of a paired data set without its ground truth: items keep ``source``, ``instruction``
    and ``photo``; ``target`` and ``edits`` (the exact edit) are dropped. VSD trains on this."""

    HIDDEN = ("target", "edits")

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        return {k: v for k, v in self.ds[i].items() if k not in self.HIDDEN}


def training_items(args: VSDArgs, seed_offset: int = 0) -> WithoutTargets:
    """The run's training photos and instructions (train wording), without targets."""
    return WithoutTargets(RetouchWorld("train", "train", size=args.size, length=2**31 - 1, seed=args.seed + seed_offset))


def monitor_batch(args: VSDArgs) -> dict:
    """The monitor's fixed items (with their ground truth, used only to log ``mse_gt``): validation photos."""
    n = args.monitor_items
    ds = RetouchWorld("val", "train", size=args.size, length=n, seed=10_000 + args.seed)
    items = [ds[i] for i in range(n)]
    return {"source": torch.stack([it["source"] for it in items]), "target": torch.stack([it["target"] for it in items]),
            "instruction": [it["instruction"] for it in items]}


@torch.no_grad()
def teacher_edits(teacher, args: VSDArgs) -> dict:
    """DMD's regression set: the teacher's own ``regress_steps``-step edits of training photos.

    Returns:
        ``source`` (N, 3, size, size) training crops in [0, 1], ``instruction`` (N str), ``edit``
        (N, 3, r, r) the teacher's output at its working size r. Teacher outputs only: the data's
        ground truth never enters (the items come through :class:`WithoutTargets`).
    """
    ds = training_items(args, seed_offset=20_000)
    items = [ds[i] for i in range(args.regress_items)]
    src = torch.stack([it["source"] for it in items])
    instr = [it["instruction"] for it in items]
    small = resize(src, teacher.working_size(*src.shape[-2:]))
    # the set is a pure function of the teacher's weights, the crops and instructions and the steps:
    # runs that share them (e.g. with and without the alignment loss) compute it once
    key = hashlib.sha256(json.dumps([instr, args.regress_steps]).encode() + src.numpy().tobytes())
    for module in (m for m in vars(teacher).values() if isinstance(m, torch.nn.Module)):  # UNet, reader
        for p in module.state_dict().values():
            key.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    cache = config.CACHE_DIR / "regression_sets" / f"{key.hexdigest()[:24]}.safetensors"
    if cache.is_file():
        return {"source": src, "instruction": instr, "edit": safetensors.torch.load_file(cache)["edit"]}
    out = [teacher.edit(small[i:i + 32], instr[i:i + 32], steps=args.regress_steps, seed=30_000 + i).float().cpu()
           for i in config.progress(range(0, len(src), 32), desc="teacher edits (regression set)")]
    edit = torch.cat(out)
    if hasattr(teacher, "unet"):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        safetensors.torch.save_file({"edit": edit.contiguous()}, tmp)
        os.replace(tmp, cache)
    return {"source": src, "instruction": instr, "edit": edit}


def t_max_at(step: int, args: VSDArgs) -> int:
    """The timestep range's top at ``step``: ``t_max`` linearly down to ``t_anneal_to`` over
    ``t_anneal`` steps (then constant); ``t_anneal = 0`` keeps ``t_max``."""
    if args.t_anneal <= 0:
        return args.vsd.t_max
    f = min(1.0, step / args.t_anneal)
    return int(round(args.vsd.t_max + f * (args.t_anneal_to - args.vsd.t_max)))


def _save(out: Path, student, fake, opt_s, opt_f, step: int, log: list[dict], args: VSDArgs,
          processes: int = 1, ema=None) -> None:
    """The checkpoint (the EMA student when there is one) and ``OUT.state/`` (LoRA, optimisers,
    the raw student when the checkpoint holds its EMA)."""
    meta = {"trained_steps": str(step), "method": "vsd", **recipe_metadata("train-vsd", args),
            "processes": str(processes), "log": json.dumps(log[-200:]), "paired_targets": "none",
            "provenance": json.dumps(provenance(args))}
    save_student(ema if ema is not None else student, out, metadata=meta)
    ts, ms = optimizer_tensors(opt_s, prefix="opt_s.")
    tf, mf = optimizer_tensors(opt_f, prefix="opt_f.")
    raw = with_prefix("student.", {k: v.detach().contiguous() for k, v in student.state_dict().items()}) \
        if ema is not None else {}
    write_state(state_dir(out), {**with_prefix("lora.", lora_state_dict(fake)), **ts, **tf, **raw},
                {"opt_s": ms, "opt_f": mf}, {"step": step, "log": log}, name="state.safetensors")


def provenance(args: VSDArgs) -> dict:
    """What a VSD checkpoint says of where it came from: init, teacher, data, what it saw (its settings: ``recipe``)."""
    return {"init": args.init, "student": args.student, "teacher": args.teacher,
            "reading": (f"distilled from the teacher's reader on {args.reader_bank} training-wording instructions "
                        f"(texts only), {args.reader_steps} steps; in training the image pathway reads the "
                        "teacher's code" if args.student == "reader" else "its own text features"), "teacher_path": args.teacher_path, "data": "world",
            "targets_seen": "none (WithoutTargets); the monitor scores validation photos without gradients",
            "regression": (f"teacher's own {args.regress_steps}-step edits of {args.regress_items} training crops"
                           if args.regress_weight > 0 else "none")}


def _load_state(out: Path, fake, opt_s, opt_f, student=None) -> tuple[int, list[dict]]:
    tensors, meta, st = read_state(state_dir(out), name="state.safetensors")
    load_lora_state_dict(fake, strip_prefix(tensors, "lora."))
    load_optimizer_tensors(opt_s, tensors, meta["opt_s"], prefix="opt_s.")
    load_optimizer_tensors(opt_f, tensors, meta["opt_f"], prefix="opt_f.")
    raw = strip_prefix(tensors, "student.")
    if student is not None and raw:  # the checkpoint holds the EMA; the state the raw student
        student.load_state_dict(raw)
    return int(st["step"]), list(st["log"])


def train(args: VSDArgs, resume: bool = False, teacher=None, log_every: int = 10) -> tuple[object, list[dict]]:
    """Run (or resume) VSD training.

    Args:
        args: hyper-parameters; ``args.out`` (a ``.safetensors`` path) enables checkpoints.
        resume: continue from ``args.out`` and ``args.out.state/``.
        teacher: use this :class:`course_lib.teacher.Teacher` (default: ``load_teacher(args.teacher)``).

    Returns:
        ``(student, log)``: the trained student (eval mode) and one dict per step with ``vsd``
        (``0.5 ||grad||^2`` per image), ``fake`` (fake-score loss), ``grad_rms`` and ``mse_gt``
        (the student's MSE to the *unused* ground truth: a monitor, not a loss) and ``mse_id`` (the
        same for the unedited photos: below it, the student edits towards the truth); averaged
        over processes.
    """
    from accelerate import Accelerator

    acc = Accelerator()
    config.seed_everything(args.seed)
    if teacher is None:  # frozen: fp16/bf16 on GPUs (Accelerate's mixed_precision), on the accelerator's device
        teacher = load_teacher(args.teacher, args.teacher_path, device=acc.device,
                               dtype=frozen_dtype(acc.device, acc.mixed_precision))
    out = Path(args.out) if args.out else None
    student = load_student(out, device="cpu") if resume else _student(args, teacher)
    # --student reader: the image pathway reads the teacher's code; the reading itself stays as distilled
    reads_teacher = args.student == "reader" and student.cfg.film_reads == "code"
    if reads_teacher:
        student.text_mlp.requires_grad_(False)
        student.readout_head.requires_grad_(False)
    # θ_ema: a copy of the student that follows it slowly (resumed: the checkpoint is the EMA)
    ema = copy.deepcopy(student).requires_grad_(False) if args.ema_decay > 0 else None
    fake = make_fake_score(teacher, args.vsd.lora_rank, args.vsd.lora_alpha)
    opt_s = torch.optim.Adam([q for q in student.parameters() if q.requires_grad], lr=args.lr)
    opt_f = torch.optim.Adam(lora_parameters(fake), lr=args.fake_lr)
    edit_clip = (load_edit_clip(args.align_path, device=acc.device).requires_grad_(False)
                 if args.align_weight > 0 else None)
    start, log = 0, []
    if resume:
        if out is None or not Path(f"{out}.state", "state.json").is_file():
            raise FileNotFoundError(f"nothing to resume: {out} and {out}.state/ are needed")
        start, log = _load_state(out, fake, opt_s, opt_f, student=student if ema is not None else None)
    sync_parameters(acc, lora_parameters(fake))  # every process starts from the main one's fake score
    student.train()
    student, opt_s = acc.prepare(student, opt_s)
    model = acc.unwrap_model(student)
    ds = training_items(args)  # sources and instructions only: no ground truth
    monitor = monitor_batch(args)  # validation photos: logged, never trained on
    regress = teacher_edits(teacher, args) if args.regress_weight > 0 else None
    shard = Shard.of(acc, args.batch_size)  # this process's share of each step
    k = max(1, args.noise_samples)
    bar = config.progress(total=args.steps, initial=start, desc="train-vsd",
                          disable=config.is_fast() or not acc.is_local_main_process)
    for step in range(start, args.steps):
        batch = shard.fetch(ds, step)
        src = batch["source"].to(acc.device)  # (B, 3, S, S)
        instr = batch["instruction"]
        # one generator per step, the same on every process: draws are made for the global batch
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        with torch.no_grad():
            text_s = model.embed(instr)  # (B, text_dim), the student's encoder
            code = teacher_code(teacher, text_s).to(src) if reads_teacher else None  # (B, 2K) or None
            text_t = teacher.encode_text(instr)  # (B, L, D), the teacher's
            cond = teacher.encode_source(resize(src, teacher.working_size(*src.shape[-2:])).to(teacher.device))
        out_img, grid = student(src, text_s, return_grid=True, code=code)  # (B, 3, S, S), (B, 12, D, G, G)
        x0 = to_teacher_space(teacher, out_img)  # (B, C, h, w)
        n, b = shard.global_batch, x0.shape[0]
        cfg_t = dataclasses.replace(args.vsd, t_max=t_max_at(step, args))
        # K draws of (t, ε) per item, for the global batch; this process keeps its rows
        t = shard.take(sample_timesteps(n * k, cfg_t, gen).view(n, k)).reshape(-1).to(x0.device)  # (B·K,)
        noise = shard.take(torch.randn((n, k, *x0.shape[1:]), generator=gen)).reshape(b * k, *x0.shape[1:]).to(x0)
        # grad = mean over the K draws of w(t)(ε_teacher − ε_fake)
        grad = vsd_grad(teacher, fake, x0.repeat_interleave(k, 0), cond.repeat_interleave(k, 0),
                        text_t.repeat_interleave(k, 0), t, noise, cfg_t).view(b, k, *x0.shape[1:]).mean(1) \
            if args.vsd_weight else torch.zeros_like(x0)  # the regression-alone ablation skips the teacher
        loss = args.vsd_weight * vsd_loss(x0, grad)
        reg = torch.zeros(())
        if regress is not None:
            # DMD's regression: ‖student(x) − teacher_50(x)‖² on the teacher's own edits
            r_shard = dataclasses.replace(shard, batch=args.regress_batch)
            idx = r_shard.take(torch.randint(0, len(regress["source"]), (r_shard.global_batch,), generator=gen))
            r_src = regress["source"][idx].to(acc.device)
            r_text = model.embed([regress["instruction"][i] for i in idx.tolist()])
            r_out = student(r_src, r_text, code=teacher_code(teacher, r_text).to(r_src) if reads_teacher else None)
            r_out = torch.nn.functional.interpolate(r_out, size=regress["edit"].shape[-2:], mode="bilinear",
                                                    align_corners=False, antialias=True)
            # ½‖student − teacher‖² per image, in the units of vsd_loss
            reg = regression_loss(r_out, regress["edit"][idx].to(r_out))
            loss = loss + args.regress_weight * reg
        if args.tv_weight > 0:
            # + λ_TV TV(grid): smooth grids, as the supervised loop (lesson 03)
            loss = loss + args.tv_weight * grid_tv(grid)
        align = torch.zeros(())
        if edit_clip is not None:
            # L_align = InfoNCE(edit(source, output), instruction) over the (global) batch (straight-through clamp)
            align = alignment_loss(edit_clip, src, out_img, edit_clip.embed_instructions(instr),
                                   gather=lambda x: gather_with_grad(acc, x))
            loss = loss + args.align_weight * align
        opt_s.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt_s.step()
        # the fake score follows the student's current outputs (nothing reads it in the regression-alone ablation)
        fake_losses = []
        for _ in range(args.vsd.fake_steps if args.vsd_weight else 0):
            t_f = shard.take(torch.randint(0, len(fake.train_scheduler.alphas_cumprod), (n,), generator=gen))
            noise_f = shard.take(torch.randn((n, *x0.shape[1:]), generator=gen))
            lf = fake_score_loss(fake, x0.detach(), cond, text_t, t=t_f, noise=noise_f)
            opt_f.zero_grad(set_to_none=True)
            lf.backward()
            average_gradients(acc, lora_parameters(fake))
            opt_f.step()
            fake_losses.append(float(lf.detach()))
        if ema is not None:
            # θ_ema ← d θ_ema + (1 − d) θ,  d = min(decay, (1 + n)/(10 + n))
            d = min(args.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), model.parameters()):
                    pe.mul_(d).add_(p.detach(), alpha=1 - d)
        mse_gt, mse_id = _monitor(ema if ema is not None else model, monitor)
        rec = mean_over_processes(acc, {"vsd": float(vsd_loss(x0.detach(), grad)), "align": float(align.detach()),
                                        "regress": float(reg.detach()),
                                        "fake": sum(fake_losses) / len(fake_losses) if fake_losses else float("nan"),
                                        "grad_ms": float(grad.pow(2).mean().sqrt()) ** 2,
                                        "mse_gt": mse_gt, "mse_id": mse_id})
        log.append({"step": step + 1, "vsd": rec["vsd"], "align": rec["align"], "regress": rec["regress"],
                    "fake": rec["fake"],
                    "grad_rms": math.sqrt(rec["grad_ms"]), "mse_gt": rec["mse_gt"], "mse_id": rec["mse_id"]})
        bar.update(1)
        if (step + 1) % log_every == 0:
            recent = log[-log_every:]
            bar.set_postfix(fake=f"{sum(r['fake'] for r in recent) / len(recent):.4f}",
                            mse_gt=f"{sum(r['mse_gt'] for r in recent) / len(recent):.5f}")
        if out is not None:
            save_on_main(acc, step + 1, args.steps, args.save_every,
                         lambda: _save(out, model, fake, opt_s, opt_f, step + 1, log, args, acc.num_processes, ema))
    bar.close()
    acc.wait_for_everyone()
    final = ema if ema is not None else model
    final.eval()
    return final, log


@torch.no_grad()
def _monitor(model, batch: dict) -> tuple[float, float]:
    """``(MSE of the student's edits to the truth, MSE of the unedited photos)`` on the monitor's
    fixed validation items, in eval mode, without gradients (a log, never a loss)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = model(batch["source"].to(dev), model.embed(batch["instruction"])).clamp(0, 1).cpu()
    model.train(was)
    return float((out - batch["target"]).pow(2).mean()), float((batch["source"] - batch["target"]).pow(2).mean())


def main(argv: list[str] | None = None) -> int:
    args = parse_settings(VSDArgs, argv, "python -m course_lib train-vsd",
                          "Distil the diffusion teacher into the grid student with Variational Score Distillation (no "
                          "paired targets). Resumable; runs under 'accelerate launch' unchanged.",
                          "student_vsd.safetensors")
    if args.noise_samples < 1:
        settings_error("train-vsd", "--noise-samples must be at least 1")
    result, seconds, code = run_command(lambda: train(args, resume=args.resume),
                                        (FileNotFoundError, ValueError, RuntimeError, KeyError))
    if code:
        return code
    log = result[1]
    if log and is_main_process():
        k = max(1, min(50, len(log) // 4))
        first = sum(r["mse_gt"] for r in log[:k]) / sum(r["mse_id"] for r in log[:k])
        last = sum(r["mse_gt"] for r in log[-k:]) / sum(r["mse_id"] for r in log[-k:])
        print(f"train-vsd: {len(log)} steps in {seconds:.0f} s; monitor, MSE to the unused ground "
              f"truth relative to the unedited photo's: first {k} steps {first:.2f}, last {k} {last:.2f}; "
              f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
