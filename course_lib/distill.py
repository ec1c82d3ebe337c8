"""Variational Score Distillation (VSD) into the one-pass grid student (lesson 05).

The student never sees a ground-truth target. It edits a photo, the edit is noised, and
two score models judge it: the frozen **teacher** (lesson 04), whose score points towards
edits the teacher would make, and a **fake score** model that tracks the distribution of
the student's *current* outputs. The student follows their difference.

Sources, with what we take from each (formulas, not code):

* ProlificDreamer (Wang et al. 2023) / threestudio's ``stable_diffusion_vsd_guidance.py``:
  ``grad = w(t) (eps_teacher_cfg(x_t) - eps_fake(x_t))`` with ``w(t) = 1 - ᾱ_t`` (= σ_t²),
  ``t ~ U[20, 980]``, teacher CFG, fake score = LoRA on a copy of the teacher with CFG 1,
  trained by ε-MSE on the generator's samples, one LoRA step per generator step.
* SwiftBrush (Nguyen & Tran 2024): the same gradient for a *one-step* student (our case:
  the student is one network pass); LoRA rank 8, alpha 32.
* DMD2 (Yin et al. 2024): the gradient in x̂0 form, normalised per sample,
  ``grad = (p_real - p_fake) / mean|p_real|`` with ``p = x - x̂0`` (``weighting="dmd"``), and
  more fake-score updates per generator step (two time-scale update rule).

All three apply ``grad`` through the stop-gradient surrogate
``loss = 0.5 ||x - sg(x - grad)||^2``, whose gradient with respect to ``x`` is exactly ``grad``
(:func:`vsd_loss`). Everything here works with any :class:`course_lib.teacher.Teacher`
(the embedded pixel-space teacher and the hub InstructPix2Pix in latent space).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F

from .data import resize
from .world import GLOBAL_FAMILIES, RetouchWorld
from .student import Student, StudentConfig
from .teacher import Guidance, Teacher

#: LoRA target modules of a diffusers ``UNet2DConditionModel``: attention projections and
#: the ResNet convolutions (the embedded teacher has little attention, so convs matter).
LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")


@dataclasses.dataclass
class VSDConfig:
    """Knobs of the VSD gradient (documented defaults; see the module docstring for sources).

    Attributes:
        t_min, t_max: timestep range, integer steps of the teacher's 1000-step schedule
            (threestudio / SwiftBrush: [20, 980]).
        guidance: ``(s_img, s_txt)`` for the teacher (``None`` = the teacher's default).
        fake_guidance: ``(s_img, s_txt)`` for the fake score (1, 1 = no guidance, as threestudio).
        weighting: ``"sds"`` ``w(t) = 1 - ᾱ_t`` (threestudio, SwiftBrush) or ``"dmd"`` (DMD2's
            per-sample normalisation in x̂0 form).
        lora_rank, lora_alpha: the fake score's LoRA (SwiftBrush: 8, 32).
        fake_steps: fake-score updates per student update (threestudio 1, DMD2 5-10).
    """

    t_min: int = 20
    t_max: int = 980
    guidance: Guidance | None = None
    fake_guidance: Guidance = (1.0, 1.0)
    weighting: str = "sds"
    lora_rank: int = 8
    lora_alpha: float = 32.0
    fake_steps: int = 1


# ----------------------------------------------------------------------------- the fake score


def make_fake_score(teacher: Teacher, rank: int = 8, alpha: float = 32.0,
                    targets: Sequence[str] = LORA_TARGETS) -> Teacher:
    """A copy of the teacher whose UNet carries a trainable LoRA (peft): the fake score model.

    The copy shares everything but the UNet (text encoder, schedule); the teacher's own UNet
    is untouched. At initialisation LoRA's ``B`` matrices are zero, so the fake score equals
    the teacher's conditional score and the first VSD gradient is the guidance term only.

    Args:
        teacher: any :class:`Teacher` with a diffusers UNet in ``teacher.unet``.
        rank, alpha: LoRA rank and scaling (``alpha / rank`` multiplies ``B A``).
        targets: module-name suffixes that get LoRA layers.

    Returns:
        A :class:`Teacher` of the same class; only its LoRA parameters require gradients
        (see :func:`lora_parameters`).
    """
    from peft import LoraConfig

    fake = copy.copy(teacher)
    fake.unet = copy.deepcopy(teacher.unet)
    fake.unet.requires_grad_(False)
    fake.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                     target_modules=list(targets)))
    for name, p in fake.unet.named_parameters():
        p.requires_grad_("lora_" in name)
    trainable_to_fp32(fake.unet)
    return fake


def trainable_to_fp32(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Mixed precision done the standard way: the parameters that train are kept in fp32.

    A teacher loaded in fp16 (the hub tier on GPUs) would give its LoRA fp16 weights, and Adam
    in fp16 breaks at once: its ``eps = 1e-8`` rounds to 0, so the first update of a LoRA ``B``
    whose gradient is 0 is 0/0 = NaN. Frozen weights stay in fp16/bf16 (half the memory and the
    fast kernels); the trainable ones (and so the optimiser state) are cast to fp32, as diffusers'
    ``cast_training_params`` does. peft's LoRA layers cast their input to their own dtype.

    Returns:
        The trainable parameters (now fp32), in module order.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    return params


def lora_parameters(fake: Teacher) -> list[torch.nn.Parameter]:
    """The trainable (LoRA) parameters of a fake score model."""
    return [p for n, p in fake.unet.named_parameters() if "lora_" in n]


def lora_state_dict(fake: Teacher) -> dict[str, torch.Tensor]:
    """LoRA weights only (for safetensors checkpoints and resuming)."""
    return {n: p.detach().cpu().contiguous() for n, p in fake.unet.named_parameters() if "lora_" in n}


def load_lora_state_dict(fake: Teacher, state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`lora_state_dict`; raises ``KeyError`` on a mismatch."""
    params = dict(fake.unet.named_parameters())
    missing = [n for n in params if "lora_" in n and n not in state]
    if missing or any(n not in params for n in state):
        raise KeyError(f"LoRA state does not match the fake score ({len(missing)} missing)")
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


# ----------------------------------------------------------------------------- the VSD gradient


def sample_timesteps(b: int, cfg: VSDConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """``t ~ U{t_min, ..., t_max - 1}``, shape (b,), int64."""
    return torch.randint(cfg.t_min, cfg.t_max, (b,), generator=generator)


def vsd_grad(teacher: Teacher, fake: Teacher, x0: torch.Tensor, cond: torch.Tensor, text: torch.Tensor,
             t: torch.Tensor, noise: torch.Tensor, cfg: VSDConfig | None = None) -> torch.Tensor:
    """The VSD gradient for the student's sample ``x0`` (no graph is built).

    Args:
        teacher: the frozen teacher. fake: the fake score (:func:`make_fake_score`).
        x0: (B, C, h, w) the student's edit in teacher space (``teacher.to_space``).
        cond: (B, C, h, w) the source's image condition (``teacher.encode_source``).
        text: (B, L, D) from ``teacher.encode_text``.
        t: (B,) integer timesteps. noise: (B, C, h, w) standard normal ε.
        cfg: a :class:`VSDConfig`.

    Returns:
        (B, C, h, w) ``grad``; descending it moves ``x0`` towards what the teacher prefers and
        away from what the student already produces.
    """
    cfg = cfg or VSDConfig()
    if cfg.weighting not in ("sds", "dmd"):
        raise ValueError(f"weighting must be 'sds' or 'dmd', not {cfg.weighting!r}")
    x0 = x0.detach()
    ab = teacher.alpha_bar(t.cpu()).to(x0).view(-1, 1, 1, 1)  # ᾱ_t, (B, 1, 1, 1)
    # x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    with torch.no_grad():
        eps_real = teacher.eps(x_t, t, cond, text, cfg.guidance)  # ε_teacher with CFG
        eps_fake = fake.eps(x_t, t, cond, text, cfg.fake_guidance)  # ε_fake, CFG 1
    return vsd_direction(eps_real, eps_fake, x0, x_t, ab, cfg.weighting)


def vsd_direction(eps_real: torch.Tensor, eps_fake: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                  alpha_bar: torch.Tensor, weighting: str = "sds") -> torch.Tensor:
    """The VSD gradient from the two noise predictions (the part of :func:`vsd_grad` with the math).

    Args:
        eps_real, eps_fake: (B, C, h, w) teacher (with CFG) and fake-score predictions at ``x_t``.
        x0: (B, C, h, w) the student's sample; x_t: its noised version.
        alpha_bar: (B, 1, 1, 1) ᾱ_t.
        weighting: ``"sds"`` or ``"dmd"`` (see :class:`VSDConfig`).

    Returns:
        (B, C, h, w) grad.
    """
    ab = alpha_bar
    if weighting == "sds":
        # grad = w(t) (ε_teacher − ε_fake),  w(t) = 1 − ᾱ_t = σ_t²
        return (1 - ab) * (eps_real - eps_fake)
    if weighting == "dmd":
        # x̂0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t ;  p = x0 − x̂0 ;  grad = (p_real − p_fake) / mean|p_real|
        x0_real = (x_t - (1 - ab).sqrt() * eps_real) / ab.sqrt()
        x0_fake = (x_t - (1 - ab).sqrt() * eps_fake) / ab.sqrt()
        p_real, p_fake = x0 - x0_real, x0 - x0_fake
        norm = p_real.abs().mean(dim=tuple(range(1, x0.dim())), keepdim=True).clamp_min(1e-6)
        return (p_real - p_fake) / norm
    raise ValueError(f"weighting must be 'sds' or 'dmd', not {weighting!r}")


@torch.no_grad()
def gradient_alignment(teacher: Teacher, source: torch.Tensor, target: torch.Tensor, instructions: Sequence[str],
                       t_bins: Sequence[tuple[int, int]] = ((20, 200), (200, 400), (400, 600), (600, 800), (800, 980)),
                       draws: int = 4, guidance: Guidance = (1.0, 2.0), seed: int = 0) -> list[dict]:
    """Does the first VSD gradient point towards the edit? Its cosine with the true edit, per timestep range.

    The setting of VSD from scratch at step 0: the student is the identity (``x0`` = the source)
    and the fake score equals the teacher (a zero LoRA), so ``grad`` is the teacher's guidance
    direction. For each range, ``draws`` noise samples per item; the cosine between ``-grad``
    and ``target - source`` (both in teacher space) is taken per item over all pixels
    (``pixel``) and over the per-channel means (``colour``: the global colour change).

    Args:
        source, target: (B, 3, H, W) in [0, 1] (any size: resized to the teacher's).
        instructions: B strings. guidance: the teacher's ``(s_img, s_txt)`` (the fake uses (1, 1)).

    Returns:
        One dict per range: ``t_lo``, ``t_hi``, ``pixel`` and ``colour`` (mean cosines), and
        ``pixel_std`` (their spread over items and draws).
    """
    g = torch.Generator().manual_seed(seed)
    size = teacher.working_size(*source.shape[-2:])

    def space(img: torch.Tensor) -> torch.Tensor:
        return teacher.to_space(F.interpolate(img, size=size, mode="bilinear", align_corners=False,
                                              antialias=True).clamp(0, 1).to(teacher.device))

    x0, edit = space(source), space(target) - space(source)  # (B, C, h, w)
    cond, text = teacher.encode_source(F.interpolate(source, size=size, mode="bilinear", align_corners=False,
                                                     antialias=True).to(teacher.device)), teacher.encode_text(instructions)
    cfg = VSDConfig(guidance=guidance)
    rows = []
    for lo, hi in t_bins:
        pix, col = [], []
        for _ in range(draws):
            t = torch.randint(lo, hi, (x0.shape[0],), generator=g)
            noise = torch.randn(x0.shape, generator=g).to(x0)
            # the fake score at step 0 is the teacher itself (CFG 1)
            d = -vsd_grad(teacher, teacher, x0, cond, text, t.to(x0.device), noise, cfg)  # (B, C, h, w)
            pix.append(F.cosine_similarity(d.flatten(1), edit.flatten(1), dim=1))
            col.append(F.cosine_similarity(d.mean((2, 3)), edit.mean((2, 3)), dim=1))
        pix, col = torch.cat(pix).float().cpu(), torch.cat(col).float().cpu()
        rows.append({"t_lo": lo, "t_hi": hi, "pixel": float(pix.mean()), "colour": float(col.mean()),
                     "pixel_std": float(pix.std())})
    return rows


def vsd_loss(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The stop-gradient surrogate whose gradient with respect to ``x0`` is ``grad / B``.

    Args:
        x0: (B, ...) the student's sample, *with* its graph. grad: (B, ...) from :func:`vsd_grad`.

    Returns:
        scalar ``0.5 ||x0 − sg(x0 − grad)||² / B`` (its value is ``0.5 ||grad||² / B``, a
        diagnostic only: it does not have to fall).
    """
    # ∂/∂x0 ½‖x0 − sg(x0 − grad)‖² = x0 − (x0 − grad) = grad
    target = (x0 - grad).detach()
    return 0.5 * F.mse_loss(x0, target, reduction="sum") / x0.shape[0]


def fake_score_loss(fake: Teacher, x0: torch.Tensor, cond: torch.Tensor, text: torch.Tensor,
                    generator: torch.Generator | None = None, max_weight: float = 5.0,
                    t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Denoising loss of the fake score on the student's (detached) samples.

    ``t ~ U{0, ..., 999}``, ε-prediction read from the fake's ``eps`` (CFG 1), weighted like
    the embedded teacher's own training: ``min(1 + SNR_t, 5)/SNR_t ||ε − ε̂||²``
    ``= min(1 + SNR_t, 5) ||x0 − x̂0||²`` (keeps low-noise steps from dominating).

    Args:
        fake: the fake score; x0: (B, C, h, w) student samples in teacher space (detached here).
        cond, text: the conditions the student was given.
        t, noise: (B,) timesteps and (B, C, h, w) ε drawn by the caller (default: drawn here
            from ``generator``, ``t`` first).

    Returns:
        scalar loss (gradients reach only the LoRA parameters).
    """
    x0 = x0.detach()
    b = x0.shape[0]
    if t is None:
        t = torch.randint(0, len(fake.train_scheduler.alphas_cumprod), (b,), generator=generator)
    noise = (torch.randn(x0.shape, generator=generator) if noise is None else noise).to(x0)
    ab = fake.alpha_bar(t).to(x0).view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    eps_hat = fake.eps(x_t, t.to(x0.device), cond, text, (1.0, 1.0))
    snr = ab / (1 - ab)
    w = torch.clamp(1 + snr, max=max_weight) / snr
    return (w * (eps_hat - noise) ** 2).mean()


def regression_loss(student_edit: torch.Tensor, teacher_edit: torch.Tensor) -> torch.Tensor:
    """DMD's regression term on the teacher's *own* multi-step edits (teacher outputs, never ground truth).

    ``L = ½ Σ_pixels (g_θ(I, y) − teacher_k(I, y))² / B``: in the units of :func:`vsd_loss` (½‖·‖² per
    image), so its gradient per pixel, ``(student − teacher) / B``, is comparable to the VSD gradient
    (a mean over pixels would be about 3000× weaker at 32 × 32).

    Args:
        student_edit: (B, 3, r, r) the student's edit at the teacher's working size r, with its graph.
        teacher_edit: (B, 3, r, r) the teacher's stored edit of the same (photo, instruction).

    Returns:
        the scalar loss.
    """
    return 0.5 * (student_edit - teacher_edit).pow(2).sum() / student_edit.shape[0]


# ----------------------------------------------------------------------------- one step of the loop


def vsd_step(student, fake: Teacher, teacher: Teacher, source: torch.Tensor, instructions: Sequence[str],
             opt_s: torch.optim.Optimizer, opt_f: torch.optim.Optimizer, cfg: VSDConfig | None = None,
             generator: torch.Generator | None = None) -> dict[str, float]:
    """One iteration of the VSD loop (lesson 05, exercise 5.5): a student update, then the fake score's.

    The trainer (:mod:`course_lib.train.vsd`) does exactly this on one process with its extras
    off (TV, alignment, regression, several noise draws); its test checks that the two agree.

    Args:
        student: a :class:`course_lib.student.Student` (``student(source, text)`` -> edit, ``embed``).
        fake: the fake score (:func:`make_fake_score`); teacher: the frozen teacher.
        source: (B, 3, S, S) training photos in [0, 1]; instructions: B strings. No targets.
        opt_s, opt_f: optimisers of the student and of the fake score's LoRA.
        generator: draws ``t``, ``ε`` (student update), then ``t``, ``ε`` per fake-score update.

    Returns:
        ``{"vsd": 0.5 ||grad||² per image, "fake": mean fake-score loss}``.
    """
    cfg = cfg or VSDConfig()
    with torch.no_grad():
        text_s = student.embed(list(instructions))  # (B, text_dim)
        text_t = teacher.encode_text(list(instructions))  # (B, L, D)
        cond = teacher.encode_source(resize(source, teacher.working_size(*source.shape[-2:])).to(teacher.device))
    # 1. the student edits; its edit in the teacher's space
    x0 = to_teacher_space(teacher, student(source, text_s))  # (B, C, h, w)
    b = x0.shape[0]
    # 2. grad = w(t) (ε_teacher(x_t) − ε_fake(x_t)), applied through ½‖x0 − sg(x0 − grad)‖²
    t = sample_timesteps(b, cfg, generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    grad = vsd_grad(teacher, fake, x0, cond, text_t, t, noise, cfg)
    loss = vsd_loss(x0, grad)
    opt_s.zero_grad(set_to_none=True)
    loss.backward()
    opt_s.step()
    # 3. the fake score learns the student's current edits (detached): denoising loss on x0
    fake_losses = []
    for _ in range(cfg.fake_steps):
        t_f = torch.randint(0, len(fake.train_scheduler.alphas_cumprod), (b,), generator=generator)
        noise_f = torch.randn(x0.shape, generator=generator)
        lf = fake_score_loss(fake, x0.detach(), cond, text_t, t=t_f, noise=noise_f)
        opt_f.zero_grad(set_to_none=True)
        lf.backward()
        opt_f.step()
        fake_losses.append(float(lf.detach()))
    return {"vsd": float(loss.detach()), "fake": sum(fake_losses) / max(len(fake_losses), 1)}


def run_vsd_steps(step, teacher: Teacher, seed: int = 0, steps: int = 3, size: int = 32,
                  batch: int = 2) -> list[torch.Tensor]:
    """Exercise 5.5's check: ``steps`` iterations of ``step`` (a function like :func:`vsd_step`)
    from the same tiny fresh student, fresh fake score and training photos (no targets).

    Returns:
        ``[student parameters, fake-score LoRA parameters, per-step losses]`` as flat tensors.
    """
    torch.manual_seed(seed)
    model = Student(StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,)))
    torch.nn.init.normal_(model.head.weight, std=0.01)  # not the identity: the first gradient is not the guidance alone
    fake = make_fake_score(teacher, rank=2, alpha=4)
    opt_s = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt_f = torch.optim.Adam(lora_parameters(fake), lr=1e-3)
    ds = RetouchWorld("train", "train", size=size, length=steps * batch, seed=seed,
                      families=GLOBAL_FAMILIES)
    gen = torch.Generator().manual_seed(seed)
    cfg = VSDConfig(guidance=(1.0, 2.0), fake_steps=2)
    losses = []
    for k in range(steps):
        items = [ds[k * batch + i] for i in range(batch)]
        src = torch.stack([it["source"] for it in items])
        out = step(model, fake, teacher, src, [it["instruction"] for it in items], opt_s, opt_f, cfg, gen)
        losses += [out["vsd"], out["fake"]]
    flat = lambda ps: torch.cat([p.detach().flatten() for p in ps])  # noqa: E731
    return [flat(model.parameters()), flat(lora_parameters(fake)), torch.tensor(losses)]


# ----------------------------------------------------------------------------- student -> teacher space


def to_teacher_space(teacher: Teacher, image: torch.Tensor) -> torch.Tensor:
    """Differentiably bring a student output into the teacher's space.

    Args:
        image: (B, 3, H, W) the student's edit (not clipped; values are clamped to [0, 1]
            with a straight-through gradient so out-of-range pixels still get one).

    Returns:
        (B, C, h, w) at the teacher's working size (antialiased bilinear resize, then
        ``teacher.to_space``).
    """
    size = teacher.working_size(*image.shape[-2:])
    x = image if tuple(image.shape[-2:]) == tuple(size) else F.interpolate(
        image, size=size, mode="bilinear", align_corners=False, antialias=True)
    # clamp with a straight-through gradient: value of clamp(x), gradient of x
    x = x + (x.clamp(0, 1) - x).detach()
    return teacher.to_space(x)
