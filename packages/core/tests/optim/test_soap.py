"""SOAP against its equations: Adam equivalences, the eigenbasis refresh, exact resume, and a Kronecker quadratic."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from keel.core.optim import SOAP, Shampoo
from keel.core.optim.soap import merged_shape, robust_eigh

F64 = torch.float64


def _orthogonality_error(q: torch.Tensor) -> float:
    return (q.mT @ q - torch.eye(q.shape[1], dtype=q.dtype)).abs().max().item()


def _adam_reference(param0, grads, lr, betas, weight_decay):
    """torch.optim.Adam on ``grads``, with decoupled weight decay applied after each step as SOAP does."""
    param = nn.Parameter(param0.clone())
    adam = torch.optim.Adam([param], lr=lr, betas=betas, eps=0.0)
    for grad in grads:
        param.grad = grad.clone()
        adam.step()
        with torch.no_grad():
            param.mul_(1.0 - lr * weight_decay)
    return param.detach()


def _run_soap(param0, grads, **kwargs):
    param = nn.Parameter(param0.clone())
    soap = SOAP([param], **kwargs)
    for grad in grads:
        param.grad = grad.clone()
        soap.step()
    return param, soap


def test_first_step_only_builds_the_preconditioner():
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(5, 3, dtype=F64))
    before = weight.detach().clone()
    soap = SOAP([weight], weight_decay=0.5, shampoo_beta=0.8)
    grad = torch.randn(5, 3, dtype=F64)
    weight.grad = grad
    soap.step()

    assert torch.equal(weight.detach(), before)  # no Adam step and no weight decay either
    state = soap.state[weight]
    assert state["step"] == 0
    torch.testing.assert_close(state["GG"][0], 0.2 * grad @ grad.T)
    torch.testing.assert_close(state["GG"][1], 0.2 * grad.T @ grad)
    for factor, basis in zip(state["GG"], state["Q"], strict=True):
        assert _orthogonality_error(basis) < 1e-12
        eigenvalues = torch.diagonal(basis.T @ factor @ basis)
        assert torch.all(eigenvalues[:-1] >= eigenvalues[1:] - 1e-12)  # descending, as officially


# With no preconditioner the rotation is the identity and SOAP is Adam with decoupled weight decay,
# one step late (its first step only initialises). eps=0 makes torch's Adam and SOAP's eps placement
# coincide (torch adds eps after bias correction); the eps placement is pinned by the hand-computed test.
@pytest.mark.parametrize(
    ("shape", "max_precond_dim"),
    [((7,), 10000), ((5, 4), 1), ((3, 2, 2, 2), 1)],
    ids=["1d", "matrix-identity-basis", "conv-identity-basis"],
)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_without_preconditioner_soap_is_adamw_shifted_by_one_step(shape, max_precond_dim, weight_decay):
    torch.manual_seed(1)
    param0 = torch.randn(shape, dtype=F64)
    grads = [torch.randn(shape, dtype=F64) for _ in range(11)]
    betas, lr = (0.9, 0.95), 0.05
    soap_param, soap = _run_soap(
        param0, grads, lr=lr, betas=betas, eps=0.0, weight_decay=weight_decay, max_precond_dim=max_precond_dim
    )
    assert all(basis is None for basis in soap.state[soap_param]["Q"])
    adam_param = _adam_reference(param0, grads[1:], lr, betas, weight_decay)
    torch.testing.assert_close(soap_param.detach(), adam_param, rtol=0, atol=1e-12)
    assert not torch.allclose(soap_param.detach(), param0)


def test_gradient_dependent_trajectory_matches_adam_on_a_1d_parameter():
    # Gradients computed from the current parameters: the trajectories stay equal only if every
    # SOAP step equals the Adam step taken from the same point.
    target = torch.linspace(-1, 1, 9, dtype=F64) + 0.05  # no zero gradient: eps is 0
    soap_param = nn.Parameter(torch.zeros(9, dtype=F64))
    adam_param = nn.Parameter(torch.zeros(9, dtype=F64))
    soap = SOAP([soap_param], lr=0.03, eps=0.0, weight_decay=0.0)
    adam = torch.optim.Adam([adam_param], lr=0.03, betas=(0.95, 0.95), eps=0.0)

    def grad_at(p):
        return ((p - target) ** 3 + (p - target)).detach()

    soap_param.grad = grad_at(soap_param)
    soap.step()  # initialising step
    for _ in range(10):
        soap_param.grad, adam_param.grad = grad_at(soap_param), grad_at(adam_param)
        soap.step()
        adam.step()
    torch.testing.assert_close(soap_param.detach(), adam_param.detach(), rtol=0, atol=1e-12)


def test_bases_stay_orthogonal_and_converge_to_the_eigenvectors():
    # After a first gradient, a constant one with singular values 32, 16, ..., 1: the factors converge
    # to U S^2 U^T and V S^2 V^T, and the refreshes (one power iteration each) must converge from the
    # first gradient's eigenbasis to U and V, in descending order, while staying orthogonal.
    generator = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(12, 6, generator=generator, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=F64))
    constant = (u * 2.0 ** torch.arange(5, -1, -1, dtype=F64)) @ v.T
    weight = nn.Parameter(torch.zeros(12, 6, dtype=F64))
    soap = SOAP([weight], shampoo_beta=0.5, precondition_frequency=3)
    weight.grad = torch.randn(12, 6, generator=generator, dtype=F64)
    soap.step()
    initial = [basis.clone() for basis in soap.state[weight]["Q"]]
    for _ in range(90):
        weight.grad = constant
        soap.step()
        for basis in soap.state[weight]["Q"]:
            assert _orthogonality_error(basis) < 1e-12
    left, right = soap.state[weight]["Q"]
    torch.testing.assert_close((left[:, :6].T @ u).abs(), torch.eye(6, dtype=F64), rtol=0, atol=1e-8)
    torch.testing.assert_close((right.T @ v).abs(), torch.eye(6, dtype=F64), rtol=0, atol=1e-8)
    assert (initial[1].T @ v).abs().diagonal().min() < 0.9  # the basis really moved


def test_refresh_permutes_the_second_moment_when_the_eigenvalue_order_changes():
    # Left factor only (the 3 columns exceed max_precond_dim). Rows stay orthogonal, so the factor
    # is diagonal and every basis is a signed permutation. Row 0 dominates the first gradient, row 1
    # all later ones: at the refresh of step 3 the eigenvalue order flips.
    def grad(row0_scale, row1_scale):
        return torch.stack([row0_scale * torch.tensor([1.0, 1.0, 1.0]), row1_scale * torch.tensor([1.0, -2.0, 1.0])])

    grads = [grad(3.0, 0.5)] + [grad(0.2 + 0.01 * k, 4.0 - 0.1 * k) for k in range(8)]
    grads = [g.to(F64) for g in grads]
    param0 = torch.randn(2, 3, dtype=F64)
    betas = (0.9, 0.5)
    param = nn.Parameter(param0.clone())
    soap = SOAP([param], lr=0.05, betas=betas, eps=0.0, weight_decay=0.0, precondition_frequency=3, max_precond_dim=2)
    state = soap.state[param]
    for k in range(3):
        param.grad = grads[k]
        soap.step()
    old_basis = state["Q"][0].clone()
    assert torch.allclose(old_basis.abs(), torch.eye(2, dtype=F64))
    exp_avg_sq, exp_avg = state["exp_avg_sq"].clone(), state["exp_avg"].clone()

    param.grad = grads[3]
    soap.step()  # step 3: Adam step, then the refresh
    assert torch.allclose(state["Q"][0].abs(), torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64))
    # Hand computation: the rotated gradient is the gradient up to row signs; the moments of step 3
    # are formed in the old order, then the refresh swaps the rows of the second moment.
    expected_sq = betas[1] * exp_avg_sq + (1 - betas[1]) * grads[3] ** 2
    torch.testing.assert_close(state["exp_avg_sq"], expected_sq[[1, 0]], rtol=1e-12, atol=0)
    assert not torch.allclose(expected_sq, expected_sq[[1, 0]])  # the swap is observable
    # The first moment is rotated into the new basis: the same swap, up to signs.
    expected_avg = betas[0] * exp_avg + (1 - betas[0]) * old_basis.diagonal()[:, None] * grads[3]
    torch.testing.assert_close(state["exp_avg"].abs(), expected_avg.abs()[[1, 0]], rtol=1e-12, atol=1e-15)

    # Adam is equivariant under signed permutations, so with consistent bookkeeping SOAP on this
    # problem is exactly Adam one step late, before and after the flip.
    for k in range(4, len(grads)):
        param.grad = grads[k]
        soap.step()
    adam_param = _adam_reference(param0, grads[1:], 0.05, betas, 0.0)
    torch.testing.assert_close(param.detach(), adam_param, rtol=0, atol=1e-12)


def test_eigh_failure_retries_in_float64(monkeypatch):
    # pytorch#145801: CPU eigh can fail on the rank-1 outer product that is SOAP's first factor.
    real_eigh = torch.linalg.eigh
    calls = []

    def flaky_eigh(matrix, *args, **kwargs):
        calls.append(matrix.dtype)
        if matrix.dtype == torch.float32 and calls.count(torch.float32) == 1:
            raise torch.linalg.LinAlgError("linalg.eigh: the algorithm failed to converge")
        return real_eigh(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", flaky_eigh)
    u, v = torch.randn(8, generator=torch.Generator().manual_seed(3)), torch.tensor([1.0, -2.0, 0.5])
    weight = nn.Parameter(torch.zeros(8, 3))
    soap = SOAP([weight])
    weight.grad = torch.outer(u, v)  # rank 1: both factors are rank-1 outer products
    soap.step()

    assert calls == [torch.float32, torch.float64, torch.float32]
    left = soap.state[weight]["Q"][0]
    assert left.dtype == torch.float32
    assert _orthogonality_error(left) < 1e-5
    assert abs(left[:, 0] @ u).item() == pytest.approx(u.norm().item(), rel=1e-5)  # top eigenvector is u


def test_eigh_last_resort_adds_jitter(monkeypatch):
    real_eigh = torch.linalg.eigh
    calls = []

    def failing_eigh(matrix, *args, **kwargs):
        calls.append(matrix.dtype)
        if len(calls) < 3:
            raise torch.linalg.LinAlgError("linalg.eigh: the algorithm failed to converge")
        return real_eigh(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    u = torch.arange(1.0, 7.0)
    values, vectors = robust_eigh(torch.outer(u, u))
    assert calls == [torch.float32, torch.float64, torch.float64]
    assert vectors.dtype == torch.float32
    assert _orthogonality_error(vectors) < 1e-5
    assert values[-1].item() == pytest.approx(u.square().sum().item(), rel=1e-5)


def test_rank_one_factor_gives_an_orthogonal_basis():
    u = torch.randn(64, generator=torch.Generator().manual_seed(4))
    values, vectors = robust_eigh(torch.outer(u, u))
    assert _orthogonality_error(vectors) < 1e-5
    assert abs(vectors[:, -1] @ u).item() == pytest.approx(u.norm().item(), rel=1e-5)


def _descending_eigenvectors(matrix):
    values, vectors = np.linalg.eigh(matrix)
    return vectors[:, ::-1]


def test_matrix_steps_match_a_hand_computation():
    # Written from the paper's equations and the official code's order of operations: init, then two
    # Adam steps in the initial basis, the refresh after step 2, and a third step in the new basis.
    # eps is large so that its placement (before bias correction) matters. Eigenvector signs are
    # arbitrary but cancel in Q (.) Q^T, so numpy's choices need not match torch's.
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((2, 3))
    grads = [rng.standard_normal((2, 3)) for _ in range(4)]
    lr, (b1, b2), sb, eps, wd = 0.1, (0.9, 0.8), 0.7, 0.05, 0.2

    left, right = (1 - sb) * grads[0] @ grads[0].T, (1 - sb) * grads[0].T @ grads[0]
    q_left, q_right = _descending_eigenvectors(left), _descending_eigenvectors(right)
    m, v, w, expected = np.zeros((2, 3)), np.zeros((2, 3)), w0.copy(), []
    for t, g in enumerate(grads[1:], start=1):
        rotated = q_left.T @ g @ q_right
        m = b1 * m + (1 - b1) * rotated
        v = b2 * v + (1 - b2) * rotated**2
        step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        w = (w - step_size * q_left @ (m / (np.sqrt(v) + eps)) @ q_right.T) * (1 - lr * wd)
        expected.append(w.copy())
        left, right = sb * left + (1 - sb) * g @ g.T, sb * right + (1 - sb) * g.T @ g
        if t == 2:  # refresh: m to the raw space, sort by diag(O^T M O), permute v, QR of M O
            m_raw = q_left @ m @ q_right.T
            order = np.argsort(-np.diag(q_left.T @ left @ q_left), kind="stable")
            v, q_left = v[order, :], np.linalg.qr(left @ q_left[:, order])[0]
            order = np.argsort(-np.diag(q_right.T @ right @ q_right), kind="stable")
            v, q_right = v[:, order], np.linalg.qr(right @ q_right[:, order])[0]
            m = q_left.T @ m_raw @ q_right

    param = nn.Parameter(torch.from_numpy(w0))
    soap = SOAP([param], lr=lr, betas=(b1, b2), shampoo_beta=sb, eps=eps, weight_decay=wd, precondition_frequency=2)
    param.grad = torch.from_numpy(grads[0])
    soap.step()
    for g, w_expected in zip(grads[1:], expected, strict=True):
        param.grad = torch.from_numpy(g)
        soap.step()
        np.testing.assert_allclose(param.detach().numpy(), w_expected, rtol=0, atol=1e-12)
    state = soap.state[param]
    np.testing.assert_allclose(state["GG"][0].numpy(), left, atol=1e-12)
    np.testing.assert_allclose(state["GG"][1].numpy(), right, atol=1e-12)
    np.testing.assert_allclose(state["exp_avg_sq"].numpy(), v, atol=1e-12)


class _TinyNet(nn.Module):
    """A matrix, a convolution, an embedding wider than max_precond_dim=20, and 1-D parameters."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 4)
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)
        self.norm = nn.LayerNorm(6)

    def forward(self, tokens):
        x = self.embed(tokens).permute(0, 3, 1, 2)  # (batch, 4, h, w)
        x = self.conv(x).mean(dim=(2, 3))
        return self.head(torch.tanh(self.norm(x)))


def _batch(step):
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, 40, (8, 5, 5), generator=generator), torch.randint(0, 3, (8,), generator=generator)


def _train(model, optimizer, steps, start=0):
    for step in range(start, start + steps):
        tokens, labels = _batch(step)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(tokens).float(), labels)
        loss.backward()
        optimizer.step()
    return loss.item()


def _assert_states_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_states_equal(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_states_equal(x, y)
    else:
        assert a == b


@pytest.mark.parametrize(
    ("factory", "dtype"),
    [
        (lambda p: SOAP(p, lr=0.01, precondition_frequency=3, max_precond_dim=20), torch.float32),
        (lambda p: SOAP(p, precondition_frequency=2, merge_dims=True, precondition_1d=True), torch.float32),
        (lambda p: SOAP(p, lr=0.01, precondition_frequency=3, max_precond_dim=20), torch.bfloat16),
        (lambda p: Shampoo(p, lr=0.01, precondition_frequency=3, max_precond_dim=20), torch.float32),
    ],
    ids=["soap", "soap-merge-dims", "soap-bf16", "shampoo"],
)
def test_state_dict_round_trip_resumes_bit_exactly(factory, dtype):
    torch.manual_seed(6)
    reference = _TinyNet().to(dtype)
    resumed = _TinyNet().to(dtype)
    resumed.load_state_dict(reference.state_dict())
    reference_opt = factory(reference.parameters())
    _train(reference, reference_opt, 14)

    first_half = _TinyNet().to(dtype)
    first_half.load_state_dict(resumed.state_dict())
    first_opt = factory(first_half.parameters())
    _train(first_half, first_opt, 5)  # saved between refreshes; the continuation crosses three
    buffer = io.BytesIO()
    torch.save({"model": first_half.state_dict(), "optimizer": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = factory(resumed.parameters())
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    _train(resumed, resumed_opt, 9, start=5)

    for p, q in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    _assert_states_equal(reference_opt.state_dict()["state"], resumed_opt.state_dict()["state"])
    if dtype == torch.bfloat16:
        assert resumed_opt.state[resumed.conv.weight]["GG"][0].dtype == torch.float32


def _spd(n, condition, generator):
    rotation, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=F64))
    return (rotation * torch.logspace(0, math.log10(condition), n, dtype=F64)) @ rotation.T


def _iterations_to_converge(factory, problem, max_iterations=2500, tolerance=1e-6):
    a, b, w_star, w0 = problem
    weight = nn.Parameter(w0.clone())
    optimizer = factory([weight])
    loss0 = None
    for iteration in range(max_iterations + 1):
        with torch.no_grad():
            error = weight - w_star
            loss = 0.5 * torch.trace(error.T @ a @ error @ b).item()
            loss0 = loss if loss0 is None else loss0
            if loss < tolerance * loss0:
                return iteration
            weight.grad = a @ error @ b
        optimizer.step()
    return math.inf


@pytest.fixture
def one_thread():
    # 16x16 factorizations gain nothing from threads, and on a busy 2-core machine every parallel
    # region can wait a scheduler tick for its second thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def kronecker_quadratic():
    """L(W) = 1/2 tr((W - W*)^T A (W - W*) B): Shampoo's model of curvature, badly conditioned and rotated."""
    generator = torch.Generator().manual_seed(0)
    a, b = _spd(16, 1e3, generator), _spd(8, 1e3, generator)
    return a, b, torch.randn(16, 8, generator=generator, dtype=F64), torch.randn(16, 8, generator=generator, dtype=F64)


LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def test_soap_beats_tuned_adamw_on_a_kronecker_quadratic(kronecker_quadratic, one_thread):
    # Same betas for both, each with its best learning rate from the same grid.
    adamw = {
        lr: _iterations_to_converge(
            lambda p, lr=lr: torch.optim.AdamW(p, lr=lr, betas=(0.95, 0.95), weight_decay=0.0), kronecker_quadratic
        )
        for lr in LR_GRID
    }
    soap = {
        lr: _iterations_to_converge(lambda p, lr=lr: SOAP(p, lr=lr, weight_decay=0.0), kronecker_quadratic)
        for lr in LR_GRID
    }
    best_adamw, best_soap = min(adamw.values()), min(soap.values())
    print(f"iterations to 1e-6 L0: AdamW {adamw} -> {best_adamw}; SOAP(f=10) {soap} -> {best_soap}")
    assert min(adamw, key=adamw.get) not in (LR_GRID[0], LR_GRID[-1])  # the grid brackets AdamW's best lr
    assert best_soap * 3 <= best_adamw


def test_shampoo_converges_on_the_kronecker_quadratic(kronecker_quadratic, one_thread):
    iterations = _iterations_to_converge(lambda p: Shampoo(p, lr=0.1, weight_decay=0.0), kronecker_quadratic)
    print(f"Shampoo(1/2 power, Adam grafting, f=10, lr=0.1) iterations to 1e-6 L0: {iterations}")
    assert iterations < 2000


def test_conv_and_one_sided_embedding_keep_their_shapes():
    torch.manual_seed(7)
    model = _TinyNet()
    shapes = {name: p.shape for name, p in model.named_parameters()}
    soap = SOAP(model.parameters(), lr=0.01, max_precond_dim=20, precondition_frequency=2)
    tokens, labels = _batch(0)
    losses = []
    for _ in range(30):  # one batch, which the model can fit
        soap.zero_grad()
        loss = nn.functional.cross_entropy(model(tokens), labels)
        loss.backward()
        soap.step()
        losses.append(loss.item())
    assert {name: p.shape for name, p in model.named_parameters()} == shapes
    assert losses[-1] < 0.5 * losses[0]

    embedding = soap.state[model.embed.weight]  # 40 > max_precond_dim: preconditioned on one side
    assert embedding["GG"][0] is None
    assert embedding["GG"][1].shape == (4, 4)
    conv = soap.state[model.conv.weight]
    assert [f.shape[0] for f in conv["GG"]] == [6, 4, 3, 3]
    assert conv["exp_avg"].shape == model.conv.weight.shape
    assert soap.state[model.head.bias]["Q"] == [None]


def test_merge_dims_and_channels_last_follow_the_official_layout():
    assert merged_shape((64, 3, 3, 3), 10000) == (1728,)
    assert merged_shape((256, 128, 3, 3), 10000) == (256, 1152)
    assert merged_shape((20000, 4), 10000) == (20000, 4)

    torch.manual_seed(8)
    weight = nn.Parameter(torch.randn(6, 3, 3, 4))  # (out, kh, kw, in)
    before = weight.detach().clone()
    soap = SOAP([weight], merge_dims=True, max_precond_dim=40, data_format="channels_last")
    for _ in range(4):
        weight.grad = torch.randn(6, 3, 3, 4)
        soap.step()
    state = soap.state[weight]
    # Permuted to (out, in, kh, kw) = (6, 4, 3, 3), then merged to (24, 9).
    assert state["exp_avg"].shape == (24, 9)
    assert [f.shape[0] for f in state["GG"]] == [24, 9]
    assert weight.shape == (6, 3, 3, 4)
    assert not torch.allclose(weight.detach(), before)


@pytest.mark.parametrize(
    "kwargs",
    [{"lr": -1.0}, {"betas": (0.9, 1.0)}, {"precondition_frequency": 0}, {"data_format": "nhwc"}],
)
def test_invalid_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError, match="SOAP"):
        SOAP([nn.Parameter(torch.zeros(2))], **kwargs)


def test_flat_parameters_warn_that_soap_is_adam():
    # what DeepSpeed ZeRO hands a client optimizer: one flat fp32 partition per group
    flat = torch.nn.Parameter(torch.zeros(64))
    flat.grad = torch.ones(64)
    with pytest.warns(UserWarning, match="only 1-D parameters, so nothing is preconditioned"):
        SOAP([flat]).step()
    matrix = torch.nn.Parameter(torch.zeros(4, 4))
    matrix.grad = torch.ones(4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SOAP([matrix, torch.nn.Parameter(torch.zeros(4))]).step()
