"""Checking a learner's function against the library's: ``compare``.

In the spirit of karpathy's ``cmp`` (nn-zero-to-hero) and the cs231n gradient
checks: run both functions on the same random inputs, report whether they agree
exactly or within a tolerance, the largest absolute difference, and (when asked)
whether their gradients agree too.

``compare`` never stops a notebook. If the learner's function is still a stub
(it raises ``NotImplementedError("Exercise N.k")``), or disagrees, it says so and
returns the *reference* function, so later cells keep working::

    exposure = compare(exposure, course_lib.data.exposure, cases=make_cases)

Tests and checks of float32 code that is not bit-for-bit the same computation (batched vs
unbatched, fused kernel vs reference, another CPU's kernels) take their tolerance from
:func:`float_tol`: it scales with the size of the values and with how many roundings pile up.
"""
from __future__ import annotations

import dataclasses
import traceback
from typing import Any, Callable, Iterable, Sequence

import torch

Cases = Callable[[torch.Generator], Sequence[Any]]

FP32_EPS = torch.finfo(torch.float32).eps  # 2^-23 ~ 1.19e-7: one rounding of a float32 number near 1


def float_tol(reference: torch.Tensor | float, depth: int | float = 1, k: float = 4.0,
              eps: float = FP32_EPS) -> dict[str, float]:
    """Tolerances for float32 results that another CPU (or batch size, or kernel) sums in another order.

    Each float32 rounding is off by up to ``eps`` relative; summing ``depth`` terms in another
    order (or going through ``depth`` layers that each round their sums) moves the result by
    up to about ``depth * eps`` times the size of the values. So::

        atol = k * eps * depth * max|reference|      rtol = k * eps * depth

    ``depth`` is what a test should name and justify: the number of summed terms (8 tent
    corners x 4 affine terms = 32 for slicing), or the number of layers of a network. ``k``
    leaves room for the constant of the bound. A wrong answer (a sign, a swapped channel, a
    missing term) is off by a fraction of ``max|reference|`` and still fails, as long as
    ``k * eps * depth`` stays far below 1 (about 1e-4 for depth 200).

    Args:
        reference: the expected values (their largest magnitude sets the scale), or that
            magnitude as a number.
        depth: how many roundings can pile up between the two computations.
        k: safety factor on the bound.
        eps: the unit rounding of the arithmetic (``torch.finfo(dtype).eps``); float32 by default,
            also when the reference was computed in float64.

    Returns:
        ``{"atol": ..., "rtol": ...}``, to pass to ``torch.testing.assert_close``, ``torch.allclose``
        or :func:`compare`/:func:`check` as ``**float_tol(...)``.
    """
    if isinstance(reference, torch.Tensor):
        scale = float(reference.detach().abs().max()) if reference.numel() else 0.0
    else:
        scale = abs(float(reference))
    rtol = k * eps * depth
    return {"atol": rtol * scale, "rtol": rtol}


@dataclasses.dataclass
class Report:
    """What :func:`check` found.

    Attributes:
        ok: values (and gradients, if checked) agree within tolerance on every case.
        exact: values are bit-for-bit equal on every case.
        max_abs_diff: largest |learner - reference| over all outputs and cases.
        grad_max_abs_diff: the same for input gradients (``None`` when not checked).
        cases: how many cases ran.
        not_implemented: the learner's function raised ``NotImplementedError``.
        error: a one-line description of any other exception the learner's code raised.
    """

    ok: bool = False
    exact: bool = False
    max_abs_diff: float = float("nan")
    grad_max_abs_diff: float | None = None
    cases: int = 0
    not_implemented: str | None = None
    error: str | None = None

    def line(self, name: str) -> str:
        """A one-line human summary."""
        if self.not_implemented is not None:
            return f"{name}: not implemented yet ({self.not_implemented}) - using the course_lib reference"
        if self.error is not None:
            return f"{name}: raised {self.error} - using the course_lib reference"
        verdict = "exact" if self.exact else ("allclose" if self.ok else "MISMATCH")
        text = f"{name}: {verdict} on {self.cases} cases, max abs diff {self.max_abs_diff:.2e}"
        if self.grad_max_abs_diff is not None:
            text += f", grad max abs diff {self.grad_max_abs_diff:.2e}"
        if not self.ok:
            text += " - using the course_lib reference"
        return text


def _tensors(out: Any) -> list[torch.Tensor]:
    """Flatten a function's output into a list of tensors (numbers become tensors)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _tensors(out[k])]
    if isinstance(out, (int, float, bool)):
        return [torch.tensor(float(out))]
    raise TypeError(f"compare can only check tensors, numbers, tuples, lists and dicts, not {type(out).__name__}")


def _clone_args(args: Sequence[Any], requires_grad: bool) -> list[Any]:
    cloned = []
    for a in args:
        if isinstance(a, torch.Tensor):
            a = a.detach().clone()
            if requires_grad and a.is_floating_point():
                a.requires_grad_(True)
        cloned.append(a)
    return cloned


def _run(fn: Callable, args: Sequence[Any], grad: bool, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Call ``fn(*args)``; if ``grad``, backprop a fixed random projection of the outputs."""
    inputs = _clone_args(args, requires_grad=grad)
    outs = _tensors(fn(*inputs))
    grads: list[torch.Tensor | None] = []
    if grad:
        g = torch.Generator().manual_seed(seed)
        total = sum(
            (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
            for o in outs
            if o.is_floating_point() and o.requires_grad
        )
        leaves = [a for a in inputs if isinstance(a, torch.Tensor) and a.requires_grad]
        if isinstance(total, torch.Tensor) and total.requires_grad:
            grads = list(torch.autograd.grad(total, leaves, allow_unused=True))
        else:
            grads = [None] * len(leaves)
    return [o.detach() for o in outs], grads


def check(
    learner: Callable,
    reference: Callable,
    cases: Cases | Iterable[Sequence[Any]],
    n_cases: int = 4,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    grad: bool = False,
    seed: int = 0,
) -> Report:
    """Run ``learner`` and ``reference`` on the same inputs and measure their agreement.

    Args:
        learner: the function written in the notebook.
        reference: the library's function with the same signature.
        cases: either a function ``make(generator) -> args`` called ``n_cases``
            times with a seeded ``torch.Generator``, or an iterable of argument tuples.
        n_cases: number of random cases when ``cases`` is a function.
        atol, rtol: tolerance of ``torch.allclose`` for values and gradients.
        grad: also compare gradients with respect to every floating-point tensor argument.
        seed: seed for the random cases and for the gradient projection.

    Returns:
        A :class:`Report`.
    """
    if callable(cases):
        gen = torch.Generator().manual_seed(seed)
        case_list = [tuple(cases(gen)) for _ in range(n_cases)]
    else:
        case_list = [tuple(c) for c in cases]
    report = Report(ok=True, exact=True, max_abs_diff=0.0, grad_max_abs_diff=0.0 if grad else None)
    for i, args in enumerate(case_list):
        ref_out, ref_grads = _run(reference, args, grad, seed + i)
        try:
            out, grads = _run(learner, args, grad, seed + i)
        except NotImplementedError as exc:
            return Report(not_implemented=str(exc) or "NotImplementedError", cases=i)
        except Exception as exc:  # the learner's code may fail in any way: report it, don't crash
            last = traceback.extract_tb(exc.__traceback__)[-1]
            return Report(error=f"{type(exc).__name__}: {exc} (line {last.lineno})", cases=i)
        report.cases += 1
        if len(out) != len(ref_out):
            report.ok = report.exact = False
            report.max_abs_diff = float("inf")
            continue
        for o, r in zip(out, ref_out):
            if o.shape != r.shape:
                report.ok = report.exact = False
                report.max_abs_diff = float("inf")
                continue
            o, r = o.to(r.dtype), r
            diff = (o - r).abs().max().item() if o.numel() else 0.0
            if diff != diff:  # NaN somewhere
                diff = float("inf") if not torch.equal(o.isnan(), r.isnan()) else 0.0
            report.max_abs_diff = max(report.max_abs_diff, diff)
            report.exact &= bool(torch.equal(o, r))
            report.ok &= bool(torch.allclose(o, r, atol=atol, rtol=rtol, equal_nan=True))
        if grad:
            for g, rg in zip(grads, ref_grads):
                if g is None and rg is None:
                    continue
                if g is None or rg is None or g.shape != rg.shape:
                    report.ok = False
                    report.grad_max_abs_diff = float("inf")
                    continue
                gd = (g - rg).abs().max().item() if g.numel() else 0.0
                report.grad_max_abs_diff = max(report.grad_max_abs_diff or 0.0, gd)
                report.ok &= bool(torch.allclose(g, rg, atol=atol, rtol=rtol))
    return report


def compare(
    learner: Callable,
    reference: Callable,
    cases: Cases | Iterable[Sequence[Any]],
    name: str | None = None,
    **kwargs: Any,
) -> Callable:
    """Check ``learner`` against ``reference``, print one line, return the function to use.

    Args:
        learner: the function written in the notebook (possibly still a stub).
        reference: the library's function.
        cases: see :func:`check`.
        name: label for the printed line (defaults to the learner's ``__name__``).
        **kwargs: ``n_cases``, ``atol``, ``rtol``, ``grad``, ``seed`` as in :func:`check`.

    Returns:
        ``learner`` if it agrees with the reference, else ``reference`` (so that
        later cells still run on correct values).
    """
    report = check(learner, reference, cases, **kwargs)
    label = name or getattr(learner, "__name__", "function")
    mark = "OK " if report.ok and report.not_implemented is None and report.error is None else "-- "
    print(mark + report.line(label))
    ok = report.ok and report.not_implemented is None and report.error is None
    return learner if ok else reference
