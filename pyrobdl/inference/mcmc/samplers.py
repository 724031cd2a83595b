r"""The HMC and NUTS inference methods: settings, starting points, and the fit that runs
the chains (:mod:`~pyrobdl.inference.mcmc.runner`) with the flat kernels
(:mod:`~pyrobdl.inference.mcmc.kernels`) on the flat potential
(:mod:`~pyrobdl.inference.mcmc.potential`)."""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..._util import check_positive_float, check_positive_int, warn_user
from ...network import BayesianNetwork
from ..base import Data
from ..registry import register_method
from .base import MCMCMethod
from .kernels import FlatHMCKernel, FlatNUTSKernel
from .posterior import HMCPosterior, MCMCPosterior
from .potential import FlatPotential
from .runner import num_threads, plan_chains, run_chains

__all__ = ["NUTS", "HMC", "LARGE_NETWORK_WARNING"]

#: number of latent weights above which fitting with HMC/NUTS warns that it will be slow
LARGE_NETWORK_WARNING = 5000

_SHARED_ARGS = """num_samples: draws kept per chain (>= 1; default 500).
        warmup_steps: adaptation iterations per chain, discarded (>= 0; default 500).
        num_chains: independent chains (>= 1; default 2, enough for R-hat to see two
            chains disagree; use 4 for a more sensitive check).
        step_size: initial leapfrog step size (default: found by Pyro's
            heuristic, then adapted by dual averaging during warm-up).
        target_accept: the average acceptance probability that step-size
            adaptation aims at. Raise it (0.9-0.99) when there are divergences:
            smaller steps, slower, more robust.
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
            network runs on one thread (see
            :data:`~pyrobdl.inference.mcmc.runner.SMALL_WORK`): intra-op
            parallelism only costs synchronisation at that size.
        compile: compile the leapfrog step with :func:`torch.compile`
            (``None``: when the run is not tiny). Falls back to eager with a
            warning if compilation fails.
        diagnose: after sampling, warn about R-hat > 1.01, low ESS and
            divergences (see :func:`pyrobdl.diagnostics.warn_if_problematic`).
        progress: show a progress bar.
        seed: seed; chain ``c`` uses ``seed + c``. ``None`` draws one from
            torch's RNG (so ``pyro.set_rng_seed`` makes runs reproducible too)."""


class _MCMCBase(MCMCMethod):
    """NUTS and HMC: Pyro kernels on the flat potential, one chain per process."""

    SETTINGS = MCMCMethod.SETTINGS + ("dense_mass",)

    def __init__(self, *, dense_mass: bool = False, chain_method: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.dense_mass = bool(dense_mass)
        if chain_method not in ("auto", "parallel", "sequential"):
            raise ValueError(f"chain_method must be 'auto', 'parallel' or 'sequential', got {chain_method!r}")
        self.chain_method = chain_method

    # hooks --------------------------------------------------------------------
    def _make_kernel(self, pot: FlatPotential):
        raise NotImplementedError

    def _kernel_options(self) -> Dict[str, Any]:
        """The options every flat kernel takes."""
        return {
            "step_size": self.step_size if self.step_size is not None else 1.0,
            "adapt_step_size": self.adapt_step_size,
            "adapt_mass_matrix": self.adapt_mass_matrix,
            "dense_mass": self.dense_mass,
            "target_accept_prob": self.target_accept,
        }

    # the fit -----------------------------------------------------------------------
    def _fit(self, model: BayesianNetwork, data: Data) -> MCMCPosterior:
        """Sample the posterior of ``model`` given full-batch tensors.

        Raises:
            ValueError: a DataLoader (MCMC needs the whole data set as tensors) or bad
                init values.
        """
        self._check_full_batch(data)
        x, y = data.x, data.y
        D = model.num_bayesian_parameters
        if D > LARGE_NETWORK_WARNING:
            warn_user(
                f"the network has {D} Bayesian weights (> {LARGE_NETWORK_WARNING}); HMC/NUTS cost grows quickly "
                "with the dimension and will be slow. Consider variational inference: "
                "inference.MeanField or inference.LowRank (or make only the last layer Bayesian with bayesian='last')."
            )
        # the template seeded the generators; chain c then runs on seed + c
        base_seed = self._base_seed()
        t0 = time.perf_counter()
        pot = FlatPotential(model, x, y, compile=self._use_compile())
        torch.manual_seed(base_seed)
        init, init_kind = self.initial_points(pot, model, x, y)
        method, workers, threads = plan_chains(self.chain_method, self.num_chains, pot)
        t_init = time.perf_counter()
        # compile once, before any fork, under the thread count and grad mode the chains use
        # (torch.compile guards on both; a recompilation inside a forked worker could deadlock)
        with num_threads(threads), torch.enable_grad():
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
        results = run_chains(job, self.num_chains, progress=self.progress, desc=self.name)
        seconds = time.perf_counter() - t0
        dev, dt = pot.device, pot.dtype
        z = torch.as_tensor(np.stack([r["z"] for r in results]), dtype=dt, device=dev)  # (C, S, D)
        samples = {k: v.contiguous() for k, v in pot.unpack(z).items()}

        def stacked(key):
            return {k: torch.as_tensor(np.stack([r[key][k] for r in results])) for k in results[0][key]}

        post = self.posterior_cls(model, samples, stacked("stats"), x=x, y=y)
        post.fit_info = {
            "seconds": seconds,
            "compile_seconds": t_compile,
            "compiled": pot.compiled,
            "chain_method": method,
            "threads_per_chain": threads,
            "chain_seconds": [r["seconds"] for r in results],
            "seed": base_seed,
            "init": init_kind,
            "step_size": [r["step_size"] for r in results],
            "inverse_mass_matrix": [torch.as_tensor(r["inverse_mass_matrix"]) for r in results],
            "warmup_stats": stacked("warmup_stats"),
            "settings": self._settings(),
        }
        if self.diagnose:
            from ... import diagnostics

            diagnostics.warn_if_problematic(post)
        return post


@register_method
class NUTS(_MCMCBase):
    r"""The No-U-Turn Sampler (Hoffman & Gelman, 2014): HMC that picks its own
    trajectory length, with Stan-style warm-up adaptation.

    The defaults are the measured ones (see the docs page "How the defaults were
    chosen"): 500 warm-up steps and 500 draws per chain, 2 chains, ``max_tree_depth=8``.
    Parameters outside the model's ``bayesian`` selection stay at their current values (the
    variational and point methods train them instead; see :class:`~pyrobdl.BayesianNetwork`).

    Args:
        max_tree_depth: at most :math:`2^{\text{depth}}-1` leapfrog steps per
            iteration (default 8).
        {args}

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
    SETTINGS = _MCMCBase.SETTINGS + ("max_tree_depth",)

    def __init__(self, *, max_tree_depth: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.max_tree_depth = check_positive_int(max_tree_depth, "max_tree_depth")

    def _make_kernel(self, pot):
        return FlatNUTSKernel(pot, max_tree_depth=self.max_tree_depth, **self._kernel_options())


@register_method
class HMC(_MCMCBase):
    r"""Hamiltonian Monte Carlo with a fixed number of leapfrog steps (Neal, 2011).

    Defaults (see the docs page "How the defaults were chosen"): 500 warm-up steps and
    500 draws per chain, 2 chains, 20 leapfrog steps per iteration.

    Args:
        num_steps: leapfrog steps per iteration (default 20 when neither it
            nor ``trajectory_length`` is given).
        trajectory_length: alternatively a fixed integration time
            :math:`L`; the number of steps is then :math:`\lceil L/\epsilon\rceil`
            as the step size :math:`\epsilon` adapts.
        {args}

    Example::

        posterior = inference.HMC(num_steps=30, num_samples=1000, warmup_steps=500).fit(model, x, y)

    Reference: R. M. Neal, *MCMC using Hamiltonian dynamics* (2011).
    """

    name = "hmc"
    aliases = ("hamiltonian",)
    posterior_cls = HMCPosterior
    SETTINGS = _MCMCBase.SETTINGS + ("num_steps", "trajectory_length")

    def __init__(self, *, num_steps: Optional[int] = None, trajectory_length: Optional[float] = None, **kwargs):
        super().__init__(**kwargs)
        if num_steps is not None and trajectory_length is not None:
            raise ValueError("give num_steps or trajectory_length, not both")
        if num_steps is None and trajectory_length is None:
            num_steps = 20
        self.num_steps = None if num_steps is None else check_positive_int(num_steps, "num_steps")
        self.trajectory_length = None if trajectory_length is None else check_positive_float(trajectory_length, "trajectory_length")

    def _make_kernel(self, pot):
        return FlatHMCKernel(pot, num_steps=self.num_steps, trajectory_length=self.trajectory_length, **self._kernel_options())


for _cls in (NUTS, HMC):
    _cls.__doc__ = _cls.__doc__.replace("{args}", _SHARED_ARGS)
