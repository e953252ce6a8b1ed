"""Sophia's mechanics against the paper's equations and the official code: estimators, clipping, resume."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keel.core.optim import SophiaG, SophiaH
from keel.core.optim.sophia import sampled_label_loss


def _official_sophiag_step(p, g, m, h, *, lr, beta1, rho, weight_decay, bs):
    """One step of the official ``_single_tensor_sophiag`` (Liuhong99/Sophia), written out."""
    p.mul_(1 - lr * weight_decay)
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    ratio = (m.abs() / (rho * bs * h + 1e-15)).clamp(None, 1)
    p.addcmul_(m.sign(), ratio, value=-lr)


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------------------- the update rule


def test_hand_computed_three_steps_with_a_refresh() -> None:
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = SophiaG([p], lr=0.1, betas=(0.5, 0.5), rho=0.5, weight_decay=0.1)

    # step 1, h = 0: decay by 1 - 0.1 * 0.1, then -lr * sign(m) with m = 0.5 * g
    p.grad = torch.tensor([0.4, -0.2], dtype=torch.float64)
    opt.step(bs=2)
    torch.testing.assert_close(p.detach(), torch.tensor([0.89, -1.88], dtype=torch.float64))

    # refresh: h = 0.5 * 0 + 0.5 * g_hat^2 = [0.5, 2.0]
    p.grad = torch.tensor([1.0, 2.0], dtype=torch.float64)
    opt.update_hessian()
    torch.testing.assert_close(opt.state[p]["hessian"], torch.tensor([0.5, 2.0], dtype=torch.float64))

    # step 2: m = [0.2, 0.25]; denominator rho * bs * h = h; ratio = [0.4, 0.125], unclipped
    p.grad = torch.tensor([0.2, 0.6], dtype=torch.float64)
    opt.step(bs=2)
    torch.testing.assert_close(p.detach(), torch.tensor([0.8411, -1.8737], dtype=torch.float64))

    # step 3: m = [-0.4, 0.125]; ratio = [-0.8, 0.0625]
    p.grad = torch.tensor([-1.0, 0.0], dtype=torch.float64)
    opt.step(bs=2)
    torch.testing.assert_close(p.detach(), torch.tensor([0.912689, -1.861213], dtype=torch.float64))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([-0.4, 0.125], dtype=torch.float64))
    assert opt.state[p]["step"].item() == 3


def test_matches_the_official_update_bit_for_bit() -> None:
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(257))
    q, m, h = p.detach().clone(), torch.zeros(257), torch.zeros(257)
    opt = SophiaG([p], lr=1e-2, rho=0.04, weight_decay=0.1)
    for step in range(25):
        g = torch.randn(257)
        p.grad = g.clone()
        opt.step(bs=64)
        _official_sophiag_step(q, g, m, h, lr=1e-2, beta1=0.965, rho=0.04, weight_decay=0.1, bs=64)
        if step % 10 == 9:
            g_hat = 0.1 * torch.randn(257)
            p.grad = g_hat.clone()
            opt.update_hessian()
            h.mul_(0.99).addcmul_(g_hat, g_hat, value=0.01)
    assert torch.equal(p.detach(), q)
    assert torch.equal(opt.state[p]["hessian"], h)


@pytest.mark.parametrize("cls", [SophiaG, SophiaH])
def test_zero_hessian_gives_sign_momentum(cls) -> None:
    torch.manual_seed(1)
    lr, wd, beta1 = 0.03, 0.2, 0.9
    p = nn.Parameter(torch.randn(5, 7))
    opt = cls([p], lr=lr, betas=(beta1, 0.99), weight_decay=wd)
    m = torch.zeros(5, 7)
    for _ in range(4):
        before = p.detach().clone()
        p.grad = torch.randn(5, 7)
        m = beta1 * m + (1 - beta1) * p.grad
        opt.step()
        torch.testing.assert_close(p.detach(), before * (1 - lr * wd) - lr * m.sign(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("cls", [SophiaG, SophiaH])
def test_no_coordinate_moves_more_than_lr(cls) -> None:
    torch.manual_seed(2)
    lr, wd = 0.05, 0.1
    # float64, so that the bound is not blurred by the rounding of theta itself
    p = nn.Parameter(torch.randn(2000, dtype=torch.float64))
    opt = cls([p], lr=lr, rho=0.04, weight_decay=wd)
    inside = 0
    for step in range(12):
        if step % 3 == 0:
            # Curvature across 8 orders of magnitude, zeros and (Hutchinson only) negative entries.
            estimate = torch.randn(2000, dtype=torch.float64) * 10.0 ** torch.randint(-6, 2, (2000,))
            estimate[::7] = 0.0
            if cls is SophiaG:
                p.grad = estimate
                opt.update_hessian()
            else:
                opt.update_hessian(estimates=[estimate])
        before = p.detach().clone()
        p.grad = torch.randn(2000, dtype=torch.float64) * 10.0 ** torch.randint(-4, 3, (2000,))
        opt.step(**({"bs": 512} if cls is SophiaG else {}))
        move = (p.detach() - before * (1 - lr * wd)).abs()
        assert move.max().item() <= lr * (1 + 1e-12)
        inside += int((move < 0.99 * lr).sum())
    assert inside > 0, "some coordinates must take a preconditioned, unclipped step for the test to mean anything"


def test_bs_scales_the_denominator_and_travels_with_the_groups() -> None:
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = SophiaG([p], lr=1.0, betas=(0.0, 0.0), rho=0.5, weight_decay=0.0, bs=8)
    p.grad = torch.ones(1, dtype=torch.float64)
    opt.update_hessian()  # h = 1
    p.grad = torch.full((1,), 0.5, dtype=torch.float64)
    opt.step()  # default bs = 8: ratio 0.5 / (0.5 * 8 * 1)
    assert p.item() == pytest.approx(-0.125)
    opt.step(bs=2)  # explicit bs wins: ratio 0.5 / (0.5 * 2)
    assert p.item() == pytest.approx(-0.625)
    opt.bs = 4
    assert [g["bs"] for g in opt.param_groups] == [4]
    assert opt.state_dict()["param_groups"][0]["bs"] == 4


def test_maximize_equals_descending_the_negated_gradient() -> None:
    torch.manual_seed(3)
    a, b = nn.Parameter(torch.randn(10)), nn.Parameter(torch.randn(10))
    b.data.copy_(a.data)
    up, down = SophiaG([a], lr=0.1, maximize=True), SophiaG([b], lr=0.1)
    for _ in range(3):
        g = torch.randn(10)
        a.grad, b.grad = g.clone(), -g
        up.step()
        down.step()
    assert torch.equal(a.detach(), b.detach())


def test_win_rate_counts_unclipped_coordinates_over_all_groups() -> None:
    a, b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(2))
    opt = SophiaG(
        [{"params": [a], "rho": 1.0}, {"params": [b], "rho": 0.1}], lr=0.1, betas=(0.0, 0.0), weight_decay=0.0
    )
    assert opt.win_rate() is None
    assert opt.last_win_rate is None
    a.grad, b.grad = torch.ones(4), torch.ones(2)
    opt.update_hessian()  # h = 1 everywhere
    a.grad = torch.tensor([0.5, 1.5, 2.5, 3.5])  # |m| < rho * bs * h = 2 for two of four
    b.grad = torch.tensor([0.1, 0.3])  # |m| < 0.1 * 2 * 1 = 0.2 for one of two
    opt.step(bs=2)
    assert opt.last_win_rate == pytest.approx(3 / 6)
    assert isinstance(opt.win_rate(), torch.Tensor)


def test_invalid_hyperparameters_are_rejected() -> None:
    p = [nn.Parameter(torch.zeros(1))]
    for kwargs in (
        {"lr": -1.0},
        {"betas": (1.0, 0.9)},
        {"rho": -0.1},
        {"weight_decay": -1.0},
        {"bs": 0},
        {"update_period": 0},
    ):
        with pytest.raises(ValueError, match="invalid"):
            SophiaG(p, **kwargs)
    with pytest.raises(ValueError, match="invalid eps"):
        SophiaH(p, eps=0.0)
    with pytest.raises(ValueError, match="either a loss or estimates"):
        SophiaH(p).update_hessian()


# ---------------------------------------------------------------------------- estimators


def test_gnb_estimate_matches_the_gauss_newton_diagonal() -> None:
    """Softmax regression z = W x: B * E[g_hat ** 2] = mean_b x_bd^2 (p_bk - p_bk^2) for W[k, d]."""
    torch.manual_seed(4)
    batch, classes, dim, draws = 12, 4, 3, 4000
    x = torch.randn(batch, dim, dtype=torch.float64)
    w = nn.Parameter(torch.randn(classes, dim, dtype=torch.float64))
    logits = x @ w.T
    probs = logits.detach().softmax(-1)
    expected = ((x**2).T @ (probs - probs**2) / batch).T  # [classes, dim]

    generator = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(draws):
        loss, count = sampled_label_loss(logits, generator=generator)
        (g_hat,) = torch.autograd.grad(loss, w, retain_graph=True)
        samples.append(count * g_hat * g_hat)
    samples = torch.stack(samples)
    assert count == batch
    error = (samples.mean(0) - expected).abs()
    standard_error = samples.std(0) / math.sqrt(draws)
    assert bool((error < 5 * standard_error + 1e-9).all()), (error / standard_error).max()
    # The data labels (a fixed class) would not estimate the Gauss-Newton diagonal.
    fixed = F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long))
    (g_fixed,) = torch.autograd.grad(fixed, w, retain_graph=True)
    assert not torch.allclose(batch * g_fixed * g_fixed, expected, rtol=0.2)


def test_sampled_label_loss_skips_masked_positions() -> None:
    logits = torch.randn(2, 5, 7, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    loss, count = sampled_label_loss(logits, mask, torch.Generator().manual_seed(0))
    assert count == 8
    loss.backward()
    assert torch.equal(logits.grad[0, 3:], torch.zeros(2, 7))
    assert logits.grad[0, :3].abs().sum() > 0


def _quadratic(seed: int) -> tuple[list[nn.Parameter], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    root = torch.randn(7, 7, generator=generator, dtype=torch.float64)
    a = root + root.T  # symmetric, indefinite: some diagonal entries are negative
    params = [nn.Parameter(torch.randn(3, generator=generator, dtype=torch.float64))]
    params.append(nn.Parameter(torch.randn(2, 2, generator=generator, dtype=torch.float64)))
    return params, a


def _quadratic_loss(params: list[nn.Parameter], a: torch.Tensor) -> torch.Tensor:
    z = torch.cat([p.reshape(-1) for p in params])
    return 0.5 * z @ a @ z


def test_hutchinson_is_exactly_u_times_hu_for_its_probe() -> None:
    params, a = _quadratic(5)
    opt = SophiaH(params, seed=11)
    estimates = opt.hutchinson(_quadratic_loss(params, a))
    generator = torch.Generator().manual_seed(11)
    u = torch.cat([torch.randn(p.shape, generator=generator, dtype=p.dtype).reshape(-1) for p in params])
    torch.testing.assert_close(torch.cat([e.reshape(-1) for e in estimates]), u * (a @ u))


def test_hutchinson_is_unbiased_for_the_diagonal_and_leaves_the_global_rng_alone() -> None:
    params, a = _quadratic(6)
    opt = SophiaH(params, seed=0)
    loss = _quadratic_loss(params, a)
    rng_before = torch.get_rng_state()
    draws = 4000
    samples = torch.stack([torch.cat([e.reshape(-1) for e in opt.hutchinson(loss)]) for _ in range(draws)])
    assert torch.equal(torch.get_rng_state(), rng_before)
    # Var[u_i (A u)_i] = 2 A_ii^2 + sum_{j != i} A_ij^2 for Gaussian probes.
    variance = (a**2).sum(1) + (a.diagonal() ** 2)
    error = (samples.mean(0) - a.diagonal()).abs()
    assert bool((error < 5 * (variance / draws).sqrt()).all()), error
    assert (a.diagonal() < 0).any(), "the test quadratic should have negative curvature somewhere"
    loss.backward()  # the graph survives the estimates
    assert params[0].grad is not None


def test_hutchinson_update_folds_the_estimate_and_negative_curvature_is_clipped() -> None:
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = SophiaH([p], lr=0.1, betas=(0.0, 0.5), rho=0.5, weight_decay=0.0, eps=1e-12)
    opt.update_hessian(estimates=[torch.tensor([-4.0, 0.0, 4.0], dtype=torch.float64)])
    torch.testing.assert_close(opt.state[p]["hessian"], torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64))
    p.grad = torch.tensor([0.5, -0.5, 0.5], dtype=torch.float64)
    opt.step()
    # h < 0 and h = 0 fall back to the floor eps (clipped sign step); h = 2 gives 0.5 / (0.5 * 2).
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.1, -0.05], dtype=torch.float64))


def test_hutchinson_estimates_skip_parameters_the_loss_does_not_use() -> None:
    used, unused = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    frozen = nn.Parameter(torch.ones(2), requires_grad=False)
    opt = SophiaH([used, frozen, unused])
    estimates = opt.hutchinson((used**3).sum() + (frozen * used).sum())
    assert len(estimates) == 2
    assert estimates[1] is None
    opt.update_hessian(estimates=estimates)
    assert "hessian" in opt.state[used]
    assert unused not in opt.state


# ---------------------------------------------------------------------------- resume


def _softmax_regression(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5))
    x, y = torch.randn(32, 6), torch.randint(0, 5, (32,))
    return model, x, y


def _train_g(model, opt, x, y, steps, start, generator) -> None:
    for step in range(start, start + steps):
        F.cross_entropy(model(x), y).backward()
        opt.step(bs=len(x))
        opt.zero_grad(set_to_none=True)
        if step % 3 == 2:
            loss, _ = sampled_label_loss(model(x), generator=generator)
            loss.backward()
            opt.update_hessian()
            opt.zero_grad(set_to_none=True)


def _train_h(model, opt, x, y, steps, start) -> None:
    for step in range(start, start + steps):
        loss = F.cross_entropy(model(x), y)
        if step % 3 == 2:
            opt.update_hessian(loss)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_sophiag_resumes_bit_exactly() -> None:
    model, x, y = _softmax_regression(7)
    first = SophiaG(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    _train_g(model, first, x, y, 5, 0, generator)
    saved = _roundtrip({"model": model.state_dict(), "opt": first.state_dict(), "rng": generator.get_state()})
    resumed_model, _, _ = _softmax_regression(99)
    resumed_model.load_state_dict(saved["model"])
    resumed = SophiaG(resumed_model.parameters(), lr=1e-2)
    resumed.load_state_dict(saved["opt"])
    assert isinstance(resumed.state[next(resumed_model.parameters())]["step"], torch.Tensor)
    _train_g(resumed_model, resumed, x, y, 5, 5, torch.Generator().set_state(saved["rng"]))

    reference, _, _ = _softmax_regression(7)
    _train_g(reference, SophiaG(reference.parameters(), lr=1e-2), x, y, 10, 0, torch.Generator().manual_seed(1))
    for a, b in zip(reference.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_sophiah_resumes_bit_exactly_with_its_probe_generator() -> None:
    reference, x, y = _softmax_regression(8)
    _train_h(reference, SophiaH(reference.parameters(), lr=1e-2, seed=3), x, y, 10, 0)

    model, _, _ = _softmax_regression(8)
    first = SophiaH(model.parameters(), lr=1e-2, seed=3)
    _train_h(model, first, x, y, 5, 0)
    saved = _roundtrip({"model": model.state_dict(), "opt": first.state_dict()})
    resumed_model, _, _ = _softmax_regression(99)
    resumed_model.load_state_dict(saved["model"])
    # A different seed must not matter: the saved generator state wins.
    resumed = SophiaH(resumed_model.parameters(), lr=1e-2, seed=12345)
    resumed.load_state_dict(saved["opt"])
    _train_h(resumed_model, resumed, x, y, 5, 5)
    for a, b in zip(reference.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)

    # Without the generator state the probes, and so the parameters, would differ.
    fresh_model, _, _ = _softmax_regression(99)
    fresh_model.load_state_dict(saved["model"])
    fresh = SophiaH(fresh_model.parameters(), lr=1e-2, seed=3)
    fresh.load_state_dict({k: v for k, v in saved["opt"].items() if k != "hutchinson_generator"})
    _train_h(fresh_model, fresh, x, y, 5, 5)
    assert not all(torch.equal(a, b) for a, b in zip(reference.parameters(), fresh_model.parameters(), strict=True))


def test_pickling_keeps_the_schedule_and_the_probe_sequence() -> None:
    p = nn.Parameter(torch.randn(3, dtype=torch.float64))
    opt = SophiaH([p], update_period=5, seed=4)
    opt.update_hessian((p**3).sum())
    clone = pickle.loads(pickle.dumps(opt))
    q = clone.param_groups[0]["params"][0]
    assert (clone.update_period, clone.seed) == (5, 4)
    assert torch.equal(opt.hutchinson((p**3).sum())[0], clone.hutchinson((q**3).sum())[0])
    g = copy.deepcopy(SophiaG([p], update_period=3, bs=7))
    assert (g.update_period, g.bs) == (3, 7)
