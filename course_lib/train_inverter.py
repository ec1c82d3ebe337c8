"""``python -m course_lib train-inverter``: cycle-consistency fine-tuning of the 4-step inverter (lesson 07).

Per step, on a batch of crops of the *training* photos (no instructions, ∅ text):

1. ``z = F(x)``: 4 DDIM-inversion steps with the forward model (the teacher + a LoRA);
2. ``x̂ = G(z)``: 4 DDIM generation steps with the frozen teacher;
3. ``L = LPIPS(x̂, x) + λ_pix ||x̂ − x||² + λ_pres ||z − F_0(x)||²``
   (:func:`course_lib.inversion.cycle_loss`); one Adam step on the LoRA only: gradients pass
   through the frozen generator into the forward model.

LPIPS is real when its ImageNet backbone is on disk (:mod:`course_lib.perceptual`), otherwise the
labelled random-feature fallback; the checkpoint records which. Seeded; ``--resume`` continues
exactly (LoRA, optimiser, step, log in ``OUT`` and ``OUT.state/``, safetensors/JSON only).
Written with 🤗 Accelerate (``accelerate launch -m course_lib.train_inverter``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from . import config


@dataclasses.dataclass
class InverterArgs:
    """Hyper-parameters of :func:`train` (the command's flags)."""

    steps: int = 600
    batch_size: int = 8
    inversion_steps: int = 4
    lr: float = 1e-4
    lora_rank: int = 8
    pixel_weight: float = 1.0
    preserve_weight: float = 0.1
    seed: int = 0
    save_every: int = 100
    out: str | None = None


def shipped_path() -> Path:
    """The shipped inverter LoRA."""
    return config.WEIGHTS_DIR / "inverter_lora.safetensors"


def save_inverter(forward, out: str | Path, metadata: dict[str, str]) -> Path:
    """Write the inverter's LoRA weights (safetensors, atomically) with string metadata."""
    from .distill import lora_state_dict
    from .util.checkpoint import save_checkpoint

    meta = dict(metadata)
    rank = int(meta.pop("lora_rank", 8))
    return save_checkpoint(out, lora_state_dict(forward), "inverter_lora", {"lora_rank": rank}, meta)


def load_inverter(path: str | Path | None = None, teacher=None):
    """The teacher with the trained inverter LoRA: ``(forward_model, metadata)``.

    Args:
        path: a checkpoint from :func:`save_inverter` (default: the shipped one).
        teacher: the teacher it was trained on (default: ``load_teacher("embedded")``).

    Raises:
        FileNotFoundError: one line, when the file is missing.
    """
    from .distill import load_lora_state_dict
    from .util.checkpoint import load_checkpoint
    from .inversion import make_forward_model
    from .teacher import load_teacher

    p = Path(path) if path else shipped_path()
    if not p.is_file():
        raise FileNotFoundError(f"no inverter checkpoint at {p} (train one: python -m course_lib train-inverter)")
    state, info = load_checkpoint(p, "inverter_lora")
    meta = info.metadata
    teacher = teacher or load_teacher("embedded")
    rank = int(info.config["lora_rank"])
    fwd = make_forward_model(teacher, rank, 4.0 * rank)
    load_lora_state_dict(fwd, state)
    fwd.unet.requires_grad_(False)
    return fwd, meta


def train(args: InverterArgs, resume: bool = False, teacher=None, perceptual=None) -> tuple[object, list[dict]]:
    """Run (or resume) cycle-consistency training of the inverter.

    Returns:
        ``(forward_model, log)``: one dict per step with ``loss``, ``lpips``, ``pixel``, ``preserve``.
    """
    from accelerate import Accelerator

    from .data import RetouchPairs
    from .distill import load_lora_state_dict, lora_parameters, lora_state_dict
    from .inversion import cycle_loss, invert, make_forward_model
    from .perceptual import load_lpips
    from .teacher import load_teacher
    from .train_student import load_optimizer_tensors, optimizer_tensors, read_state, state_dir, write_state

    acc = Accelerator()
    config.seed_everything(args.seed)
    teacher = teacher or load_teacher("embedded")
    perceptual = perceptual or load_lpips()
    fwd = make_forward_model(teacher, args.lora_rank, 4.0 * args.lora_rank)
    opt = torch.optim.Adam(lora_parameters(fwd), lr=args.lr)
    out = Path(args.out) if args.out else None
    start, log = 0, []
    if resume:
        if out is None or not Path(f"{out}.state", "state.json").is_file():
            raise FileNotFoundError(f"nothing to resume: {out} and {out}.state/ are needed")
        tensors, meta, st = read_state(state_dir(out), name="state.safetensors")
        load_lora_state_dict(fwd, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")})
        load_optimizer_tensors(opt, {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")}, meta["opt"])
        start, log = int(st["step"]), list(st["log"])
    ds = RetouchPairs(split="train", paraphrases="train", size=teacher.resolution,
                      length=args.steps * args.batch_size, seed=args.seed)
    meta = {"lora_rank": str(args.lora_rank), "perceptual": perceptual.label if hasattr(perceptual, "label") else "",
            "args": json.dumps(dataclasses.asdict(args))}
    bar = config.progress(total=args.steps, initial=start, desc="train-inverter",
                          disable=config.is_fast() or not acc.is_local_main_process)
    for step in range(start, args.steps):
        src = torch.stack([ds[step * args.batch_size + j]["source"] for j in range(args.batch_size)])
        x0 = teacher.to_space(src.to(teacher.device))  # (B, 3, 32, 32) in [-1, 1]
        null = teacher.null_text(x0.shape[0])
        with torch.no_grad():
            z_ref = invert(teacher, x0, null, args.inversion_steps)  # F_0(x): plain DDIM inversion
        loss, parts = cycle_loss(fwd, teacher, x0, null, perceptual, args.inversion_steps, args.pixel_weight,
                                 args.preserve_weight, z_ref)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        log.append({"step": step + 1, "loss": float(loss.detach()), **parts})
        bar.update(1)
        bar.set_postfix(lpips=f"{parts['lpips']:.4f}", pixel=f"{parts['pixel']:.4f}")
        if out is not None and ((step + 1) % args.save_every == 0 or step + 1 == args.steps) and acc.is_main_process:
            save_inverter(fwd, out, {**meta, "trained_steps": str(step + 1), "log": json.dumps(log[-300:])})
            t, m = optimizer_tensors(opt)
            write_state(state_dir(out), {**{f"lora.{k}": v for k, v in lora_state_dict(fwd).items()},
                                         **{f"opt.{k}": v for k, v in t.items()}},
                        {"opt": m}, {"step": step + 1, "log": log}, name="state.safetensors")
    bar.close()
    fwd.unet.requires_grad_(False)
    return fwd, log


def main(argv: list[str] | None = None) -> int:
    from .train_student import add_run_options, parse_run_options

    d = InverterArgs()
    p = argparse.ArgumentParser(prog="python -m course_lib train-inverter",
                                description="Fine-tune the few-step inverter (a LoRA on the teacher) with an LPIPS "
                                            "cycle-consistency loss through the frozen few-step generator. "
                                            "Resumable; runs under 'accelerate launch' unchanged.")
    p.add_argument("--steps", type=int, default=config.pick(fast=10, full=d.steps))
    p.add_argument("--batch-size", type=int, default=config.pick(fast=4, full=d.batch_size))
    p.add_argument("--inversion-steps", type=int, default=d.inversion_steps, help="forward = backward steps (4: iCD)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lora-rank", type=int, default=d.lora_rank)
    p.add_argument("--pixel-weight", type=float, default=d.pixel_weight, help="weight of the pixel MSE term")
    p.add_argument("--preserve-weight", type=float, default=d.preserve_weight,
                   help="weight of ||F(x) - F_0(x)||^2 (keeps the noise near plain DDIM inversion)")
    add_run_options(p, d.seed, d.save_every, str(config.OUTPUT_DIR / "inverter_lora.safetensors"))
    a = parse_run_options(p, argv)
    args = InverterArgs(steps=a.steps, batch_size=a.batch_size, inversion_steps=a.inversion_steps, lr=a.lr,
                        lora_rank=a.lora_rank, pixel_weight=a.pixel_weight, preserve_weight=a.preserve_weight,
                        seed=a.seed, save_every=a.save_every, out=a.out)
    t0 = time.perf_counter()
    try:
        _, log = train(args, resume=a.resume)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if log:
        k = max(1, min(50, len(log) // 4))
        first = sum(r["lpips"] for r in log[:k]) / k
        last = sum(r["lpips"] for r in log[-k:]) / k
        print(f"train-inverter: {len(log)} steps in {time.perf_counter() - t0:.0f} s; cycle LPIPS first {k} steps "
              f"{first:.4f}, last {k} {last:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
