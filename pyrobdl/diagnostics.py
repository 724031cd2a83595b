r"""Convergence diagnostics and ArviZ export for every pyrobdl posterior.

**Read the function-space numbers, not the weight-space ones.** A Bayesian
neural network's posterior is symmetric: permuting the hidden units of a layer
(with their incoming and outgoing weights) gives the same function, and so
does flipping the signs of a unit's weights for odd activations such as tanh.
A layer of :math:`H` tanh units therefore has :math:`H!\,2^H` equivalent modes.
Chains that converge to *equivalent* modes report weight-space R-hat far above
1 and tiny weight-space ESS although they describe the same predictions, and a
single chain that hops between equivalent modes looks mixed in function space
but not in weight space. Weight-space R-hat and ESS are reported (they matter
for the noise scale and for networks without such symmetries) but the
diagnostics to trust are computed on **function values**: the network output
(regression mean, or class probabilities) at a grid of inputs, draw by draw.

Diagnostics (all computed by ArviZ):

- rank-normalised split :math:`\hat R` (Vehtari et al., 2021): with
  :math:`M` (split) chains of :math:`N` draws of rank-normalised values,
  :math:`W` the mean within-chain variance and :math:`B/N` the variance of the
  chain means, :math:`\hat R = \sqrt{\big(\tfrac{N-1}{N}W + \tfrac BN\big)/W}`;
  values above 1.01 mean the chains disagree;
- bulk and tail effective sample sizes
  :math:`\mathrm{ESS} = MN / (1 + 2\sum_t \hat\rho_t)` (of the rank-normalised
  values, and of the 5% / 95% quantile indicators);
- sampler statistics: divergent transitions, step size, tree depth,
  acceptance rate, E-BFMI.

:func:`to_arviz` (also ``posterior.to_arviz()``) exports draws as ArviZ data
with a pointwise ``log_likelihood`` group, so ``az.loo`` (PSIS-LOO; Vehtari,
Gelman & Gabry, 2017) and ``az.waic`` work for MCMC and variational posteriors.

Example::

    posterior = inference.NUTS(num_chains=4).fit(model, x, y)
    s = diagnostics.summary(posterior)        # prints a table; s.to_dict() for data
    s.function_rhat_max, s.function_ess_bulk_median, s.num_divergences
    idata = posterior.to_arviz()
    az.loo(idata)
    diagnostics.plot_trace(posterior, x_grid=x_test[:4])   # function values at 4 inputs

References:
    A. Vehtari, A. Gelman, D. Simpson, B. Carpenter and P.-C. Bürkner,
    *Rank-normalization, folding, and localization: an improved R-hat for
    assessing convergence of MCMC*, Bayesian Analysis 16 (2021);
    A. Vehtari, A. Gelman and J. Gabry, *Practical Bayesian model evaluation
    using leave-one-out cross-validation and WAIC*, Statistics and Computing 27 (2017);
    M. Betancourt, *A Conceptual Introduction to Hamiltonian Monte Carlo* (2017), E-BFMI;
    R. M. Neal, *MCMC using Hamiltonian dynamics* (2011);
    M. D. Hoffman and A. Gelman, *The No-U-Turn Sampler* (JMLR 2014).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyro
import torch
from torch import nn

from ._util import check_inputs, eval_mode, warn_user
from .network import BayesianNetwork

__all__ = [
    "Summary",
    "FunctionSpaceDiagnostics",
    "summary",
    "function_space_diagnostics",
    "rhat_ess",
    "nested_rhat",
    "warn_if_problematic",
    "to_arviz",
    "pointwise_log_likelihood",
    "plot_trace",
    "plot_rank",
    "plot_forest",
    "plot_energy",
    "inference_data",
    "sample_stats_arrays",
    "to_numpy",
]

#: function-space diagnostics use at most this many training inputs by default
DEFAULT_GRID_POINTS = 200


def _az():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def _arviz_major() -> int:
    try:
        return int(_az().__version__.split(".")[0])
    except Exception:  # pragma: no cover
        return 0


# ============================================================================ draws
# The diagnostics read any posterior through its public protocol: ``posterior.draws(n)``
# (``chains x draws`` values and sampler statistics), ``type(posterior).markov_chains``,
# ``posterior.training_data`` and ``posterior.fit_info`` -- no inference module is imported.
def _markov(posterior) -> bool:
    """Whether the posterior's draws are Markov chains (MCMC)."""
    return bool(getattr(type(posterior), "markov_chains", False))


def _draws(posterior, num_samples: Optional[int] = None):
    """``posterior.draws(num_samples)``: Markov chains (all draws, or ``num_samples`` in all
    thinned evenly within each chain), or ``num_samples`` (default 1000) draws as one chain."""
    try:
        return posterior.draws(num_samples)
    except NotImplementedError:
        raise TypeError(
            f"{type(posterior).__name__} has no posterior over the model's latent sites (sample_latents), "
            "so it cannot be exported to ArviZ or diagnosed"
        ) from None


def _training_data(posterior) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The training data a posterior keeps (``posterior.training_data``), else ``(None, None)``."""
    data = getattr(posterior, "training_data", None)
    return (None, None) if data is None else data


def sample_stats_arrays(stats: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """ArviZ-ready sampler statistics: ``diverging`` as booleans, statistics that were
    never recorded (all NaN, e.g. the tree depth of fixed-length HMC) left out."""
    out = {}
    for k, v in stats.items():
        a = to_numpy(v)
        if k == "diverging":
            a = a.astype(bool)
        elif not np.isfinite(a).any():
            continue
        out[k] = a
    return out


def _flatten_chains(draws: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], int, int]:
    C, S = next(iter(draws.values())).shape[:2]
    return {k: v.reshape((C * S,) + v.shape[2:]) for k, v in draws.items()}, C, S


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a NumPy array (detached, on the CPU)."""
    return t.detach().cpu().numpy()


# ============================================================================ ArviZ helpers
def rhat_ess(values: np.ndarray) -> Dict[str, np.ndarray]:
    """Rank-normalised split R-hat and bulk/tail ESS of ``values`` shaped
    ``(chains, draws, K)`` (or ``(chains, draws)``), one per column, by ArviZ.
    R-hat needs at least two chains (NaN otherwise).

    Returns a dict with ``rhat``, ``ess_bulk``, ``ess_tail`` arrays of shape ``(K,)``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> mixed = rhat_ess(rng.normal(size=(4, 500)))                  # 4 chains, same target
        >>> round(float(mixed["rhat"][0]), 2)
        1.0
        >>> stuck = rhat_ess(np.stack([rng.normal(0, 1, 500), rng.normal(3, 1, 500)]))
        >>> bool(stuck["rhat"][0] > 1.5), bool(stuck["ess_bulk"][0] < 10)   # chains disagree
        (True, True)

    References:
        A. Vehtari, A. Gelman, D. Simpson, B. Carpenter and P.-C. Bürkner,
        *Rank-normalization, folding, and localization: an improved R-hat for
        assessing convergence of MCMC*, Bayesian Analysis 16 (2021).
    """
    az = _az()
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"values must have shape (chains, draws[, K]), got {a.shape}")
    import warnings

    out = {}
    multi = a.shape[0] >= 2  # ArviZ's R-hat needs two chains; a single chain reports NaN
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if _arviz_major() >= 1:  # pragma: no cover - arviz 1.x: array functions with explicit axes
            kw = dict(chain_axis=0, draw_axis=1)
            out["rhat"] = np.asarray(az.rhat(a, method="rank", **kw)) if multi else None
            out["ess_bulk"] = np.asarray(az.ess(a, method="bulk", **kw))
            # the array interface needs the tail probabilities (arviz 0.x's default: 5% / 95%)
            out["ess_tail"] = np.asarray(az.ess(a, method="tail", prob=(0.05, 0.95), **kw))
        else:
            ds = az.convert_to_dataset({"v": a})
            out["rhat"] = np.asarray(az.rhat(ds, method="rank")["v"].values) if multi else None
            out["ess_bulk"] = np.asarray(az.ess(ds, method="bulk")["v"].values)
            out["ess_tail"] = np.asarray(az.ess(ds, method="tail")["v"].values)
    if out["rhat"] is None:
        out["rhat"] = np.full(a.shape[2:], np.nan)
    return {k: v.reshape(-1) for k, v in out.items()}


def nested_rhat(values: np.ndarray, num_superchains: int) -> np.ndarray:
    r"""Nested R-hat (Margossian et al. 2022) of ``values`` shaped ``(chains, draws[, K])``,
    one per column, with the chains grouped into ``num_superchains`` consecutive blocks of
    :math:`M` chains (the chains of a superchain started from the same point):

    .. math::

        \mathfrak n\hat R = \sqrt{1 + \hat B_\nu/\hat W_\nu},\quad
        \hat B_\nu = \tfrac1{K-1}\sum_k(\bar f_{\cdot\cdot k}-\bar f_{\cdot\cdot\cdot})^2,\quad
        \hat W_\nu = \tfrac1K\sum_k\big(\tilde B_k + \tilde W_k\big),

    with :math:`\tilde B_k` the variance of the chain means within superchain :math:`k`
    (0 for :math:`M=1`) and :math:`\tilde W_k` the mean within-chain variance (0 for a
    single draw). Designed for many short chains: it stays meaningful when each chain has
    only a few draws, where the classic R-hat cannot tell mixing from not. Values near 1
    (below about 1.01-1.05) say the superchains agree.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> round(float(nested_rhat(rng.normal(size=(32, 50)), 8)[0]), 2)
        1.0
        >>> shifted = rng.normal(size=(32, 50)) + np.repeat([0.0, 2.0], 16)[:, None]
        >>> bool(nested_rhat(shifted, 8)[0] > 1.2)
        True

    Reference:
        C. C. Margossian, M. D. Hoffman, P. Sountsov, L. Riou-Durand, A. Vehtari and
        A. Gelman, *Nested R-hat: assessing the convergence of Markov chain Monte Carlo
        when running many short chains*, arXiv:2110.13017 (2022).
    """
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"values must have shape (chains, draws[, K]), got {a.shape}")
    C, N = a.shape[:2]
    if not isinstance(num_superchains, (int, np.integer)) or num_superchains < 2 or C % num_superchains:
        raise ValueError(
            f"num_superchains must be an integer >= 2 that divides the {C} chains, got {num_superchains!r}"
        )
    K = int(num_superchains)
    M = C // K
    a = a.reshape(K, M, N, -1)
    chain_means = a.mean(2)                       # (K, M, cols)
    super_means = chain_means.mean(1)             # (K, cols)
    between = super_means.var(0, ddof=1)
    within_b = chain_means.var(1, ddof=1) if M > 1 else np.zeros_like(super_means)
    within_w = a.var(2, ddof=1).mean(1) if N > 1 else np.zeros_like(super_means)
    within = (within_b + within_w).mean(0)
    with np.errstate(all="ignore"):
        return np.sqrt(1.0 + between / within).reshape(-1)


def _nanmax(a) -> float:
    a = np.asarray(a, dtype=float)
    return float(np.nanmax(a)) if a.size and np.isfinite(a).any() else float("nan")


def _nanmin(a) -> float:
    a = np.asarray(a, dtype=float)
    return float(np.nanmin(a)) if a.size and np.isfinite(a).any() else float("nan")


def _nanmedian(a) -> float:
    a = np.asarray(a, dtype=float)
    return float(np.nanmedian(a)) if a.size and np.isfinite(a).any() else float("nan")


# ============================================================================ function space
@dataclass
class FunctionSpaceDiagnostics:
    """R-hat and ESS of the network's predictions at a grid of inputs.

    Attributes:
        rhat: rank-normalised split R-hat per grid value, shape ``(K,)``
            (``K`` = points × outputs).
        ess_bulk, ess_tail: bulk and tail ESS per grid value.
        rhat_max, ess_bulk_min, ess_bulk_median, ess_tail_min: summaries.
        num_points: number of grid inputs.
        quantity: ``"mean"`` (regression: the per-draw predictive mean
            :math:`\\mu_\\theta(x)`) or ``"probs"`` (classification: per-draw
            class probabilities).
        nested_rhat, nested_rhat_max: :func:`nested_rhat` per grid value and its
            maximum, for posteriors whose chains form superchains
            (``fit_info["num_superchains"]``, e.g. :class:`~pyrobdl.inference.ChEESHMC`);
            ``None`` otherwise.

    Example (not run here: sampling takes seconds)::

        fs = diagnostics.function_space_diagnostics(posterior, x_test[:200])
        fs.rhat_max, fs.ess_bulk_median, fs.to_dict()
    """

    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    num_points: int
    quantity: str
    nested_rhat: Optional[np.ndarray] = None
    rhat_max: float = field(init=False)
    ess_bulk_min: float = field(init=False)
    ess_bulk_median: float = field(init=False)
    ess_tail_min: float = field(init=False)
    nested_rhat_max: Optional[float] = field(init=False, default=None)

    def __post_init__(self):
        self.rhat_max = _nanmax(self.rhat)
        self.ess_bulk_min = _nanmin(self.ess_bulk)
        self.ess_bulk_median = _nanmedian(self.ess_bulk)
        self.ess_tail_min = _nanmin(self.ess_tail)
        self.nested_rhat_max = None if self.nested_rhat is None else _nanmax(self.nested_rhat)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "rhat_max": self.rhat_max,
            "ess_bulk_min": self.ess_bulk_min,
            "ess_bulk_median": self.ess_bulk_median,
            "ess_tail_min": self.ess_tail_min,
            "num_points": self.num_points,
            "quantity": self.quantity,
            "nested_rhat_max": self.nested_rhat_max,
        }


def _default_grid(posterior, x_grid, max_points: int) -> Optional[torch.Tensor]:
    if x_grid is not None:
        return check_inputs(x_grid, "x_grid", keep_integer=True)
    x, _ = _training_data(posterior)
    if x is None:
        return None
    if x.shape[0] > max_points:
        idx = torch.linspace(0, x.shape[0] - 1, max_points, device=x.device).round().long()
        x = x[idx]
    return x


def function_values(posterior, x_grid, *, num_samples: Optional[int] = None) -> np.ndarray:
    """The per-draw prediction at ``x_grid`` as ``(chains, draws, K)``: the
    regression mean (``loc``) or the class probabilities, flattened over points
    and outputs."""
    model: BayesianNetwork = posterior.model
    if not isinstance(model, BayesianNetwork):
        raise TypeError(
            f"function-space diagnostics push the draws through a pyrobdl.BayesianNetwork; this "
            f"{type(posterior).__name__}'s model is a plain Pyro model ({type(model).__name__}): use "
            "arviz.summary(posterior.to_arviz(x, y)) for R-hat and ESS of its sites"
        )
    x = model.cast_inputs(check_inputs(x_grid, "x_grid", keep_integer=True).to(model.device))
    flat, C, S = _flatten_chains(_draws(posterior, num_samples).values)
    with pyro.validation_enabled(False):
        out, lats = model.outputs_from_samples(x, flat)
        pred = model.likelihood.prediction(out, lats)
    t = pred.samples["loc"] if "loc" in pred.samples else pred.samples["probs"]
    return to_numpy(t).reshape(C, S, -1)


def function_space_diagnostics(
    posterior, x_grid=None, *, num_samples: Optional[int] = None, max_points: int = DEFAULT_GRID_POINTS
) -> FunctionSpaceDiagnostics:
    r"""R-hat and ESS of the predictions :math:`f_{\theta_s}(x)` at ``x_grid``.

    These are the convergence diagnostics to trust for a BNN (see the module
    docstring): unlike the weights, function values are invariant to the
    permutation and sign-flip symmetries of hidden units.

    Args:
        posterior: a fitted posterior (MCMC: per chain; others: draws as one chain).
        x_grid: inputs ``(G, ...)``; default: the training inputs an MCMC
            posterior stores, at most ``max_points`` of them evenly spaced.
        num_samples: draws to use (default: all MCMC draws, or 1000).

    Raises:
        ValueError: no ``x_grid`` and the posterior stores no training inputs.

    Example (not run here: sampling takes seconds)::

        posterior = inference.NUTS(num_samples=500, num_chains=4).fit(model, x, y)
        fs = function_space_diagnostics(posterior, x_grid=x_test)
        fs.rhat_max < 1.01, fs.ess_bulk_min > 400     # converged in function space?
    """
    grid = _default_grid(posterior, x_grid, max_points)
    if grid is None:
        raise ValueError(
            "function-space diagnostics need inputs; pass x_grid (e.g. a few hundred test or training inputs)"
        )
    vals = function_values(posterior, grid, num_samples=num_samples)
    d = rhat_ess(vals)
    quantity = "mean" if posterior.model.likelihood.task == "regression" else "probs"
    K = _superchains(posterior, vals.shape[0])
    nested = None if K is None else nested_rhat(vals, K)
    return FunctionSpaceDiagnostics(d["rhat"], d["ess_bulk"], d["ess_tail"], int(grid.shape[0]), quantity, nested)


def _superchains(posterior, num_chains: int) -> Optional[int]:
    """The posterior's number of superchains when it has a valid one for ``num_chains``."""
    K = getattr(posterior, "fit_info", {}).get("num_superchains")
    if isinstance(K, (int, np.integer)) and K >= 2 and num_chains % K == 0:
        return int(K)
    return None


# ============================================================================ summary
@dataclass
class Summary:
    """Convergence summary of a posterior (see :func:`summary`).

    Weight-space numbers (``rhat_max``, ``ess_bulk_min``, ``ess_tail_min``) are
    over every scalar latent; for BNNs they are dominated by the symmetries of
    hidden units and are **not** a convergence verdict. The ``function_*``
    numbers are.

    Example (not run here: sampling takes seconds)::

        s = diagnostics.summary(posterior)
        str(s)              # function-space and weight-space R-hat/ESS, sampler statistics
        s.function_rhat_max, s.num_divergences, s.bfmi_min
        s.to_dict()         # plain data, as in pyrobdl compare's results.json
    """

    method: str
    num_chains: int
    num_draws: int
    rhat_max: float
    ess_bulk_min: float
    ess_tail_min: float
    function_rhat_max: Optional[float]
    function_ess_bulk_min: Optional[float]
    function_ess_bulk_median: Optional[float]
    function_ess_tail_min: Optional[float]
    function_nested_rhat_max: Optional[float] = None
    num_superchains: Optional[int] = None
    num_divergences: Optional[int] = None
    step_size_mean: Optional[float] = None
    tree_depth_mean: Optional[float] = None
    n_steps_mean: Optional[float] = None
    acceptance_rate_mean: Optional[float] = None
    max_tree_depth_fraction: Optional[float] = None
    bfmi_min: Optional[float] = None
    per_site: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        def f(v, fmt="{:.3f}"):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

        lines = [
            f"{self.method} posterior: {self.num_chains} chain(s) x {self.num_draws} draws",
            "function space (trust these):",
            f"  R-hat max {f(self.function_rhat_max)}   bulk ESS min/median {f(self.function_ess_bulk_min, '{:.0f}')}/"
            f"{f(self.function_ess_bulk_median, '{:.0f}')}   tail ESS min {f(self.function_ess_tail_min, '{:.0f}')}",
        ]
        if self.function_nested_rhat_max is not None:
            lines.append(f"  nested R-hat max {f(self.function_nested_rhat_max)} ({self.num_superchains} superchains)")
        lines += [
            "weight space (symmetric modes make these pessimistic for BNNs):",
            f"  R-hat max {f(self.rhat_max)}   bulk ESS min {f(self.ess_bulk_min, '{:.0f}')}   tail ESS min {f(self.ess_tail_min, '{:.0f}')}",
        ]
        if self.num_divergences is not None:
            lines += [
                "sampler:",
                f"  divergences {self.num_divergences}   step size {f(self.step_size_mean, '{:.3g}')}   "
                f"tree depth {f(self.tree_depth_mean, '{:.2f}')}   leapfrog steps {f(self.n_steps_mean, '{:.1f}')}   "
                f"acceptance {f(self.acceptance_rate_mean)}   E-BFMI min {f(self.bfmi_min)}",
            ]
        return "\n".join(lines)

    __repr__ = __str__


def summary(
    posterior,
    *,
    x_grid=None,
    num_samples: Optional[int] = None,
    max_points: int = DEFAULT_GRID_POINTS,
) -> Summary:
    r"""Convergence summary: weight-space R-hat (max) and bulk/tail ESS (min)
    over every scalar latent, the same on function values at ``x_grid``, and for
    MCMC the number of divergences, mean step size, tree depth, leapfrog steps,
    acceptance rate, fraction of iterations that hit the maximum tree depth and
    the minimum E-BFMI over chains.

    Works for every posterior with latent draws (variational ones as one chain,
    where R-hat is the split-chain R-hat of independent draws).

    Args:
        x_grid: inputs for the function-space diagnostics (default: the
            training inputs stored by MCMC posteriors, at most ``max_points``
            of them); without them, the ``function_*`` fields are ``None``.
        num_samples: draws to use (default: all MCMC draws, or 1000).

    Example::

        s = pyrobdl.diagnostics.summary(posterior)   # its repr is a readable table
        s.to_dict()["function_rhat_max"]
    """
    d_all = _draws(posterior, num_samples)
    draws = d_all.values
    C, S = next(iter(draws.values())).shape[:2]
    names = list(draws)
    per_site = {}
    allv = np.concatenate([to_numpy(draws[k]).reshape(C, S, -1) for k in names], -1)
    d = rhat_ess(allv)
    off = 0
    for k in names:
        n = int(np.prod(draws[k].shape[2:])) if draws[k].dim() > 2 else 1
        per_site[k] = {
            "rhat_max": _nanmax(d["rhat"][off : off + n]),
            "ess_bulk_min": _nanmin(d["ess_bulk"][off : off + n]),
            "ess_tail_min": _nanmin(d["ess_tail"][off : off + n]),
        }
        off += n
    grid = _default_grid(posterior, x_grid, max_points)
    fs = function_space_diagnostics(posterior, grid, num_samples=num_samples) if grid is not None else None
    out = Summary(
        method=getattr(posterior, "method", type(posterior).__name__) or type(posterior).__name__,
        num_chains=int(C),
        num_draws=int(S),
        rhat_max=_nanmax(d["rhat"]),
        ess_bulk_min=_nanmin(d["ess_bulk"]),
        ess_tail_min=_nanmin(d["ess_tail"]),
        function_rhat_max=None if fs is None else fs.rhat_max,
        function_ess_bulk_min=None if fs is None else fs.ess_bulk_min,
        function_ess_bulk_median=None if fs is None else fs.ess_bulk_median,
        function_ess_tail_min=None if fs is None else fs.ess_tail_min,
        function_nested_rhat_max=None if fs is None else fs.nested_rhat_max,
        num_superchains=_superchains(posterior, int(C)),
        per_site=per_site,
    )
    # sampler statistics of every iteration (not only of the thinned draws)
    stats = (d_all if num_samples is None else _draws(posterior)).sample_stats if _markov(posterior) else {}
    if stats:
        def mean(k):
            v = stats.get(k)
            if v is None:
                return None
            v = v.double()
            return float(v[torch.isfinite(v)].mean()) if torch.isfinite(v).any() else None

        out.num_divergences = int(stats["diverging"].sum()) if "diverging" in stats else 0
        out.step_size_mean = mean("step_size")
        out.tree_depth_mean = mean("tree_depth")
        out.n_steps_mean = mean("n_steps")
        out.acceptance_rate_mean = mean("acceptance_rate")
        max_depth = posterior.fit_info.get("settings", {}).get("max_tree_depth")
        if max_depth is not None and "tree_depth" in stats:
            out.max_tree_depth_fraction = float((stats["tree_depth"] >= max_depth).double().mean())
        if "energy" in stats and stats["energy"].shape[1] > 2:
            e = to_numpy(stats["energy"]).astype(np.float64)
            num = np.square(np.diff(e, axis=1)).mean(axis=1)
            den = e.var(axis=1)
            with np.errstate(all="ignore"):
                out.bfmi_min = _nanmin(num / den)
    return out


def warn_if_problematic(
    posterior_or_summary,
    *,
    rhat_threshold: float = 1.01,
    min_ess_per_chain: float = 100.0,
    x_grid=None,
) -> List[str]:
    """Issue a :class:`UserWarning` for each convergence problem, saying what to try:

    - function-space R-hat above ``rhat_threshold`` (weight-space R-hat is
      quoted but, for BNNs, not a criterion);
    - bulk ESS below ``min_ess_per_chain`` per chain;
    - divergent transitions;
    - NUTS iterations that hit the maximum tree depth (more than 10%);
    - E-BFMI below 0.3.

    Returns the messages (an empty list when all is well). Called by
    :class:`~pyrobdl.inference.NUTS` / :class:`~pyrobdl.inference.HMC` after sampling.

    Example (not run here: sampling takes seconds)::

        messages = diagnostics.warn_if_problematic(posterior, rhat_threshold=1.05)
        converged = not messages
    """
    s = posterior_or_summary if isinstance(posterior_or_summary, Summary) else summary(posterior_or_summary, x_grid=x_grid)
    msgs = []
    C = s.num_chains
    rh = s.function_rhat_max if s.function_rhat_max is not None else s.rhat_max
    where = "of the predictions (function space)" if s.function_rhat_max is not None else "(weight space)"
    if rh is not None and math.isfinite(rh) and rh > rhat_threshold:
        msgs.append(
            f"R-hat {where} is {rh:.3f} > {rhat_threshold}: the chains have not converged to the same "
            f"distribution over functions (weight-space R-hat {s.rhat_max:.2f}, not meaningful for BNNs because of "
            "hidden-unit symmetries). Try more warmup_steps and num_samples, more chains, init='map', or "
            "standardise x and y; treat the predictive uncertainty with care."
        )
    ess = s.function_ess_bulk_min if s.function_ess_bulk_min is not None else s.ess_bulk_min
    if ess is not None and math.isfinite(ess) and ess < min_ess_per_chain * C:
        msgs.append(
            f"bulk ESS {where.replace('of the predictions ', '')} is only {ess:.0f} (< {min_ess_per_chain:.0f} per chain "
            f"x {C} chains): the Monte Carlo error of posterior means is large. Increase num_samples or num_chains; "
            "if the tree depth is at its maximum, raise max_tree_depth or use dense_mass=True."
        )
    if s.num_divergences:
        msgs.append(
            f"{s.num_divergences} of {C * s.num_draws} post-warmup transitions diverged: the sampler missed regions "
            "of high curvature and the draws may be biased. Try target_accept=0.95 (or 0.99), more warmup_steps, "
            "standardise x and y, or a tighter prior (reparameterise funnel-like priors)."
        )
    if s.max_tree_depth_fraction is not None and s.max_tree_depth_fraction > 0.1:
        msgs.append(
            f"NUTS hit max_tree_depth in {100 * s.max_tree_depth_fraction:.0f}% of the iterations, so trajectories "
            "were cut short: raise max_tree_depth, use dense_mass=True, or standardise x and y."
        )
    if s.bfmi_min is not None and math.isfinite(s.bfmi_min) and s.bfmi_min < 0.3:
        msgs.append(
            f"E-BFMI is {s.bfmi_min:.2f} (< 0.3): momentum resampling explores the energy levels poorly; "
            "more warmup_steps or a reparameterisation may help."
        )
    for m in msgs:
        warn_user(m)
    return msgs


# ============================================================================ log-likelihood
def pointwise_log_likelihood(
    model: BayesianNetwork,
    values: Dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_memory: Optional[int] = None,
    predictive: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    r""":math:`\log p(y_n\mid x_n,\theta_s)` for draws ``values`` (site ->
    ``(S, *shape)``), shape ``(S, N)``, in batched passes over chunks of draws
    (activations bounded by ``max_memory`` bytes, default 512 MiB).

    With ``predictive=True`` also returns one replicated data set per draw,
    :math:`\tilde y_s\sim p(y\mid x,\theta_s)`, shape ``(S, N, *event)``.

    Example:
        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods, inference
        >>> x = torch.linspace(-1, 1, 20).unsqueeze(-1); y = x[:, 0] ** 2
        >>> model = BayesianNetwork(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)),
        ...                         prior=priors.Normal(), likelihood=likelihoods.Gaussian(scale=0.1))
        >>> posterior = inference.MeanField(num_steps=20, progress=False).fit(model, x, y)
        >>> ll, y_rep = pointwise_log_likelihood(model, posterior.sample_latents(10), x, y, predictive=True)
        >>> ll.shape, y_rep.shape          # (S, N): the input of PSIS-LOO / WAIC
        (torch.Size([10, 20]), torch.Size([10, 20]))
    """
    with torch.no_grad(), pyro.validation_enabled(False), eval_mode(model.net):
        out, lats = model.outputs_from_samples(x, values, max_memory=max_memory)
        ll = model.likelihood.log_prob(out, y, lats)
        rep = model.likelihood.dist(out, lats).sample() if predictive else None
    return ll, rep


# ============================================================================ ArviZ export
def _site_dims(model: BayesianNetwork, draws: Dict[str, torch.Tensor]) -> Dict[str, List[str]]:
    """Readable dimension names: a Linear layer's weight is (``<layer>_out``,
    ``<layer>_in``) and its bias (``<layer>_out``), so they share the unit axis."""
    dims = {}
    site_to_param = {name: s.param for name, s in model.latent_sites().items()}
    modules = dict(model.net.named_modules())
    for site, v in draws.items():
        shape = v.shape[2:]
        if len(shape) == 0:
            continue
        pname = site_to_param.get(site)
        module = modules.get(pname.rsplit(".", 1)[0] if "." in pname else "") if pname is not None else None
        layer = site.rsplit(".", 1)[0] if "." in site else (model.name or "net")
        leaf = pname.rsplit(".", 1)[-1] if pname else ""
        if isinstance(module, nn.Linear) and leaf == "weight" and len(shape) == 2:
            dims[site] = [f"{layer}_out", f"{layer}_in"]
        elif isinstance(module, nn.Linear) and leaf == "bias" and len(shape) == 1:
            dims[site] = [f"{layer}_out"]
        else:
            dims[site] = [f"{site}_dim_{i}" for i in range(len(shape))]
    return dims


def inference_data(groups: Dict[str, Dict[str, np.ndarray]], dims, attrs: Dict[str, Any]):
    """``az.from_dict`` for arviz 0.x (keyword groups -> InferenceData) and 1.x
    (one nested mapping -> xarray.DataTree)."""
    az = _az()
    groups = {k: v for k, v in groups.items() if v}
    if _arviz_major() >= 1:  # pragma: no cover - not installable on Python 3.11
        return az.from_dict(groups, dims=dims, attrs={g: dict(attrs) for g in groups})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return az.from_dict(**groups, dims=dims, attrs=attrs)


def to_arviz(
    posterior,
    x=None,
    y=None,
    *,
    num_samples: Optional[int] = None,
    posterior_predictive: bool = True,
    max_memory: Optional[int] = None,
):
    """Export a posterior to ArviZ (``az.from_dict``): ``InferenceData`` with
    arviz 0.x, ``xarray.DataTree`` with arviz 1.x.

    Groups:

    - ``posterior``: every latent site, named as in the model (``"0.weight"``,
      ``"sigma"``), dims ``chain × draw × ...`` (a Linear layer's weight has
      dims ``<layer>_out, <layer>_in``);
    - ``sample_stats`` (MCMC): ``diverging``, ``energy``, ``tree_depth``
      (NUTS), ``n_steps``, ``step_size``, ``acceptance_rate``, ``lp``;
    - ``log_likelihood``: pointwise :math:`\\log p(y_n\\mid x_n,\\theta)` as
      variable ``obs`` (dims ``chain × draw × obs_id``), so ``az.loo`` and
      ``az.waic`` work;
    - ``posterior_predictive`` (replicated ``obs``) and ``observed_data`` (``y``).

    The data groups need ``x`` and ``y``; MCMC posteriors default to the
    training data they were fitted on. Variational posteriors export
    ``num_samples`` (default 1000) draws as one chain.

    Example::

        idata = posterior.to_arviz()                # MCMC: training data
        idata = svi_posterior.to_arviz(x, y)         # one chain of 1000 draws
        az.loo(idata), az.waic(idata)
    """
    model: BayesianNetwork = posterior.model
    d = _draws(posterior, num_samples)
    draws = d.values
    flat, C, S = _flatten_chains(draws)
    if x is None and y is None:
        x, y = _training_data(posterior)
    elif (x is None) != (y is None):
        raise ValueError("pass both x and y (the data for the log_likelihood and observed_data groups), or neither")
    groups: Dict[str, Dict[str, np.ndarray]] = {"posterior": {k: to_numpy(v) for k, v in draws.items()}}
    dims = _site_dims(model, draws)
    if _markov(posterior):
        groups["sample_stats"] = sample_stats_arrays(d.sample_stats)
    if x is not None:
        x, y = model.check_data(x, y)
        x, y = x.to(model.device), y.to(model.device)
        ll, rep = pointwise_log_likelihood(model, flat, x, y, max_memory=max_memory, predictive=posterior_predictive)
        obs = model.obs_name
        groups["log_likelihood"] = {obs: to_numpy(ll).reshape(C, S, -1)}
        if rep is not None:
            groups["posterior_predictive"] = {obs: to_numpy(rep).reshape((C, S) + tuple(rep.shape[1:]))}
        groups["observed_data"] = {obs: to_numpy(y)}
        dims[obs] = ["obs_id"]
    attrs = {"inference_library": "pyrobdl", "method": str(getattr(posterior, "method", ""))}
    return inference_data(groups, dims, attrs)


def _posterior_only(posterior, num_samples=None):
    """ArviZ data with the posterior (and MCMC sample_stats) only: no likelihood pass."""
    d = _draws(posterior, num_samples)
    groups = {"posterior": {k: to_numpy(v) for k, v in d.values.items()}}
    if _markov(posterior):
        groups["sample_stats"] = sample_stats_arrays(d.sample_stats)
    return inference_data(groups, _site_dims(posterior.model, d.values), {"inference_library": "pyrobdl"})


def _function_idata(posterior, x_grid, num_samples=None):
    vals = function_values(posterior, x_grid, num_samples=num_samples)
    return inference_data({"posterior": {"f": vals}}, {"f": ["f_point"]}, {"inference_library": "pyrobdl"})


def _plot_data(posterior, x_grid, num_samples):
    if x_grid is not None:
        return _function_idata(posterior, x_grid, num_samples)
    return _posterior_only(posterior, num_samples)


def _call_plot(name: str, data, **kwargs):
    az = _az()
    kwargs.setdefault("show", False)
    if _arviz_major() >= 1:  # pragma: no cover - arviz-plots API
        kwargs.pop("show", None)
        if name == "plot_forest":
            # arviz 0.x's extra columns; arviz-plots' forest plot has no such keywords
            dropped = [k for k in ("r_hat", "ess") if kwargs.pop(k, False)]
            if dropped:
                warn_user(
                    f"plot_forest: {' and '.join(dropped)} columns are not drawn with arviz >= 1 "
                    "(arviz-plots); use diagnostics.summary() or az.rhat / az.ess for those numbers"
                )
        if name == "plot_rank" and "method" not in kwargs and data["posterior"].sizes.get("chain", 1) < 2:
            kwargs["method"] = "envelope"  # the default multiple-chain test ("mtc_c") needs two chains
        alt = {"plot_trace": "plot_trace_dist", "plot_rank": "plot_rank", "plot_forest": "plot_forest", "plot_energy": "plot_energy"}[name]
        pc = getattr(az, alt)(data, backend="matplotlib", **kwargs)
        return _plot_axes(pc, name)
    return getattr(az, name)(data, **kwargs)


def _plot_axes(pc, name: str):  # pragma: no cover - arviz-plots API
    """The matplotlib Axes of an arviz-plots ``PlotCollection``, returned as arviz 0.x did: an
    array laid out like the figure's subplot grid (1-D when the grid has empty cells), and for
    ``plot_energy`` the Axes of the energy distributions (its figure also holds the E-BFMI panel)."""
    viz = pc.viz
    fig = viz["figure"].item()
    axes = [a for a in fig.axes if a.get_subplotspec() is not None]
    if name == "plot_energy":
        try:
            return viz["plot"].sel(column="energy").item()
        except Exception:
            return axes[-1]
    nrows, ncols = axes[0].get_subplotspec().get_geometry()[:2]
    grid = np.empty((int(nrows), int(ncols)), dtype=object)
    for a in axes:
        ss = a.get_subplotspec()
        grid[ss.rowspan.start, ss.colspan.start] = a
    if any(a is None for a in grid.flat):
        return np.array(axes, dtype=object)
    return grid


def plot_trace(posterior, *, var_names: Optional[Sequence[str]] = None, x_grid=None, num_samples: Optional[int] = None, **kwargs):
    """Trace plot (``az.plot_trace``) of the weights, or, with ``x_grid``, of the
    function values at those inputs (the meaningful view for BNNs; keep the grid
    to a handful of points). Returns the matplotlib Axes array; never shows.

    Example (not run here: sampling takes seconds)::

        axes = diagnostics.plot_trace(posterior, x_grid=x_test[:4])   # function values at 4 inputs
        axes[0, 0].figure.savefig("trace.png")
    """
    data = _plot_data(posterior, x_grid, num_samples)
    if var_names is not None and x_grid is None:
        kwargs["var_names"] = list(var_names)
    return _call_plot("plot_trace", data, **kwargs)


def plot_rank(posterior, *, var_names: Optional[Sequence[str]] = None, x_grid=None, num_samples: Optional[int] = None, **kwargs):
    """Rank plot (``az.plot_rank``; Vehtari et al. 2021) of weights or, with
    ``x_grid``, of function values. Returns matplotlib Axes.

    Example (not run here: sampling takes seconds)::

        axes = diagnostics.plot_rank(posterior, x_grid=x_test[:2])   # roughly uniform ranks = mixed chains
    """
    data = _plot_data(posterior, x_grid, num_samples)
    if var_names is not None and x_grid is None:
        kwargs["var_names"] = list(var_names)
    return _call_plot("plot_rank", data, **kwargs)


def plot_forest(posterior, *, var_names: Optional[Sequence[str]] = None, x_grid=None, num_samples: Optional[int] = None, **kwargs):
    """Forest plot (``az.plot_forest``) of weights or, with ``x_grid``, of
    function values; with ``r_hat=True`` / ``ess=True`` it adds those columns
    (arviz 0.x; arviz >= 1 draws the intervals only and warns). Returns matplotlib Axes.

    Example (not run here: sampling takes seconds)::

        axes = diagnostics.plot_forest(posterior, x_grid=x_test[:8], r_hat=True, ess=True)
    """
    data = _plot_data(posterior, x_grid, num_samples)
    if var_names is not None and x_grid is None:
        kwargs["var_names"] = list(var_names)
    return _call_plot("plot_forest", data, **kwargs)


def plot_energy(posterior, **kwargs):
    """Energy plot (``az.plot_energy``): marginal energy vs energy transitions,
    with E-BFMI. MCMC posteriors only. Returns a matplotlib Axes.

    Example (not run here: sampling takes seconds)::

        ax = diagnostics.plot_energy(posterior)   # the two histograms should overlap (E-BFMI > 0.3)

    Reference: M. Betancourt, *A Conceptual Introduction to Hamiltonian Monte
    Carlo* (2017).
    """
    if not _markov(posterior) or "energy" not in _draws(posterior).sample_stats:
        raise ValueError("plot_energy needs an MCMC posterior (HMC/NUTS) with recorded energies")
    return _call_plot("plot_energy", _posterior_only(posterior), **kwargs)
