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
(:class:`FlatPotential`, on the :class:`~pyrobdl.inference.flat.FlatLayout` that
variational inference shares), one
leapfrog step including the gradient is a single :func:`torch.compile`-d call
(``compile=True``; eager autograd otherwise), and the kernel subclasses Pyro's
:class:`pyro.infer.mcmc.NUTS` / :class:`~pyro.infer.mcmc.HMC` so that it keeps
Pyro's warm-up adaptation (dual-averaging step size, windowed diagonal or dense
mass matrix; :class:`pyro.infer.mcmc.adaptation.WarmupAdapter`) and runs under
:class:`pyro.infer.MCMC`, but builds the tree on flat tensors.

**Chains** are independent: chain ``c`` is seeded with ``seed + c`` and runs
the same way whether chains run one after the other or in parallel worker
processes (``chain_method``), so results do not depend on the machine's cores.

The package: :mod:`~pyrobdl.inference.mcmc.potential` (the flat potential and its
leapfrog step), :mod:`~pyrobdl.inference.mcmc.kernels` (the NUTS and HMC transition
kernels), :mod:`~pyrobdl.inference.mcmc.runner` (chains in this process or in worker
processes), :mod:`~pyrobdl.inference.mcmc.samplers` (the :class:`NUTS` and :class:`HMC`
methods), :mod:`~pyrobdl.inference.mcmc.chees` (:class:`ChEESHMC`: many chains as one
batched tensor program, the reference sampler), :mod:`~pyrobdl.inference.mcmc.base`
(:class:`MCMCMethod`, the settings and starting points they share) and :mod:`~pyrobdl.inference.mcmc.posterior` (:class:`MCMCPosterior`).

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
from .base import MCMCMethod
from .kernels import FlatHMCKernel, FlatNUTSKernel
from .posterior import MAX_SAVED_DATA, HMCPosterior, MCMCPosterior
from .potential import FlatPotential
from .runner import SMALL_WORK
from .samplers import HMC, LARGE_NETWORK_WARNING, NUTS
from .chees import ChEESHMC, ChEESPosterior

__all__ = [
    "NUTS",
    "HMC",
    "ChEESHMC",
    "ChEESPosterior",
    "MCMCMethod",
    "MCMCPosterior",
    "HMCPosterior",
    "FlatPotential",
    "FlatNUTSKernel",
    "FlatHMCKernel",
    "LARGE_NETWORK_WARNING",
    "MAX_SAVED_DATA",
    "SMALL_WORK",
]
