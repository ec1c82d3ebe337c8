"""``python -m course_lib train-align``: train the embedded edit encoder (lesson 06).

:class:`course_lib.align.EditCLIP` learns, with CLIP's symmetric InfoNCE over each batch,
to match an edit - (source, edited photo) from :class:`course_lib.data.RetouchPairs` on the
training photos and phrasings - with the MiniLM embedding of its instruction. Seeded
(item ``i`` is a pure function of ``(seed, i)``), resumable (``OUT.state/``: optimiser,
step, losses; safetensors + JSON), 🤗 Accelerate-ready. At the end it reports top-1
retrieval accuracy on held-out photos (chance: one in the batch size).

The shipped ``data/weights/edit_clip.safetensors`` was made with :data:`REPRODUCE`.
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
from .align import AlignError, EditCLIP, EditCLIPConfig, load_edit_clip, retrieval_accuracy, save_edit_clip

REPRODUCE = ("python -m course_lib train-align --steps 1500 --batch-size 64 --size 32 --lr 1e-3 --seed 0 "
             "--threads 1 --out data/weights/edit_clip.safetensors")


@dataclasses.dataclass
class AlignArgs:
    """Hyper-parameters of :func:`train` (the command's flags)."""

    steps: int = 1500
    batch_size: int = 64
    size: int = 32
    lr: float = 1e-3
    warmup: int = 50
    compose_prob: float = 0.3
    seed: int = 0
    save_every: int = 250
    out: str | None = None


def _batch(ds, step: int, b: int) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    items = [ds[step * b + j] for j in range(b)]
    return (torch.stack([it["source"] for it in items]), torch.stack([it["target"] for it in items]),
            [it["instruction"] for it in items], [it["edits"] for it in items])


def heldout_retrieval(model: EditCLIP, n: int = 64, size: int | None = None, paraphrases: str = "heldout",
                      seed: int = 4321) -> dict[str, float]:
    """Top-1 instruction retrieval among ``n`` held-out-photo edits (right = same edit families and signs).

    Returns:
        ``{"accuracy": ..., "chance": ...}``; chance is the expected accuracy of a random pick,
        ``mean_i #{j: label_j = label_i} / n`` (duplicate edits in the batch raise it above 1/n).
    """
    from .data import RetouchPairs, decode_edits

    ds = RetouchPairs(split="heldout", paraphrases=paraphrases, size=size or model.cfg.size, length=n, seed=seed)
    src, tgt, instr, edits = _batch(ds, 0, n)
    labels = ["|".join(sorted(f"{e.family}{'+' if e.amount > 0 else '-'}" for e in decode_edits(x))) for x in edits]
    chance = sum(labels.count(lab) for lab in labels) / n ** 2
    return {"accuracy": retrieval_accuracy(model, src, tgt, model.embed_instructions(instr), labels), "chance": chance}


def train(args: AlignArgs, resume: bool = False, log_every: int = 25) -> tuple[EditCLIP, list[float]]:
    """Train (or resume) the edit encoder; returns ``(model, losses)`` (model in eval mode)."""
    from accelerate import Accelerator

    from .data import RetouchPairs
    from .train_student import load_optimizer_tensors, optimizer_tensors, read_state, state_dir, write_state

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
    ds = RetouchPairs(split="train", paraphrases="train", size=args.size, length=args.steps * args.batch_size,
                      seed=args.seed, compose_prob=args.compose_prob)
    bar = config.progress(total=args.steps, initial=start, desc="train-align",
                          disable=config.is_fast() or not acc.is_local_main_process)
    for step in range(start, args.steps):
        # lr: linear warm-up, then cosine to zero
        frac = (step + 1) / max(1, args.warmup) if step < args.warmup else \
            0.5 * (1 + torch.cos(torch.tensor(torch.pi * (step - args.warmup) / max(1, args.steps - args.warmup))).item())
        for g in opt.param_groups:
            g["lr"] = args.lr * frac
        src, tgt, instr, _ = _batch(ds, step, args.batch_size)
        with torch.no_grad():
            text = net.embed_instructions(instr)  # (B, 384), frozen MiniLM
        loss = net.loss(src.to(acc.device), tgt.to(acc.device), text)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        if (step + 1) % log_every == 0:
            bar.set_postfix(infonce=f"{sum(losses[-log_every:]) / log_every:.3f}")
        if out is not None and ((step + 1) % args.save_every == 0 or step + 1 == args.steps) and acc.is_main_process:
            save_edit_clip(net, out, metadata={"trained_steps": str(step + 1), "command": REPRODUCE
                                               if out.name == "edit_clip.safetensors" else "",
                                               "train_args": json.dumps(dataclasses.asdict(args))})
            tensors, meta = optimizer_tensors(opt)
            write_state(state_dir(out), tensors, {"optimizer": meta}, {"step": step + 1, "losses": losses})
    bar.close()
    net.eval()
    return net, losses


def main(argv: list[str] | None = None) -> int:
    from .train_student import add_run_options, parse_run_options

    d = AlignArgs()
    p = argparse.ArgumentParser(prog="python -m course_lib train-align",
                                description="Train the embedded edit encoder (EditCLIP) for the prompt-alignment "
                                            "loss with InfoNCE on the course's retouch pairs. Resumable; runs "
                                            "under 'accelerate launch' unchanged. Shipped: " + REPRODUCE)
    p.add_argument("--steps", type=int, default=config.pick(fast=30, full=d.steps))
    p.add_argument("--batch-size", type=int, default=config.pick(fast=16, full=d.batch_size))
    p.add_argument("--size", type=int, default=d.size, help="side of each panel (pixels)")
    p.add_argument("--lr", type=float, default=d.lr)
    add_run_options(p, d.seed, d.save_every, str(config.OUTPUT_DIR / "edit_clip.safetensors"))
    a = parse_run_options(p, argv)
    args = AlignArgs(steps=a.steps, batch_size=a.batch_size, size=a.size, lr=a.lr, seed=a.seed,
                     save_every=a.save_every, out=a.out)
    t0 = time.perf_counter()
    try:
        model, losses = train(args, resume=a.resume)
    except (FileNotFoundError, ValueError, AlignError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    k = max(1, min(50, len(losses) // 4))
    print(f"train-align: {len(losses)} steps in {time.perf_counter() - t0:.0f} s; InfoNCE first {k}: "
          f"{sum(losses[:k]) / k:.3f}, last {k}: {sum(losses[-k:]) / k:.3f}; wrote {args.out}")
    for phr in ("train", "heldout"):
        r = heldout_retrieval(model, paraphrases=phr)
        print(f"held-out photos, {phr} phrasings: top-1 retrieval among 64 = {r['accuracy']:.0%} "
              f"(chance {r['chance']:.0%}; right = same edit families and signs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
