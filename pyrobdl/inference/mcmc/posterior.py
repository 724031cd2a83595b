r"""The posterior of HMC/NUTS: the draws of every chain, with the sampler statistics."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from ..._util import check_positive_int
from ...network import BayesianNetwork
from ..base import Draws, Posterior, finite_draw_index

__all__ = ["MCMCPosterior", "HMCPosterior", "MAX_SAVED_DATA"]

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
        x, y: the training data (also :attr:`training_data`; used by :meth:`to_arviz`
            and the diagnostics when no data are passed). Saved with the posterior
            when they have at most :data:`MAX_SAVED_DATA` elements.

    :meth:`predict` uses every draw by default (``num_samples`` draws, thinned
    evenly, when given): the predictive is
    :math:`p(y\mid x)\approx\frac1{CT}\sum_{c,t}p(y\mid f_{\theta_{c,t}}(x))`
    over :math:`C` chains of :math:`T` draws. :meth:`draws` keeps the chains apart.

    Example (not run here: sampling takes seconds even for tiny nets)::

        posterior = inference.NUTS(num_samples=500, warmup_steps=500, num_chains=4, seed=0).fit(model, x, y)
        posterior.samples["0.weight"].shape      # (4, 500, *weight.shape)
        posterior.sample_stats["diverging"].sum()
        pred = posterior.predict(x_test)         # all 2,000 draws
        d = posterior.draws(400)                 # 100 per chain, thinned evenly, with the sampler statistics
        idata = posterior.to_arviz()             # for ArviZ: az.rhat, az.ess, az.loo

    References:
        M. D. Hoffman and A. Gelman, *The No-U-Turn Sampler* (JMLR 2014);
        A. Vehtari et al., *Rank-normalization, folding, and localization: an
        improved R-hat for assessing convergence of MCMC* (Bayesian Analysis 2021).
    """

    method = "nuts"
    default_num_samples = None
    markov_chains = True

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

    def _shape(self) -> Tuple[int, int]:
        if not self.samples:
            raise ValueError(
                f"this {type(self).__name__} holds no draws: it has not been fitted; get one from "
                "inference.NUTS(...).fit(model, x, y) (or HMC) or pyrobdl.load"
            )
        C, S = next(iter(self.samples.values())).shape[:2]
        return int(C), int(S)

    @property
    def num_chains(self) -> int:
        return self._shape()[0]

    @property
    def num_draws(self) -> int:
        """Draws per chain."""
        return self._shape()[1]

    @property
    def num_divergences(self) -> int:
        d = self.sample_stats.get("diverging")
        return int(d.sum()) if d is not None else 0

    @property
    def training_data(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The training data ``(x, y)`` the chains were run on, or ``None`` when they were
        not kept (a loaded posterior whose data exceeded :data:`MAX_SAVED_DATA`)."""
        return None if self.x is None or self.y is None else (self.x, self.y)

    @property
    def num_fixed_draws(self) -> int:
        """Chains x draws: the posterior's fixed set of draws."""
        C, S = self._shape()
        return C * S

    def sample_latents(self, num_samples: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """All draws, chains concatenated (``(C*S, *shape)``), or ``num_samples`` of them as
        for every posterior with a finite set of draws
        (:func:`~pyrobdl.inference.base.finite_draw_index`: fewer are thinned evenly, more
        repeat every draw as evenly as possible, with a warning)."""
        C, S = self._shape()
        flat = {k: v.reshape((C * S,) + v.shape[2:]) for k, v in self.samples.items()}
        idx = finite_draw_index(
            C * S, num_samples, what=f"MCMC draws ({C} chains x {S})", owner=self,
            device=next(iter(flat.values())).device,
        )
        return flat if idx is None else {k: v[idx] for k, v in flat.items()}

    def draws(self, num_samples: Optional[int] = None) -> Draws:
        """The chains as :class:`~pyrobdl.inference.base.Draws`: every draw, or about
        ``num_samples`` in all, thinned evenly within each chain (``num_samples // C`` per
        chain, at least one, at most all), with the sampler statistics of the same
        iterations."""
        C, S = self._shape()
        if num_samples is None:
            return Draws(dict(self.samples), dict(self.sample_stats), True)
        num_samples = check_positive_int(num_samples, "num_samples")
        per = max(1, min(S, num_samples // C))
        idx = torch.linspace(0, S - 1, per).round().long()
        values = {k: v[:, idx.to(v.device)] for k, v in self.samples.items()}
        stats = {k: v[:, idx.to(v.device)] for k, v in self.sample_stats.items()}
        return Draws(values, stats, True)

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
        from ... import diagnostics

        return diagnostics.summary(self, **kwargs)

    # -- save / load ------------------------------------------------------------------
    def get_state(self) -> Dict[str, Any]:
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
    def from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "MCMCPosterior":
        dev = model.device
        post = cls(
            model,
            {k: v.to(dev) for k, v in state["samples"].items()},
            dict(state.get("sample_stats", {})),
            x=None if state.get("x") is None else state["x"].to(dev),
            y=None if state.get("y") is None else state["y"].to(dev),
        )
        post.fit_info = dict(state.get("fit_info", {}))
        return post

    def __repr__(self) -> str:
        if not self.samples:
            return f"{type(self).__name__}(no draws)"
        return (
            f"{type(self).__name__}({self.num_chains} chains x {self.num_draws} draws, "
            f"{self.model.num_bayesian_parameters} weights, {self.num_divergences} divergences)"
        )


class HMCPosterior(MCMCPosterior):
    """:class:`MCMCPosterior` of :class:`~pyrobdl.inference.HMC` (fixed-length trajectories).

    Example (not run here: sampling takes seconds)::

        posterior = inference.HMC(num_steps=30, num_samples=1000, warmup_steps=500).fit(model, x, y)
        type(posterior).__name__                  # 'HMCPosterior'
        posterior.fit_info["step_size"]           # the adapted step size per chain

    Reference: R. M. Neal, *MCMC using Hamiltonian dynamics*, Handbook of
    Markov Chain Monte Carlo (2011).
    """

    method = "hmc"
