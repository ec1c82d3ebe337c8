"""The hub teacher: the real InstructPix2Pix (Brooks et al. 2023) behind :class:`course_lib.teacher.Teacher`.

``StableDiffusionInstructPix2PixPipeline`` (``timbrooks/instruct-pix2pix``, about
2.6 GB in fp16) denoises Stable Diffusion VAE latents (4 x H/8 x W/8); the source
photo's latent (the VAE posterior's mode, *unscaled*, as the pipeline does) is
concatenated with the noisy latent, so its UNet has 8 input channels; the
instruction is encoded by CLIP's text transformer (77 tokens x 768).

Loading is offline unless ``COURSE_ONLINE=1``: weights must be in the local
Hugging Face cache or in a folder written by ``save_pretrained``. A missing model
raises :class:`course_lib.teacher.TeacherError` with one line saying what to do.

:func:`make_tiny_pipeline` assembles a randomly initialised pipeline of the same
architecture from tiny configs (and a CLIP tokenizer built from open_clip's bundled
BPE merges). Tests save it and load it back through :func:`load_hub_teacher`,
exactly the code path the real weights take.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Sequence

import torch

from . import config
from .teacher import Teacher, TeacherError

#: The InstructPix2Pix checkpoint on the Hugging Face hub.
HUB_REPO = "timbrooks/instruct-pix2pix"


def hub_weights_present(repo: str | os.PathLike = HUB_REPO) -> bool:
    """True when ``repo`` is a local pipeline folder or is in the local Hugging Face cache (no network)."""
    if Path(repo).is_dir():
        return (Path(repo) / "model_index.json").is_file()
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(str(repo), "model_index.json")
        return isinstance(found, str) and os.path.isfile(found)
    except Exception:
        return False


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
        self.scheduler_config = {**dict(pipe.scheduler.config), "timestep_spacing": "trailing",
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
        post = self.vae.encode((image * 2 - 1).to(self.device, self.dtype)).latent_dist
        return post.mode() * self.scaling_factor

    @torch.no_grad()
    def encode_source(self, image: torch.Tensor) -> torch.Tensor:
        # InstructPix2Pix conditions on the *unscaled* latent mode
        return self.vae.encode((image * 2 - 1).to(self.device, self.dtype)).latent_dist.mode()

    def from_space(self, x: torch.Tensor) -> torch.Tensor:
        # differentiable, like to_space
        # img = (D(z / scaling_factor) + 1) / 2
        return ((self.vae.decode(x.to(self.dtype) / self.scaling_factor).sample.float() + 1) / 2).clamp(0, 1)

    def sample(self, source, text_emb, steps=50, guidance=None, generator=None, x_T=None, callback=None):
        if x_T is None:
            x_T = torch.randn(source.shape[0], self.channels, *source.shape[-2:], generator=generator)
        return super().sample(source, text_emb, steps, guidance, generator, x_T.to(self.dtype), callback)


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
            str(repo), dtype=dtype, safety_checker=None, requires_safety_checker=False,
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
