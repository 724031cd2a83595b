r"""ChEES-HMC: many chains as one batched tensor program, with the trajectory length tuned
across chains.

Every chain takes the same number of leapfrog steps with the same step size at every
iteration, so the chains are a batch dimension of every matmul: one gradient evaluation
serves all :math:`C` chains, and the cost per chain-step falls as :math:`C` grows until
the arithmetic dominates. The tuning pools what the chains see (Hoffman, Radul & Sountsov
2021):

* **Trajectory length** :math:`T` maximises the ChEES criterion (Change in the Estimator
  of the Expected Square),

  .. math::

      \mathrm{ChEES}(T) = \tfrac14\,\mathbb E\Big[\big(\|\tilde z' - \mathbb E\tilde z\|^2
      - \|\tilde z - \mathbb E\tilde z\|^2\big)^2\Big],

  by stochastic gradient ascent on :math:`\log T` (Adam without momentum, updates clipped
  to :math:`\pm0.35`), with the per-chain gradient estimate
  :math:`t\,(\|\tilde z'_c-\bar{\tilde z}'\|^2-\|\tilde z_c-\bar{\tilde z}\|^2)\,
  (\tilde z'_c-\bar{\tilde z}')\cdot\tilde v'_c` weighted by the acceptance probabilities.
  Positions are measured in the metric of the mass matrix (:math:`\tilde z = M^{1/2} z`,
  so every coordinate counts on the scale of its posterior spread).
* **Jitter.** Iteration :math:`n` integrates for :math:`t_n = h_n T` with :math:`h_n` the
  base-2 Halton sequence in :math:`(0, 1)`, i.e. :math:`\lceil t_n/\epsilon\rceil`
  leapfrog steps, which breaks the periodicities of a fixed length.
* **Step size** :math:`\epsilon`: dual averaging (Pyro's
  :class:`~pyro.ops.dual_averaging.DualAveraging`) on the *harmonic mean* of the chains'
  acceptance probabilities, targeting 0.651 (Beskos et al. 2013): the harmonic mean is
  dominated by the worst chains, so no chain is left stuck.
* **Mass matrix**: diagonal, the pooled variance of all chains' states over doubling
  windows of the warm-up (regularised towards 1e-3 like Stan's), after which the step size
  is searched again and its averaging restarted.
* **Stragglers.** At the end of the first warm-up buffer and of every mass-matrix window
  but the last, a superchain (a chain, without superchains) whose mean :math:`\log p` lies
  more than :math:`4\sqrt{D/2} + 5` nats below the median one's is moved to
  the state of a chain drawn from the others: it sits in a mode of negligible mass that it
  cannot leave within the warm-up, and its low acceptance would shrink the shared step size
  of every chain. The draws are taken after warm-up, so this changes no stationary
  distribution; ``fit_info["restarted_chains"]`` counts the moves.

After warm-up :math:`\epsilon` (the dual-averaging average), :math:`T` and :math:`M` are
fixed, so the draws are a valid Markov chain per chain (jittered HMC with a fixed
distribution of lengths leaves the target invariant).

References:
    M. D. Hoffman, A. Radul and P. Sountsov, *An Adaptive-MCMC Scheme for Setting
    Trajectory Lengths in Hamiltonian Monte Carlo*, AISTATS (2021);
    A. Beskos et al., *Optimal tuning of the hybrid Monte Carlo algorithm*, Bernoulli 19 (2013);
    M. D. Hoffman and A. Gelman, *The No-U-Turn Sampler* (JMLR 2014), Algorithms 4-6 (step-size
    search and dual averaging).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import pyro
import torch
from pyro.ops.dual_averaging import DualAveraging

from ..._util import check_positive_int, eval_mode, warn_user
from ...network import BayesianNetwork
from ..base import Data
from ..registry import register_method
from .base import MCMCMethod
from .posterior import MCMCPosterior
from .potential import FlatPotential, fresh_function
from .runner import SMALL_WORK, num_threads

__all__ = ["ChEESHMC", "ChEESPosterior", "chees_sample", "halton", "OPTIMAL_ACCEPT"]

#: the acceptance rate that optimises the efficiency of HMC in high dimension (Beskos et al. 2013)
OPTIMAL_ACCEPT = 0.651
#: an energy error above this marks a divergent transition
DIVERGENCE_THRESHOLD = 1000.0
#: the largest change of :math:`\log T` in one adaptation step
LOG_UPDATE_CLIP = 0.35
#: the learning rate and second-moment decay of the Adam steps on :math:`\log T` (0.025 in
#: Hoffman et al.; 0.05 reached the trajectory length the toy BNN of ``bench_mcmc.py`` needs
#: within 300 warm-up iterations, see the docs page "How the defaults were chosen")
TRAJECTORY_LR = 0.05
TRAJECTORY_BETA2 = 0.95
#: the first mass-matrix window (iterations); later windows double, like Stan's
FIRST_WINDOW = 25
#: during warm-up, chains (superchains) whose mean log density is more than
#: ``STRAGGLER_SD`` :math:`\sqrt{D/2}` + ``STRAGGLER_NATS`` nats below the median group's are
#: moved to another chain's state (the additive nats keep the exponential-like tail of
#: :math:`\log p` in very few dimensions from triggering it by chance)
STRAGGLER_SD = 4.0
STRAGGLER_NATS = 5.0
#: leapfrog steps per compiled call (``compile=True``)
STEPS_PER_CALL = 8
#: the trajectory length starts at this many leapfrog steps of the initial step size
INITIAL_STEPS = 10

BatchedValueGrad = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def halton(n: int, base: int = 2) -> float:
    """The ``n``-th element (``n >= 1``) of the Halton (van der Corput) sequence in base
    ``base``: an evenly spread sequence in (0, 1).

    Example:
        >>> [halton(n) for n in range(1, 5)]
        [0.5, 0.25, 0.75, 0.125]
    """
    out, f = 0.0, 1.0 / base
    while n > 0:
        n, digit = divmod(n, base)
        out += f * digit
        f /= base
    return out


def batched_value_and_grad(potential: Callable[[torch.Tensor], torch.Tensor]) -> BatchedValueGrad:
    """``z (C, D) -> (U(z) (C,), ∇U(z) (C, D))`` for a potential that maps ``(C, D)`` to
    ``(C,)`` with rows independent (one backward pass through ``U.sum()`` gives every
    row's gradient)."""

    def value_and_grad(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            u = potential(zz)
            (g,) = torch.autograd.grad(u.sum(), zz)
        return u.detach(), g

    return value_and_grad


class _Windows:
    """The warm-up schedule: a first buffer (step size and length only), mass-matrix
    windows doubling from :data:`FIRST_WINDOW` iterations, a last buffer of 10%."""

    def __init__(self, warmup: int, adapt_mass: bool):
        self.ends: List[int] = []
        if not adapt_mass or warmup < 40:
            return
        start, stop = max(1, int(0.15 * warmup)), int(0.9 * warmup)
        size, pos = FIRST_WINDOW, start
        while pos + size < stop:
            nxt = pos + size
            if nxt + 2 * size > stop:  # the last window takes the rest
                nxt = stop
            self.ends.append(nxt)
            pos, size = nxt, 2 * size
        if not self.ends or self.ends[-1] != stop:
            self.ends.append(stop)
        self.start = start

    def collecting(self, it: int) -> bool:
        return bool(self.ends) and self.start <= it < self.ends[-1]


class _Trajectory:
    """Jittered leapfrog trajectories of every chain at once.

    With ``compile=True`` the leapfrog steps run as :func:`torch.compile`-d calls of
    :data:`STEPS_PER_CALL` steps (and single steps for the rest): gradient, momentum and
    position updates of all chains in one graph, so the per-call overhead is paid once per
    several steps. The compiled calls are checked against the eager steps on first use and
    replaced by them (with a warning) if compilation fails or disagrees."""

    def __init__(self, potential: Callable[[torch.Tensor], torch.Tensor], generator: Optional[torch.Generator],
                 compile: bool = False):
        self.potential = potential
        self.vg = batched_value_and_grad(potential)
        self.gen = generator
        self.want_compile = bool(compile)
        self.compiled: Optional[Dict[int, Callable]] = None

    def momentum(self, like: torch.Tensor, inv_mass: torch.Tensor) -> torch.Tensor:
        r = torch.randn(like.shape, generator=self.gen, device=like.device, dtype=like.dtype)
        return r / inv_mass.sqrt()

    def _eager(self, z, r, g, eps: float, n: int, inv_mass):
        half = 0.5 * eps
        z, r = z.clone(), r.clone()
        u = None
        for _ in range(n):
            r.sub_(g, alpha=half)
            z.addcmul_(inv_mass, r, value=eps)
            u, g = self.vg(z)
            r.sub_(g, alpha=half)
        return z, u, g, r

    def _make_compiled(self, k: int) -> Callable:
        potential = self.potential

        def total(z):
            u = potential(z)
            return u.sum(), u

        vg = torch.func.grad_and_value(total, has_aux=True)

        def steps(z, r, g, eps, inv_mass):
            half = 0.5 * eps
            u = None
            for _ in range(k):
                r = r - half * g
                z = z + eps * inv_mass * r
                g, (_, u) = vg(z)
                r = r - half * g
            return z, u, g, r

        return torch.compile(fresh_function(steps), fullgraph=True, dynamic=False)

    def _setup_compiled(self, z, u, g, inv_mass) -> None:
        self.compiled = {}
        try:
            fns = {k: self._make_compiled(k) for k in (STEPS_PER_CALL, 1)}
            r = self.momentum(z, inv_mass)
            eps = torch.tensor(1e-3, device=z.device, dtype=z.dtype)
            for k, fn in fns.items():
                want = self._eager(z, r, g, 1e-3, k, inv_mass)
                got = fn(z, r, g, eps, inv_mass)
                for a, b in zip(got, want):
                    if torch.isfinite(b).all() and not torch.allclose(a, b, rtol=1e-3, atol=1e-4 * (1 + float(b.abs().max()))):
                        raise RuntimeError("the compiled leapfrog steps disagree with the eager ones")
            self.compiled = fns
        except Exception as e:  # no C++ compiler, an unsupported op, ...
            warn_user(
                f"torch.compile failed for the ChEES-HMC leapfrog ({type(e).__name__}: {str(e)[:200]}); "
                "continuing with eager autograd (same draws up to rounding, slower). Pass compile=False to silence this."
            )

    def run(self, z, u, g, r, eps: float, n: int, inv_mass):
        """``n`` leapfrog steps of size ``eps`` from ``(z, r)``; returns the end point, its
        potential, gradient and momentum."""
        if self.want_compile and self.compiled is None:
            self._setup_compiled(z, u, g, inv_mass)
        if not self.compiled:
            return self._eager(z, r, g, eps, n, inv_mass)
        e = torch.tensor(eps, device=z.device, dtype=z.dtype)
        full, rest = divmod(n, STEPS_PER_CALL)
        for _ in range(full):
            z, u, g, r = self.compiled[STEPS_PER_CALL](z, r, g, e, inv_mass)
        for _ in range(rest):
            z, u, g, r = self.compiled[1](z, r, g, e, inv_mass)
        return z, u, g, r

    def transition(self, z, u, g, eps: float, n: int, inv_mass, r0=None, uniform=None):
        """One HMC transition of every chain: momentum (``r0``, drawn when not given),
        ``n`` leapfrog steps, Metropolis test (against ``uniform``, drawn when not given).
        Returns the new state, its potential and gradient, the proposal and its momentum,
        the acceptance probabilities, the divergences and the energies."""
        if r0 is None:
            r0 = self.momentum(z, inv_mass)
        h0 = u + 0.5 * (r0 * r0 * inv_mass).sum(-1)
        zp, up, gp, rp = self.run(z, u, g, r0, eps, n, inv_mass)
        h1 = up + 0.5 * (rp * rp * inv_mass).sum(-1)
        delta = h0 - h1
        finite = torch.isfinite(delta) & torch.isfinite(zp).all(-1)
        delta = torch.where(finite, delta, torch.full_like(delta, -math.inf))
        accept_prob = delta.clamp(max=0.0).exp()
        diverging = ~finite | (-delta > DIVERGENCE_THRESHOLD)
        if uniform is None:
            uniform = torch.rand(delta.shape, generator=self.gen, device=delta.device, dtype=delta.dtype)
        accept = (uniform.log() < delta) & finite
        keep = accept.unsqueeze(-1)
        z_new = torch.where(keep, zp, z)
        g_new = torch.where(keep, gp, g)
        u_new = torch.where(accept, up, u)
        energy = torch.where(accept, h1, h0)
        return z_new, u_new, g_new, zp, rp, accept_prob, diverging, energy


def _restart_stragglers(z, u, g, num_groups: Optional[int], generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    r"""Warm-up only: move the chains (or whole superchains) whose mean log density lies
    more than :data:`STRAGGLER_SD` :math:`\times\sqrt{D/2}` + :data:`STRAGGLER_NATS` nats
    below the median group's (the
    spread of :math:`\log p` in a :math:`D`-dimensional typical set is about
    :math:`\sqrt{D/2}`) to the state of a chain drawn from the other groups. Such a chain
    sits in a mode of negligible posterior mass that it cannot leave within the warm-up, and
    its low acceptance would shrink the step size of every chain. Returns the new state and
    the number of chains moved."""
    C, D = z.shape
    K = num_groups or C
    per = C // K
    lp = -u.view(K, per).mean(1)
    bad = lp < lp.median() - (STRAGGLER_SD * math.sqrt(D / 2.0) + STRAGGLER_NATS)
    if not bool(bad.any()):
        return z, u, g, 0
    donors = (~bad).repeat_interleave(per).nonzero().flatten()
    pick = donors[torch.randint(len(donors), (int(bad.sum()),), generator=generator, device=donors.device)]
    src = torch.arange(C, device=z.device)
    src.view(K, per)[bad] = pick.unsqueeze(-1)
    return z[src], u[src], g[src], int(bad.sum()) * per


def _harmonic_mean(a: torch.Tensor, ok: torch.Tensor) -> float:
    a = a[ok]
    if a.numel() == 0:
        return 0.0
    hm = float(1.0 / (1.0 / a.clamp(min=1e-20)).mean())
    return hm if math.isfinite(hm) else 0.0


def _chees_gradient(z0, zp, rp, accept_prob, diverging, inv_mass, t: float) -> float:
    """The acceptance-weighted ChEES gradient with respect to :math:`\\log T` (positions in
    the metric of the mass matrix, where the velocity is the momentum)."""
    w = torch.where(diverging, torch.zeros_like(accept_prob), accept_prob)
    if float(w.sum()) <= 0:
        return 0.0
    ok = ~diverging
    scale = inv_mass.rsqrt()
    zp_s, z0_s = zp[ok] * scale, z0[ok] * scale
    wk = w[ok]
    mp = (wk.unsqueeze(-1) * zp_s).sum(0) / wk.sum()
    cp, c0 = zp_s - mp, z0_s - z0_s.mean(0)
    rp_s = rp[ok] * inv_mass.sqrt()
    per_chain = t * (cp.pow(2).sum(-1) - c0.pow(2).sum(-1)) * (cp * rp_s).sum(-1)
    grad = float((wk * per_chain).sum() / wk.sum())
    return grad if math.isfinite(grad) else 0.0


def _find_step_size(traj: _Trajectory, z, u, g, inv_mass, eps: float, target: float = 0.5) -> float:
    """Hoffman & Gelman's Algorithm 4 on the mean acceptance of one leapfrog step over the
    chains: double or halve ``eps`` until the acceptance crosses ``target``."""

    def accept(e):
        *_, a, _, _ = traj.transition(z, u, g, e, 1, inv_mass)
        return float(a.mean())

    a = accept(eps)
    direction = 1.0 if a > target else -1.0
    for _ in range(60):
        nxt = eps * (2.0 ** direction)
        an = accept(nxt)
        if (direction > 0 and an < target) or (direction < 0 and an > target):
            return eps if direction > 0 else nxt
        eps = nxt
        if not (1e-10 < eps < 1e4):
            break
    return eps


class _Adaptation:
    """Step size (dual averaging on the harmonic-mean acceptance) and trajectory length
    (Adam ascent on the ChEES criterion, then averaged) of a warm-up."""

    def __init__(self, eps: float, target: float, max_steps: int):
        self.target, self.max_steps = target, max_steps
        self.log_t = math.log(INITIAL_STEPS * eps)
        self.restart(eps)
        self.v, self.adam_t = 0.0, 0

    def restart(self, eps: float) -> None:
        self.eps = eps
        self.da = DualAveraging(prox_center=math.log(10.0 * eps))
        self.k = 0

    @property
    def trajectory(self) -> float:
        return min(max(math.exp(self.log_t), self.eps), self.max_steps * self.eps)

    def update(self, accept_hm: float, grad: float, adapt_step: bool) -> None:
        self.k += 1
        if adapt_step:
            self.da.step(self.target - accept_hm)
            x_t, _ = self.da.get_state()
            if math.isfinite(x_t):
                self.eps = math.exp(x_t)
        # Adam without momentum on log T, ascent, clipped; averaged with weight k^-1/2
        self.adam_t += 1
        self.v = TRAJECTORY_BETA2 * self.v + (1 - TRAJECTORY_BETA2) * grad * grad
        v_hat = self.v / (1 - TRAJECTORY_BETA2 ** self.adam_t)
        step = TRAJECTORY_LR * grad / (math.sqrt(v_hat) + 1e-8)
        step = max(-LOG_UPDATE_CLIP, min(LOG_UPDATE_CLIP, step))
        self.log_t = math.log(self.trajectory) + step * self.k ** -0.5

    def final_step_size(self, adapt_step: bool) -> float:
        if not adapt_step or self.k == 0:
            return self.eps
        _, x_avg = self.da.get_state()
        return math.exp(x_avg) if math.isfinite(x_avg) else self.eps


def chees_sample(
    potential: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    num_samples: int,
    warmup_steps: int,
    step_size: Optional[float] = None,
    target_accept: float = OPTIMAL_ACCEPT,
    adapt_step_size: bool = True,
    adapt_mass_matrix: bool = True,
    max_leapfrog_steps: int = 1000,
    compile: bool = False,
    generator: Optional[torch.Generator] = None,
    progress: Optional[Callable[[int], None]] = None,
    num_superchains: Optional[int] = None,
) -> Dict[str, Any]:
    r"""Run ChEES-HMC from the rows of ``z0`` (``(C, D)``, one per chain) on a batched
    potential ``U: (C, D) -> (C,)`` whose rows are independent (the chains' negative log
    densities, unnormalised). ``compile=True`` compiles the leapfrog steps.
    ``num_superchains``: the rows form that many consecutive groups that started together
    (a straggling group is moved as a whole during warm-up; default: every row alone).

    Returns a dict: ``z`` ``(C, num_samples, D)``; ``stats`` and ``warmup_stats``
    (name -> ``(C, iterations)``: ``acceptance_rate``, ``diverging``, ``energy``,
    ``n_steps``, ``step_size``, ``lp``); the adapted ``step_size``, ``trajectory_length``
    and ``inverse_mass_matrix`` ``(D,)``; the ``gradient_evaluations`` (per chain).

    Example:
        >>> import torch
        >>> def potential(z):                      # N(0, I) in 2-D
        ...     return 0.5 * (z * z).sum(-1)
        >>> out = chees_sample(potential, torch.randn(16, 2), num_samples=200, warmup_steps=200,
        ...                    generator=torch.Generator().manual_seed(0))
        >>> out["z"].shape
        torch.Size([16, 200, 2])
        >>> abs(float(out["z"].reshape(-1, 2).var(0).mean()) - 1.0) < 0.15
        True
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    warmup_steps = check_positive_int(warmup_steps, "warmup_steps", minimum=0)
    max_leapfrog_steps = check_positive_int(max_leapfrog_steps, "max_leapfrog_steps")
    if z0.dim() != 2:
        raise ValueError(f"z0 must have shape (num_chains, dim), got {tuple(z0.shape)}")
    C, D = z0.shape
    traj = _Trajectory(potential, generator, compile=compile)
    z = z0.detach().clone()
    u, g = traj.vg(z)
    if not bool(torch.isfinite(u).all()) or not bool(torch.isfinite(g).all()):
        bad = (~torch.isfinite(u) | ~torch.isfinite(g).all(-1)).nonzero().flatten().tolist()
        raise ValueError(
            f"the potential or its gradient is not finite at the initial point of chain(s) {bad[:10]}; "
            "start the chains elsewhere (init='prior' or 'map', or finite init values)"
        )
    inv_mass = torch.ones(D, device=z.device, dtype=z.dtype)
    if step_size is None:
        step_size = _find_step_size(traj, z, u, g, inv_mass, 0.1)
    adapt = _Adaptation(float(step_size), target_accept, max_leapfrog_steps)
    windows = _Windows(warmup_steps, adapt_mass_matrix)
    win_sum = torch.zeros(D, device=z.device, dtype=torch.float64)
    win_sq = torch.zeros_like(win_sum)
    win_n = 0
    total = warmup_steps + num_samples
    keys = ("acceptance_rate", "diverging", "energy", "n_steps", "step_size", "lp")
    stats = {k: torch.zeros(total, C, device=z.device, dtype=torch.bool if k == "diverging" else z.dtype) for k in keys}
    draws = torch.empty(num_samples, C, D, device=z.device, dtype=z.dtype)
    eps, T = adapt.eps, adapt.trajectory
    grad_evals = 0
    restarted = 0
    for it in range(total):
        warm = it < warmup_steps
        if warm:
            eps, T = adapt.eps, adapt.trajectory
        t = halton(it + 1) * T
        n = min(max_leapfrog_steps, max(1, math.ceil(t / eps)))
        z_prev = z
        z, u, g, zp, rp, a, div, energy = traj.transition(z, u, g, eps, n, inv_mass)
        grad_evals += n
        for k, v in (("acceptance_rate", a), ("diverging", div), ("energy", energy), ("lp", -u)):
            stats[k][it] = v
        stats["n_steps"][it] = n
        stats["step_size"][it] = eps
        if warm:
            if windows.ends and (it + 1 == windows.start or it + 1 in windows.ends[:-1]):
                z, u, g, moved = _restart_stragglers(z, u, g, num_superchains, generator)
                restarted += moved
            grad = _chees_gradient(z_prev, zp, rp, a, div, inv_mass, t)
            adapt.update(_harmonic_mean(a, ~div), grad, adapt_step_size)
            if windows.collecting(it):
                zd = z.double()
                win_sum += zd.sum(0)
                win_sq += (zd * zd).sum(0)
                win_n += C
                if it + 1 in windows.ends:
                    mean = win_sum / win_n
                    var = (win_sq / win_n - mean * mean).clamp(min=0) * win_n / max(win_n - 1, 1)
                    var = (win_n / (win_n + 5.0)) * var + 1e-3 * (5.0 / (win_n + 5.0))
                    inv_mass = var.to(z.dtype)
                    win_sum.zero_()
                    win_sq.zero_()
                    win_n = 0
                    if adapt_step_size:
                        adapt.restart(_find_step_size(traj, z, u, g, inv_mass, adapt.eps))
            if it + 1 == warmup_steps:
                adapt.eps = adapt.final_step_size(adapt_step_size)
                eps, T = adapt.eps, adapt.trajectory
        else:
            draws[it - warmup_steps] = z
        if progress is not None:
            progress(1)
    W = warmup_steps
    return {
        "z": draws.transpose(0, 1).contiguous(),
        "stats": {k: v[W:].transpose(0, 1).contiguous() for k, v in stats.items()},
        "warmup_stats": {k: v[:W].transpose(0, 1).contiguous() for k, v in stats.items()},
        "step_size": eps,
        "trajectory_length": T,
        "inverse_mass_matrix": inv_mass,
        "gradient_evaluations": grad_evals,
        "restarted_chains": restarted,
    }


class ChEESPosterior(MCMCPosterior):
    """:class:`~pyrobdl.inference.mcmc.MCMCPosterior` of :class:`ChEESHMC`: many chains of
    draws, predicting from :data:`PREDICT_DRAWS` of them (thinned evenly across all
    chains) unless told otherwise.

    Example (not run here: sampling takes seconds)::

        posterior = inference.ChEESHMC(seed=0).fit(model, x, y)
        posterior.num_chains, posterior.num_draws          # (32, 300)
        posterior.fit_info["trajectory_length"]            # the adapted T
    """

    method = "chees-hmc"
    #: the most draws :meth:`predict` uses by default (every chain contributes, thinned evenly)
    PREDICT_DRAWS = 1000

    @property
    def default_num_samples(self) -> int:
        """:data:`PREDICT_DRAWS`, or every draw when there are fewer."""
        if not self.samples:
            return self.PREDICT_DRAWS
        C, S = self._shape()
        return min(self.PREDICT_DRAWS, C * S)

    def get_state(self) -> Dict[str, Any]:
        state = super().get_state()
        for key, kind in (("num_superchains", int), ("trajectory_length", float), ("gradient_evaluations", int)):
            if self.fit_info.get(key) is not None:
                state["fit_info"][key] = kind(self.fit_info[key])
        return state


@register_method
class ChEESHMC(MCMCMethod):
    r"""ChEES-HMC (Hoffman, Radul & Sountsov, 2021): many chains run as one batched tensor
    program, with the step size, a diagonal mass matrix and a jittered trajectory length
    tuned across the chains. pyrobdl's reference sampler for small networks.

    Where :class:`NUTS` spends its time in a tree built in Python for one chain at a time
    (one process per chain), ChEES-HMC gives every chain the same number of leapfrog steps,
    so one batched gradient evaluation serves all chains and many short chains replace a
    few long ones. The diagnostics (R-hat, ESS, nested R-hat) are computed over all chains.

    Args:
        num_chains: chains (default 32; 8-256 suit a CPU, thousands a GPU).
        num_samples: draws kept per chain (default 300).
        warmup_steps: adaptation iterations (default 500).
        target_accept: the harmonic mean of the chains' acceptance probabilities that the
            step-size adaptation aims at (default 0.651, Beskos et al. 2013). Raise it
            (0.8-0.9) when there are divergences.
        max_leapfrog_steps: cap on the leapfrog steps of one iteration (default 1000).
        init: where the chains start (default ``"map"``: a short Adam run from a prior
            draw per chain, all chains in one batched pass, so the chains start in
            different modes but not in the prior's far tails); ``"prior"``, ``"vi"``, a
            fitted SVIPosterior or site values work as for :class:`NUTS`.
        init_steps: Adam steps of ``init="map"`` (default 200).
        num_superchains: groups of chains that start from the same point, for nested
            R-hat (Margossian et al. 2022): ``num_chains`` must be a multiple of it.
            Default: ``num_chains // 4`` when that is at least 2 and divides
            ``num_chains`` (8 superchains of 4 chains for 32), else every chain starts
            on its own and nested R-hat is not reported.
        step_size, adapt_step_size, adapt_mass_matrix, compile, diagnose, seed, progress:
            see :class:`~pyrobdl.inference.mcmc.MCMCMethod`.

    Example::

        posterior = pyrobdl.fit(model, x, y, method="chees-hmc", seed=0)
        pyrobdl.diagnostics.summary(posterior)        # R-hat over 32 chains, nested R-hat
        pred = posterior.predict(x_test)              # 1,000 draws thinned across chains

    References:
        M. D. Hoffman, A. Radul and P. Sountsov, *An Adaptive-MCMC Scheme for Setting
        Trajectory Lengths in Hamiltonian Monte Carlo*, AISTATS (2021);
        C. C. Margossian et al., *Nested R-hat: assessing the convergence of Markov chain
        Monte Carlo when running many short chains*, arXiv:2110.13017 (2022).
    """

    name = "chees-hmc"
    aliases = ("chees",)
    posterior_cls = ChEESPosterior
    SETTINGS = MCMCMethod.SETTINGS + ("max_leapfrog_steps", "num_superchains")

    def __init__(
        self,
        *,
        num_chains: int = 32,
        num_samples: int = 300,
        warmup_steps: int = 500,
        target_accept: float = OPTIMAL_ACCEPT,
        max_leapfrog_steps: int = 1000,
        init="map",
        init_steps: int = 200,
        num_superchains: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(
            num_chains=num_chains, num_samples=num_samples, warmup_steps=warmup_steps,
            target_accept=target_accept, init=init, init_steps=init_steps, **kwargs,
        )
        self.max_leapfrog_steps = check_positive_int(max_leapfrog_steps, "max_leapfrog_steps")
        C = self.num_chains
        if num_superchains is None:
            K = C // 4
            num_superchains = K if K >= 2 and C % K == 0 else None
        else:
            num_superchains = check_positive_int(num_superchains, "num_superchains")
            if num_superchains < 2 or C % num_superchains:
                raise ValueError(
                    f"num_superchains must be at least 2 and divide num_chains={C}, got {num_superchains}; "
                    f"e.g. num_superchains={max(2, C // 4)} with num_chains={4 * max(2, C // 4)}"
                )
        self.num_superchains = num_superchains

    def _fit(self, model: BayesianNetwork, data: Data) -> ChEESPosterior:
        self._check_full_batch(data)
        x, y = data.x, data.y
        base_seed = self._base_seed()
        t0 = time.perf_counter()
        pot = FlatPotential(model, x, y)
        torch.manual_seed(base_seed)
        # a small problem runs faster on one intra-op thread (threads only add synchronisation)
        work = x.shape[0] * pot.dim * self.num_chains
        threads = 1 if x.device.type == "cpu" and work < SMALL_WORK else None
        with eval_mode(model.net), pyro.validation_enabled(False), num_threads(threads):
            K = self.num_superchains or self.num_chains
            init, init_kind = self.initial_points(pot, model, x, y, num=K)
            init = init.repeat_interleave(self.num_chains // K, dim=0)
            gen = torch.Generator(device=init.device).manual_seed(base_seed)
            bar = None
            if self.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=self.warmup_steps + self.num_samples, desc=self.name, leave=False)
            try:
                out = chees_sample(
                    pot.function, init.detach(),
                    num_samples=self.num_samples, warmup_steps=self.warmup_steps,
                    step_size=self.step_size, target_accept=self.target_accept,
                    adapt_step_size=self.adapt_step_size, adapt_mass_matrix=self.adapt_mass_matrix,
                    max_leapfrog_steps=self.max_leapfrog_steps, compile=self._use_compile(), generator=gen,
                    progress=None if bar is None else bar.update, num_superchains=self.num_superchains,
                )
            finally:
                if bar is not None:
                    bar.close()
        seconds = time.perf_counter() - t0
        samples = {k: v.contiguous() for k, v in pot.unpack(out["z"]).items()}
        post = self.posterior_cls(model, samples, out["stats"], x=x, y=y)
        C = self.num_chains
        post.fit_info = {
            "seconds": seconds,
            "seed": base_seed,
            "init": init_kind,
            "chain_method": "vectorized",
            "num_superchains": self.num_superchains,
            "step_size": [out["step_size"]] * C,
            "trajectory_length": out["trajectory_length"],
            "inverse_mass_matrix": [out["inverse_mass_matrix"]] * C,
            "gradient_evaluations": out["gradient_evaluations"],
            "restarted_chains": out["restarted_chains"],
            "warmup_stats": out["warmup_stats"],
            "settings": self._settings(),
        }
        if self.diagnose:
            from ... import diagnostics

            diagnostics.warn_if_problematic(post)
        return post
