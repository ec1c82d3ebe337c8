"""The diffusion teacher: an instruction-editing diffusion model behind one interface.

Two tiers share the interface :class:`Teacher` (InstructPix2Pix, Brooks et al. 2023):

* :class:`EmbeddedTeacher` (default, offline): a small ``UNet2DConditionModel`` that
  denoises **pixels** in [-1, 1] at 32x32. Its input is the noisy target
  concatenated with the source photo (6 channels); the instruction is read by an
  :class:`InstructionReader` (MiniLM's sentence embedding and the training words ->
  a few tokens) that enter by cross-attention, the first also through the timestep
  embedding (FiLM of the ResNet blocks). The UNet's output is read as a *residual* clean-image
  guess, x̂0 = source + output, and turned into the noise prediction
  ε̂ = (x_t − √ᾱ_t·x̂0)/√(1−ᾱ_t) (:func:`x0_to_eps`): ε, x0 and v are interchangeable
  given x_t, and with one right answer per (photo, instruction) the residual x0 form
  trains far faster on a CPU (a first ε-parameterised run still had colour casts after
  1000 steps). Trained by the course on the collection's training photos and all its edit
  families (:class:`course_lib.world.RetouchWorld`) and shipped as
  ``data/weights/teacher_embedded.safetensors``. Reproduce it with two runs (the second
  continues the first at a low constant rate with a new data seed):
  ``python -m course_lib reproduce teacher_embedded`` (``course_lib/recipes/teacher_embedded.yaml``).

* :class:`HubTeacher`: the real InstructPix2Pix pipeline (``timbrooks/instruct-pix2pix``)
  in VAE-latent space, when its weights are present (the "hub tier" section at the end).

Everything a distillation loop needs is here: ``eps`` (two-scale classifier-free
guidance in one batched UNet call), ``alpha_bar``, ``to_space``/``from_space``
and the schedulers (diffusers' ``DDPMScheduler`` for training, ``DDIMScheduler``
for sampling).
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import config
from .text import MiniLMEncoder, bag_of_words
from .util.hub import hf_file
from .util.checkpoint import CheckpointError, load_checkpoint, load_into, read_checkpoint, save_checkpoint

#: Where the shipped embedded teacher lives (trained on the collection's training photos and all its families).
EMBEDDED_WEIGHTS: Path = config.WEIGHTS_DIR / "teacher_embedded.safetensors"
#: The checkpoint kind of an embedded teacher (:mod:`course_lib.util.checkpoint`).
KIND = "teacher"

Guidance = tuple[float, float]


class TeacherError(RuntimeError):
    """A teacher cannot be loaded (missing or wrong weights); the message is one line."""


def cfg_combine(eps_uncond: torch.Tensor, eps_img: torch.Tensor, eps_full: torch.Tensor,
                s_img: float, s_txt: float) -> torch.Tensor:
    """InstructPix2Pix's two-scale classifier-free guidance.

    Args:
        eps_uncond: ε(x_t, ∅, ∅), no image and no text condition, (B, C, h, w).
        eps_img: ε(x_t, I, ∅), image only, same shape.
        eps_full: ε(x_t, I, T), image and text, same shape.
        s_img: image guidance scale s_I (1 = plain image conditioning).
        s_txt: text guidance scale s_T (1 = plain text conditioning).

    Returns:
        (B, C, h, w) guided noise prediction. With ``s_img = s_txt = 1`` it is ``eps_full``.
    """
    # ε̃ = ε(∅,∅) + s_I·(ε(I,∅) − ε(∅,∅)) + s_T·(ε(I,T) − ε(I,∅))
    return eps_uncond + s_img * (eps_img - eps_uncond) + s_txt * (eps_full - eps_img)


def ddpm_config(num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                clip_sample: bool = True) -> dict:
    """The embedded teacher's noise schedule, as a diffusers scheduler config dict."""
    return {"num_train_timesteps": num_train_timesteps, "beta_schedule": beta_schedule,
            "prediction_type": "epsilon", "clip_sample": clip_sample, "clip_sample_range": 1.0,
            "timestep_spacing": "trailing"}


def x0_to_eps(x0: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Turn a clean-image prediction into the equivalent noise prediction.

    Args:
        x0, x_t: (B, C, h, w); alpha_bar: (B,) ᾱ_t.

    Returns:
        (B, C, h, w) ε = (x_t − √ᾱ_t·x0) / √(1−ᾱ_t).
    """
    a = alpha_bar.to(x_t).view(-1, 1, 1, 1)
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


class Teacher:
    """The interface every teacher tier implements.

    Attributes:
        resolution: working resolution (pixels) of the teacher.
        channels: channels of the teacher's space (3 for pixels, 4 for SD latents).
        default_guidance: ``(s_img, s_txt)`` used when ``guidance`` is ``None``.
        unet: the noise predictor (a diffusers ``UNet2DConditionModel``).
        train_scheduler: a diffusers ``DDPMScheduler`` (``add_noise``, ᾱ_t).
        device: where the teacher runs.
    """

    resolution: int = 32
    channels: int = 3
    default_guidance: Guidance = (1.5, 7.5)
    unet: torch.nn.Module
    scheduler_config: dict
    device: torch.device = torch.device("cpu")

    # ------------------------------------------------------------ tier-specific
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Instructions -> text conditioning (N, L, D) for :meth:`eps` (L tokens of size D)."""
        raise NotImplementedError

    def null_text(self, n: int) -> torch.Tensor:
        """The ∅ text condition, (n, L, D)."""
        raise NotImplementedError

    def to_space(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, h, w) the space the UNet denoises."""
        raise NotImplementedError

    def from_space(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_space`: (B, C, h, w) -> (B, 3, H, W) in [0, 1]."""
        raise NotImplementedError

    def encode_source(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] source photo -> its image condition (B, C, h, w)."""
        return self.to_space(image)

    def working_size(self, h: int, w: int) -> tuple[int, int]:
        """Pixel size (H', W') at which a photo of size (h, w) is edited."""
        return self.resolution, self.resolution

    def _unet(self, x_in: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """One UNet call: (B, 2C, h, w) input, (B,) timesteps, (B, L, D) text -> (B, C, h, w)."""
        return self.unet(x_in, t, encoder_hidden_states=text).sample

    # ------------------------------------------------------------ shared
    def alpha_bar(self, t: torch.Tensor | int) -> torch.Tensor:
        """ᾱ_t = Π_{s≤t} (1 − β_s) for integer timesteps t (any shape), float32 on t's device."""
        t = torch.as_tensor(t, dtype=torch.long)
        return self.train_scheduler.alphas_cumprod.to(t.device)[t].float()

    @property
    def train_scheduler(self):
        """A diffusers ``DDPMScheduler`` with this teacher's schedule (for training and ``add_noise``)."""
        if getattr(self, "_ddpm", None) is None:
            from diffusers import DDPMScheduler

            self._ddpm = DDPMScheduler.from_config(self.scheduler_config)
        return self._ddpm

    def sample_scheduler(self):
        """A fresh diffusers ``DDIMScheduler`` (η = 0) with this teacher's schedule."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, source: torch.Tensor, text_emb: torch.Tensor,
            guidance: Guidance | None = None) -> torch.Tensor:
        """Guided noise prediction, the three conditionings batched in one UNet call.

        Args:
            x_t: (B, C, h, w) noisy sample in teacher space.
            t: int or (B,) integer timesteps in [0, num_train_timesteps).
            source: (B, C, h, w) image condition from :meth:`encode_source`.
            text_emb: (B, L, D) from :meth:`encode_text`.
            guidance: ``(s_img, s_txt)``; ``None`` = :attr:`default_guidance`;
                ``(1, 1)`` skips guidance (one conditional call).

        Returns:
            (B, C, h, w) ε̃, see :func:`cfg_combine`.
        """
        s_img, s_txt = self.default_guidance if guidance is None else guidance
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).long().reshape(-1).expand(b)
        if s_img == 1 and s_txt == 1:
            return self._unet(torch.cat([x_t, source], 1), t, text_emb)
        null_txt = self.null_text(b).to(text_emb)
        # rows: (I, T), (I, ∅), (∅, ∅)  -> (3B, 2C, h, w)
        x_in = torch.cat([torch.cat([x_t, source], 1), torch.cat([x_t, source], 1),
                          torch.cat([x_t, torch.zeros_like(source)], 1)])
        out = self._unet(x_in, t.repeat(3), torch.cat([text_emb, null_txt, null_txt]))
        eps_full, eps_img, eps_uncond = out.chunk(3)
        return cfg_combine(eps_uncond, eps_img, eps_full, s_img, s_txt)

    @torch.no_grad()
    def sample(self, source: torch.Tensor, text_emb: torch.Tensor, steps: int = 50,
               guidance: Guidance | None = None, generator: torch.Generator | None = None,
               x_T: torch.Tensor | None = None,
               callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """DDIM sampling (η = 0) in teacher space.

        Args:
            source: (B, C, h, w) image condition; text_emb: (B, L, D).
            steps: number of DDIM steps.
            guidance: ``(s_img, s_txt)``.
            generator: seeds the initial noise x_T (CPU generator).
            x_T: (B, C, h, w) initial noise, overrides ``generator``.
            callback: called as ``callback(i, t, x_t, x0_hat)`` after each step.

        Returns:
            (B, C, h, w) x_0 in teacher space.
        """
        sched = self.sample_scheduler()
        sched.set_timesteps(steps)
        if x_T is None:
            x_T = torch.randn(source.shape[0], self.channels, *source.shape[-2:], generator=generator)
        x = x_T.to(self.device, source.dtype) * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            e = self.eps(sched.scale_model_input(x, t), int(t), source, text_emb, guidance)
            out = sched.step(e, t, x)
            x = out.prev_sample
            if callback is not None:
                callback(i, int(t), x, out.pred_original_sample)
        return x

    @torch.no_grad()
    def edit(self, source: torch.Tensor, instruction: str | Sequence[str], steps: int = 50,
             guidance: Guidance | None = None, seed: int = 0,
             callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """Edit photo(s) by an instruction with full DDIM sampling.

        Args:
            source: (3, H, W) or (B, 3, H, W) in [0, 1].
            instruction: one string (used for all) or B strings.
            steps: DDIM steps; guidance: ``(s_img, s_txt)``; seed: seeds x_T.
            callback: see :meth:`sample`.

        Returns:
            Edited image(s) in [0, 1], the same shape as ``source`` (resized back from
            the teacher's working size).
        """
        squeeze = source.dim() == 3
        src = (source[None] if squeeze else source).float()
        b, _, h, w = src.shape
        texts = [instruction] * b if isinstance(instruction, str) else list(instruction)
        if len(texts) != b:
            raise ValueError(f"got {len(texts)} instructions for {b} images")
        size = self.working_size(h, w)
        small = src if (h, w) == size else F.interpolate(src, size=size, mode="bilinear",
                                                         align_corners=False, antialias=True).clamp(0, 1)
        cond = self.encode_source(small.to(self.device))
        text = self.encode_text(texts).to(self.device)
        gen = torch.Generator().manual_seed(int(seed))
        x0 = self.sample(cond, text, steps, guidance, gen, callback=callback)
        out = self.from_space(x0).float().cpu()  # (B, 3, h', w')
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
        return out[0] if squeeze else out


# ----------------------------------------------------------------------------- embedded tier


def embedded_unet_config(resolution: int = 32, channels: Sequence[int] = (32, 64, 128), text_dim: int = 384,
                         film: bool = False) -> dict:
    """Config of the embedded teacher's ``UNet2DConditionModel`` (about 4.6 M parameters by default).

    Input: noisy target ‖ source (6 channels); output: the edit as a residual (3 channels, read by
    :func:`embedded_x0`). The text embedding enters by
    cross-attention in the two lower levels and, through ``class_embed_type="projection"``, is
    added to the timestep embedding. With ``film`` that embedding scales and shifts every ResNet
    block's normalised features (``resnet_time_scale_shift="scale_shift"``, FiLM) instead of only
    being added to them: a colour edit is a product, as in the student's FiLM layers (lesson 03).
    """
    n = len(channels)
    return {"sample_size": resolution, "in_channels": 6, "out_channels": 3, "layers_per_block": 1,
            "block_out_channels": list(channels),
            "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
            "up_block_types": ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
            "cross_attention_dim": text_dim, "attention_head_dim": 8, "norm_num_groups": 8,
            "class_embed_type": "projection", "projection_class_embeddings_input_dim": text_dim,
            "resnet_time_scale_shift": "scale_shift" if film else "default"}


class InstructionReader(torch.nn.Module):
    """The teacher's reading of an instruction: MiniLM's pooled vector -> ``tokens`` tokens.

    One pooled vector through the class embedding and a one-token cross-attention was too weak a
    path for the diffusion loss to learn *which* edit is asked (a measured study: at t = 999 the
    predicted change had cosine 0.24 with the true one). The reader is a small MLP with
    "understood as" heads, as the student's (lesson 03): trained with an auxiliary readout loss,
    its tokens carry the edit code ``[p, p·s]`` (presence, signed strength of each edit) to the
    UNet's cross-attention and (the first token) to the timestep embedding.

    It reads what the student reads (:func:`course_lib.student.featurise` with one clause): the
    sentence embedding and, with a vocabulary, the training words present (:func:`reader_features`).

    Args:
        text_dim: D, the text encoder's size (384 for MiniLM) and the UNet's ``cross_attention_dim``.
        hidden: H, the MLP's width.
        tokens: T, how many tokens the UNet attends over.
        labels: K, the readout heads (0: none; the tokens read the MLP's features alone).
        vocab: V words whose presence it also reads (``()``: the sentence embedding alone).
    """

    def __init__(self, text_dim: int = 384, hidden: int = 256, tokens: int = 4, labels: int = 0,
                 vocab: Sequence[str] = ()) -> None:
        super().__init__()
        self.text_dim, self.hidden, self.tokens, self.labels = text_dim, hidden, tokens, labels
        self.vocab = tuple(vocab)
        nn = torch.nn
        self.mlp = nn.Sequential(nn.Linear(text_dim + len(self.vocab), hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU())
        self.readout = nn.Linear(hidden, 2 * labels) if labels else None
        self.to_tokens = nn.Linear(hidden + 2 * labels, tokens * text_dim)
        self.norm = nn.LayerNorm(text_dim)

    def config(self) -> dict:
        """What rebuilds it (stored in the checkpoint's config as ``reader``)."""
        return {"text_dim": self.text_dim, "hidden": self.hidden, "tokens": self.tokens, "labels": self.labels,
                "vocab": list(self.vocab)}

    def forward(self, e: torch.Tensor, return_readout: bool = False):
        """Args: e: (N, D + V) :func:`reader_features` (∅ = zero tokens is the caller's).

        Returns:
            (N, T, D) tokens; with ``return_readout`` also ``(logits, strength)``, (N, K) each (``None`` when K = 0).
        """
        h = self.mlp(e)  # (N, H)
        feats, read = h, None
        if self.readout is not None:
            logits, strength = self.readout(h).chunk(2, dim=-1)  # (N, K) each
            p = torch.sigmoid(logits)
            # c = [p, p·s]: the edit code, as the student's (an absent edit contributes zeros)
            c = torch.cat([p, p * strength], dim=-1)  # (N, 2K)
            feats, read = torch.cat([h, c], dim=-1), (logits, strength)
        tok = self.norm(self.to_tokens(feats).view(-1, self.tokens, self.text_dim))  # (N, T, D)
        return (tok, read) if return_readout else tok


def reader_features(texts: Sequence[str], encode, vocab: Sequence[str] = ()) -> torch.Tensor:
    """What an :class:`InstructionReader` reads: the sentence embeddings ``encode(texts)`` (N, D),
    then the word indicators of ``vocab`` (N, V) when it has one: (N, D + V) on the CPU."""
    e = encode(list(texts)).detach().float().cpu()  # (N, D)
    return torch.cat([e, bag_of_words(texts, vocab)], dim=1) if vocab else e


class EmbeddedTeacher(Teacher):
    """InstructPix2Pix in pixel space at 32x32, conditioned on MiniLM embeddings.

    The UNet predicts x̂0 − source (:meth:`predict_x0`); :meth:`eps` sees the
    equivalent ε. A freshly built UNet (zero last conv) is the identity edit.

    Args:
        unet: a ``UNet2DConditionModel`` built from :func:`embedded_unet_config`.
        scheduler_config: the diffusers scheduler config (:func:`ddpm_config`).
        text_encoder: an object with ``encode(list[str]) -> (N, 384)``; default
            :class:`course_lib.text.MiniLMEncoder` (loaded on first use).
        default_guidance: ``(s_img, s_txt)``.
        reader: an :class:`InstructionReader` (the teacher's text path), or ``None`` (the
            pooled MiniLM vector is the one token).
    """

    channels = 3

    def __init__(self, unet: torch.nn.Module, scheduler_config: dict | None = None, text_encoder=None,
                 default_guidance: Guidance = (1.5, 3.0), device: torch.device | str = "cpu",
                 reader: InstructionReader | None = None) -> None:
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval().requires_grad_(False)
        self.reader = reader.to(self.device).eval().requires_grad_(False) if reader is not None else None
        self.resolution = int(unet.config.sample_size)
        self.scheduler_config = dict(scheduler_config or ddpm_config())
        self.default_guidance = tuple(default_guidance)
        self._text_encoder = text_encoder
        self.text_dim = int(unet.config.cross_attention_dim)

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            self._text_encoder = MiniLMEncoder(disk_cache=True)
        return self._text_encoder

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if self.reader is None:
            return self.text_encoder.encode(list(texts)).to(self.device)[:, None, :]  # one token (N, 1, 384)
        with torch.no_grad():
            # (N, 384 + V) -> T tokens (N, T, 384)
            return self.reader(reader_features(texts, self.text_encoder.encode, self.reader.vocab).to(self.device))

    @property
    def text_tokens(self) -> int:
        """L, the tokens per instruction (1, or the reader's T)."""
        return 1 if self.reader is None else self.reader.tokens

    def null_text(self, n: int) -> torch.Tensor:
        # ∅ text = zero tokens (what condition dropout trains on)
        return torch.zeros(n, self.text_tokens, self.text_dim, device=self.device)

    def to_space(self, image: torch.Tensor) -> torch.Tensor:
        # x = 2·img − 1 ∈ [-1, 1]
        return image * 2 - 1

    def from_space(self, x: torch.Tensor) -> torch.Tensor:
        # img = (x + 1) / 2, clipped to [0, 1]
        return ((x + 1) / 2).clamp(0, 1)

    def predict_x0(self, x_in: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The network's clean-image guess x̂0 (:func:`embedded_x0`), (B, 3, h, w).

        Args:
            x_in: (B, 6, h, w) = x_t ‖ source (source zeroed when the image condition is dropped).
            t: (B,) timesteps; text: (B, 1, 384) (the token also enters the timestep embedding).
        """
        return embedded_x0(self.unet, x_in[:, :3], x_in[:, 3:], t, text)

    def _unet(self, x_in: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # ε̂ = (x_t − √ᾱ_t·x̂0) / √(1−ᾱ_t): the same model, read as a noise prediction
        return x0_to_eps(self.predict_x0(x_in, t, text), x_in[:, :3], self.alpha_bar(t))


def embedded_x0(unet, x_t: torch.Tensor, source: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """One call of the embedded UNet read as a clean-image guess: x̂0 = s + r, the UNet's output r the edit.

    Args:
        x_t: (B, 3, h, w) noisy target; source: (B, 3, h, w) s (zeros when dropped); t: (B,) timesteps;
        text: (B, T, 384) tokens (the first also enters the timestep embedding).

    Returns:
        (B, 3, h, w) x̂0 in [-1, 1] space (not clipped).
    """
    # x̂0 = s + UNet(x_t ‖ s, t, text): the network predicts the edit, not the image
    return source + unet(torch.cat([x_t, source], 1), t, encoder_hidden_states=text, class_labels=text[:, 0]).sample


def diffusion_loss(denoise, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor,
                   max_weight: float = 5.0) -> torch.Tensor:
    """The teacher's training objective at drawn ``(t, ε)``: the forward process, then a weighted x̂0 loss.

    ``x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε``;  ``x̂0 = denoise(x_t, t)``;
    ``L = mean over batch and pixels of w_t (x̂0 − x0)²``, ``w_t = min(1 + SNR_t, max_weight)``,
    ``SNR_t = ᾱ_t / (1 − ᾱ_t)``. Since ``‖ε − ε̂‖² = SNR_t ‖x0 − x̂0‖²``, this is the ε-loss with the
    weight ``min(1 + SNR_t, 5) / SNR_t`` (Min-SNR style): the noisy steps stay in play.

    Args:
        denoise: ``(x_t (B, C, h, w), t (B,)) -> x̂0 (B, C, h, w)``, the network read as a clean-image guess
            (its conditions bound in).
        x0: (B, C, h, w) clean targets in [-1, 1]. t: (B,) integer timesteps. noise: (B, C, h, w) ε.
        alpha_bar: (num_train_timesteps,) the schedule's ᾱ.

    Returns:
        the scalar loss.
    """
    ab = alpha_bar.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1) ᾱ_t
    # x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε
    x_t = ab ** 0.5 * x0 + (1 - ab) ** 0.5 * noise
    x0_hat = denoise(x_t, t)
    # w_t = min(1 + SNR_t, 5)
    w = torch.clamp(1 + ab / (1 - ab), max=max_weight)
    return (w * (x0_hat - x0) ** 2).mean()


def build_embedded_unet(resolution: int = 32, channels: Sequence[int] = (32, 64, 128), film: bool = False):
    """A freshly initialised embedded-teacher UNet; its last conv starts at zero (x̂0 = source: no edit)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**embedded_unet_config(resolution, channels, film=film))
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)
    return unet


def save_embedded_teacher(weights: dict[str, torch.Tensor], path: str | Path, unet_config: dict,
                          default_guidance: Sequence[float], provenance: dict | None = None,
                          reader_config: dict | None = None) -> Path:
    """Write an embedded teacher: fp16 UNet weights (and the reader's, prefixed ``reader.``), the
    UNet/scheduler config, the reader's config and the default guidance, in the course's one
    checkpoint convention (atomically)."""
    cfg = {"unet": unet_config, "scheduler": ddpm_config(), "default_guidance": [float(g) for g in default_guidance],
           "text_encoder": "minilm", "reader": reader_config}
    return save_checkpoint(path, {k: v.detach().half() for k, v in weights.items()}, KIND, cfg, provenance)


def load_embedded_teacher(path: str | Path | None = None, device: torch.device | str | None = None,
                          text_encoder=None) -> EmbeddedTeacher:
    """Load an embedded teacher from a safetensors checkpoint (never pickle).

    Args:
        path: default :data:`EMBEDDED_WEIGHTS`. Its ``config`` holds ``unet``, ``scheduler`` and
            ``default_guidance`` (:mod:`course_lib.util.checkpoint`).
        device: default ``config.device()``.

    Raises:
        TeacherError: missing file or not an embedded-teacher checkpoint.
    """
    from diffusers import UNet2DConditionModel

    p = Path(path) if path is not None else EMBEDDED_WEIGHTS
    if not p.is_file():
        raise TeacherError(f"{p}: no teacher checkpoint; train one with 'python -m course_lib train-teacher'")
    try:
        tensors, info = load_checkpoint(p, KIND)
        unet = UNet2DConditionModel(**info.config["unet"])
        load_into(unet, {k: v.float() for k, v in tensors.items() if not k.startswith("reader.")}, p)
        reader = None
        if info.config.get("reader"):
            reader = InstructionReader(**info.config["reader"])
            load_into(reader, {k[len("reader."):]: v.float() for k, v in tensors.items() if k.startswith("reader.")}, p)
    except CheckpointError as exc:
        raise TeacherError(str(exc)) from None
    if info.config.get("head", "residual") != "residual":  # the affine/edm heads of a finished study
        raise TeacherError(f"{p}: a teacher with the {info.config['head']!r} output head, which this course no "
                           "longer has (only the residual head)")
    return EmbeddedTeacher(unet, info.config["scheduler"], text_encoder=text_encoder,
                           default_guidance=tuple(info.config.get("default_guidance", (1.5, 3.0))),
                           device=device or config.device(), reader=reader)


def checkpoint_info(path: str | Path | None = None) -> dict:
    """What a teacher checkpoint says about itself: ``kind``, ``config`` and the provenance keys
    (training command, steps, loss...), decoded from JSON."""
    info = read_checkpoint(Path(path) if path is not None else EMBEDDED_WEIGHTS, KIND)
    return {"kind": info.kind, "config": info.config, **info.provenance}


#: The teacher tiers every command accepts (``--teacher``).
TIERS: tuple[str, ...] = ("embedded", "hub")


def load_teacher(tier: str = "embedded", path: str | os.PathLike | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None, **kwargs) -> Teacher:
    """The one teacher loader every command uses.

    Args:
        tier: ``"embedded"`` (the course's own teacher, :func:`load_embedded_teacher`) or
            ``"hub"`` (InstructPix2Pix, :func:`load_hub_teacher`).
        path: embedded: a checkpoint file (default the shipped one); hub: a local
            ``save_pretrained`` folder or a hub id (default :data:`HUB_REPO`).
        device: default ``config.device()``.
        dtype: the frozen weights' dtype (hub only; default fp16 on CUDA, fp32 elsewhere). The
            embedded teacher (a few MB) always runs in fp32.

    Raises:
        TeacherError: missing or wrong weights (one line). ValueError: unknown tier.
    """
    if tier == "embedded":
        return load_embedded_teacher(path, device=device, **kwargs)
    if tier == "hub":
        return load_hub_teacher(path or HUB_REPO, device=device, dtype=dtype, **kwargs)
    raise ValueError(f"tier must be one of {TIERS}, not {tier!r}")


#: What ``--teacher`` means in every command that uses a teacher (``--teacher-path``: :data:`TEACHER_PATH_HELP`).
TEACHER_HELP = "teacher tier: the course's embedded 32-px teacher or the hub InstructPix2Pix"


def add_teacher_options(parser, default: str = "embedded") -> None:
    """Add ``--teacher embedded|hub`` and ``--teacher-path`` to an argparse parser (every teacher command)."""
    parser.add_argument("--teacher", choices=list(TIERS), default=default, help=TEACHER_HELP + " (default %(default)s)")
    parser.add_argument("--teacher-path", default=None, help=TEACHER_PATH_HELP)


def frozen_dtype(device: torch.device | str, mixed_precision: str | None = None) -> torch.dtype:
    """The dtype of the frozen models (teacher, CLIP, LPIPS) for Accelerate's ``mixed_precision``.

    ``"fp16"``/``"bf16"`` are honoured; otherwise fp16 on CUDA and fp32 elsewhere. Trainable
    parameters stay fp32 whatever this says (:func:`course_lib.distill.trainable_to_fp32`).
    """
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp16":
        return torch.float16
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


# ----------------------------------------------------------------------------- the hub tier
#
# The hub teacher: the real InstructPix2Pix (Brooks et al. 2023) behind :class:`course_lib.teacher.Teacher`.
#
# ``StableDiffusionInstructPix2PixPipeline`` (``timbrooks/instruct-pix2pix``, about
# 2.6 GB in fp16) denoises Stable Diffusion VAE latents (4 x H/8 x W/8); the source
# photo's latent (the VAE posterior's mode, *unscaled*, as the pipeline does) is
# concatenated with the noisy latent, so its UNet has 8 input channels; the
# instruction is encoded by CLIP's text transformer (77 tokens x 768).
#
# Loading is offline unless ``COURSE_ONLINE=1``: weights must be in the local
# Hugging Face cache or in a folder written by ``save_pretrained``. A missing model
# raises :class:`course_lib.teacher.TeacherError` with one line saying what to do.
#
# :func:`make_tiny_pipeline` assembles a randomly initialised pipeline of the same
# architecture from tiny configs (and a CLIP tokenizer built from open_clip's bundled
# BPE merges). Tests save it and load it back through :func:`load_hub_teacher`,
# exactly the code path the real weights take.

#: The InstructPix2Pix checkpoint on the Hugging Face hub.
HUB_REPO = "timbrooks/instruct-pix2pix"
TEACHER_PATH_HELP = ("embedded: a teacher checkpoint (default: the shipped one); hub: a local pipeline folder or "
                     f"a hub id (default {HUB_REPO})")


def hub_weights_present(repo: str | os.PathLike = HUB_REPO) -> bool:
    """True when ``repo`` is a local pipeline folder or is in the local Hugging Face cache (no network)."""
    return hf_file(str(repo), "model_index.json", download=False) is not None


class HubTeacher(Teacher):
    """An ``StableDiffusionInstructPix2PixPipeline`` seen through the :class:`Teacher` interface.

    Args:
        pipe: the loaded pipeline (its UNet, VAE, CLIP text encoder, tokenizer, scheduler).
        default_guidance: ``(s_img, s_txt)``; InstructPix2Pix's defaults are (1.5, 7.5).
        resolution: shorter side (pixels) at which photos are edited; default
            ``unet.config.sample_size · vae_scale_factor`` (512 for the real model).
    """

    def __init__(self, pipe, default_guidance: tuple[float, float] = (1.5, 7.5), resolution: int | None = None) -> None:
        self.pipe = pipe
        self.unet, self.vae = pipe.unet, pipe.vae
        self.tokenizer, self.text_encoder = pipe.tokenizer, pipe.text_encoder
        for m in (self.unet, self.vae, self.text_encoder):
            m.eval().requires_grad_(False)
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self.channels = int(self.unet.config.out_channels)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.resolution = int(resolution or self.unet.config.sample_size * self.vae_scale)
        # the pipeline's noise schedule, sampled with DDIM on "trailing" timesteps
        # clip_sample is set explicitly: clipping x̂0 to [-1, 1] is for pixels, never for latents
        self.scheduler_config = {**dict(pipe.scheduler.config), "timestep_spacing": "trailing", "clip_sample": False,
                                 "prediction_type": pipe.scheduler.config.get("prediction_type", "epsilon")}
        self.default_guidance = tuple(default_guidance)
        self._null: torch.Tensor | None = None

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        # CLIP tokens, padded to the model length (77) -> last hidden state (N, 77, 768)
        tok = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return self.text_encoder(tok.input_ids.to(self.device))[0].to(self.dtype)

    def null_text(self, n: int) -> torch.Tensor:
        # ∅ text = the embedding of the empty prompt (as the pipeline's negative prompt)
        if self._null is None:
            self._null = self.encode_text([""])
        return self._null.expand(n, -1, -1)

    def working_size(self, h: int, w: int) -> tuple[int, int]:
        # shorter side -> resolution, both sides multiples of the VAE's downsampling factor
        s = self.resolution / min(h, w)
        m = self.vae_scale
        return max(m, round(h * s / m) * m), max(m, round(w * s / m) * m)

    def to_space(self, image: torch.Tensor) -> torch.Tensor:
        # differentiable (the VAE is frozen, not detached): distillation and the cycle loss need it
        # z = scaling_factor · mode(q(z | 2·img − 1)): (B, 4, H/8, W/8)
        # the frozen VAE runs in the teacher's dtype (fp16 on GPUs); latents come back in fp32
        post = self.vae.encode((image * 2 - 1).to(self.device, self.dtype)).latent_dist
        return post.mode().float() * self.scaling_factor

    @torch.no_grad()
    def encode_source(self, image: torch.Tensor) -> torch.Tensor:
        # InstructPix2Pix conditions on the *unscaled* latent mode
        return self.vae.encode((image * 2 - 1).to(self.device, self.dtype)).latent_dist.mode().float()

    def _unet(self, x_in: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # mixed precision: the UNet's frozen weights are in self.dtype (fp16 on GPUs), the latents and
        # every loss in fp32; a LoRA's fp32 weights cast their own input (peft)
        return self.unet(x_in.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype)).sample.float()

    def from_space(self, x: torch.Tensor) -> torch.Tensor:
        # differentiable, like to_space
        # img = (D(z / scaling_factor) + 1) / 2
        return ((self.vae.decode(x.to(self.dtype) / self.scaling_factor).sample.float() + 1) / 2).clamp(0, 1)

    def sample(self, source, text_emb, steps=50, guidance=None, generator=None, x_T=None, callback=None):
        if x_T is None:
            x_T = torch.randn(source.shape[0], self.channels, *source.shape[-2:], generator=generator)
        return super().sample(source.float(), text_emb, steps, guidance, generator, x_T.float(), callback)


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype=`` where diffusers has it (it deprecates
    ``torch_dtype=`` from 0.36 on), ``torch_dtype=`` in older versions (``pyproject``: >= 0.27)."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (only in versions with dtype=)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def load_hub_teacher(repo: str | os.PathLike = HUB_REPO, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None, default_guidance: tuple[float, float] = (1.5, 7.5),
                     resolution: int | None = None) -> HubTeacher:
    """Load InstructPix2Pix from a hub repo id or a local ``save_pretrained`` folder.

    Args:
        repo: ``"timbrooks/instruct-pix2pix"`` (default) or a local folder.
        device: default ``config.device()``. dtype: default fp16 on CUDA, fp32 elsewhere.

    Raises:
        TeacherError: weights not on this machine (offline), or not a pipeline.
    """
    from diffusers import StableDiffusionInstructPix2PixPipeline

    dev = torch.device(device) if device is not None else config.device()
    dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    local = Path(repo).is_dir()
    try:
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            str(repo), **_dtype_kwarg(dtype), safety_checker=None, requires_safety_checker=False,
            local_files_only=local or not config.online())
    except (OSError, ValueError, EnvironmentError) as exc:
        how = "" if local or config.online() else " (offline: set COURSE_ONLINE=1 to download about 2.6 GB)"
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise TeacherError(f"cannot load InstructPix2Pix from {str(repo)!r}{how}: {first}") from None
    pipe.set_progress_bar_config(disable=True)
    return HubTeacher(pipe.to(dev), default_guidance, resolution)


# ----------------------------------------------------------------------------- a tiny pipeline for tests


def write_clip_tokenizer_files(out_dir: str | Path, n_merges: int = 2000) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` for a CLIP tokenizer from open_clip's bundled BPE.

    The vocabulary is built the way CLIP builds it: 256 byte symbols, the same with
    ``</w>``, one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>``.

    Args:
        out_dir: folder to write into.
        n_merges: how many BPE merges to keep (CLIP has 48 894; fewer = a smaller vocabulary).

    Returns:
        (vocab path, merges path).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1][:n_merges]
    merges = [tuple(m.split()) for m in lines]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return out / "vocab.json", out / "merges.txt"


def make_tiny_pipeline(tmp_dir: str | Path, seed: int = 0):
    """A randomly initialised, tiny ``StableDiffusionInstructPix2PixPipeline`` (for offline tests).

    UNet: 8 input channels (noisy latent ‖ source latent), widths (8, 16), 8x8 latents;
    VAE: one down-sampling (factor 2), 4 latent channels; CLIP text model: hidden 16,
    2 layers, 16 tokens; DDPM-style ``DDIMScheduler`` with SD's scaled-linear betas.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vocab, merges = write_clip_tokenizer_files(Path(tmp_dir) / "tokenizer_src", n_merges=500)
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=2, num_attention_heads=2,
                                                max_position_embeddings=16, projection_dim=16,
                                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                                   unet=unet, scheduler=sched, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)


#: Stable Diffusion 1.5's architecture with InstructPix2Pix's 8-channel UNet input: the real sizes.
REAL_SIZE = {
    "unet": dict(sample_size=64, in_channels=8, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=768, attention_head_dim=8),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, sample_size=512),
    "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"),
}


def make_real_size_pipeline(tmp_dir: str | Path, seed: int = 0):
    """InstructPix2Pix at its real size with random weights (for the offline hub-tier smoke check).

    UNet 859.5 M parameters (SD 1.5, 8 input channels), VAE 83.7 M, CLIP ViT-L/14 text encoder
    123.1 M with the full 49 408-token tokenizer built from open_clip's bundled BPE. Nothing is
    downloaded; the pictures it makes are noise, the costs (time, memory) are the real ones.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vocab, merges = write_clip_tokenizer_files(Path(tmp_dir) / "tokenizer_src", n_merges=48894)
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id, **REAL_SIZE["text"]))
    unet = UNet2DConditionModel(**REAL_SIZE["unet"])
    vae = AutoencoderKL(**REAL_SIZE["vae"])
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                                   unet=unet, scheduler=sched, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
