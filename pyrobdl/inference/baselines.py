r"""Non-Bayesian baselines behind the same predictive interface: MC dropout,
MC DropConnect and deep ensembles.

They fit the *same* :class:`~pyrobdl.BayesianNetwork` a user builds for VI or
HMC (its network, prior and likelihood) and return a
:class:`~pyrobdl.inference.base.Posterior` whose ``predict(x, num_samples=S)``
gives the same :class:`~pyrobdl.prediction.RegressionPrediction` /
:class:`~pyrobdl.prediction.ClassificationPrediction`, so methods are compared
on equal terms::

    for method in ["mean-field", "mc-dropout", "mc-dropconnect", "ensemble"]:
        posterior = pyrobdl.fit(model, x, y, method=method)
        pred = posterior.predict(x_test, num_samples=100)

One predictive sample is one dropout mask, one DropConnect weight mask, or one
ensemble member; the prediction object turns them into the mixture predictive
(epistemic = spread of the samples, aleatoric = the likelihood's own noise).
The user's model is never modified: like SVI, every method trains a fresh copy
(``posterior.model``; for dropout and DropConnect its network holds the trained
weights).

**Training objective.** All three maximise the likelihood of the data. The
loss of one minibatch :math:`\mathcal B` is the mean negative log-likelihood
plus an optional weight penalty,

.. math::

    L(\theta, \eta) = -\frac1{|\mathcal B|}\sum_{n\in\mathcal B}\log p(y_n\mid f_\theta(x_n), \eta)
    + \sum_j \lambda_j\,\lVert\theta_j - \mu_j\rVert^2 ,

where :math:`\eta` are the likelihood's own latents (e.g. the noise scale
:math:`\sigma` of ``Gaussian()``), fitted by maximum likelihood as free
parameters (one per ensemble member). With ``weight_decay="prior"`` the
penalty is the MAP penalty of the model's Gaussian prior
:math:`\theta_j\sim\mathcal N(\mu_j, s_j^2)` divided by the dataset size
:math:`N` (the loss is a *mean* over data points),

.. math::

    \lambda_j = \frac{c_j}{2 s_j^2 N},

with :math:`c_j = 1 - p` for the weights that a dropout / DropConnect mask
multiplies and :math:`c_j = 1` otherwise. This is Gal & Ghahramani's (2016)
weight decay :math:`\lambda = p_\text{keep}\, l^2 / (2N\tau)` with the prior
length-scale :math:`l^2 = 1/s^2`; their precision :math:`\tau` does not
appear because pyrobdl's loss is the full negative log-likelihood (which
contains :math:`\tau`) rather than the squared error. Non-Gaussian priors
contribute :math:`-\frac1N\log p(\theta_j)`. A float ``weight_decay=λ`` uses
:math:`\lambda_j = \lambda`, :math:`\mu_j = 0` instead. Only the model's
Bayesian parameters are penalised; its deterministic ones (normalisation
layers, a frozen feature extractor) are plain point estimates.

**Vectorisation.** The :math:`S` masked networks of a prediction and the
:math:`M` members of an ensemble run as one batched pass. When the network
is a plain chain of ``nn.Linear`` layers and elementwise activations (an
``nn.Sequential``, e.g. ``Linear → Tanh → Linear → Tanh → Linear``), the pass
is written out by hand: layer :math:`l` of network :math:`s` computes

.. math::

    h^{(l)}_s = a_l\big(h^{(l-1)}_s\, W^{(l)\top}_s + b^{(l)}_s\big)

for all :math:`s` with one :func:`torch.baddbmm` (one
:func:`torch.nn.functional.linear` when :math:`W^{(l)}` is shared, e.g. an
unmasked first layer, which then runs once for all samples). Any other
network takes the general path, :func:`torch.func.vmap` over
:func:`torch.func.functional_call`; both compute the same function (up to
floating-point summation order), and the hand-written one skips vmap's
per-operation dispatch, which dominates for small networks.

References:
    Y. Gal and Z. Ghahramani, *Dropout as a Bayesian Approximation:
    Representing Model Uncertainty in Deep Learning* (ICML 2016);
    L. Wan, M. Zeiler, S. Zhang, Y. LeCun and R. Fergus, *Regularization of
    Neural Networks using DropConnect* (ICML 2013);
    A. Mobiny et al., *DropConnect is effective in modeling uncertainty of
    Bayesian deep networks* (Scientific Reports, 2021);
    B. Lakshminarayanan, A. Pritzel and C. Blundell, *Simple and Scalable
    Predictive Uncertainty Estimation using Deep Ensembles* (NeurIPS 2017);
    A. Kendall and Y. Gal, *What Uncertainties Do We Need in Bayesian Deep
    Learning for Computer Vision?* (NeurIPS 2017).
"""
from __future__ import annotations

import copy
import itertools
import math
import numbers
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pyro
import torch
from torch import nn
from torch.distributions import biject_to
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from .._validation import check_inputs, check_positive_float, check_positive_int
from ..network import (
    _DROPOUT_TYPES, DEFAULT_MAX_MEMORY, BayesianNetwork, _Chain, _chain_forward, _chain_plan, _chain_run,
)
from ..prediction import Prediction
from .base import Data, Inference, Posterior, register_method, warn_user

__all__ = [
    "MCDropout",
    "MCDropConnect",
    "DeepEnsemble",
    "DropoutPosterior",
    "DropConnectPosterior",
    "EnsemblePosterior",
]

#: layers that dropout precedes and DropConnect masks
_WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
#: dropout modules found in a user's network (``_DROPOUT_TYPES``, from network.py) are replaced
#: by a shared-mask version; these are the channel-wise ones
_CHANNEL_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_KNOWN_LIKELIHOODS = "Gaussian, HeteroscedasticGaussian, Categorical, Bernoulli or CategoricalLogitNoise"

#: on CPU, the default number of samples per batched pass keeps one pass's
#: activations near this size (cache-resident), which measured up to 2x faster
#: than one pass over all samples for S=100, N>=1000; GPUs take all at once
_CPU_PASS_BYTES = 16 * 2**20

#: a deep ensemble's epoch gathers its M shuffled copies of the data at once up to this size
_PERMUTED_BYTES = 64 * 2**20

LayerSpec = Union[None, str, Sequence[str]]
WeightDecay = Union[str, float]


# ============================================================================ shared checks
def _check_p(p, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1) (the probability of dropping), got {p!r}")
    p = float(p)
    if not (0.0 <= p < 1.0):
        raise ValueError(
            f"{name} must lie in [0, 1) -- it is the probability of dropping a unit or weight, and {name}=1 "
            f"would drop everything -- got {p}; typical values are 0.05 to 0.2"
        )
    return p


def _check_weight_decay(weight_decay) -> WeightDecay:
    if isinstance(weight_decay, str):
        if weight_decay != "prior":
            raise ValueError(
                f"weight_decay must be 'prior' (derived from the model's prior) or a number >= 0, got {weight_decay!r}"
            )
        return weight_decay
    return check_positive_float(weight_decay, "weight_decay", allow_zero=True)


def _check_layers(layers, name: str = "layers") -> LayerSpec:
    if layers is None or layers in ("hidden", "all"):
        return layers
    if isinstance(layers, str):
        raise ValueError(f"{name} must be 'hidden', 'all' or a list of module names, got {layers!r}")
    if isinstance(layers, (list, tuple)) and all(isinstance(n, str) for n in layers) and layers:
        return list(layers)
    raise TypeError(f"{name} must be 'hidden', 'all' or a non-empty list of module names, got {layers!r}")


def _check_model(model) -> BayesianNetwork:
    if not isinstance(model, BayesianNetwork):
        raise TypeError(
            f"model must be a pyrobdl.BayesianNetwork (wrap your net: BayesianNetwork(net, likelihood=...)), "
            f"got {type(model).__name__}"
        )
    return model


def _check_likelihood(model: BayesianNetwork, method: str, out: torch.Tensor, y: torch.Tensor, lats) -> None:
    """Fail early, with the fix, when the likelihood cannot be used by a
    maximum-likelihood method (discrete latents, no log_prob / prediction)."""
    lik = model.likelihood
    name = type(lik).__name__
    if getattr(lik, "task", None) not in ("regression", "classification"):
        raise ValueError(
            f"{method} cannot use likelihood {name}: its task is {getattr(lik, 'task', None)!r}, expected "
            f"'regression' or 'classification'; use {_KNOWN_LIKELIHOODS}"
        )
    try:
        lp = lik.log_prob(out, y, lats)
        lik.prediction(out.unsqueeze(0), {k: v.unsqueeze(0) for k, v in lats.items()})
    except NotImplementedError:
        raise ValueError(
            f"{method} cannot use likelihood {name}: it does not implement log_prob()/dist() and prediction(); "
            f"implement them or use {_KNOWN_LIKELIHOODS}"
        ) from None
    if lp.shape != out.shape[:-1]:
        raise ValueError(
            f"{method} cannot use likelihood {name}: log_prob returned shape {tuple(lp.shape)} for outputs "
            f"{tuple(out.shape)}; it must return one value per data point, shape {tuple(out.shape[:-1])}"
        )


# ============================================================================ likelihood latents
def _prior_median(prior) -> torch.Tensor:
    shape = prior.batch_shape + prior.event_shape
    try:
        half = torch.full(shape, 0.5, dtype=prior.mean.dtype, device=prior.mean.device)
        m = prior.icdf(half)
    except (NotImplementedError, ValueError, RuntimeError, AttributeError):
        m = prior.mean
    if not bool(torch.isfinite(m).all()):
        m = prior.sample((1001,)).median(0).values
    return m.detach()


def _init_latents(model: BayesianNetwork, method: str, lead: Tuple[int, ...] = ()) -> Dict[str, torch.Tensor]:
    """Unconstrained point estimates of the likelihood's latents (e.g. the noise
    scale of ``Gaussian()``), started at the prior median, with leading shape
    ``lead`` (one per ensemble member)."""
    sites = model.latent_sites()
    raw = {}
    for short, site in model._latent_site_of.items():
        s = sites[site]
        try:
            t = biject_to(s.support)
        except NotImplementedError:
            raise ValueError(
                f"{method} cannot use likelihood {type(model.likelihood).__name__}: its latent {short!r} has "
                f"support {s.support}, which has no point estimate by gradient descent; use a likelihood with "
                f"continuous latents ({_KNOWN_LIKELIHOODS})"
            ) from None
        u = t.inv(_prior_median(s.prior))
        raw[short] = u.expand(tuple(lead) + tuple(u.shape)).clone().requires_grad_(True)
    return raw


def _constrain(model: BayesianNetwork, raw: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Unconstrained latents -> values the likelihood takes (``{"sigma": ...}``)."""
    if not raw:
        return {}
    sites = model.latent_sites(device=next(iter(raw.values())).device)
    return {k: biject_to(sites[model._latent_site_of[k]].support)(u) for k, u in raw.items()}


def _constrainer(model: BayesianNetwork) -> Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]:
    """:func:`_constrain` with the transforms looked up once (for the training
    loop: no per-step rebuilding of the model's latent sites)."""
    sites = model.latent_sites()
    transforms = {short: biject_to(sites[site].support) for short, site in model._latent_site_of.items()}
    return lambda raw: {k: transforms[k](u) for k, u in raw.items()}


# ============================================================================ weight penalty
def _penalty(
    model: BayesianNetwork, weight_decay: WeightDecay, num_data: int, keep: Dict[str, float]
) -> Optional[Callable[[Dict[str, torch.Tensor]], torch.Tensor]]:
    r"""The weight penalty :math:`\sum_j\lambda_j\lVert\theta_j-\mu_j\rVert^2` as a
    function of ``{param name: value}`` (values may carry leading member dims;
    the penalty sums over them). ``None`` when it is zero."""
    gauss: List[Tuple[str, float, float]] = []
    other: List[Tuple[str, Any]] = []
    if weight_decay == "prior":
        sites = model.latent_sites()
        for pname in model.bayesian_parameters:
            site = sites[model.parameter_site(pname)]
            if site.gaussian is not None:
                loc, scale = site.gaussian
                gauss.append((pname, keep.get(pname, 1.0) / (2.0 * float(scale) ** 2 * num_data), float(loc)))
            else:
                other.append((pname, site.prior))
    elif float(weight_decay) > 0:
        gauss = [(pname, float(weight_decay), 0.0) for pname in model.bayesian_parameters]
    if not gauss and not other:
        return None

    def penalty(params: Dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for pname, coef, loc in gauss:
            v = params[pname]
            total = total + coef * ((v - loc).pow(2).sum() if loc else v.pow(2).sum())
        for pname, prior in other:
            total = total - prior.log_prob(params[pname]).sum() / num_data
        return total

    return penalty


# ============================================================================ training loop
def _optimise(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]],
    batches: Iterator[Tuple[torch.Tensor, torch.Tensor]],
    params: List[torch.Tensor],
    *,
    num_steps: int,
    lr: float,
    progress: bool,
    desc: str,
    device,
    record_shape: Tuple[int, ...] = (),
) -> Tuple[torch.Tensor, float]:
    """Adam on ``params`` for ``num_steps`` minibatches. ``loss_fn`` returns the
    loss and a detached value to record. Returns (recorded losses, seconds).

    The per-step work is the step itself: the recorded values are written in
    blocks of 50 steps (with the finiteness check, the only host sync), and
    Pyro's / torch's distribution argument validation is off inside the loop
    (the likelihood was checked on the first batch before, and the data by
    :class:`~pyrobdl.inference.base.Data`)."""
    opt = _adam(params, lr)
    losses = torch.full((num_steps,) + record_shape, float("nan"), device=device)
    pending: List[torch.Tensor] = []
    bar = tqdm(range(num_steps), desc=desc, disable=not progress, leave=False)
    t0 = time.perf_counter()
    with pyro.validation_enabled(False):
        for step in bar:
            xb, yb = next(batches)
            loss, record = loss_fn(xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            pending.append(record)
            if step % 50 == 0 or step == num_steps - 1:
                losses[step + 1 - len(pending) : step + 1] = torch.stack(pending)
                pending.clear()
                val = float(loss.detach())
                if not math.isfinite(val):
                    raise FloatingPointError(
                        f"the training loss became {val} at step {step}; lower lr (now {lr}) or standardise x and y"
                    )
                bar.set_postfix(loss=f"{val:.4g}")
    return losses.cpu(), time.perf_counter() - t0


def _adam(params: List[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam, fused into one kernel per step where torch supports it (CPU and
    CUDA floating-point tensors): same update, a fraction of the per-step
    overhead, which dominates for the small networks these baselines train."""
    if params and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in params):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr)


def _steps(num_steps: int, epochs: Optional[int], data: Data, batch_size: Optional[int]) -> int:
    return num_steps if epochs is None else epochs * data.steps_per_epoch(batch_size)


# ============================================================================ chunked prediction
def _prepare_x(posterior: Posterior, x) -> torch.Tensor:
    posterior._check_fitted()
    x = check_inputs(x, "x")
    if x.device != posterior.device:
        posterior.to(x.device)
    if x.dtype != posterior.model.dtype:
        x = x.to(posterior.model.dtype)
    return x


def _row_bytes(posterior: Posterior, x: torch.Tensor) -> int:
    """``model._bytes_per_row(x)`` (a probe forward pass with hooks), cached on
    the posterior per input shape, dtype and device: repeated predictions
    skip the probe."""
    key = (tuple(x.shape[1:]), x.dtype, x.device)
    cache = posterior.__dict__.setdefault("_row_bytes_cache", {})
    if key not in cache:
        cache[key] = posterior.model._bytes_per_row(x)
    return cache[key]


def _chunk_plan(
    model: BayesianNetwork, x: torch.Tensor, S: int, chunk_size, max_memory, per_sample_bytes: int = 0,
    per_row: Optional[int] = None,
) -> Tuple[int, int]:
    """(samples per batched pass, input rows per pass), with the semantics of
    :meth:`BayesianNetwork.predict_from_samples`; ``per_sample_bytes`` adds
    memory that each sample costs whatever the rows (sampled weights);
    ``per_row``: the activation bytes per input row, when known."""
    max_memory = DEFAULT_MAX_MEMORY if max_memory is None else check_positive_int(max_memory, "max_memory")
    N = x.shape[0]
    if per_row is None:
        per_row = model._bytes_per_row(x)
    if chunk_size is None:
        per_sample = max(per_row * N + per_sample_bytes, 1)
        chunk = max(1, min(S, max_memory // per_sample))
        if x.device.type == "cpu":  # cache-sized passes: elementwise layers are memory-bound on CPU
            chunk = min(chunk, max(1, _CPU_PASS_BYTES // per_sample))
    else:
        chunk = check_positive_int(chunk_size, "chunk_size")
    rows = N if per_row * N * chunk <= max_memory else max(1, max_memory // (per_row * chunk))
    return chunk, rows


class _EvalMode:
    """Context: ``net`` in eval mode, restored after (no recursion when it already is)."""

    def __init__(self, net: nn.Module):
        self.net, self.was_training = net, net.training

    def __enter__(self):
        if self.was_training:
            self.net.eval()

    def __exit__(self, *exc):
        if self.was_training:
            self.net.train()


def _get_rng(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _run_chunked(
    fn: Callable[[int, int, torch.Tensor], torch.Tensor],
    S: int,
    x: torch.Tensor,
    chunk: int,
    rows: int,
    *,
    replay_rng: bool = False,
) -> torch.Tensor:
    """``fn(s0, s1, x_rows) -> (s1 - s0, rows, ...)`` over chunks of samples and
    rows, concatenated to ``(S, N, ...)``. With ``replay_rng`` every row chunk of
    one sample chunk starts from the same RNG state, so masks drawn inside
    ``fn`` (whose shapes do not depend on the rows) are the same for all rows."""
    N = x.shape[0]
    outs = []
    for s0 in range(0, S, chunk):
        s1 = min(S, s0 + chunk)
        if rows >= N:
            outs.append(fn(s0, s1, x))
            continue
        state = _get_rng(x.device) if replay_rng else None
        parts = []
        for r0 in range(0, N, rows):
            if state is not None:
                _set_rng(x.device, state)
            parts.append(fn(s0, s1, x[r0 : r0 + rows]))
        outs.append(torch.cat(parts, 1))
    return outs[0] if len(outs) == 1 else torch.cat(outs, 0)


# ============================================================================ hand-batched chains
# Recognition and the batched forward of plain Linear/activation chains are network.py's
# (:func:`~pyrobdl.network._chain_plan`, :func:`~pyrobdl.network._chain_forward`); here: the
# per-call switch, the prediction adapter and the transposed training layout of ensembles.

#: set to False to force the general vmap/functional_call path everywhere
#: (the hand-batched path is an exact re-implementation, kept switchable for tests)
_USE_CHAIN_PATH = True


def _usable_chain(plan: Optional[_Chain]) -> Optional[_Chain]:
    """``plan`` when the hand-batched path may run now: enabled, and no hooks or patched
    forwards on the chain's modules and no global module hooks (see
    :meth:`~pyrobdl.network._Chain.still_plain`); else ``None``."""
    if plan is None or not _USE_CHAIN_PATH or not plan.still_plain():
        return None
    return plan


def _chain_forward_samples(plan: _Chain, params: Dict[str, torch.Tensor], x: torch.Tensor, S: int) -> torch.Tensor:
    r"""``S`` networks of one chain in one batched pass: ``(S, N, out)``.

    Each weight is either shared, ``(out, in)``, or per sample, ``(S, out, in)``
    (likewise biases, ``(out,)`` or ``(S, out)``); ``x`` is ``(N, in)``, shared,
    or ``(S, N, in)``. This is :func:`~pyrobdl.network._chain_forward` (a shared
    input stays shared until the first per-sample weight, which runs as one
    :func:`torch.baddbmm`), with an output of shared layers only expanded to
    ``S`` samples: what ``vmap(functional_call(net, ...))`` computes."""
    h = _chain_forward(plan, params, x, S)
    return h if h.dim() == 3 else h.expand((S,) + h.shape)


def _chain_layout(plan: _Chain) -> Dict[str, str]:
    """The parameter layout :func:`_chain_forward_members` takes (see :class:`_FlatMembers`)."""
    layout = {}
    for step in plan.steps:
        if step[0] == "linear":
            layout[step[2]] = "T"
            if step[3] is not None:
                layout[step[3]] = "B"
    return layout


def _chain_forward_members(plan: _Chain, params: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    r"""The chain's forward for ensemble training: every parameter per member and
    already in the layout of :func:`_chain_layout` (weights :math:`W^\top`
    ``(M, in, out)``, biases ``(M, 1, out)``), inputs ``(M, B, in)``; one
    ``baddbmm`` per layer and no reshaping views in the autograd graph.
    Activations as in :func:`~pyrobdl.network._chain_forward` (:func:`~pyrobdl.network._chain_run`)."""

    def layer(step: Tuple, h: torch.Tensor, li: int) -> torch.Tensor:
        wname, bname = step[2], step[3]
        return torch.bmm(h, params[wname]) if bname is None else torch.baddbmm(params[bname], h, params[wname])

    return _chain_run(plan, x, layer)


# ============================================================================ layer discovery
def _param_name(module_name: str, leaf: str) -> str:
    return f"{module_name}.{leaf}" if module_name else leaf


def _call_order(net: nn.Module, x0: torch.Tensor) -> List[str]:
    """Names of the Linear/Conv and dropout modules in the order a forward
    pass first calls them."""
    order: Dict[str, None] = {}
    handles = []
    for name, m in net.named_modules():
        if isinstance(m, _WEIGHT_LAYERS + _DROPOUT_TYPES):
            handles.append(m.register_forward_pre_hook(lambda _m, _a, name=name: order.setdefault(name)))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(x0)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return list(order)


def _select_layers(net: nn.Module, model: BayesianNetwork, order: List[str], layers: LayerSpec) -> List[str]:
    """Names of the weight layers a method acts on.

    ``"hidden"``: every Linear/Conv whose weight is a Bayesian parameter of the
    model, except the first Linear/Conv the forward pass calls (the one that
    sees the raw input); ``"all"``: including that one; a list: those modules.
    """
    modules = dict(net.named_modules())
    weight_layers = [n for n in order if isinstance(modules[n], _WEIGHT_LAYERS)]
    if isinstance(layers, list):
        valid = [n for n, m in modules.items() if isinstance(m, _WEIGHT_LAYERS)]
        bad = [n for n in layers if n not in valid]
        if bad:
            raise ValueError(
                f"layers={layers!r}: {bad} are not Linear/Conv modules of the network; "
                f"choose among {valid}"
            )
        return list(dict.fromkeys(layers))
    bayes = set(model.bayesian_parameters)
    eligible = [n for n in weight_layers if _param_name(n, "weight") in bayes]
    if layers == "hidden":
        eligible = [n for n in eligible if not weight_layers or n != weight_layers[0]]
    return eligible


def _set_submodule(net: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent_name), leaf, new)


# ============================================================================ MC dropout
class _MCDropoutLayer(nn.Module):
    r"""Inverted dropout with a training mode and a *sampling* mode.

    In training mode every example gets its own mask (ordinary dropout;
    whole channels when ``sample_dims="channels"``). In sampling mode (set by
    :class:`DropoutPosterior` at prediction, whatever ``training`` says) one
    mask is drawn per call and shared by the whole batch, so under
    ``vmap(..., randomness="different")`` each predictive sample is one mask,
    i.e. one function :math:`f_s`; the mask covers the last dimension
    (``"features"``, the input features of a Linear layer), dimension 1
    (``"channels"``, the input channels of a convolution) or every
    non-batch element (``"elements"``). In eval mode without sampling it is
    the identity (the deterministic weight-averaged network).
    """

    def __init__(self, p: float, sample_dims: str = "elements"):
        super().__init__()
        self.p = float(p)
        self.sample_dims = sample_dims
        self.sampling = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not (self.training or self.sampling):
            return x
        channels = self.sample_dims == "channels" and x.dim() > 2
        if self.sampling:
            if self.sample_dims == "features":
                shape = (1,) * (x.dim() - 1) + (x.shape[-1],)
            elif channels:
                shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
            else:
                shape = (1,) + tuple(x.shape[1:])
        else:
            shape = tuple(x.shape[:2]) + (1,) * (x.dim() - 2) if channels else tuple(x.shape)
        keep = 1.0 - self.p
        mask = torch.bernoulli(torch.full(shape, keep, dtype=x.dtype, device=x.device)).div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, sample_dims={self.sample_dims!r}"


class _InputDropout:
    """Forward pre-hook applying a :class:`_MCDropoutLayer` to a module's input."""

    def __init__(self, layer: _MCDropoutLayer):
        self.layer = layer

    def __call__(self, module, args):
        return (self.layer(args[0]),) + tuple(args[1:])


def _apply_dropout_plan(net: nn.Module, plan: List[Dict[str, Any]]) -> None:
    """Insert (``where="input"``: a pre-hook on the module) or swap in
    (``where="replace"``: an existing dropout module) the planned dropout
    layers. Parameter and state-dict names are unchanged."""
    for entry in plan:
        layer = _MCDropoutLayer(entry["p"], entry["sample_dims"])
        if entry["where"] == "replace":
            _set_submodule(net, entry["module"], layer)
        else:
            target = net.get_submodule(entry["module"])
            target.add_module("mc_dropout", layer)
            target.register_forward_pre_hook(_InputDropout(layer))


def _dropout_view(net: nn.Module, plan: List[Dict[str, Any]]) -> nn.Module:
    """A copy of ``net`` with the planned dropout layers that *shares* its
    parameters and buffers (training one trains the other)."""
    memo = {id(t): t for t in itertools.chain(net.parameters(), net.buffers())}
    view = copy.deepcopy(net, memo)
    _apply_dropout_plan(view, plan)
    return view


class _Sampling:
    """Context: the network's dropout layers draw one mask per sample."""

    def __init__(self, net: nn.Module):
        self.layers = [m for m in net.modules() if isinstance(m, _MCDropoutLayer)]

    def __enter__(self):
        for m in self.layers:
            m.sampling = True

    def __exit__(self, *exc):
        for m in self.layers:
            m.sampling = False


def _num_inputs(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _input_mask(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    r"""A mask ``z`` ``(S, inputs)`` on a layer's input features/channels as a
    mask on its weight, broadcastable to ``(S, *weight.shape)``: dropping
    input :math:`j` zeroes column :math:`j` of a Linear weight, or the kernel
    slices that read input channel :math:`j` of a convolution."""
    w = module.weight
    S = z.shape[0]
    if isinstance(module, nn.Linear):
        return z.unsqueeze(1)
    k = (1,) * (w.dim() - 2)
    if module.transposed:  # weight (in, out / groups, *kernel)
        return z.reshape((S, z.shape[1], 1) + k)
    g = module.groups
    per = z.shape[1] // g
    out = w.shape[0]
    m = z.reshape(S, g, 1, per).expand(S, g, out // g, per).reshape(S, out, per)
    return m.reshape((S, out, per) + k)


class _MLInference(Inference):
    """Settings shared by the maximum-likelihood baselines."""

    def __init__(
        self,
        *,
        num_steps: int,
        epochs: Optional[int],
        batch_size: Optional[int],
        lr: float,
        weight_decay: WeightDecay,
        progress: bool,
        seed: Optional[int],
    ):
        self.num_steps = check_positive_int(num_steps, "num_steps")
        self.epochs = None if epochs is None else check_positive_int(epochs, "epochs")
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.lr = check_positive_float(lr, "lr")
        self.weight_decay = _check_weight_decay(weight_decay)
        self.progress = bool(progress)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an integer or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)

    def _settings(self) -> Dict[str, Any]:
        return {
            "num_steps": self.num_steps, "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
            "weight_decay": self.weight_decay, "seed": self.seed,
        }


class _MaskedPosterior(Posterior):
    """Shared parts of the dropout and DropConnect posteriors: a trained copy
    of the network, point estimates of the likelihood's latents, and
    prediction from per-sample masked weights."""

    def __init__(self, model: BayesianNetwork, net: nn.Module, latents: Dict[str, torch.Tensor], *, p: float, settings: Dict[str, Any]):
        super().__init__(model)
        self.net = net
        self._raw = {k: v.detach() for k, v in latents.items()}
        self.p = float(p)
        self.settings = dict(settings)
        # predictions mask weights and run ``net`` in eval mode, where its dropout modules are the
        # identity: the plain copy ``model.net`` (same parameters, no inserted hooks) is the chain
        self._chain = _chain_plan(model.net, dropout_is_identity=True)

    @property
    def device(self) -> torch.device:
        for t in self.net.parameters():
            return t.device
        return self.model.device

    def to(self, device) -> "_MaskedPosterior":
        self.model.to(device)
        self.net.to(device)
        self._raw = {k: v.to(device) for k, v in self._raw.items()}
        return self

    @property
    def latents(self) -> Dict[str, torch.Tensor]:
        """Maximum-likelihood values of the likelihood's latents (e.g. ``{"sigma": σ}``)."""
        constrain = self.__dict__.get("_constrain_fn")
        if constrain is None:
            constrain = self._constrain_fn = _constrainer(self.model)
        return {k: v.detach() for k, v in constrain(self._raw).items()}

    def _expanded_latents(self, S: int) -> Dict[str, torch.Tensor]:
        return {k: v.expand((S,) + v.shape) for k, v in self.latents.items()}

    def _masked_weights(self, S: int) -> Dict[str, torch.Tensor]:
        """``S`` masked values of every masked weight: name -> ``(S, *shape)``."""
        raise NotImplementedError

    def _weight_samples(self, num_samples: int) -> Dict[str, torch.Tensor]:
        self._check_fitted()
        S = check_positive_int(num_samples, "num_samples")
        with torch.no_grad():
            masked = self._masked_weights(S)
            named = dict(self.net.named_parameters())
            out = {}
            for pname in self.model.bayesian_parameters:
                v = masked[pname] if pname in masked else named[pname].detach().expand((S,) + named[pname].shape)
                out[self.model.parameter_site(pname)] = v
            for short, v in self._expanded_latents(S).items():
                out[self.model._latent_site_of[short]] = v
        return out

    def _predict_from_masks(self, x: torch.Tensor, S: int, chunk_size, max_memory) -> Prediction:
        """``S`` masked weight sets through the network in batched passes, one
        set per sample chunk shared by its row chunks; sampled weights count
        against ``max_memory``. A plain chain of Linear layers and elementwise
        activations runs hand-batched (:func:`_chain_forward_samples`: shared layers
        once, masked ones as one ``baddbmm``), anything else as ``vmap`` over
        ``functional_call``; both see the same masked weights."""
        named = dict(self.net.named_parameters())
        w_bytes = sum(named[n].numel() * named[n].element_size() for n in self._mask_targets())
        chunk, rows = _chunk_plan(
            self.model, x, S, chunk_size, max_memory, per_sample_bytes=w_bytes, per_row=_row_bytes(self, x)
        )
        net = self.net
        cache: Dict[str, Any] = {}
        chain = _usable_chain(self._chain) if x.dim() == 2 else None
        if chain is not None:
            shared = {k: v.detach() for k, v in named.items()}

        def run(s0, s1, xr):
            if cache.get("s0") != s0:
                cache["s0"], cache["w"] = s0, self._masked_weights(s1 - s0)
            if chain is not None:
                return _chain_forward_samples(chain, {**shared, **cache["w"]}, xr, s1 - s0)
            return vmap(lambda w: functional_call(net, w, (xr,), strict=False), randomness="different")(cache["w"])

        with _EvalMode(net), torch.no_grad():
            out = _run_chunked(run, S, x, chunk, rows)
        return self.model.likelihood.prediction(out, self._expanded_latents(S))

    def _mask_targets(self) -> List[str]:
        raise NotImplementedError

    def _base_state(self) -> Dict[str, Any]:
        return {
            "p": self.p,
            "settings": self.settings,
            "latents": {k: v.cpu() for k, v in self._raw.items()},
            "fit_info": {
                "seconds": float(self.fit_info.get("seconds", 0.0)),
                "num_steps": int(self.fit_info.get("num_steps", 0)),
            },
        }

    @classmethod
    def _restore(cls, model: BayesianNetwork, net: nn.Module, state: Dict[str, Any], **kwargs) -> "_MaskedPosterior":
        lat = {k: v.to(model.device) for k, v in state["latents"].items()}
        model.net.eval()
        post = cls(model, net.eval(), lat, p=state["p"], settings=state["settings"], **kwargs)
        post.fit_info = dict(state.get("fit_info", {}))
        post._fitted = True
        return post


class DropoutPosterior(_MaskedPosterior):
    r"""An MC-dropout "posterior": a network trained with dropout, predicting
    with dropout left on (Gal & Ghahramani, 2016).

    Each predictive sample :math:`s` is one Bernoulli mask per dropout layer,
    shared by all inputs, so sample :math:`s` is one function. A dropout on
    the input of a Linear layer (or on the input channels of a convolution)
    is the same as zeroing columns of its weight (Gal & Ghahramani's reading
    of dropout as a distribution over weights):

    .. math::

        f_s(x) = f\big(x;\ W\,\mathrm{diag}(z_s)/(1-p)\big),\qquad
        z_{s,j}\sim\mathrm{Bernoulli}(1-p),

    so predictions draw the :math:`S` masked weight sets and push them through
    the network in one batched pass (for a chain of Linear layers and
    elementwise activations the masked layers as one :func:`torch.baddbmm`
    each and the unmasked first layer once for all samples; otherwise
    :func:`torch.func.vmap` over :func:`torch.func.functional_call`; see the
    module docs), chunked to bound memory, and
    :meth:`sample_latents` returns them. Dropout modules that do not sit right
    before a Linear/Conv layer of an ``nn.Sequential`` mask activations
    instead: then the masks are drawn inside one ``vmap(...,
    randomness="different")`` pass and :meth:`sample_latents` is unavailable.

    Attributes:
        net: the trained network with its dropout layers, a view of
            ``model.net`` that shares its parameters (``model.net`` itself stays
            a plain copy of the user's architecture). In ``eval()`` mode outside
            :meth:`predict` dropout is off (the deterministic weight-scaled
            net); in ``train()`` mode every example gets its own mask (the
            training path).
        plan: where dropout sits, ``[{"module", "p", "where", "sample_dims", "fold"}]``
            (``where="input"``: on the input of that Linear/Conv module;
            ``"replace"``: an ``nn.Dropout`` of the user's network; ``fold``: the
            layer whose weight columns the mask acts on, or ``None``).
        latents: maximum-likelihood likelihood latents (e.g. the noise σ).
        fit_info: ``losses`` (per step), ``seconds``, ``num_steps``.

    Example:
        Returned by :class:`MCDropout`:

        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods, inference
        >>> x = torch.linspace(-1, 1, 20).unsqueeze(-1); y = x[:, 0] ** 2
        >>> net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> model = BayesianNetwork(net, prior=priors.Normal(), likelihood=likelihoods.Gaussian(scale=0.1))
        >>> posterior = inference.MCDropout(p=0.1, num_steps=20, progress=False).fit(model, x, y)
        >>> pred = posterior.predict(x, num_samples=10)     # 10 dropout masks
        >>> pred.mean.shape, pred.num_samples
        (torch.Size([20]), 10)

    References:
        Y. Gal and Z. Ghahramani, *Dropout as a Bayesian Approximation:
        Representing Model Uncertainty in Deep Learning* (ICML 2016).
    """

    method = "mc-dropout"

    def __init__(self, model, net, latents, *, p: float, plan: List[Dict[str, Any]], settings: Dict[str, Any]):
        super().__init__(model, net, latents, p=p, settings=settings)
        self.plan = [dict(e) for e in plan]

    @property
    def in_weight_space(self) -> bool:
        """Whether every dropout mask is a mask on weight columns (then
        :meth:`sample_latents` works)."""
        return all(e.get("fold") is not None for e in self.plan)

    def _mask_targets(self) -> List[str]:
        return list(dict.fromkeys(_param_name(e["fold"], "weight") for e in self.plan))

    def _masked_weights(self, S: int) -> Dict[str, torch.Tensor]:
        modules = self.__dict__.get("_modules_by_name")
        if modules is None:
            modules = self._modules_by_name = dict(self.net.named_modules())
        masks: Dict[str, torch.Tensor] = {}
        for e in self.plan:
            layer = modules[e["fold"]]
            w = layer.weight
            keep = 1.0 - e["p"]
            z = torch.full((S, _num_inputs(layer)), keep, dtype=w.dtype, device=w.device)
            m = _input_mask(layer, torch.bernoulli(z).div_(keep)) if e["p"] > 0 else None
            if m is not None:
                masks[e["fold"]] = m if e["fold"] not in masks else masks[e["fold"]] * m
        out = {}
        for name in dict.fromkeys(e["fold"] for e in self.plan):
            w = modules[name].weight.detach()
            out[_param_name(name, "weight")] = w * masks[name] if name in masks else w.expand((S,) + w.shape)
        return out

    def predict(
        self,
        x,
        *,
        num_samples: Optional[int] = None,
        chunk_size: Optional[int] = None,
        max_memory: Optional[int] = None,
    ) -> Prediction:
        r"""Predictive with ``num_samples`` dropout masks (default 100), in
        batched passes of ``chunk_size`` masks (default: as many as keep one
        pass under ``max_memory`` bytes, 512 MiB, and, on CPU, near the cache
        size). When the inputs are split into row chunks too, every row chunk
        sees the same masks. Uses (and advances) torch's global RNG: seed it
        for reproducible predictions."""
        x = _prepare_x(self, x)
        S = check_positive_int(self.default_num_samples if num_samples is None else num_samples, "num_samples")
        if self.in_weight_space:
            return self._predict_from_masks(x, S, chunk_size, max_memory)
        chunk, rows = _chunk_plan(self.model, x, S, chunk_size, max_memory, per_row=_row_bytes(self, x))
        dummy = torch.empty(S, device=x.device)
        net = self.net

        def run(s0, s1, xr):
            return vmap(lambda _: net(xr), randomness="different")(dummy[s0:s1])

        with _EvalMode(net), torch.no_grad(), _Sampling(net):
            out = _run_chunked(run, S, x, chunk, rows, replay_rng=True)
        return self.model.likelihood.prediction(out, self._expanded_latents(S))

    def sample_latents(self, num_samples: int) -> Dict[str, torch.Tensor]:
        r"""``num_samples`` weight-space draws by site name: the weights that a
        dropout mask acts on as :math:`W\,\mathrm{diag}(z_s)/(1-p)`, the other
        Bayesian parameters and the likelihood latents at their trained values
        (expanded, not copied).

        Raises:
            TypeError: when some dropout module masks activations that do not
            feed a Linear/Conv layer directly (no weight-space equivalent).
        """
        if not self.in_weight_space:
            bad = [e["module"] for e in self.plan if e.get("fold") is None]
            raise TypeError(
                f"this MC-dropout posterior has no weight-space samples: the dropout modules {bad} mask "
                "activations that do not feed a Linear/Conv layer directly. Use posterior.predict(x, "
                "num_samples=S), put each nn.Dropout right before a Linear/Conv layer of an nn.Sequential, "
                "or fit MCDropConnect (method='mc-dropconnect')"
            )
        return self._weight_samples(num_samples)

    def _state(self) -> Dict[str, Any]:
        state = self._base_state()
        state["plan"] = [dict(e) for e in self.plan]
        return state

    @classmethod
    def _from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "DropoutPosterior":
        return cls._restore(model, _dropout_view(model.net, state["plan"]), state, plan=state["plan"])


class _DropoutInference(_MLInference):
    default_p = 0.1
    default_layers = "hidden"

    def __init__(
        self,
        *,
        p: Optional[float],
        layers: LayerSpec,
        num_steps: int = 3000,
        epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        lr: float = 1e-2,
        weight_decay: WeightDecay = "prior",
        progress: bool = True,
        seed: Optional[int] = None,
    ):
        super().__init__(
            num_steps=num_steps, epochs=epochs, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, progress=progress, seed=seed,
        )
        self.p = None if p is None else _check_p(p)
        self.layers = _check_layers(layers)

    def _train(self, model, x, y, *, method, prepare, forward_fn, keep_fn):
        """Shared training of a fresh copy of ``model``: ``prepare(net, x0)``
        returns (the network to train -- sharing the copy's parameters -- and
        method info); then minimise mean NLL + penalty with Adam."""
        _check_model(model)
        if self.seed is not None:
            pyro.set_rng_seed(self.seed)
        data = Data(model, x, y)
        model = model.fresh_copy().to(data.device)
        batches = data.batches(model, self.batch_size)
        x0, y0 = next(batches)
        net, info = prepare(model.net, x0[:2])
        raw = _init_latents(model, method)
        lik = model.likelihood
        with torch.no_grad():
            _check_likelihood(model, method, net.eval()(x0[:2]), y0[:2], _constrain(model, raw))
        penalty = _penalty(model, self.weight_decay, data.num_data, keep_fn(info))
        named = dict(net.named_parameters())
        constrain = _constrainer(model)
        log_prob = lik.log_prob

        def loss_fn(xb, yb):
            loss = -log_prob(forward_fn(net, named, xb, info), yb, constrain(raw)).mean()
            if penalty is not None:
                loss = loss + penalty(named)
            return loss, loss.detach()

        num_steps = _steps(self.num_steps, self.epochs, data, self.batch_size)
        params = [t for t in net.parameters() if t.requires_grad] + list(raw.values())
        net.train()
        try:
            losses, secs = _optimise(
                loss_fn, _chain(iter([(x0, y0)]), batches), params, num_steps=num_steps, lr=self.lr,
                progress=self.progress, desc=self.name, device=data.device,
            )
        finally:
            net.eval()
            model.net.eval()  # shares parameters and buffers (BatchNorm statistics) with net
        return model, net, info, raw, {"losses": losses, "seconds": secs, "num_steps": num_steps}


def _chain(first, rest):
    yield from first
    yield from rest


@register_method
class MCDropout(_DropoutInference):
    r"""Monte Carlo dropout (Gal & Ghahramani, 2016): train the network by
    maximum likelihood with dropout and weight decay, keep dropout on at
    prediction; each predictive sample is one dropout mask, shared by all
    inputs (one function per sample).

    **Where dropout goes.** If the network already has ``nn.Dropout`` (or
    ``Dropout1d/2d/3d``) modules, those are used (with their own rates, or
    ``p`` when it is given). Otherwise (or with an explicit ``layers``)
    dropout is put on the *input* of every chosen Linear/Conv layer: on its
    input features (Linear) or input channels (Conv, i.e. spatial dropout).
    The default, ``layers="hidden"``, chooses every Linear/Conv layer whose
    weight is a Bayesian parameter of the model except the first one the
    forward pass calls (the one that sees the raw input): dropping raw input
    features -- the only input of a 1-D regression -- is rarely wanted. So for
    ``Linear(1,50) → ReLU → Linear(50,50) → ReLU → Linear(50,1)`` the masks fall
    on the outputs of both hidden layers. ``layers="all"`` includes the first
    layer (Gal's UCI setup); a list of module names picks layers by name. With
    a Bayesian head on a deterministic feature extractor only head layers are
    chosen. The copy keeps the user's parameter names.

    **Objective** (see :mod:`pyrobdl.inference.baselines`): mean negative
    log-likelihood under per-example dropout masks plus
    :math:`\sum_j\lambda_j\lVert\theta_j-\mu_j\rVert^2`; with
    ``weight_decay="prior"`` (default) :math:`\lambda_j = (1-p)/(2 s_j^2 N)`
    for the weights fed by a dropped input and :math:`1/(2 s_j^2 N)` for the
    other Bayesian parameters, where :math:`\mathcal N(\mu_j, s_j^2)` is the
    model's prior and :math:`N` the dataset size. Training starts from the
    network's current weights. The likelihood's latents (e.g. the σ of
    ``Gaussian()``) are fitted by maximum likelihood.

    Args:
        p: dropout probability in [0, 1) (default 0.1; existing dropout
            modules keep their own rate unless ``p`` is given).
        layers: ``"hidden"`` (default), ``"all"`` or a list of Linear/Conv
            module names to put dropout before.
        num_steps: optimisation steps (ignored when ``epochs`` is given).
        epochs: passes over the data instead of ``num_steps``.
        batch_size: minibatch size (default: full batch).
        lr: Adam learning rate.
        weight_decay: ``"prior"`` or a float λ (penalty λ·Σθ², 0 = none).
        progress: show a progress bar.
        seed: seed torch's, Pyro's and NumPy's RNGs first.

    Example::

        posterior = inference.MCDropout(p=0.1, num_steps=3000).fit(model, x, y)
        pred = posterior.predict(x_test, num_samples=100)
        pred.epistemic_std, pred.aleatoric_std

    References:
        Y. Gal and Z. Ghahramani, *Dropout as a Bayesian Approximation* (ICML 2016).
    """

    name = "mc-dropout"
    aliases = ("mcdropout", "dropout")

    def __init__(self, *, p: Optional[float] = None, layers: LayerSpec = None, **kwargs):
        super().__init__(p=p, layers=layers, **kwargs)

    def _plan(self, model: BayesianNetwork, net: nn.Module, x0: torch.Tensor) -> Tuple[List[Dict[str, Any]], Dict[str, float]]:
        """(plan, keep probability per weight) for a fresh copy of the net."""
        order = _call_order(net, x0)
        modules = dict(net.named_modules())
        plan: List[Dict[str, Any]] = []
        for n, m in modules.items():
            if not isinstance(m, _DROPOUT_TYPES):
                continue
            rate = self.p if self.p is not None else _check_p(float(m.p), f"the rate of dropout module {n!r}")
            channel = isinstance(m, _CHANNEL_DROPOUT)
            # a dropout right before a Linear (Conv, for channel dropout) of an nn.Sequential masks its weight columns
            parent_name, _, leaf = n.rpartition(".")
            parent = net.get_submodule(parent_name)
            fold = None
            if type(parent) is nn.Sequential:
                names = list(parent._modules)
                i = names.index(leaf)
                nxt = parent[i + 1] if i + 1 < len(names) else None
                if (isinstance(nxt, nn.Linear) and not channel) or (
                    isinstance(nxt, nn.modules.conv._ConvNd) and channel
                ):
                    fold = _param_name(parent_name, names[i + 1])
            dims = ("channels" if channel else "features") if fold is not None else ("channels" if channel else "elements")
            plan.append({"module": n, "p": rate, "where": "replace", "sample_dims": dims, "fold": fold})
        keep: Dict[str, float] = {}
        rates = {e["module"]: e["p"] for e in plan}
        pending: Optional[float] = None
        for n in order:  # the weight layer called right after a dropout module gets its keep factor
            if n in rates:
                pending = rates[n]
            elif pending is not None:
                keep[_param_name(n, "weight")] = 1.0 - pending
                pending = None
        if plan and self.layers is None:
            return plan, keep
        chosen = _select_layers(net, model, order, self.layers or self.default_layers)
        if not chosen and not plan:
            n_weight = sum(isinstance(m, _WEIGHT_LAYERS) for m in modules.values())
            if n_weight == 0:
                why = "the network has no Linear/Conv layer"
            elif n_weight == 1:
                why = "the network's only Linear/Conv layer sees the raw input"
            else:
                why = "none of its hidden Linear/Conv layers has a Bayesian weight"
            raise ValueError(
                f"MCDropout found no layer to put dropout before: {why}. Add a hidden layer, pass "
                "layers='all' (drop the inputs of every layer) or a list of module names, or put nn.Dropout "
                "modules into the network yourself"
            )
        rate = self.p if self.p is not None else self.default_p
        for n in chosen:
            dims = "features" if isinstance(modules[n], nn.Linear) else "channels"
            plan.append({"module": n, "p": rate, "where": "input", "sample_dims": dims, "fold": n})
            keep[_param_name(n, "weight")] = 1.0 - rate
        return plan, keep

    def fit(self, model: BayesianNetwork, x=None, y=None) -> DropoutPosterior:
        """Train a dropout copy of ``model.net`` on ``(x, y)`` tensors or a
        DataLoader of ``(x, y)`` batches."""

        def prepare(net, x0):
            plan, keep = self._plan(model, net, x0)
            return _dropout_view(net, plan), (plan, keep)

        model, net, (plan, _), raw, fit_info = self._train(
            model, x, y, method="MCDropout", prepare=prepare,
            forward_fn=lambda net, named, xb, info: net(xb), keep_fn=lambda info: info[1],
        )
        settings = dict(self._settings(), layers=self.layers)
        p = self.p if self.p is not None else self.default_p
        post = DropoutPosterior(model, net, raw, p=p, plan=plan, settings=settings)
        post.fit_info = fit_info
        post._fitted = True
        return post


# ============================================================================ MC DropConnect
class DropConnectPosterior(_MaskedPosterior):
    r"""An MC-DropConnect "posterior": a network trained with DropConnect,
    predicting with weight masks (Wan et al., 2013; Mobiny et al., 2021).

    Each predictive sample is one set of masked weights
    :math:`W_s = W\circ Z_s/(1-p)`, :math:`Z_s\sim\mathrm{Bernoulli}(1-p)`
    elementwise, for every masked layer; biases are not masked. The :math:`S`
    weight sets run through the network in one batched pass (hand-batched
    :func:`torch.baddbmm` for a chain of Linear layers and elementwise
    activations, else :func:`torch.func.vmap` over
    :func:`torch.func.functional_call`), chunked so that weights plus
    activations stay under ``max_memory``.

    Attributes:
        net: the trained network, ``model.net`` (``eval()``: unmasked weights).
        masked: names of the masked weight parameters.
        latents: maximum-likelihood likelihood latents.

    Example:
        Returned by :class:`MCDropConnect`:

        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods, inference
        >>> x = torch.linspace(-1, 1, 20).unsqueeze(-1); y = x[:, 0] ** 2
        >>> net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> model = BayesianNetwork(net, prior=priors.Normal(), likelihood=likelihoods.Gaussian(scale=0.1))
        >>> posterior = inference.MCDropConnect(p=0.1, num_steps=20, progress=False).fit(model, x, y)
        >>> posterior.sample_latents(10)["0.weight"].shape  # 10 masked copies of the first weight
        torch.Size([10, 8, 1])
        >>> posterior.predict(x, num_samples=10).mean.shape
        torch.Size([20])

    References:
        L. Wan, M. Zeiler, S. Zhang, Y. LeCun and R. Fergus, *Regularization of
        Neural Networks using DropConnect* (ICML 2013).
    """

    method = "mc-dropconnect"

    def __init__(self, model, net, latents, *, p: float, masked: List[str], settings: Dict[str, Any]):
        super().__init__(model, net, latents, p=p, settings=settings)
        self.masked = list(masked)

    def _mask_targets(self) -> List[str]:
        return list(self.masked)

    def _masked_weights(self, S: int) -> Dict[str, torch.Tensor]:
        named = dict(self.net.named_parameters())
        keep = 1.0 - self.p
        out = {}
        for n in self.masked:
            w = named[n].detach()
            if self.p == 0.0:
                out[n] = w.expand((S,) + w.shape)
            else:
                mask = torch.bernoulli(torch.full((S,) + w.shape, keep, dtype=w.dtype, device=w.device))
                out[n] = (w * mask).div_(keep)
        return out

    def sample_latents(self, num_samples: int) -> Dict[str, torch.Tensor]:
        r"""``num_samples`` masked-weight draws for every latent site: masked
        weights :math:`W\circ Z_s/(1-p)`, the other Bayesian parameters and the
        likelihood latents at their trained values (expanded, not copied).

        ``posterior.model.predict_from_samples(x, posterior.sample_latents(S))``
        gives the same predictive distribution as :meth:`predict`."""
        return self._weight_samples(num_samples)

    def predict(
        self,
        x,
        *,
        num_samples: Optional[int] = None,
        chunk_size: Optional[int] = None,
        max_memory: Optional[int] = None,
    ) -> Prediction:
        """Predictive with ``num_samples`` weight masks (default 100); chunking
        as :meth:`DropoutPosterior.predict` (each chunk's sampled weights count
        against ``max_memory``)."""
        x = _prepare_x(self, x)
        S = check_positive_int(self.default_num_samples if num_samples is None else num_samples, "num_samples")
        return self._predict_from_masks(x, S, chunk_size, max_memory)

    def _state(self) -> Dict[str, Any]:
        state = self._base_state()
        state["masked"] = list(self.masked)
        return state

    @classmethod
    def _from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "DropConnectPosterior":
        return cls._restore(model, model.net, state, masked=state["masked"])


@register_method
class MCDropConnect(_DropoutInference):
    r"""Monte Carlo DropConnect (Wan et al., 2013; Mobiny et al., 2021): like
    :class:`MCDropout`, but the Bernoulli mask falls on single *weights* of
    Linear/Conv layers instead of on activations,
    :math:`W_s = W\circ Z_s/(1-p)`, :math:`Z_{s,ij}\sim\mathrm{Bernoulli}(1-p)`.

    Training draws one weight mask per minibatch step; prediction draws one per
    predictive sample. By default (``layers="all"``) every Linear/Conv layer
    whose weight is a Bayesian parameter is masked, the first layer included
    (masking single weights, unlike dropping an input, never removes an input
    feature altogether); ``"hidden"`` skips the first layer; a list of module
    names picks layers. Biases are never masked. The objective and weight
    decay are as for :class:`MCDropout`, with :math:`\lambda_j = (1-p)/(2s_j^2N)`
    on masked weights.

    Args:
        p: probability of dropping a weight, in [0, 1) (default 0.1).
        layers: ``"all"`` (default), ``"hidden"`` or a list of module names.
        **kwargs: ``num_steps``, ``epochs``, ``batch_size``, ``lr``,
            ``weight_decay``, ``progress``, ``seed`` as :class:`MCDropout`.

    Example::

        posterior = pyrobdl.fit(model, x, y, method="mc-dropconnect", p=0.1)
        pred = posterior.predict(x_test, num_samples=100)
        draws = posterior.sample_latents(100)    # masked weights by site name

    References:
        L. Wan et al., *Regularization of Neural Networks using DropConnect*
        (ICML 2013); A. Mobiny et al., *DropConnect is effective in modeling
        uncertainty of Bayesian deep networks* (Sci. Rep. 2021).
    """

    name = "mc-dropconnect"
    aliases = ("mcdropconnect", "dropconnect")
    default_layers = "all"

    def __init__(self, *, p: float = 0.1, layers: LayerSpec = "all", **kwargs):
        super().__init__(p=p, layers=layers, **kwargs)

    def fit(self, model: BayesianNetwork, x=None, y=None) -> DropConnectPosterior:
        """Train a DropConnect copy of ``model.net`` on ``(x, y)`` tensors or a
        DataLoader of ``(x, y)`` batches."""
        p = float(self.p)
        keep = 1.0 - p

        def prepare(net, x0):
            chosen = _select_layers(net, model, _call_order(net, x0), self.layers)
            if not chosen:
                raise ValueError(
                    "MCDropConnect found no weight to mask: the network has no Linear/Conv layer with a Bayesian "
                    "weight" + (" other than its first" if self.layers == "hidden" else "")
                    + "; use layers='all', name the layers, or make their weights Bayesian (bayesian=...)"
                )
            return net, [_param_name(n, "weight") for n in chosen]

        def forward(net, named, xb, masked):
            if p == 0.0:
                return net(xb)
            w = {n: named[n] * torch.bernoulli(torch.full_like(named[n], keep, requires_grad=False)).div_(keep) for n in masked}
            return functional_call(net, w, (xb,), strict=False)

        model, net, masked, raw, fit_info = self._train(
            model, x, y, method="MCDropConnect", prepare=prepare, forward_fn=forward,
            keep_fn=lambda masked: {n: keep for n in masked},
        )
        settings = dict(self._settings(), layers=self.layers)
        post = DropConnectPosterior(model, net, raw, p=p, masked=masked, settings=settings)
        post.fit_info = fit_info
        post._fitted = True
        return post


# ============================================================================ deep ensembles
class _FlatMembers:
    r"""The trained tensors of :math:`M` members -- stacked parameters
    ``(M, *shape)`` and likelihood latents ``(M, *shape)`` -- as views of one
    leaf ``(M, P)`` (members in rows), so that Adam, whose update is
    elementwise, runs as one fused kernel on one tensor and the backward pass
    accumulates one gradient. Mathematically the same optimiser as one Adam
    per tensor (per member). Falls back to the separate tensors when their
    dtypes or devices differ.

    ``layout`` stores parameters the way the hand-batched chain consumes them
    (:func:`_chain_forward_members`): ``"T"`` a weight as :math:`W^\top`,
    ``(M, in, out)``, ``"B"`` a bias as ``(M, 1, out)``; :meth:`standard` and
    :meth:`values` give the usual ``(M, out, in)`` / ``(M, out)``."""

    def __init__(
        self, params: Dict[str, torch.Tensor], raw: Dict[str, torch.Tensor], M: int,
        layout: Optional[Dict[str, str]] = None,
    ):
        self.layout = dict(layout or {})
        params = {k: self._to_layout(k, v) for k, v in params.items()}
        tensors = {**{("p", k): v for k, v in params.items()}, **{("r", k): v for k, v in raw.items()}}
        self.keys = list(tensors)
        self.shapes = [tuple(v.shape[1:]) for v in tensors.values()]
        self.sizes = [math.prod(s) for s in self.shapes]
        same = len({(v.dtype, v.device) for v in tensors.values()}) <= 1
        if tensors and same:
            self.flat = torch.cat([v.detach().reshape(M, -1) for v in tensors.values()], 1).requires_grad_(True)
            self.leaves = [self.flat]
            self.separate = None
        else:
            self.flat = None
            self.separate = {k: v.detach().contiguous().requires_grad_(True) for k, v in tensors.items()}
            self.leaves = list(self.separate.values())
        self.M = M

    def _to_layout(self, name: str, v: torch.Tensor) -> torch.Tensor:
        kind = self.layout.get(name)
        return v.transpose(1, 2) if kind == "T" else v.unsqueeze(1) if kind == "B" else v

    def standard(self, params: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Parameters in ``layout`` -> the usual stacked shapes (views)."""
        out = {}
        for k, v in params.items():
            kind = self.layout.get(k)
            out[k] = v.transpose(1, 2) if kind == "T" else v.squeeze(1) if kind == "B" else v
        return out

    def views(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """(stacked parameters in ``layout``, raw latents) as differentiable views of the leaf."""
        if self.flat is None:
            items = self.separate.items()
        else:
            parts = self.flat.split(self.sizes, 1)
            items = ((k, t.view((self.M,) + s)) for k, t, s in zip(self.keys, parts, self.shapes))
        p: Dict[str, torch.Tensor] = {}
        r: Dict[str, torch.Tensor] = {}
        for (kind, name), t in items:
            (p if kind == "p" else r)[name] = t
        return p, r

    def values(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Detached, contiguous copies of the trained tensors, in the usual shapes."""
        with torch.no_grad():
            p, r = self.views()
            p = self.standard(p)
        fmt = torch.contiguous_format
        return (
            {k: v.detach().clone(memory_format=fmt) for k, v in p.items()},
            {k: v.detach().clone(memory_format=fmt) for k, v in r.items()},
        )


class EnsemblePosterior(Posterior):
    r"""A deep ensemble (Lakshminarayanan et al., 2017): :math:`M` networks
    stored as stacked parameters (:func:`torch.func.stack_module_state`) and
    evaluated together in one batched pass: :func:`torch.baddbmm` over the
    stacked weights for a chain of Linear layers and elementwise activations,
    :func:`torch.func.vmap` over :func:`torch.func.functional_call` for any
    other network (see :meth:`forward`).

    The predictive is the equal-weight mixture of the members: for regression
    :math:`\mu^* = \frac1M\sum_i\mu_i`,
    :math:`\sigma^{*2} = \frac1M\sum_i(\sigma_i^2+\mu_i^2) - \mu^{*2}`, with
    aleatoric part :math:`\frac1M\sum_i\sigma_i^2` and epistemic part
    :math:`\frac1M\sum_i(\mu_i-\mu^*)^2`; for classification the mean of the
    members' probabilities. ``predict``'s ``num_samples`` is ignored: the
    prediction always has one component per member.

    Attributes:
        size: :math:`M`.
        params, buffers: stacked member parameters/buffers, name -> ``(M, ...)``.
        latents: per-member maximum-likelihood likelihood latents, ``(M, ...)``.
        seeds: the per-member initialisation seeds.
        fit_info: ``losses`` (per step and member, ``(num_steps, M)``),
            ``seconds``, ``num_steps``.

    Example:
        Returned by :class:`DeepEnsemble`:

        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods, inference
        >>> x = torch.linspace(-1, 1, 20).unsqueeze(-1); y = x[:, 0] ** 2
        >>> net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> model = BayesianNetwork(net, prior=priors.Normal(), likelihood=likelihoods.Gaussian(scale=0.1))
        >>> posterior = inference.DeepEnsemble(size=3, num_steps=20, progress=False).fit(model, x, y)
        >>> pred = posterior.predict(x)
        >>> posterior.size, pred.num_samples                # one mixture component per member
        (3, 3)

    References:
        B. Lakshminarayanan, A. Pritzel and C. Blundell, *Simple and Scalable
        Predictive Uncertainty Estimation using Deep Ensembles* (NeurIPS 2017).
    """

    method = "ensemble"
    default_num_samples = None

    def __init__(
        self,
        model: BayesianNetwork,
        params: Dict[str, torch.Tensor],
        buffers: Dict[str, torch.Tensor],
        latents: Dict[str, torch.Tensor],
        *,
        seeds: Sequence[int],
        settings: Dict[str, Any],
    ):
        super().__init__(model)
        self.params = params
        self.buffers = buffers
        self._raw = latents
        self.seeds = [int(s) for s in seeds]
        self.settings = dict(settings)
        self._base = copy.deepcopy(model.net).to("meta")
        self._chain = _chain_plan(model.net)

    @property
    def size(self) -> int:
        return len(self.seeds)

    @property
    def device(self) -> torch.device:
        for t in self.params.values():
            return t.device
        return self.model.device

    def to(self, device) -> "EnsemblePosterior":
        self.model.to(device)
        self.params = {k: v.detach().to(device).requires_grad_(v.requires_grad) for k, v in self.params.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        self._raw = {k: v.detach().to(device).requires_grad_(v.requires_grad) for k, v in self._raw.items()}
        return self

    @property
    def latents(self) -> Dict[str, torch.Tensor]:
        """Per-member likelihood latents (e.g. ``{"sigma": (M,)}``)."""
        return {k: v.detach() for k, v in _constrain(self.model, self._raw).items()}

    def forward(
        self,
        x: torch.Tensor,
        params: Optional[Dict[str, torch.Tensor]] = None,
        buffers: Optional[Dict[str, torch.Tensor]] = None,
        *,
        per_member_inputs: bool = False,
    ) -> torch.Tensor:
        r"""All members' outputs in one vectorised pass: ``(M, N, k)``. ``x`` is
        ``(N, ...)`` shared by the members, or ``(M, N, ...)`` with
        ``per_member_inputs=True``. Differentiable (used for training).

        A network that is a chain of ``nn.Linear`` layers and elementwise
        activations (no buffers, hooks or custom modules) with 2-D inputs runs
        hand-batched, :math:`h^{(l)}_i = a_l(h^{(l-1)}_i W^{(l)\top}_i + b^{(l)}_i)`
        for all members :math:`i` as one :func:`torch.baddbmm` per layer; any
        other network runs as :func:`torch.func.vmap` over
        :func:`torch.func.functional_call`. Both give the same outputs and
        gradients up to floating-point summation order."""
        params = self.params if params is None else params
        buffers = self.buffers if buffers is None else buffers
        chain = _usable_chain(self._chain) if x.dim() == 2 + per_member_inputs else None
        if chain is not None:
            return _chain_forward_samples(chain, params, x, next(iter(params.values())).shape[0])
        base = self._base

        def one(p, b, xi):
            return functional_call(base, (p, b), (xi,))

        return vmap(one, in_dims=(0, 0, 0 if per_member_inputs else None), randomness="different")(params, buffers, x)

    def member(self, i: int) -> nn.Module:
        """Member ``i`` as an ordinary network (a copy of ``model.net`` with
        that member's weights)."""
        self._check_fitted()
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not -self.size <= i < self.size:
            raise IndexError(f"member index must be an integer in [0, {self.size}), got {i!r}")
        net = copy.deepcopy(self.model.net).to(self.device)
        with torch.no_grad():
            for n, t in net.named_parameters():
                t.copy_(self.params[n][i])
            for n, t in net.named_buffers():
                if n in self.buffers:
                    t.copy_(self.buffers[n][i])
        return net.eval()

    @property
    def members(self) -> List[nn.Module]:
        """All members as ordinary networks (copies)."""
        return [self.member(i) for i in range(self.size)]

    def predict(
        self,
        x,
        *,
        num_samples: Optional[int] = None,
        chunk_size: Optional[int] = None,
        max_memory: Optional[int] = None,
    ) -> Prediction:
        r"""The ensemble's mixture predictive at ``x``: one component per
        member. ``num_samples`` is accepted for a uniform interface and
        ignored; ``chunk_size`` (members per batched pass) and ``max_memory``
        bound memory as for the other posteriors."""
        x = _prepare_x(self, x)
        if num_samples is not None:
            check_positive_int(num_samples, "num_samples")
        M = self.size
        chunk, rows = _chunk_plan(self.model, x, M, chunk_size, max_memory, per_row=_row_bytes(self, x))

        def run(s0, s1, xr):
            p = {k: v[s0:s1] for k, v in self.params.items()}
            b = {k: v[s0:s1] for k, v in self.buffers.items()}
            return self.forward(xr, p, b)

        with _EvalMode(self._base), torch.no_grad():
            out = _run_chunked(run, M, x, chunk, rows)
        return self.model.likelihood.prediction(out, self.latents)

    def sample_latents(self, num_samples: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Members as draws, by site name: ``None`` (or :math:`M`) gives every
        member in order; another count draws that many members uniformly with
        replacement (the ensemble as an equal-weight mixture of point masses).
        Deterministic (non-Bayesian) parameters are not sites; see :meth:`member`."""
        self._check_fitted()
        M = self.size
        if num_samples is None or num_samples == M:
            idx = None
        else:
            S = check_positive_int(num_samples, "num_samples")
            idx = torch.randint(M, (S,), device=self.device)
        lats = self.latents
        out = {}
        for pname in self.model.bayesian_parameters:
            v = self.params[pname].detach()
            out[self.model.parameter_site(pname)] = v if idx is None else v[idx]
        for short, v in lats.items():
            out[self.model._latent_site_of[short]] = v if idx is None else v[idx]
        return out

    def _state(self) -> Dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "settings": self.settings,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "buffers": {k: v.detach().cpu() for k, v in self.buffers.items()},
            "latents": {k: v.detach().cpu() for k, v in self._raw.items()},
            "fit_info": {
                "seconds": float(self.fit_info.get("seconds", 0.0)),
                "num_steps": int(self.fit_info.get("num_steps", 0)),
            },
        }

    @classmethod
    def _from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "EnsemblePosterior":
        want = {n: tuple(t.shape) for n, t in model.net.named_parameters()}
        got = {n: tuple(t.shape[1:]) for n, t in state["params"].items()}
        if want != got:
            raise ValueError("the saved ensemble's weights do not fit the given model's network")
        dev = model.device
        post = cls(
            model,
            {k: v.to(dev) for k, v in state["params"].items()},
            {k: v.to(dev) for k, v in state["buffers"].items()},
            {k: v.to(dev) for k, v in state["latents"].items()},
            seeds=state["seeds"],
            settings=state["settings"],
        )
        post.fit_info = dict(state.get("fit_info", {}))
        post._fitted = True
        return post


@register_method
class DeepEnsemble(_MLInference):
    r"""Deep ensembles (Lakshminarayanan et al., 2017): :math:`M` copies of the
    network from independent random initialisations, each trained by
    maximum likelihood, combined as an equal-weight mixture.

    All members are trained *at once*: their parameters are stacked with
    :func:`torch.func.stack_module_state` and evaluated in one batched pass
    (:meth:`EnsemblePosterior.forward`: one :func:`torch.baddbmm` per layer for
    a chain of Linear layers and elementwise activations, :func:`torch.func.vmap`
    over :func:`torch.func.functional_call` otherwise). Every trained tensor
    (all members' weights and likelihood latents) is a view of one
    ``(M, P)`` leaf updated by one fused Adam step (Adam is elementwise, so
    this is exactly :math:`M` independent optimisers). The loss is the sum over members
    of each member's mean negative log-likelihood (plus weight decay), so the
    members' gradients are independent. Each member shuffles the data in its
    own order (minibatches of size ``batch_size``); with a DataLoader all
    members see the same batches.

    **Initialisation.** Member :math:`i` is a deep copy of the network whose
    modules that own Bayesian parameters are re-initialised with their
    ``reset_parameters()`` under seed :math:`\text{seeds}_i`; deterministic
    parts (e.g. a pretrained feature extractor under ``bayesian="head.*"``)
    keep the user's values. Frozen parameters (``requires_grad=False``) are
    not trained.

    **Likelihoods.** With ``HeteroscedasticGaussian`` each member predicts a
    mean and a variance (the paper's setup); with ``Gaussian()`` each member
    learns its own noise scale; ``Categorical``, ``Bernoulli`` and
    ``CategoricalLogitNoise`` work too.

    **Adversarial training** (``adversarial=True``): for each member the
    fast-gradient-sign example :math:`x' = x + \epsilon\,\mathrm{sign}(\nabla_x \ell_i(x, y))`
    is added, and the member's loss is :math:`\ell_i(x, y) + \ell_i(x', y)`.
    ``epsilon`` defaults to 1% of each input feature's range in the training
    data (the first batch of a DataLoader), as in the paper.

    Args:
        size: :math:`M`, the number of members (>= 1).
        num_steps, epochs, batch_size, lr, progress, seed: as :class:`MCDropout`
            (``seed`` also fixes the members' initialisations).
        weight_decay: 0 (default, the paper's plain NLL), a float λ, or
            ``"prior"`` (MAP penalty from the model's prior, see the module docs).
        adversarial: add FGSM adversarial examples to training.
        epsilon: FGSM step size (absolute, in input units).
        warm_start: an :class:`EnsemblePosterior` of the same size and model
            to continue training from (instead of fresh initialisations).

    Example::

        model = BayesianNetwork(net_with_2_outputs, likelihood=likelihoods.HeteroscedasticGaussian())
        posterior = inference.DeepEnsemble(size=5, epochs=40, batch_size=100).fit(model, x, y)
        pred = posterior.predict(x_test)
        pred.mean, pred.epistemic_variance, pred.aleatoric_variance

    References:
        B. Lakshminarayanan, A. Pritzel and C. Blundell, *Simple and Scalable
        Predictive Uncertainty Estimation using Deep Ensembles* (NeurIPS 2017).
    """

    name = "ensemble"
    aliases = ("deep-ensemble", "deep-ensembles", "deepensemble", "ensembles")

    def __init__(
        self,
        *,
        size: int = 5,
        num_steps: int = 3000,
        epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        lr: float = 1e-2,
        weight_decay: WeightDecay = 0.0,
        adversarial: bool = False,
        epsilon: Optional[float] = None,
        warm_start: Optional[EnsemblePosterior] = None,
        progress: bool = True,
        seed: Optional[int] = None,
    ):
        super().__init__(
            num_steps=num_steps, epochs=epochs, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, progress=progress, seed=seed,
        )
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(f"size must be an integer >= 1 (the number of ensemble members), got {size!r}")
        if size < 1:
            raise ValueError(f"size must be at least 1 (the number of ensemble members), got {size}; e.g. size=5")
        self.size = int(size)
        self.adversarial = bool(adversarial)
        self.epsilon = None if epsilon is None else check_positive_float(epsilon, "epsilon")
        if warm_start is not None:
            if not isinstance(warm_start, EnsemblePosterior):
                raise TypeError(f"warm_start must be an EnsemblePosterior, got {type(warm_start).__name__}")
            if warm_start.size != self.size:
                raise ValueError(f"warm_start has {warm_start.size} members but size={self.size}; make them equal")
        self.warm_start = warm_start

    # -- members -------------------------------------------------------------
    def _member_seeds(self) -> List[int]:
        base = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, ()))
        g = torch.Generator().manual_seed(base)
        return [int(s) for s in torch.randint(0, 2**62, (self.size,), generator=g)]

    @staticmethod
    def _init_members(model: BayesianNetwork, seeds: Sequence[int]) -> List[nn.Module]:
        bayes = set(model.bayesian_parameters)
        owners = [
            n for n, m in model.net.named_modules()
            if any(_param_name(n, pn) in bayes for pn, _ in m.named_parameters(recurse=False))
        ]
        missing = [n or "<root>" for n in owners if not hasattr(model.net.get_submodule(n), "reset_parameters")]
        if missing:
            warn_user(
                f"modules {missing} own Bayesian parameters but have no reset_parameters(), so every ensemble "
                "member starts from the same values there; give them a reset_parameters() method for "
                "independent initialisations"
            )
        dev = model.device
        members = []
        for s in seeds:
            net = copy.deepcopy(model.net)
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                torch.manual_seed(s)
                for n in owners:
                    mod = net.get_submodule(n)
                    if hasattr(mod, "reset_parameters"):
                        mod.reset_parameters()
            members.append(net)
        return members

    def _batches(self, data: Data, model: BayesianNetwork) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Endless (x, y) of shape (M, B, ...): each member its own shuffle."""
        M = self.size
        if data.loader is not None:
            for xb, yb in data.batches(model, None):
                yield xb.expand((M,) + xb.shape), yb.expand((M,) + yb.shape)
        N, bs = data.num_data, self.batch_size
        if bs is None or bs >= N:
            xe, ye = data.x.expand((M,) + data.x.shape), data.y.expand((M,) + data.y.shape)
            while True:
                yield xe, ye
        # each epoch gathers the M shuffled copies of the data at once (when they fit in
        # _PERMUTED_BYTES), so a step takes views instead of indexing the data again
        row_bytes = (data.x[0].numel() * data.x.element_size() + data.y[0].numel() * data.y.element_size())
        at_once = M * N * row_bytes <= _PERMUTED_BYTES
        while True:
            perm = torch.rand(M, N, device=data.device).argsort(1)
            if at_once:
                xp, yp = data.x[perm], data.y[perm]
                for i in range(0, N - bs + 1, bs):
                    yield xp[:, i : i + bs], yp[:, i : i + bs]
            else:
                for i in range(0, N - bs + 1, bs):
                    idx = perm[:, i : i + bs]
                    yield data.x[idx], data.y[idx]

    # -- objective -------------------------------------------------------------
    def loss(
        self,
        posterior: EnsemblePosterior,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        epsilon: Optional[Union[float, torch.Tensor]] = None,
        penalty: Optional[Callable] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""The training objective on one batch: ``(loss, per-member NLL)``.

        ``x``, ``y`` are ``(M, B, ...)`` (one batch per member). The loss is
        :math:`\sum_i[\ell_i(x_i, y_i) (+ \ell_i(x'_i, y_i))] + \text{penalty}`
        with :math:`\ell_i` member :math:`i`'s mean negative log-likelihood and
        :math:`x'` the FGSM examples when ``self.adversarial``.
        """
        eps = epsilon if epsilon is not None else self.epsilon
        if self.adversarial and eps is None:
            raise ValueError("adversarial training needs a step size: pass epsilon= (fit derives it from the data)")
        lats = _constrain(posterior.model, posterior._raw)
        return self._loss(posterior, posterior.params, lats, x, y, eps, penalty)

    def _loss(self, posterior, params, lats, x, y, eps, penalty, forward=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss` on given stacked parameters and constrained latents;
        ``forward(x)``, when given, computes the members' outputs instead of
        ``posterior.forward(x, params, per_member_inputs=True)``, and then
        ``params`` is only needed by the penalty."""
        log_prob = posterior.model.likelihood.log_prob
        if forward is None:
            def forward(xi):
                return posterior.forward(xi, params, per_member_inputs=True)
        if self.adversarial:
            x = x.detach().clone().requires_grad_(True)
        nll = -log_prob(forward(x), y, lats).mean(-1)
        if self.adversarial:
            (g,) = torch.autograd.grad(nll.sum(), x, retain_graph=True)
            x_adv = (x + eps * g.sign()).detach()
            nll = nll - log_prob(forward(x_adv), y, lats).mean(-1)
        loss = nll.sum()
        if penalty is not None:
            loss = loss + penalty(params)
        return loss, nll.detach()

    def _epsilon(self, data: Data, x0: torch.Tensor) -> Union[float, torch.Tensor]:
        if self.epsilon is not None:
            return self.epsilon
        xs = data.x if data.x is not None else x0
        rng = (xs.amax(0) - xs.amin(0)).clamp_min(0)
        return 0.01 * rng

    def fit(self, model: BayesianNetwork, x=None, y=None) -> EnsemblePosterior:
        """Train the :math:`M` members together on ``(x, y)`` tensors or a
        DataLoader of ``(x, y)`` batches."""
        _check_model(model)
        if self.seed is not None:
            pyro.set_rng_seed(self.seed)
        data = Data(model, x, y)
        model = model.fresh_copy().to(data.device)
        batches = self._batches(data, model)
        x0, y0 = next(batches)
        M = self.size
        if self.warm_start is not None:
            ws = self.warm_start.to(data.device)
            if {k: v.shape[1:] for k, v in ws.params.items()} != {k: v.shape for k, v in model.net.named_parameters()}:
                raise ValueError("warm_start was fitted to a network of another architecture; pass the same model")
            seeds = ws.seeds
            params = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in ws.params.items()}
            buffers = {k: v.clone() for k, v in ws.buffers.items()}
            raw = {k: v.detach().clone().requires_grad_(True) for k, v in ws._raw.items()}
        else:
            seeds = self._member_seeds()
            params, buffers = stack_module_state(self._init_members(model, seeds))
            raw = _init_latents(model, "DeepEnsemble", (M,))
        settings = dict(self._settings(), size=M, adversarial=self.adversarial, epsilon=self.epsilon)
        post = EnsemblePosterior(model, params, buffers, raw, seeds=seeds, settings=settings)
        post._base.eval()
        with torch.no_grad():
            probe = post.forward(x0[:, :2], per_member_inputs=True)
            _check_likelihood(model, "DeepEnsemble", probe, y0[:, :2], _constrain(model, raw))
        penalty = _penalty(model, self.weight_decay, data.num_data, {})
        eps = self._epsilon(data, x0[0]) if self.adversarial else None
        constrain = _constrainer(model)
        # every trained tensor (members' weights and latents) is a view of one (M, P) leaf:
        # one fused Adam kernel and one gradient buffer per step instead of one per tensor;
        # for a Linear chain stored as the hand-batched forward consumes it
        chain = _usable_chain(post._chain) if x0.dim() == 3 else None
        flat = _FlatMembers(
            {k: v for k, v in params.items() if v.requires_grad}, raw, M,
            layout=None if chain is None else _chain_layout(chain),
        )
        fixed = {k: flat._to_layout(k, v.detach()) for k, v in params.items() if not v.requires_grad}

        def loss_fn(xb, yb):
            p, r = flat.views()
            if fixed:
                p = {**fixed, **p}
            if chain is None:
                return self._loss(post, p, constrain(r), xb, yb, eps, penalty)
            std = flat.standard(p) if penalty is not None else None
            fwd = lambda xi: _chain_forward_members(chain, p, xi)  # noqa: E731
            return self._loss(post, std, constrain(r), xb, yb, eps, penalty, forward=fwd)

        num_steps = _steps(self.num_steps, self.epochs, data, self.batch_size)
        post._base.train()
        try:
            losses, secs = _optimise(
                loss_fn, _chain(iter([(x0, y0)]), batches), flat.leaves, num_steps=num_steps, lr=self.lr,
                progress=self.progress, desc=self.name, device=data.device, record_shape=(M,),
            )
        finally:
            post._base.eval()
            model.net.eval()
        trained, raw = flat.values()
        post.params = {k: trained[k].requires_grad_(True) if k in trained else v.detach() for k, v in params.items()}
        post._raw = raw
        post.fit_info = {"losses": losses, "seconds": secs, "num_steps": num_steps}
        post._fitted = True
        return post
