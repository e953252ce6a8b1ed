"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al. 2024, arXiv:2409.11321).

For a matrix parameter with gradient ``G`` SOAP keeps Shampoo's Kronecker factors
``L <- b L + (1 - b) G G^T`` and ``R <- b R + (1 - b) G^T G``, their eigenbases ``Q_L``, ``Q_R``,
and runs Adam on the rotated gradient ``Q_L^T G Q_R``; the Adam direction is rotated back with
``Q_L (.) Q_R^T``. Tensors of any order get one factor per dimension (contracting the gradient
over all other dimensions); a dimension larger than ``max_precond_dim`` keeps the identity basis.

The algorithm follows the official implementation, ``soap.py`` of github.com/nikhilvyas/SOAP at
HEAD (commit f42d296, which stores the first moment in the eigenbasis):

* the first step of each parameter only builds the factors and the eigenbasis (``eigh``); the
  parameter is not moved, so the basis used at step ``t`` never contains gradient ``t``;
* every ``precondition_frequency`` steps the basis is refreshed by one power iteration and a QR
  decomposition, after re-sorting the old basis by the estimated eigenvalues ``diag(O^T M O)``;
  the second moment is permuted with the same order, and the first moment is rotated from the old
  basis to the new one;
* decoupled weight decay ``p <- p - lr * wd * p`` is applied after the Adam step.

Two deliberate differences from the official code, neither changing the mathematics: the first
moment is rotated only when the basis changes (the official code rotates it back and forth with the
same basis on every step), and ``eigh``/``qr`` run in the state dtype (float64 parameters keep
float64 factors, where the official code drops to float32).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any

import torch
from torch.optim import Optimizer

from keel.core.optim._closure import evaluate_closure

Factors = list[torch.Tensor | None]

# Added to every factor before the first eigendecomposition, as in the official code: it keeps an
# all-zero factor (a parameter whose first gradient is zero) decomposable without moving any
# eigenvalue that matters.
_EIGH_SHIFT = 1e-30
# Relative diagonal jitter for the last-resort decomposition, when even float64 ``eigh`` fails.
_EIGH_JITTER = 1e-10


def robust_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of a symmetric PSD matrix that does not give up on degenerate input.

    Runs ``torch.linalg.eigh(matrix + 1e-30 I)``. When that raises (pytorch#145801: on CPU it can
    fail for a rank-1 outer product, which is exactly SOAP's first factor ``G G^T``), it retries in
    float64 as the official code does, and once more with a small diagonal jitter proportional to
    the matrix scale.

    Args:
        matrix: Symmetric ``(n, n)`` matrix.

    Returns:
        Eigenvalues in ascending order and the matching eigenvectors (columns), both in
        ``matrix.dtype``.
    """
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    try:
        return torch.linalg.eigh(matrix + _EIGH_SHIFT * eye)
    except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
        pass
    wide, eye = matrix.double(), eye.double()
    try:
        values, vectors = torch.linalg.eigh(wide + _EIGH_SHIFT * eye)
    except RuntimeError:
        scale = wide.diagonal().abs().mean().clamp_min(_EIGH_SHIFT)
        values, vectors = torch.linalg.eigh(wide + (_EIGH_JITTER * scale) * eye)
    return values.to(matrix.dtype), vectors.to(matrix.dtype)


def merged_shape(shape: Sequence[int], max_precond_dim: int) -> tuple[int, ...]:
    """Merge adjacent dimensions while their product stays ``<= max_precond_dim`` (official rule).

    Dimensions are scanned left to right and multiplied into a running block; a dimension that
    would push the block past the limit closes it. A dimension that alone exceeds the limit stays
    on its own (and later gets no preconditioner). With limit 10000, ``(64, 3, 3, 3)`` merges to
    ``(1728,)`` and ``(256, 128, 3, 3)`` to ``(256, 1152)``.

    Args:
        shape: The tensor shape.
        max_precond_dim: Largest merged dimension.

    Returns:
        The merged shape (``(1,)`` for a scalar).
    """
    merged: list[int] = []
    block = 1
    for size in shape:
        if block * size > max_precond_dim:
            if block > 1:
                merged.append(block)
                block = size
            else:
                merged.append(size)
        else:
            block *= size
    if block > 1 or not merged:
        merged.append(block)
    return tuple(merged)


def state_dtype(param: torch.Tensor) -> torch.dtype:
    """Dtype of the optimizer state: float32 for half-precision parameters, else the parameter's."""
    return torch.float32 if param.dtype in (torch.float16, torch.bfloat16) else param.dtype


def accumulate_factors(factors: Factors, grad: torch.Tensor, beta: float) -> None:
    """EMA of the per-dimension covariances: ``F_i <- beta F_i + (1 - beta) G_(i) G_(i)^T``.

    ``G_(i)`` is ``grad`` unfolded along dimension ``i`` (shape ``(s_i, -1)``), so the product
    contracts every other dimension, like the official ``tensordot`` over all dims but ``i``.
    """
    for dim, factor in enumerate(factors):
        if factor is None:
            continue
        unfolded = grad.movedim(dim, 0).reshape(factor.shape[0], -1)
        factor.addmm_(unfolded, unfolded.mT, beta=beta, alpha=1.0 - beta)


def project(x: torch.Tensor, bases: Factors) -> torch.Tensor:
    """Rotate ``x`` into the eigenbasis: contract each dimension ``i`` with ``Q_i`` (``Q^T x``).

    ``None`` bases are the identity. For matrices this is ``Q_L^T x Q_R`` with two matmuls; higher
    orders contract dimension 0 each time, which moves the new axis last and cycles back to the
    original order after all dimensions.
    """
    if x.dim() == 2 and len(bases) == 2:
        left, right = bases
        if left is not None:
            x = left.mT @ x
        if right is not None:
            x = x @ right
        return x
    for basis in bases:
        x = x.movedim(0, -1) if basis is None else torch.tensordot(x, basis, dims=([0], [0]))
    return x


def project_back(x: torch.Tensor, bases: Factors) -> torch.Tensor:
    """Inverse of :func:`project`: ``Q_L x Q_R^T`` for matrices, ``Q_i x`` along each dim in general."""
    if x.dim() == 2 and len(bases) == 2:
        left, right = bases
        if left is not None:
            x = left @ x
        if right is not None:
            x = x @ right.mT
        return x
    for basis in bases:
        x = x.movedim(0, -1) if basis is None else torch.tensordot(x, basis, dims=([0], [1]))
    return x


def load_state_in_state_dtype(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
    """Re-place loaded per-parameter state on the parameter's device in :func:`state_dtype`.

    ``Optimizer.load_state_dict`` casts every floating tensor of the state to its parameter's dtype,
    which would round the float32 factors of a bfloat16 parameter to bfloat16 and break exact resume.
    Call this after it with the same ``state_dict``.
    """
    saved_ids = chain.from_iterable(group["params"] for group in state_dict["param_groups"])
    params = chain.from_iterable(group["params"] for group in optimizer.param_groups)
    for saved_id, param in zip(saved_ids, params, strict=True):
        saved = state_dict["state"].get(saved_id)
        if saved is not None:
            dtype = state_dtype(param)
            optimizer.state[param] = {key: _to_state(value, param.device, dtype) for key, value in saved.items()}


def _to_state(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, list | tuple):
        return type(value)(_to_state(item, device, dtype) for item in value)
    return value


class SOAP(Optimizer):
    """ShampoO with Adam in the Preconditioner's eigenbasis (SOAP).

    Same constructor names and defaults as the official implementation, so a config written for
    it works unchanged. See the module docstring for the algorithm and the official code it follows.

    State per parameter (all tensors, Python ints or lists of them, so ``state_dict`` loads with
    ``torch.load(weights_only=True)``): ``step`` (Adam steps taken, 0 after the initialising step),
    ``exp_avg`` (first moment, in the eigenbasis), ``exp_avg_sq`` (second moment, in the eigenbasis),
    ``GG`` (one factor per dimension or ``None``) and ``Q`` (their eigenbases or ``None``). With
    ``merge_dims`` the moments have the merged shape. Half-precision parameters keep float32 state.

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate.
        betas: Adam's ``(beta1, beta2)``.
        shampoo_beta: EMA coefficient of the Kronecker factors; a negative value uses ``betas[1]``.
        eps: Adam's epsilon, added to ``sqrt(exp_avg_sq)`` before bias correction (as officially).
        weight_decay: Decoupled weight decay, applied after the step as ``p -= lr * wd * p``.
        precondition_frequency: Steps between eigenbasis refreshes (power iteration + QR).
        max_precond_dim: Dimensions larger than this are not preconditioned (identity basis); the
            default 10000 leaves common vocabulary sizes one-sided.
        merge_dims: Merge adjacent dimensions while their product is ``<= max_precond_dim``
            (:func:`merged_shape`), e.g. one factor over ``in * kh * kw`` for a convolution.
        precondition_1d: Also precondition 1-D parameters (one full ``(n, n)`` factor).
        normalize_grads: Rescale each parameter's update to unit RMS. The paper reports it helps at
            frequency ~100 and hurts at ~10.
        data_format: ``"channels_first"`` or ``"channels_last"``. As in the official code it only
            matters with ``merge_dims``: a 4-D ``channels_last`` weight ``(out, kh, kw, in)`` is
            permuted to ``(out, in, kh, kw)`` before merging.
        correct_bias: Use Adam's bias correction ``lr * sqrt(1 - beta2^t) / (1 - beta1^t)``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float = -1,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        normalize_grads: bool = False,
        data_format: str = "channels_first",
        correct_bias: bool = True,
    ):
        if lr < 0.0:
            raise ValueError(f"SOAP: lr must be >= 0, got {lr}")
        if not all(0.0 <= beta < 1.0 for beta in betas) or len(betas) != 2:
            raise ValueError(f"SOAP: betas must be two numbers in [0, 1), got {betas}")
        if shampoo_beta >= 1.0:
            raise ValueError(f"SOAP: shampoo_beta must be < 1 (negative means betas[1]), got {shampoo_beta}")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"SOAP: eps and weight_decay must be >= 0, got {eps} and {weight_decay}")
        if int(precondition_frequency) != precondition_frequency or precondition_frequency < 1:
            raise ValueError(f"SOAP: precondition_frequency must be an integer >= 1, got {precondition_frequency}")
        if max_precond_dim < 1:
            raise ValueError(f"SOAP: max_precond_dim must be >= 1, got {max_precond_dim}")
        if data_format not in ("channels_first", "channels_last"):
            raise ValueError(f"SOAP: data_format must be 'channels_first' or 'channels_last', got {data_format!r}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "shampoo_beta": shampoo_beta,
            "eps": eps,
            "weight_decay": weight_decay,
            "precondition_frequency": int(precondition_frequency),
            "max_precond_dim": max_precond_dim,
            "merge_dims": merge_dims,
            "precondition_1d": precondition_1d,
            "normalize_grads": normalize_grads,
            "data_format": data_format,
            "correct_bias": correct_bias,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step.

        Args:
            closure: Optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = evaluate_closure(closure)
        if not self.state:
            self._warn_if_nothing_is_preconditioned()
        for group in self.param_groups:
            params, grads = [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("SOAP does not support sparse gradients")
                state = self.state[param]
                grad = _to_working(param.grad.to(state_dtype(param)), group)
                if "step" not in state:
                    # First step: build the preconditioner only, so that the basis used later never
                    # contains the gradient it is applied to (official code, "first step is skipped").
                    self._init_state(state, param, grad, group)
                    continue
                params.append(param)
                grads.append(grad)
            if params:
                self._adam_step(group, params, grads)
        return loss

    def _warn_if_nothing_is_preconditioned(self) -> None:
        # DeepSpeed ZeRO (and FSDP with flat parameters) hand the optimizer flat 1-D partitions: SOAP
        # then has no matrix to precondition and silently becomes Adam.
        groups = self.param_groups
        params = [p for g in groups if not g["precondition_1d"] for p in g["params"] if p.requires_grad]
        if params and len(params) == sum(len(g["params"]) for g in groups) and all(p.dim() <= 1 for p in params):
            warnings.warn(
                "SOAP was given only 1-D parameters, so nothing is preconditioned and it reduces to Adam. "
                "If a wrapper flattened them (DeepSpeed ZeRO, flat-parameter FSDP), run SOAP under DDP instead.",
                stacklevel=3,
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict`, keeping float32 state of half-precision parameters."""
        super().load_state_dict(state_dict)
        load_state_in_state_dtype(self, state_dict)

    def _init_state(self, state: dict[str, Any], param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        max_dim = group["max_precond_dim"]
        if param.dim() == 1:
            sizes: Sequence[int] = grad.shape if group["precondition_1d"] else ()
            factors: Factors = [_zeros_factor(grad, s) if s <= max_dim else None for s in sizes] or [None]
        else:
            factors = [_zeros_factor(grad, s) if s <= max_dim else None for s in grad.shape]
        accumulate_factors(factors, grad, _shampoo_beta(group))
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
        state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
        state["GG"] = factors
        # eigh sorts ascending; the official code flips to descending so that the later QR refreshes,
        # which sort by estimated eigenvalue descending, start from the same order.
        state["Q"] = [None if f is None else robust_eigh(f)[1].flip(1) for f in factors]

    def _adam_step(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Adam on the rotated gradients of one group, with elementwise work batched by ``_foreach``."""
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        states = [self.state[p] for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]

        rotated = [project(g, s["Q"]) for g, s in zip(grads, states, strict=True)]
        torch._foreach_lerp_(exp_avgs, rotated, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, rotated, rotated, value=1.0 - beta2)
        del rotated
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, eps)
        directions = torch._foreach_div(exp_avgs, denoms)
        del denoms

        updates, scales = [], []
        for param, direction, state in zip(params, directions, states, strict=True):
            state["step"] += 1
            update = _from_working(project_back(direction, state["Q"]), param, group)
            if group["normalize_grads"]:
                update = update / (update.square().mean().sqrt() + 1e-30)
            updates.append(update if update.dtype == param.dtype else update.to(param.dtype))
            step_size = lr
            if group["correct_bias"]:
                t = state["step"]
                step_size = lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
            scales.append(-step_size)
        del directions
        torch._foreach_mul_(updates, scales)
        torch._foreach_add_(params, updates)
        del updates
        if group["weight_decay"] > 0.0:
            torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])

        # After the parameter update, so the gradient of this step enters the basis only from the
        # next step on (official code).
        shampoo_beta = _shampoo_beta(group)
        frequency = group["precondition_frequency"]
        for grad, state in zip(grads, states, strict=True):
            accumulate_factors(state["GG"], grad, shampoo_beta)
            if state["step"] % frequency == 0 and any(f is not None for f in state["GG"]):
                _refresh_basis(state)


def _refresh_basis(state: dict[str, Any]) -> None:
    """One power iteration + QR per factor, re-sorting the basis and the moments consistently.

    For a factor ``M`` with current basis ``O``: the eigenvalue estimates are ``diag(O^T M O)``
    (updated factor, previous basis, as officially); ``O`` is re-ordered by them, descending, and
    ``exp_avg_sq`` is permuted along that dimension with the same order, so each second-moment entry
    stays with its basis vector; the new basis is ``qr(M O)``. The first moment, stored in the
    eigenbasis, is rotated from the old basis to the new one (the official HEAD's project_back /
    project around the refresh), which carries the permutation and any QR sign flips with it.
    """
    old_bases: Factors = state["Q"]
    exp_avg = project_back(state["exp_avg"], old_bases)
    exp_avg_sq = state["exp_avg_sq"]
    new_bases: Factors = []
    for dim, (factor, basis) in enumerate(zip(state["GG"], old_bases, strict=True)):
        if factor is None or basis is None:
            new_bases.append(None)
            continue
        power = factor @ basis
        estimates = (basis * power).sum(dim=0)  # diag(O^T M O) without forming O^T M O
        order = torch.argsort(estimates, descending=True, stable=True)
        exp_avg_sq = exp_avg_sq.index_select(dim, order)
        new_bases.append(torch.linalg.qr(power.index_select(1, order)).Q)
    state["Q"] = new_bases
    state["exp_avg_sq"] = exp_avg_sq
    state["exp_avg"] = project(exp_avg, new_bases).contiguous()


def _shampoo_beta(group: dict) -> float:
    return group["shampoo_beta"] if group["shampoo_beta"] >= 0 else group["betas"][1]


def _zeros_factor(grad: torch.Tensor, size: int) -> torch.Tensor:
    return torch.zeros(size, size, dtype=grad.dtype, device=grad.device)


def _to_working(tensor: torch.Tensor, group: dict) -> torch.Tensor:
    """The layout the preconditioner sees: permuted and merged with ``merge_dims``, else as is."""
    if not group["merge_dims"]:
        return tensor
    if group["data_format"] == "channels_last" and tensor.dim() == 4:
        tensor = tensor.permute(0, 3, 1, 2)
    return tensor.reshape(merged_shape(tensor.shape, group["max_precond_dim"]))


def _from_working(tensor: torch.Tensor, param: torch.Tensor, group: dict) -> torch.Tensor:
    """Inverse of :func:`_to_working`, back to the parameter's shape."""
    if not group["merge_dims"]:
        return tensor
    if group["data_format"] == "channels_last" and param.dim() == 4:
        out, height, width, channels = param.shape
        return tensor.reshape(out, channels, height, width).permute(0, 2, 3, 1)
    return tensor.reshape(param.shape)
