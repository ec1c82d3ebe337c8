"""Prompt alignment: a CLIP-style contrastive loss between instructions and edits (lesson 06).

VSD (lesson 05) makes the student's edits *look like* the teacher's; nothing in it checks
that the edit is the one the instruction asked for. InstantRetouch adds a contrastive
**prompt-alignment** loss: an embedding of the edit (source, output) should be closer to
the embedding of its own instruction than to the other instructions in the batch
(InfoNCE, as CLIP; Radford et al. 2021, van den Oord et al. 2018).

Two tiers:

* **embedded** - :class:`EditCLIP`, a small edit encoder the course trains on its own data:
  open_clip's ``VisionTransformer`` (built with ``open_clip.model._build_vision_tower``, no
  pretrained weights) reads three panels side by side - the source, the edited photo and
  their difference (which makes a global colour shift visible to every patch) - and a linear map
  brings the frozen MiniLM instruction embedding into the same space. Shipped as
  ``data/weights/edit_clip.safetensors`` when trained (``python -m course_lib train-align``).
* **hub** - :class:`DirectionalCLIP`, a pretrained open_clip CLIP with the directional
  formulation of StyleGAN-NADA (Gal et al. 2022): the change of the image embedding,
  ``E_I(output) - E_I(source)``, should point along ``E_T(instruction) - E_T(neutral)``.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import config
from .text import shared_encoder
from .util.checkpoint import CheckpointError, load_checkpoint, load_into, save_checkpoint
from .world import RetouchWorld, decode_world_edits

#: Where the shipped edit encoder lives.
EDIT_CLIP_WEIGHTS: Path = config.WEIGHTS_DIR / "edit_clip.safetensors"
#: The checkpoint kind of an edit encoder (:mod:`course_lib.util.checkpoint`).
KIND = "edit_clip"


@dataclasses.dataclass
class EditCLIPConfig:
    """Architecture of :class:`EditCLIP` (stored in its checkpoint).

    Attributes:
        size: side of each panel (source, output, difference); the tower sees ``size x 3 size``.
        patch: ViT patch size. width, layers, head_width: ViT width, depth, head size.
        embed_dim: joint embedding size. text_dim: size of the instruction embedding (MiniLM: 384).
        text_encoder: name of the instruction encoder (see :mod:`course_lib.text`).
    """

    size: int = 32
    patch: int = 8
    width: int = 96
    layers: int = 3
    head_width: int = 32
    embed_dim: int = 64
    text_dim: int = 384
    text_encoder: str = "minilm"


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss) between matching rows of ``a`` and ``b``.

    Args:
        a, b: (N, E) L2-normalised embeddings; row i of ``a`` belongs with row i of ``b``.
        logit_scale: the log of the inverse temperature (CLIP: a learned scalar, init log(1/0.07)).

    Returns:
        scalar ``(CE(s a b^T, I) + CE(s b a^T, I)) / 2`` with ``s = exp(logit_scale)``.
    """
    scale = torch.as_tensor(logit_scale, dtype=a.dtype, device=a.device).exp()
    logits = scale * a @ b.T  # (N, N)
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def temperature_sweep(a: torch.Tensor, b: torch.Tensor, log_scales: torch.Tensor) -> tuple[torch.Tensor, float]:
    """InfoNCE of fixed embeddings at several temperatures (lesson 06, exercise 6.2).

    Args:
        a, b: (N, E) L2-normalised matching embeddings. log_scales: (S,) values of ``log s``.

    Returns:
        ``(losses, best)``: (S,) :func:`info_nce` at each scale, and the ``log s`` with the lowest loss.
    """
    losses = torch.stack([info_nce(a, b, t) for t in log_scales])  # (S,)
    return losses, float(log_scales[int(losses.argmin())])


class EditCLIP(nn.Module):
    """Embeds an edit (source, output) and an instruction into one space.

    Args:
        cfg: an :class:`EditCLIPConfig`.
    """

    def __init__(self, cfg: EditCLIPConfig | None = None) -> None:
        super().__init__()
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        self.cfg = cfg = cfg or EditCLIPConfig()
        vision = CLIPVisionCfg(layers=cfg.layers, width=cfg.width, head_width=cfg.head_width, patch_size=cfg.patch,
                               image_size=(cfg.size, 3 * cfg.size))
        self.visual = _build_vision_tower(cfg.embed_dim, vision)
        self.text_proj = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_edit(self, source: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) source and output in [0, 1] (any size) -> (B, embed_dim), unit norm.

        Both are resized to ``size`` (antialiased, differentiable) and put side by side with
        their difference: ``[source | output | 0.5 + 2 (output - source)]``.
        """
        s = self.cfg.size
        src = F.interpolate(source, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        out = F.interpolate(output, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        diff = 0.5 + 2 * (out - src)
        x = (torch.cat([src, out, diff], dim=-1) - 0.5) / 0.25  # (B, 3, s, 3s), roughly zero-mean unit-scale
        return F.normalize(self.visual(x), dim=-1)

    def encode_text(self, text_emb: torch.Tensor) -> torch.Tensor:
        """(B, text_dim) instruction embeddings -> (B, embed_dim), unit norm."""
        return F.normalize(self.text_proj(text_emb), dim=-1)

    def forward(self, source: torch.Tensor, output: torch.Tensor,
                text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both embeddings of a batch: ``(encode_edit(source, output), encode_text(text_emb))``."""
        return self.encode_edit(source, output), self.encode_text(text_emb)

    def loss(self, source: torch.Tensor, output: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """InfoNCE between the batch's edits and their instructions (see :func:`info_nce`)."""
        return info_nce(self.encode_edit(source, output), self.encode_text(text_emb), self.logit_scale)

    def embed_instructions(self, instructions: list[str]) -> torch.Tensor:
        """Instructions -> (N, text_dim) with this model's text encoder."""
        return shared_encoder(self.cfg.text_encoder).encode(instructions).to(self.logit_scale.device)


def alignment_loss(model: EditCLIP, source: torch.Tensor, output: torch.Tensor, text_emb: torch.Tensor,
                   gather=None) -> torch.Tensor:
    """The prompt-alignment loss of distillation (lesson 06): InfoNCE between the student's edits and
    their instructions, through the frozen edit encoder.

    ``L_align = InfoNCE(E_edit(I, st(g_θ(I, y))), E_text(y))`` over the batch, where ``st`` is a
    straight-through clamp to [0, 1]: the encoder sees valid pixels, and the gradient reaches the
    student's output unchanged even where it is out of range.

    Args:
        model: the frozen :class:`EditCLIP`. source, output: (B, 3, H, W), output with its graph.
        text_emb: (B, text_dim) the instructions' sentence embeddings (``model.embed_instructions``).
        gather: ``x -> x`` over all processes (with gradient) so the negatives are the global batch
            (default: this process's batch).

    Returns:
        the scalar loss.
    """
    gather = gather or (lambda x: x)
    shown = output + (output.clamp(0, 1) - output).detach()  # forward: clamp; backward: identity
    return info_nce(gather(model.encode_edit(source, shown)), gather(model.encode_text(text_emb)), model.logit_scale)


def retrieval_accuracy(model: EditCLIP, source: torch.Tensor, output: torch.Tensor, text_emb: torch.Tensor,
                       labels: list[str] | None = None) -> float:
    """Top-1 accuracy of picking each edit's instruction among the batch's instructions.

    Args:
        source, output: (N, 3, H, W). text_emb: (N, text_dim).
        labels: optional (N,) edit identities (e.g. ``"exposure:+0.350"``); a prediction counts
            as right when its instruction names the same edit (duplicates are not errors).

    Returns:
        fraction in [0, 1]; chance is about ``1 / N``.
    """
    with torch.no_grad():
        sim = model.encode_edit(source, output) @ model.encode_text(text_emb).T  # (N, N)
    pred = sim.argmax(dim=1).tolist()
    if labels is None:
        return sum(int(p == i) for i, p in enumerate(pred)) / len(pred)
    return sum(int(labels[p] == labels[i]) for i, p in enumerate(pred)) / len(pred)


def heldout_retrieval(model: EditCLIP, n: int = 64, size: int | None = None, wording: str = "heldout_phrasing",
                      split: str = "test", seed: int = 4321) -> dict[str, float]:
    """Top-1 instruction retrieval among ``n`` edits of photos the encoder never saw (right = same
    edit families, targets and signs).

    Args:
        wording: a :data:`course_lib.grammar.WORDINGS_KINDS` entry. split: ``"val"`` or ``"test"`` photos.

    Returns:
        ``{"accuracy": ..., "chance": ...}``; chance is the expected accuracy of a random pick,
        ``mean_i #{j: label_j = label_i} / n`` (duplicate edits in the batch raise it above 1/n).
    """
    ds = RetouchWorld(split=split, wording=wording, size=size or model.cfg.size, length=n, seed=seed)
    items = [ds[i] for i in range(n)]
    src, tgt = torch.stack([it["source"] for it in items]), torch.stack([it["target"] for it in items])
    labels = ["|".join(sorted(f"{e.family}@{e.target}{'+' if e.amount > 0 else '-'}"
                              for e in decode_world_edits(it["edits"]))) for it in items]
    chance = sum(labels.count(lab) for lab in labels) / n ** 2
    text = model.embed_instructions([it["instruction"] for it in items])
    return {"accuracy": retrieval_accuracy(model, src, tgt, text, labels), "chance": chance}


def save_edit_clip(model: EditCLIP, path: str | Path, metadata: dict | None = None) -> Path:
    """Weights + config in one safetensors file, written atomically (kind ``"edit_clip"``)."""
    return save_checkpoint(path, model.state_dict(), KIND, dataclasses.asdict(model.cfg), metadata)


class AlignError(RuntimeError):
    """An edit encoder cannot be loaded; the message is one line."""


def load_edit_clip(path: str | Path | None = None, device: str | torch.device = "cpu") -> EditCLIP:
    """Load an :class:`EditCLIP` from safetensors (never pickle).

    Raises:
        AlignError: missing file or not an edit-encoder checkpoint.
    """
    p = Path(path) if path else EDIT_CLIP_WEIGHTS
    if not p.is_file():
        raise AlignError(f"{p}: no edit encoder; train one with 'python -m course_lib train-align'")
    try:
        tensors, info = load_checkpoint(p, KIND)
        model = EditCLIP(EditCLIPConfig(**info.config))
        load_into(model, tensors, p)
    except CheckpointError as exc:
        raise AlignError(str(exc)) from None
    return model.to(device).eval()


class DirectionalCLIP(nn.Module):
    """Hub tier: a CLIP image-text model used directionally (StyleGAN-NADA's loss).

    ``loss = 1 - cos(E_I(output) - E_I(source), E_T(instruction) - E_T(neutral))``, averaged
    over the batch. The CLIP weights stay frozen; gradients reach ``output``.

    Args:
        model: an open_clip ``CLIP`` (e.g. ``open_clip.create_model("ViT-B-32",
            pretrained="openai")`` when the weights are on disk; tests use a tiny random one).
        tokenizer: the matching open_clip tokenizer.
        neutral: the reference caption (the "no edit" direction's origin).
    """

    def __init__(self, model: nn.Module, tokenizer, neutral: str = "a photo") -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.neutral = neutral
        size = model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        # CLIP's input normalisation (OpenAI's mean / std)
        self.register_buffer("mean", torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, E) unit-norm CLIP image embeddings (differentiable)."""
        x = F.interpolate(image.float(), size=self.image_size, mode="bicubic", align_corners=False, antialias=True)
        # the frozen CLIP may be fp16/bf16 on a GPU: its input in its dtype, the embeddings back in fp32
        x = ((x.to(self.mean.device) - self.mean) / self.std).to(self.dtype)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the CLIP weights (fp32 on the CPU, often fp16 on GPUs)."""
        return next(self.model.parameters()).dtype

    def text_direction(self, instructions: list[str]) -> torch.Tensor:
        """(N,) instructions -> (N, E) unit directions ``E_T(instruction) - E_T(neutral)``."""
        with torch.no_grad():
            tokens = self.tokenizer(list(instructions) + [self.neutral]).to(self.mean.device)
            t = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return F.normalize(t[:-1] - t[-1:], dim=-1)

    def loss(self, source: torch.Tensor, output: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """Directional loss in [0, 2]: 0 when the image moved exactly along the text direction."""
        d_img = F.normalize(self.encode_image(output) - self.encode_image(source).detach(), dim=-1)
        return (1 - (d_img * self.text_direction(instructions)).sum(-1)).mean()
