"""The rotated Kronecker quadratic of the SOAP experiment: the problem, the counting, the report."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from keel.core.optim.quadratic import KroneckerQuadratic, iterations_to_tolerance, report, rotated_spd


def test_rotated_spd_has_the_requested_spectrum_and_a_dense_basis() -> None:
    matrix = rotated_spd(12, 1e3, torch.Generator().manual_seed(0))
    assert torch.allclose(matrix, matrix.T)
    eigenvalues = torch.linalg.eigvalsh(matrix)
    assert torch.allclose(eigenvalues, torch.logspace(0, 3, 12, dtype=torch.float64))
    # rotated: the diagonal does not carry the spectrum, which is what defeats a diagonal preconditioner
    assert float(matrix.diagonal().max() / matrix.diagonal().min()) < 1e2


def test_gradient_matches_autograd_and_the_minimiser_is_w_star() -> None:
    problem = KroneckerQuadratic.make(rows=6, cols=4, condition=50.0, seed=3)
    w = problem.w0.clone().requires_grad_(True)
    error = w - problem.w_star
    (0.5 * torch.trace(error.T @ problem.a @ error @ problem.b)).backward()
    assert torch.allclose(w.grad, problem.gradient(problem.w0))
    assert problem.loss(problem.w_star) == 0.0
    assert problem.loss(problem.w0) > 0.0
    again = KroneckerQuadratic.make(rows=6, cols=4, condition=50.0, seed=3)
    assert torch.equal(again.a, problem.a)
    assert torch.equal(again.w0, problem.w0)


def test_iterations_count_gradient_descent_steps_exactly() -> None:
    # With A = B = I, L = 1/2 |W - W*|^2 and SGD with lr 0.5 halves the error each step: the relative
    # loss is 4^-t, below 1e-6 first at t = 10.
    eye4, eye3 = torch.eye(4, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    problem = KroneckerQuadratic(
        eye4, eye3, torch.zeros(4, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64)
    )
    iterations, curve = iterations_to_tolerance(problem, partial(torch.optim.SGD, lr=0.5), tolerance=1e-6)
    assert iterations == 10
    assert curve[1] == pytest.approx(0.25)
    diverging, _ = iterations_to_tolerance(problem, partial(torch.optim.SGD, lr=3.0), max_iterations=100)
    assert math.isinf(diverging)


def test_report_picks_the_fastest_setting_and_judges_the_claim() -> None:
    study = {
        "grid": {
            "adamw": {0.01: [1000.0, 1200.0, 1100.0], 0.1: [math.inf, 900.0, 800.0]},
            "soap": {0.01: [500.0, 700.0, 600.0], 0.1: [300.0, 400.0, 350.0]},
            "shampoo": {0.01: [900.0, 900.0, 900.0], 0.1: [math.inf] * 3},
        },
        "best": {"adamw": 0.1, "soap": 0.1, "shampoo": 0.01},
        "settings": {"rows": 4, "cols": 2, "condition": 10.0, "tolerance": 1e-6, "max_iterations": 10, "seeds": [0]},
    }
    text = report(study, "cmd")
    assert "| soap | 0.1 | 300, 400, 350 | 350 | 0.39 |" in text  # 350 / median(inf, 900, 800) = 350 / 900
    assert "reproduced**: SOAP needs 0.39x" in text
    study["grid"]["soap"][0.1] = [800.0, 850.0, 900.0]
    assert "not reproduced" in report(study, "cmd")


@pytest.mark.parametrize("name", ["SophiaG", "SophiaH", "SOAP", "Shampoo"])
def test_step_evaluates_the_closure_with_gradients_enabled(name: str) -> None:
    import keel.core.optim as optim

    weight = torch.nn.Parameter(torch.ones(3, 2))
    optimizer = getattr(optim, name)([weight], lr=0.1)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (weight**2).sum()
        loss.backward()  # fails if step() left the closure under no_grad
        return loss

    with torch.no_grad():
        for _ in range(2):  # SOAP's and Shampoo's first step only builds their preconditioners
            loss = optimizer.step(closure)
    assert float(loss) > 0
    assert not torch.equal(weight.detach(), torch.ones(3, 2))
