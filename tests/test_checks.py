import pytest
import torch

from course_lib.checks import FP32_EPS, check, compare, float_tol


def ref(x, y):
    return x * y + 1


def cases(g):
    return torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)


def test_exact_match_and_gradients():
    r = check(lambda x, y: x * y + 1, ref, cases, grad=True)
    assert r.ok and r.exact and r.max_abs_diff == 0 and r.grad_max_abs_diff == 0 and r.cases == 4


def test_allclose_but_not_exact():
    r = check(lambda x, y: (x * y + 1) + 1e-7, ref, cases)
    assert r.ok and not r.exact and 0 < r.max_abs_diff < 1e-6


def test_mismatch_detected_and_falls_back(capsys):
    wrong = lambda x, y: x * y  # noqa: E731
    r = check(wrong, ref, cases)
    assert not r.ok and abs(r.max_abs_diff - 1) < 1e-6
    chosen = compare(wrong, ref, cases, name="wrong")
    assert chosen is ref
    assert "MISMATCH" in capsys.readouterr().out


def test_wrong_gradient_detected():
    class Bad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_backward(x, y)
            return x * y + 1

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            return g * y * 2, g * x  # wrong d/dx

    r = check(Bad.apply, ref, cases, grad=True)
    assert not r.ok and r.max_abs_diff == 0 and r.grad_max_abs_diff > 0.1


def test_stub_falls_back_with_message(capsys):
    def stub(x, y):
        raise NotImplementedError("Exercise 0.1")

    chosen = compare(stub, ref, cases)
    out = capsys.readouterr().out
    assert chosen is ref and "Exercise 0.1" in out and "reference" in out


def test_learner_crash_reported_not_raised(capsys):
    def broken(x, y):
        return x @ y  # shape error

    assert compare(broken, ref, cases) is ref
    assert "RuntimeError" in capsys.readouterr().out


def test_shape_mismatch_and_explicit_cases():
    r = check(lambda x, y: (x * y + 1)[:2], ref, [(torch.ones(3, 4), torch.ones(3, 4))])
    assert not r.ok and r.max_abs_diff == float("inf")


def test_good_learner_is_kept():
    mine = lambda x, y: y * x + 1  # noqa: E731
    assert compare(mine, ref, cases, grad=True) is mine


# ----------------------------------------------------------------------------- float_tol


def test_float_tol_scales_with_magnitude_and_depth():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    base = float_tol(x, depth=10)
    assert base["rtol"] == pytest.approx(4 * FP32_EPS * 10)
    assert base["atol"] == pytest.approx(base["rtol"] * float(x.abs().max()))
    assert float_tol(100 * x, depth=10)["atol"] == pytest.approx(100 * base["atol"])  # magnitude
    assert float_tol(100 * x, depth=10)["rtol"] == base["rtol"]
    assert float_tol(x, depth=30)["atol"] == pytest.approx(3 * base["atol"])  # depth
    assert float_tol(float(-x.abs().max()), depth=10) == pytest.approx(base)  # a number is a magnitude
    assert float_tol(x, depth=10, k=1)["atol"] == pytest.approx(base["atol"] / 4)
    assert float_tol(torch.zeros(0))["atol"] == 0.0


def _matmul_two_orders():
    """A float32 (64, 256) @ (256, 8): torch's kernel, and a plain sum over k backwards."""
    g = torch.Generator().manual_seed(1)
    a, b = 30 * torch.randn(64, 256, generator=g), torch.randn(256, 8, generator=g)
    backwards = torch.zeros(64, 8)
    for i in reversed(range(256)):
        backwards += a[:, i, None] * b[i]
    return a, b, a @ b, backwards


def test_float_tol_accepts_another_summation_order():
    a, b, ref, other = _matmul_two_orders()
    assert not torch.equal(ref, other)  # the orders really differ
    torch.testing.assert_close(other, ref, **float_tol(ref, depth=a.shape[1]))  # depth: 256 summed products


def test_float_tol_still_fails_on_wrong_answers():
    a, b, ref, _ = _matmul_two_orders()
    tol = float_tol(ref, depth=a.shape[1])
    wrong_sign = a.clone()
    wrong_sign[:, 100] *= -1  # one term of 256 with the wrong sign
    swapped = ref[:, [1, 0, 2, 3, 4, 5, 6, 7]]  # two output channels swapped
    for wrong in (wrong_sign @ b, swapped, ref * 1.01):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(wrong, ref, **tol)
    # and in a lesson's check: a learner's reordered sum passes, a wrong one falls back
    cases = [(a, b)]
    assert check(lambda x, y: (x[:, :, None] * y).flip(1).sum(1), torch.matmul, cases, **tol).ok
    assert not check(lambda x, y: (x[:, :-1] @ y[:-1]), torch.matmul, cases, **tol).ok  # a term left out
