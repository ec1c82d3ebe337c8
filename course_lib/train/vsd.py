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
threestudio; DMD2 uses more). Seeded; item ``i`` of the data is a pure function of
``(seed, i)``; ``--resume`` continues exactly from ``OUT`` and ``OUT.state/`` (student
weights, LoRA weights, both optimisers, step and logs, all safetensors/JSON, no pickle).
Written with 🤗 Accelerate, so ``accelerate launch -m course_lib.train.vsd ...`` runs it on
GPUs unchanged: ``--batch-size`` is per process, the processes split each step's items and
random draws, the student's gradients are averaged by DDP and the fake score's by
:func:`course_lib.train.common.average_gradients`, so every process keeps the same fake score.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import torch

from .. import config
from ..align import info_nce, load_edit_clip
from ..bilateral import grid_tv
from ..data import RetouchPairs, resize
from ..distill import (VSDConfig, fake_score_loss, load_lora_state_dict, lora_parameters, lora_state_dict,
                       make_fake_score, sample_timesteps, to_teacher_space, vsd_grad, vsd_loss)
from ..student import Student, StudentConfig, load_student, save_student, shipped_path
from ..teacher import add_teacher_options, frozen_dtype, load_teacher
from .common import (run_command, Shard, add_run_options, average_gradients, from_args, gather_with_grad,
                     is_main_process, load_optimizer_tensors, mean_over_processes, optimizer_tensors, parse_run_options,
                     read_state, save_on_main, state_dir, strip_prefix, sync_parameters, with_prefix, write_state)


@dataclasses.dataclass
class VSDArgs:
    """Hyper-parameters of :func:`train` (the command's flags; ``batch_size`` is per process)."""

    steps: int = 1000
    batch_size: int = 8
    size: int = 64
    init: str = "supervised"  # "supervised" (the shipped student), "identity" (a fresh one) or a path
    grid_size: int = 16  # spatial cells per side of a fresh ("identity") student
    lr: float = 1e-4
    fake_lr: float = 1e-3
    vsd: VSDConfig = dataclasses.field(default_factory=VSDConfig)
    teacher: str = "embedded"
    teacher_path: str | None = None
    tv_weight: float = 1e-4  # total variation of the grid, as in the supervised loop (0 = off)
    align_weight: float = 0.0  # lesson 06: weight of the prompt-alignment InfoNCE (0 = VSD only)
    align_path: str | None = None  # edit encoder checkpoint (default: the shipped one)
    seed: int = 0
    save_every: int = 100
    out: str | None = None


def _student(args: VSDArgs) -> Student:
    if args.init == "supervised":
        return load_student(shipped_path(), device="cpu")
    if args.init == "identity":
        return Student(StudentConfig(net_size=128, grid_size=args.grid_size))
    return load_student(args.init, device="cpu")


def _save(out: Path, student, fake, opt_s, opt_f, step: int, log: list[dict], args: VSDArgs,
          processes: int = 1) -> None:
    save_student(student, out, metadata={"trained_steps": str(step), "method": "vsd",
                                         "vsd_args": json.dumps(dataclasses.asdict(args)),
                                         "processes": str(processes), "log": json.dumps(log[-200:])})
    ts, ms = optimizer_tensors(opt_s, prefix="opt_s.")
    tf, mf = optimizer_tensors(opt_f, prefix="opt_f.")
    write_state(state_dir(out), {**with_prefix("lora.", lora_state_dict(fake)), **ts, **tf},
                {"opt_s": ms, "opt_f": mf}, {"step": step, "log": log}, name="state.safetensors")


def _load_state(out: Path, fake, opt_s, opt_f) -> tuple[int, list[dict]]:
    tensors, meta, st = read_state(state_dir(out), name="state.safetensors")
    load_lora_state_dict(fake, strip_prefix(tensors, "lora."))
    load_optimizer_tensors(opt_s, tensors, meta["opt_s"], prefix="opt_s.")
    load_optimizer_tensors(opt_f, tensors, meta["opt_f"], prefix="opt_f.")
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
    student = load_student(out, device="cpu") if resume else _student(args)
    fake = make_fake_score(teacher, args.vsd.lora_rank, args.vsd.lora_alpha)
    opt_s = torch.optim.Adam(student.parameters(), lr=args.lr)
    opt_f = torch.optim.Adam(lora_parameters(fake), lr=args.fake_lr)
    edit_clip = (load_edit_clip(args.align_path, device=acc.device).requires_grad_(False)
                 if args.align_weight > 0 else None)
    start, log = 0, []
    if resume:
        if out is None or not Path(f"{out}.state", "state.json").is_file():
            raise FileNotFoundError(f"nothing to resume: {out} and {out}.state/ are needed")
        start, log = _load_state(out, fake, opt_s, opt_f)
    sync_parameters(acc, lora_parameters(fake))  # every process starts from the main one's fake score
    student.train()
    student, opt_s = acc.prepare(student, opt_s)
    model = acc.unwrap_model(student)
    ds = RetouchPairs(split="train", paraphrases="train", size=args.size, length=2**31 - 1, seed=args.seed)
    shard = Shard.of(acc, args.batch_size)  # this process's share of each step
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
            text_t = teacher.encode_text(instr)  # (B, L, D), the teacher's
            cond = teacher.encode_source(resize(src, teacher.working_size(*src.shape[-2:])).to(teacher.device))
        out_img, grid = student(src, text_s, return_grid=True)  # (B, 3, S, S), (B, 12, D, G, G)
        x0 = to_teacher_space(teacher, out_img)  # (B, C, h, w)
        n = shard.global_batch
        t = shard.take(sample_timesteps(n, args.vsd, gen)).to(x0.device)
        noise = shard.take(torch.randn((n, *x0.shape[1:]), generator=gen)).to(x0)
        grad = vsd_grad(teacher, fake, x0, cond, text_t, t, noise, args.vsd)
        loss = vsd_loss(x0, grad)
        if args.tv_weight > 0:
            # + λ_TV TV(grid): smooth grids, as the supervised loop (lesson 03)
            loss = loss + args.tv_weight * grid_tv(grid)
        align = torch.zeros(())
        if edit_clip is not None:
            # L_align = InfoNCE(edit(source, output), instruction) over the (global) batch (straight-through clamp)
            shown = out_img + (out_img.clamp(0, 1) - out_img).detach()
            edits = gather_with_grad(acc, edit_clip.encode_edit(src, shown))
            texts = gather_with_grad(acc, edit_clip.encode_text(edit_clip.embed_instructions(instr)))
            align = info_nce(edits, texts, edit_clip.logit_scale)
            loss = loss + args.align_weight * align
        opt_s.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt_s.step()
        # the fake score follows the student's current outputs
        fake_losses = []
        for _ in range(args.vsd.fake_steps):
            t_f = shard.take(torch.randint(0, len(fake.train_scheduler.alphas_cumprod), (n,), generator=gen))
            noise_f = shard.take(torch.randn((n, *x0.shape[1:]), generator=gen))
            lf = fake_score_loss(fake, x0.detach(), cond, text_t, t=t_f, noise=noise_f)
            opt_f.zero_grad(set_to_none=True)
            lf.backward()
            average_gradients(acc, lora_parameters(fake))
            opt_f.step()
            fake_losses.append(float(lf.detach()))
        with torch.no_grad():
            tgt = batch["target"].to(out_img)
            mse_gt = float((out_img.clamp(0, 1) - tgt).pow(2).mean())
            mse_id = float((src - tgt).pow(2).mean())  # the do-nothing edit, same batch
        rec = mean_over_processes(acc, {"vsd": float(vsd_loss(x0.detach(), grad)), "align": float(align.detach()),
                                        "fake": sum(fake_losses) / len(fake_losses),
                                        "grad_ms": float(grad.pow(2).mean().sqrt()) ** 2,
                                        "mse_gt": mse_gt, "mse_id": mse_id})
        log.append({"step": step + 1, "vsd": rec["vsd"], "align": rec["align"], "fake": rec["fake"],
                    "grad_rms": math.sqrt(rec["grad_ms"]), "mse_gt": rec["mse_gt"], "mse_id": rec["mse_id"]})
        bar.update(1)
        if (step + 1) % log_every == 0:
            recent = log[-log_every:]
            bar.set_postfix(fake=f"{sum(r['fake'] for r in recent) / len(recent):.4f}",
                            mse_gt=f"{sum(r['mse_gt'] for r in recent) / len(recent):.5f}")
        if out is not None:
            save_on_main(acc, step + 1, args.steps, args.save_every,
                         lambda: _save(out, model, fake, opt_s, opt_f, step + 1, log, args, acc.num_processes))
    bar.close()
    acc.wait_for_everyone()
    model.eval()
    return model, log


def _pair(text: str) -> tuple[float, float]:
    a, b = (float(v) for v in text.split(","))
    return a, b


def main(argv: list[str] | None = None) -> int:
    d, v = VSDArgs(), VSDConfig()
    p = argparse.ArgumentParser(prog="python -m course_lib train-vsd",
                                description="Distil the diffusion teacher into the grid student with Variational "
                                            "Score Distillation (no paired targets). Resumable; runs under "
                                            "'accelerate launch' unchanged.")
    add_run_options(p, steps=config.pick(fast=20, full=d.steps), batch_size=config.pick(fast=4, full=d.batch_size),
                    seed=d.seed, save_every=d.save_every, out=str(config.OUTPUT_DIR / "student_vsd.safetensors"))
    p.add_argument("--size", type=int, default=d.size, help="training crop side (pixels)")
    p.add_argument("--init", default=d.init, help="'supervised' (shipped student), 'identity' or a checkpoint path")
    p.add_argument("--grid-size", type=int, default=d.grid_size,
                   help="spatial grid cells per side of a fresh student (--init identity only)")
    p.add_argument("--lr", type=float, default=d.lr, help="student learning rate")
    p.add_argument("--fake-lr", type=float, default=d.fake_lr, help="fake-score LoRA learning rate")
    p.add_argument("--fake-steps", type=int, default=v.fake_steps, help="fake-score updates per student update")
    p.add_argument("--t-range", default=f"{v.t_min},{v.t_max}", help="timestep range t_min,t_max")
    p.add_argument("--guidance", default=None, help="teacher s_img,s_txt (default: the teacher's)")
    p.add_argument("--weighting", choices=["sds", "dmd"], default=v.weighting)
    p.add_argument("--lora-rank", type=int, default=v.lora_rank)
    add_teacher_options(p, default=d.teacher)
    p.add_argument("--tv-weight", type=float, default=d.tv_weight,
                   help="total-variation weight on the predicted grid (default %(default)s, as supervised; 0 = off)")
    p.add_argument("--align-weight", type=float, default=d.align_weight,
                   help="weight of the prompt-alignment InfoNCE loss (lesson 06; 0 = VSD only)")
    p.add_argument("--align-path", default=None, help="edit encoder checkpoint (default: the shipped one)")
    a = parse_run_options(p, argv)
    t_min, t_max = (int(x) for x in a.t_range.split(","))
    vsd = VSDConfig(t_min=t_min, t_max=t_max, guidance=_pair(a.guidance) if a.guidance else None,
                    weighting=a.weighting, lora_rank=a.lora_rank, lora_alpha=4.0 * a.lora_rank,
                    fake_steps=a.fake_steps)
    args = from_args(VSDArgs, a, vsd=vsd)
    result, seconds, code = run_command(lambda: train(args, resume=a.resume),
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
