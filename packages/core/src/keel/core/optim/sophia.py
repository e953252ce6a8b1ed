"""Sophia: second-order clipped stochastic optimization (Liu, Li, Hall, Liang, Ma 2023; arXiv 2305.14342).

Sophia divides a moving average of gradients ``m`` by a moving average ``h`` of a diagonal Hessian
estimate refreshed every ``k`` steps, and clips each coordinate of that ratio to ``[-1, 1]``, so no
coordinate moves by more than the learning rate per step (paper, Algorithm 3).

:class:`SophiaG` (official PyTorch code, Gauss-Newton-Bartlett estimate) and :class:`SophiaH`
(Hutchinson estimate) are plain :class:`torch.optim.Optimizer` subclasses updating each device and
dtype with ``torch._foreach_*`` kernels; :class:`~keel.core.optim.SophiaHessianCallback` runs the
refresh inside a Lightning ``Trainer``. In a plain loop (official schedule, ``k = 10``):

.. code-block:: python

    opt = SophiaG(model.parameters(), lr=6e-4, rho=0.05, weight_decay=0.2)
    for step, (x, y) in enumerate(loader):
        loss_fn(model(x), y).backward()
        opt.step(bs=y.numel())  # tokens in the batch, all ranks together
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9:
            sampled_label_loss(model(x))[0].backward()
            opt.update_hessian()
            opt.zero_grad(set_to_none=True)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim import Optimizer

from keel.core.optim._closure import evaluate_closure

# Added to SophiaG's denominator so that h == 0 gives a finite (and therefore clipped) ratio;
# the official code uses the same constant.
_GNB_EPS = 1e-15

# What torch._foreach_* kernels take and return.
_Tensors = list[Tensor] | tuple[Tensor, ...]


def _check_hyperparameters(lr: float, betas: tuple[float, float], rho: float, weight_decay: float) -> None:
    if not lr >= 0.0:
        raise ValueError(f"invalid learning rate: {lr}")
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"invalid beta parameter at index {index}: {beta}")
    if not rho >= 0.0:
        raise ValueError(f"invalid rho: {rho}")
    if not weight_decay >= 0.0:
        raise ValueError(f"invalid weight_decay: {weight_decay}")


def _real(tensor: Tensor) -> Tensor:
    # Complex parameters are updated as pairs of real numbers, as torch's own optimizers do.
    return torch.view_as_real(tensor) if torch.is_complex(tensor) else tensor


def _buckets(tensors: Sequence[Tensor]) -> Iterator[list[int]]:
    """Indices of ``tensors`` grouped by (device, dtype), the unit a ``_foreach`` kernel can take."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for index, tensor in enumerate(tensors):
        groups[(tensor.device, tensor.dtype)].append(index)
    yield from groups.values()


def sampled_label_loss(
    logits: Tensor, mask: Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, int]:
    """The loss of the Gauss-Newton-Bartlett estimator (paper Algorithm 2).

    Labels ``y_hat`` are drawn from the model's own predictive distribution ``Categorical(logits)``
    at every position (no shift: a sampled label belongs to the logits it was drawn from), and the
    loss is the mean cross-entropy against them. By Bartlett's identity ``E[grad log p(y_hat)] = 0``,
    so for the gradient ``g_hat`` of this mean over ``B`` positions, ``B * E[g_hat * g_hat]`` is the
    diagonal of the batch-mean Gauss-Newton matrix.

    Args:
        logits: Unnormalised scores of shape ``[..., V]`` with their graph.
        mask: Optional ``[...]`` mask; positions where it is 0 (padding) take no part.
        generator: Generator for the labels (``None``: the global RNG).

    Returns:
        The mean sampled-label cross-entropy and ``B``, the number of positions it averages.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    with torch.no_grad():
        probs = flat.detach().float().softmax(-1)
        labels = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if mask is not None:
            labels = labels.masked_fill(~mask.reshape(-1).bool(), -100)
    loss = F.cross_entropy(flat.float(), labels, ignore_index=-100)
    count = labels.numel() if mask is None else int((labels != -100).sum())
    return loss, count


class _Sophia(Optimizer):
    """The update shared by SophiaG and SophiaH; subclasses define the clipping denominator.

    The state of each parameter is ``step`` (a 0-d float32 tensor, on the parameter's device when
    ``capturable``), ``exp_avg`` (m) and ``hessian`` (h), as in the official code.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], update_period: int) -> None:
        if update_period < 1:
            raise ValueError(f"invalid update_period: {update_period}")
        super().__init__(params, defaults)
        self.update_period = update_period
        # While True, step() folds .grad into h instead of updating (see SophiaG.folding_hessian).
        self._folding = False

    def __getstate__(self) -> dict[str, Any]:
        # torch pickles (and deep-copies) only defaults, state and groups; keep our attributes too.
        return {**super().__getstate__(), **self._attributes()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("capturable", False)
        self.__dict__.setdefault("_folding", False)
        self.__dict__.setdefault("update_period", 10)

    def _attributes(self) -> dict[str, Any]:
        return {"update_period": self.update_period, "_folding": False}

    def _scale(self, group: dict[str, Any], bs: float | None) -> float:
        """The factor ``c`` of the denominator ``c * h`` (``rho * bs`` for SophiaG, ``rho`` for SophiaH)."""
        raise NotImplementedError

    def _denominators(self, group: dict[str, Any], hessians: list[Tensor], scale: float) -> _Tensors:
        """Per-coordinate denominators of the clipped ratio ``m / denominator``."""
        raise NotImplementedError

    def _state_of(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[param]
        if "step" not in state:
            device = param.device if group["capturable"] else torch.device("cpu")
            state["step"] = torch.zeros((), dtype=torch.float32, device=device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if "hessian" not in state:
            state["hessian"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def _fold_hessian(self, group: dict[str, Any], params: list[Tensor], estimates: list[Tensor], square: bool) -> None:
        """``h <- beta2 * h + (1 - beta2) * hhat`` (paper Algorithm 3, Hessian EMA on refresh steps).

        With ``square``, ``hhat = estimates * estimates`` (the GNB estimate from sampled-label gradients).
        """
        beta2 = group["betas"][1]
        hessians = [_real(self._state_of(p, group)["hessian"]) for p in params]
        estimates = [_real(e) for e in estimates]
        for index in _buckets(hessians):
            h = [hessians[i] for i in index]
            e = [estimates[i] for i in index]
            torch._foreach_mul_(h, beta2)
            if square:
                torch._foreach_addcmul_(h, e, e, value=1.0 - beta2)
            else:
                torch._foreach_add_(h, e, alpha=1.0 - beta2)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, bs: float | None = None) -> Any:
        """Perform one optimization step (paper Algorithm 3; official ``_single_tensor_sophiag``).

        Args:
            closure: Re-evaluates the model and returns the loss (called with gradients enabled).
            bs: SophiaG only: tokens in the batch of the Hessian estimate (see :class:`SophiaG`).
                ``None`` uses the parameter group's ``bs``.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            scale = self._scale(group, bs)
            # Kept in the group, not on the optimizer: wrappers such as DeepSpeed's ZeRO step one
            # group at a time, and win_rate must pair each group with its own last factor.
            group["last_scale"] = scale
            self._step_group(group, scale)
        return loss

    def _step_group(self, group: dict[str, Any], scale: float) -> None:
        params, grads, exp_avgs, hessians, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self._state_of(p, group)
            params.append(_real(p))
            grads.append(_real(p.grad))
            exp_avgs.append(_real(state["exp_avg"]))
            hessians.append(_real(state["hessian"]))
            steps.append(state["step"])
        if not params:
            return
        beta1 = group["betas"][0]
        lr, weight_decay = group["lr"], group["weight_decay"]
        torch._foreach_add_(steps, 1.0)
        for index in _buckets(params):
            p = [params[i] for i in index]
            g: _Tensors = [grads[i] for i in index]
            m = [exp_avgs[i] for i in index]
            if group["maximize"]:
                g = torch._foreach_neg(g)
            if weight_decay != 0.0:
                torch._foreach_mul_(p, 1.0 - lr * weight_decay)
            # Same arithmetic as the official exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1).
            torch._foreach_mul_(m, beta1)
            torch._foreach_add_(m, g, alpha=1.0 - beta1)
            # sign(m) * min(|m| / d, 1) == clamp(m / d, -1, 1) for d > 0, with two fewer kernels.
            ratio = torch._foreach_div(m, self._denominators(group, [hessians[i] for i in index], scale))
            torch._foreach_clamp_min_(ratio, -1.0)
            torch._foreach_clamp_max_(ratio, 1.0)
            torch._foreach_add_(p, ratio, alpha=-lr)

    @torch.no_grad()
    def win_rate(self) -> Tensor | None:
        """Fraction of coordinates whose last update was not clipped, as a device tensor (no host sync).

        The official loop's ``win_rate``: the share of coordinates with ``|m| < c * h`` over all
        parameters with state, ``c`` being the last :meth:`step`'s factor (``rho * bs`` for SophiaG,
        ``rho`` for SophiaH). Computed from the state when called (one reduction per parameter), so
        :meth:`step` pays nothing. The README expects it to peak early, then settle in 0.1-0.5.

        Returns:
            A 0-d float tensor in ``[0, 1]``, or ``None`` before the first step.
        """
        counts = self.win_counts()
        if counts is None:
            return None
        wins, total = counts
        return wins.double().div(total).float()

    @torch.no_grad()
    def win_counts(self) -> tuple[Tensor, int] | None:
        """The numerator and denominator of :meth:`win_rate`, to sum across ranks that hold shards.

        Returns:
            ``(unclipped coordinates as a 0-d tensor, coordinates with state)``, or ``None`` before the
            first step.
        """
        wins: Tensor | None = None
        total = 0
        for group in self.param_groups:
            scale = group.get("last_scale")
            if scale is None:
                continue
            for p in group["params"]:
                state = self.state.get(p)
                if not state or "exp_avg" not in state:
                    continue
                m, h = _real(state["exp_avg"]), _real(state["hessian"])
                won = (m.abs() < h * scale).sum()
                wins = won if wins is None else wins + won.to(wins.device)
                total += m.numel()
        if wins is None:
            return None
        return wins, total

    @property
    def last_win_rate(self) -> float | None:
        """:meth:`win_rate` as a Python float (synchronises with the device), ``None`` before any step."""
        rate = self.win_rate()
        return None if rate is None else float(rate)

    def _trainable(self) -> Iterator[tuple[dict[str, Any], Tensor]]:
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    yield group, p


class SophiaG(_Sophia):
    """Sophia with the Gauss-Newton-Bartlett Hessian estimator, as in the official PyTorch code.

    Update (official ``sophia.py``; the paper's Algorithm 3 with ``lr`` standing for the paper's
    ``rho * eta``, README "Definition of learning rate"):

    .. code-block:: text

        m     <- beta1 * m + (1 - beta1) * g
        theta <- theta * (1 - lr * weight_decay)
        theta <- theta - lr * sign(m) * min(|m| / (rho * bs * h + 1e-15), 1)

    ``h`` changes only in :meth:`update_hessian`: ``h <- beta2 * h + (1 - beta2) * g_hat * g_hat`` with
    ``g_hat`` the current ``.grad`` of the mean cross-entropy against labels sampled from the model
    itself (:func:`sampled_label_loss`; official loop: every 10 steps, after that step's update, with
    gradients clipped to norm 1). The estimator's factor ``B`` (paper Algorithm 2:
    ``hhat = B * g_hat * g_hat``) enters at step time as ``bs``, the number of tokens the sampled loss
    averaged (batch size x sequence length x world size; 480 x 1024 in the official GPT-2 runs).
    Until the first refresh ``h == 0`` and the step is ``-lr * sign(m)``.

    ``bs`` is stored in every parameter group (default 5120, the official default) and so travels
    with :meth:`state_dict`; ``step(bs=...)`` overrides it for one step, and the :attr:`bs` property
    sets it for all groups (this is what :class:`~keel.core.optim.SophiaHessianCallback` does, because
    Lightning calls ``step(closure=...)`` without it).

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate (the largest change of a coordinate per step, weight decay aside).
        betas: ``(beta1, beta2)``: decay of the gradient and of the Hessian moving averages.
        rho: Clipping scale; larger values clip less (README: GPT-2 small 0.05, medium 0.08).
        weight_decay: Decoupled weight decay (README: about twice AdamW's).
        maximize: Maximize the objective instead of minimizing it.
        capturable: Keep step counters on the parameters' device so :meth:`step` can be captured in a
            CUDA graph (``lr`` and ``bs`` are then baked in as constants, as in the official code).
        bs: Default tokens per Hessian batch for steps that do not pass ``bs``.
        update_period: Steps between Hessian refreshes (``k``). The optimizer does not schedule
            refreshes itself; the Lightning callback and your loop read it.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 1e-1,
        *,
        maximize: bool = False,
        capturable: bool = False,
        bs: int = 5120,
        update_period: int = 10,
    ) -> None:
        _check_hyperparameters(lr, betas, rho, weight_decay)
        if not bs > 0:
            raise ValueError(f"invalid bs: {bs}")
        defaults = dict(
            lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, maximize=maximize, capturable=capturable, bs=bs
        )
        super().__init__(params, defaults, update_period)

    @property
    def bs(self) -> int:
        """Tokens per Hessian batch used by steps without ``bs`` (the first group's value)."""
        return self.param_groups[0]["bs"]

    @bs.setter
    def bs(self, value: int) -> None:
        if not value > 0:
            raise ValueError(f"invalid bs: {value}")
        for group in self.param_groups:
            group["bs"] = value

    def _scale(self, group: dict[str, Any], bs: float | None) -> float:
        return group["rho"] * (group["bs"] if bs is None else bs)

    def _denominators(self, group: dict[str, Any], hessians: list[Tensor], scale: float) -> _Tensors:
        denominators = torch._foreach_mul(hessians, scale)
        torch._foreach_add_(denominators, _GNB_EPS)
        return denominators

    def step(self, closure: Callable[[], Any] | None = None, bs: float | None = None) -> Any:
        """Perform one optimization step, or, inside :meth:`folding_hessian`, fold ``.grad`` into ``h``.

        Args:
            closure: Re-evaluates the model and returns the loss (called with gradients enabled).
            bs: Tokens in the batch of the Hessian estimate; ``None`` uses the parameter group's ``bs``.

        Returns:
            The closure's loss, or ``None``.
        """
        if not self._folding:
            return super().step(closure, bs)
        loss = evaluate_closure(closure)
        self.update_hessian()
        return loss

    @contextmanager
    def folding_hessian(self) -> Iterator[None]:
        """Within this context :meth:`step` calls :meth:`update_hessian` and leaves the parameters alone.

        For wrappers that own the step and give the optimizer its gradients only inside it: DeepSpeed's
        ZeRO optimizers hand the client optimizer flat fp32 partitions whose ``.grad`` exists only while
        they call its ``step``. Backpropagate the sampled-label loss through the wrapper, then call the
        wrapper's ``step`` in this context: the reduced (and clipped) partition gradients are folded
        into the partition's ``h``, which is element-wise and therefore the same as folding the full
        gradient. See :func:`keel.core.optim.sophia_lightning.refresh_under_deepspeed`.
        """
        self._folding = True
        try:
            yield
        finally:
            self._folding = False

    @torch.no_grad()
    def update_hessian(self) -> None:
        """Fold the current ``.grad`` into ``h <- beta2 * h + (1 - beta2) * grad * grad``.

        Call it after backpropagating the mean cross-entropy against labels sampled from the model
        (official ``update_hessian``); parameters without a gradient keep their ``h``.
        """
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._fold_hessian(group, params, [p.grad for p in params], square=True)


class SophiaH(_Sophia):
    """Sophia with Hutchinson's diagonal Hessian estimator (paper Algorithm 1; levanter's Sophia-H).

    The update is SophiaG's with the paper's denominator ``max(rho * h, eps)`` and no batch-size factor:

    .. code-block:: text

        theta <- theta - lr * clip(m / max(rho * h, eps), -1, 1)

    ``hhat = u * (H u)`` with ``u ~ N(0, I)`` is unbiased for ``diag(H)``, but its entries (and so ``h``)
    can be negative. Those coordinates get the denominator ``eps``: their step is clipped to
    ``-lr * sign(m)`` and never turns uphill (levanter's and the paper's ``max(gamma * h, eps)``; the
    first PyTorch release's ``relu(h)`` behaves alike). ``m`` is not bias-corrected, as in SophiaG.

    :meth:`hutchinson` takes the loss with its graph alive and computes ``H u`` as
    ``autograd.grad(<autograd.grad(loss, create_graph=True), u>)``. It leaves ``.grad`` alone and keeps
    the graph, so the usual ``loss.backward()`` can follow: no ``backward(create_graph=True)`` (and
    none of the parameter <-> gradient reference cycles it creates), no closure. Backward kernels
    without a derivative (fused flash attention on CUDA) need e.g. ``attn_implementation="eager"``.
    Probes come from a seeded :class:`torch.Generator` owned by the optimizer (on the first trainable
    parameter's device, saved in :meth:`state_dict`): the global RNG is untouched, resume is exact,
    and data-parallel ranks draw the same probe, so averaging their estimates gives the global batch's.

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate (levanter's default 0.85e-3).
        betas: ``(beta1, beta2)``.
        rho: Clipping scale ``gamma`` (levanter's ``GAMMA_SOPHIA_H`` = 0.01).
        weight_decay: Decoupled weight decay.
        eps: Floor of the denominator.
        update_period: Steps between Hessian refreshes (``k``), read by the Lightning callback.
        seed: Seed of the probe generator.
        maximize: Maximize the objective instead of minimizing it.
        capturable: Keep step counters on the parameters' device (see :class:`SophiaG`).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.85e-3,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.01,
        weight_decay: float = 1e-1,
        *,
        eps: float = 1e-12,
        update_period: int = 10,
        seed: int = 0,
        maximize: bool = False,
        capturable: bool = False,
    ) -> None:
        _check_hyperparameters(lr, betas, rho, weight_decay)
        if not eps > 0.0:
            raise ValueError(f"invalid eps: {eps}")
        defaults = dict(
            lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, eps=eps, maximize=maximize, capturable=capturable
        )
        super().__init__(params, defaults, update_period)
        self.seed = seed
        self._generator: torch.Generator | None = None
        # A generator state loaded before the first draw; applied when the generator is created.
        self._pending_generator: dict[str, Any] | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for name, value in (("seed", 0), ("_generator", None), ("_pending_generator", None)):
            self.__dict__.setdefault(name, value)

    def _attributes(self) -> dict[str, Any]:
        # A generator is carried as its state and recreated on first use, like after load_state_dict.
        extra = {"seed": self.seed, "_generator": None, "_pending_generator": self._generator_snapshot()}
        return {**super()._attributes(), **extra}

    def _generator_snapshot(self) -> dict[str, Any] | None:
        if self._generator is None:
            return self._pending_generator
        return {"device_type": self._generator.device.type, "state": self._generator.get_state()}

    def _scale(self, group: dict[str, Any], bs: float | None) -> float:
        return group["rho"]

    def _denominators(self, group: dict[str, Any], hessians: list[Tensor], scale: float) -> _Tensors:
        denominators = torch._foreach_mul(hessians, scale)
        torch._foreach_clamp_min_(denominators, group["eps"])
        return denominators

    def _probe_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            pending = self._pending_generator
            # A state saved on another kind of device (CPU vs CUDA) has another format; such a run
            # restarts its probe sequence from the seed instead.
            if pending is not None and pending["device_type"] == generator.device.type:
                generator.set_state(pending["state"])
            self._generator, self._pending_generator = generator, None
        return self._generator

    def hutchinson(self, loss: Tensor) -> list[Tensor | None]:
        """Hutchinson's estimate ``u * (H u)`` of the Hessian diagonal of ``loss`` (paper Algorithm 1).

        Args:
            loss: A scalar computed from the parameters with autograd recording. Its graph is kept, so
                ``loss.backward()`` still works afterwards.

        Returns:
            One estimate per trainable parameter, in :meth:`update_hessian`'s order (parameter groups,
            then parameters, skipping ``requires_grad=False``); ``None`` where the loss does not
            depend on the parameter.
        """
        params = [p for _, p in self._trainable()]
        if not params:
            return []
        if any(torch.is_complex(p) for p in params):
            raise RuntimeError("SophiaH does not support complex parameters")
        with torch.enable_grad():
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            used = [i for i, g in enumerate(grads) if g is not None]
            generator = self._probe_generator(params[0].device)
            draw = partial(torch.randn, generator=generator, device=generator.device)
            probes = {i: draw(params[i].shape, dtype=params[i].dtype).to(params[i].device) for i in used}
            # Gradients without a graph are constant in the parameters: their Hessian rows are zero.
            curved = [i for i in used if grads[i].requires_grad]
            products: Sequence[Tensor | None] = [None] * len(used)
            if curved:
                products = torch.autograd.grad(
                    [grads[i] for i in curved],
                    [params[i] for i in used],
                    grad_outputs=[probes[i] for i in curved],
                    retain_graph=True,
                    allow_unused=True,
                )
        estimates: list[Tensor | None] = [None] * len(params)
        for i, product in zip(used, products, strict=True):
            estimates[i] = torch.zeros_like(params[i]) if product is None else probes[i] * product.detach()
        return estimates

    @torch.no_grad()
    def update_hessian(self, loss: Tensor | None = None, *, estimates: Sequence[Tensor | None] | None = None) -> None:
        """Fold a Hutchinson estimate into ``h <- beta2 * h + (1 - beta2) * hhat``.

        Pass either the loss (the estimate is :meth:`hutchinson` of it) or ``estimates`` already
        computed by :meth:`hutchinson`, e.g. after averaging them across data-parallel ranks.

        Args:
            loss: A scalar loss with its graph alive.
            estimates: Per-parameter estimates in :meth:`hutchinson`'s order; ``None`` entries are skipped.
        """
        if (loss is None) == (estimates is None):
            raise ValueError("update_hessian takes either a loss or estimates")
        if estimates is None:
            assert loss is not None
            estimates = self.hutchinson(loss)
        trainable = list(self._trainable())
        if len(estimates) != len(trainable):
            raise ValueError(f"expected {len(trainable)} estimates (one per trainable parameter), got {len(estimates)}")
        per_group: dict[int, tuple[dict[str, Any], list[Tensor], list[Tensor]]] = {}
        for (group, p), estimate in zip(trainable, estimates, strict=True):
            if estimate is not None:
                entry = per_group.setdefault(id(group), (group, [], []))
                entry[1].append(p)
                entry[2].append(estimate)
        for group, params, values in per_group.values():
            self._fold_hessian(group, params, values, square=False)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state plus the probe generator's state (key ``"hutchinson_generator"``)."""
        state = super().state_dict()
        state["hutchinson_generator"] = {"seed": self.seed, "generator": self._generator_snapshot()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the optimizer state and the probe generator saved by :meth:`state_dict`."""
        state_dict = dict(state_dict)
        saved = state_dict.pop("hutchinson_generator", None)
        super().load_state_dict(state_dict)
        self._generator, self._pending_generator = None, None
        if saved is not None:
            self.seed = int(saved["seed"])
            generator = saved["generator"]
            if generator is not None:
                self._pending_generator = {"device_type": generator["device_type"], "state": generator["state"].cpu()}
