r"""Stochastic-gradient MCMC: SGLD (Welling & Teh 2011), SGHMC (Chen et al. 2014) and
cyclical SG-MCMC (Zhang et al. 2020), for networks or data sets too large for full-batch
HMC.

All three sample the posterior over the flat, unconstrained latent vector
:math:`z\in\mathbb R^D` of the model (:class:`~pyrobdl.inference.flat.FlatLayout`: every
Bayesian weight, and the likelihood's own latents such as :math:`\log\sigma` of a learned
noise scale, which is *sampled* too), whose potential on a minibatch :math:`\mathcal B` of
the :math:`N` training points is

.. math::

    \tilde U(z) = -\log p(\theta(z)) - \log\big|\det J_T(z)\big|
    - \frac{N}{|\mathcal B|}\sum_{n\in\mathcal B}\log p\big(y_n\mid f_{\theta(z)}(x_n)\big),

an unbiased estimate of :math:`U(z) = -\log p(\theta, y\mid x)` in unconstrained space.
With a step size :math:`\eta_k`, injected noise :math:`\xi_k\sim\mathcal N(0, I)` and a
diagonal preconditioner :math:`P` (below; :math:`P = I` without it):

* **SGLD** (``"sgld"``; pSGLD of Li et al. 2016 with ``precondition=True``):

  .. math:: z_{k+1} = z_k - \tfrac{\eta_k}2\,P\,\nabla\tilde U(z_k) + \sqrt{\eta_k P}\;\xi_k ,

  Welling & Teh's :math:`\theta\leftarrow\theta+\frac\epsilon2\nabla\log\tilde p(\theta)+\mathcal N(0,\epsilon)`
  with :math:`\epsilon = \eta_k`.
* **SGHMC** (``"sghmc"``) in the momentum-decay parameterisation of Chen et al. (2014, eq. 15)
  as used by Springenberg et al. (2016) and Zhang et al. (2020), with friction
  (momentum decay) :math:`\alpha` and no gradient-noise estimate (:math:`\hat\beta = 0`):

  .. math::

      v_{k+1} = (1-\alpha)\,v_k - \eta_k\,P\,\nabla\tilde U(z_k) + \sqrt{2\alpha\eta_k P}\;\xi_k,
      \qquad z_{k+1} = z_k + v_{k+1},

  i.e. Hamiltonian dynamics with mass :math:`M = P^{-1}` and friction :math:`C = \alpha M/\sqrt{\eta}`.
* **Cyclical SG-MCMC** (``"cyclical-sgmcmc"``; cSGHMC, or cSGLD with ``sampler="sgld"``):
  the step size follows the cosine cycle of Zhang et al. (2020, eq. 1) over :math:`K`
  steps in :math:`M` cycles,

  .. math::

      \eta_k = \frac{\eta_0}2\Big[\cos\Big(\frac{\pi\,\mathrm{mod}(k-1, \lceil K/M\rceil)}{\lceil K/M\rceil}\Big)+1\Big],
      \quad k = 1,\dots,K

  (:func:`cyclical_step_sizes`). While the position in the cycle
  :math:`r_k = \mathrm{mod}(k-1,\lceil K/M\rceil)/\lceil K/M\rceil` is below
  :math:`\beta` (``exploration``) the update runs *without* noise (an optimiser that
  finds a new mode); in the rest of the cycle, the sampling stage, the noise is on and
  ``samples_per_cycle`` draws are kept, the last at the cycle's end.

**Step size per data point.** ``step_size`` is :math:`\eta N` (:math:`\eta = ` ``step_size`` :math:`/N`):
the drift :math:`\frac\eta2\nabla\tilde U` is then ``step_size`` times the gradient of the
*mean* negative log-likelihood per point, the scale of an ordinary learning rate, and the
same setting works whatever :math:`N` (the posterior narrows as :math:`1/\sqrt N` and the
injected noise :math:`\sqrt\eta` with it).

**Preconditioner** (``precondition=True``, the default). :math:`P = \mathrm{diag}\big(1/(\sqrt{V}+\delta)\big)`
with :math:`V` the RMSprop average (decay 0.99) of the squared per-point gradient
:math:`(\nabla\tilde U/N)^2` (Li et al. 2016), kept at least the current squared gradient
(so a coordinate whose gradient grows slows at once), per chain. It adapts during burn-in
(the cyclical schedule: during the first cycle) and is **frozen while draws are
collected**: Langevin and Hamiltonian dynamics with a constant
preconditioner leave the posterior invariant, so pSGLD's correction term
:math:`\Gamma(\theta)` (which the paper drops, biasing the samples) is not needed. With it
every coordinate -- weights of layers of different widths, the log noise scale -- moves at
a similar rate: the drift is about ``step_size`` per step in every coordinate.

**Chains.** ``num_chains`` chains run as one batched tensor program: the latent vector is
``(C, D)``, the network runs once per step for all chains through
:meth:`pyrobdl.BayesianNetwork.apply` on the leading chain dimension, and one backward pass
through :math:`\sum_c\tilde U(z_c)` gives every chain's gradient (the chains share the
minibatch of a step, nothing else: noise, momentum and preconditioner are per chain).
**Initialisation** (``init="map"``): chain 0 starts from the network's weights and every
other chain from its own re-drawn initialisation (the layers' ``reset_parameters()``, as
deep-ensemble members), all trained together towards their MAP estimate by Adam on
:math:`\tilde U/N` for ``init_steps`` minibatch steps, then spread by a jitter
:math:`\mathcal N(0, \text{init\_jitter}^2)` in unconstrained space. ``init="network"``
starts every chain at the network's weights plus the jitter (a network you trained
already, e.g. a mean-field fit's ``posterior.model.net``).

**Draws.** Burn-in (``warmup_steps``) is discarded; then every ``thin``-th state is kept
(default one epoch apart), ``num_samples`` per chain, as an
:class:`~pyrobdl.inference.mcmc.MCMCPosterior` (``samples``: site ->
``(chains, draws, *shape)``; ``sample_stats``: ``lp``, the minibatch estimate
:math:`-\tilde U` at each draw, and ``step_size``), so ``to_arviz``,
:func:`pyrobdl.diagnostics.summary` and the function-space R-hat / ESS work as for HMC.
The draws are approximate: the discretisation biases them by :math:`O(\eta)` (no
Metropolis correction), and minibatch gradient noise adds :math:`O(\eta N^2/|\mathcal B|)`
variance per step.

**Defaults** (measured on 2 shared CPU cores, ``pyrobdl.fit(model, x, y, method=...)`` with no
options): 4 chains, minibatches of 32, ``init="map"`` (1,000 Adam steps), preconditioned;
SGLD ``step_size=1e-3`` and SGHMC ``1e-4`` per data point with 2,000 burn-in steps and 100
draws per chain one epoch apart; cyclical cSGHMC ``1e-3``, 8 cycles of 50 epochs,
:math:`\beta = 0.8`, 10 draws per cycle. On Boston (standard split 0, the compare runner's
13-50-1 ReLU network, default fan-in prior, sampled noise scale; 455 training points),
test log-likelihood / RMSE (original units) / seconds: SGLD -2.31 / 2.47 / 17 s, SGHMC
-2.30 / 2.45 / 17 s, cyclical -2.63 / 2.54 / 24 s (one split; mean-field VI in Wu et al.'s
DVI paper averages -2.46 over 20). ``step_size`` 3e-3 for cSGHMC gave -2.35 on Boston but
diverged on the toy, so the default is the stabler 1e-3. On the 1-D toy
(``datasets.toy_regression``, 300 points, 1-100-100-1 ReLU): in-range RMSE 0.51 / 0.46 /
0.52 and mean epistemic std outside / inside the training range 1.66 / 0.47 (SGLD),
0.91 / 0.27 (SGHMC), 2.94 / 0.27 (cyclical), 22-36 s each. The chains start in different
modes and a default run does not mix between them (function-space R-hat 2.4-2.5 on
Boston): the predictive is then a mixture of local posteriors, as for a deep ensemble,
which is why ``diagnose`` is off by default; :func:`pyrobdl.diagnostics.summary` reports it.

Example:
    >>> import torch, torch.nn as nn
    >>> from pyrobdl import BayesianNetwork, likelihoods, priors
    >>> x = torch.linspace(-2, 2, 40).unsqueeze(-1); y = torch.sin(2 * x[:, 0])
    >>> model = BayesianNetwork(nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)),
    ...                         likelihood=likelihoods.Gaussian(scale=0.1))
    >>> post = SGLD(num_samples=20, warmup_steps=100, init_steps=100, num_chains=2, batch_size=10,
    ...             seed=0, progress=False, diagnose=False).fit(model, x, y)
    >>> post.samples["0.weight"].shape, post.method    # (chains, draws, *shape)
    (torch.Size([2, 20, 16, 1]), 'sgld')

References:
    M. Welling and Y. W. Teh, *Bayesian Learning via Stochastic Gradient Langevin Dynamics*
    (ICML 2011);
    T. Chen, E. B. Fox and C. Guestrin, *Stochastic Gradient Hamiltonian Monte Carlo*
    (ICML 2014);
    C. Li, C. Chen, D. Carlson and L. Carin, *Preconditioned Stochastic Gradient Langevin
    Dynamics for Deep Neural Networks* (AAAI 2016);
    J. T. Springenberg, A. Klein, S. Falkner and F. Hutter, *Bayesian Optimization with
    Robust Bayesian Neural Networks* (NeurIPS 2016);
    R. Zhang, C. Li, J. Zhang, C. Chen and A. G. Wilson, *Cyclical Stochastic Gradient
    MCMC for Bayesian Deep Learning* (ICLR 2020).
"""
from __future__ import annotations

import itertools
import math
import numbers
import time
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

import pyro
import torch

from .._util import check_positive_float, check_positive_int, eval_mode, warn_user
from ..network import BayesianNetwork
from .base import Data, Inference, reset_bayesian_parameters
from .flat import FlatLayout
from .mcmc.posterior import MCMCPosterior
from .mcmc.runner import SMALL_WORK, num_threads
from .optim import SYNC_EVERY, train
from .point import check_likelihood, constrainer, init_latents, latent_site_names
from .registry import register_method

__all__ = [
    "SGLD",
    "SGHMC",
    "CyclicalSGMCMC",
    "SGMCMCMethod",
    "SGMCMCPosterior",
    "SGLDPosterior",
    "SGHMCPosterior",
    "CyclicalSGMCMCPosterior",
    "MinibatchPotential",
    "sgmcmc_sample",
    "cyclical_step_sizes",
    "cycle_positions",
    "SAMPLERS",
]

#: the update rules of :func:`sgmcmc_sample`
SAMPLERS = ("sgld", "sghmc")
#: decay of the preconditioner's running average of squared gradients (RMSprop; Li et al. 2016)
PRECONDITIONER_DECAY = 0.99
#: :math:`\delta` of the preconditioner :math:`1/(\sqrt V+\delta)`, in per-point gradient units
PRECONDITIONER_DELTA = 1e-3
#: Adam learning rate of the MAP pretraining (``init="map"``); at least
#: :data:`~pyrobdl.inference.optim.LIKELIHOOD_LR`, so the noise scale trains at its own rate
INIT_LR = 2e-2


# ============================================================================ schedules
def cycle_positions(num_steps: int, num_cycles: int) -> torch.Tensor:
    r"""The position in its cycle of every step :math:`k = 1..K`,
    :math:`r_k = \mathrm{mod}(k-1,\lceil K/M\rceil)/\lceil K/M\rceil\in[0, 1)`
    (Zhang et al. 2020), as a float64 tensor ``(K,)``.

    Example:
        >>> cycle_positions(6, 2).tolist()
        [0.0, 0.3333333333333333, 0.6666666666666666, 0.0, 0.3333333333333333, 0.6666666666666666]
    """
    K = check_positive_int(num_steps, "num_steps")
    M = check_positive_int(num_cycles, "num_cycles")
    if M > K:
        raise ValueError(f"num_cycles={M} is more than num_steps={K}; a cycle needs at least one step")
    L = math.ceil(K / M)
    k = torch.arange(1, K + 1, dtype=torch.float64)
    return torch.remainder(k - 1, L) / L


def cyclical_step_sizes(num_steps: int, *, num_cycles: int, step_size: float) -> torch.Tensor:
    r"""The cosine cyclical step sizes of Zhang et al. (2020, eq. 1) for steps :math:`k = 1..K`,

    .. math::

        \alpha_k = \frac{\alpha_0}2\Big[\cos\Big(\frac{\pi\,\mathrm{mod}(k-1,\lceil K/M\rceil)}
        {\lceil K/M\rceil}\Big) + 1\Big],

    with :math:`\alpha_0` = ``step_size`` and :math:`M` = ``num_cycles``: each cycle starts
    at :math:`\alpha_0` and decays to nearly 0. A float64 tensor ``(K,)``.

    Example:
        >>> [round(v, 4) for v in cyclical_step_sizes(8, num_cycles=2, step_size=1.0).tolist()]
        [1.0, 0.8536, 0.5, 0.1464, 1.0, 0.8536, 0.5, 0.1464]

    Reference: R. Zhang et al., *Cyclical Stochastic Gradient MCMC for Bayesian Deep
    Learning* (ICLR 2020).
    """
    a0 = check_positive_float(step_size, "step_size")
    r = cycle_positions(num_steps, num_cycles)
    return 0.5 * a0 * (torch.cos(math.pi * r) + 1.0)


# ============================================================================ potential
class MinibatchPotential:
    r"""The minibatch potential :math:`\tilde U(z)` of the module docs for a batch of
    points ``z`` ``(C, D)`` on the model's :class:`~pyrobdl.inference.flat.FlatLayout`:
    the log-prior (closed form for Gaussian weights), the log-Jacobian of the constrained
    sites and the minibatch log-likelihood scaled by :math:`N/|\mathcal B|`.

    Args:
        model: the network.
        num_data: :math:`N`, the size of the training set.
        device, dtype: of the flat vector (default: the network's).

    Example:
        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, likelihoods, priors
        >>> model = BayesianNetwork(nn.Linear(2, 1), prior=priors.Normal(0.0, 1.0),
        ...                         likelihood=likelihoods.Gaussian(scale=1.0))
        >>> pot = MinibatchPotential(model, num_data=10)
        >>> x, y = torch.ones(5, 2), torch.zeros(5)
        >>> u = pot(torch.zeros(3, pot.dim), x, y)          # 3 chains at z = 0
        >>> u.shape, round(float(u[0]), 4)    # 3 log N(0;0,1) prior terms, 10 log N(0;0,1) terms
        (torch.Size([3]), 11.9462)
    """

    def __init__(self, model: BayesianNetwork, num_data: int, *, device=None, dtype=None):
        if not isinstance(model, BayesianNetwork):
            raise TypeError(f"model must be a pyrobdl.BayesianNetwork, got {type(model).__name__}")
        self.model = model
        self.num_data = check_positive_int(num_data, "num_data")
        self.layout = FlatLayout(model, device=device, dtype=dtype)
        self.dim = self.layout.dim

    def __call__(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r""":math:`\tilde U(z)` on the minibatch ``(x, y)``, shape ``z.shape[:-1]``."""
        return self.layout.negative_log_joint(self.model, z, x, y, likelihood_scale=self.num_data / x.shape[0])

    def value_and_grad(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(U (C,), ∇U (C, D))`` for independent rows of ``z`` ``(C, D)``: one backward
        pass through the sum over rows gives every row's gradient."""
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            u = self(zz, x, y)
            (g,) = torch.autograd.grad(u.sum(), zz)
        return u.detach(), g

    def unpack(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Flat unconstrained ``(..., D)`` -> site -> constrained ``(..., *shape)``."""
        return self.layout.unpack(z)[0]

    def pack(self, values: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Site -> constrained ``(..., *shape)`` -> flat unconstrained ``(..., D)``."""
        return self.layout.pack(values)


# ============================================================================ the sampler
def _as_flags(v, K: int, name: str) -> List[bool]:
    if isinstance(v, bool):
        return [v] * K
    out = [bool(b) for b in (v.tolist() if isinstance(v, torch.Tensor) else v)]
    if len(out) != K:
        raise ValueError(f"{name} has {len(out)} entries but step_sizes has {K}; give one per step")
    return out


def sgmcmc_sample(
    value_and_grad: Callable[[torch.Tensor, Any, Any], Tuple[torch.Tensor, torch.Tensor]],
    z0: torch.Tensor,
    batches: Iterator[Tuple[Any, Any]],
    *,
    step_sizes: Sequence[float],
    keep: Sequence[bool],
    noisy: Sequence[bool] = True,
    adapt: Sequence[bool] = False,
    sampler: str = "sgld",
    friction: float = 0.1,
    precondition: bool = True,
    num_data: int = 1,
    generator: Optional[torch.Generator] = None,
    noise: Optional[Callable[[int], torch.Tensor]] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> Dict[str, Any]:
    r"""Run SGLD or SGHMC chains (the update rules of the module docs) for
    ``len(step_sizes)`` steps, all chains as one batch.

    Args:
        value_and_grad: ``(z (C, D), xb, yb) -> (Ũ (C,), ∇Ũ (C, D))`` (e.g.
            :meth:`MinibatchPotential.value_and_grad`).
        z0: starting points ``(C, D)``.
        batches: yields the ``(xb, yb)`` of every step.
        step_sizes: :math:`\eta_k` of every step ``(K,)`` (per-potential units: the
            ``step_size`` per data point divided by :math:`N`).
        keep: per step, whether the state entering that step is kept as a draw.
        noisy: per step (or one bool), whether the noise is injected (``False``: the
            exploration stage of the cyclical schedule).
        adapt: per step (or one bool), whether the preconditioner adapts at that step
            (it is frozen otherwise).
        sampler: ``"sgld"`` or ``"sghmc"``.
        friction: :math:`\alpha` of SGHMC, in (0, 1].
        precondition: use the RMSprop preconditioner :math:`P` (else :math:`P = I`).
        num_data: :math:`N`; the preconditioner averages :math:`(\nabla\tilde U/N)^2`.
        generator: for the noise :math:`\xi_k`.
        noise: ``k -> (C, D)`` standard normal noise of step ``k`` instead of drawing it
            (to run chains one at a time with the noise of a batched run).
        progress: called with 1 after every step.

    Returns:
        ``z`` draws ``(C, S, D)``, ``lp`` :math:`-\tilde U` at each draw ``(C, S)``,
        ``step_size`` ``(C, S)``, the final ``preconditioner`` ``(C, D)`` (ones without
        one), the final state ``last`` and ``num_steps``.

    Raises:
        FloatingPointError: the potential became non-finite (checked every
            :data:`~pyrobdl.inference.optim.SYNC_EVERY` steps), naming the fix.

    Example:
        SGLD on a standard normal, :math:`U(z) = z^2/2` (no data):

        >>> import torch
        >>> vg = lambda z, xb, yb: (0.5 * (z ** 2).sum(-1), z)
        >>> out = sgmcmc_sample(vg, torch.zeros(4, 1), itertools.repeat((None, None)),
        ...                     step_sizes=[0.1] * 2000, keep=[k >= 200 for k in range(2000)],
        ...                     precondition=False, generator=torch.Generator().manual_seed(0))
        >>> out["z"].shape, abs(float(out["z"].var()) - 1 / (1 - 0.1 / 4)) < 0.15   # stationary var 1/(1 - eta/4)
        (torch.Size([4, 1800, 1]), True)
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if not (0.0 < float(friction) <= 1.0):
        raise ValueError(f"friction must be in (0, 1] (the momentum decay per step, e.g. 0.1), got {friction!r}")
    etas = [float(e) for e in (step_sizes.tolist() if isinstance(step_sizes, torch.Tensor) else step_sizes)]
    K = len(etas)
    keep_l = _as_flags(keep, K, "keep")
    noisy_l = _as_flags(noisy, K, "noisy")
    adapt_l = _as_flags(adapt, K, "adapt")
    if z0.dim() != 2:
        raise ValueError(f"z0 must have shape (chains, D), got {tuple(z0.shape)}")
    z = z0.detach().clone()
    C, D = z.shape
    S = sum(keep_l)
    draws = z.new_empty((S, C, D))
    lps = z.new_empty((S, C))
    sizes = z.new_empty((S,))
    v = torch.zeros_like(z) if sampler == "sghmc" else None
    P = torch.ones_like(z)
    V: Optional[torch.Tensor] = None
    alpha = float(friction)
    rho = PRECONDITIONER_DECAY
    inv_n = 1.0 / float(num_data)
    s = 0
    t0 = time.perf_counter()
    with pyro.validation_enabled(False):
        for k in range(K):
            xb, yb = next(batches)
            u, g = value_and_grad(z, xb, yb)
            if keep_l[k]:
                draws[s] = z
                lps[s] = -u
                sizes[s] = etas[k]
                s += 1
            if k % SYNC_EVERY == 0 or k == K - 1:
                if not bool(torch.isfinite(u).all()):
                    raise FloatingPointError(
                        f"the stochastic-gradient {sampler.upper()} potential became non-finite at step {k}: the "
                        "chains diverged. Lower step_size (now per data point "
                        f"{etas[k] * num_data:.3g}), keep precondition=True, or standardise x and y"
                    )
            if precondition and adapt_l[k]:
                sq = (g * inv_n).square()
                # the running average, but never below the current squared gradient: a coordinate whose
                # gradient grows (a new region, the exploration stage leaving a mode) is slowed at once
                # instead of after the average catches up, which is what made plain RMSprop diverge
                V = sq if V is None else torch.maximum(V.mul_(rho).add_(sq, alpha=1.0 - rho), sq)
                P = 1.0 / (V.sqrt() + PRECONDITIONER_DELTA)
            eta = etas[k]
            if noisy_l[k]:
                xi = noise(k) if noise is not None else torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            if sampler == "sgld":
                z = z - (0.5 * eta) * P * g
                if noisy_l[k]:
                    z = z + (eta * P).sqrt() * xi
            else:
                v = (1.0 - alpha) * v - eta * P * g
                if noisy_l[k]:
                    v = v + (2.0 * alpha * eta * P).sqrt() * xi
                z = z + v
            if progress is not None:
                progress(1)
    return {
        "z": draws.transpose(0, 1).contiguous(),
        "lp": lps.transpose(0, 1).contiguous(),
        "step_size": sizes.unsqueeze(0).expand(C, S).contiguous(),
        "preconditioner": P,
        "last": z,
        "num_steps": K,
        "seconds": time.perf_counter() - t0,
    }


# ============================================================================ posterior
class SGMCMCPosterior(MCMCPosterior):
    r"""Draws of stochastic-gradient MCMC chains: an
    :class:`~pyrobdl.inference.mcmc.MCMCPosterior` (``samples``: site ->
    ``(chains, draws, *shape)``; ``sample_stats``: ``lp`` -- the minibatch estimate of the
    log joint at each draw -- and ``step_size``), so ``predict``, ``to_arviz``,
    :func:`pyrobdl.diagnostics.summary` and the function-space diagnostics work as for HMC.
    The subclasses only name the method (:func:`pyrobdl.load` finds each by its name).

    Attributes:
        fit_info: ``seconds`` (all of the fit), ``sampling_seconds``, ``init_seconds``,
            ``seed``, ``init``, ``chain_method`` (``"vectorized"``), ``num_steps``,
            ``step_size`` (per chain, per data point), ``preconditioner`` (per chain, the
            frozen diagonal), ``settings``.

    Example:
        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, likelihoods
        >>> x = torch.randn(30, 2); y = x.sum(-1)
        >>> model = BayesianNetwork(nn.Linear(2, 1), likelihood=likelihoods.Gaussian(scale=0.5))
        >>> post = SGHMC(num_samples=10, warmup_steps=50, init_steps=50, seed=0, progress=False).fit(model, x, y)
        >>> post.num_chains, post.num_draws, sorted(post.sample_stats)
        (4, 10, ['lp', 'step_size'])
    """

    method = "sgmcmc"

    def get_state(self) -> Dict[str, Any]:
        state = super().get_state()
        for key, kind in (("sampling_seconds", float), ("init_seconds", float), ("num_steps", int)):
            if self.fit_info.get(key) is not None:
                state["fit_info"][key] = kind(self.fit_info[key])
        if "preconditioner" in self.fit_info:
            state["fit_info"]["preconditioner"] = [t.detach().cpu() for t in self.fit_info["preconditioner"]]
        return state


class SGLDPosterior(SGMCMCPosterior):
    """:class:`SGMCMCPosterior` of :class:`SGLD`."""

    method = "sgld"


class SGHMCPosterior(SGMCMCPosterior):
    """:class:`SGMCMCPosterior` of :class:`SGHMC`."""

    method = "sghmc"


class CyclicalSGMCMCPosterior(SGMCMCPosterior):
    """:class:`SGMCMCPosterior` of :class:`CyclicalSGMCMC`; ``fit_info["cycle"]`` gives
    the cycle of every draw."""

    method = "cyclical-sgmcmc"


# ============================================================================ methods
_INIT_CHOICES = ("map", "network")


class SGMCMCMethod(Inference):
    r"""Base of the stochastic-gradient MCMC methods (see the module docs): the settings
    they share, the chains' starting points and the fit. A subclass sets ``sampler`` and
    ``posterior_cls`` and implements :meth:`schedule`.

    Args:
        num_chains: chains run together as one batch (>= 1).
        step_size: the step size per data point, :math:`\eta N` (> 0).
        batch_size: minibatch size (``None``: full batch; a DataLoader brings its own).
        precondition: the RMSprop preconditioner, adapted while no draws are collected
            and frozen while they are.
        init: ``"map"`` (each chain from its own initialisation, trained towards its MAP
            estimate) or ``"network"`` (every chain from the network's weights), then
            jittered.
        init_steps: Adam steps of the MAP pretraining (``init="map"``; 0 skips it).
        init_jitter: standard deviation of the jitter added to the starting points in
            unconstrained space (>= 0).
        diagnose: after sampling, warn when the chains disagree in function space
            (R-hat of the predictions above 1.1, stored in ``fit_info["function_rhat_max"]``);
            off by default (see the module docs: default chains sit in different modes).
        seed, progress: see :class:`~pyrobdl.inference.Inference`.
    """

    family = "sgmcmc"
    sampler: ClassVar[str] = "sgld"
    posterior_cls: ClassVar[type] = SGMCMCPosterior
    #: R-hat (function space) above which ``diagnose`` warns: SG-MCMC draws are biased by
    #: the step size and strongly autocorrelated, so only chains that disagree are flagged
    RHAT_WARNING = 1.1

    def __init__(
        self,
        *,
        num_chains: int = 4,
        step_size: float = 1e-3,
        batch_size: Optional[int] = 32,
        precondition: bool = True,
        init: str = "map",
        init_steps: int = 1000,
        init_jitter: float = 0.01,
        diagnose: bool = False,
        seed: Optional[int] = None,
        progress: bool = True,
    ):
        super().__init__(seed=seed, progress=progress)
        self.num_chains = check_positive_int(num_chains, "num_chains")
        self.step_size = check_positive_float(step_size, "step_size")
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        if not isinstance(precondition, bool):
            raise TypeError(f"precondition must be True or False, got {precondition!r}")
        self.precondition = precondition
        if init not in _INIT_CHOICES:
            raise ValueError(
                f"init must be 'map' (each chain pretrained to its MAP estimate) or 'network' (the network's "
                f"weights), got {init!r}"
            )
        self.init = init
        self.init_steps = check_positive_int(init_steps, "init_steps", minimum=0)
        self.init_jitter = check_positive_float(init_jitter, "init_jitter", allow_zero=True)
        if not isinstance(diagnose, bool):
            raise TypeError(f"diagnose must be True or False, got {diagnose!r}")
        self.diagnose = diagnose

    # -- to implement ------------------------------------------------------------
    def schedule(self, steps_per_epoch: int) -> Dict[str, Any]:
        """The run's plan: ``step_sizes`` (per data point, ``(K,)``), ``keep``, ``noisy``,
        ``adapt`` (per step) and any extra ``fit_info``."""
        raise NotImplementedError

    def settings(self) -> Dict[str, Any]:
        """The settings, as saved with the posterior."""
        return {
            "num_chains": self.num_chains, "step_size": self.step_size, "batch_size": self.batch_size,
            "precondition": self.precondition, "init": self.init, "init_steps": self.init_steps,
            "init_jitter": self.init_jitter, "sampler": self.sampler,
        }

    # -- starting points -----------------------------------------------------------
    def initial_points(self, model: BayesianNetwork, pot: MinibatchPotential, data: Data, batches, y0) -> torch.Tensor:
        """The chains' starting points ``(C, D)`` (see the class docs)."""
        C = self.num_chains
        nets = [model.net]
        if self.init == "map":
            for _ in range(1, C):
                fresh = model.fresh_copy()
                reset_bayesian_parameters(fresh)
                nets.append(fresh.net)
        values: Dict[str, torch.Tensor] = {}
        for pname in model.bayesian_parameters:
            per = [dict(n.named_parameters())[pname].detach() for n in nets]
            values[model.parameter_site(pname)] = torch.stack(per).to(pot.layout.device, pot.layout.dtype).expand(
                (C,) + per[0].shape
            )
        y_start = data.y if data.y is not None else y0
        raw = init_latents(model, type(self).__name__, y_start, (C,))
        sites = latent_site_names(model)
        for short, val in constrainer(model)(raw).items():
            values[sites[short]] = val.detach()
        z = pot.pack(values).clone()
        if self.init == "map" and self.init_steps > 0:
            z = self._pretrain(pot, z, batches)
        if self.init_jitter > 0:
            z = z + self.init_jitter * torch.randn_like(z)
        return z

    def _pretrain(self, pot: MinibatchPotential, z0: torch.Tensor, batches) -> torch.Tensor:
        """Adam on :math:`\\sum_c\\tilde U(z_c)/N` (every chain its own MAP estimate)."""
        z = z0.detach().clone().requires_grad_(True)
        N = pot.num_data

        def loss_fn(step, xb, yb):
            u = pot(z, xb, yb) / N
            return u.sum(), u.detach()

        losses, secs = train(
            loss_fn, batches, [z], num_steps=self.init_steps, lr=INIT_LR, progress=self.progress,
            desc=f"{self.name} (MAP start)", record_shape=(self.num_chains,), what="MAP pretraining loss",
            hint="standardise x and y",
        )
        self._init_info = {"init_seconds": secs, "init_loss": float(losses[-1].mean())}
        return z.detach()

    # -- the fit ---------------------------------------------------------------------
    def _fit(self, model: BayesianNetwork, data: Data) -> SGMCMCPosterior:
        t0 = time.perf_counter()
        self._init_info = {"init_seconds": 0.0}
        N = data.num_data
        pot = MinibatchPotential(model, N, device=data.device, dtype=model.dtype)
        batches = data.batches(model, self.batch_size)
        x0, y0 = next(batches)
        batches = itertools.chain([(x0, y0)], batches)
        plan = self.schedule(data.steps_per_epoch(self.batch_size))
        base_seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        work = x0.shape[0] * pot.dim * self.num_chains
        threads = 1 if data.device.type == "cpu" and work < SMALL_WORK else None
        with eval_mode(model.net), num_threads(threads):
            with torch.no_grad():
                probe = model.net(x0[:2])
                check_likelihood(model, type(self).__name__, probe, y0[:2], constrainer(model)(init_latents(model, "", y0)))
            z0 = self.initial_points(model, pot, data, batches, y0)
            gen = torch.Generator(device=z0.device).manual_seed(base_seed)
            bar = None
            K = len(plan["step_sizes"])
            if self.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=K, desc=self.name, leave=False)
            try:
                out = sgmcmc_sample(
                    pot.value_and_grad, z0, batches,
                    step_sizes=[e / N for e in plan["step_sizes"]], keep=plan["keep"], noisy=plan["noisy"],
                    adapt=plan["adapt"], sampler=self.sampler, friction=getattr(self, "friction", 0.1),
                    precondition=self.precondition, num_data=N, generator=gen,
                    progress=None if bar is None else bar.update,
                )
            finally:
                if bar is not None:
                    bar.close()
        samples = {k: v.detach().contiguous() for k, v in pot.unpack(out["z"]).items()}
        stats = {"lp": out["lp"], "step_size": out["step_size"] * N}
        post = self.posterior_cls(model, samples, stats, x=data.x, y=data.y)
        C = self.num_chains
        post.fit_info = {
            "seconds": time.perf_counter() - t0,
            "sampling_seconds": out["seconds"],
            "init_seconds": self._init_info.get("init_seconds", 0.0),
            "seed": base_seed,
            "init": self.init,
            "chain_method": "vectorized",
            "num_steps": out["num_steps"],
            "step_size": [self.step_size] * C,
            "preconditioner": list(out["preconditioner"].detach().unbind(0)),
            "settings": self.settings(),
            **plan.get("fit_info", {}),
        }
        if self.diagnose and C > 1:
            self._diagnose(post)
        return post

    def _diagnose(self, post: SGMCMCPosterior) -> None:
        from .. import diagnostics

        s = diagnostics.summary(post)
        rh = s.function_rhat_max if s.function_rhat_max is not None else None
        post.fit_info["function_rhat_max"] = rh
        if rh is not None and math.isfinite(rh) and rh > self.RHAT_WARNING:
            warn_user(
                f"the {post.num_chains} {self.name.upper()} chains disagree about the function (R-hat of the "
                f"predictions {rh:.2f} > {self.RHAT_WARNING}): each chain explores its own region, so the predictive "
                "is a mixture of local posteriors. That can be fine for prediction (as for a deep ensemble); for "
                "a converged posterior run longer (num_samples, warmup_steps) or with a larger step_size."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())}, seed={self.seed!r})"


def _thin_plan(warmup: int, num_samples: int, thin: int, step_size: float) -> Dict[str, Any]:
    K = warmup + num_samples * thin
    keep = [k >= warmup and (k - warmup) % thin == thin - 1 for k in range(K)]
    return {
        "step_sizes": [step_size] * K, "keep": keep, "noisy": True, "adapt": [k < warmup for k in range(K)],
        "fit_info": {"thin": thin, "warmup_steps": warmup},
    }


class _ConstantStepMethod(SGMCMCMethod):
    """SGLD and SGHMC: constant step size, burn-in, thinning."""

    def __init__(self, *, num_samples: int = 100, warmup_steps: int = 2000, thin: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.warmup_steps = check_positive_int(warmup_steps, "warmup_steps", minimum=0)
        self.thin = None if thin is None else check_positive_int(thin, "thin")

    def settings(self) -> Dict[str, Any]:
        return dict(super().settings(), num_samples=self.num_samples, warmup_steps=self.warmup_steps, thin=self.thin)

    def schedule(self, steps_per_epoch: int) -> Dict[str, Any]:
        thin = self.thin if self.thin is not None else max(1, steps_per_epoch)
        return _thin_plan(self.warmup_steps, self.num_samples, thin, self.step_size)


@register_method
class SGLD(_ConstantStepMethod):
    r"""Stochastic-gradient Langevin dynamics (Welling & Teh 2011), preconditioned as
    pSGLD (Li et al. 2016) with the preconditioner frozen after burn-in (see the module
    docs): :math:`z \leftarrow z - \frac\eta2 P\nabla\tilde U(z) + \sqrt{\eta P}\,\xi`.

    Args:
        num_samples: draws kept per chain (>= 1).
        warmup_steps: burn-in steps, discarded (>= 0); the preconditioner adapts here.
        thin: steps between kept draws (default: one epoch, :math:`\lfloor N/B\rfloor`).
        others: ``num_chains``, ``step_size``, ``batch_size``, ``precondition``, ``init``,
            ``init_steps``, ``init_jitter``, ``diagnose``, ``seed``, ``progress``: see
            :class:`SGMCMCMethod` (``step_size`` default ``1e-3`` per data point).

    Example::

        posterior = pyrobdl.fit(model, x, y, method="sgld")          # the measured defaults
        posterior = inference.SGLD(num_samples=200, thin=10, num_chains=8).fit(model, x, y)
        pyrobdl.diagnostics.summary(posterior)                        # R-hat, ESS (function space)

    References: M. Welling and Y. W. Teh (ICML 2011); C. Li et al. (AAAI 2016).
    """

    name = "sgld"
    aliases = ("psgld", "langevin")
    sampler = "sgld"
    posterior_cls = SGLDPosterior


@register_method
class SGHMC(_ConstantStepMethod):
    r"""Stochastic-gradient Hamiltonian Monte Carlo (Chen et al. 2014) in the momentum-decay
    parameterisation (Springenberg et al. 2016; Zhang et al. 2020):
    :math:`v \leftarrow (1-\alpha)v - \eta P\nabla\tilde U(z) + \sqrt{2\alpha\eta P}\,\xi`,
    :math:`z \leftarrow z + v` (see the module docs).

    Args:
        friction: :math:`\alpha`, the momentum decay per step, in (0, 1] (default 0.1;
            1 is SGLD with step :math:`2\eta`).
        num_samples, warmup_steps, thin: as for :class:`SGLD`.
        others: ``num_chains``, ``step_size``, ``batch_size``, ``precondition``, ``init``,
            ``init_steps``, ``init_jitter``, ``diagnose``, ``seed``, ``progress``: see
            :class:`SGMCMCMethod` (``step_size`` default ``1e-4`` per data point: with
            friction 0.1 a step moves about as far as SGLD's at ``2e-3``).

    Example::

        posterior = pyrobdl.fit(model, x, y, method="sghmc")
        posterior = inference.SGHMC(friction=0.05, step_size=5e-5).fit(model, x, y)

    References: T. Chen, E. B. Fox and C. Guestrin (ICML 2014); J. T. Springenberg et al.
    (NeurIPS 2016).
    """

    name = "sghmc"
    aliases = ("stochastic-gradient-hmc",)
    sampler = "sghmc"
    posterior_cls = SGHMCPosterior

    def __init__(self, *, friction: float = 0.1, step_size: float = 1e-4, **kwargs):
        super().__init__(step_size=step_size, **kwargs)
        self.friction = _check_friction(friction)

    def settings(self) -> Dict[str, Any]:
        return dict(super().settings(), friction=self.friction)


def _check_friction(friction) -> float:
    if isinstance(friction, bool) or not isinstance(friction, numbers.Real) or not (0.0 < float(friction) <= 1.0):
        raise ValueError(f"friction must be a number in (0, 1] (the momentum decay per step, e.g. 0.1), got {friction!r}")
    return float(friction)


@register_method
class CyclicalSGMCMC(SGMCMCMethod):
    r"""Cyclical SG-MCMC (Zhang, Li, Zhang, Chen & Wilson, ICLR 2020): the cosine cyclical
    step size :func:`cyclical_step_sizes` restarted ``num_cycles`` times; in each cycle an
    exploration stage without noise (the first fraction ``exploration`` = :math:`\beta`)
    moves to a new mode, then the sampling stage (noise on, preconditioner frozen) collects
    ``samples_per_cycle`` draws evenly spaced up to the cycle's end. cSGHMC by default,
    cSGLD with ``sampler="sgld"``.

    Args:
        num_cycles: :math:`M` (>= 1).
        cycle_length: steps per cycle (default: 50 epochs, :math:`50\lfloor N/B\rfloor`).
        samples_per_cycle: draws kept per cycle and chain (>= 1, at most the sampling
            stage's steps).
        exploration: :math:`\beta\in[0, 1)`, the noise-free fraction of each cycle.
        sampler: ``"sghmc"`` or ``"sgld"``.
        friction: :math:`\alpha` of cSGHMC.
        step_size: :math:`\eta_0 N`, the step size per data point at the start of each
            cycle (default ``1e-3`` for cSGHMC, ``1e-2`` for cSGLD).
        others: ``num_chains``, ``batch_size``, ``precondition``, ``init``, ``init_steps``,
            ``init_jitter``, ``diagnose``, ``seed``, ``progress``: see :class:`SGMCMCMethod`.

    Example::

        posterior = pyrobdl.fit(model, x, y, method="cyclical-sgmcmc")
        posterior.fit_info["cycle"]              # the cycle of each draw
        inference.CyclicalSGMCMC(num_cycles=8, sampler="sgld").fit(model, x, y)

    Reference: R. Zhang et al., *Cyclical Stochastic Gradient MCMC for Bayesian Deep
    Learning* (ICLR 2020).
    """

    name = "cyclical-sgmcmc"
    aliases = ("csgmcmc", "csghmc", "cyclical-sghmc")
    posterior_cls = CyclicalSGMCMCPosterior

    def __init__(
        self,
        *,
        num_cycles: int = 8,
        cycle_length: Optional[int] = None,
        samples_per_cycle: int = 10,
        exploration: float = 0.8,
        sampler: str = "sghmc",
        friction: float = 0.1,
        step_size: Optional[float] = None,
        **kwargs,
    ):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS} (cSGHMC or cSGLD), got {sampler!r}")
        if step_size is None:
            step_size = 1e-3 if sampler == "sghmc" else 1e-2
        super().__init__(step_size=step_size, **kwargs)
        self.sampler = sampler
        self.friction = _check_friction(friction)
        self.num_cycles = check_positive_int(num_cycles, "num_cycles")
        self.cycle_length = None if cycle_length is None else check_positive_int(cycle_length, "cycle_length")
        self.samples_per_cycle = check_positive_int(samples_per_cycle, "samples_per_cycle")
        if isinstance(exploration, bool) or not isinstance(exploration, numbers.Real) or not 0.0 <= float(exploration) < 1.0:
            raise ValueError(f"exploration must be a fraction in [0, 1) (the noise-free part of a cycle, e.g. 0.8), got {exploration!r}")
        self.exploration = float(exploration)

    def settings(self) -> Dict[str, Any]:
        return dict(
            super().settings(), num_cycles=self.num_cycles, cycle_length=self.cycle_length,
            samples_per_cycle=self.samples_per_cycle, exploration=self.exploration, friction=self.friction,
        )

    def schedule(self, steps_per_epoch: int) -> Dict[str, Any]:
        L = self.cycle_length if self.cycle_length is not None else 50 * max(1, steps_per_epoch)
        M = self.num_cycles
        K = M * L
        r = cycle_positions(K, M).tolist()
        sizes = cyclical_step_sizes(K, num_cycles=M, step_size=self.step_size).tolist()
        noisy = [ri >= self.exploration for ri in r]
        first = next((j for j in range(L) if noisy[j]), None)
        stage = 0 if first is None else L - first
        if stage < self.samples_per_cycle:
            raise ValueError(
                f"the sampling stage of a cycle has {stage} steps (cycle_length {L} x (1 - exploration "
                f"{self.exploration})) but samples_per_cycle={self.samples_per_cycle}; lower samples_per_cycle or "
                "exploration, or lengthen the cycles"
            )
        # samples_per_cycle states evenly spaced over the sampling stage, the last one the cycle's end
        # state; the state entering step k (after k updates) ends offset ((k - 1) mod L) + 1 into cycle
        # (k - 1) // L, so one extra step (no noise, discarded) keeps the last cycle's end state too
        spc = self.samples_per_cycle
        offsets = {L - round(j * stage / spc) for j in range(spc)}
        keep = [False] + [((k - 1) % L) + 1 in offsets for k in range(1, K + 1)]
        cycle = [(k - 1) // L for k in range(1, K + 1) if keep[k]]
        sizes = sizes + [0.0]
        noisy = noisy + [False]
        # the preconditioner adapts during the first cycle (exploration, then with the noise on, so that it
        # sees the gradients' spread at the posterior's scale rather than their vanishing size at a mode)
        # and is frozen from the second cycle on
        adapt = [k < L for k in range(K + 1)]
        return {
            "step_sizes": sizes, "keep": keep, "noisy": noisy, "adapt": adapt,
            "fit_info": {"cycle": cycle, "cycle_length": L},
        }
