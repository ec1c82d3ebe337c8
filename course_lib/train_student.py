"""Supervised training of the student on the synthetic retouch pairs (lesson 03).

    loss = mean((student(source, embed(instruction)) - target)^2) + tv_weight * TV(grid)

on :class:`course_lib.data.RetouchPairs` (training photos, training paraphrases),
with Adam and a cosine learning-rate schedule. It is written with 🤗 Accelerate:
``Accelerator`` wraps the model, optimiser and data loader, so the same file runs
as one CPU process (``python -m course_lib train-student``) and on GPUs
(``accelerate launch -m course_lib.train_student ...``).

Everything is seeded, and item ``i`` of the data is a pure function of
``(seed, i)``: step ``k`` always sees items ``k B .. (k + 1) B - 1``. Training is
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
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from . import config
from .bilateral import grid_tv
from .data import RetouchPairs
from .student import CheckpointError, Student, StudentConfig, load_student, save_student

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
    """Hyper-parameters of :func:`train` (the command's flags)."""

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


def lr_at(step: int, args: TrainArgs) -> float:
    """Linear warm-up then cosine decay to 5 % of ``lr``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    # lr_t = lr (0.05 + 0.95 * (1 + cos(pi t)) / 2)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class _Range(torch.utils.data.Dataset):
    """Items ``start .. stop - 1`` of a dataset (so a resumed run sees exactly what it would have)."""

    def __init__(self, ds: torch.utils.data.Dataset, start: int, stop: int) -> None:
        self.ds, self.start, self.stop = ds, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict:
        return self.ds[self.start + i]


# ---------------------------------------------------------------------- optimiser state without pickle


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten an optimiser's state for safetensors: ``{"state.<param>.<name>": tensor}`` + JSON of the rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = val
    return tensors, json.dumps({"param_groups": sd["param_groups"], "scalars": scalars})


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: str) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    info = json.loads(meta)
    state: dict[int, dict] = {}
    for key, val in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = val
    for key, val in info["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})



def add_run_options(p, seed: int, save_every: int, out: str) -> None:
    """The options every resumable trainer shares: ``--seed --save-every --threads --out --resume``."""
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--save-every", type=int, default=save_every)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=out, help="checkpoint to write (OUT.state/ holds the optimiser for --resume)")
    p.add_argument("--resume", action="store_true", help="continue from OUT and OUT.state/")


def parse_run_options(p, argv):
    """``p.parse_args(argv)``, then apply ``--threads`` (0 keeps torch's default)."""
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    return a


def state_dir(out: str | os.PathLike) -> Path:
    """``OUT.state/``: the optimiser and progress of a run writing ``OUT``."""
    return Path(str(out) + ".state")


def write_state(sdir: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], info: dict,
                name: str = "optimizer.safetensors") -> None:
    """Write a run's resumable state into ``sdir``: ``name`` (tensors + string metadata, safetensors)
    and ``state.json`` (``info``), each to a temporary file first, then renamed."""
    from safetensors.torch import save_file

    sdir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(sdir / f"{name}.part"), metadata=metadata)
    os.replace(sdir / f"{name}.part", sdir / name)
    (sdir / "state.json.part").write_text(json.dumps(info))
    os.replace(sdir / "state.json.part", sdir / "state.json")


def read_state(sdir: Path, name: str = "optimizer.safetensors") -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    """Inverse of :func:`write_state`: ``(tensors, metadata, info)``.

    Raises:
        FileNotFoundError: ``sdir`` holds no complete state.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not (sdir / "state.json").is_file() or not (sdir / name).is_file():
        raise FileNotFoundError(f"nothing to resume: {sdir}/state.json and {sdir}/{name} are needed")
    with safe_open(str(sdir / name), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    return load_file(str(sdir / name)), metadata, json.loads((sdir / "state.json").read_text())


def save_training_state(out: Path, model: Student, opt: torch.optim.Optimizer, step: int, losses: list[float],
                        args: TrainArgs) -> None:
    """Write ``out`` (weights) and ``out.state/`` (optimiser, step, losses): resumable."""
    every = max(1, len(losses) // 200)
    curve = [sum(losses[i:i + every]) / len(losses[i:i + every]) for i in range(0, len(losses), every)]
    meta = {"trained_steps": str(step), "command": COMMANDS.get(out.name, ""),
            "train_args": json.dumps(dataclasses.asdict(args)),
            # the training MSE, averaged over groups of `loss_curve_every` steps
            "loss_curve": json.dumps([round(v, 7) for v in curve]), "loss_curve_every": str(every)}
    save_student(model, out, metadata=meta)
    tensors, opt_meta = optimizer_tensors(opt)
    write_state(state_dir(out), tensors, {"optimizer": opt_meta},
                {"step": step, "losses": losses, "args": dataclasses.asdict(args)})


def identity_losses(args: TrainArgs, steps: int | None = None) -> list[float]:
    """The MSE of doing nothing (output = source) on each training batch of a run with ``args``.

    Batches differ in difficulty (a strong exposure edit costs more than a slight tint), so
    the training loss divided by this is the fairer curve to watch: it starts at 1.
    """
    n = args.steps if steps is None else steps
    ds = RetouchPairs(split="train", paraphrases="train", size=args.size, length=args.steps * args.batch_size,
                      seed=args.seed, compose_prob=args.compose_prob, families=args.families)
    out = []
    for k in range(n):
        items = [ds[i] for i in range(k * args.batch_size, (k + 1) * args.batch_size)]
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
        per-step training losses.
    """
    from accelerate import Accelerator

    from .text import shared_encoder

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
    ds = RetouchPairs(split="train", paraphrases="train", size=args.size, length=args.steps * args.batch_size,
                      seed=args.seed, compose_prob=args.compose_prob, families=args.families)
    dl = torch.utils.data.DataLoader(_Range(ds, start * args.batch_size, len(ds)), batch_size=args.batch_size,
                                     shuffle=False, num_workers=0)
    model, opt, dl = accelerator.prepare(model, opt, dl)
    step = start
    bar = config.progress(total=args.steps, initial=start, desc="train-student",
                          disable=config.is_fast() or not accelerator.is_local_main_process)
    for batch in dl:
        if step >= args.steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        text = encoder.encode(batch["instruction"]).to(accelerator.device)  # (B, text_dim)
        src, tgt = batch["source"], batch["target"]  # (B, 3, S, S) each
        pred, grid = model(src, text, return_grid=True)  # (B, 3, S, S), (B, 12, D, G, G)
        # L = mean (pred - target)^2 + lambda TV(grid)
        mse = (pred - tgt).pow(2).mean()
        loss = mse + args.tv_weight * grid_tv(grid)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        step += 1
        losses.append(float(mse.detach()))
        if callback is not None:
            callback(step, losses[-1])
        bar.update(1)
        if step % log_every == 0:
            bar.set_postfix(mse=f"{sum(losses[-log_every:]) / log_every:.5f}")
        if out is not None and (step % args.save_every == 0 or step == args.steps) and accelerator.is_main_process:
            save_training_state(out, accelerator.unwrap_model(model), opt, step, losses, args)
        accelerator.wait_for_everyone()
    bar.close()
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
    p.add_argument("--steps", type=int, default=config.pick(fast=40, full=d.steps), help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
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
    add_run_options(p, d.seed, d.save_every, str(config.OUTPUT_DIR / "student.safetensors"))
    p.add_argument("--init", default=None,
                   help="fine-tune: start from this student checkpoint (its architecture; fresh optimiser)")
    a = parse_run_options(p, argv)
    args = TrainArgs(steps=a.steps, batch_size=a.batch_size, size=a.size, net_size=a.net_size,
                     grid_size=a.grid_size, luma_bins=a.luma_bins, channels=a.channels, lr=a.lr, warmup=a.warmup,
                     tv_weight=a.tv_weight, compose_prob=a.compose_prob, seed=a.seed,
                     families=tuple(a.families.split(",")) if a.families else None, save_every=a.save_every,
                     out=a.out, global_affine=a.global_affine)
    t0 = time.perf_counter()
    try:
        init = None
        if a.init and not a.resume:
            init = load_student(a.init, device="cpu")
            args.global_affine = init.cfg.global_affine
        model, losses = train(args, resume=a.resume, model=init)
    except (FileNotFoundError, ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    k = max(1, min(100, len(losses) // 5))
    if losses:
        print(f"train-student: {len(losses)} steps in {time.perf_counter() - t0:.0f} s; "
              f"mse first {k}: {sum(losses[:k]) / k:.5f}, last {k}: {sum(losses[-k:]) / k:.5f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
