"""``python -m course_lib train-align``: train the embedded edit encoder (lesson 06).

:class:`course_lib.align.EditCLIP` learns, with CLIP's symmetric InfoNCE over each batch,
to match an edit - (source, edited photo) from :class:`course_lib.world.RetouchWorld` on the
training photos and wording - with the MiniLM embedding of its instruction. Seeded
(item ``i`` is a pure function of ``(seed, i)``), resumable (``OUT.state/``: optimiser,
step, losses; safetensors + JSON), 🤗 Accelerate-ready (``accelerate launch -m
course_lib.train.align``: ``--batch-size`` is per process; the embeddings of all processes
are gathered, so InfoNCE's negatives are the whole global batch and the update equals one
process's on that batch). At the end it reports top-1 retrieval accuracy on the test photos
(:func:`course_lib.align.heldout_retrieval`; chance: one in the batch size).

The shipped ``data/weights/edit_clip.safetensors`` is this command's defaults
(``course_lib/recipes/edit_clip.yaml``; ``python -m course_lib reproduce edit_clip``).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from .. import config
from ..align import (AlignError, EditCLIP, EditCLIPConfig, heldout_retrieval, info_nce, load_edit_clip,
                     save_edit_clip)
from ..world import RetouchWorld
from .common import (RunOptions, run_command, Shard, gather_with_grad, is_main_process, load_optimizer_tensors, lr_at,
                     mean_over_processes, optimizer_tensors, parse_settings, read_state, recipe_metadata, run_option,
                     save_on_main, set_lr, setting, state_dir, summary, write_state)

__all__ = ["AlignArgs", "heldout_retrieval", "train", "main"]


@dataclasses.dataclass
class AlignArgs(RunOptions):
    """Settings of :func:`train` and of the command (one option per field; ``batch_size`` is per process)."""

    steps: int = run_option("steps", 1500, fast=30)
    batch_size: int = run_option("batch_size", 64, fast=16)
    save_every: int = run_option("save_every", 250)
    size: int = setting(32, "side of each panel (pixels)")
    lr: float = setting(1e-3, "AdamW learning rate")
    warmup: int = setting(50, "linear warm-up steps, then a cosine to zero")
    p2: float = setting(0.25, "share of items with two edits")
    p3: float = setting(0.1, "share of items with three edits")


def train(args: AlignArgs, resume: bool = False, log_every: int = 25) -> tuple[EditCLIP, list[float]]:
    """Train (or resume) the edit encoder; returns ``(model, losses)`` (model in eval mode)."""
    from accelerate import Accelerator

    acc = Accelerator()
    config.seed_everything(args.seed)
    out = Path(args.out) if args.out else None
    model = load_edit_clip(out) if resume else EditCLIP(EditCLIPConfig(size=args.size))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    start, losses = 0, []
    if resume:
        tensors, meta, info = read_state(state_dir(out))
        load_optimizer_tensors(opt, tensors, meta["optimizer"])
        start, losses = int(info["step"]), list(info["losses"])
    model, opt = acc.prepare(model, opt)
    net = acc.unwrap_model(model)
    ds = RetouchWorld(split="train", wording="train", size=args.size, length=2**31 - 1, seed=args.seed,
                      p2=args.p2, p3=args.p3)
    shard = Shard.of(acc, args.batch_size)  # this process's share of each step

    def save(step: int) -> None:
        save_edit_clip(net, out, metadata={"trained_steps": str(step), "processes": str(acc.num_processes), "data": "world",
                                           **recipe_metadata("train-align", args)})
        tensors, meta = optimizer_tensors(opt)
        write_state(state_dir(out), tensors, {"optimizer": meta}, {"step": step, "losses": losses})

    bar = config.progress(total=args.steps, initial=start, desc="train-align",
                          disable=config.is_fast() or not acc.is_local_main_process)
    for step in range(start, args.steps):
        # lr: linear warm-up, then cosine to zero
        set_lr(opt, lr_at(step, args.lr, args.warmup, args.steps, "cosine"))
        batch = shard.fetch(ds, step)
        with torch.no_grad():
            text = net.embed_instructions(batch["instruction"])  # (B, 384), frozen MiniLM
        edits, texts = model(batch["source"].to(acc.device), batch["target"].to(acc.device), text)  # (B, E) each
        # InfoNCE over the global batch: every process's rows are the negatives of every other's
        loss = info_nce(gather_with_grad(acc, edits), gather_with_grad(acc, texts), net.logit_scale)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        losses.append(mean_over_processes(acc, {"infonce": float(loss.detach())})["infonce"])
        bar.update(1)
        if (step + 1) % log_every == 0:
            bar.set_postfix(infonce=f"{sum(losses[-log_every:]) / log_every:.3f}")
        if out is not None:
            save_on_main(acc, step + 1, args.steps, args.save_every, lambda: save(step + 1))
    bar.close()
    acc.wait_for_everyone()
    net.eval()
    return net, losses


def main(argv: list[str] | None = None) -> int:
    args = parse_settings(AlignArgs, argv, "python -m course_lib train-align",
                          "Train the embedded edit encoder (EditCLIP) for the prompt-alignment loss with InfoNCE on "
                          "the training photos' edits. Resumable; runs under 'accelerate launch' unchanged. The "
                          "shipped one: python -m course_lib reproduce edit_clip", "edit_clip.safetensors")
    result, seconds, code = run_command(lambda: train(args, resume=args.resume),
                                        (FileNotFoundError, ValueError, AlignError))
    if code or not is_main_process():
        return code
    model, losses = result
    print(summary("train-align", losses, seconds, "InfoNCE", args.out, ".3f"))
    for wording in ("train", "heldout_phrasing", "heldout_synonym"):
        r = heldout_retrieval(model, wording=wording)
        print(f"test photos, {wording} wording: top-1 retrieval among 64 = {r['accuracy']:.0%} "
              f"(chance {r['chance']:.0%}; right = same edit families, targets and signs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
