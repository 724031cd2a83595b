r"""SWAG and MultiSWAG: a Gaussian fitted to the iterates of stochastic gradient descent.

**SWAG** (Maddox et al., 2019) trains the network to a MAP estimate (*pretraining*: the
point-estimate objective of :mod:`pyrobdl.inference.point` with the model's prior as the
weight penalty, ``weight_decay="prior"``), then keeps training at a constant, high
learning rate -- the *SWA learning rate* -- and collects the iterates :math:`\theta_1,
\dots, \theta_T` once per epoch (every ``collect_every`` steps). From them it keeps

* the running mean :math:`\bar\theta = \frac1T\sum_t\theta_t` (the SWA solution of
  Izmailov et al., 2018),
* the running second moment :math:`\overline{\theta^2} = \frac1T\sum_t\theta_t^2`, whose
  diagonal variance is :math:`\Sigma_\text{diag} = \overline{\theta^2} - \bar\theta^2`,
* the last :math:`K` deviations (rank :math:`K`, default 20), the columns of
  :math:`\hat D\in\mathbb R^{d\times K}`, :math:`\hat D_t = \theta_t - \bar\theta_t` with
  :math:`\bar\theta_t` the running mean *after* :math:`\theta_t` was added (as in the
  paper's code),

and the posterior over the weights is

.. math::

    q(\theta) = \mathcal N\Big(\bar\theta,\ \tfrac12\big(\Sigma_\text{diag}
    + \tfrac{1}{K-1}\hat D\hat D^\top\big)\Big),

sampled without forming the covariance:

.. math::

    \theta = \bar\theta + \tfrac1{\sqrt2}\,\Sigma_\text{diag}^{1/2} z_1
    + \tfrac1{\sqrt{2(K-1)}}\,\hat D z_2,\qquad
    z_1\sim\mathcal N(0, I_d),\ z_2\sim\mathcal N(0, I_K),

all :math:`S` samples at once (:meth:`SWAGMoments.sample`). With fewer than :math:`K`
collections :math:`K` is the number collected; with fewer than two the low-rank part is
dropped. The moments are the public :class:`SWAGMoments` (accumulated in float64, so
:math:`\overline{\theta^2} - \bar\theta^2` does not cancel).

**MultiSWAG** (Wilson & Izmailov, 2020) is :math:`M` SWAG models from independent
initialisations, the equal mixture :math:`\frac1M\sum_m q_m(\theta)`. All :math:`M` are
trained *at once* with the deep ensemble's vectorised machinery
(:mod:`pyrobdl.inference.ensemble`: stacked parameters, one batched forward pass, one fused
Adam step on the ``(M, P)`` leaf), and their moments are one :class:`SWAGMoments` with batch
shape ``(M,)``. SWAG is MultiSWAG with :math:`M = 1`. A prediction with :math:`S` samples
gives each model :math:`\lfloor S/M\rfloor` or :math:`\lceil S/M\rceil` of them (exactly
equal when :math:`M` divides :math:`S`).

**Optimiser and schedule.** Both phases run the library's one training loop
(:func:`pyrobdl.inference.optim.train`, Adam). ``schedule="constant"`` (the default, the
paper's main setting) keeps the SWA learning rate fixed; ``schedule="cyclic"`` is SWA's
cyclical schedule: within each cycle of ``collect_every`` steps the rate falls linearly,
:math:`\alpha(i) = (1 - t(i))\,\alpha_1 + t(i)\,\alpha_2` with
:math:`t(i) = ((i-1)\bmod c + 1)/c` (:func:`cyclic_lr_factor`), from ``swa_lr`` to
``swa_lr_min``, and the iterate is collected at the end of each cycle (the lowest rate).
Adam's step is linear in its learning rate, so the schedule is applied by scaling each
update (exactly Adam at the scheduled rate).

**What is not Gaussian.** The likelihood's latents (a learned noise scale) are point
estimates, the average of their (unconstrained) collected iterates; network parameters that
are not Bayesian (``bayesian="last"``'s trunk, normalisation layers) are their SWA average;
**BatchNorm statistics** are kept at their values after the last training step (the paper
recomputes them for every weight sample with a pass over the training data; we do not).

**Defaults** (measured, seed 0, on the comparison's networks: ``Linear(d, 50)-ReLU-Linear(50, 1)``
with a learned Gaussian noise; UCI Boston split 0 with the default fan-in prior, test
log-likelihood in the target's units; the 1-D toy ``datasets.toy_regression()`` with an
i.i.d. ``Normal(0, 1)`` prior, scores on the test inputs inside the training range):
pretraining 100 epochs at ``lr=2e-2`` with ``weight_decay="prior"``, then 40 SWAG epochs at
``swa_lr=1e-2``, minibatches of 32, one collection per epoch, rank 20, 100 predictive samples.

* Boston split 0: SWAG test LL -2.339, RMSE 2.35 (about 5 s on one CPU thread); MultiSWAG
  (3 models) -2.331, RMSE 2.38 (the deep ensemble's defaults on the same network: -2.298,
  2.38; the mean-field VI row of Wu et al.'s DVI paper, the issue's bar: -2.46).
* Toy: SWAG in-range LL -1.51, RMSE 1.08, mean epistemic std 0.59 inside the data and 2.71
  outside it; MultiSWAG -1.15, 0.71, 0.52 / 2.49.
* The choices (mean test LL over Boston splits 0-3 unless said): ``swa_lr`` 2e-3 / 5e-3 /
  1e-2 / 2e-2 gave -2.40 / -2.37 / -2.32 / -2.33 on split 0 and 5e-2 gave -2.44 over four
  splits (too hot); 20 / 40 / 80 / 100 SWAG epochs -2.30 / -2.31 / -2.31 / -2.31 (flat).
  Pretraining 40 epochs scores best on Boston (-2.31 vs -2.37 with 100) but leaves the toy
  underfitted (in-range RMSE 1.75 vs 1.08), so the default is 100. A mean-and-variance
  head (``HeteroscedasticGaussian``) made SWAG worse on Boston (-2.45 vs -2.31), hence
  ``variance_head = False``.

References:
    W. J. Maddox, P. Izmailov, T. Garipov, D. P. Vetrov and A. G. Wilson, *A Simple Baseline
    for Bayesian Uncertainty in Deep Learning* (NeurIPS 2019);
    P. Izmailov, D. Podoprikhin, T. Garipov, D. Vetrov and A. G. Wilson, *Averaging Weights
    Leads to Wider Optima and Better Generalization* (UAI 2018);
    A. G. Wilson and P. Izmailov, *Bayesian Deep Learning and a Probabilistic Perspective of
    Generalization* (NeurIPS 2020);
    S. Mandt, M. D. Hoffman and D. M. Blei, *Stochastic Gradient Descent as Approximate
    Bayesian Inference* (JMLR 2017).
"""
from __future__ import annotations

import itertools
import math
import numbers
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch.func import stack_module_state

from .._fast.chain import member_layout
from .._util import check_positive_float, check_positive_int
from ..network import BayesianNetwork
from .base import Data, Posterior
from .ensemble import DeepEnsemble, EnsemblePosterior, _FlatMembers
from .optim import FitProgress, train
from .point import PointInference, WeightDecay, constrainer, init_latents, latent_lr_scale, latent_site_names
from .point import saved_fit_info, training_targets, weight_penalty
from .registry import register_method

__all__ = [
    "SWAGMoments",
    "SWAGPosterior",
    "MultiSWAGPosterior",
    "SWAG",
    "MultiSWAG",
    "cyclic_lr_factor",
    "DEFAULT_RANK",
]

#: rank :math:`K` of the low-rank part (the paper's default)
DEFAULT_RANK = 20

_SCHEDULES = ("constant", "cyclic")


# ============================================================================ moments
def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


class SWAGMoments:
    r"""The running moments of SWAG: mean, second moment and the last ``rank`` deviations
    of a stream of vectors :math:`\theta_1, \theta_2, \dots\in\mathbb R^d` (with an optional
    leading batch shape, one independent stream per batch element, e.g. MultiSWAG's models).

    After :math:`T` calls of :meth:`update`:

    * :attr:`mean` :math:`\bar\theta = \frac1T\sum_t\theta_t`;
    * :attr:`sq_mean` :math:`\frac1T\sum_t\theta_t^2`, :attr:`diag_var`
      :math:`= \overline{\theta^2}-\bar\theta^2` (the biased iterate variance, clamped at 0);
    * :attr:`deviations`: ``(*batch, K', d)``, :math:`K' = \min(T, K)` rows
      :math:`\theta_t - \bar\theta_t`, oldest first, where :math:`\bar\theta_t` is the
      running mean including :math:`\theta_t`;
    * :meth:`covariance`: :math:`\tfrac12(\mathrm{diag}(\Sigma_\text{diag}) +
      \hat D^\top\hat D/(K'-1))` (the SWAG covariance; dense, for small :math:`d`);
    * :meth:`sample`: draws from :math:`\mathcal N(\bar\theta, \text{covariance})` without
      forming it.

    The mean and second moment accumulate in float64 (float32 on MPS), so the difference
    :math:`\overline{\theta^2} - \bar\theta^2` keeps its precision; deviations are stored in
    ``dtype``.

    Args:
        dim: :math:`d`.
        rank: :math:`K \ge 1`, the deviations kept.
        batch_shape: leading shape of the vectors passed to :meth:`update`.
        device, dtype: of the deviations and of the samples.

    Example:
        >>> import torch
        >>> m = SWAGMoments(2, rank=3)
        >>> for theta in torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]]):
        ...     m.update(theta)
        >>> m.mean.tolist(), [round(v, 4) for v in m.diag_var.tolist()]   # var of (0, 2, 4) = 8/3
        ([2.0, 1.0], [2.6667, 0.0])
        >>> m.deviations.tolist()                           # theta_t minus the mean after it
        [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]
        >>> m.sample(5).shape
        torch.Size([5, 2])

    References:
        W. J. Maddox et al., *A Simple Baseline for Bayesian Uncertainty in Deep Learning*
        (NeurIPS 2019), section 3.
    """

    def __init__(
        self,
        dim: int,
        *,
        rank: int = DEFAULT_RANK,
        batch_shape: Sequence[int] = (),
        device=None,
        dtype: torch.dtype = torch.float32,
    ):
        self.dim = check_positive_int(dim, "dim")
        self.rank = check_positive_int(rank, "rank")
        if not isinstance(batch_shape, (tuple, list, torch.Size)) or not all(
            isinstance(b, numbers.Integral) and not isinstance(b, bool) and b >= 1 for b in batch_shape
        ):
            raise TypeError(f"batch_shape must be a tuple of positive integers, got {batch_shape!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.batch_shape = tuple(int(b) for b in batch_shape)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = dtype
        acc = _accumulator_dtype(self.device)
        self.count = 0
        self._mean = torch.zeros(self.batch_shape + (self.dim,), dtype=acc, device=self.device)
        self._sq_mean = torch.zeros_like(self._mean)
        self._dev = torch.zeros(self.batch_shape + (self.rank, self.dim), dtype=dtype, device=self.device)

    # -- accumulation ------------------------------------------------------------
    @torch.no_grad()
    def update(self, theta: torch.Tensor) -> None:
        r"""Add one iterate :math:`\theta_{T+1}` (shape ``(*batch_shape, dim)``):
        :math:`\bar\theta \leftarrow \bar\theta + (\theta - \bar\theta)/(T+1)`, likewise for
        the second moment, and the deviation :math:`\theta - \bar\theta` (new mean) replaces
        the oldest one when :math:`K` are kept."""
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"theta must be a tensor, got {type(theta).__name__}")
        want = self.batch_shape + (self.dim,)
        if tuple(theta.shape) != want:
            raise ValueError(f"theta has shape {tuple(theta.shape)}, expected {want} (batch_shape + (dim,))")
        t = theta.detach().to(device=self.device, dtype=self._mean.dtype)
        if not bool(torch.isfinite(t).all()):
            raise ValueError("theta has non-finite values; the training diverged (lower swa_lr)")
        n = self.count + 1
        self._mean += (t - self._mean) / n
        self._sq_mean += (t * t - self._sq_mean) / n
        self._dev[..., self.count % self.rank, :] = (t - self._mean).to(self.dtype)
        self.count = n

    # -- the moments -------------------------------------------------------------
    def _check_collected(self) -> None:
        if self.count == 0:
            raise ValueError("no iterate collected yet: call update(theta) first")

    @property
    def num_deviations(self) -> int:
        """:math:`K' = \\min(T, K)`, the deviations kept."""
        return min(self.count, self.rank)

    @property
    def mean(self) -> torch.Tensor:
        r""":math:`\bar\theta`, ``(*batch, d)`` (float64)."""
        self._check_collected()
        return self._mean

    @property
    def sq_mean(self) -> torch.Tensor:
        r""":math:`\overline{\theta^2}`, ``(*batch, d)`` (float64)."""
        self._check_collected()
        return self._sq_mean

    @property
    def diag_var(self) -> torch.Tensor:
        r""":math:`\Sigma_\text{diag} = \overline{\theta^2} - \bar\theta^2 \ge 0`."""
        return (self.sq_mean - self.mean.pow(2)).clamp_min(0.0)

    @property
    def deviations(self) -> torch.Tensor:
        r"""The last :math:`K'` deviations :math:`\hat D^\top`, ``(*batch, K', d)``, oldest first."""
        self._check_collected()
        k = self.num_deviations
        if self.count <= self.rank:
            return self._dev[..., :k, :]
        start = self.count % self.rank
        return torch.roll(self._dev, -start, dims=-2)

    def covariance(self) -> torch.Tensor:
        r"""The SWAG covariance :math:`\tfrac12\big(\mathrm{diag}(\Sigma_\text{diag}) +
        \hat D^\top\hat D/(K'-1)\big)`, ``(*batch, d, d)`` in float64 (the low-rank part only
        when :math:`K'\ge2`). Dense: for tests and small :math:`d`."""
        cov = torch.diag_embed(self.diag_var)
        k = self.num_deviations
        if k >= 2:
            D = self.deviations.to(cov.dtype)
            cov = cov + D.transpose(-1, -2) @ D / (k - 1)
        return 0.5 * cov

    @torch.no_grad()
    def sample(self, num_samples: int, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        r"""``num_samples`` draws :math:`\theta = \bar\theta + \Sigma_\text{diag}^{1/2}z_1/\sqrt2
        + \hat Dz_2/\sqrt{2(K'-1)}`, shape ``(S, *batch, d)`` in ``dtype``, all at once."""
        S = check_positive_int(num_samples, "num_samples")
        mean = self.mean.to(self.dtype)
        std = self.diag_var.to(self.dtype).sqrt()
        z1 = torch.randn((S,) + tuple(mean.shape), dtype=self.dtype, device=self.device, generator=generator)
        out = mean + std * z1 * math.sqrt(0.5)
        k = self.num_deviations
        if k >= 2:
            z2 = torch.randn((S,) + self.batch_shape + (k,), dtype=self.dtype, device=self.device, generator=generator)
            low = torch.einsum("s...k,...kd->s...d", z2, self.deviations)
            out = out + low / math.sqrt(2.0 * (k - 1))
        return out

    # -- saving ------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        """Plain data: ``mean``, ``sq_mean``, ``deviations`` (oldest first), ``count``, ``rank``."""
        self._check_collected()
        return {
            "mean": self._mean.cpu(), "sq_mean": self._sq_mean.cpu(), "deviations": self.deviations.cpu(),
            "count": int(self.count), "rank": int(self.rank),
        }

    @classmethod
    def from_state(cls, state: Dict[str, Any], *, device=None, dtype: Optional[torch.dtype] = None) -> "SWAGMoments":
        """Rebuild from :meth:`state` (the deviations keep their order)."""
        mean, dev = state["mean"], state["deviations"]
        m = cls(
            mean.shape[-1], rank=int(state["rank"]), batch_shape=tuple(mean.shape[:-1]), device=device,
            dtype=dtype or dev.dtype,
        )
        m._mean.copy_(mean)
        m._sq_mean.copy_(state["sq_mean"])
        k = dev.shape[-2]
        m._dev[..., :k, :] = dev.to(m.dtype)
        m.count = int(state["count"])
        if m.count > m.rank:  # the ring buffer's next slot must hold the oldest deviation
            m._dev = torch.roll(m._dev, m.count % m.rank, dims=-2)
        return m

    def to(self, device) -> "SWAGMoments":
        device = torch.device(device)
        self._mean = self._mean.to(device, _accumulator_dtype(device))
        self._sq_mean = self._sq_mean.to(device, _accumulator_dtype(device))
        self._dev = self._dev.to(device)
        self.device = device
        return self

    def __repr__(self) -> str:
        return f"SWAGMoments(dim={self.dim}, rank={self.rank}, batch_shape={self.batch_shape}, count={self.count})"


def cyclic_lr_factor(step: int, cycle: int, ratio: float) -> float:
    r"""SWA's cyclical learning rate as a fraction of the largest one: at the 0-based
    ``step``, with :math:`t = (\text{step} \bmod c + 1)/c`, the factor is
    :math:`(1-t) + t\,\rho` (``ratio`` :math:`\rho = \alpha_2/\alpha_1`), so the rate falls
    linearly within each cycle of :math:`c` steps and reaches :math:`\alpha_2` at its last
    step, where the iterate is collected (Izmailov et al., 2018, eq. 2).

    Example:
        >>> [round(cyclic_lr_factor(i, 4, 0.2), 2) for i in range(5)]
        [0.8, 0.6, 0.4, 0.2, 0.8]
    """
    t = (step % cycle + 1) / cycle
    return (1.0 - t) + t * ratio


# ============================================================================ posteriors
class SWAGPosterior(Posterior):
    r"""The SWAG posterior (Maddox et al., 2019) over the network's Bayesian weights, a
    Gaussian with diagonal plus low-rank covariance (see the module docs); also the base of
    :class:`MultiSWAGPosterior`, :math:`M` such Gaussians mixed equally.

    ``sample_latents`` draws the weights from the SWAG Gaussians (each model
    :math:`\lfloor S/M\rfloor` or :math:`\lceil S/M\rceil` of the :math:`S` draws, in model
    order) and gives the likelihood's latents their trained values; ``predict`` runs the
    draws through the network in batched passes.

    Attributes:
        moments: the :class:`SWAGMoments` of the flattened Bayesian weights (batch shape
            ``(M,)``; the weights in :attr:`~pyrobdl.BayesianNetwork.bayesian_parameters`
            order, each flattened).
        size: :math:`M` (1 for SWAG).
        latents: the likelihood's latents per model, ``{"sigma": (M,)}``.
        fit_info: ``losses`` of the pretraining and of the SWAG phase, ``seconds``,
            ``num_steps``, ``collected`` (iterates collected).

    Example:
        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork
        >>> x = torch.linspace(-1, 1, 32).unsqueeze(-1)
        >>> model = BayesianNetwork(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)))
        >>> post = SWAG(epochs=5, swag_epochs=5, batch_size=8, progress=False, seed=0).fit(model, x, x[:, 0])
        >>> post.moments.count, post.predict(x, num_samples=10).num_samples
        (5, 10)
    """

    method = "swag"

    def __init__(
        self,
        model: BayesianNetwork,
        moments: SWAGMoments,
        *,
        latents: Dict[str, torch.Tensor],
        deterministic: Optional[Dict[str, torch.Tensor]] = None,
        buffers: Optional[Dict[str, torch.Tensor]] = None,
        settings: Optional[Dict[str, Any]] = None,
    ):
        super().__init__(model)
        if not isinstance(moments, SWAGMoments) or len(moments.batch_shape) != 1:
            raise TypeError("moments must be a SWAGMoments with batch shape (M,)")
        shapes = dict(model.net.named_parameters())
        self._names = list(model.bayesian_parameters)
        self._shapes = [tuple(shapes[n].shape) for n in self._names]
        D = sum(math.prod(s) for s in self._shapes)
        if moments.dim != D:
            raise ValueError(f"the moments have dimension {moments.dim} but the model has {D} Bayesian weights")
        self.moments = moments
        self._raw = dict(latents)
        self.deterministic = dict(deterministic or {})
        self.buffers = dict(buffers or {})
        self.settings = dict(settings or {})

    # -- layout ------------------------------------------------------------------
    @property
    def size(self) -> int:
        """:math:`M`, the number of SWAG models."""
        return self.moments.batch_shape[0]

    @property
    def device(self) -> torch.device:
        return self.moments.device

    def to(self, device) -> "SWAGPosterior":
        self.model.to(device)
        self.moments.to(device)
        self._raw = {k: v.to(device) for k, v in self._raw.items()}
        self.deterministic = {k: v.to(device) for k, v in self.deterministic.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        return self

    def unflatten(self, theta: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Flat weights ``(..., d)`` -> ``{parameter name: (..., *shape)}`` (views)."""
        parts = theta.split([math.prod(s) for s in self._shapes], -1)
        return {n: p.reshape(tuple(theta.shape[:-1]) + s) for n, p, s in zip(self._names, parts, self._shapes)}

    @property
    def latents(self) -> Dict[str, torch.Tensor]:
        """The likelihood's latents per model, constrained (e.g. ``{"sigma": (M,)}``)."""
        from .point import constrainer

        return {k: v.detach() for k, v in constrainer(self.model)(self._raw).items()}

    @property
    def swa_params(self) -> Dict[str, torch.Tensor]:
        r"""The SWA solution :math:`\bar\theta` per model: ``{parameter name: (M, *shape)}``."""
        return self.unflatten(self.moments.mean.to(self.model.dtype))

    def _member_index(self, S: int) -> torch.Tensor:
        """The model of each of ``S`` draws, ``s * M // S`` (contiguous, nearly equal blocks)."""
        return torch.div(torch.arange(S, device=self.device) * self.size, S, rounding_mode="floor")

    def _draw(self, S: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(model index ``(S,)``, weights ``(S, d)``): each model's draws from its own Gaussian,
        drawn as ``ceil(S/M)`` per model in one batched call and gathered."""
        M = self.size
        idx = self._member_index(S)
        per = -(-S // M)
        theta = self.moments.sample(per)  # (per, M, d)
        start = torch.searchsorted(idx, torch.arange(M, device=idx.device))
        pos = torch.arange(S, device=idx.device) - start[idx]
        return idx, theta[pos, idx]

    # -- sampling ----------------------------------------------------------------
    def sample_latents(self, num_samples: Optional[int]) -> Dict[str, torch.Tensor]:
        """``num_samples`` draws of every latent site: the weights from the SWAG Gaussians,
        the likelihood's latents at their trained values (of the draw's model)."""
        S = check_positive_int(self.default_num_samples if num_samples is None else num_samples, "num_samples")
        idx, theta = self._draw(S)
        out = {self.model.parameter_site(n): v for n, v in self.unflatten(theta).items()}
        sites = latent_site_names(self.model)
        for short, v in self.latents.items():
            out[sites[short]] = v[idx]
        return out

    def sample_outputs(self, x, num_samples, *, chunk_size=None, max_memory=None):
        """Outputs ``(S, N, k)`` of ``S`` weight draws at ``x``, with each draw's model's
        non-Bayesian parameters (their SWA average) and buffers (BatchNorm statistics)."""
        S = check_positive_int(self.default_num_samples if num_samples is None else num_samples, "num_samples")
        idx, theta = self._draw(S)
        params = dict(self.unflatten(theta))
        params.update({k: v[idx] for k, v in self.deterministic.items()})
        if not self.buffers:
            def values(s0: int, s1: int) -> Dict[str, torch.Tensor]:
                return {k: v[s0:s1] for k, v in params.items()}

            out = self.model.outputs_from_params(x, S, values, chunk_size=chunk_size, max_memory=max_memory)
            return out, {k: v[idx] for k, v in self.latents.items()}
        # with buffers: each draw is one "member" of the ensemble's batched forward pass
        draws = EnsemblePosterior(
            self.model, params, {k: v[idx] for k, v in self.buffers.items()}, {k: v[idx] for k, v in self._raw.items()},
            settings={},
        )
        return draws._member_outputs(x, chunk_size=chunk_size, max_memory=max_memory)

    # -- saving ------------------------------------------------------------------
    def get_state(self) -> Dict[str, Any]:
        return {
            "settings": self.settings,
            "moments": self.moments.state(),
            "latents": {k: v.detach().cpu() for k, v in self._raw.items()},
            "deterministic": {k: v.detach().cpu() for k, v in self.deterministic.items()},
            "buffers": {k: v.detach().cpu() for k, v in self.buffers.items()},
            "fit_info": dict(saved_fit_info(self.fit_info), collected=int(self.fit_info.get("collected", 0))),
        }

    @classmethod
    def from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "SWAGPosterior":
        dev = model.device
        moments = SWAGMoments.from_state(state["moments"], device=dev, dtype=model.dtype)
        post = cls(
            model, moments,
            latents={k: v.to(dev) for k, v in state["latents"].items()},
            deterministic={k: v.to(dev) for k, v in state["deterministic"].items()},
            buffers={k: v.to(dev) for k, v in state["buffers"].items()},
            settings=state["settings"],
        )
        post.fit_info = dict(state.get("fit_info", {}))
        return post

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.size} x {self.moments.dim} weights, rank {self.moments.rank}, "
            f"{self.moments.count} iterates)"
        )


class MultiSWAGPosterior(SWAGPosterior):
    r"""MultiSWAG (Wilson & Izmailov, 2020): the equal mixture of :math:`M` SWAG Gaussians
    (:class:`SWAGPosterior` with :math:`M` models). A prediction with :math:`S` samples draws
    :math:`\lfloor S/M\rfloor` or :math:`\lceil S/M\rceil` from each.

    Example:
        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork
        >>> x = torch.linspace(-1, 1, 32).unsqueeze(-1)
        >>> model = BayesianNetwork(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)))
        >>> post = MultiSWAG(size=3, epochs=5, swag_epochs=5, batch_size=8, progress=False, seed=0).fit(model, x, x[:, 0])
        >>> post.size, post.latents["sigma"].shape
        (3, torch.Size([3]))
    """

    method = "multi-swag"


# ============================================================================ algorithms
class _SWAGBase(PointInference):
    """SWAG with ``size`` models trained at once (the module docs)."""

    default_num_steps = None
    default_epochs = 100
    posterior_class = SWAGPosterior

    def __init__(
        self,
        *,
        size: int,
        rank: int = DEFAULT_RANK,
        num_steps: Optional[int] = None,
        epochs: Optional[int] = None,
        batch_size: Optional[int] = 32,
        lr: float = 2e-2,
        swa_lr: float = 1e-2,
        swag_epochs: int = 40,
        collect_every: Optional[int] = None,
        schedule: str = "constant",
        swa_lr_min: Optional[float] = None,
        weight_decay: WeightDecay = "prior",
        pretrained: bool = False,
        warm_start: Optional[EnsemblePosterior] = None,
        progress: bool = True,
        seed: Optional[int] = None,
        callback=None,
    ):
        super().__init__(
            num_steps=num_steps, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            progress=progress, seed=seed, callback=callback,
        )
        self.size = check_positive_int(size, "size")
        self.rank = check_positive_int(rank, "rank")
        self.swa_lr = check_positive_float(swa_lr, "swa_lr")
        self.swag_epochs = check_positive_int(swag_epochs, "swag_epochs")
        self.collect_every = None if collect_every is None else check_positive_int(collect_every, "collect_every")
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be 'constant' (the paper's default) or 'cyclic', got {schedule!r}")
        self.schedule = schedule
        if swa_lr_min is not None:
            swa_lr_min = check_positive_float(swa_lr_min, "swa_lr_min")
            if swa_lr_min > self.swa_lr:
                raise ValueError(f"swa_lr_min={swa_lr_min} is above swa_lr={self.swa_lr}; it is the low end of the cycle")
            if schedule != "cyclic":
                raise ValueError("swa_lr_min is the low end of the cyclic schedule: pass schedule='cyclic' with it")
        self.swa_lr_min = swa_lr_min if swa_lr_min is not None else (self.swa_lr / 10 if schedule == "cyclic" else None)
        if not isinstance(pretrained, bool):
            raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
        self.pretrained = pretrained
        if warm_start is not None:
            if not isinstance(warm_start, EnsemblePosterior):
                raise TypeError(f"warm_start must be an EnsemblePosterior (a fitted deep ensemble), got {type(warm_start).__name__}")
            if warm_start.size != self.size:
                raise ValueError(f"warm_start has {warm_start.size} members but size={self.size}; make them equal")
        self.warm_start = warm_start
        self._given: Optional[Dict[str, torch.Tensor]] = None

    def settings(self) -> Dict[str, Any]:
        return dict(
            super().settings(), size=self.size, rank=self.rank, swa_lr=self.swa_lr, swag_epochs=self.swag_epochs,
            collect_every=self.collect_every, schedule=self.schedule, swa_lr_min=self.swa_lr_min,
            pretrained=self.pretrained,
        )

    def fit(self, model: BayesianNetwork, x=None, y=None) -> SWAGPosterior:
        """Fit ``model`` (see :meth:`pyrobdl.inference.Inference.fit`); with
        ``pretrained=True`` the SWAG phase starts from the network's weights as given (even
        with a ``seed``, which then seeds only the shuffles)."""
        if self.pretrained and isinstance(model, BayesianNetwork):
            self._given = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
        try:
            return super().fit(model, x, y)
        finally:
            self._given = None

    def _ensemble(self, *, lr: float, warm_start: Optional[EnsemblePosterior], num_steps, epochs, callback):
        return DeepEnsemble(
            size=self.size, num_steps=num_steps, epochs=epochs, batch_size=self.batch_size, lr=lr,
            weight_decay=self.weight_decay, warm_start=warm_start, progress=self.progress, callback=callback,
        )

    def _start(self, model: BayesianNetwork, data: Data) -> Tuple[EnsemblePosterior, Dict[str, Any]]:
        """The MAP networks the SWAG phase starts from (pretraining, unless ``pretrained``)."""
        if self._given is not None:
            model.net.load_state_dict(self._given)
        if self.pretrained:
            if self.warm_start is not None:
                return self.warm_start.to(data.device), {}
            if self.size > 1:
                raise ValueError(
                    "pretrained=True with size > 1 needs the trained members: pass warm_start=<a fitted "
                    "EnsemblePosterior of that size>, or pretrained=False to pretrain them here"
                )
            params, buffers = stack_module_state([model.net])
            y0 = data.y if data.y is not None else data.sample(1)[1]
            raw = init_latents(model, type(self).__name__, training_targets(data, y0), (1,))
            raw = _fit_latents_to(model, data, raw, self.batch_size)
            return EnsemblePosterior(model, params, buffers, raw, settings={}), {}
        ens = self._ensemble(lr=self.lr, warm_start=self.warm_start, num_steps=self.num_steps, epochs=self.epochs, callback=self.callback)
        pre = ens._fit(model, data)
        return pre, pre.fit_info

    def _fit(self, model: BayesianNetwork, data: Data) -> SWAGPosterior:
        start, pre_info = self._start(model, data)
        M = self.size
        spe = data.steps_per_epoch(self.batch_size)
        every = self.collect_every or spe
        num_steps = self.swag_epochs * spe
        if num_steps // every < 2:
            raise ValueError(
                f"the SWAG phase runs {num_steps} steps and collects every {every}: fewer than 2 iterates; raise "
                "swag_epochs or lower collect_every"
            )
        ens = self._ensemble(lr=self.swa_lr, warm_start=start, num_steps=num_steps, epochs=None, callback=None)
        batches = ens._batches(data, model)
        x0, y0 = next(batches)
        params, buffers, raw = ens._start(model, y0, data)
        post = EnsemblePosterior(model, params, buffers, raw, settings={})
        nets = [model.net] + ([post._base] if post._base is not None else [])
        constrain = post._constrain
        penalty = weight_penalty(model, self.weight_decay, data.num_data, {})
        layout = member_layout(model.net) if not buffers and x0.dim() == 3 else None
        pack = layout.pack if layout is not None else (lambda k, v: v)
        unpack = None if layout is None else layout.unpack
        flat = _FlatMembers({k: pack(k, v) for k, v in params.items() if v.requires_grad}, raw, M, latent_lr_scale(self.swa_lr))
        fixed = {k: pack(k, v.detach()) for k, v in params.items() if not v.requires_grad}
        fixed_std = {k: v.detach() for k, v in params.items() if not v.requires_grad}

        names = list(model.bayesian_parameters)
        D = sum(params[n][0].numel() for n in names)
        moments = SWAGMoments(D, rank=self.rank, batch_shape=(M,), device=data.device, dtype=model.dtype)
        det_names = [n for n in params if n not in set(names)]
        det_mean: Dict[str, torch.Tensor] = {}
        raw_mean: Dict[str, torch.Tensor] = {}

        # cyclic schedule: each Adam update is scaled by the schedule's factor (Adam's step is
        # linear in its learning rate), applied before the next use of the weights
        cyclic = self.schedule == "cyclic"
        ratio = (self.swa_lr_min / self.swa_lr) if cyclic else 1.0
        pending: Dict[str, Any] = {}

        def settle() -> None:
            if pending:
                with torch.no_grad():
                    for leaf, before in zip(flat.leaves, pending["before"]):
                        leaf.lerp_(before, 1.0 - pending["factor"])
                pending.clear()

        def loss_fn(step, xb, yb):
            if cyclic:
                settle()
                pending["before"] = [leaf.detach().clone() for leaf in flat.leaves]
                pending["factor"] = cyclic_lr_factor(step, every, ratio)
            p, r = flat.views()
            if fixed:
                p = {**fixed, **p}
            if layout is None:
                return ens._loss(post, p, constrain(r), xb, yb, None, penalty)
            std = layout.unpack(p) if penalty is not None else None
            return ens._loss(post, std, constrain(r), xb, yb, None, penalty, forward=lambda xi: layout.forward(p, xi))

        def current() -> SWAGPosterior:
            return self.posterior_class(
                model, moments, latents={k: v.clone() for k, v in raw_mean.items()},
                deterministic={k: v.clone() for k, v in det_mean.items()},
                buffers={k: v.detach().clone() for k, v in post.buffers.items()}, settings=self.settings(),
            )

        def collect(progress: FitProgress) -> Optional[bool]:
            settle()
            if progress.step % every:
                return None  # the last step, off the collection period
            trained, r = flat.values(unpack)
            values = {**fixed_std, **trained}
            moments.update(torch.cat([values[n].reshape(M, -1) for n in names], 1))
            n = moments.count
            for k in det_names:
                det_mean[k] = values[k].clone() if n == 1 else det_mean[k] + (values[k] - det_mean[k]) / n
            for k, v in r.items():
                raw_mean[k] = v.clone() if n == 1 else raw_mean[k] + (v - raw_mean[k]) / n
            if self.callback is not None:
                info = FitProgress(progress.step, num_steps, progress.step / spe, progress.loss, current)
                return self.callback(info)
            return None

        for net in nets:
            net.train()
        try:
            losses, secs = train(
                loss_fn, itertools.chain([(x0, y0)], batches), flat.leaves, num_steps=num_steps, lr=self.swa_lr,
                progress=self.progress, desc=self.name, record_shape=(M,), callback=collect, callback_every=every,
                what="SWAG-phase training loss", hint="lower swa_lr or standardise x and y",
            )
        finally:
            settle()
            for net in nets:
                net.eval()
        result = current()
        result.fit_info = {
            "losses": losses, "pretrain_losses": pre_info.get("losses"),
            "seconds": secs + float(pre_info.get("seconds", 0.0)),
            "num_steps": num_steps + int(pre_info.get("num_steps", 0)), "collected": moments.count,
        }
        if len(losses) < num_steps:
            result.fit_info["stopped_at"] = len(losses)
        return result


#: ``pretrained=True``: Adam steps that fit the likelihood's latents (a noise scale) to the given
#: network before the SWAG phase, at this learning rate
LATENT_FIT_STEPS, LATENT_FIT_LR = 300, 0.05


def _fit_latents_to(model: BayesianNetwork, data: Data, raw: Dict[str, torch.Tensor], batch_size) -> Dict[str, torch.Tensor]:
    """Maximum-likelihood values of the likelihood's latents (e.g. the noise of ``Gaussian()``)
    for the network as given (``pretrained=True``): the network is frozen and only the latents
    train, so a short SWAG phase does not start from a noise at a tenth of the targets' std
    whatever the network's residuals are."""
    if not raw:
        return raw
    constrain = constrainer(model)
    log_prob = model.likelihood.log_prob
    latents = {k: v.detach().clone().requires_grad_(True) for k, v in raw.items()}

    def loss_fn(step, xb, yb):
        with torch.no_grad():
            out = model.net(xb)
        loss = -log_prob(out, yb, {k: v[0] for k, v in constrain(latents).items()}).mean()
        return loss, loss.detach()

    was = model.net.training
    model.net.eval()
    try:
        train(loss_fn, data.batches(model, batch_size), list(latents.values()), num_steps=LATENT_FIT_STEPS,
              lr=LATENT_FIT_LR, what="negative log-likelihood of the latents", hint="standardise x and y")
    finally:
        model.net.train(was)
    return {k: v.detach().requires_grad_(True) for k, v in latents.items()}


@register_method
class SWAG(_SWAGBase):
    r"""SWAG, the SWA-Gaussian (Maddox et al., 2019): pretrain to a MAP estimate, then run
    Adam at the constant SWA learning rate and fit a Gaussian with diagonal plus rank-:math:`K`
    covariance to the iterates collected once per epoch (see the module docs for the math).

    **Training.** Pretraining is the point-estimate objective of
    :mod:`pyrobdl.inference.point` (mean negative log-likelihood of a minibatch plus the
    model's prior as the weight penalty, ``weight_decay="prior"``) for ``epochs`` epochs at
    ``lr``; the SWAG phase continues for ``swag_epochs`` epochs at ``swa_lr`` (a fresh Adam)
    and collects an iterate every ``collect_every`` steps (default: once per epoch). With
    ``pretrained=True`` the network's weights as given are the MAP estimate and the SWAG
    phase starts from them (post-hoc uncertainty for a network you already trained).

    Args:
        rank: :math:`K`, the deviations kept for the low-rank part (default 20).
        num_steps: pretraining steps instead of epochs (used when ``epochs`` is not given).
        epochs: pretraining epochs (default 100).
        batch_size: minibatch size of both phases (default 32; ``None``: full batch).
        lr: pretraining Adam learning rate.
        swa_lr: the SWAG phase's (largest) learning rate.
        swag_epochs: epochs of the SWAG phase (default 40).
        collect_every: steps between collections (default: one epoch); with
            ``schedule="cyclic"``, the cycle length.
        schedule: ``"constant"`` (default) or ``"cyclic"`` (linear decay from ``swa_lr`` to
            ``swa_lr_min`` within each cycle, collecting at its end).
        swa_lr_min: the low end of the cyclic schedule (default ``swa_lr / 10``).
        weight_decay: ``"prior"`` (default, MAP), a float, or 0 (maximum likelihood).
        pretrained: skip pretraining and start from the network's weights as given.
        progress: show progress bars.
        callback: ``callback(progress)`` after every pretraining epoch (``progress.posterior``
            is then the point estimate, an :class:`~pyrobdl.inference.ensemble.EnsemblePosterior`)
            and after every collection (``progress.posterior`` is the SWAG posterior so far);
            return ``True`` to stop that phase.
        seed: ``None`` or an integer in ``[0, 2**32)`` (see :class:`~pyrobdl.inference.Inference`).

    Example::

        posterior = pyrobdl.fit(model, x, y, method="swag")
        pred = posterior.predict(x_test, num_samples=100)
        pred.mean, pred.epistemic_std

    References:
        W. J. Maddox, P. Izmailov, T. Garipov, D. P. Vetrov and A. G. Wilson, *A Simple
        Baseline for Bayesian Uncertainty in Deep Learning* (NeurIPS 2019).
    """

    name = "swag"
    aliases = ("swa-gaussian",)
    family = "swag"
    variance_head = False
    collapse_hint = (
        "SWAG's spread comes from the iterates of its SWAG phase: raise swa_lr or swag_epochs (or use minibatches, "
        "batch_size=32), so that the collected weights differ."
    )

    def __init__(self, *, rank: int = DEFAULT_RANK, **kwargs):
        if "size" in kwargs or "warm_start" in kwargs:
            raise TypeError("SWAG fits one model; use MultiSWAG(size=M, ...) for several (or warm_start)")
        super().__init__(size=1, rank=rank, **kwargs)

    def settings(self) -> Dict[str, Any]:
        s = super().settings()
        s.pop("size")
        return s


@register_method
class MultiSWAG(_SWAGBase):
    r"""MultiSWAG (Wilson & Izmailov, 2020): ``size`` SWAG models from independent
    initialisations, trained at once with the deep ensemble's vectorised machinery, mixed
    equally (see the module docs and :class:`SWAG` for the settings).

    Initialisation follows :class:`~pyrobdl.inference.DeepEnsemble`: model 0 starts from the
    given network, the others from fresh draws of its layers' initialisation (under the
    ``seed``); ``warm_start`` (a fitted :class:`~pyrobdl.inference.ensemble.EnsemblePosterior`
    of ``size`` members) starts the pretraining from its members instead, or with
    ``pretrained=True`` the SWAG phase itself (MultiSWAG from a deep ensemble you trained).

    Args:
        size: :math:`M`, the number of SWAG models (default 3).
        warm_start: a fitted deep ensemble of ``size`` members to start from.
        **kwargs: the settings of :class:`SWAG`.

    Example::

        posterior = pyrobdl.fit(model, x, y, method="multi-swag")       # 3 models
        pred = posterior.predict(x_test, num_samples=99)                 # 33 draws each

    References:
        A. G. Wilson and P. Izmailov, *Bayesian Deep Learning and a Probabilistic Perspective
        of Generalization* (NeurIPS 2020).
    """

    name = "multi-swag"
    aliases = ("multiswag",)
    family = "swag"
    variance_head = False
    collapse_hint = SWAG.collapse_hint
    posterior_class = MultiSWAGPosterior

    def __init__(self, *, size: int = 3, rank: int = DEFAULT_RANK, **kwargs):
        super().__init__(size=size, rank=rank, **kwargs)
