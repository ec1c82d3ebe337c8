"""``python -m course_lib train-inverter``: the 4-step inverter (lesson 07), in two stages.

**Stage 1, ``--stage cd``: a forward consistency model** (iCD). Per step, one segment of the
4-step schedule and one point of the teacher's fine DDIM grid inside it; the LoRA learns to map
every point of a teacher inversion trajectory to the segment's end
(:func:`course_lib.inversion.forward_cd_loss` at points drawn by :func:`~course_lib.inversion.cd_point`), plus ``--noise-weight`` times iCD's
preservation ``F(G(z)) ≈ z`` on noise the frozen generator turns into images
(:func:`course_lib.inversion.noise_cycle_loss`).

**Stage 2, ``--stage cycle`` (default): cycle consistency** (Inverse-and-Edit), usually from
the stage-1 checkpoint (``--init``). Per step, on a batch of crops of the *training* photos
(no instructions, ∅ text):

1. ``z = F(x)``: 4 DDIM-inversion steps with the forward model (the teacher + a LoRA);
2. ``x̂ = G(z)``: 4 DDIM generation steps with the frozen teacher;
3. ``L = LPIPS(x̂, x) + λ_pix ||x̂ − x||² + λ_pres ||z − F_0(x)||²``
   (:func:`course_lib.inversion.cycle_loss`); one Adam step on the LoRA only: gradients pass
   through the frozen generator into the forward model.

LPIPS is real when its ImageNet backbone is on disk (:mod:`course_lib.perceptual`), otherwise the
labelled random-feature fallback; the checkpoint records which. Seeded; ``--resume`` continues
exactly (LoRA, optimiser, step, log in ``OUT`` and ``OUT.state/``, safetensors/JSON only).
Written with 🤗 Accelerate (``accelerate launch -m course_lib.train.inverter``): ``--batch-size``
is per process, the processes split each step's photos and average the LoRA's gradients
(:func:`course_lib.train.common.average_gradients`). The checkpoint format and its loader are
the lesson's: :func:`course_lib.inversion.save_inverter`, :func:`course_lib.inversion.load_inverter`.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import Literal
from pathlib import Path

import torch

from .. import config
from ..distill import load_lora_state_dict, lora_parameters, lora_state_dict
from ..inversion import (cd_point, cycle_loss, forward_cd_loss, invert, load_inverter, make_forward_model, noise_cycle_loss,
                         save_inverter, shipped_path)
from ..world import RetouchWorld
from ..perceptual import load_lpips
from ..teacher import TEACHER_HELP, TEACHER_PATH_HELP, TIERS, frozen_dtype, load_teacher
from .common import (RunOptions, run_command, Shard, average_gradients, is_main_process, load_optimizer_tensors,
                     mean_over_processes, optimizer_tensors, parse_settings, read_state, recipe_metadata, run_option,
                     save_on_main, setting, state_dir, strip_prefix, summary, sync_parameters, with_prefix, write_state)

__all__ = ["InverterArgs", "train", "main", "load_inverter", "save_inverter", "shipped_path"]


@dataclasses.dataclass
class InverterArgs(RunOptions):
    """Settings of :func:`train` and of the command (one option per field; ``batch_size`` is per process)."""

    steps: int = run_option("steps", 600, fast=10)
    batch_size: int = run_option("batch_size", 8, fast=4)
    inversion_steps: int = setting(4, "forward = backward steps (4: iCD)")
    lr: float = setting(1e-4, "Adam learning rate of the LoRA")
    lora_rank: int = setting(8, "rank of the forward model's LoRA")
    pixel_weight: float = setting(1.0, "weight of the pixel MSE term")
    preserve_weight: float = setting(0.1, "weight of ||F(x) - F_0(x)||^2 (keeps the noise near plain DDIM inversion)")
    perceptual_weight: float = setting(1.0, "weight of the LPIPS term (0: pixels alone; LPIPS is still logged)")
    stage: Literal["cycle", "cd"] = setting("cycle", "cd: forward consistency distillation from the teacher's DDIM "
                                                     "inversion (stage 1); cycle: cycle-consistency fine-tuning "
                                                     "through the frozen generator (stage 2)")
    noise_weight: float = setting(0.0, "weight of iCD's preservation F(G(z)) = z on generated images (0: off)")
    init: str | None = setting(None, "start from this inverter checkpoint (e.g. stage 1's)")
    teacher: str = setting("embedded", TEACHER_HELP, choices=list(TIERS))
    teacher_path: str | None = setting(None, TEACHER_PATH_HELP)


def training_data(args: InverterArgs, resolution: int) -> RetouchWorld:
    """The run's photos: random crops (and flips) of the training photos at the teacher's resolution."""
    return RetouchWorld(split="train", size=resolution, length=2**31 - 1, seed=args.seed)


def train(args: InverterArgs, resume: bool = False, teacher=None, perceptual=None) -> tuple[object, list[dict]]:
    """Run (or resume) cycle-consistency training of the inverter.

    Returns:
        ``(forward_model, log)``: one dict per step with ``loss`` and its terms (stage cycle:
        ``lpips``, ``pixel``, ``preserve``; stage cd: ``cd``; ``noise_cycle`` when weighted), averaged
        over processes.
    """
    from accelerate import Accelerator

    acc = Accelerator()
    config.seed_everything(args.seed)
    # frozen models (teacher, LPIPS) on the accelerator's device, the teacher in fp16/bf16 on GPUs;
    # the LoRA stays fp32 (make_forward_model)
    teacher = teacher or load_teacher(args.teacher, args.teacher_path, device=acc.device,
                                      dtype=frozen_dtype(acc.device, acc.mixed_precision))
    perceptual = perceptual or load_lpips()
    if isinstance(perceptual, torch.nn.Module):  # a plain loss function (tests) has no device
        perceptual = perceptual.to(teacher.device)
    if args.stage not in ("cycle", "cd"):
        raise ValueError(f"--stage must be 'cycle' or 'cd', got {args.stage!r}")
    fwd = make_forward_model(teacher, args.lora_rank, 4.0 * args.lora_rank)
    if args.init and not resume:
        # start from another inverter (stage 1's forward consistency model): its LoRA, fresh optimiser
        start_from, _ = load_inverter(args.init, teacher)
        if lora_state_dict(start_from).keys() != lora_state_dict(fwd).keys():
            raise ValueError(f"{args.init} has another LoRA layout (rank {args.lora_rank} expected)")
        load_lora_state_dict(fwd, lora_state_dict(start_from))
    opt = torch.optim.Adam(lora_parameters(fwd), lr=args.lr)
    out = Path(args.out) if args.out else None
    start, log = 0, []
    if resume:
        if out is None or not Path(f"{out}.state", "state.json").is_file():
            raise FileNotFoundError(f"nothing to resume: {out} and {out}.state/ are needed")
        tensors, meta, st = read_state(state_dir(out), name="state.safetensors")
        load_lora_state_dict(fwd, strip_prefix(tensors, "lora."))
        load_optimizer_tensors(opt, tensors, meta["opt"], prefix="opt.")
        start, log = int(st["step"]), list(st["log"])
    sync_parameters(acc, lora_parameters(fwd))  # every process starts from the main one's LoRA
    ds = training_data(args, teacher.resolution)
    gen = torch.Generator().manual_seed(70_000 + args.seed)
    shard = Shard.of(acc, args.batch_size)  # this process's share of each step
    meta = {"lora_rank": str(args.lora_rank), "perceptual": perceptual.label if hasattr(perceptual, "label") else "",
            "processes": str(acc.num_processes), **recipe_metadata("train-inverter", args)}

    def save(step: int) -> None:
        save_inverter(fwd, out, {**meta, "trained_steps": str(step), "log": json.dumps(log[-300:])})
        t, m = optimizer_tensors(opt, prefix="opt.")
        write_state(state_dir(out), {**with_prefix("lora.", lora_state_dict(fwd)), **t},
                    {"opt": m}, {"step": step, "log": log}, name="state.safetensors")

    bar = config.progress(total=args.steps, initial=start, desc="train-inverter",
                          disable=config.is_fast() or not acc.is_local_main_process)
    for step in range(start, args.steps):
        src = shard.fetch(ds, step)["source"]  # (B, 3, 32, 32)
        x0 = teacher.to_space(src.to(teacher.device))  # (B, 3, 32, 32) in [-1, 1]
        null = teacher.null_text(x0.shape[0])
        # the draws of the step (segment, point, noise) come from (seed, step): resumable
        gen.manual_seed(70_000 + 1_000_003 * args.seed + step)
        if args.stage == "cd":
            noise, t_n, t_next, t_end = cd_point(x0, gen, args.inversion_steps, shard=shard)
            loss = forward_cd_loss(fwd, teacher, x0, null, noise, t_n, t_next, t_end)
            parts = {"cd": float(loss.detach())}
        else:
            with torch.no_grad():
                z_ref = invert(teacher, x0, null, args.inversion_steps)  # F_0(x): plain DDIM inversion
            loss, parts = cycle_loss(fwd, teacher, x0, null, perceptual, args.inversion_steps, args.pixel_weight,
                                     args.preserve_weight, z_ref, args.perceptual_weight)
        if args.noise_weight > 0:
            # fresh noise drawn for the whole global batch; this process takes its own rows
            z = shard.take(torch.randn(shard.global_batch, *x0.shape[1:], generator=gen)).to(x0)  # (B, C, h, w)
            nc, part = noise_cycle_loss(fwd, teacher, z, null, args.inversion_steps)
            loss = loss + args.noise_weight * nc
            parts.update(part)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        average_gradients(acc, lora_parameters(fwd))  # the LoRA is not DDP-wrapped: average here
        opt.step()
        log.append({"step": step + 1, **mean_over_processes(acc, {"loss": float(loss.detach()), **parts})})
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in log[-1].items() if k in ("cd", "lpips", "pixel", "noise_cycle")})
        if out is not None:
            save_on_main(acc, step + 1, args.steps, args.save_every, lambda: save(step + 1))
    bar.close()
    acc.wait_for_everyone()
    fwd.unet.requires_grad_(False)
    return fwd, log


def main(argv: list[str] | None = None) -> int:
    args = parse_settings(InverterArgs, argv, "python -m course_lib train-inverter",
                          "Fine-tune the few-step inverter (a LoRA on the teacher) with an LPIPS cycle-consistency "
                          "loss through the frozen few-step generator. Resumable; runs under 'accelerate launch' "
                          "unchanged. The shipped one: python -m course_lib reproduce inverter_lora",
                          "inverter_lora.safetensors")
    result, seconds, code = run_command(lambda: train(args, resume=args.resume),
                                        (FileNotFoundError, ValueError, RuntimeError, KeyError))
    if code:
        return code
    log = result[1]
    if log and is_main_process():
        key, label = ("cd", "consistency loss") if args.stage == "cd" else ("lpips", "cycle LPIPS")
        print(summary("train-inverter", [r[key] for r in log], seconds, label, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
