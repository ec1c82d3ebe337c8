"""Score distillation in two dimensions (lesson 05): why SDS collapses onto modes and VSD matches the distribution.

The teacher knows a distribution ``p`` only through its *score* at every noise level; the
student is a generator whose samples should look like ``p``. In two dimensions everything is
exact and runs in seconds:

* ``p`` is a mixture of isotropic Gaussians, so its noised version is one too,
  ``p_σ = Σ_k π_k N(μ_k, (s_k² + σ²) I)``, and its score ``∇ log p_σ`` has a closed form
  (:meth:`Mixture.score`);
* the student is the simplest generator there is: N learnable points ("particles", as in
  ProlificDreamer), one per sample;
* with ``y = x + σ ε`` and the teacher's noise prediction ``ε̂_p(y, σ) = −σ ∇ log p_σ(y)``:

  - **SDS** (score distillation sampling, DreamFusion) moves every particle by
    ``g = σ (ε̂_p(y, σ) − ε)``: on average, up the teacher's log-density. Each particle climbs
    to the nearest mode and stops there: all the particles of a mode end on one point.
  - **VSD** (variational score distillation, ProlificDreamer) replaces the sampled noise by the
    score of the student's *own* noised distribution, ``g = σ (ε̂_p(y, σ) − ε̂_q(y, σ))``: the
    particles move until their distribution's score equals the teacher's, i.e. until they are
    distributed like ``p``. In the image case ``ε̂_q`` is a LoRA copy of the teacher trained on
    the student's outputs; here it is exact: the score of the particles blurred by ``σ``
    (:func:`particle_score`).

``x ← x − lr · g`` is plain gradient descent on the surrogate loss ``½‖x − sg(x − g)‖²`` the
image version uses (:func:`course_lib.distill.vsd_loss`).
"""
from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass
class Mixture:
    """A mixture of isotropic Gaussians in 2-D: means (K, 2), standard deviations (K,), weights (K,)."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def three_modes(cls) -> "Mixture":
        """The lesson's target: three modes of different weight and width."""
        return cls(torch.tensor([[-2.0, 0.0], [2.0, 1.0], [1.0, -2.0]]), torch.tensor([0.35, 0.5, 0.25]),
                   torch.tensor([0.5, 0.3, 0.2]))

    def _parts(self, y: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-component log-weights of ``p_σ`` at ``y`` (N, K) and the variances (N, K)."""
        var = self.stds[None] ** 2 + sigma.reshape(-1, 1) ** 2  # (N, K)
        d2 = (y[:, None, :] - self.means[None]).pow(2).sum(-1)  # (N, K)
        # log π_k N(y; μ_k, var I) in 2-D
        logw = self.weights.log()[None] - d2 / (2 * var) - torch.log(2 * math.pi * var)
        return logw, var

    def log_density(self, y: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``log p_σ(y)``: (N, 2) -> (N,)."""
        logw, _ = self._parts(y, torch.as_tensor(sigma, dtype=y.dtype).expand(y.shape[0]))
        return torch.logsumexp(logw, dim=1)

    def score(self, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``∇_y log p_σ(y)`` (the teacher): y (N, 2), sigma (N,) -> (N, 2)."""
        logw, var = self._parts(y, sigma)
        r = torch.softmax(logw, dim=1)  # (N, K) responsibilities
        # ∇ log p_σ(y) = Σ_k r_k (μ_k − y) / var_k
        return (r[..., None] * (self.means[None] - y[:, None, :]) / var[..., None]).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples: (n, 2)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.stds[k, None] * torch.randn(n, 2, generator=generator)


def particle_score(y: torch.Tensor, particles: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The score of the student's own noised distribution, ``q_σ = (1/N) Σ_j N(x_j, σ² I)``, at y.

    Args:
        y: (M, 2) noisy points. particles: (N, 2) the student's samples. sigma: (M,) noise levels.

    Returns:
        (M, 2): ``∇ log q_σ(y) = Σ_j r_j (x_j − y) / σ²``, ``r`` the softmax of ``−‖y − x_j‖² / 2σ²``.
    """
    s2 = sigma.reshape(-1, 1) ** 2  # (M, 1)
    d = particles[None] - y[:, None, :]  # (M, N, 2)
    r = torch.softmax(-d.pow(2).sum(-1) / (2 * s2), dim=1)  # (M, N)
    return (r[..., None] * d).sum(1) / s2


def noise(x: torch.Tensor, sigma_range: tuple[float, float], generator: torch.Generator | None = None):
    """One noise level and one noise sample per particle: ``(sigma (N,), eps (N, 2), y = x + sigma eps)``."""
    lo, hi = sigma_range
    sigma = lo + (hi - lo) * torch.rand(x.shape[0], generator=generator)
    eps = torch.randn(x.shape, generator=generator)
    return sigma, eps, x + sigma[:, None] * eps


def sds_grad(x: torch.Tensor, target: Mixture, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """SDS: ``g = σ (ε̂_p(y, σ) − ε)`` with ``ε̂_p = −σ ∇ log p_σ(y)``, ``y = x + σ ε``: (N, 2)."""
    y = x + sigma[:, None] * eps
    eps_p = -sigma[:, None] * target.score(y, sigma)
    return sigma[:, None] * (eps_p - eps)


def vsd_grad(x: torch.Tensor, target: Mixture, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """VSD: ``g = σ (ε̂_p(y, σ) − ε̂_q(y, σ))``, ``ε̂_q = −σ ∇ log q_σ(y)`` the particles' own: (N, 2)."""
    y = x + sigma[:, None] * eps
    eps_p = -sigma[:, None] * target.score(y, sigma)
    eps_q = -sigma[:, None] * particle_score(y, x, sigma)
    return sigma[:, None] * (eps_p - eps_q)


GRADS = {"sds": sds_grad, "vsd": vsd_grad}


def distil(method, target: Mixture | None = None, n: int = 300, steps: int = 400, lr: float = 0.05,
           sigma_range: tuple[float, float] = (0.05, 1.0), seed: int = 0, snapshots: int = 4) -> dict:
    """Move ``n`` particles, started from N(0, I), with SDS or VSD.

    Args:
        method: ``"sds"``, ``"vsd"`` or a gradient function with :func:`vsd_grad`'s signature.
        target: the teacher's distribution (default :meth:`Mixture.three_modes`).
        steps, lr: gradient steps ``x ← x − lr g``.
        sigma_range: noise levels drawn uniformly per particle and step.

    Returns:
        dict with ``particles`` (n, 2) at the end, ``history`` (list of (step, (n, 2)) snapshots),
        and :func:`summary` of the end state.
    """
    target = target or Mixture.three_modes()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    grad = GRADS[method] if isinstance(method, str) else method
    marks = {round(k * steps / snapshots) for k in range(snapshots + 1)}
    history = [(0, x.clone())]
    for step in range(1, steps + 1):
        sigma, eps, _ = noise(x, sigma_range, g)
        x = x - lr * grad(x, target, sigma, eps)
        if step in marks:
            history.append((step, x.clone()))
    return {"particles": x, "history": history, **summary(x, target)}


def summary(x: torch.Tensor, target: Mixture) -> dict:
    """Per mode: the share of particles nearest it and their spread, against the target's.

    Returns:
        dict with ``share`` and ``target_share`` (K,), ``spread`` (rms distance to the mode, per
        mode) and ``target_spread`` (``sqrt(2) s_k``), and ``mmd`` against 2000 target samples.
    """
    d = (x[:, None, :] - target.means[None]).pow(2).sum(-1)  # (N, K)
    nearest = d.argmin(1)
    K = target.means.shape[0]
    share = torch.stack([(nearest == k).float().mean() for k in range(K)])
    spread = torch.stack([d[nearest == k, k].mean().sqrt() if (nearest == k).any() else torch.tensor(math.nan)
                          for k in range(K)])
    ref = target.sample(2000, torch.Generator().manual_seed(123))
    return {"share": share, "target_share": target.weights.clone(), "spread": spread,
            "target_spread": target.stds * math.sqrt(2), "mmd": mmd_rbf(x, ref)}


def mmd_rbf(a: torch.Tensor, b: torch.Tensor, bandwidth: float = 0.5) -> float:
    """Squared maximum mean discrepancy with an RBF kernel (biased estimate): 0 for equal sets."""
    def k(u, v):
        return torch.exp(-torch.cdist(u, v).pow(2) / (2 * bandwidth ** 2)).mean()
    return float(k(a, a) + k(b, b) - 2 * k(a, b))
