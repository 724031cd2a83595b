r"""What every MCMC method of pyrobdl shares: the settings of a run of chains (draws,
warm-up, chains, step size and its target acceptance, where the chains start, compilation,
the post-run diagnostics) and the starting points.

:class:`MCMCMethod` is the base of :class:`~pyrobdl.inference.NUTS` and
:class:`~pyrobdl.inference.HMC` (Pyro kernels on the flat potential, one chain per process)
and of :class:`~pyrobdl.inference.ChEESHMC` (many chains as one batched tensor program).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ..._util import check_positive_float, check_positive_int
from ...network import BayesianNetwork
from ..base import Inference, Posterior
from .posterior import MCMCPosterior
from .potential import FlatPotential

__all__ = ["MCMCMethod", "INIT_CHOICES"]

#: the named starting points (besides a fitted SVIPosterior or a dict of site values)
INIT_CHOICES = ("prior", "map", "vi")


class MCMCMethod(Inference):
    r"""Base class of the MCMC methods: the settings every run of chains has, and the
    chains' starting points (:meth:`initial_points`).

    Args:
        num_samples: draws kept per chain (>= 1).
        warmup_steps: adaptation iterations per chain, discarded (>= 0).
        num_chains: chains (>= 1).
        step_size: initial leapfrog step size (``None``: found by a heuristic, then
            adapted during warm-up).
        target_accept: the acceptance probability step-size adaptation aims at.
        adapt_step_size, adapt_mass_matrix: warm-up adaptation switches.
        init: ``"prior"``, ``"map"``, ``"vi"``, a fitted
            :class:`~pyrobdl.inference.SVIPosterior` or a dict of site values (see
            :meth:`initial_points`).
        init_steps: optimisation steps for ``init="map"``/``"vi"``.
        compile: compile the leapfrog with :func:`torch.compile` (``None``: when the
            run is not tiny).
        diagnose: after sampling, warn about R-hat, low ESS and divergences
            (:func:`pyrobdl.diagnostics.warn_if_problematic`).
        seed, progress: see :class:`~pyrobdl.inference.Inference`.
    """

    family = "mcmc"
    max_weights = 2000
    posterior_cls = MCMCPosterior

    #: the settings recorded in ``fit_info["settings"]``
    SETTINGS: Tuple[str, ...] = (
        "num_samples", "warmup_steps", "num_chains", "step_size", "target_accept",
        "adapt_step_size", "adapt_mass_matrix",
    )

    def __init__(
        self,
        *,
        num_samples: int = 500,
        warmup_steps: int = 500,
        num_chains: int = 2,
        step_size: Optional[float] = None,
        target_accept: float = 0.8,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = True,
        init: Union[str, Posterior, Mapping[str, torch.Tensor]] = "prior",
        init_steps: int = 500,
        compile: Optional[bool] = None,
        diagnose: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.warmup_steps = check_positive_int(warmup_steps, "warmup_steps", minimum=0)
        self.num_chains = check_positive_int(num_chains, "num_chains")
        self.step_size = None if step_size is None else check_positive_float(step_size, "step_size")
        ta = float(target_accept) if isinstance(target_accept, (int, float)) and not isinstance(target_accept, bool) else None
        if ta is None or not (0.0 < ta < 1.0):
            raise ValueError(f"target_accept must be a probability in (0, 1) (typically 0.6-0.99), got {target_accept!r}")
        self.target_accept = ta
        self.adapt_step_size = bool(adapt_step_size)
        self.adapt_mass_matrix = bool(adapt_mass_matrix)
        choices = "'prior', 'map', 'vi', a fitted SVIPosterior or a dict of site values"
        if isinstance(init, str):
            if init not in INIT_CHOICES:
                raise ValueError(f"init must be {choices}, got {init!r}")
        elif not isinstance(init, (Posterior, Mapping)):
            raise ValueError(f"init must be {choices}, got {type(init).__name__}")
        self.init = init
        self.init_steps = check_positive_int(init_steps, "init_steps")
        if compile is not None and not isinstance(compile, bool):
            raise ValueError(f"compile must be True, False or None (auto), got {compile!r}")
        self.compile = compile
        self.diagnose = bool(diagnose)

    def _settings(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.SETTINGS}

    def _use_compile(self) -> bool:
        if self.compile is not None:
            return self.compile
        # auto: compilation costs a few seconds once, and pays off when the run
        # takes many gradient evaluations (always, except for toy runs)
        return (self.warmup_steps + self.num_samples) * self.num_chains >= 400

    def _base_seed(self) -> int:
        """The run's seed: ``seed``, or one drawn from torch's RNG (seeded by the template)."""
        return self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())

    def initial_points(
        self, pot: FlatPotential, model: BayesianNetwork, x, y, num: Optional[int] = None
    ) -> Tuple[torch.Tensor, str]:
        """``num`` starting points ``(num, D)`` (unconstrained; default one per chain) and
        what they are:

        * ``"prior"``: a prior draw per chain (dispersed starts make R-hat meaningful);
        * ``"map"``: Adam on the log joint from a prior draw per chain (``init_steps`` steps,
          all chains in one batched pass);
        * ``"vi"`` or a fitted :class:`~pyrobdl.inference.SVIPosterior`: chain 0 at the
          posterior mean, the others at draws from it;
        * a dict of site values: one per chain, or one shared by all.
        """
        C = self.num_chains if num is None else num
        init = self.init
        if isinstance(init, str) and init == "prior":
            return pot.finite_prior_draws(C), "prior"
        if isinstance(init, str) and init == "map":
            return pot.find_map(pot.finite_prior_draws(C), num_steps=self.init_steps), "map"
        if isinstance(init, str) and init == "vi":
            from ..svi import MeanField

            init = MeanField(num_steps=max(self.init_steps, 1000), lr=1e-2, progress=False).fit(model, x, y)
        if isinstance(init, Posterior):
            from ..svi import SVIPosterior

            if not isinstance(init, SVIPosterior):
                raise ValueError(f"init must be a fitted SVIPosterior (or 'prior', 'map', 'vi'), got {type(init).__name__}")
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
            raise ValueError(f"init gives {z.shape[0]} starting points but {C} are needed; give one per chain or one in all")
        return z, "values"

    def _check_full_batch(self, data) -> None:
        if data.loader is not None:
            raise ValueError(
                f"{type(self).__name__} needs the full data set as tensors (every step uses all of it); "
                "pass x and y tensors instead of a DataLoader"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, warmup_steps={self.warmup_steps}, "
            f"num_chains={self.num_chains}, seed={self.seed!r})"
        )
