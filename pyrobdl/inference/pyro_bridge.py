r"""From what a Pyro user already has to a pyrobdl posterior: :func:`from_pyro`.

A Pyro model ``model(x, y=None)`` with an observed site (``"obs"``) plus *either* a fitted
guide (any autoguide or a hand-written guide) *or* posterior draws (a dict of tensors, a
:class:`pyro.infer.MCMC` object after ``run``, or the output of :class:`pyro.infer.Predictive`)
becomes a posterior with pyrobdl's predictive interface: ``predict(x)`` returns the same
:class:`~pyrobdl.prediction.RegressionPrediction` / :class:`~pyrobdl.prediction.ClassificationPrediction`
as every other pyrobdl posterior, so the epistemic/aleatoric split, ``log_prob``, ``interval``,
:mod:`pyrobdl.metrics` and :mod:`pyrobdl.plots` all apply; ``draws()`` and ``to_arviz(x, y)``
export the draws (MCMC chains kept apart), and posteriors made of draws can be saved.

**The predictive mixture.** For draws :math:`\theta_1..\theta_S` of the latent sites (from the
guide :math:`q(\theta)` or the given samples) the model is run with the latents fixed to each
draw, and the observed site's distribution :math:`p(y\mid x,\theta_s)` is read from the trace
(``trace.nodes["obs"]["fn"]``, after unwrapping ``Independent``, ``Expanded`` and ``Masked``
distributions). The predictive is the equal-weight mixture

.. math::

    p(y\mid x, \mathcal D) \approx \frac1S\sum_{s=1}^S p(y\mid x, \theta_s).

*Regression* (``Normal``; ``StudentT`` with ``df > 2`` and ``Laplace`` are moment-matched to a
Gaussian per draw) splits the predictive variance by the law of total variance,

.. math::

    \operatorname{Var}[y] = \underbrace{\tfrac1S\textstyle\sum_s \sigma_s^2(x)}_{\text{aleatoric}}
    + \underbrace{\tfrac1S\textstyle\sum_s (\mu_s(x) - \bar\mu(x))^2}_{\text{epistemic}},

with :math:`\mu_s, \sigma_s^2` the mean and variance of the observed site under draw :math:`s`.
*Classification* (``Categorical``; ``Bernoulli`` as two classes :math:`[1-p, p]`, as
:class:`pyrobdl.likelihoods.Bernoulli` predicts) splits the entropy of the mean probabilities,
:math:`H[\bar p] = \frac1S\sum_s H[p_s] + I[y,\theta]` (expected entropy: aleatoric; mutual
information: epistemic).

**Vectorised over draws.** The model runs once for all :math:`S` draws, under an outer
``pyro.plate`` left of the model's own plates (as ``Predictive(parallel=True)`` does; the plate
nesting is found by tracing the model once), with ``poutine.condition`` on the draws. A model
not written for a batch of draws (e.g. ``nn.Linear`` layers with sampled weights) fails there,
or disagrees with single runs of its first and last draws; pyrobdl then runs the model once per draw,
warning once.

**A BayesianNetwork model** runs on the network's batched engine instead
(:meth:`~pyrobdl.BayesianNetwork.outputs_from_samples`): a guide of your own on a
:class:`~pyrobdl.BayesianNetwork` needs no hand-written posterior class.

References:
    * Pyro's :class:`pyro.infer.Predictive` (the vectorised predictive, ``parallel=True``).
    * A. Kendall and Y. Gal, *What Uncertainties Do We Need in Bayesian Deep Learning for
      Computer Vision?* (NeurIPS 2017): the epistemic/aleatoric split.
    * N. Houlsby, F. Huszár, Z. Ghahramani and M. Lengyel, *Bayesian Active Learning for
      Classification and Preference Learning* (2011): the mutual information.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.util import prune_subsample_sites
from torch import nn

from .._util import check_inputs, check_positive_int, eval_mode, warn_user
from ..network import BayesianNetwork
from ..prediction import ClassificationPrediction, Prediction, RegressionPrediction
from .base import DEFAULT_NUM_DRAWS, Draws, Posterior, finite_draw_index

__all__ = ["from_pyro", "PyroPosterior", "PyroMCMCPosterior", "DEFAULT_GUIDE_SAMPLES", "SUPPORTED_OBS"]

#: draws a guide-based posterior takes when ``predict`` is not told
DEFAULT_GUIDE_SAMPLES = 100
#: the outer plate that vectorises the model over draws
DRAWS_PLATE = "_pyrobdl_draws"
#: observation distributions :func:`from_pyro` reads (after unwrapping Independent/Expanded/Masked)
SUPPORTED_OBS = (
    "Normal (regression), StudentT with df > 2 and Laplace (regression, moment-matched to a Gaussian per draw), "
    "Categorical and Bernoulli (classification)"
)
#: training data kept in a saved file up to this many elements
MAX_SAVED_DATA = 1_000_000
_MOMENT_MATCHED = (dist.StudentT, dist.Laplace)


# ============================================================================ helpers
def _name(obj) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__


def _unwrap(fn: torch.distributions.Distribution) -> torch.distributions.Distribution:
    """The base of ``Independent``, ``ExpandedDistribution`` and ``MaskedDistribution`` wrappers."""
    while isinstance(fn, (torch.distributions.Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    return fn


def _obs_params(fn, obs_site: str) -> Tuple[str, Dict[str, torch.Tensor]]:
    """``("regression", {"loc", "scale"})`` or ``("classification", {"probs"})`` of an
    observation distribution, broadcast to its full shape ``batch + event`` (``+ (C,)``)."""
    base = _unwrap(fn)
    full = tuple(fn.batch_shape) + tuple(fn.event_shape)
    if isinstance(base, dist.Normal):
        return "regression", {"loc": torch.broadcast_to(base.loc, full), "scale": torch.broadcast_to(base.scale, full)}
    if isinstance(base, _MOMENT_MATCHED):
        var = base.variance
        if not bool(torch.isfinite(var).all()):
            raise ValueError(
                f"the observed site {obs_site!r} is a {type(base).__name__} with infinite variance under some draws "
                "(StudentT needs df > 2): its predictive has no variance to split; supported: " + SUPPORTED_OBS
            )
        return "regression", {"loc": torch.broadcast_to(base.mean, full), "scale": torch.broadcast_to(var.sqrt(), full)}
    if isinstance(base, dist.Categorical):
        p = base.probs
        return "classification", {"probs": torch.broadcast_to(p, full + (p.shape[-1],))}
    if isinstance(base, dist.Bernoulli):
        p1 = torch.broadcast_to(base.probs, full)
        return "classification", {"probs": torch.stack([1 - p1, p1], -1)}
    raise ValueError(
        f"the observed site {obs_site!r} has a {type(base).__name__} distribution"
        + (f" (inside {type(fn).__name__})" if base is not fn else "")
        + f", which from_pyro cannot turn into a prediction; supported: {SUPPORTED_OBS}"
    )


def _strip_ones(shape) -> Tuple[int, ...]:
    return tuple(int(d) for d in shape if d != 1)


def _normalise(name: str, v: torch.Tensor, lead: int, shape: Tuple[int, ...], what: str) -> torch.Tensor:
    """``v`` of shape ``(*lead dims, *extra singleton dims, *shape)`` (e.g. ``Predictive``'s
    ``(S, 1, *shape)`` for a global site under a plate) as ``(*lead dims, *shape)``."""
    head, rest = tuple(v.shape[:lead]), tuple(v.shape[lead:])
    if rest == tuple(shape):
        return v
    k = len(rest) - len(shape)
    if k >= 0 and rest[k:] == tuple(shape) and all(d == 1 for d in rest[:k]):
        return v.reshape(head + tuple(shape))
    if _strip_ones(rest) == _strip_ones(shape):
        return v.reshape(head + tuple(shape))
    lead_txt = "S" if lead == 1 else "chains, draws"
    raise ValueError(
        f"{what}[{name!r}] has shape {tuple(v.shape)} but the model's site {name!r} has values of shape "
        f"{tuple(shape)}; pass ({lead_txt}, {', '.join(map(str, shape))}) (Predictive's ({lead_txt}, 1, ...) with "
        "singleton plate dims is accepted too)"
    )


def _as_tensor(name: str, v, what: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach()
    try:
        import numpy as np

        if isinstance(v, np.ndarray):
            return torch.as_tensor(v)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"{what}[{name!r}] must be a torch.Tensor (draws stacked along dim 0), got {type(v).__name__}")


def _subset(flat: Dict[str, torch.Tensor], total: int, num_samples: Optional[int], what: str, owner=None) -> Dict[str, torch.Tensor]:
    """All ``total`` draws (``None``), or ``num_samples`` of them as for every posterior with a
    fixed set of draws (:func:`~pyrobdl.inference.base.finite_draw_index`)."""
    idx = finite_draw_index(total, num_samples, what=what, owner=owner)
    if idx is None:
        return flat
    return {k: v[idx.to(v.device)] for k, v in flat.items()}


@dataclass
class _Structure:
    """What one run of a Pyro model at inputs ``x`` tells: its latent sites (value shapes and
    number of batch dims), which of them sit in a plate, the observed site's shape, and the
    plate nesting."""

    latent: Dict[str, Tuple[Tuple[int, ...], int]]
    local: set
    obs_shape: Tuple[int, ...]
    obs_event_dims: int
    nesting: int


# ============================================================================ the posterior
class PyroPosterior(Posterior):
    r"""A posterior of a Pyro model from a fitted guide or from posterior draws; build it with
    :func:`from_pyro`.

    Attributes:
        model: the Pyro model (a function, a ``PyroModule`` or a :class:`~pyrobdl.BayesianNetwork`).
        guide: the guide, or ``None`` for a posterior of draws.
        samples: site -> ``(chains, draws, *shape)`` for a posterior of draws (``None`` for a guide;
            a dict of draws is one chain).
        sample_stats: MCMC statistics -> ``(chains, draws)`` (``diverging``, from the MCMC kernel's diagnostics).
        obs_site: the observed site's name.
        on_network: whether the model is a :class:`~pyrobdl.BayesianNetwork` (predictions then
            run on its batched engine).
        vectorised: ``False`` once the model was found not to run on a batch of draws (it is
            then run once per draw).
    """

    method = "from-pyro"

    def __init__(
        self,
        model: Callable,
        *,
        guide: Optional[Callable] = None,
        samples: Optional[Dict[str, torch.Tensor]] = None,
        sample_stats: Optional[Dict[str, torch.Tensor]] = None,
        obs_site: str = "obs",
        example_args: Optional[Tuple] = None,
        training_data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    ):
        self.on_network = isinstance(model, BayesianNetwork)
        if self.on_network:
            super().__init__(model)
        else:
            self.model = model
            self.fit_info: Dict[str, Any] = {}
        if (guide is None) == (samples is None):
            raise ValueError("PyroPosterior needs exactly one of guide= and samples= (use pyrobdl.from_pyro)")
        self.guide = guide
        self.obs_site = obs_site
        self.samples: Optional[Dict[str, torch.Tensor]] = None if samples is None else dict(samples)
        self.sample_stats: Dict[str, torch.Tensor] = dict(sample_stats or {})
        self.default_num_samples = DEFAULT_GUIDE_SAMPLES if guide is not None else None
        self._example_args = example_args
        self._training_data = training_data
        self._last_x: Optional[torch.Tensor] = None
        self.vectorised = True
        self._guide_vectorised = True
        self._warned = False
        if self.samples is not None:
            shapes = {tuple(v.shape[:2]) for v in self.samples.values()}
            if len(shapes) != 1:
                raise ValueError(
                    "every site of samples needs the same (chains, draws) leading shape, got "
                    + ", ".join(f"{k}: {tuple(v.shape[:2])}" for k, v in self.samples.items())
                )
            if self.on_network:
                self.samples = self._network_samples(self.samples)

    # ------------------------------------------------------------------ basics
    @property
    def num_chains(self) -> Optional[int]:
        return None if self.samples is None else int(next(iter(self.samples.values())).shape[0])

    @property
    def num_draws(self) -> Optional[int]:
        """Draws per chain (``None`` for a guide)."""
        return None if self.samples is None else int(next(iter(self.samples.values())).shape[1])

    @property
    def num_fixed_draws(self) -> Optional[int]:
        """Chains x draws of a fixed set of draws, ``None`` for a guide (it draws afresh)."""
        return None if self.samples is None else self.num_chains * self.num_draws

    @property
    def training_data(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` an MCMC object was run on (``to_arviz`` and the diagnostics use them when
        no data are passed), else ``None``."""
        return self._training_data

    @property
    def device(self) -> torch.device:
        if self.on_network:
            return self.model.device
        for v in (self.samples or {}).values():
            return v.device
        for mod in (self.guide, self.model):
            if isinstance(mod, nn.Module):
                for p in mod.parameters():
                    return p.device
        return torch.device("cpu")

    def to(self, device) -> "PyroPosterior":
        """Move the draws, the training data, and a model or guide that is an ``nn.Module``."""
        device = torch.device(device)
        if self.samples is not None:
            self.samples = {k: v.to(device) for k, v in self.samples.items()}
        self.sample_stats = {k: v.to(device) for k, v in self.sample_stats.items()}
        if self._training_data is not None:
            self._training_data = tuple(t.to(device) for t in self._training_data)
        for mod in (self.model, self.guide):
            if isinstance(mod, nn.Module):
                mod.to(device)
        return self

    def __repr__(self) -> str:
        src = f"guide={_name(self.guide)}" if self.guide is not None else (
            f"samples={self.num_chains} chain(s) x {self.num_draws} draws")
        return f"{type(self).__name__}(model={_name(self.model)}, {src}, obs_site={self.obs_site!r})"

    # ------------------------------------------------------------------ running the model
    def _model_mode(self):
        return eval_mode(self.model) if isinstance(self.model, nn.Module) else contextlib.nullcontext()

    def _resolve_x(self, x, *, required: bool = True) -> Optional[torch.Tensor]:
        """The inputs to run the model (and a guide) at: ``x``, else the last inputs seen, else
        those the guide or sampler was run with."""
        if x is not None:
            x = check_inputs(x, "x")
            if self.samples is not None and not self.on_network:
                ref = next(iter(self.samples.values()))
                if ref.is_floating_point() and x.dtype != ref.dtype:
                    x = x.to(ref.dtype)
            if x.device != self.device:
                self.to(x.device)
            self._last_x = x
            return x
        if self._last_x is not None:
            return self._last_x
        if self._example_args:
            return self._example_args[0]
        if required:
            raise ValueError(
                f"running the model {_name(self.model)} needs its inputs: pass x (e.g. posterior.draws(x=x_train), "
                "posterior.sample_latents(100, x=x_train)) or call posterior.predict(x) first"
            )
        return None

    def _structure(self, x: torch.Tensor) -> _Structure:
        """Run the model once at ``x`` (latents from the prior, nothing observed) and read its
        sites."""
        with torch.no_grad(), self._model_mode():
            tr = poutine.trace(self.model).get_trace(x)
        tr = prune_subsample_sites(tr)
        sites = {n: s for n, s in tr.nodes.items() if s["type"] == "sample"}
        if self.obs_site not in sites:
            found = ", ".join(repr(n) for n in sites) or "none"
            raise ValueError(
                f"the model {_name(self.model)} has no sample site {self.obs_site!r} (its sample sites: {found}); "
                "pass the name of the observed site as obs_site="
            )
        nesting = 0
        latent: Dict[str, Tuple[Tuple[int, ...], int]] = {}
        local = set()
        for n, s in sites.items():
            dims = [f.dim for f in s["cond_indep_stack"] if f.vectorized and f.dim is not None]
            nesting = max(nesting, len(s["fn"].batch_shape), -min(dims) if dims else 0)
            if n == self.obs_site or s["is_observed"]:
                continue
            latent[n] = (tuple(s["value"].shape), len(s["fn"].batch_shape))
            if any(f.vectorized for f in s["cond_indep_stack"]):
                local.add(n)
        obs = sites[self.obs_site]
        _obs_params(obs["fn"], self.obs_site)  # an unsupported distribution: say so now
        obs_shape = tuple(obs["fn"].batch_shape) + tuple(obs["fn"].event_shape)
        N = x.shape[0]
        if not obs_shape or obs_shape[0] != N:
            raise ValueError(
                f"the observed site {self.obs_site!r} has shape {obs_shape} for {N} inputs; a prediction needs one row "
                "per input first, (N, ...): sample it inside pyro.plate('data', x.shape[0])"
            )
        return _Structure(latent, local, obs_shape, len(obs["fn"].event_shape), nesting)

    def _global_values(self, values: Mapping[str, torch.Tensor], st: _Structure, what: str, lead: int = 1) -> Dict[str, torch.Tensor]:
        """The draws of the model's latent sites, shaped ``(S, *value shape)``; a global latent site
        without draws is an error (a local one, inside a plate, is left to the model)."""
        missing = [n for n in st.latent if n not in values and n not in st.local]
        if missing:
            raise ValueError(
                f"{what} has no values for the latent site(s) {missing} of the model (it has "
                f"{sorted(values) or 'none'}); give draws of every global latent site"
            )
        return {n: _normalise(n, values[n], lead, st.latent[n][0], what) for n in st.latent if n in values}

    def _warn_loop(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            warn_user(
                f"{why}; pyrobdl runs it once per draw instead (slower). To run all draws at once, write the "
                "model for a batch of draws (sampled values get extra leading dims, as under "
                "Predictive(parallel=True))."
            )

    def _obs_fns(self, x: torch.Tensor, values: Dict[str, torch.Tensor], st: _Structure, chunk_size: Optional[int] = None):
        """The observed site's distribution under the draws ``values`` (site -> ``(S, *shape)``):
        ``[(fn, S_chunk)]`` for vectorised runs (fn's shape ``(S_chunk, ..., *obs_shape)``) or
        ``[(fn, None)]`` per draw."""
        S = int(next(iter(values.values())).shape[0]) if values else 1
        if self.vectorised:
            step = S if chunk_size is None else chunk_size
            try:
                fns = [(self._vectorised_fn(x, {k: v[s0:s0 + step] for k, v in values.items()}, st), min(step, S - s0))
                       for s0 in range(0, S, step)]
            except _NotBatched as e:
                self.vectorised = False
                self._warn_loop(str(e))
            else:
                if not set(st.latent) <= set(values) or self._agrees(x, values, st, fns):
                    return fns
                self.vectorised = False
                self._warn_loop(
                    f"the model {_name(self.model)} run on a batch of draws disagrees with single runs of its "
                    "draws (it is not written for a batch of draws)"
                )
        return [(self._single_fn(x, {k: v[s] for k, v in values.items()}, st), None) for s in range(S)]

    def _agrees(self, x, values, st: _Structure, fns) -> bool:
        """Whether the vectorised run gives, for the first and the last draw, what single runs of
        them give (checked when every latent is fixed by the draws, so all runs are deterministic):
        a model that is not written for a batch of draws may still return the right shapes."""
        S = int(next(iter(values.values())).shape[0])
        for s, (fn, n, j) in ((0, fns[0] + (0,)), (S - 1, fns[-1] + (fns[-1][1] - 1,))):
            a = _obs_params(fn, self.obs_site)[1]
            b = _obs_params(self._single_fn(x, {k: v[s] for k, v in values.items()}, st), self.obs_site)[1]
            if not all(torch.allclose(a[k].reshape((n, -1))[j], b[k].reshape(-1), rtol=1e-4, atol=1e-6) for k in a):
                return False
            if S == 1:
                break
        return True

    def _vectorised_fn(self, x, values, st: _Structure):
        S = int(next(iter(values.values())).shape[0])
        data = {}
        for n, v in values.items():
            shape, nb = st.latent[n]
            data[n] = v.reshape((S,) + (1,) * (st.nesting - nb) + shape)
        try:
            with torch.no_grad(), self._model_mode(), pyro.plate(DRAWS_PLATE, S, dim=-(st.nesting + 1)):
                tr = poutine.trace(poutine.condition(self.model, data=data)).get_trace(x)
            fn = tr.nodes[self.obs_site]["fn"]
        except Exception as e:  # noqa: BLE001 - any failure of a model not written for batches
            raise _NotBatched(
                f"the model {_name(self.model)} failed on a batch of {S} draws "
                f"({type(e).__name__}: {' '.join(str(e).split())[:160]})"
            ) from e
        full = tuple(fn.batch_shape) + tuple(fn.event_shape)
        if not full or full[0] != S or _strip_ones(full[1:]) != _strip_ones(st.obs_shape) or \
                math.prod(full[1:]) != math.prod(st.obs_shape):
            raise _NotBatched(
                f"the model {_name(self.model)} run on a batch of {S} draws gave the observed site shape {full}, "
                f"not ({S}, ..., {', '.join(map(str, st.obs_shape))})"
            )
        return fn

    def _single_fn(self, x, values, st: _Structure):
        with torch.no_grad(), self._model_mode():
            tr = poutine.trace(poutine.condition(self.model, data=values)).get_trace(x)
        fn = tr.nodes[self.obs_site]["fn"]
        full = tuple(fn.batch_shape) + tuple(fn.event_shape)
        if full != st.obs_shape:
            raise ValueError(
                f"under a posterior draw the observed site {self.obs_site!r} has shape {full}, under the prior "
                f"{st.obs_shape}; the model's output shape must not depend on the latent values"
            )
        return fn

    def _stack(self, fns, get: Callable, tail: Tuple[int, ...]) -> torch.Tensor:
        """``get(fn)`` of every draw as one ``(S, *tail)`` tensor."""
        parts = []
        for fn, n in fns:
            t = get(fn)
            parts.append(t.reshape((n,) + tail) if n is not None else t.reshape((1,) + tail))
        return torch.cat(parts, 0)

    # ------------------------------------------------------------------ draws
    def _guide_draws(self, S: int, x: torch.Tensor, sites: Dict[str, Tuple[int, ...]], nesting: int, local=()) -> Dict[str, torch.Tensor]:
        """``S`` draws of the guide at inputs ``x``: site -> ``(S, *shape)`` for the model's latent
        ``sites``, all at once under an outer plate (one guide run per draw when that fails)."""
        def pick(tr, lead):
            missing = [n for n in sites if n not in tr.nodes and n not in local]
            if missing:
                raise ValueError(
                    f"the guide {_name(self.guide)} samples none of the latent site(s) {missing} of the model; a guide "
                    "must sample every global latent site (an autoguide of the model does)"
                )
            return {n: _normalise(n, tr.nodes[n]["value"].detach(), lead, sites[n], "the guide's draws")
                    for n in sites if n in tr.nodes}

        with torch.no_grad():
            if self._guide_vectorised:
                try:
                    with pyro.plate(DRAWS_PLATE, S, dim=-(nesting + 1)):
                        tr = poutine.trace(self.guide).get_trace(x)
                    return pick(tr, 1)
                except ValueError as e:
                    if "samples none of" in str(e):
                        raise
                    err = e
                except Exception as e:  # noqa: BLE001 - a guide not written for batches
                    err = e
                self._guide_vectorised = False
                self._warn_loop(
                    f"the guide {_name(self.guide)} failed on a batch of {S} draws "
                    f"({type(err).__name__}: {' '.join(str(err).split())[:160]})"
                )
            draws = [pick(poutine.trace(self.guide).get_trace(x), 0) for _ in range(S)]
        return {n: torch.stack([d[n] for d in draws]) for n in draws[0]}

    def sample_latents(self, num_samples: Optional[int] = None, *, x=None) -> Dict[str, torch.Tensor]:
        """Draws of every latent site: site -> ``(S, *shape)``.

        A guide draws ``num_samples`` (default 100) at inputs ``x`` (default: the last inputs
        predicted at, or those the guide was fitted on). A fixed set of ``S`` draws gives all of
        them for ``num_samples=None``, an evenly spaced subset for a smaller number, and raises
        ``ValueError`` for a larger one.
        """
        if self.samples is not None:
            C, T = self.num_chains, self.num_draws
            flat = {k: v.reshape((C * T,) + tuple(v.shape[2:])) for k, v in self.samples.items()}
            if not self.on_network:
                xr = self._resolve_x(x, required=False)
                if xr is not None:
                    flat = self._global_values(flat, self._structure(xr), "samples")
                else:
                    flat = {k: v for k, v in flat.items() if k not in (self.obs_site, "_RETURN")}
            elif self.model.dtype.is_floating_point:
                flat = {k: v.to(self.model.dtype) if v.is_floating_point() else v for k, v in flat.items()}
            return _subset(flat, C * T, num_samples, "posterior draws" if C == 1 else f"posterior draws ({C} chains x {T})", self)
        S = DEFAULT_GUIDE_SAMPLES if num_samples is None else check_positive_int(num_samples, "num_samples")
        xr = self._resolve_x(x)
        if self.on_network:  # its data plate is the only plate: draws go in a plate at dim -2
            sites = {n: tuple(s.shape) for n, s in self.model.latent_sites().items()}
            return self._guide_draws(S, xr.to(self.model.dtype), sites, 1)
        st = self._structure(xr)
        return self._guide_draws(S, xr, {n: s for n, (s, _) in st.latent.items()}, st.nesting, st.local)

    def _network_samples(self, samples: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Draws ``(chains, draws, ...)`` of a BayesianNetwork's sites, shaped as its latent sites."""
        sites = self.model.latent_sites()
        missing = [n for n in sites if n not in samples]
        if missing:
            raise ValueError(
                f"samples has no values for the site(s) {missing} of the BayesianNetwork (it has {sorted(samples)}); "
                f"give draws of every latent site: {list(sites)}"
            )
        return {n: _normalise(n, samples[n], 2, tuple(s.shape), "samples") for n, s in sites.items()}

    def draws(self, num_samples: Optional[int] = None, *, x=None) -> Draws:
        """Posterior draws as ``chains x draws`` (:class:`~pyrobdl.inference.base.Draws`): every
        draw of a fixed set with its chains (MCMC), or ``num_samples`` in all thinned evenly
        within each chain (at most every draw); a guide's ``num_samples``
        (default 1000) draws as one chain, at inputs ``x`` (see :meth:`sample_latents`)."""
        if self.samples is None:
            n = DEFAULT_NUM_DRAWS if num_samples is None else check_positive_int(num_samples, "num_samples")
            flat = self.sample_latents(n, x=x)
            return Draws({k: v.unsqueeze(0) for k, v in flat.items()}, {}, self.markov_chains)
        C, T = self.num_chains, self.num_draws
        values = dict(self.samples)
        if not self.on_network:
            xr = self._resolve_x(x, required=False)
            if xr is not None:
                values = self._global_values(values, self._structure(xr), "samples", lead=2)
            else:
                values = {k: v for k, v in values.items() if k not in (self.obs_site, "_RETURN")}
        stats = dict(self.sample_stats)
        if num_samples is not None:
            num_samples = check_positive_int(num_samples, "num_samples")
            per = max(1, min(T, num_samples // C))
            idx = torch.linspace(0, T - 1, per).round().long()
            values = {k: v[:, idx.to(v.device)] for k, v in values.items()}
            stats = {k: v[:, idx.to(v.device)] for k, v in stats.items()}
        return Draws(values, stats, self.markov_chains)

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        x,
        *,
        num_samples: Optional[int] = None,
        chunk_size: Optional[int] = None,
        max_memory: Optional[int] = None,
    ) -> Prediction:
        r"""Posterior predictive at inputs ``x``: a
        :class:`~pyrobdl.prediction.RegressionPrediction` or
        :class:`~pyrobdl.prediction.ClassificationPrediction` over the draws.

        ``num_samples``: for a guide, the number of draws (default 100); for a fixed set of
        :math:`S` draws, ``None`` uses all of them, and another number means what it means for
        every posterior with a fixed set (:func:`~pyrobdl.inference.base.finite_draw_index`: an
        evenly spaced subset, or every draw repeated as evenly as possible, with a warning).
        ``chunk_size`` bounds the draws per vectorised model run (a BayesianNetwork's engine
        also takes ``max_memory``).
        """
        if chunk_size is not None:
            chunk_size = check_positive_int(chunk_size, "chunk_size")
        if self.on_network:
            self._resolve_x(x)
            return super().predict(x, num_samples=num_samples, chunk_size=chunk_size, max_memory=max_memory)
        x = self._resolve_x(x)
        st, values = self._draws_at(x, num_samples)
        fns = self._obs_fns(x, values, st, chunk_size)
        task, _ = _obs_params(fns[0][0], self.obs_site)
        if task == "regression":
            loc = self._stack(fns, lambda f: _obs_params(f, self.obs_site)[1]["loc"], st.obs_shape)
            scale = self._stack(fns, lambda f: _obs_params(f, self.obs_site)[1]["scale"], st.obs_shape)
            return RegressionPrediction(loc=loc, scale=scale)
        probs = self._stack(fns, lambda f: _obs_params(f, self.obs_site)[1]["probs"], st.obs_shape + (-1,))
        return ClassificationPrediction(probs=probs)

    def _draws_at(self, x: torch.Tensor, num_samples: Optional[int]):
        """The model's structure at ``x`` and the draws to predict with (site -> ``(S, *shape)``)."""
        st = self._structure(x)
        if self.samples is not None:
            C, T = self.num_chains, self.num_draws
            flat = {k: v.reshape((C * T,) + tuple(v.shape[2:])) for k, v in self.samples.items()}
            values = self._global_values(flat, st, "samples")
            values = _subset(values, C * T, num_samples, "posterior draws")
        else:
            S = DEFAULT_GUIDE_SAMPLES if num_samples is None else check_positive_int(num_samples, "num_samples")
            values = self._guide_draws(S, x, {n: s for n, (s, _) in st.latent.items()}, st.nesting, st.local)
        if not values:
            raise ValueError(f"the model {_name(self.model)} has no latent sample sites to draw")
        return st, values

    # ------------------------------------------------------------------ ArviZ
    def to_arviz(self, x=None, y=None, *, num_samples: Optional[int] = None):
        """Export to ArviZ: the ``posterior`` (chains kept apart), ``sample_stats`` (MCMC), and with
        data ``(x, y)`` (default: the data an MCMC object was run on) the pointwise
        ``log_likelihood`` of the observed site, ``posterior_predictive`` and ``observed_data``;
        see :func:`pyrobdl.diagnostics.to_arviz`."""
        if self.on_network:
            return super().to_arviz(x, y, num_samples=num_samples)
        from ..diagnostics import inference_data, sample_stats_arrays, to_numpy

        if x is None and y is None and self._training_data is not None:
            x, y = self._training_data
        elif (x is None) != (y is None):
            raise ValueError("pass both x and y (the data for the log_likelihood and observed_data groups), or neither")
        d = self.draws(num_samples, x=x)
        C, T = d.num_chains, d.num_draws
        groups: Dict[str, Dict[str, Any]] = {"posterior": {k: to_numpy(v) for k, v in d.values.items()}}
        if self.markov_chains:
            groups["sample_stats"] = sample_stats_arrays(d.sample_stats)
        dims: Dict[str, List[str]] = {}
        if x is not None:
            x = self._resolve_x(x)
            st = self._structure(x)
            yt = torch.as_tensor(y, device=x.device)
            if yt.numel() != math.prod(st.obs_shape):
                raise ValueError(
                    f"y has shape {tuple(yt.shape)} but the observed site {self.obs_site!r} has shape {st.obs_shape} "
                    "at these x; pass one target per input"
                )
            yt = yt.reshape(st.obs_shape)
            flat = {k: v.reshape((C * T,) + tuple(v.shape[2:])) for k, v in d.values.items()}
            values = self._global_values(flat, st, "samples")
            fns = self._obs_fns(x, values, st)
            nb = len(st.obs_shape) - st.obs_event_dims
            if nb == 0:
                raise ValueError(
                    f"the observed site {self.obs_site!r} is one event over all data points (no batch dim), so it has "
                    "no pointwise log-likelihood; sample it inside pyro.plate('data', x.shape[0])"
                )
            N = st.obs_shape[0]
            batch = st.obs_shape[:nb]

            def ll(fn):
                if isinstance(_unwrap(fn), dist.Categorical):
                    return fn.log_prob(yt.long())
                ref = next(iter(_obs_params(fn, self.obs_site)[1].values()))
                return fn.log_prob(yt.to(ref.dtype))

            lp = self._stack(fns, ll, batch).reshape(C * T, N, -1).sum(-1)
            rep = self._stack(fns, lambda fn: fn.sample(), st.obs_shape)
            obs = self.obs_site
            groups["log_likelihood"] = {obs: to_numpy(lp).reshape(C, T, N)}
            groups["posterior_predictive"] = {obs: to_numpy(rep).reshape((C, T) + tuple(st.obs_shape))}
            groups["observed_data"] = {obs: to_numpy(yt)}
            dims[obs] = ["obs_id"] + [f"obs_dim_{i}" for i in range(len(st.obs_shape) - 1)]
        attrs = {"inference_library": "pyrobdl", "method": self.method}
        return inference_data(groups, dims, attrs)

    # ------------------------------------------------------------------ saving
    def _cannot_save(self) -> str:
        what = "a guide" if self.guide is not None else "these draws"
        hint = (
            "draw a fixed set of samples and save that: "
            "pyrobdl.from_pyro(model, samples=posterior.sample_latents(1000, x=x_train)).save(path)"
        )
        if self.on_network:
            hint += (" (an AutoDiagonalNormal, AutoLowRankMultivariateNormal or AutoMultivariateNormal guide of a "
                     "BayesianNetwork can also be saved as pyrobdl.inference.SVIPosterior(model, guide))")
        return f"a {type(self).__name__} of {what} cannot be saved: the guide is code, not data; {hint}"

    def get_state(self) -> Dict[str, Any]:
        if self.samples is None:
            raise NotImplementedError(self._cannot_save())
        state: Dict[str, Any] = {
            "mode": "network" if self.on_network else "pyro",
            "samples": {k: v.detach().cpu() for k, v in self.samples.items()},
            "sample_stats": {k: v.detach().cpu() for k, v in self.sample_stats.items()},
            "markov": bool(self.markov_chains),
            "obs_site": self.obs_site,
        }
        if self._training_data is not None and sum(t.numel() for t in self._training_data) <= MAX_SAVED_DATA:
            state["x"], state["y"] = (t.detach().cpu() for t in self._training_data)
        return state

    @classmethod
    def from_state(cls, model, state: Dict[str, Any]) -> "PyroPosterior":
        klass = PyroMCMCPosterior if state.get("markov") else PyroPosterior
        data = (state["x"], state["y"]) if "x" in state and "y" in state else None
        samples = dict(state["samples"])
        if not samples or not all(isinstance(v, torch.Tensor) and v.dim() >= 2 for v in samples.values()):
            raise TypeError("samples must be a non-empty dict of (chains, draws, ...) tensors")
        return klass(model, samples=samples, sample_stats=dict(state.get("sample_stats", {})),
                     obs_site=str(state.get("obs_site", "obs")), training_data=data)

    @classmethod
    def load_file(cls, state: Dict[str, Any], model, path) -> "PyroPosterior":
        """Rebuild from a file :func:`pyrobdl.load` read (:func:`load_pyro_state`)."""
        return load_pyro_state(state, model, path)

    def file_state(self) -> Optional[Dict[str, Any]]:
        """The file :func:`pyrobdl.serialization.save` writes for a posterior of a plain Pyro
        model (``None`` for a BayesianNetwork, which is saved the usual way): the draws and the
        model's ``state_dict`` when it is an ``nn.Module``; the model itself is code and is passed
        back to :func:`pyrobdl.load`."""
        if self.on_network:
            return None
        from .. import __version__
        from ..serialization import FORMAT, FORMAT_VERSION

        state = self.get_state()
        net_state = {}
        if isinstance(self.model, nn.Module):
            net_state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "pyrobdl_version": __version__,
            "method": self.method,
            "posterior_class": type(self).__name__,
            "model": {"kind": "pyro", "model_name": _name(self.model), "obs_site": self.obs_site},
            "net_state": net_state,
            "posterior": state,
        }

    def save(self, path) -> None:
        """Save a posterior of draws to ``path`` (tensors and plain data only); load it with
        ``pyrobdl.load(path, model=model)`` -- the model is code and is passed back (a
        BayesianNetwork of standard layers is rebuilt from the file as usual). A posterior of a
        guide cannot be saved: draw samples first (the error says how)."""
        if self.samples is None:
            raise NotImplementedError(self._cannot_save())
        from ..serialization import save_posterior

        save_posterior(self, path)


class PyroMCMCPosterior(PyroPosterior):
    """A :class:`PyroPosterior` of Markov chains (from a :class:`pyro.infer.MCMC` object): the
    diagnostics treat its chains as Markov chains (R-hat, ESS)."""

    markov_chains = True


class _NotBatched(Exception):
    """The model (or guide) cannot run on a batch of draws."""


def load_pyro_state(state: Dict[str, Any], model, path) -> PyroPosterior:
    """Rebuild a posterior of a plain Pyro model from a file :func:`pyrobdl.load` read (called
    by it when the file's model is of kind ``"pyro"``)."""
    cfg = state["model"]
    name = cfg.get("model_name", "the model")
    if model is None:
        raise ValueError(
            f"{str(path)!r} holds a posterior of the Pyro model {name!r} (saved from pyrobdl.from_pyro); a Pyro model "
            "is code and is not saved: pass it back, pyrobdl.load(path, model=model)"
        )
    if isinstance(model, BayesianNetwork) or not callable(model):
        raise TypeError(
            f"{str(path)!r} holds a posterior of the Pyro model {name!r}: pass that model (a function or PyroModule) "
            f"as model=, got {type(model).__name__}"
        )
    if isinstance(model, nn.Module) and state["net_state"]:
        try:
            model.load_state_dict(state["net_state"])
        except RuntimeError as e:
            raise ValueError(f"the saved state does not fit the given model: {' '.join(str(e).split())[:300]}") from None
    try:
        return PyroPosterior.from_state(model, state["posterior"])
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError) as e:
        raise ValueError(
            f"{str(path)!r} holds a corrupt from-pyro posterior state ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}); save the posterior again with posterior.save(path)"
        ) from None


# ============================================================================ the entry point
def _mcmc_parts(mcmc) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], Optional[Tuple]]:
    if getattr(mcmc, "_samples", None) is None:
        raise ValueError("samples is a pyro.infer.MCMC that has not been run: call mcmc.run(x, y) first")
    samples = {k: v.detach() for k, v in mcmc.get_samples(group_by_chain=True).items()}
    C, T = next(iter(samples.values())).shape[:2]
    stats = {}
    diags = getattr(mcmc, "_diagnostics", None) or []
    if len(diags) == C and all(isinstance(d, dict) and "divergences" in d for d in diags):
        div = torch.zeros((C, T), dtype=torch.bool)
        for c, d in enumerate(diags):  # the kernel records post-warmup iteration numbers from 0
            for i in d["divergences"]:
                if 0 <= int(i) < T:
                    div[c, int(i)] = True
        stats["diverging"] = div
    return samples, stats, getattr(mcmc, "_args", None)


def from_pyro(
    model: Callable,
    *,
    guide: Optional[Callable] = None,
    samples: Union[None, Mapping[str, torch.Tensor], "pyro.infer.MCMC"] = None,
    obs_site: str = "obs",
) -> PyroPosterior:
    r"""Turn a Pyro model with a fitted guide, or with posterior draws, into a pyrobdl posterior.

    Args:
        model: a Pyro model called as ``model(x)`` (``model(x, y)`` to fit it): a function, a
            ``PyroModule`` (e.g. Pyro's BNN tutorial model with ``PyroSample`` priors) or a
            :class:`~pyrobdl.BayesianNetwork` (which then predicts on its batched engine). Its
            observed site (``obs_site``) must hold one row per input, e.g. inside
            ``pyro.plate("data", x.shape[0])``.
        guide: a fitted guide: any autoguide of the model, or a hand-written guide called as
            ``guide(x)``. Its parameters stay in Pyro's param store (or in the guide module).
        samples: posterior draws instead of a guide: a dict site -> tensor ``(S, *shape)`` (also
            the output of :class:`pyro.infer.Predictive`, whose ``(S, 1, *shape)`` for global
            sites under plates is accepted; its observed and deterministic sites are ignored), or a
            :class:`pyro.infer.MCMC` object after ``run`` (its chains are kept for the diagnostics).
        obs_site: the name of the observed sample site.

    Returns:
        a :class:`PyroPosterior` (:class:`PyroMCMCPosterior` for an MCMC object) with
        ``predict(x, num_samples=None)``, ``draws()``, ``sample_latents()``, ``to_arviz(x, y)``
        and, for draws, ``save(path)`` / ``pyrobdl.load(path, model=model)``.

    ``num_samples`` in ``predict``: for a guide the number of draws (default 100); for a fixed set
    of :math:`S` draws, ``None`` uses all :math:`S`, a smaller number takes an evenly spaced
    subset, and a larger number repeats every draw as evenly as possible, with a warning (as for
    MCMC and ensembles: :func:`~pyrobdl.inference.base.finite_draw_index`).

    The predictive is the mixture :math:`\frac1S\sum_s p(y\mid x,\theta_s)` of the observed site's
    distribution under each draw; regression splits its variance by the law of total variance
    (aleatoric :math:`\frac1S\sum_s\sigma_s^2`, epistemic :math:`\operatorname{Var}_s[\mu_s]`),
    classification its entropy into expected entropy (aleatoric) and mutual information
    (epistemic) (Kendall & Gal 2017). Supported observed distributions: Normal, StudentT
    (``df > 2``) and Laplace (moment-matched), Categorical, Bernoulli (as two classes).

    Raises:
        TypeError: a model or guide that is not callable, samples of the wrong type,
            ``obs_site`` not a string.
        ValueError: both or neither of ``guide`` and ``samples``; empty or inconsistent samples;
            (when the model first runs) no site ``obs_site``, an unsupported observed
            distribution, draws missing a latent site.

    Example:
        >>> import torch, pyro, pyro.distributions as dist, pyrobdl
        >>> def model(x, y=None):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", x.shape[0]):
        ...         return pyro.sample("obs", dist.Normal(w * x[:, 0], 0.5), obs=y)
        >>> posterior = pyrobdl.from_pyro(model, samples={"w": torch.tensor([0.9, 1.0, 1.1])})
        >>> pred = posterior.predict(torch.tensor([[1.0], [2.0]]))
        >>> pred.mean, pred.epistemic_variance, pred.aleatoric_variance
        (tensor([1., 2.]), tensor([0.0067, 0.0267]), tensor([0.2500, 0.2500]))

        With a guide: ``pyrobdl.from_pyro(model, guide=AutoDiagonalNormal(model))`` after
        ``pyro.infer.SVI`` has fitted it; with MCMC: ``pyrobdl.from_pyro(model, samples=mcmc)``.

    References:
        Pyro's :class:`pyro.infer.Predictive`; A. Kendall and Y. Gal, *What Uncertainties Do We
        Need in Bayesian Deep Learning for Computer Vision?* (NeurIPS 2017).
    """
    if not callable(model):
        raise TypeError(f"model must be a Pyro model (a function or PyroModule called as model(x)), got {type(model).__name__}")
    if not isinstance(obs_site, str) or not obs_site:
        raise TypeError(f"obs_site must be the name of the observed sample site (a non-empty string), got {obs_site!r}")
    if guide is not None and samples is not None:
        raise ValueError("pass either guide= (a fitted guide) or samples= (posterior draws), not both")
    if guide is None and samples is None:
        raise ValueError(
            "from_pyro needs the posterior: pass guide= (a fitted guide, e.g. an autoguide after SVI) or samples= "
            "(a dict of draws, a pyro.infer.MCMC after run, or the output of pyro.infer.Predictive)"
        )
    on_network = isinstance(model, BayesianNetwork)
    if on_network and obs_site not in ("obs", model.obs_name):
        raise ValueError(
            f"obs_site={obs_site!r}, but the BayesianNetwork's observed site is {model.obs_name!r}; leave obs_site out"
        )
    if on_network:
        obs_site = model.obs_name
    if guide is not None:
        if not callable(guide):
            raise TypeError(f"guide must be a fitted Pyro guide (callable as guide(x)), got {type(guide).__name__}")
        example = None
        if isinstance(guide, pyro.infer.autoguide.AutoGuide):
            proto = getattr(guide, "prototype_trace", None)
            if proto is None:
                raise ValueError(
                    f"the guide {type(guide).__name__} has never been run, so it is not fitted: fit it with "
                    "pyro.infer.SVI(model, guide, optim, loss).step(x, y) first"
                )
            args = proto.nodes.get("_INPUT", {}).get("args", ())
            if args and isinstance(args[0], torch.Tensor):
                example = (args[0],)
        return PyroPosterior(model, guide=guide, obs_site=obs_site, example_args=example)

    stats: Dict[str, torch.Tensor] = {}
    example = None
    data = None
    if isinstance(samples, pyro.infer.MCMC):
        values, stats, args = _mcmc_parts(samples)
        if args and isinstance(args[0], torch.Tensor):
            example = (args[0],)
            if len(args) > 1 and isinstance(args[1], torch.Tensor):
                data = (args[0].detach(), args[1].detach())
        cls = PyroMCMCPosterior
    elif isinstance(samples, Mapping):
        if not samples:
            raise ValueError("samples is an empty dict; pass site -> tensor of draws (S, *shape)")
        values = {}
        for k, v in samples.items():
            if not isinstance(k, str):
                raise TypeError(f"samples must be keyed by site names (strings), got the key {k!r}")
            values[k] = _as_tensor(k, v, "samples")
        sizes = {k: (int(v.shape[0]) if v.dim() else None) for k, v in values.items()}
        if None in sizes.values() or len(set(sizes.values())) != 1:
            raise ValueError(
                "every tensor in samples needs the same number of draws S along dim 0, got "
                + ", ".join(f"{k}: {tuple(v.shape)}" for k, v in values.items())
            )
        values = {k: v.unsqueeze(0) for k, v in values.items()}  # one chain
        cls = PyroPosterior
    else:
        raise TypeError(
            f"samples must be a dict site -> tensor of draws (S, *shape), a pyro.infer.MCMC object after run, or the "
            f"output of pyro.infer.Predictive; got {type(samples).__name__}"
        )
    return cls(model, samples=values, sample_stats=stats, obs_site=obs_site, example_args=example, training_data=data)

