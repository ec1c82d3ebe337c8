import torch

from course_lib.checks import check, compare


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
