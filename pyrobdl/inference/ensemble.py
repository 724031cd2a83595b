r"""Deep ensembles (Lakshminarayanan et al., 2017): :math:`M` copies of the network, each
trained by maximum likelihood from its own initialisation, combined as an equal-weight
mixture. The training objective and the likelihood's latents (one per member) are those of
:mod:`pyrobdl.inference.point`.

All members are trained and evaluated *at once*: their parameters are stacked
(:func:`torch.func.stack_module_state`) and run in one batched pass through
:meth:`pyrobdl.BayesianNetwork.apply` (the Linear-chain fast path, one ``baddbmm`` per layer,
for ``nn.Sequential`` chains of Linear layers and elementwise activations; ``vmap`` over
``functional_call`` otherwise), and every trained weight is a view of one ``(M, P)`` leaf
updated by one fused Adam step.

References:
    B. Lakshminarayanan, A. Pritzel and C. Blundell, *Simple and Scalable Predictive
    Uncertainty Estimation using Deep Ensembles* (NeurIPS 2017).
"""
from __future__ import annotations

import copy
import itertools
import math
import numbers
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from .._fast import engine
from .._fast.batched import batched_call
from .._fast.chain import member_layout
from .._util import check_positive_float, eval_mode, warn_user
from ..network import BayesianNetwork
from .base import Data, Posterior, finite_draw_index, reset_bayesian_parameters
from .optim import train
from .point import PointInference, WeightDecay, check_likelihood, init_latents, latent_site_names, param_name
from .point import check_size, constrainer, latent_lr_scale, saved_fit_info, training_targets, weight_penalty
from .point import AUTO_FALLBACK_EPOCHS, EpochSelector, auto_epoch_budget, holdout
from .registry import register_method

__all__ = ["DeepEnsemble", "EnsemblePosterior"]

#: an epoch gathers the M shuffled copies of the data at once up to this size
_PERMUTED_BYTES = 64 * 2**20


class _FlatMembers:
    r"""The trained tensors of :math:`M` members -- stacked weights ``(M, *shape)`` and the
    likelihood's latents ``(M, *shape)`` -- as views of one leaf ``(M, P)`` (members in rows,
    the latents in the last columns), so that Adam, whose update is elementwise, runs as one
    fused kernel on one tensor in one parameter group and the backward pass accumulates one
    gradient: mathematically one Adam per member. The latents are stored divided by
    ``latent_scale`` (and multiplied back by :meth:`views`), which gives them their own
    learning rate (:func:`~pyrobdl.inference.point.latent_lr_scale`). Falls back to separate
    tensors when their dtypes or devices differ."""

    def __init__(self, params: Dict[str, torch.Tensor], raw: Dict[str, torch.Tensor], M: int, latent_scale: float = 1.0):
        self.c = float(latent_scale)
        raw = {k: v.detach() / self.c for k, v in raw.items()}
        tensors = {**{("p", k): v for k, v in params.items()}, **{("r", k): v for k, v in raw.items()}}
        self.keys = list(tensors)
        self.shapes = [tuple(v.shape[1:]) for v in tensors.values()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.M = M
        self.flat: Optional[torch.Tensor] = None
        self.separate: Dict[Tuple[str, str], torch.Tensor] = {}
        if tensors and len({(v.dtype, v.device) for v in tensors.values()}) == 1:
            self.flat = torch.cat([v.detach().reshape(M, -1) for v in tensors.values()], 1).requires_grad_(True)
            self.leaves = [self.flat]
        else:
            self.separate = {k: v.detach().contiguous().requires_grad_(True) for k, v in tensors.items()}
            self.leaves = list(self.separate.values())

    def views(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """(stacked weights, unconstrained latents) as differentiable views of the leaf."""
        if self.flat is None:
            items = self.separate.items()
        else:
            parts = self.flat.split(self.sizes, 1)
            items = ((k, t.view((self.M,) + s)) for k, t, s in zip(self.keys, parts, self.shapes))
        p: Dict[str, torch.Tensor] = {}
        r: Dict[str, torch.Tensor] = {}
        for (kind, name), t in items:
            if kind == "p":
                p[name] = t
            else:
                r[name] = t * self.c if self.c != 1.0 else t
        return p, r

    def values(self, unpack: Optional[Callable] = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Detached, contiguous copies of the trained tensors (the weights mapped by ``unpack``
        first)."""
        with torch.no_grad():
            p, r = self.views()
            if unpack is not None:
                p = unpack(p)
        fmt = torch.contiguous_format
        return (
            {k: v.detach().clone(memory_format=fmt) for k, v in p.items()},
            {k: v.detach().clone(memory_format=fmt) for k, v in r.items()},
        )


def member_shuffles(x: torch.Tensor, y: torch.Tensor, M: int, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Endless minibatches ``(M, batch_size, ...)`` of ``(x, y)``, each of the ``M`` members with
    its own shuffle per epoch (the last incomplete batch of an epoch is dropped). Each epoch
    gathers the M shuffled copies at once when they fit in ``_PERMUTED_BYTES``, so a step takes
    views instead of indexing the data again."""
    N = x.shape[0]
    row_bytes = x[0].numel() * x.element_size() + y[0].numel() * y.element_size()
    at_once = M * N * row_bytes <= _PERMUTED_BYTES
    while True:
        perm = torch.rand(M, N, device=x.device).argsort(1)
        if at_once:
            xp, yp = x[perm], y[perm]
            for i in range(0, N - batch_size + 1, batch_size):
                yield xp[:, i : i + batch_size], yp[:, i : i + batch_size]
        else:
            for i in range(0, N - batch_size + 1, batch_size):
                idx = perm[:, i : i + batch_size]
                yield x[idx], y[idx]


class EnsemblePosterior(Posterior):
    r"""A deep ensemble (Lakshminarayanan et al., 2017): :math:`M` networks stored as stacked
    parameters and evaluated together in one batched pass (see :meth:`forward`).

    The predictive is the equal-weight mixture of the members: for regression
    :math:`\mu^* = \frac1M\sum_i\mu_i`,
    :math:`\sigma^{*2} = \frac1M\sum_i(\sigma_i^2+\mu_i^2) - \mu^{*2}`, with aleatoric part
    :math:`\frac1M\sum_i\sigma_i^2` and epistemic part :math:`\frac1M\sum_i(\mu_i-\mu^*)^2`;
    for classification the mean of the members' probabilities. ``predict`` uses every
    member once by default (``num_samples=None``); another ``num_samples`` means what it means
    for every posterior with a finite set of draws
    (:func:`~pyrobdl.inference.base.finite_draw_index`), and :meth:`draws` exports each member
    once.

    Attributes:
        size: :math:`M`.
        params, buffers: stacked member parameters/buffers, name -> ``(M, ...)``.
        latents: per-member maximum-likelihood likelihood latents, ``(M, ...)``.
        fit_info: ``losses`` (per step and member, ``(num_steps, M)``), ``seconds``,
            ``num_steps``.

    Example:
        Returned by :class:`DeepEnsemble`:

        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, likelihoods, inference
        >>> x = torch.linspace(-1, 1, 20).unsqueeze(-1)
        >>> net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 2))  # a mean and a log-variance
        >>> model = BayesianNetwork(net, likelihood=likelihoods.HeteroscedasticGaussian())
        >>> posterior = inference.DeepEnsemble(size=3, num_steps=20, progress=False).fit(model, x, x[:, 0] ** 2)
        >>> posterior.size, posterior.predict(x).num_samples  # one mixture component per member
        (3, 3)
    """

    method = "ensemble"
    default_num_samples = None

    def __init__(
        self,
        model: BayesianNetwork,
        params: Dict[str, torch.Tensor],
        buffers: Dict[str, torch.Tensor],
        latents: Dict[str, torch.Tensor],
        *,
        settings: Dict[str, Any],
    ):
        super().__init__(model)
        self.params = params
        self.buffers = buffers
        self._raw = latents
        self.settings = dict(settings)
        # the network on the meta device, run with each member's buffers (e.g. BatchNorm statistics)
        self._base = copy.deepcopy(model.net).to("meta") if buffers else None
        self._constrain = constrainer(model)

    @property
    def size(self) -> int:
        return int(next(iter(self.params.values())).shape[0])

    @property
    def device(self) -> torch.device:
        for t in self.params.values():
            return t.device
        return self.model.device

    def to(self, device) -> "EnsemblePosterior":
        self.model.to(device)
        self.params = {k: v.detach().to(device).requires_grad_(v.requires_grad) for k, v in self.params.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        self._raw = {k: v.detach().to(device).requires_grad_(v.requires_grad) for k, v in self._raw.items()}
        return self

    @property
    def latents(self) -> Dict[str, torch.Tensor]:
        """Per-member likelihood latents (e.g. ``{"sigma": (M,)}``)."""
        return {k: v.detach() for k, v in self._constrain(self._raw).items()}

    def forward(
        self,
        x: torch.Tensor,
        params: Optional[Dict[str, torch.Tensor]] = None,
        buffers: Optional[Dict[str, torch.Tensor]] = None,
        *,
        per_member_inputs: bool = False,
    ) -> torch.Tensor:
        r"""All members' outputs in one vectorised pass: ``(M, N, k)``. ``x`` is ``(N, ...)``
        shared by the members, or ``(M, N, ...)`` with ``per_member_inputs=True``.
        Differentiable (used for training).

        Without buffers the members run through :meth:`pyrobdl.BayesianNetwork.apply` (the
        Linear-chain fast path where it applies); a network with buffers (BatchNorm) runs as
        :func:`torch.func.vmap` over :func:`torch.func.functional_call` with each member's
        buffers. Both give the same outputs and gradients up to floating-point summation
        order."""
        params = self.params if params is None else params
        buffers = self.buffers if buffers is None else buffers
        if not buffers:
            return self.model.apply(params, x, batched_inputs=per_member_inputs)
        base = self._base

        def one(p, b, xi):
            return functional_call(base, (p, b), (xi,))

        return batched_call(one, (0, 0, 0 if per_member_inputs else None), (params, buffers, x), owner=base)

    def member(self, i: int) -> nn.Module:
        """Member ``i`` as an ordinary network (a copy of ``model.net`` with that member's
        weights)."""
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not -self.size <= i < self.size:
            raise IndexError(f"member index must be an integer in [0, {self.size}), got {i!r}")
        net = copy.deepcopy(self.model.net).to(self.device)
        with torch.no_grad():
            for n, t in net.named_parameters():
                t.copy_(self.params[n][i])
            for n, t in net.named_buffers():
                if n in self.buffers:
                    t.copy_(self.buffers[n][i])
        return net.eval()

    @property
    def members(self) -> List[nn.Module]:
        """All members as ordinary networks (copies)."""
        return [self.member(i) for i in range(self.size)]

    def sample_outputs(self, x, num_samples, *, chunk_size=None, max_memory=None):
        r"""The members' outputs ``(S, N, k)`` at ``x`` and their latents: every member once
        (``num_samples=None``, the default), or ``num_samples`` of them as for every posterior
        with a finite set of draws (:func:`~pyrobdl.inference.base.finite_draw_index`); each
        member runs once, in batched passes of ``chunk_size`` members bounded by ``max_memory``."""
        out, lats = self._member_outputs(x, chunk_size=chunk_size, max_memory=max_memory)
        idx = finite_draw_index(self.size, num_samples, what="ensemble members", owner=self, device=out.device)
        if idx is None:
            return out, lats
        return out[idx], {k: v[idx] for k, v in lats.items()}

    @property
    def num_fixed_draws(self) -> int:
        """:math:`M`: the members are the posterior's fixed set of draws."""
        return self.size

    def _member_outputs(self, x, *, chunk_size=None, max_memory=None):
        M = self.size

        def members(s0: int, s1: int, stacked: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
            return {k: v[s0:s1] for k, v in stacked.items()}

        if not self.buffers:
            out = self.model.outputs_from_params(
                x, M, lambda s0, s1: members(s0, s1, self.params), chunk_size=chunk_size, max_memory=max_memory
            )
            return out, self.latents
        chunk, rows = engine.plan(
            M, x.shape[0], row_bytes=self.model.row_bytes(x), chunk_size=chunk_size, max_memory=max_memory,
            device=x.device,
        )

        def member_pass(s0, s1, xr, dest):
            return self.forward(xr, members(s0, s1, self.params), members(s0, s1, self.buffers))

        with eval_mode(self._base), torch.inference_mode():
            return engine.run(member_pass, M, x, chunk=chunk, rows=rows), self.latents

    def sample_latents(self, num_samples: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Members as draws, by site name: ``None`` (or :math:`M`) gives every member in order;
        another count draws that many members uniformly with replacement (the ensemble as an
        equal-weight mixture of point masses). Deterministic (non-Bayesian) parameters are not
        sites; see :meth:`member`."""
        idx = finite_draw_index(self.size, num_samples, what="ensemble members", owner=self, device=self.device)
        out = {}
        for pname in self.model.bayesian_parameters:
            v = self.params[pname].detach()
            out[self.model.parameter_site(pname)] = v if idx is None else v[idx]
        sites = latent_site_names(self.model)
        for short, v in self.latents.items():
            out[sites[short]] = v if idx is None else v[idx]
        return out

    def get_state(self) -> Dict[str, Any]:
        return {
            "settings": self.settings,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "buffers": {k: v.detach().cpu() for k, v in self.buffers.items()},
            "latents": {k: v.detach().cpu() for k, v in self._raw.items()},
            "fit_info": saved_fit_info(self.fit_info),
        }

    @classmethod
    def from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "EnsemblePosterior":
        want = {n: tuple(t.shape) for n, t in model.net.named_parameters()}
        got = {n: tuple(t.shape[1:]) for n, t in state["params"].items()}
        if want != got:
            raise ValueError("the saved ensemble's weights do not fit the given model's network")
        dev = model.device
        post = cls(
            model,
            {k: v.to(dev) for k, v in state["params"].items()},
            {k: v.to(dev) for k, v in state["buffers"].items()},
            {k: v.to(dev) for k, v in state["latents"].items()},
            settings=state["settings"],
        )
        post.fit_info = dict(state.get("fit_info", {}))
        return post


@register_method
class DeepEnsemble(PointInference):
    r"""Deep ensembles (Lakshminarayanan et al., 2017): :math:`M` copies of the network from
    independent random initialisations, each trained by maximum likelihood, combined as an
    equal-weight mixture.

    All members are trained *at once* (see the module docs). The loss is the sum over members
    of each member's mean negative log-likelihood (plus weight decay), so the members'
    gradients are independent, and one fused Adam step on the ``(M, P)`` leaf is exactly
    :math:`M` independent optimisers. Each member shuffles the data in its own order
    (minibatches of size ``batch_size``); with a DataLoader all members see the same batches.

    **Initialisation and the seed rule.** Member 0 starts from the network it is given;
    members 1 to :math:`M-1` are fresh draws: copies whose Bayesian parameters are re-drawn by
    their layers' ``reset_parameters()`` (deterministic parts, e.g. a pretrained feature
    extractor under ``bayesian="head.*"``, and buffers keep the user's values). With a
    ``seed`` the template has already re-drawn the given network's Bayesian parameters under
    the seeded generator (see :class:`~pyrobdl.inference.base.Inference`) and the other
    members are drawn from the same generator, so the same seed gives the same ensemble
    whenever and however the model was built. Frozen parameters (``requires_grad=False``)
    are not trained.

    **Likelihoods.** With ``HeteroscedasticGaussian`` each member predicts a mean and a
    variance (the paper's setup); with ``Gaussian()`` each member learns its own noise scale;
    ``Categorical``, ``Bernoulli`` and ``CategoricalLogitNoise`` work too.

    **Adversarial training** (``adversarial=True``): for each member the fast-gradient-sign
    example :math:`x' = x + \epsilon\,\mathrm{sign}(\nabla_x \ell_i(x, y))` is added, and the
    member's loss is :math:`\ell_i(x, y) + \ell_i(x', y)`. ``epsilon`` defaults to 1% of each
    input feature's range in the training data (the first batch of a DataLoader).

    **How long.** By default (``epochs="auto"``) the data choose the number of epochs: a copy of
    the ensemble trains on a random 80% of the rows and is scored on the other 20% after every
    epoch (:class:`~pyrobdl.inference.point.EpochSelector`: a trailing mean of the held-out
    log predictive density, stopping once the best epoch lies in the first half of the run);
    the final ensemble trains on all rows for the best count (``fit_info["epochs"]``,
    ``fit_info["epoch_scores"]``). A small noisy dataset stops early (UCI Boston: 16-210
    epochs), a smooth one trains long (UCI Energy: 555-915 epochs, test LL -0.88 against
    -1.54 at the paper's 40). Below 50 rows or with a DataLoader: 40 epochs. The other defaults
    (5 members, minibatches of 32, ``lr=2e-2``) are those measured on the UCI benchmarks (see
    the docs page "How the defaults were chosen").

    Args:
        size: :math:`M`, the number of members (>= 1).
        num_steps: optimisation steps instead of epochs (used when ``epochs`` is not given).
        epochs: passes over the data, or ``"auto"`` (the default when ``num_steps`` is not
            given either): chosen on held-out rows, see *How long* above.
        batch_size: minibatch size (default 32; ``None``: full batch).
        lr: Adam learning rate (the likelihood's latents train at
            ``max(lr, optim.LIKELIHOOD_LR)``).
        weight_decay: 0 (default, the paper's plain NLL), a float λ, or ``"prior"`` (MAP
            penalty from the model's prior, see :mod:`pyrobdl.inference.point`).
        adversarial: add FGSM adversarial examples to training.
        epsilon: FGSM step size (absolute, in input units).
        warm_start: an :class:`EnsemblePosterior` of the same size and model to continue
            training from (instead of fresh initialisations).
        progress: show a progress bar.
        callback: ``callback(progress)`` called after every epoch (every step with full-batch
            data) with a :class:`~pyrobdl.inference.optim.FitProgress` (``step``, ``epoch``,
            ``loss``, ``posterior`` so far); return ``True`` to stop (early stopping).
        seed: ``None`` or an integer in ``[0, 2**32)`` (the seed rule above).

    Example::

        model = BayesianNetwork(net_with_2_outputs, likelihood=likelihoods.HeteroscedasticGaussian())
        posterior = inference.DeepEnsemble(size=5, epochs=40, batch_size=32).fit(model, x, y)
        pred = posterior.predict(x_test)
        pred.mean, pred.epistemic_variance, pred.aleatoric_variance
    """

    name = "ensemble"
    aliases = ("deep-ensemble", "deep-ensembles", "deepensemble", "ensembles")
    family = "ensemble"
    variance_head = True
    collapse_hint = "The members may have started from the same weights: give every module with Bayesian parameters a reset_parameters()."
    default_num_steps = None
    default_epochs = "auto"
    auto_epochs = True

    def __init__(
        self,
        *,
        size: int = 5,
        num_steps: Optional[int] = None,
        epochs: Union[None, int, str] = None,
        batch_size: Optional[int] = 32,
        lr: float = 2e-2,
        weight_decay: WeightDecay = 0.0,
        adversarial: bool = False,
        epsilon: Optional[float] = None,
        warm_start: Optional[EnsemblePosterior] = None,
        progress: bool = True,
        seed: Optional[int] = None,
        callback=None,
    ):
        super().__init__(
            num_steps=num_steps, epochs=epochs, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, progress=progress, seed=seed, callback=callback,
        )
        self.size = check_size(size, "ensemble members")
        self.adversarial = bool(adversarial)
        self.epsilon = None if epsilon is None else check_positive_float(epsilon, "epsilon")
        if warm_start is not None:
            if not isinstance(warm_start, EnsemblePosterior):
                raise TypeError(f"warm_start must be an EnsemblePosterior, got {type(warm_start).__name__}")
            if warm_start.size != self.size:
                raise ValueError(f"warm_start has {warm_start.size} members but size={self.size}; make them equal")
        self.warm_start = warm_start

    def settings(self) -> Dict[str, Any]:
        return dict(super().settings(), size=self.size, adversarial=self.adversarial, epsilon=self.epsilon)

    # -- members -------------------------------------------------------------
    def _init_members(self, model: BayesianNetwork) -> List[nn.Module]:
        """Member 0: ``model.net``; members 1..M-1: copies with re-drawn Bayesian parameters
        (the seed rule of the class docs)."""
        bayes = set(model.bayesian_parameters)
        missing = [
            n or "<root>" for n, m in model.net.named_modules()
            if any(param_name(n, pn) in bayes for pn, _ in m.named_parameters(recurse=False))
            and not callable(getattr(m, "reset_parameters", None))
        ]
        if missing and self.size > 1:
            warn_user(
                f"modules {missing} own Bayesian parameters but have no reset_parameters(), so every ensemble "
                "member starts from the same values there; give them a reset_parameters() method for "
                "independent initialisations"
            )
        members = [model.net]
        for _ in range(1, self.size):
            fresh = model.fresh_copy()
            reset_bayesian_parameters(fresh)
            members.append(fresh.net)
        return members

    def _batches(self, data: Data, model: BayesianNetwork) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Endless (x, y) of shape (M, B, ...): each member its own shuffle."""
        M = self.size
        if data.loader is not None:
            for xb, yb in data.batches(model, None):
                yield xb.expand((M,) + xb.shape), yb.expand((M,) + yb.shape)
        N, bs = data.num_data, self.batch_size
        if bs is None or bs >= N:
            xe, ye = data.x.expand((M,) + data.x.shape), data.y.expand((M,) + data.y.shape)
            while True:
                yield xe, ye
        yield from member_shuffles(data.x, data.y, M, bs)

    # -- objective -------------------------------------------------------------
    def loss(
        self,
        posterior: EnsemblePosterior,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        epsilon: Optional[Union[float, torch.Tensor]] = None,
        penalty: Optional[Callable] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""The training objective on one batch: ``(loss, per-member NLL)``.

        ``x``, ``y`` are ``(M, B, ...)`` (one batch per member). The loss is
        :math:`\sum_i[\ell_i(x_i, y_i) (+ \ell_i(x'_i, y_i))] + \text{penalty}` with
        :math:`\ell_i` member :math:`i`'s mean negative log-likelihood and :math:`x'` the FGSM
        examples when ``self.adversarial``.
        """
        eps = epsilon if epsilon is not None else self.epsilon
        if self.adversarial and eps is None:
            raise ValueError("adversarial training needs a step size: pass epsilon= (fit derives it from the data)")
        return self._loss(posterior, posterior.params, posterior._constrain(posterior._raw), x, y, eps, penalty)

    def _loss(self, posterior, params, lats, x, y, eps, penalty, forward=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss` on given stacked parameters and constrained latents; ``forward(x)``,
        when given, computes the members' outputs instead of ``posterior.forward`` (then
        ``params`` is only needed by the penalty)."""
        log_prob = posterior.model.likelihood.log_prob
        if forward is None:
            def forward(xi):
                return posterior.forward(xi, params, per_member_inputs=True)
        if self.adversarial:
            x = x.detach().clone().requires_grad_(True)
        nll = -log_prob(forward(x), y, lats).mean(-1)
        if self.adversarial:
            (g,) = torch.autograd.grad(nll.sum(), x, retain_graph=True)
            x_adv = (x + eps * g.sign()).detach()
            nll = nll - log_prob(forward(x_adv), y, lats).mean(-1)
        loss = nll.sum()
        if penalty is not None:
            loss = loss + penalty(params)
        return loss, nll.detach()

    def _epsilon(self, data: Data, x0: torch.Tensor) -> Union[float, torch.Tensor]:
        if self.epsilon is not None:
            return self.epsilon
        xs = data.x if data.x is not None else x0
        return 0.01 * (xs.amax(0) - xs.amin(0)).clamp_min(0)

    def _start(self, model: BayesianNetwork, y0: torch.Tensor, data: Data):
        """(stacked parameters, stacked buffers, unconstrained latents) to train from."""
        if self.warm_start is None:
            params, buffers = stack_module_state(self._init_members(model))
            return params, buffers, init_latents(model, "DeepEnsemble", training_targets(data, y0[0]), (self.size,))
        ws = self.warm_start.to(data.device)
        if {k: v.shape[1:] for k, v in ws.params.items()} != {k: v.shape for k, v in model.net.named_parameters()}:
            raise ValueError("warm_start was fitted to a network of another architecture; pass the same model")
        params = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in ws.params.items()}
        buffers = {k: v.clone() for k, v in ws.buffers.items()}
        return params, buffers, {k: v.detach().clone().requires_grad_(True) for k, v in ws._raw.items()}

    def _fit(self, model: BayesianNetwork, data: Data) -> EnsemblePosterior:
        if self.epochs != "auto":
            return self._train(model, data, self.num_steps, self.epochs, self.callback)
        epochs, scores = self._choose_epochs(model, data)
        post = self._train(model, data, None, epochs, self.callback)
        post.fit_info.update(epochs=epochs, epoch_scores=scores)
        return post

    def _choose_epochs(self, model: BayesianNetwork, data: Data) -> Tuple[int, Optional[Dict[int, float]]]:
        """``epochs="auto"``: train a copy of ``model`` on a random 80% of the rows (the same
        members, batches and learning rate), score the ensemble on the other 20% after every
        epoch and stop once the best epoch lies in the first half of the run
        (:class:`~pyrobdl.inference.point.EpochSelector`); the best epoch count is the answer.
        Without a held-out split (a DataLoader, fewer than ``AUTO_MIN_DATA`` rows),
        ``AUTO_FALLBACK_EPOCHS``. Returns ``(epochs, {epoch: held-out LL})``."""
        split = holdout(data)
        if split is None:
            return AUTO_FALLBACK_EPOCHS, None
        x_fit, y_fit, x_val, y_val = split
        trial = model.fresh_copy()
        trial_data = Data(trial, x_fit, y_fit)
        selector = EpochSelector(x_val, y_val)
        budget = auto_epoch_budget(trial_data.steps_per_epoch(self.batch_size))
        self._train(trial, trial_data, None, budget, selector)
        return max(1, selector.best_epoch), selector.scores

    def _train(self, model: BayesianNetwork, data: Data, num_steps: Optional[int], epochs: Optional[int], callback) -> EnsemblePosterior:
        """Train the members on ``data`` for ``epochs`` (or ``num_steps``) with ``callback``."""
        M = self.size
        batches = self._batches(data, model)
        x0, y0 = next(batches)
        params, buffers, raw = self._start(model, y0, data)
        post = EnsemblePosterior(model, params, buffers, raw, settings=self.settings())
        nets = [model.net] + ([post._base] if post._base is not None else [])
        constrain = post._constrain
        with torch.no_grad(), eval_mode(model.net):
            if post._base is not None:
                post._base.eval()
            probe = post.forward(x0[:, :2], per_member_inputs=True)
            check_likelihood(model, "DeepEnsemble", probe, y0[:, :2], constrain(raw))
        penalty = weight_penalty(model, self.weight_decay, data.num_data, {})
        eps = self._epsilon(data, x0[0]) if self.adversarial else None
        # a Linear chain trains on the chain path with its weights stored as it consumes them
        layout = member_layout(model.net) if not buffers and x0.dim() == 3 else None
        pack = layout.pack if layout is not None else (lambda k, v: v)
        # the latents train at max(lr, LIKELIHOOD_LR) (point.latent_lr_scale)
        flat = _FlatMembers({k: pack(k, v) for k, v in params.items() if v.requires_grad}, raw, M, latent_lr_scale(self.lr))
        fixed = {k: pack(k, v.detach()) for k, v in params.items() if not v.requires_grad}

        def loss_fn(step, xb, yb):
            p, r = flat.views()
            if fixed:
                p = {**fixed, **p}
            if layout is None:
                return self._loss(post, p, constrain(r), xb, yb, eps, penalty)
            std = layout.unpack(p) if penalty is not None else None
            return self._loss(post, std, constrain(r), xb, yb, eps, penalty, forward=lambda xi: layout.forward(p, xi))

        num_steps = data.num_steps(num_steps, epochs, self.batch_size)
        for net in nets:
            net.train()
        try:
            def snapshot() -> EnsemblePosterior:  # the members as trained so far (copies)
                trained, r = flat.values(None if layout is None else layout.unpack)
                snap = EnsemblePosterior(
                    model, {k: trained[k] if k in trained else v.detach() for k, v in params.items()}, buffers, r,
                    settings=self.settings(),
                )
                return snap

            losses, secs = train(
                loss_fn, itertools.chain([(x0, y0)], batches), flat.leaves, num_steps=num_steps, lr=self.lr,
                progress=self.progress, desc=self.name, record_shape=(M,), callback=callback,
                callback_every=data.steps_per_epoch(self.batch_size), posterior_fn=snapshot,
            )
        finally:
            for net in nets:
                net.eval()
        trained, raw = flat.values(None if layout is None else layout.unpack)
        post.params = {k: trained[k].requires_grad_(True) if k in trained else v.detach() for k, v in params.items()}
        post._raw = raw
        post.fit_info = {"losses": losses, "seconds": secs, "num_steps": num_steps}
        if len(losses) < num_steps:
            post.fit_info["stopped_at"] = len(losses)
        return post
