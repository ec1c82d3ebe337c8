"""Train the embedded InstructPix2Pix-style teacher: ``python -m course_lib train-teacher``.

The recipe (InstructPix2Pix, Brooks et al. 2023, in pixel space at 32x32):

* data: :class:`course_lib.world.RetouchWorld` on the *train* photos and *train*
  wording; item ``i`` of the run is a pure function of ``(seed, i)``;
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
``accelerate launch -m course_lib.train.teacher ...`` spreads it over GPUs (``--batch-size``
is per process; the processes split each step's items and random draws, see
:mod:`course_lib.train.common`). ``--out OUT`` is the teacher checkpoint written at the end (the
EMA weights); ``OUT.state/`` holds what ``--resume`` continues from (weights, EMA and optimiser
state in safetensors, never pickle; rerunning with ``--resume`` and no state starts afresh).
``--init CKPT`` starts from an exported checkpoint's weights instead (fine-tuning: fresh
optimiser; the provenance is recorded).
The shipped checkpoint was made with two runs: ``course_lib/recipes/teacher_embedded.yaml``
(``python -m course_lib reproduce --list`` prints the commands).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from .. import config
from ..grammar import training_vocabulary
from ..teacher import (InstructionReader, build_embedded_unet, ddpm_config, diffusion_loss, embedded_unet_config,
                       embedded_x0, reader_features, save_embedded_teacher)
from ..text import MiniLMEncoder
from ..world import READOUT_LABELS, RetouchWorld, instruction_bank, readout_targets
from .student import readout_loss
from .common import (Floats, Ints, RunOptions, Shard, end_processes, has_state, is_main_process, load_optimizer_tensors,
                     lr_at, mean_over_processes, optimizer_tensors, parse_settings, read_state, recipe_metadata,
                     run_option, save_on_main, set_lr, setting, settings_error, state_dir, strip_prefix, with_prefix,
                     write_state)

STATE = "state.safetensors"


@dataclasses.dataclass
class TrainConfig(RunOptions):
    """Settings of one run and of the command (one option per field; ``batch_size`` is per process)."""

    steps: int = run_option("steps", 2500)
    batch_size: int = run_option("batch_size", 32)
    save_every: int = run_option("save_every", 250)
    threads: int = run_option("threads", 1)
    lr: float = setting(5e-4, "AdamW learning rate")
    warmup: int = setting(100, "linear warm-up steps")
    cooldown: int = setting(0, "K > 0: the learning rate stays constant, then falls along a cosine to --lr-floor x lr "
                               "over the last K of --steps (resume a constant-rate run with a larger --steps and K to "
                               "cool it down; 0 = constant to the end)")
    lr_floor: float = setting(0.1, "the cool-down's last rate as a share of --lr")
    ema_decay: float = setting(0.995, "EMA decay, 0 = off")
    resolution: int = setting(32, "pixels")
    channels: Ints = setting(Ints((32, 64, 128)), "UNet widths")
    p_drop_text: float = setting(0.05, "share of items trained without their instruction (classifier-free guidance)")
    p_drop_image: float = setting(0.05, "share of items trained without their source photo")
    p_drop_both: float = setting(0.05, "share of items trained without either")
    grad_clip: float = setting(1.0, "gradient norm clip (0 = off)")
    log_every: int = setting(25, "steps per logged loss")
    init: str | None = setting(None, "start from the weights of an exported teacher checkpoint (e.g. the shipped one)")
    default_guidance: Floats = setting(Floats((1.5, 3.0)), "s_img,s_txt stored in the exported checkpoint")
    reader_tokens: int = setting(0, "T > 0: read the instruction with an InstructionReader (an MLP with readout heads) "
                                    "into T tokens for the UNet; 0: the pooled MiniLM vector is the "
                                    "one token")
    reader_hidden: int = setting(256, "the reader's width")
    readout_weight: float = setting(1.0, "weight of the reader's auxiliary readout loss")
    reader_pretrain: int = setting(0, "steps of training the reader alone on a bank of instructions before a fresh run")
    reader_bank: int = setting(20000, "instructions in that bank")
    reader_vocab: bool = setting(True, "the reader also reads the training words present (--no-reader-vocab: the "
                                       "sentence embedding alone)")
    word_dropout: float = setting(0.3, "share of rows whose word indicators are hidden from the reader")
    film: bool = setting(False, "the text and timestep embedding scales and shifts every ResNet block's features "
                                "(FiLM, resnet_time_scale_shift='scale_shift') instead of being added to them")
    export_only: bool = setting(False, "only export OUT.state/ to OUT (no training)")


def training_data(cfg: TrainConfig) -> RetouchWorld:
    """The run's items: training photos (random crops), every family, one to three edits per
    instruction in the training wording (:class:`course_lib.world.RetouchWorld`); item ``i`` is a
    pure function of ``(seed, i)``."""
    return RetouchWorld("train", "train", size=cfg.resolution, length=2**31 - 1, seed=cfg.seed)


class TeacherNet(torch.nn.Module):
    """What a training step runs, as one module (one forward under DDP): the reader (if any) and the UNet."""

    def __init__(self, unet: torch.nn.Module, reader: InstructionReader | None = None) -> None:
        super().__init__()
        self.unet, self.reader = unet, reader

    def forward(self, x_t, src, t, text, keep_text):
        """x̂0 and the reader's ``(logits, strength)`` (``None`` without readout heads).

        Args: x_t, src: (B, 3, r, r); t: (B,); text: (B, 384) pooled embeddings; keep_text: (B,) 0 where
        the text is dropped (∅ = zero tokens).
        """
        if self.reader is None:
            tokens, read = text[:, None], None  # (B, 1, 384)
        else:
            tokens, read = self.reader(text, return_readout=True)  # (B, T, 384)
        tokens = tokens * keep_text.view(-1, 1, 1)
        return embedded_x0(self.unet, x_t, src, t, tokens), read


def flat_weights(net: TeacherNet) -> dict[str, torch.Tensor]:
    """The checkpoint's key layout: the UNet's keys as they are, the reader's prefixed ``reader.``."""
    return {(k[len("unet."):] if k.startswith("unet.") else k): v for k, v in net.state_dict().items()}


def load_flat(net: TeacherNet, weights: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`flat_weights` (states written before readers existed hold the UNet's keys only)."""
    net.load_state_dict({(k if k.startswith("reader.") else "unet." + k): v for k, v in weights.items()})


def step_loss(net: TeacherNet, sched, source: torch.Tensor, target: torch.Tensor, text: torch.Tensor,
              gen: torch.Generator, cfg: TrainConfig, shard: Shard | None = None,
              readout: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One training step's loss: draws (t, ε, condition dropout), then :func:`course_lib.teacher.diffusion_loss`
    (residual x̂0 parameterisation, weighted), plus the reader's readout loss.

    Args:
        net: a :class:`TeacherNet` (reader and UNet).
        source, target: (B, 3, r, r) in [0, 1]; text: (B, 384) embeddings.
        gen: CPU generator for t, ε and the dropout draws.
        shard: this process's share of the step (default: all of it); the draws are made for the
            whole global batch and each process keeps its rows, so processes never share noise.
        readout: ``(present, strength)``, (B, K) each, the readout targets of the reader's heads.

    Returns:
        ``{"loss": total, "diffusion": ..., "readout": ...}`` scalars (readout only with a reader
        and targets): total = diffusion + ``cfg.readout_weight``·readout.
    """
    shard = shard or Shard(source.shape[0])
    n, dev = shard.global_batch, source.device
    x0, src = target * 2 - 1, source * 2 - 1  # pixels in [-1, 1]
    t = shard.take(torch.randint(0, sched.config.num_train_timesteps, (n,), generator=gen)).to(dev)
    noise = shard.take(torch.randn((n, *x0.shape[1:]), generator=gen)).to(dev)
    # r < p_T: drop text; p_T ≤ r < p_T+p_I: drop image; next p_both: drop both
    r = shard.take(torch.rand(n, generator=gen)).to(dev)
    p_t, p_i, p_b = cfg.p_drop_text, cfg.p_drop_image, cfg.p_drop_both
    drop_txt = ((r < p_t) | ((r >= p_t + p_i) & (r < p_t + p_i + p_b))).float()[:, None]
    drop_img = ((r >= p_t) & (r < p_t + p_i + p_b)).float()[:, None, None, None]
    src = src * (1 - drop_img)  # (B, 3, r, r)
    reads = []

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # x̂0 = source + r: the network predicts the edit, not the image; dropped text = zero tokens
        x0_hat, read = net(x_t, src, t, text, 1 - drop_txt[:, 0])
        reads.append(read)
        return x0_hat

    out = {"diffusion": diffusion_loss(denoise, x0, t, noise, sched.alphas_cumprod)}
    out["loss"] = out["diffusion"]
    if reads[0] is not None and readout is not None:
        # L = L_diffusion + w·(BCE(presence) + squared error of the named edits' strengths), on every row
        out["readout"] = readout_loss(*reads[0], *(r.to(dev) for r in readout))
        out["loss"] = out["loss"] + cfg.readout_weight * out["readout"]
    return out


def reader_bank(text_encoder, n: int, seed: int, none_prob: float = 0.05, vocab=()) -> dict[str, torch.Tensor]:
    """``n`` training instructions of the photo collection (training wording; a ``none_prob`` share names
    no edit), read once: ``X`` (n, 384 + V) (:func:`course_lib.teacher.reader_features`) and the
    readout targets ``P``, ``S`` (n, K)."""
    texts, P, S = instruction_bank(n, np.random.default_rng([31_000, seed]), none_prob)
    X = torch.cat([reader_features(texts[k:k + 256], text_encoder.encode, vocab) for k in range(0, n, 256)])
    return {"X": X, "P": P, "S": S}


def hide_words(x: torch.Tensor, text_dim: int, p: float, seed: int, step: int, shard: Shard | None = None) -> torch.Tensor:
    """Zero the word indicators (columns ``text_dim:``) of a random ``p`` of the rows, drawn for the
    global batch from ``(seed, step)`` (as the student's word dropout), so the reader also learns to
    read the sentence embedding alone: all it has for words it never saw."""
    if p <= 0 or x.shape[1] == text_dim:
        return x
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + 77)
    drawn = torch.rand(shard.global_batch if shard else x.shape[0], generator=g)
    keep = ((shard.take(drawn) if shard else drawn) >= p).to(x.dtype).to(x.device)  # (B,)
    return torch.cat([x[:, :text_dim], x[:, text_dim:] * keep[:, None]], dim=1)


def pretrain_reader(reader: InstructionReader, bank: dict[str, torch.Tensor], steps: int, seed: int,
                    lr: float = 1e-3, batch: int = 64, word_dropout: float = 0.0) -> list[float]:
    """Train the reader's MLP and readout heads alone on a bank (:func:`reader_bank`): reading the
    instruction needs no image, and thousands of such steps take seconds (the student's stage 0,
    lesson 03). The token projection is left to the diffusion loss. Deterministic given ``seed``.

    Returns:
        the readout losses, one per step.
    """
    params = list(reader.mlp.parameters()) + list(reader.readout.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(41_000 + seed)
    dev, losses = next(reader.parameters()).device, []
    for step in config.progress(range(steps), desc="reader", disable=config.is_fast()):
        idx = torch.randint(0, len(bank["X"]), (batch,), generator=g)
        x = hide_words(bank["X"][idx], reader.text_dim, word_dropout, seed + 5, step)
        _, read = reader(x.to(dev), return_readout=True)
        loss = readout_loss(*read, bank["P"][idx].to(dev), bank["S"][idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


# ----------------------------------------------------------------------------- training


def _init_info(init: str | None) -> dict | None:
    """Provenance of ``--init``: the file name and the training record stored in it (losses dropped)."""
    if not init:
        return None
    from safetensors import safe_open

    with safe_open(str(init), framework="pt") as f:
        train = json.loads((f.metadata() or {}).get("train", "{}"))
    train.pop("losses", None)
    return {"file": Path(init).name, "train": train}


def build_reader(cfg: TrainConfig) -> InstructionReader | None:
    """The run's :class:`InstructionReader` with readout heads (``cfg.reader_tokens`` > 0), or ``None``."""
    if cfg.reader_tokens <= 0:
        return None
    return InstructionReader(384, cfg.reader_hidden, cfg.reader_tokens, len(READOUT_LABELS),
                             vocab=tuple(sorted(training_vocabulary())) if cfg.reader_vocab else ())


def export_checkpoint(weights: dict[str, torch.Tensor], cfg: TrainConfig, path: str | Path, info: dict) -> Path:
    """Write the shipped teacher (fp16 weights, config, provenance ``train``): :func:`teacher.save_embedded_teacher`."""
    reader = build_reader(cfg)
    return save_embedded_teacher(weights, path, embedded_unet_config(cfg.resolution, cfg.channels,
                                                                     film=cfg.film),
                                 cfg.default_guidance, {"train": info, **recipe_metadata("train-teacher", cfg)},
                                 reader_config=reader.config() if reader is not None else None)


def export_from_state(cfg: TrainConfig) -> Path:
    """Export the (EMA) weights of ``OUT.state/state.safetensors`` to ``OUT`` without training (``--export-only``).

    With a constant learning rate after warm-up, the state saved at step k is what
    ``--steps k`` produces, so the exported file is reproduced by that command (with ``--cooldown K``
    only the state at the end of the cool-down is what ``--steps k --cooldown K`` produces).
    """
    stored, _, st = read_state(state_dir(cfg.out), STATE)
    run = st["config"]
    weights = strip_prefix(stored, "ema.") or strip_prefix(stored, "model.")
    losses = st["losses"]
    # the run's own settings (its architecture, its recipe), at the step the state holds
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = dataclasses.replace(TrainConfig(**{k: v for k, v in run.items() if k in names}), out=cfg.out,
                              channels=Ints(run["channels"]), default_guidance=cfg.default_guidance,
                              steps=int(st["step"]), recipe_file=cfg.recipe_file)
    info = {"steps": int(st["step"]), "batch_size": run["batch_size"] * st.get("processes", 1), "lr": run["lr"],
            "cooldown": run.get("cooldown", 0), "lr_floor": run.get("lr_floor", 0.1), "data": "world",
            "reader_tokens": cfg.reader_tokens,
            "ema_decay": run["ema_decay"], "seed": run["seed"], "final_loss": losses[-1][1] if losses else None,
            "losses": losses, "init": _init_info(run.get("init"))}
    return export_checkpoint(weights, cfg, cfg.out, info)


def train(cfg: TrainConfig, unet=None, text_encoder=None) -> dict:
    """Run (or resume) training.

    Args:
        cfg: the run's settings.
        unet: start from this UNet instead of a fresh :func:`build_embedded_unet`.
        text_encoder: object with ``encode(list[str]) -> (N, 384)``; default MiniLM.

    Returns:
        dict with ``unet`` (trained, unwrapped), ``reader`` (or None), ``ema`` (dict of tensors, the
        checkpoint layout of :func:`flat_weights`, or None),
        ``losses`` (list of (step, loss), averaged over processes), ``seconds``.
    """
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from safetensors.torch import load_file

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    acc = Accelerator()
    config.seed_everything(cfg.seed)
    text_encoder = text_encoder if text_encoder is not None else MiniLMEncoder()
    unet = unet if unet is not None else build_embedded_unet(cfg.resolution, cfg.channels, cfg.film)
    reader = build_reader(cfg)
    net = TeacherNet(unet, reader)
    sdir = state_dir(cfg.out) if cfg.out else None
    if cfg.resume and sdir is None:
        raise FileNotFoundError("nothing to resume: no output checkpoint given")
    resuming = cfg.resume and has_state(sdir, STATE)
    fresh_reader = True  # False when --init brings a trained reader
    if cfg.init and not resuming:
        # fine-tune from a shipped/exported checkpoint: its (EMA) weights, fp16 -> fp32
        init = {k: v.float() for k, v in load_file(str(cfg.init)).items()}
        unet.load_state_dict({k: v for k, v in init.items() if not k.startswith("reader.")})
        if reader is not None and any(k.startswith("reader.") for k in init):
            reader.load_state_dict(strip_prefix(init, "reader."))
            fresh_reader = False
        acc.print(f"initialised from {cfg.init}")
    if not resuming and fresh_reader and reader is not None and reader.readout is not None and cfg.reader_pretrain > 0:
        # stage 0: the reader learns to read the instruction alone (no image), then the UNet learns from its code
        bank = reader_bank(text_encoder, cfg.reader_bank, cfg.seed, vocab=reader.vocab)
        rl = pretrain_reader(reader, bank, cfg.reader_pretrain, cfg.seed, word_dropout=cfg.word_dropout)
        acc.print(f"reader pre-trained: readout loss {sum(rl[:50]) / len(rl[:50]):.3f} -> {sum(rl[-50:]) / len(rl[-50:]):.3f}")
    sched = DDPMScheduler.from_config(ddpm_config())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    start, losses = 0, []
    ema = {k: v.detach().clone().float() for k, v in flat_weights(net).items()} if cfg.ema_decay > 0 else None
    if resuming:
        stored, meta, st = read_state(sdir, STATE)
        load_flat(net, strip_prefix(stored, "model."))
        load_optimizer_tensors(opt, stored, meta["optimizer"], prefix="opt.")
        if ema is not None:
            ema = strip_prefix(stored, "ema.") or ema
        start, losses = int(st["step"]), [tuple(x) for x in st["losses"]]
        acc.print(f"resumed from {sdir / STATE} at step {start}")
    net.train()
    net, opt = acc.prepare(net, opt)
    ds, shard = training_data(cfg), Shard.of(acc, cfg.batch_size)
    t0, running, running_read = time.time(), [], []

    def save(step: int) -> None:
        model = acc.unwrap_model(net)
        tensors = with_prefix("model.", {k: v.detach().cpu().contiguous() for k, v in flat_weights(model).items()})
        if ema is not None:
            tensors.update(with_prefix("ema.", {k: v.cpu().contiguous() for k, v in ema.items()}))
        opt_t, opt_meta = optimizer_tensors(opt, prefix="opt.")
        write_state(sdir, {**tensors, **opt_t}, {"optimizer": opt_meta},
                    {"step": step, "losses": losses, "config": dataclasses.asdict(cfg),
                     "processes": acc.num_processes}, name=STATE)

    bar = config.progress(range(start, cfg.steps), initial=start, total=cfg.steps, desc="teacher",
                          disable=config.is_fast() or not acc.is_local_main_process)
    for step in bar:
        # lr(step) = lr · min(1, (step+1)/warmup); over the last K = cooldown steps a cosine to lr_floor·lr
        set_lr(opt, lr_at(step, cfg.lr, cfg.warmup, cfg.steps, floor=cfg.lr_floor, cooldown=cfg.cooldown))
        batch = shard.fetch(ds, step)
        if reader is None:
            text = text_encoder.encode(batch["instruction"]).to(acc.device)  # (B, 384)
        else:
            # (B, 384 + V): the sentence embedding and the training words, some rows' words hidden
            text = hide_words(reader_features(batch["instruction"], text_encoder.encode, reader.vocab),
                              reader.text_dim, cfg.word_dropout, cfg.seed, step, shard).to(acc.device)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101)  # the same on every process
        targets = None
        if reader is not None and reader.readout is not None:
            targets = tuple(map(torch.stack, zip(*(readout_targets(e) for e in batch["edits"]))))  # (B, K) x 2
        parts = step_loss(net, sched, batch["source"].to(acc.device), batch["target"].to(acc.device),
                          text, gen, cfg, shard, readout=targets)
        loss = parts["loss"]
        acc.backward(loss)
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            # θ_ema ← d·θ_ema + (1 − d)·θ,  d = min(decay, (1+n)/(10+n))
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in flat_weights(acc.unwrap_model(net)).items():
                    if v.is_floating_point():
                        ema[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
                    else:
                        ema[k].copy_(v)
        # the logged loss is the diffusion loss alone (comparable with and without a reader)
        logged = mean_over_processes(acc, {k: float(v.detach()) for k, v in parts.items()})
        running.append(logged["diffusion"])
        if "readout" in logged:
            running_read.append(logged["readout"])
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            losses.append((step + 1, sum(running) / len(running)))
            read_msg = f", readout {sum(running_read) / len(running_read):.4f}" if running_read else ""
            running, running_read = [], []
            bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
            if not config.is_fast():
                acc.print(f"step {step + 1}: loss {losses[-1][1]:.4f}{read_msg} ({time.time() - t0:.0f}s)")
        if sdir is not None:
            save_on_main(acc, step + 1, cfg.steps, cfg.save_every, lambda: save(step + 1))
    seconds = time.time() - t0
    acc.wait_for_everyone()
    model = acc.unwrap_model(net).eval()
    if cfg.out and acc.is_main_process:
        weights = ema if ema is not None else flat_weights(model)
        info = {"steps": cfg.steps, "batch_size": cfg.batch_size * acc.num_processes, "lr": cfg.lr,
                "cooldown": cfg.cooldown, "lr_floor": cfg.lr_floor, "data": "world",
                "reader_tokens": cfg.reader_tokens, "readout_weight": cfg.readout_weight,
                "reader_pretrain": cfg.reader_pretrain, "reader_vocab": cfg.reader_vocab, "film": cfg.film,
                "word_dropout": cfg.word_dropout,
                "ema_decay": cfg.ema_decay, "seed": cfg.seed, "final_loss": losses[-1][1] if losses else None,
                "seconds_this_run": round(seconds, 1), "losses": losses, "init": _init_info(cfg.init)}
        export_checkpoint(weights, cfg, cfg.out, info)
        acc.print(f"wrote {cfg.out}")
    return {"unet": model.unet, "reader": model.reader, "ema": ema, "losses": losses, "seconds": seconds}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return parse_settings(TrainConfig, argv, "python -m course_lib train-teacher",
                          "Train the embedded instruction-editing diffusion teacher (resumable; runs under 'accelerate "
                          "launch' unchanged). The shipped one: python -m course_lib reproduce teacher_embedded",
                          "teacher.safetensors")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.export_only:
        try:
            print(f"wrote {export_from_state(cfg)}")
        except FileNotFoundError as exc:
            settings_error("train-teacher", str(exc).splitlines()[0])
        return 0
    try:
        out = train(cfg)
    finally:
        end_processes()
    if out["losses"] and is_main_process():
        print(f"done: step {out['losses'][-1][0]}, loss {out['losses'][-1][1]:.4f}, {out['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
