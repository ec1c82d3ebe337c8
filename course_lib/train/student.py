"""Supervised training of the student on the synthetic retouch pairs (lesson 03).

    loss = mean((student(source, embed(instruction)) - target)^2) + tv_weight * TV(grid)

on :class:`course_lib.data.RetouchPairs` (training photos, training paraphrases),
with Adam and a cosine learning-rate schedule. It is written with 🤗 Accelerate:
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

The shipped checkpoint ``data/weights/student_supervised.safetensors`` was made in two
stages (:data:`REPRODUCE`; about 27 + 29 min on one thread of a shared 2-core CPU)::

    python -m course_lib train-student --steps 4000 --batch-size 16 --size 128 --net-size 128 \\
        --threads 1 --lr 2e-3 --seed 0 --out outputs/student_stage1.safetensors
    python -m course_lib train-student --init outputs/student_stage1.safetensors --steps 4000 \\
        --batch-size 16 --size 128 --net-size 128 --threads 1 --lr 5e-4 --warmup 50 --seed 1 \\
        --out data/weights/student_supervised.safetensors
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

import torch

from .. import config
from ..bilateral import grid_tv
from ..data import RetouchPairs
from ..student import CheckpointError, Student, StudentConfig, load_student, save_student
from ..text import shared_encoder
from .common import (run_command, Shard, add_run_options, from_args, is_main_process, load_optimizer_tensors, lr_at,
                     mean_over_processes, optimizer_tensors, parse_run_options, read_state, save_on_main, set_lr,
                     state_dir, summary, write_state)

_RECIPE = "--steps 4000 --batch-size 16 --size 128 --net-size 128 --threads 1"
#: The shipped student: 4000 steps at lr 2e-3 (seed 0), then 4000 fine-tuning steps at lr 5e-4 on
#: fresh items (seed 1), about 27 + 29 min on one thread of a shared 2-core CPU.
REPRODUCE = (f"python -m course_lib train-student {_RECIPE} --lr 2e-3 --seed 0 --out outputs/student_stage1.safetensors"
             f" && python -m course_lib train-student --init outputs/student_stage1.safetensors {_RECIPE} --lr 5e-4 "
             "--warmup 50 --seed 1 --out data/weights/student_supervised.safetensors")
#: The learned global-affine baseline: the same two stages with ``--global-affine``.
REPRODUCE_GLOBAL = (f"python -m course_lib train-student --global-affine {_RECIPE} --lr 2e-3 --seed 0 "
                    "--out outputs/global_stage1.safetensors && python -m course_lib train-student --init "
                    f"outputs/global_stage1.safetensors {_RECIPE} --lr 5e-4 --warmup 50 --seed 1 "
                    "--out data/weights/student_global_affine.safetensors")
COMMANDS = {"student_supervised.safetensors": REPRODUCE, "student_global_affine.safetensors": REPRODUCE_GLOBAL}


@dataclasses.dataclass
class TrainArgs:
    """Hyper-parameters of :func:`train` (the command's flags; ``batch_size`` is per process)."""

    steps: int = 4000
    batch_size: int = 16
    size: int = 128
    net_size: int = 128
    grid_size: int = 16
    luma_bins: int = 8
    channels: int = 64
    lr: float = 2e-3
    warmup: int = 100
    tv_weight: float = 1e-4
    compose_prob: float = 0.3
    families: tuple[str, ...] | None = None
    seed: int = 0
    text_encoder: str = "minilm"
    global_affine: bool = False
    save_every: int = 250
    out: str | None = None


def schedule(step: int, args: TrainArgs) -> float:
    """Linear warm-up then cosine decay to 5 % of ``lr`` (:func:`course_lib.train.common.lr_at`)."""
    return lr_at(step, args.lr, args.warmup, args.steps, "cosine", floor=0.05, rounding="student")


def training_data(args: TrainArgs) -> RetouchPairs:
    """The run's items: training photos and paraphrases, item ``i`` a pure function of ``(seed, i)``."""
    return RetouchPairs(split="train", paraphrases="train", size=args.size, length=2**31 - 1, seed=args.seed,
                        compose_prob=args.compose_prob, families=args.families)


def save_training_state(out: Path, model: Student, opt: torch.optim.Optimizer, step: int, losses: list[float],
                        args: TrainArgs, processes: int = 1) -> None:
    """Write ``out`` (weights) and ``out.state/`` (optimiser, step, losses): resumable."""
    every = max(1, len(losses) // 200)
    curve = [sum(losses[i:i + every]) / len(losses[i:i + every]) for i in range(0, len(losses), every)]
    meta = {"trained_steps": str(step), "command": COMMANDS.get(out.name, ""),
            "train_args": json.dumps(dataclasses.asdict(args)), "processes": str(processes),
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
    cfg = StudentConfig(net_size=args.net_size, grid_size=args.grid_size, luma_bins=args.luma_bins,
                        channels=args.channels, text_encoder=args.text_encoder,
                        global_affine=args.global_affine)
    out = Path(args.out) if args.out else None
    start, losses = 0, []
    if resume:
        if out is None:
            raise FileNotFoundError("nothing to resume: no output checkpoint given")
        opt_tensors, opt_meta, st = read_state(state_dir(out))
        start, losses = int(st["step"]), list(st["losses"])
        model = load_student(out, device="cpu")
    model = model if model is not None else Student(cfg)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    if resume:
        load_optimizer_tensors(opt, opt_tensors, opt_meta["optimizer"])
    encoder = shared_encoder(model.cfg.text_encoder)
    ds = training_data(args)
    # this process's share of each step: batch_size of the batch_size x num_processes items
    shard = Shard.of(accelerator, args.batch_size)
    model, opt = accelerator.prepare(model, opt)
    bar = config.progress(total=args.steps, initial=start, desc="train-student",
                          disable=config.is_fast() or not accelerator.is_local_main_process)
    for step in range(start, args.steps):
        set_lr(opt, schedule(step, args))
        batch = shard.fetch(ds, step)
        text = encoder.encode(batch["instruction"]).to(accelerator.device)  # (B, text_dim)
        src, tgt = batch["source"].to(accelerator.device), batch["target"].to(accelerator.device)  # (B, 3, S, S)
        pred, grid = model(src, text, return_grid=True)  # (B, 3, S, S), (B, 12, D, G, G)
        # L = mean (pred - target)^2 + lambda TV(grid)
        mse = (pred - tgt).pow(2).mean()
        loss = mse + args.tv_weight * grid_tv(grid)
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
    return final, losses


def main(argv: list[str] | None = None) -> int:
    d = TrainArgs()
    p = argparse.ArgumentParser(prog="python -m course_lib train-student",
                                description="Train the text-conditioned grid predictor with supervised L2 on the "
                                            "synthetic retouch pairs (train photos, train paraphrases). Resumable; "
                                            "runs under 'accelerate launch' unchanged. The shipped checkpoint: "
                                            + REPRODUCE)
    add_run_options(p, steps=config.pick(fast=40, full=d.steps), batch_size=d.batch_size, seed=d.seed,
                    save_every=d.save_every, out=str(config.OUTPUT_DIR / "student.safetensors"))
    p.add_argument("--size", type=int, default=config.pick(fast=64, full=d.size), help="training crop side (pixels)")
    p.add_argument("--net-size", type=int, default=config.pick(fast=64, full=d.net_size),
                   help="side of the low-resolution copy the network sees")
    p.add_argument("--grid-size", type=int, default=config.pick(fast=8, full=d.grid_size))
    p.add_argument("--luma-bins", type=int, default=d.luma_bins)
    p.add_argument("--channels", type=int, default=config.pick(fast=32, full=d.channels))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=config.pick(fast=5, full=d.warmup))
    p.add_argument("--tv-weight", type=float, default=d.tv_weight)
    p.add_argument("--compose-prob", type=float, default=d.compose_prob)
    p.add_argument("--families", default=None,
                   help="comma-separated edit families to train on (default: all nine)")
    p.add_argument("--global-affine", action="store_true",
                   help="train the global-affine baseline (one 3x4 transform per photo) instead of the grid")
    p.add_argument("--init", default=None,
                   help="fine-tune: start from this student checkpoint (its architecture; fresh optimiser)")
    a = parse_run_options(p, argv)
    args = from_args(TrainArgs, a, families=tuple(a.families.split(",")) if a.families else None)
    def run():
        init = None
        if a.init and not a.resume:
            init = load_student(a.init, device="cpu")
            args.global_affine = init.cfg.global_affine
        return train(args, resume=a.resume, model=init)

    result, seconds, code = run_command(run, (FileNotFoundError, ValueError, CheckpointError))
    if code:
        return code
    model, losses = result
    if losses and is_main_process():
        print(summary("train-student", losses, seconds, "mse", args.out, ".5f", most=100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
