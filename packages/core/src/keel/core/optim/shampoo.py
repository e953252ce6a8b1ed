"""A plain Shampoo baseline for SOAP experiments: power-1/2 Shampoo with Adam grafting.

The SOAP paper (Vyas et al. 2024, arXiv:2409.11321) relates SOAP to Shampoo "implemented with the
1/2 power" (``L^-1/2 G R^-1/2``), which it shows to be Adafactor in the preconditioner's eigenbasis.
This module implements that variant in its simplest form, so that it shares SOAP's factors and
differs from it only in how the eigenbasis is used:

1. per-dimension factors ``F_i <- beta2 F_i + (1 - beta2) G_(i) G_(i)^T``, exactly as in SOAP
   (``G_(i)`` is the gradient unfolded along dimension ``i``; dimensions larger than
   ``max_precond_dim`` and 1-D parameters get none);
2. every ``precondition_frequency`` steps, and on the first step, the inverse roots
   ``P_i = (F_i + d_i I)^(-exponent)`` from an eigendecomposition, with ``exponent = 1/2`` by default
   (``L^-1/2 M R^-1/2`` for a matrix; ``exponent = 1/4`` gives the original ``L^-1/4 M R^-1/4`` of
   Gupta et al. 2018) and relative damping ``d_i = matrix_eps * lambda_max(F_i)``;
3. the preconditioned direction is applied to Adam's bias-corrected first moment ``M`` and rescaled,
   per parameter, to the Frobenius norm of the Adam direction ``M / (sqrt(V) + eps)`` (layer-wise
   Adam grafting, Agarwal et al. 2020, the usual way Shampoo borrows Adam's step size);
4. parameters with no factor take the Adam step; decoupled weight decay is applied after the step,
   as in :class:`~keel.core.optim.SOAP`.

Unlike SOAP, the first step already moves the parameters (the preconditioner then contains the
current gradient, as in Shampoo).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from keel.core.optim._closure import evaluate_closure
from keel.core.optim.soap import (
    Factors,
    accumulate_factors,
    load_state_in_state_dtype,
    project,
    robust_eigh,
    state_dtype,
)


def inverse_root(factor: torch.Tensor, exponent: float, matrix_eps: float) -> torch.Tensor:
    """``(F + d I)^(-exponent)`` of a symmetric PSD matrix, with ``d = matrix_eps * lambda_max(F)``.

    Negative eigenvalues (round-off of a PSD factor) are clamped to zero before damping.
    """
    values, vectors = robust_eigh(factor)
    values = values.clamp_min(0.0)
    damping = (matrix_eps * values.max()).clamp_min(torch.finfo(values.dtype).tiny)
    return (vectors * (values + damping).pow(-exponent)) @ vectors.mT


class Shampoo(Optimizer):
    """Shampoo with per-factor exponent ``1/2`` (the SOAP paper's "1/2 power") and Adam grafting.

    See the module docstring for the exact variant. The state per parameter is ``step``,
    ``exp_avg``, ``exp_avg_sq`` (Adam's moments on the raw gradient), ``GG`` (factors) and ``P``
    (their inverse roots), all plain tensors or lists of them.

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate (applied to the grafted, i.e. Adam-sized, step).
        betas: ``(beta1, beta2)``: first-moment EMA, and EMA of both Adam's second moment and the
            Kronecker factors.
        eps: Adam's epsilon in the grafting direction.
        weight_decay: Decoupled weight decay, applied after the step as ``p -= lr * wd * p``.
        precondition_frequency: Steps between recomputations of the inverse roots.
        max_precond_dim: Dimensions larger than this are not preconditioned.
        exponent: Per-factor exponent of the inverse root: ``0.5`` (default) or ``0.25`` (original).
        matrix_eps: Damping of each factor relative to its largest eigenvalue.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        exponent: float = 0.5,
        matrix_eps: float = 1e-6,
    ):
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0 or matrix_eps < 0.0:
            raise ValueError("Shampoo: lr, eps, weight_decay and matrix_eps must be >= 0")
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"Shampoo: betas must be two numbers in [0, 1), got {betas}")
        if int(precondition_frequency) != precondition_frequency or precondition_frequency < 1:
            raise ValueError(f"Shampoo: precondition_frequency must be an integer >= 1, got {precondition_frequency}")
        if exponent <= 0.0:
            raise ValueError(f"Shampoo: exponent must be > 0, got {exponent}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "precondition_frequency": int(precondition_frequency),
            "max_precond_dim": max_precond_dim,
            "exponent": exponent,
            "matrix_eps": matrix_eps,
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
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("Shampoo does not support sparse gradients")
                grad = param.grad.to(state_dtype(param))
                state = self.state[param]
                if not state:
                    self._init_state(state, grad, group["max_precond_dim"])
                state["step"] += 1
                t = state["step"]

                accumulate_factors(state["GG"], grad, beta2)
                if t == 1 or t % group["precondition_frequency"] == 0:
                    state["P"] = [
                        None if f is None else inverse_root(f, group["exponent"], group["matrix_eps"])
                        for f in state["GG"]
                    ]

                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                first = exp_avg / (1.0 - beta1**t)
                adam = first / (exp_avg_sq.div(1.0 - beta2**t).sqrt_().add_(group["eps"]))
                if any(p is not None for p in state["P"]):
                    # P_i is symmetric, so ``project`` (which applies P_i^T along dim i) applies P_i.
                    direction = project(first, state["P"])
                    direction = direction * (adam.norm() / direction.norm().clamp_min(1e-30))
                else:
                    direction = adam
                param.add_(direction.to(param.dtype), alpha=-group["lr"])
                if group["weight_decay"] > 0.0:
                    param.mul_(1.0 - group["lr"] * group["weight_decay"])
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict`, keeping float32 state of half-precision parameters."""
        super().load_state_dict(state_dict)
        load_state_in_state_dtype(self, state_dict)

    @staticmethod
    def _init_state(state: dict[str, Any], grad: torch.Tensor, max_precond_dim: int) -> None:
        sizes = grad.shape if grad.dim() > 1 else ()
        factors: Factors = [
            torch.zeros(s, s, dtype=grad.dtype, device=grad.device) if s <= max_precond_dim else None for s in sizes
        ]
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
        state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
        state["GG"] = factors
        state["P"] = [None] * len(factors)
