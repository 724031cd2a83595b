r"""The one training loop of every gradient-based method (SVI, MC dropout, MC DropConnect,
deep ensembles): Adam (fused where torch has it), an exponential learning-rate schedule,
a host sync only every ``sync_every`` steps (with the NaN/inf guard), a progress bar, and
distribution argument validation off inside the loop (the data and the likelihood were
checked once before it).

**The likelihood's own latents** (a learned noise scale) train with learning rate
:math:`\max(\text{lr}, \text{LIKELIHOOD\_LR})`: Adam moves a parameter by about its
learning rate per step whatever the gradient's size, so with the network's ``lr = 1e-3`` a
log-noise would need thousands of steps to move by one unit and the noise would stay near
its start. SVI, whose latents are a slice of the guide's flat vector, gives that slice its
own rate through ``slice_lr`` (:func:`slice_learning_rates`); the point methods store the
latents rescaled instead (:func:`pyrobdl.inference.point.latent_lr_scale`).

Example:
    >>> import torch
    >>> w = torch.zeros(3, requires_grad=True)
    >>> target = torch.tensor([1.0, 2.0, 3.0])
    >>> def loss_fn(step, xb, yb):
    ...     loss = (w - target).pow(2).sum()
    ...     return loss, loss.detach()
    >>> losses, seconds = train(loss_fn, iter(lambda: (None, None), 0), [w], num_steps=500, lr=0.1)
    >>> losses.shape, bool(losses[-1] < 1e-3)
    (torch.Size([500]), True)
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pyro
import torch
from tqdm.auto import tqdm

from .._util import ema

__all__ = ["adam", "train", "slice_learning_rates", "FitProgress", "check_callback", "LIKELIHOOD_LR", "SYNC_EVERY"]

#: the smallest learning rate of the likelihood's latents (e.g. a noise scale)
LIKELIHOOD_LR = 2e-2
#: steps between host syncs (recording losses, the NaN guard, the progress bar)
SYNC_EVERY = 50

Params = Union[Sequence[torch.Tensor], Sequence[Dict]]


class FitProgress:
    """What a ``fit(..., callback=...)`` callback sees after each epoch (each step for
    full-batch data; ``callback_every`` steps when set).

    Attributes:
        step: optimisation steps done so far.
        num_steps: the steps the fit will run unless stopped.
        epoch: passes over the data done so far (``step / steps_per_epoch``).
        loss: the mean of the recorded training loss over the steps since the last call (the
            negative ELBO of the data set for SVI; the mean negative log-likelihood per row
            plus the penalty for the point methods; for ensembles, also the mean over members).
        posterior: the posterior as trained so far (built on first access; it shares the
            parameters being trained, so ``posterior.predict(x_val)`` evaluates the current
            state -- keep a copy with :func:`copy.deepcopy` or ``save`` if you need it later).

    Return ``True`` from the callback to stop training there (early stopping); the fit's
    ``fit_info["stopped_at"]`` records the step.
    """

    __slots__ = ("step", "num_steps", "epoch", "loss", "_make", "_post")

    def __init__(self, step: int, num_steps: int, epoch: float, loss: float, make_posterior):
        self.step, self.num_steps, self.epoch, self.loss = step, num_steps, epoch, loss
        self._make, self._post = make_posterior, None

    @property
    def posterior(self):
        if self._post is None:
            if self._make is None:
                raise AttributeError("this training loop has no posterior to show")
            self._post = self._make()
        return self._post

    def __repr__(self) -> str:
        return f"FitProgress(step={self.step}/{self.num_steps}, epoch={self.epoch:g}, loss={self.loss:.5g})"


def check_callback(callback) -> Optional[Callable[[FitProgress], Optional[bool]]]:
    """``None`` or a callable ``callback(progress: FitProgress) -> bool | None``."""
    if callback is not None and not callable(callback):
        raise TypeError(
            f"callback must be a function callback(progress) -> bool | None (return True to stop), got {type(callback).__name__}"
        )
    return callback


def slice_learning_rates(tensor: torch.Tensor, index: slice, lr: float) -> List[Tuple[torch.Tensor, slice, float]]:
    """The ``slice_lr`` entry of :func:`train` that gives ``tensor[index]`` (the likelihood's
    latents inside a flat vector) the learning rate ``max(lr, LIKELIHOOD_LR)``; empty when
    the slice is empty.

    Example:
        >>> import torch
        >>> [(i, r) for _, i, r in slice_learning_rates(torch.zeros(5), slice(4, 5), 1e-3)]
        [(slice(4, 5, None), 0.02)]
    """
    if index.start == index.stop:
        return []
    return [(tensor, index, max(float(lr), LIKELIHOOD_LR))]


def adam(params: Params, lr: float) -> torch.optim.Adam:
    """Adam, fused into one kernel per step where torch supports it for the tensors'
    device and dtype (the many small tensors of small networks make the per-tensor loop a
    visible cost), else the ``foreach`` implementation. ``params`` may be tensors or
    parameter groups (each group may set its own ``lr``)."""
    tensors = [t for g in params for t in g["params"]] if params and isinstance(params[0], dict) else list(params)
    if tensors and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr, foreach=True)


def train(
    loss_fn: Callable[[int, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]],
    batches: Iterator[Tuple[torch.Tensor, torch.Tensor]],
    params: Params,
    *,
    num_steps: int,
    lr: float,
    lr_decay: float = 1.0,
    progress: bool = False,
    desc: str = "",
    record_shape: Tuple[int, ...] = (),
    device=None,
    what: str = "training loss",
    hint: str = "standardise x and y",
    sync_every: int = SYNC_EVERY,
    slice_lr: Sequence[Tuple[torch.Tensor, slice, float]] = (),
    callback: Optional[Callable[[FitProgress], Optional[bool]]] = None,
    callback_every: int = 1,
    posterior_fn: Optional[Callable[[], object]] = None,
) -> Tuple[torch.Tensor, float]:
    r"""Minimise ``loss_fn`` with Adam for ``num_steps`` minibatches.

    ``loss_fn(step, xb, yb)`` returns the loss to differentiate and a detached value of
    shape ``record_shape`` to record (e.g. one loss per ensemble member). The learning rate
    of every group follows :math:`\text{lr}_t = \text{lr}\cdot\gamma^t` with
    :math:`\gamma = \text{lr\_decay}^{1/\text{num\_steps}}` (``lr_decay`` = final/initial;
    1 = constant), set on the groups directly.

    ``slice_lr``: ``(tensor, index, lr)`` triples giving some coordinates of one parameter
    tensor their own learning rate (e.g. the likelihood's latents inside a flat variational
    vector, see :func:`slice_learning_rates`). Adam's step is linear in the learning rate
    (no weight decay), so scaling the step of those coordinates by ``lr_i / lr`` after each
    update is exactly Adam with learning rate ``lr_i`` there; the schedule applies to both.

    ``callback``: called every ``callback_every`` steps (and after the last) with a
    :class:`FitProgress` (``posterior_fn()`` builds its ``posterior``); returning ``True``
    stops training, and the recorded values then end at that step. Each call syncs with the
    device once (the loss is read).

    Returns:
        the recorded values ``(steps run, *record_shape)`` on the CPU, and the seconds taken.

    Raises:
        FloatingPointError: the loss became NaN or inf (checked every ``sync_every`` steps,
            the loop's only host syncs), naming the step, ``lr`` and ``hint``.
    """
    opt = adam(params, lr)
    boosts = [(t, idx, float(r) / lr) for t, idx, r in slice_lr if float(r) != lr]
    base_lrs = [g["lr"] for g in opt.param_groups]
    gamma = lr_decay ** (1.0 / max(num_steps, 1))
    if device is None:
        device = opt.param_groups[0]["params"][0].device
    losses = torch.full((num_steps,) + tuple(record_shape), float("nan"), device=device)
    pending: List[torch.Tensor] = []
    bar = tqdm(range(num_steps), desc=desc, disable=not progress, leave=False)
    running: Optional[float] = None
    since: List[torch.Tensor] = []
    stopped = num_steps
    t0 = time.perf_counter()
    with pyro.validation_enabled(False):
        for step in bar:
            xb, yb = next(batches)
            try:
                loss, record = loss_fn(step, xb, yb)
            except torch.linalg.LinAlgError as e:  # a covariance that lost positive definiteness
                raise FloatingPointError(
                    f"the {what} could not be evaluated at step {step}: the variational covariance is no "
                    f"longer positive definite ({str(e).split(':')[0]}), the sign of a diverging fit; lower lr "
                    f"(now {lr}) or {hint}"
                ) from None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if boosts:
                before = [t.detach()[idx].clone() for t, idx, _ in boosts]
            opt.step()
            if boosts:
                with torch.no_grad():
                    for (t, idx, k), b in zip(boosts, before):
                        t[idx] += (k - 1.0) * (t[idx] - b)
            if gamma != 1.0:
                factor = gamma ** (step + 1)
                for g, base in zip(opt.param_groups, base_lrs):
                    g["lr"] = base * factor
            pending.append(record)
            if callback is not None:
                since.append(record.detach().float().mean())
                if (step + 1) % callback_every == 0 or step == num_steps - 1:
                    mean_loss = float(torch.stack(since).float().mean())
                    since.clear()
                    progress_info = FitProgress(step + 1, num_steps, (step + 1) / callback_every, mean_loss, posterior_fn)
                    if callback(progress_info) is True:
                        losses[step + 1 - len(pending) : step + 1] = torch.stack(pending)
                        pending.clear()
                        stopped = step + 1
                        break
            if step % sync_every == 0 or step == num_steps - 1:
                losses[step + 1 - len(pending) : step + 1] = torch.stack(pending)
                pending.clear()
                val = float(loss.detach())
                if not math.isfinite(val):
                    raise FloatingPointError(
                        f"the {what} became {val} at step {step}; lower lr (now {lr}) or {hint}"
                    )
                running = ema(running, val, 0.5)
                bar.set_postfix(loss=f"{running:.4g}")
    return losses[:stopped].cpu(), time.perf_counter() - t0
