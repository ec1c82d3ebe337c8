"""Lesson 05's 2-D toy: exact scores, SDS collapses onto the modes, VSD matches the spread."""
import math

import torch

from course_lib import vsd_toy


def test_mixture_score_is_the_gradient_of_the_log_density():
    target = vsd_toy.Mixture.three_modes()
    y = torch.randn(10, 2, dtype=torch.float64, requires_grad=True)
    t = vsd_toy.Mixture(target.means.double(), target.stds.double(), target.weights.double())
    sigma = torch.full((10,), 0.3, dtype=torch.float64)
    (g,) = torch.autograd.grad(t.log_density(y, 0.3).sum(), y)
    assert torch.allclose(t.score(y, sigma), g, atol=1e-10)


def test_particle_score_is_the_score_of_the_blurred_particles():
    x = torch.randn(7, 2, dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    s = 0.4
    # log q_s(y) = logsumexp_j(-|y - x_j|^2 / 2 s^2) + const
    logq = torch.logsumexp(-(y[:, None] - x[None]).pow(2).sum(-1) / (2 * s * s), dim=1)
    (g,) = torch.autograd.grad(logq.sum(), y)
    got = vsd_toy.particle_score(y.detach(), x, torch.full((5,), s, dtype=torch.float64))
    assert torch.allclose(got, g, atol=1e-10)


def test_vsd_gradient_vanishes_when_the_particles_are_the_target():
    """A single Gaussian target and particles at its mean with sigma >> spread: teacher and fake agree."""
    target = vsd_toy.Mixture(torch.zeros(1, 2), torch.tensor([1e-3]), torch.ones(1))
    x = torch.zeros(4, 2)
    sigma, eps = torch.full((4,), 0.5), torch.randn(4, 2)
    assert vsd_toy.vsd_grad(x, target, sigma, eps).abs().max() < 1e-4


def test_sds_collapses_and_vsd_matches_the_spread():
    target = vsd_toy.Mixture.three_modes()
    sds, vsd = vsd_toy.distil("sds", target, n=200, steps=300), vsd_toy.distil("vsd", target, n=200, steps=300)
    ratio_sds = (sds["spread"] / sds["target_spread"]).max()
    ratio_vsd = vsd["spread"] / vsd["target_spread"]
    assert ratio_sds < 0.7  # every mode's particles much tighter than the target
    assert ((ratio_vsd > 0.75) & (ratio_vsd < 1.35)).all(), ratio_vsd
    assert vsd["mmd"] < 0.5 * sds["mmd"]
    assert len(vsd["history"]) >= 3 and math.isclose(float(vsd["share"].sum()), 1.0, rel_tol=1e-6)


def test_particle_panels_render():
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.viz import particle_panels

    target = vsd_toy.Mixture.three_modes()
    runs = {"SDS": vsd_toy.distil("sds", target, n=20, steps=4), "VSD": vsd_toy.distil("vsd", target, n=20, steps=4)}
    fig = particle_panels(runs, target.log_density)
    assert len(fig.axes) == 2 * max(len(r["history"]) for r in runs.values())
