"""Train the embedded InstructPix2Pix-style teacher: ``python -m course_lib train-teacher``.

The recipe (InstructPix2Pix, Brooks et al. 2023, in pixel space at 32x32):

* data: :class:`course_lib.data.RetouchPairs` on the *train* photos and *train*
  paraphrases; item ``i`` of the run is a pure function of ``(seed, i)``;
* forward process (diffusers ``DDPMScheduler.add_noise``): ``x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε``,
  ``t ~ U{0, …, 999}``; the UNet predicts ``x̂0 − source`` and the loss is
  ``min(1 + SNR_t, 5)·‖x_0 − x̂0‖²`` (ε-MSE is ``SNR_t·‖x_0 − x̂0‖²``: we lift the weight
  of the noisy steps that decide the colours and cap the nearly clean ones, as Min-SNR
  weighting does, Hang et al. 2023);
* condition dropout for classifier-free guidance: 5 % no text, 5 % no image,
  5 % neither (∅ text = zero vector, ∅ image = zeros);
* AdamW, linear warm-up then a constant learning rate (so that the checkpoint of
  step k is exactly what ``--steps k`` produces), gradient clipping, optional EMA.

It is written with 🤗 Accelerate: one CPU process runs it unchanged, and
``accelerate launch -m course_lib train-teacher ...`` spreads it over GPUs.
``--resume`` continues from ``OUT/state.safetensors`` (weights, EMA and optimizer
state all in safetensors, never pickle). ``--init CKPT`` starts from an exported
checkpoint's weights instead (fine-tuning: fresh optimiser; the provenance is recorded).
The shipped checkpoint was made with two runs (see :mod:`course_lib.teacher`)::

    python -m course_lib train-teacher --steps 1000 --batch-size 32 --lr 5e-4 --default-guidance 1,2 \\
        --ema-decay 0.995 --seed 0 --out-dir outputs/teacher --export outputs/teacher_stage1.safetensors
    python -m course_lib train-teacher --init outputs/teacher_stage1.safetensors --steps 2500 --lr 3e-4 \\
        --warmup 50 --seed 1 --default-guidance 1,1 --out-dir outputs/teacher2 \\
        --export data/weights/teacher_embedded.safetensors
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch

from . import config
from .teacher import build_embedded_unet, ddpm_config, embedded_unet_config, save_embedded_teacher


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of one run (also stored in the checkpoint's metadata)."""

    steps: int = 2500
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 100
    ema_decay: float = 0.995  # 0 = no EMA
    seed: int = 0
    resolution: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    p_drop_text: float = 0.05
    p_drop_image: float = 0.05
    p_drop_both: float = 0.05
    grad_clip: float = 1.0
    out_dir: str = str(config.OUTPUT_DIR / "teacher")
    save_every: int = 250
    log_every: int = 25
    resume: bool = False
    export: str | None = None
    init: str | None = None  # start from an exported teacher checkpoint's weights (fresh optimizer)
    default_guidance: tuple[float, float] = (1.5, 3.0)
    threads: int = 1


# ----------------------------------------------------------------------------- optimizer state in safetensors


def flatten_optimizer(state: dict, prefix: str = "opt.") -> tuple[dict[str, torch.Tensor], str]:
    """``optimizer.state_dict()`` -> (tensors for safetensors, param_groups as JSON).

    Per-parameter entries become ``opt.<index>.<name>`` (numbers become 0-d tensors).
    """
    tensors = {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            tensors[f"{prefix}{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, json.dumps(state["param_groups"])


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups_json: str, prefix: str = "opt.") -> dict:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": json.loads(groups_json)}


# ----------------------------------------------------------------------------- one batch


def make_batch(step: int, cfg: TrainConfig, rank: int = 0, world: int = 1) -> dict:
    """The training batch of ``step`` for process ``rank``: a pure function of (seed, step, rank).

    Returns:
        dict with ``source``, ``target`` (B, 3, r, r) in [0, 1] and ``instruction`` (list of B str).
    """
    from .data import RetouchPairs

    ds = RetouchPairs("train", "train", size=cfg.resolution, length=2**31 - 1, seed=cfg.seed)
    start = (step * world + rank) * cfg.batch_size
    items = [ds[start + j] for j in range(cfg.batch_size)]
    return {"source": torch.stack([it["source"] for it in items]),
            "target": torch.stack([it["target"] for it in items]),
            "instruction": [it["instruction"] for it in items]}


def diffusion_loss(unet, sched, source: torch.Tensor, target: torch.Tensor, text: torch.Tensor,
                   gen: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    """The denoising loss with condition dropout (residual x̂0 parameterisation, weighted).

    Args:
        source, target: (B, 3, r, r) in [0, 1]; text: (B, 384) embeddings.
        gen: CPU generator for t, ε and the dropout draws.

    Returns:
        scalar loss.
    """
    b = source.shape[0]
    dev = source.device
    x0, src = target * 2 - 1, source * 2 - 1  # pixels in [-1, 1]
    t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen).to(dev)
    noise = torch.randn(x0.shape, generator=gen).to(dev)
    # x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε
    x_t = sched.add_noise(x0, noise, t)
    # r < p_T: drop text; p_T ≤ r < p_T+p_I: drop image; next p_both: drop both
    r = torch.rand(b, generator=gen).to(dev)
    p_t, p_i, p_b = cfg.p_drop_text, cfg.p_drop_image, cfg.p_drop_both
    drop_txt = ((r < p_t) | ((r >= p_t + p_i) & (r < p_t + p_i + p_b))).float()[:, None]
    drop_img = ((r >= p_t) & (r < p_t + p_i + p_b)).float()[:, None, None, None]
    text = text * (1 - drop_txt)  # (B, 384)
    src = src * (1 - drop_img)  # (B, 3, r, r)
    # x̂0 = source + UNet(x_t ‖ source, t, text): the network predicts the edit as a residual
    x0_hat = src + unet(torch.cat([x_t, src], 1), t, encoder_hidden_states=text[:, None], class_labels=text).sample
    # ‖ε − ε̂‖² = SNR_t·‖x0 − x̂0‖², SNR_t = ᾱ_t/(1−ᾱ_t); we weight by w_t = min(1 + SNR_t, 5)
    ab = sched.alphas_cumprod.to(dev)[t]
    w = torch.clamp(1 + ab / (1 - ab), max=5.0).view(-1, 1, 1, 1)
    return (w * (x0_hat - x0) ** 2).mean()


# ----------------------------------------------------------------------------- training


def _state_path(cfg: TrainConfig) -> Path:
    return Path(cfg.out_dir) / "state.safetensors"


def _init_info(init: str | None) -> dict | None:
    """Provenance of ``--init``: the file name and the training record stored in it (losses dropped)."""
    if not init:
        return None
    from safetensors import safe_open

    with safe_open(str(init), framework="pt") as f:
        train = json.loads((f.metadata() or {}).get("train", "{}"))
    train.pop("losses", None)
    return {"file": Path(init).name, "train": train}


def export_checkpoint(weights: dict[str, torch.Tensor], cfg: TrainConfig, path: str | Path, info: dict) -> Path:
    """Write the shipped teacher (fp16 weights, config, provenance ``train``): :func:`teacher.save_embedded_teacher`."""
    return save_embedded_teacher(weights, path, embedded_unet_config(cfg.resolution, cfg.channels),
                                 cfg.default_guidance, {"train": info})


def export_from_state(cfg: TrainConfig) -> Path:
    """Export the (EMA) weights of ``OUT_DIR/state.safetensors`` without training (``--export-only``).

    With a constant learning rate after warm-up, the state saved at step k is what
    ``--steps k`` produces, so the exported file is reproduced by that command.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    stored = load_file(str(_state_path(cfg)))
    with safe_open(str(_state_path(cfg)), framework="pt") as f:
        meta = f.metadata()
    run = json.loads(meta["config"])
    prefix = "ema." if any(k.startswith("ema.") for k in stored) else "model."
    weights = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
    losses = json.loads(meta["losses"])
    cfg = dataclasses.replace(cfg, resolution=run["resolution"], channels=tuple(run["channels"]))
    info = {"steps": int(meta["step"]), "batch_size": run["batch_size"], "lr": run["lr"],
            "ema_decay": run["ema_decay"], "seed": run["seed"], "final_loss": losses[-1][1] if losses else None,
            "losses": losses, "init": _init_info(run.get("init"))}
    return export_checkpoint(weights, cfg, cfg.export, info)


def train(cfg: TrainConfig, unet=None, text_encoder=None) -> dict:
    """Run (or resume) training.

    Args:
        cfg: the run's settings.
        unet: start from this UNet instead of a fresh :func:`build_embedded_unet`.
        text_encoder: object with ``encode(list[str]) -> (N, 384)``; default MiniLM.

    Returns:
        dict with ``unet`` (trained, unwrapped), ``ema`` (dict of tensors or None),
        ``losses`` (list of (step, loss)), ``seconds``.
    """
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(max(1, cfg.threads))
    acc = Accelerator()
    config.seed_everything(cfg.seed)
    if text_encoder is None:
        from .text import MiniLMEncoder

        text_encoder = MiniLMEncoder()
    unet = unet if unet is not None else build_embedded_unet(cfg.resolution, cfg.channels)
    if cfg.init and not (cfg.resume and _state_path(cfg).is_file()):
        # fine-tune from a shipped/exported checkpoint: its (EMA) weights, fp16 -> fp32
        unet.load_state_dict({k: v.float() for k, v in load_file(str(cfg.init)).items()})
        acc.print(f"initialised from {cfg.init}")
    sched = DDPMScheduler.from_config(ddpm_config())
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    # lr(step) = lr · min(1, (step+1)/warmup)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    start, losses = 0, []
    ema = {k: v.detach().clone().float() for k, v in unet.state_dict().items()} if cfg.ema_decay > 0 else None
    if cfg.resume and _state_path(cfg).is_file():
        stored = load_file(str(_state_path(cfg)))
        with safe_open(str(_state_path(cfg)), framework="pt") as f:
            meta = f.metadata()
        unet.load_state_dict({k[6:]: v for k, v in stored.items() if k.startswith("model.")})
        opt.load_state_dict(unflatten_optimizer(stored, meta["param_groups"]))
        if ema is not None:
            ema = {k[4:]: v for k, v in stored.items() if k.startswith("ema.")} or ema
        start, losses = int(meta["step"]), [tuple(x) for x in json.loads(meta["losses"])]
        lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)),
                                                     last_epoch=start - 1)
        acc.print(f"resumed from {_state_path(cfg)} at step {start}")
    unet.train()
    unet, opt = acc.prepare(unet, opt)
    t0, running = time.time(), []

    def save(step: int) -> None:
        if not acc.is_main_process:
            return
        model = acc.unwrap_model(unet)
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        if ema is not None:
            tensors.update({f"ema.{k}": v.cpu().contiguous() for k, v in ema.items()})
        opt_t, groups = flatten_optimizer(opt.state_dict())
        tensors.update(opt_t)
        meta = {"step": str(step), "param_groups": groups, "losses": json.dumps(losses),
                "config": json.dumps(dataclasses.asdict(cfg))}
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        tmp = _state_path(cfg).with_suffix(".part")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, _state_path(cfg))

    bar = config.progress(range(start, cfg.steps), initial=start, total=cfg.steps, desc="teacher",
                          disable=config.is_fast() or not acc.is_local_main_process)
    for step in bar:
        batch = make_batch(step, cfg, acc.process_index, acc.num_processes)
        text = text_encoder.encode(batch["instruction"]).to(acc.device)  # (B, 384)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + acc.process_index)
        loss = diffusion_loss(unet, sched, batch["source"].to(acc.device), batch["target"].to(acc.device),
                              text, gen, cfg)
        acc.backward(loss)
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            # θ_ema ← d·θ_ema + (1 − d)·θ,  d = min(decay, (1+n)/(10+n))
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in acc.unwrap_model(unet).state_dict().items():
                    if v.is_floating_point():
                        ema[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
                    else:
                        ema[k].copy_(v)
        running.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            losses.append((step + 1, sum(running) / len(running)))
            running = []
            bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
            if not config.is_fast():
                acc.print(f"step {step + 1}: loss {losses[-1][1]:.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save(step + 1)
    seconds = time.time() - t0
    model = acc.unwrap_model(unet).eval()
    if cfg.export and acc.is_main_process:
        weights = ema if ema is not None else model.state_dict()
        info = {"steps": cfg.steps, "batch_size": cfg.batch_size * acc.num_processes, "lr": cfg.lr,
                "ema_decay": cfg.ema_decay, "seed": cfg.seed, "final_loss": losses[-1][1] if losses else None,
                "seconds_this_run": round(seconds, 1), "losses": losses, "init": _init_info(cfg.init)}
        export_checkpoint(weights, cfg, cfg.export, info)
        acc.print(f"wrote {cfg.export}")
    return {"unet": model, "ema": ema, "losses": losses, "seconds": seconds}


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m course_lib train-teacher",
                                description="Train the embedded instruction-editing diffusion teacher (resumable).")
    p.add_argument("--steps", type=int, default=d.steps, help="total optimizer steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (default %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps (default %(default)s)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay, 0 = off (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resolution", type=int, default=d.resolution, help="pixels (default %(default)s)")
    p.add_argument("--channels", default=",".join(map(str, d.channels)), help="UNet widths (default %(default)s)")
    p.add_argument("--out-dir", default=d.out_dir, help="resumable state (default %(default)s)")
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/state.safetensors")
    p.add_argument("--init", default=None,
                   help="start from the weights of an exported teacher checkpoint (e.g. the shipped one)")
    p.add_argument("--export", default=None, help="write the final (EMA) weights as a teacher checkpoint here")
    p.add_argument("--default-guidance", default=",".join(map(str, d.default_guidance)),
                   help="s_img,s_txt stored in the exported checkpoint (default %(default)s)")
    p.add_argument("--export-only", action="store_true",
                   help="only export OUT_DIR/state.safetensors to --export (no training)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (default %(default)s)")
    a = p.parse_args(argv)
    return TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup, ema_decay=a.ema_decay,
                       seed=a.seed, resolution=a.resolution, channels=tuple(int(c) for c in a.channels.split(",")),
                       out_dir=a.out_dir, save_every=a.save_every, log_every=a.log_every, resume=a.resume,
                       export=a.export, threads=a.threads, init=a.init,
                       default_guidance=tuple(float(x) for x in a.default_guidance.split(","))), a.export_only


def main(argv: list[str] | None = None) -> int:
    cfg, export_only = parse_args(argv)
    if export_only:
        if not cfg.export:
            raise SystemExit("--export-only needs --export PATH")
        print(f"wrote {export_from_state(cfg)}")
        return 0
    out = train(cfg)
    if out["losses"]:
        print(f"done: step {out['losses'][-1][0]}, loss {out['losses'][-1][1]:.4f}, {out['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
