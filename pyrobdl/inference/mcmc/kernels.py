r"""HMC and NUTS transition kernels on flat tensors.

The kernels subclass Pyro's :class:`pyro.infer.mcmc.NUTS` / :class:`~pyro.infer.mcmc.HMC`
so that they keep Pyro's warm-up adaptation (dual-averaging step size, windowed diagonal
or dense mass matrix; :class:`pyro.infer.mcmc.adaptation.WarmupAdapter`) and run under
:class:`pyro.infer.MCMC`, but build the trajectory on the flat vector of a
:class:`~pyrobdl.inference.mcmc.potential.FlatPotential` with its (compiled) leapfrog
step. NUTS follows Stan's multinomial variant (Betancourt, 2017) with the generalised
U-turn criterion and its checks across merged sub-trees.
"""
from __future__ import annotations

import math
import random
from typing import Any, Dict, List

import numpy as np
import pyro
import pyro.infer.mcmc as _pyro_mcmc
import torch

from .potential import FlatPotential, pyro_potential_fn

__all__ = ["FlatNUTSKernel", "FlatHMCKernel", "FlatKernelMixin", "MAX_DELTA_H", "SAMPLE_STATS"]

#: energy error that counts as a divergence (Stan, Pyro)
MAX_DELTA_H = 1000.0
#: the per-iteration sampler statistics the kernels record
SAMPLE_STATS = ("diverging", "energy", "tree_depth", "n_steps", "step_size", "acceptance_rate", "lp")


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


class FlatKernelMixin:
    """Flat-tensor sampling for Pyro's HMC/NUTS kernels with one site ``"z"``.

    Keeps Pyro's ``WarmupAdapter`` (step size by dual averaging, windowed mass
    matrix) and bookkeeping (``_t``, ``_accept_cnt``, ``_divergences``,
    ``_mean_accept_prob``) so the kernel runs under :class:`pyro.infer.MCMC`;
    records per-iteration sample statistics in :attr:`stats`.
    """

    _flat: FlatPotential

    def __init__(self, pot: FlatPotential, *, dense_mass: bool = False, **kwargs):
        """``kwargs``: the options of Pyro's kernel (``step_size``, ``adapt_step_size``,
        ``target_accept_prob``, ...); ``dense_mass`` is its ``full_mass``."""
        super().__init__(potential_fn=pyro_potential_fn(pot), full_mass=dense_mass, **kwargs)
        self._flat = pot
        self._dense = bool(dense_mass)
        self._leapfrog = pot.safe_leapfrog_fn(self._dense)
        self.stats: Dict[str, List] = {k: [] for k in SAMPLE_STATS}
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


class FlatNUTSKernel(FlatKernelMixin, _pyro_mcmc.NUTS):
    """Pyro's NUTS kernel with a flat-tensor, multinomial, generalised-U-turn
    transition (Stan's algorithm; Betancourt 2017)."""

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
            if h - h0 > MAX_DELTA_H:
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


class FlatHMCKernel(FlatKernelMixin, _pyro_mcmc.HMC):
    """Pyro's HMC kernel with a flat-tensor transition and a fixed number of
    leapfrog steps (or a fixed trajectory length)."""

    def __init__(self, pot: FlatPotential, *, num_steps, **kwargs):
        super().__init__(pot, num_steps=num_steps, **kwargs)
        self._fixed_steps = num_steps

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
        diverging = dh > MAX_DELTA_H
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
