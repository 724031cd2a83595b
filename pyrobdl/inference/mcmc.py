r"""Hamiltonian Monte Carlo and the No-U-Turn Sampler for small Bayesian networks.

HMC (Neal, 2011) samples the posterior over the unconstrained latent vector
:math:`z` (every weight, plus e.g. :math:`\log\sigma` for a learned noise scale)
by simulating Hamiltonian dynamics with the potential energy

.. math::

    U(z) = -\log p(y\mid x, \theta(z)) - \log p(\theta(z)) - \log\left|\det J_{\theta}(z)\right|

and kinetic energy :math:`K(r) = \tfrac12 r^\top M^{-1} r`, with the leapfrog
integrator

.. math::

    r_{t+\epsilon/2} = r_t - \tfrac\epsilon2\nabla U(z_t),\quad
    z_{t+\epsilon} = z_t + \epsilon M^{-1} r_{t+\epsilon/2},\quad
    r_{t+\epsilon} = r_{t+\epsilon/2} - \tfrac\epsilon2\nabla U(z_{t+\epsilon}),

followed by a Metropolis correction. NUTS (Hoffman & Gelman, 2014) picks the
trajectory length itself by doubling the trajectory until it makes a U-turn;
this implementation follows Stan's multinomial variant (Betancourt, 2017) with
the generalised U-turn criterion and its checks across merged sub-trees.

**Why it is fast.** Plain ``pyro.infer.MCMC(NUTS(model))`` re-runs the Pyro
model under a trace for every leapfrog step, and Pyro's tree building handles
dictionaries of per-site tensors; on a small BNN almost all the time is that
Python overhead. Here the model becomes one function of a flat vector
(:class:`FlatPotential`, built on the trace-free
:meth:`~pyrobdl.BayesianNetwork.log_prior` / ``log_likelihood`` helpers), one
leapfrog step including the gradient is a single :func:`torch.compile`-d call
(``compile=True``; eager autograd otherwise), and the kernel subclasses Pyro's
:class:`pyro.infer.mcmc.NUTS` / :class:`~pyro.infer.mcmc.HMC` so that it keeps
Pyro's warm-up adaptation (dual-averaging step size, windowed diagonal or dense
mass matrix; :class:`pyro.infer.mcmc.adaptation.WarmupAdapter`) and runs under
:class:`pyro.infer.MCMC`, but builds the tree on flat tensors.

**Chains** are independent: chain ``c`` is seeded with ``seed + c`` and runs
the same way whether chains run one after the other or in parallel worker
processes (``chain_method``), so results do not depend on the machine's cores.

Example::

    posterior = pyrobdl.inference.NUTS(num_samples=500, warmup_steps=500, num_chains=4).fit(model, x, y)
    pred = posterior.predict(x_test)          # all draws (or num_samples of them, thinned evenly)
    idata = posterior.to_arviz()              # ArviZ data with log_likelihood -> az.loo works
    pyrobdl.diagnostics.summary(posterior)    # R-hat, ESS (weight and function space), divergences...

References:
    R. M. Neal, *MCMC using Hamiltonian dynamics*, Handbook of Markov Chain
    Monte Carlo (2011);
    M. D. Hoffman and A. Gelman, *The No-U-Turn Sampler: Adaptively Setting Path
    Lengths in Hamiltonian Monte Carlo*, JMLR 15 (2014);
    M. Betancourt, *A Conceptual Introduction to Hamiltonian Monte Carlo*, arXiv:1701.02434 (2017);
    A. Vehtari et al., *Rank-normalization, folding, and localization: an improved
    R-hat for assessing convergence of MCMC*, Bayesian Analysis 16 (2021).
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import multiprocessing
import os
import random
import time
import types
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import pyro
import pyro.infer.mcmc as _pyro_mcmc
import torch
from torch.distributions import biject_to, constraints

from .._validation import check_positive_float, check_positive_int
from ..network import BayesianNetwork
from .base import Data, Inference, Posterior, register_method, warn_user

__all__ = ["NUTS", "HMC", "MCMCPosterior", "HMCPosterior", "FlatPotential", "LARGE_NETWORK_WARNING"]

#: number of latent weights above which fitting with HMC/NUTS warns that it will be slow
LARGE_NETWORK_WARNING = 5000

_MAX_DELTA_H = 1000.0  # energy error that counts as a divergence (Stan, Pyro)
_code_counter = itertools.count()


# ============================================================================ helpers
def _fresh_function(fn: Callable) -> Callable:
    """A copy of ``fn`` with its own code object.

    ``torch.compile`` caches compiled graphs per code object and gives up after
    a few recompilations of one code object; every :class:`FlatPotential` owns
    fresh copies so that fitting many models in one process keeps compiling.
    """
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{next(_code_counter)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _without_validation(d):
    """A shallow copy of a distribution (and its base distributions) with argument
    validation off: the potential is evaluated at millions of points that are
    valid by construction, and validation costs more than the density."""
    d = copy.copy(d)
    d._validate_args = False
    if hasattr(d, "base_dist"):
        d.base_dist = _without_validation(d.base_dist)
    return d


@contextlib.contextmanager
def _eval_mode(net: torch.nn.Module):
    was = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was)


def _is_real(support) -> bool:
    """Whether a support is (an ``independent`` wrapper of) the real line."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return isinstance(support, type(constraints.real))


def _host(t: torch.Tensor) -> np.ndarray:
    """A tensor as a host numpy array (a view for CPU tensors)."""
    return t.detach().cpu().numpy()


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


# ============================================================================ the potential
class FlatPotential:
    r"""The negative log joint density of a :class:`~pyrobdl.BayesianNetwork` as a
    function of one flat, unconstrained vector :math:`z\in\mathbb R^D`.

    Sites are laid out in :meth:`~pyrobdl.BayesianNetwork.latent_sites` order.
    Constrained sites (a learned noise scale :math:`\sigma>0`) are mapped with
    :func:`torch.distributions.biject_to` (``exp`` for :math:`\sigma`), and
    the log-Jacobian is added:

    .. math:: U(z) = -\Big[\log p(y\mid x,\theta) + \log p(\theta) + \sum_k \log|\det J_{T_k}(z_k)|\Big],\quad \theta = T(z).

    I.i.d. Gaussian weight priors are evaluated in closed form on the flat
    vector; other priors through their distributions.

    Args:
        model: the network.
        x, y: the (checked) training data.
        compile: compile the leapfrog step (value, gradient and momentum
            updates in one graph) with :func:`torch.compile`.

    Example::

        pot = FlatPotential(model, x, y)
        z = pot.initial_points(4)             # (4, D) draws from the prior, unconstrained
        u, g = pot.value_and_grad(z[0])
        values = pot.unpack(z)                # site -> (4, *shape), constrained
    """

    def __init__(self, model: BayesianNetwork, x: torch.Tensor, y: torch.Tensor, *, compile: bool = False):
        self.model = model
        self.x, self.y = x, y
        dev, dt = x.device, model.dtype
        self.device, self.dtype = dev, dt
        sites = model.latent_sites(device=dev, dtype=dt)
        self.entries = []  # (name, shape, offset, numel, transform or None, prior for non-Gaussian or None)
        g_loc, g_scale, g_idx = [], [], []
        off = 0
        for name, s in sites.items():
            t = None if _is_real(s.support) else biject_to(s.support)
            gaussian = s.gaussian is not None and t is None
            self.entries.append((name, torch.Size(s.shape), off, s.numel, t, None if gaussian else _without_validation(s.prior)))
            if gaussian:
                g_idx.append(torch.arange(off, off + s.numel))
                g_loc.append(torch.full((s.numel,), float(s.gaussian[0])))
                g_scale.append(torch.full((s.numel,), float(s.gaussian[1])))
            off += s.numel
        self.dim = off
        self.site_names = [e[0] for e in self.entries]
        if g_idx:
            idx = torch.cat(g_idx)
            contiguous = bool((idx == torch.arange(int(idx[0]), int(idx[0]) + len(idx))).all())
            self._g_slice = slice(int(idx[0]), int(idx[0]) + len(idx)) if contiguous else None
            self._g_idx = idx.to(dev)
            self._g_loc = torch.cat(g_loc).to(dev, dt)
            scale = torch.cat(g_scale)
            self._g_inv_scale = scale.reciprocal().to(dev, dt)
            self._g_const = float(-scale.double().log().sum() - 0.5 * len(idx) * math.log(2 * math.pi))
        else:
            self._g_slice, self._g_idx = None, None
        self.compiled = False
        self._potential = _fresh_function(self._make_potential())
        self._leapfrog_fns: Dict[bool, Callable] = {}
        self._want_compile = bool(compile)

    # ------------------------------------------------------------------ layout
    def unpack(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Flat unconstrained ``(..., D)`` -> site -> constrained ``(..., *shape)``."""
        values, _ = self._unpack(z)
        return values

    def _unpack(self, z: torch.Tensor):
        batch = z.shape[:-1]
        values = {}
        logdet = 0.0
        for name, shape, o, n, t, _ in self.entries:
            u = z[..., o : o + n].reshape(batch + shape)
            if t is None:
                values[name] = u
            else:
                c = t(u)
                values[name] = c
                logdet = logdet + t.log_abs_det_jacobian(u, c).reshape(batch + (-1,)).sum(-1)
        return values, logdet

    def pack(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Site -> constrained values ``(..., *shape)`` -> flat unconstrained ``(..., D)``."""
        parts = []
        batch = torch.Size(())
        for name, shape, o, n, t, _ in self.entries:
            if name not in values:
                raise ValueError(f"initial values miss the site {name!r}; give every site of {self.site_names}")
            v = torch.as_tensor(values[name], dtype=self.dtype, device=self.device)
            b = v.shape[: v.dim() - len(shape)]
            if tuple(v.shape[len(b):]) != tuple(shape):
                raise ValueError(
                    f"value of site {name!r} has shape {tuple(v.shape)}, expected (..., {', '.join(map(str, shape))})"
                )
            batch = torch.broadcast_shapes(batch, b)
            parts.append((v if t is None else t.inv(v), shape))
        return torch.cat([u.expand(batch + tuple(shape)).reshape(batch + (-1,)) for u, shape in parts], -1)

    # ------------------------------------------------------------------ densities
    def _make_potential(self):
        model, x, y = self.model, self.x, self.y
        entries = self.entries
        g_slice, g_idx = self._g_slice, self._g_idx
        g_loc = getattr(self, "_g_loc", None)
        g_inv = getattr(self, "_g_inv_scale", None)
        g_const = getattr(self, "_g_const", 0.0)
        n_gauss = 0 if g_idx is None else len(g_idx)

        def potential(z: torch.Tensor) -> torch.Tensor:
            batch = z.shape[:-1]
            lp = 0.0
            if n_gauss:
                zg = z[..., g_slice] if g_slice is not None else z[..., g_idx]
                lp = g_const - 0.5 * ((zg - g_loc) * g_inv).pow(2).sum(-1)
            values = {}
            for name, shape, o, n, t, prior in entries:
                u = z[..., o : o + n].reshape(batch + shape)
                if t is None:
                    v = u
                else:
                    v = t(u)
                    lp = lp + t.log_abs_det_jacobian(u, v).reshape(batch + (-1,)).sum(-1)
                if prior is not None:
                    lp = lp + prior.log_prob(v)
                values[name] = v
            params, lats = model.split_values(values)
            out = model.apply(params, x)
            ll = model.likelihood.log_prob(out, y, lats).sum(-1)
            return -(lp + ll)

        return potential

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`U(z)` for ``z`` of shape ``(..., D)`` (differentiable)."""
        with pyro.validation_enabled(False):
            return self._potential(z)

    def log_joint(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`-U(z)`: the log joint density in unconstrained space."""
        return -self(z)

    def value_and_grad(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(U(z), ∇U(z))`` for one point ``z`` of shape ``(D,)``."""
        with torch.enable_grad(), pyro.validation_enabled(False):
            zz = z.detach().requires_grad_(True)
            u = self._potential(zz)
            (g,) = torch.autograd.grad(u, zz)
        return u.detach(), g

    # ------------------------------------------------------------------ leapfrog
    def _make_leapfrog(self, dense: bool, use_compile: bool):
        potential = self._potential
        if use_compile:
            vg = torch.func.grad_and_value(potential)

            def value_grad(z):
                g, u = vg(z)
                return u, g
        else:

            def value_grad(z):
                with torch.enable_grad():
                    zz = z.detach().requires_grad_(True)
                    u = potential(zz)
                    (g,) = torch.autograd.grad(u, zz)
                return u.detach(), g

        def leapfrog(z, r, g, eps, inv_mass):
            r = r - (0.5 * eps) * g
            v = inv_mass @ r if dense else inv_mass * r
            z = z + eps * v
            u, g = value_grad(z)
            r = r - (0.5 * eps) * g
            v = inv_mass @ r if dense else inv_mass * r
            h = u + 0.5 * (r * v).sum()
            return z, r, g, v, u, h

        if not use_compile:
            return leapfrog
        return torch.compile(_fresh_function(leapfrog), fullgraph=True, dynamic=False)

    def leapfrog_fn(self, dense: bool) -> Callable:
        """The (possibly compiled) leapfrog step
        ``(z, r, g, eps, inv_mass) -> (z', r', g', M^{-1}r', U(z'), H(z', r'))``.

        The first call with ``compile=True`` compiles it (seconds); if
        compilation fails, a warning is issued and the eager version is used.
        """
        if dense not in self._leapfrog_fns:
            fn = self._make_leapfrog(dense, False)
            if self._want_compile:
                cfn = self._make_leapfrog(dense, True)
                gen = torch.Generator().manual_seed(0)
                z = 0.1 * torch.randn(self.dim, generator=gen).to(self.device, self.dtype)
                r = torch.randn(self.dim, generator=gen).to(self.device, self.dtype)
                inv = torch.eye(self.dim, device=self.device, dtype=self.dtype) if dense else torch.ones_like(z)
                eps = torch.tensor(1e-3, device=self.device, dtype=self.dtype)
                try:
                    with pyro.validation_enabled(False), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        u, g = self.value_and_grad(z)
                        want = fn(z, r, g, eps, inv)
                        got = cfn(z, r, g, eps, inv)
                    ok = all(
                        torch.allclose(a, b, rtol=1e-3, atol=1e-4 * (1 + float(b.abs().max())))
                        for a, b in zip(got, want)
                        if torch.isfinite(b).all()
                    )
                    if not ok:
                        raise RuntimeError("the compiled leapfrog step disagrees with the eager one")
                    fn = cfn
                    self.compiled = True
                except Exception as e:  # no C++ compiler, unsupported op, ...
                    warn_user(
                        f"torch.compile failed for the HMC potential ({type(e).__name__}: {str(e)[:200]}); "
                        "falling back to eager autograd (correct but slower). Pass compile=False to silence this."
                    )
                    self._want_compile = False
            self._leapfrog_fns[dense] = fn
        return self._leapfrog_fns[dense]

    def safe_leapfrog_fn(self, dense: bool) -> Callable:
        """:meth:`leapfrog_fn`, falling back to the eager step (with a warning) if the
        compiled one fails at run time, e.g. because it would need recompiling in
        a worker process where compilation is refused."""
        fn = self.leapfrog_fn(dense)
        if not self.compiled:
            return fn
        eager = self._make_leapfrog(dense, False)
        state = {"fn": fn}

        def call(*args):
            try:
                return state["fn"](*args)
            except Exception as e:
                if state["fn"] is eager:
                    raise
                warnings.warn(
                    f"the compiled leapfrog step failed ({type(e).__name__}: {str(e)[:200]}); continuing with "
                    "the eager one (same result, slower)",
                    RuntimeWarning,
                )
                state["fn"] = eager
                return eager(*args)

        return call

    # ------------------------------------------------------------------ initial points
    def sample_prior(self, num: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``num`` draws from the prior, as unconstrained ``(num, D)`` points."""
        sites = self.model.latent_sites(device=self.device, dtype=self.dtype)
        values = {name: sites[name].prior.sample((num,)) for name in self.site_names}
        return self.pack(values)

    def find_map(self, z0: torch.Tensor, *, num_steps: int = 500, lr: float = 0.02) -> torch.Tensor:
        """Adam on :math:`U` from each row of ``z0`` (``(C, D)``), all rows in one batched pass.

        Returns the optimised points; rows whose potential became non-finite keep their start."""
        z = z0.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        with _eval_mode(self.model.net):
            for _ in range(num_steps):
                u = self(z)
                opt.zero_grad(set_to_none=True)
                u.sum().backward()
                opt.step()
            with torch.no_grad():
                u = self(z)
        z = z.detach()
        bad = ~torch.isfinite(u)
        z[bad] = z0[bad]
        return z


class _PotentialFunction(torch.autograd.Function):
    """``U(z)`` with a gradient from :meth:`FlatPotential.value_and_grad`, so Pyro's
    generic code (``potential_grad``) can differentiate the flat potential."""

    @staticmethod
    def forward(ctx, z, pot):
        u, g = pot.value_and_grad(z)
        ctx.save_for_backward(g)
        return u

    @staticmethod
    def backward(ctx, grad_output):
        (g,) = ctx.saved_tensors
        return grad_output * g, None


def _pyro_potential_fn(pot: FlatPotential) -> Callable[[Dict[str, torch.Tensor]], torch.Tensor]:
    """Pyro's ``potential_fn`` API: a dict ``{"z": flat}`` -> scalar potential."""

    def potential_fn(params):
        return _PotentialFunction.apply(params["z"], pot)

    return potential_fn


# ============================================================================ kernels
class _FlatMixin:
    """Flat-tensor sampling for Pyro's HMC/NUTS kernels with one site ``"z"``.

    Keeps Pyro's ``WarmupAdapter`` (step size by dual averaging, windowed mass
    matrix) and bookkeeping (``_t``, ``_accept_cnt``, ``_divergences``,
    ``_mean_accept_prob``) so the kernel runs under :class:`pyro.infer.MCMC`;
    records per-iteration sample statistics in :attr:`stats`.
    """

    _flat: FlatPotential

    def _flat_init(self, pot: FlatPotential, dense: bool):
        self._flat = pot
        self._dense = bool(dense)
        self._leapfrog = pot.safe_leapfrog_fn(self._dense)
        self.stats: Dict[str, List] = {k: [] for k in ("diverging", "energy", "tree_depth", "n_steps", "step_size", "acceptance_rate", "lp")}
        self._flat_cache = None
        self._rng = random.Random(0)
        self._mass_key = ("z",)
        self._inv_mass_src = None

    # -- state helpers ---------------------------------------------------------
    def setup(self, warmup_steps, *args, **kwargs):
        # a reproducible Python RNG for the tree's uniform draws, seeded from torch's RNG
        self._rng = random.Random(int(torch.randint(0, 2**62, ()).item()))
        self._flat_cache = None
        super().setup(warmup_steps, *args, **kwargs)

    def _current(self, params):
        """(z, U(z), ∇U(z)) of the current state, cached by the identity of ``params["z"]``."""
        key = params.get("z")
        if self._flat_cache is None or self._flat_cache[0] is not key:
            z = key.detach()
            u, g = self._flat.value_and_grad(z)
            self._flat_cache = (key, z, u, g)
        return self._flat_cache[1:]

    def _mass(self):
        inv = self.inverse_mass_matrix[self._mass_key]
        if inv is not self._inv_mass_src:
            self._inv_mass_src = inv
            self._inv_mass = inv.contiguous()
        return self._inv_mass

    def _momentum(self, z):
        eps = torch.randn(z.shape, dtype=z.dtype, device=z.device)
        return self.mass_matrix_adapter.scale({self._mass_key: eps}, r_prototype={"z": z})["z"]

    def _velocity(self, r):
        inv = self._mass()
        return inv @ r if self._dense else inv * r

    def _step_tensors(self, z, step_size):
        return (torch.tensor(step_size, dtype=z.dtype, device=z.device), torch.tensor(-step_size, dtype=z.dtype, device=z.device))

    def _find_reasonable_step_size(self, params):
        """Pyro's heuristic (double or halve until the acceptance probability of
        one leapfrog step crosses 0.8), on flat tensors."""
        step_size = self.step_size
        z, u, g = self._current(params)
        if not math.isfinite(float(u)):
            return step_size
        inv = self._mass()

        def delta_h(step):
            r = self._momentum(z)
            h0 = float(u) + 0.5 * float((r * self._velocity(r)).sum())
            eps = torch.tensor(step, dtype=z.dtype, device=z.device)
            h1 = float(self._leapfrog(z, r, g, eps, inv)[5])
            return h1 - h0 if math.isfinite(h1) else math.inf

        direction = 1 if self._direction_threshold < -delta_h(step_size) else -1
        scale = 2.0**direction
        new_direction = direction
        while new_direction == direction and self._min_stepsize < step_size < self._max_stepsize:
            step_size = scale * step_size
            new_direction = 1 if self._direction_threshold < -delta_h(step_size) else -1
        return min(max(step_size, self._min_stepsize), self._max_stepsize)

    def _finish(self, z, g, u, accept_prob: float, accepted: bool, record: Dict[str, Any]):
        self._flat_cache = None
        self._t += 1
        z_t = z
        if self._t > self._warmup_steps:
            n = self._t - self._warmup_steps
            if accepted:
                self._accept_cnt += 1
            if record["diverging"]:
                self._divergences.append(self._t - self._warmup_steps - 1)
        else:
            n = self._t
            self._adapter.step(self._t, {"z": z_t}, torch.tensor(accept_prob), {"z": g})
        self._mean_accept_prob += (accept_prob - self._mean_accept_prob) / n
        for k, v in record.items():
            self.stats[k].append(v)
        self._flat_cache = (z_t, z_t, u, g)
        return {"z": z_t}


class _FlatNUTSKernel(_FlatMixin, _pyro_mcmc.NUTS):
    """Pyro's NUTS kernel with a flat-tensor, multinomial, generalised-U-turn
    transition (Stan's algorithm; Betancourt 2017)."""

    def __init__(self, pot: FlatPotential, *, step_size, adapt_step_size, adapt_mass_matrix, dense_mass, target_accept_prob, max_tree_depth):
        super().__init__(
            potential_fn=_pyro_potential_fn(pot),
            step_size=step_size,
            adapt_step_size=adapt_step_size,
            adapt_mass_matrix=adapt_mass_matrix,
            full_mass=dense_mass,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
        )
        self._flat_init(pot, dense_mass)

    # The tree's bookkeeping (momentum sums, U-turn dot products) runs on small
    # host (numpy) arrays: a handful of 1-2 us numpy operations per leapfrog step
    # instead of torch dispatches; positions and gradients stay torch tensors.
    @staticmethod
    def _crit(ps_minus, ps_plus, rho) -> bool:
        return float(ps_plus.dot(rho)) > 0 and float(ps_minus.dot(rho)) > 0

    def _build(self, depth, point, eps, h0):
        """Stan's ``build_tree``: returns (valid, end_point, proposal, log_weight,
        rho, p_beg, ps_beg, p_end, ps_end); momenta ``p`` and velocities
        ``ps`` = :math:`M^{-1}p` as host arrays."""
        if depth == 0:
            z, r, g, v, u, h = self._leapfrog(point[0], point[1], point[2], eps, self._inv)
            self._n_leapfrog += 1
            h = h.item()
            if h != h:
                h = math.inf
            valid = True
            if h - h0 > _MAX_DELTA_H:
                self._divergent = True
                valid = False
            log_w = h0 - h
            self._sum_metro += 1.0 if log_w > 0 else math.exp(log_w)
            new = (z, r, g, u, h)
            rn, vn = _host(r), _host(v)
            return valid, new, new, log_w, rn, rn, vn, rn, vn
        ok, end, prop_i, lw_i, rho_i, p_beg, ps_beg, p_ie, ps_ie = self._build(depth - 1, point, eps, h0)
        if not ok:
            return False, end, prop_i, lw_i, rho_i, p_beg, ps_beg, p_ie, ps_ie
        ok, end, prop_f, lw_f, rho_f, p_fb, ps_fb, p_end, ps_end = self._build(depth - 1, end, eps, h0)
        if not ok:
            return False, end, prop_f, lw_f, rho_f, p_fb, ps_fb, p_end, ps_end
        lw = _logaddexp(lw_i, lw_f)
        prop = prop_i
        if lw_f > lw or self._rng.random() < math.exp(lw_f - lw):
            prop = prop_f
        rho = rho_i + rho_f
        persist = (
            self._crit(ps_beg, ps_end, rho)
            and self._crit(ps_beg, ps_fb, rho_i + p_fb)
            and self._crit(ps_ie, ps_end, rho_f + p_ie)
        )
        return persist, end, prop, lw, rho, p_beg, ps_beg, p_end, ps_end

    def sample(self, params):
        z, u, g = self._current(params)
        self._inv = self._mass()
        step = self.step_size
        eps_f, eps_b = self._step_tensors(z, step)
        r = self._momentum(z)
        v = self._velocity(r)
        h0 = float(u) + 0.5 * float(r.dot(v))
        if h0 != h0:
            h0 = math.inf
        start = (z, r, g, u, h0)
        fwd = bck = sample = start
        rn, vn = _host(r), _host(v)
        p_ff = p_fb = p_bf = p_bb = rn
        ps_ff = ps_fb = ps_bf = ps_bb = vn
        rho = rn
        log_sum_w = 0.0
        depth = 0
        self._n_leapfrog, self._sum_metro, self._divergent = 0, 0.0, False
        rng = self._rng
        with pyro.validation_enabled(False):
            while depth < self._max_tree_depth:
                if rng.random() > 0.5:
                    rho_b, p_bf, ps_bf = rho, p_fb, ps_fb
                    ok, fwd, prop, lw, rho_f, p_fb, ps_fb, p_ff, ps_ff = self._build(depth, fwd, eps_f, h0)
                else:
                    rho_f, p_fb, ps_fb = rho, p_bf, ps_bf
                    ok, bck, prop, lw, rho_b, p_bf, ps_bf, p_bb, ps_bb = self._build(depth, bck, eps_b, h0)
                if not ok:
                    break
                depth += 1
                if lw > log_sum_w or rng.random() < math.exp(lw - log_sum_w):
                    sample = prop
                log_sum_w = _logaddexp(log_sum_w, lw)
                rho = rho_b + rho_f
                persist = (
                    self._crit(ps_bb, ps_ff, rho)
                    and self._crit(ps_bb, ps_fb, rho_b + p_fb)
                    and self._crit(ps_bf, ps_ff, rho_f + p_bf)
                )
                if not persist:
                    break
        accept = self._sum_metro / max(self._n_leapfrog, 1)
        z_new, _, g_new, u_new, h_new = sample
        record = {
            "diverging": bool(self._divergent),
            "energy": float(h_new),
            "tree_depth": depth,
            "n_steps": self._n_leapfrog,
            "step_size": step,
            "acceptance_rate": accept,
            "lp": -float(u_new),
        }
        return self._finish(z_new, g_new, u_new, accept, sample is not start, record)


class _FlatHMCKernel(_FlatMixin, _pyro_mcmc.HMC):
    """Pyro's HMC kernel with a flat-tensor transition and a fixed number of
    leapfrog steps (or a fixed trajectory length)."""

    def __init__(self, pot: FlatPotential, *, step_size, num_steps, trajectory_length, adapt_step_size, adapt_mass_matrix, dense_mass, target_accept_prob):
        super().__init__(
            potential_fn=_pyro_potential_fn(pot),
            step_size=step_size,
            num_steps=num_steps,
            trajectory_length=trajectory_length,
            adapt_step_size=adapt_step_size,
            adapt_mass_matrix=adapt_mass_matrix,
            full_mass=dense_mass,
            target_accept_prob=target_accept_prob,
        )
        self._fixed_steps = num_steps
        self._flat_init(pot, dense_mass)

    @property
    def num_steps(self):
        if self._fixed_steps is not None:
            return self._fixed_steps
        return max(1, int(math.ceil(self.trajectory_length / self.step_size)))

    def sample(self, params):
        z, u, g = self._current(params)
        inv = self._mass()
        step = self.step_size
        L = self.num_steps
        eps = torch.tensor(step, dtype=z.dtype, device=z.device)
        r = self._momentum(z)
        h0 = float(u) + 0.5 * float(r.dot(self._velocity(r)))
        zn, rn, gn, un = z, r, g, u
        h = h0
        with pyro.validation_enabled(False):
            for _ in range(L):
                zn, rn, gn, _, un, ht = self._leapfrog(zn, rn, gn, eps, inv)
            h = float(ht)
        if h != h:
            h = math.inf
        dh = h - h0
        diverging = dh > _MAX_DELTA_H
        accept = math.exp(min(0.0, -dh)) if math.isfinite(dh) else 0.0
        accepted = self._rng.random() < accept
        if accepted:
            z_new, g_new, u_new, h_new = zn, gn, un, h
        else:
            z_new, g_new, u_new, h_new = z, g, u, h0
        record = {
            "diverging": bool(diverging),
            "energy": float(h_new),
            "tree_depth": float("nan"),
            "n_steps": L,
            "step_size": step,
            "acceptance_rate": accept,
            "lp": -float(u_new),
        }
        return self._finish(z_new, g_new, u_new, accept, accepted, record)


# ============================================================================ running chains
_WORKER_JOB: Optional[Dict[str, Any]] = None  # set in the parent before forking


def _run_chain(job: Dict[str, Any], chain: int, progress: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Run one chain: seed, build the kernel, run :class:`pyro.infer.MCMC`."""
    pyro.set_rng_seed(job["seed"] + chain)
    pot: FlatPotential = job["potential"]
    kernel = job["make_kernel"](pot)
    hook = None
    if progress is not None:
        def hook(kernel, params, stage, i):  # noqa: E306
            progress(1)
    mcmc = pyro.infer.MCMC(
        kernel,
        num_samples=job["num_samples"],
        warmup_steps=job["warmup_steps"],
        num_chains=1,
        initial_params={"z": job["init"][chain].clone()},
        disable_progbar=True,
        hook_fn=hook,
    )
    t0 = time.perf_counter()
    with _eval_mode(pot.model.net), torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*num_chains.*")
        mcmc.run()
    seconds = time.perf_counter() - t0
    z = mcmc.get_samples()["z"]  # (S, D)
    W = job["warmup_steps"]
    stats = {k: np.asarray(v[W:], dtype=np.float64 if k != "diverging" else bool) for k, v in kernel.stats.items()}
    warm = {k: np.asarray(v[:W], dtype=np.float64 if k != "diverging" else bool) for k, v in kernel.stats.items()}
    inv = kernel.inverse_mass_matrix[("z",)]
    return {
        "z": z.detach().cpu().numpy(),
        "stats": stats,
        "warmup_stats": warm,
        "step_size": float(kernel.step_size),
        "inverse_mass_matrix": inv.detach().cpu().numpy(),
        "seconds": seconds,
    }


def _worker_init(threads: Optional[int]):
    if threads is not None:
        torch.set_num_threads(threads)
    # compiling inside a forked process can deadlock on locks inherited from the parent:
    # refuse, and let the kernel fall back to the eager leapfrog instead
    try:
        torch.compiler.set_stance("fail_on_recompile")
    except Exception:  # pragma: no cover - older torch
        pass


@contextlib.contextmanager
def _num_threads(n: Optional[int]):
    """Run with ``n`` intra-op threads (restoring the previous number); ``None``: as is."""
    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


#: one potential evaluation below this many multiply-adds (data points x weights) runs
#: faster on one thread: intra-op parallelism only adds synchronisation at this size
SMALL_WORK = 5_000_000


def _threads_per_chain(pot: "FlatPotential", workers: int) -> int:
    if pot.x.shape[0] * pot.dim < SMALL_WORK:
        return 1
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def _worker_chain(chain: int) -> Dict[str, Any]:
    job = _WORKER_JOB
    counter = job.get("counter")

    def bump(k):
        if counter is not None:
            with counter.get_lock():
                counter.value += k

    return _run_chain(job, chain, bump if counter is not None else None)


def _fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


# ============================================================================ inference
class _MCMCBase(Inference):
    method_name = ""

    def __init__(
        self,
        *,
        num_samples: int = 500,
        warmup_steps: int = 500,
        num_chains: int = 4,
        step_size: Optional[float] = None,
        target_accept: float = 0.8,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = True,
        dense_mass: bool = False,
        init: Union[str, Posterior, Mapping[str, torch.Tensor]] = "prior",
        init_steps: int = 500,
        chain_method: str = "auto",
        compile: Optional[bool] = None,
        diagnose: bool = True,
        progress: bool = True,
        seed: Optional[int] = None,
    ):
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.warmup_steps = check_positive_int(warmup_steps, "warmup_steps", minimum=0)
        self.num_chains = check_positive_int(num_chains, "num_chains")
        self.step_size = None if step_size is None else check_positive_float(step_size, "step_size")
        ta = float(target_accept) if isinstance(target_accept, (int, float)) and not isinstance(target_accept, bool) else None
        if ta is None or not (0.0 < ta < 1.0):
            raise ValueError(f"target_accept must be a probability in (0, 1) (typically 0.8-0.99), got {target_accept!r}")
        self.target_accept = ta
        self.adapt_step_size = bool(adapt_step_size)
        self.adapt_mass_matrix = bool(adapt_mass_matrix)
        self.dense_mass = bool(dense_mass)
        if isinstance(init, str):
            if init not in ("prior", "map", "vi"):
                raise ValueError(f"init must be 'prior', 'map', 'vi', a fitted SVIPosterior or a dict of site values, got {init!r}")
        elif not isinstance(init, (Posterior, Mapping)):
            raise ValueError(f"init must be 'prior', 'map', 'vi', a fitted SVIPosterior or a dict of site values, got {type(init).__name__}")
        self.init = init
        self.init_steps = check_positive_int(init_steps, "init_steps")
        if chain_method not in ("auto", "parallel", "sequential"):
            raise ValueError(f"chain_method must be 'auto', 'parallel' or 'sequential', got {chain_method!r}")
        self.chain_method = chain_method
        if compile is not None and not isinstance(compile, bool):
            raise ValueError(f"compile must be True, False or None (auto), got {compile!r}")
        self.compile = compile
        self.diagnose = bool(diagnose)
        self.progress = bool(progress)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.seed = seed

    # hooks --------------------------------------------------------------------
    def _make_kernel(self, pot: FlatPotential):
        raise NotImplementedError

    def _posterior_cls(self):
        raise NotImplementedError

    def _settings(self) -> Dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "warmup_steps": self.warmup_steps,
            "num_chains": self.num_chains,
            "step_size": self.step_size,
            "target_accept": self.target_accept,
            "adapt_step_size": self.adapt_step_size,
            "adapt_mass_matrix": self.adapt_mass_matrix,
            "dense_mass": self.dense_mass,
        }

    # helpers -------------------------------------------------------------------
    def _use_compile(self, model: BayesianNetwork, x: torch.Tensor) -> bool:
        if self.compile is not None:
            return self.compile
        # auto: compilation costs a few seconds once, and pays off when the run
        # takes many gradient evaluations (always, except for toy runs)
        return (self.warmup_steps + self.num_samples) * self.num_chains >= 400

    def _initial_points(self, pot: FlatPotential, model: BayesianNetwork, x, y) -> Tuple[torch.Tensor, str]:
        C = self.num_chains
        init = self.init

        def finite_prior_draws(n):
            z = pot.sample_prior(n)
            with torch.no_grad(), _eval_mode(pot.model.net):
                for _ in range(100):
                    bad = ~torch.isfinite(pot(z))
                    if not bool(bad.any()):
                        break
                    z[bad] = pot.sample_prior(int(bad.sum()))
            return z

        if isinstance(init, str) and init == "prior":
            return finite_prior_draws(C), "prior"
        if isinstance(init, str) and init == "map":
            return pot.find_map(finite_prior_draws(C), num_steps=self.init_steps), "map"
        if isinstance(init, str) and init == "vi":
            from .svi import MeanField

            init = MeanField(num_steps=max(self.init_steps, 1000), lr=1e-2, progress=False).fit(model, x, y)
        if isinstance(init, Posterior):
            from .svi import SVIPosterior

            if not isinstance(init, SVIPosterior):
                raise ValueError(f"init must be a fitted SVIPosterior (or 'prior', 'map', 'vi'), got {type(init).__name__}")
            init._check_fitted()
            sites, theirs = model.latent_sites(), init.model.latent_sites()
            if list(sites) != list(theirs) or any(sites[k].shape != theirs[k].shape for k in sites):
                raise ValueError(
                    "init is a posterior of a model with different latent sites; fit it on the same BayesianNetwork"
                )
            # chain 0 starts at the posterior mean, the others at draws from q (mean + jitter)
            mean = pot.pack(init.mean_latents()).unsqueeze(0)
            if C == 1:
                return mean, "vi"
            draws = pot.pack(init.sample_latents(C - 1))
            return torch.cat([mean, draws], 0), "vi"
        # a dict of site values, shared (C == leading dim) or broadcast to every chain
        z = pot.pack(init)
        if z.dim() == 1:
            z = z.expand(C, -1).clone()
        if z.shape[0] != C:
            raise ValueError(f"init gives {z.shape[0]} starting points but num_chains={C}; give one per chain or one in all")
        return z, "values"

    def _plan(self, pot: FlatPotential) -> Tuple[str, int, Optional[int]]:
        """(chain method, worker processes, intra-op threads per chain)."""
        cpus = os.cpu_count() or 1
        method = self.chain_method
        if method == "auto":
            method = "parallel" if (_fork_available() and pot.device.type == "cpu") else "sequential"
        if method == "parallel" and not _fork_available():
            warn_user("chain_method='parallel' needs the 'fork' start method, which this platform lacks; running chains sequentially")
            method = "sequential"
        if method == "parallel" and pot.device.type != "cpu":
            warn_user("parallel chains run on CPU only; running the CUDA chains sequentially")
            method = "sequential"
        workers = min(self.num_chains, cpus) if method == "parallel" else 1
        threads = _threads_per_chain(pot, workers) if pot.device.type == "cpu" else None
        return method, workers, threads

    def _run_chains(self, job: Dict[str, Any]) -> List[Dict[str, Any]]:
        global _WORKER_JOB
        C = self.num_chains
        total = C * (self.warmup_steps + self.num_samples)
        cpus = os.cpu_count() or 1
        method, workers, threads = job["chain_method"], job["workers"], job["threads"]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=f"{self.name} ({C} chain{'s' if C > 1 else ''}, {method})", leave=False)
        try:
            if method == "sequential":
                with _num_threads(threads), torch.enable_grad():
                    return [_run_chain(job, c, (bar.update if bar is not None else None)) for c in range(C)]
            ctx = multiprocessing.get_context("fork")
            counter = ctx.Value("l", 0) if bar is not None else None
            job["counter"] = counter
            _WORKER_JOB = job
            try:
                with ctx.Pool(processes=workers, initializer=_worker_init, initargs=(threads,)) as pool:
                    res = pool.map_async(_worker_chain, range(C), chunksize=1)
                    while not res.ready():
                        res.wait(0.25)
                        if bar is not None:
                            bar.n = counter.value
                            bar.refresh()
                    out = res.get()
            finally:
                _WORKER_JOB = None
                job.pop("counter", None)
            return out
        finally:
            if bar is not None:
                bar.close()

    # the fit -----------------------------------------------------------------------
    def fit(self, model: BayesianNetwork, x=None, y=None) -> "MCMCPosterior":
        """Sample the posterior of ``model`` given full-batch tensors ``(x, y)``.

        Raises:
            ValueError: bad data (length or likelihood mismatch), a DataLoader
                (MCMC needs the whole data set as tensors), or bad init values.
        """
        if not isinstance(model, BayesianNetwork):
            raise TypeError(f"model must be a pyrobdl.BayesianNetwork, got {type(model).__name__}")
        if isinstance(x, torch.utils.data.DataLoader):
            raise ValueError(
                "HMC/NUTS needs the full data set as tensors (every step uses all of it); "
                "pass x and y tensors instead of a DataLoader"
            )
        data = Data(model, x, y)
        # like every pyrobdl fit: sample a copy, so the user's model and earlier posteriors stay untouched
        user_model = model
        model = model.fresh_copy().to(data.device) if hasattr(model, "fresh_copy") else model.to(data.device)
        x, y = data.x, data.y
        D = model.num_bayesian_parameters
        if D > LARGE_NETWORK_WARNING:
            warn_user(
                f"the network has {D} Bayesian weights (> {LARGE_NETWORK_WARNING}); HMC/NUTS cost grows quickly "
                "with the dimension and will be slow. Consider variational inference: "
                "inference.MeanField or inference.LowRank (or make only the last layer Bayesian with bayesian='last')."
            )
        if self.seed is not None:
            pyro.set_rng_seed(self.seed)
            base_seed = int(self.seed)
        else:
            base_seed = int(torch.randint(0, 2**31 - 1, ()).item())
        t0 = time.perf_counter()
        pot = FlatPotential(model, x, y, compile=self._use_compile(model, x))
        torch.manual_seed(base_seed)
        init, init_kind = self._initial_points(pot, user_model, x, y)
        method, workers, threads = self._plan(pot)
        t_init = time.perf_counter()
        # compile once, before any fork, under the thread count and grad mode the chains use
        # (torch.compile guards on both; a recompilation inside a forked worker could deadlock)
        with _num_threads(threads), torch.enable_grad():
            pot.leapfrog_fn(self.dense_mass)
        t_compile = time.perf_counter() - t_init
        job = {
            "chain_method": method,
            "workers": workers,
            "threads": threads,
            "potential": pot,
            "make_kernel": self._make_kernel,
            "num_samples": self.num_samples,
            "warmup_steps": self.warmup_steps,
            "init": init.detach(),
            "seed": base_seed,
        }
        results = self._run_chains(job)
        seconds = time.perf_counter() - t0
        dev, dt = pot.device, pot.dtype
        z = torch.as_tensor(np.stack([r["z"] for r in results]), dtype=dt, device=dev)  # (C, S, D)
        samples = {k: v.contiguous() for k, v in pot.unpack(z).items()}
        stats = {k: torch.as_tensor(np.stack([r["stats"][k] for r in results])) for k in results[0]["stats"]}
        post = self._posterior_cls()(model, samples, stats, x=x, y=y)
        post.fit_info = {
            "seconds": seconds,
            "compile_seconds": t_compile,
            "compiled": pot.compiled,
            "chain_method": job["chain_method"],
            "threads_per_chain": job["threads"],
            "chain_seconds": [r["seconds"] for r in results],
            "seed": base_seed,
            "init": init_kind,
            "step_size": [r["step_size"] for r in results],
            "inverse_mass_matrix": [torch.as_tensor(r["inverse_mass_matrix"]) for r in results],
            "warmup_stats": {k: torch.as_tensor(np.stack([r["warmup_stats"][k] for r in results])) for k in results[0]["warmup_stats"]},
            "settings": self._settings(),
        }
        post._fitted = True
        if self.diagnose:
            from .. import diagnostics

            diagnostics.warn_if_problematic(post)
        return post


@register_method
class NUTS(_MCMCBase):
    r"""The No-U-Turn Sampler (Hoffman & Gelman, 2014): HMC that picks its own
    trajectory length, with Stan-style warm-up adaptation.

    Args:
        num_samples: draws kept per chain (>= 1).
        warmup_steps: adaptation iterations per chain, discarded (>= 0).
        num_chains: independent chains (>= 1; 4 is the usual choice so that
            R-hat can detect non-convergence).
        step_size: initial leapfrog step size (default: found by Pyro's
            heuristic, then adapted by dual averaging during warm-up).
        target_accept: the average acceptance probability that step-size
            adaptation aims at. Raise it (0.9-0.99) when there are divergences:
            smaller steps, slower, more robust.
        max_tree_depth: at most :math:`2^{\text{depth}}-1` leapfrog steps per
            iteration.
        adapt_step_size, adapt_mass_matrix: warm-up adaptation switches.
        dense_mass: adapt a dense (full) mass matrix instead of a diagonal one;
            :math:`O(D^2)`, helps correlated posteriors of small nets.
        init: where chains start: ``"prior"`` (a prior draw per chain, the
            default; dispersed starts make R-hat meaningful), ``"map"`` (Adam
            on the log joint from a prior draw per chain, ``init_steps``
            steps), ``"vi"`` (fit :class:`~pyrobdl.inference.MeanField` and
            start there), a fitted :class:`~pyrobdl.inference.SVIPosterior`
            (chain 0 at its mean, the others at draws from it, i.e. the mean
            plus jitter), or a dict of site values (one per chain or shared).
        init_steps: optimisation steps for ``init="map"``/``"vi"``.
        chain_method: ``"parallel"`` (chains in forked worker processes, at
            most one per core, also for a single chain), ``"sequential"`` (in
            this process, one after the other), or ``"auto"`` (parallel on CPU
            where ``fork`` exists, else sequential). Each chain of a small
            network runs on one thread (see :data:`SMALL_WORK`): intra-op
            parallelism only costs synchronisation at that size.
        compile: compile the leapfrog step with :func:`torch.compile`
            (``None``: when the run is not tiny). Falls back to eager with a
            warning if compilation fails.
        diagnose: after sampling, warn about R-hat > 1.01, low ESS and
            divergences (see :func:`pyrobdl.diagnostics.warn_if_problematic`).
        progress: show a progress bar.
        seed: seed; chain ``c`` uses ``seed + c``. ``None`` draws one from
            torch's RNG (so ``pyro.set_rng_seed`` makes runs reproducible too).

    Example::

        posterior = inference.NUTS(num_samples=500, warmup_steps=500, num_chains=4, seed=0).fit(model, x, y)
        pred = posterior.predict(x_test)
        pyrobdl.diagnostics.summary(posterior)

    References:
        M. D. Hoffman and A. Gelman, *The No-U-Turn Sampler* (JMLR 2014);
        M. Betancourt, *A Conceptual Introduction to Hamiltonian Monte Carlo* (2017);
        R. M. Neal, *MCMC using Hamiltonian dynamics* (2011).
    """

    name = "nuts"
    aliases = ("no-u-turn",)

    def __init__(self, *, max_tree_depth: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.max_tree_depth = check_positive_int(max_tree_depth, "max_tree_depth")

    def _settings(self):
        return {**super()._settings(), "max_tree_depth": self.max_tree_depth}

    def _make_kernel(self, pot):
        return _FlatNUTSKernel(
            pot,
            step_size=self.step_size if self.step_size is not None else 1.0,
            adapt_step_size=self.adapt_step_size,
            adapt_mass_matrix=self.adapt_mass_matrix,
            dense_mass=self.dense_mass,
            target_accept_prob=self.target_accept,
            max_tree_depth=self.max_tree_depth,
        )

    def _posterior_cls(self):
        return MCMCPosterior


@register_method
class HMC(_MCMCBase):
    r"""Hamiltonian Monte Carlo with a fixed number of leapfrog steps (Neal, 2011).

    Args:
        num_steps: leapfrog steps per iteration (default 20 when neither it
            nor ``trajectory_length`` is given).
        trajectory_length: alternatively a fixed integration time
            :math:`L`; the number of steps is then :math:`\lceil L/\epsilon\rceil`
            as the step size :math:`\epsilon` adapts.
        **kwargs: as :class:`NUTS` (without ``max_tree_depth``).

    Example::

        posterior = inference.HMC(num_steps=30, num_samples=1000, warmup_steps=500).fit(model, x, y)

    Reference: R. M. Neal, *MCMC using Hamiltonian dynamics* (2011).
    """

    name = "hmc"
    aliases = ("hamiltonian",)

    def __init__(self, *, num_steps: Optional[int] = None, trajectory_length: Optional[float] = None, **kwargs):
        super().__init__(**kwargs)
        if num_steps is not None and trajectory_length is not None:
            raise ValueError("give num_steps or trajectory_length, not both")
        if num_steps is None and trajectory_length is None:
            num_steps = 20
        self.num_steps = None if num_steps is None else check_positive_int(num_steps, "num_steps")
        self.trajectory_length = None if trajectory_length is None else check_positive_float(trajectory_length, "trajectory_length")

    def _settings(self):
        return {**super()._settings(), "num_steps": self.num_steps, "trajectory_length": self.trajectory_length}

    def _make_kernel(self, pot):
        return _FlatHMCKernel(
            pot,
            step_size=self.step_size if self.step_size is not None else 1.0,
            num_steps=self.num_steps,
            trajectory_length=self.trajectory_length,
            adapt_step_size=self.adapt_step_size,
            adapt_mass_matrix=self.adapt_mass_matrix,
            dense_mass=self.dense_mass,
            target_accept_prob=self.target_accept,
        )

    def _posterior_cls(self):
        return HMCPosterior


# ============================================================================ posterior
#: training data are saved with the posterior when they have at most this many elements
MAX_SAVED_DATA = 1_000_000


class MCMCPosterior(Posterior):
    r"""Posterior draws from HMC/NUTS, kept per chain.

    Attributes:
        samples: site -> tensor ``(num_chains, num_draws, *shape)`` (constrained values).
        sample_stats: name -> ``(num_chains, num_draws)``: ``diverging``,
            ``energy``, ``tree_depth``, ``n_steps``, ``step_size``,
            ``acceptance_rate``, ``lp`` (log joint in unconstrained space).
        fit_info: ``seconds``, ``compile_seconds``, ``chain_method``,
            ``step_size`` and ``inverse_mass_matrix`` per chain, ``seed``,
            ``init``, ``warmup_stats``, ``settings``.
        x, y: the training data (used by :meth:`to_arviz` and the diagnostics
            when no data are passed). Saved with the posterior when they have
            at most :data:`MAX_SAVED_DATA` elements.

    :meth:`predict` uses every draw by default (``num_samples`` draws, thinned
    evenly, when given): the predictive is
    :math:`p(y\mid x)\approx\frac1{CT}\sum_{c,t}p(y\mid f_{\theta_{c,t}}(x))`
    over :math:`C` chains of :math:`T` draws.

    Example (not run here: sampling takes seconds even for tiny nets)::

        posterior = inference.NUTS(num_samples=500, warmup_steps=500, num_chains=4, seed=0).fit(model, x, y)
        posterior.samples["0.weight"].shape      # (4, 500, *weight.shape)
        posterior.sample_stats["diverging"].sum()
        pred = posterior.predict(x_test)         # all 2,000 draws
        idata = posterior.to_arviz()             # for ArviZ: az.rhat, az.ess, az.loo

    References:
        M. D. Hoffman and A. Gelman, *The No-U-Turn Sampler* (JMLR 2014);
        A. Vehtari et al., *Rank-normalization, folding, and localization: an
        improved R-hat for assessing convergence of MCMC* (Bayesian Analysis 2021).
    """

    method = "nuts"
    default_num_samples = None

    def __init__(
        self,
        model: BayesianNetwork,
        samples: Optional[Dict[str, torch.Tensor]] = None,
        sample_stats: Optional[Dict[str, torch.Tensor]] = None,
        *,
        x: Optional[torch.Tensor] = None,
        y: Optional[torch.Tensor] = None,
    ):
        super().__init__(model)
        self.samples: Dict[str, torch.Tensor] = dict(samples or {})
        self.sample_stats: Dict[str, torch.Tensor] = dict(sample_stats or {})
        self.x, self.y = x, y
        if self.samples:
            shapes = {tuple(v.shape[:2]) for v in self.samples.values()}
            if len(shapes) != 1:
                raise ValueError(f"all sites need the same (chains, draws) leading shape, got {sorted(shapes)}")
            missing = set(model.site_names) - set(self.samples)
            if missing:
                raise ValueError(f"samples miss the sites {sorted(missing)}")

    @property
    def num_chains(self) -> int:
        self._check_fitted()
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        """Draws per chain."""
        self._check_fitted()
        return next(iter(self.samples.values())).shape[1]

    @property
    def num_divergences(self) -> int:
        d = self.sample_stats.get("diverging")
        return int(d.sum()) if d is not None else 0

    def sample_latents(self, num_samples: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """All draws, chains concatenated (``(C*S, *shape)``), or ``num_samples`` of
        them chosen evenly spaced (thinning; never more than there are)."""
        self._check_fitted()
        C, S = self.num_chains, self.num_draws
        flat = {k: v.reshape((C * S,) + v.shape[2:]) for k, v in self.samples.items()}
        if num_samples is None or num_samples == C * S:
            return flat
        num_samples = check_positive_int(num_samples, "num_samples")
        if num_samples > C * S:
            raise ValueError(
                f"num_samples={num_samples} exceeds the {C * S} MCMC draws ({C} chains x {S}); "
                f"pass at most {C * S} or None for all of them"
            )
        idx = torch.linspace(0, C * S - 1, num_samples, device=next(iter(flat.values())).device).round().long()
        return {k: v[idx] for k, v in flat.items()}

    def to(self, device) -> "MCMCPosterior":
        self.model.to(device)
        self.samples = {k: v.to(device) for k, v in self.samples.items()}
        if self.x is not None:
            self.x = self.x.to(device)
        if self.y is not None:
            self.y = self.y.to(device)
        return self

    def summary(self, **kwargs):
        """Shortcut for :func:`pyrobdl.diagnostics.summary`."""
        from .. import diagnostics

        return diagnostics.summary(self, **kwargs)

    # -- save / load ------------------------------------------------------------------
    def _state(self) -> Dict[str, Any]:
        keep_data = self.x is not None and self.y is not None and self.x.numel() + self.y.numel() <= MAX_SAVED_DATA
        info = {}
        for k in ("seconds", "compile_seconds", "seed"):
            if k in self.fit_info:
                info[k] = float(self.fit_info[k]) if k != "seed" else int(self.fit_info[k])
        for k in ("chain_method", "init"):
            if k in self.fit_info:
                info[k] = str(self.fit_info[k])
        if "step_size" in self.fit_info:
            info["step_size"] = [float(s) for s in self.fit_info["step_size"]]
        if "inverse_mass_matrix" in self.fit_info:
            info["inverse_mass_matrix"] = [t.detach().cpu() for t in self.fit_info["inverse_mass_matrix"]]
        if "settings" in self.fit_info:
            info["settings"] = dict(self.fit_info["settings"])
        return {
            "samples": {k: v.detach().cpu() for k, v in self.samples.items()},
            "sample_stats": {k: v.detach().cpu() for k, v in self.sample_stats.items()},
            "x": self.x.detach().cpu() if keep_data else None,
            "y": self.y.detach().cpu() if keep_data else None,
            "fit_info": info,
        }

    @classmethod
    def _from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "MCMCPosterior":
        dev = model.device
        post = cls(
            model,
            {k: v.to(dev) for k, v in state["samples"].items()},
            dict(state.get("sample_stats", {})),
            x=None if state.get("x") is None else state["x"].to(dev),
            y=None if state.get("y") is None else state["y"].to(dev),
        )
        post.fit_info = dict(state.get("fit_info", {}))
        post._fitted = True
        return post

    def __repr__(self) -> str:
        if not self._fitted:
            return f"{type(self).__name__}(not fitted)"
        return (
            f"{type(self).__name__}({self.num_chains} chains x {self.num_draws} draws, "
            f"{self.model.num_bayesian_parameters} weights, {self.num_divergences} divergences)"
        )


class HMCPosterior(MCMCPosterior):
    """:class:`MCMCPosterior` of :class:`HMC` (fixed-length trajectories).

    Example (not run here: sampling takes seconds)::

        posterior = inference.HMC(num_steps=30, num_samples=1000, warmup_steps=500).fit(model, x, y)
        type(posterior).__name__                  # 'HMCPosterior'
        posterior.fit_info["step_size"]           # the adapted step size per chain

    Reference: R. M. Neal, *MCMC using Hamiltonian dynamics*, Handbook of
    Markov Chain Monte Carlo (2011).
    """

    method = "hmc"
