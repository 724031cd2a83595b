r"""Point estimates trained by gradient descent: what MC dropout, MC DropConnect
(:mod:`~pyrobdl.inference.dropout`) and deep ensembles (:mod:`~pyrobdl.inference.ensemble`)
share -- their settings, the training objective, the likelihood's latents as point
estimates and the discovery of the layers a method acts on.

These methods fit the *same* :class:`~pyrobdl.BayesianNetwork` a user builds for VI or
HMC (its network, prior and likelihood) and return a
:class:`~pyrobdl.inference.base.Posterior` with the same ``predict``, so methods are
compared on equal terms::

    for method in ["mean-field", "mc-dropout", "mc-dropconnect", "ensemble"]:
        posterior = pyrobdl.fit(model, x, y, method=method)
        pred = posterior.predict(x_test, num_samples=100)

**Training objective.** All of them maximise the likelihood of the data. The loss of one
minibatch :math:`\mathcal B` is the mean negative log-likelihood plus an optional weight
penalty (:func:`weight_penalty`),

.. math::

    L(\theta, \eta) = -\frac1{|\mathcal B|}\sum_{n\in\mathcal B}\log p(y_n\mid f_\theta(x_n), \eta)
    + \sum_j \lambda_j\,\lVert\theta_j - \mu_j\rVert^2 ,

where :math:`\eta` are the likelihood's own latents (e.g. the noise scale :math:`\sigma` of
``Gaussian()``), fitted by maximum likelihood as free parameters (one per ensemble member),
started at the likelihood's :meth:`~pyrobdl.likelihoods.Likelihood.latent_init` (a learned
Gaussian noise at a tenth of the targets' standard deviation) and trained with their own
learning rate (:func:`latent_lr_scale`). With ``weight_decay="prior"``
the penalty is the MAP penalty of the model's Gaussian prior
:math:`\theta_j\sim\mathcal N(\mu_j, s_j^2)` divided by the dataset size :math:`N` (the
loss is a *mean* over data points),

.. math::

    \lambda_j = \frac{c_j}{2 s_j^2 N},

with :math:`c_j = 1 - p` for the weights that a dropout / DropConnect mask multiplies and
:math:`c_j = 1` otherwise. This is Gal & Ghahramani's (2016) weight decay
:math:`\lambda = p_\text{keep}\, l^2 / (2N\tau)` with the prior length-scale
:math:`l^2 = 1/s^2`; their precision :math:`\tau` does not appear because the loss is the
full negative log-likelihood (which contains :math:`\tau`) rather than the squared error.
Non-Gaussian priors contribute :math:`-\frac1N\log p(\theta_j)`. A float ``weight_decay=λ``
uses :math:`\lambda_j = \lambda`, :math:`\mu_j = 0` instead. Only the model's Bayesian
parameters are penalised; its deterministic ones (normalisation layers, a frozen feature
extractor) are plain point estimates.

References:
    Y. Gal and Z. Ghahramani, *Dropout as a Bayesian Approximation: Representing Model
    Uncertainty in Deep Learning* (ICML 2016);
    A. Kendall and Y. Gal, *What Uncertainties Do We Need in Bayesian Deep Learning for
    Computer Vision?* (NeurIPS 2017).
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.distributions import biject_to

from .._fast.chain import DROPOUT_TYPES
from .._util import check_positive_float, check_positive_int
from .optim import LIKELIHOOD_LR, check_callback
from ..likelihoods import available_likelihoods
from ..network import BayesianNetwork
from .base import Data, Inference

__all__ = [
    "PointInference",
    "WeightDecay",
    "WEIGHT_LAYERS",
    "check_weight_decay",
    "check_likelihood",
    "latent_site_names",
    "init_latents",
    "constrainer",
    "latent_lr_scale",
    "weight_penalty",
    "param_name",
    "call_order",
    "select_layers",
    "saved_fit_info",
    "training_targets",
    "holdout",
    "held_out_score",
    "EpochSelector",
    "auto_epoch_budget",
]

#: layers that dropout precedes and DropConnect masks
WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)

WeightDecay = Union[str, float]

#: ``"auto"`` settings (the method's own inner validation): the share of the training rows held out
AUTO_VALIDATION_FRACTION = 0.2
#: ``"auto"`` settings: with fewer training rows (or a DataLoader) nothing is held out and the
#: method uses its fallback
AUTO_MIN_DATA = 50
#: ``epochs="auto"``: the trial run trains at least this many epochs ...
AUTO_MIN_EPOCHS = 50
#: ... and at most this many epochs ...
AUTO_MAX_EPOCHS = 1000
#: ... or this many steps, whichever is fewer (but never fewer than ``AUTO_MIN_EPOCHS`` epochs)
AUTO_MAX_STEPS = 50_000
#: ``epochs="auto"`` without a validation split (fewer than ``AUTO_MIN_DATA`` rows, a DataLoader)
AUTO_FALLBACK_EPOCHS = 40
#: ``epochs="auto"``: the held-out scores are averaged over this many epochs (the trailing window)
AUTO_SMOOTHING = 5


# ============================================================================ settings
def check_size(size, what: str) -> int:
    """The number of members of an ensemble-like method: an integer >= 1 (``what`` names them
    in the errors, e.g. ``"ensemble members"``)."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise TypeError(f"size must be an integer >= 1 (the number of {what}), got {size!r}")
    if size < 1:
        raise ValueError(f"size must be at least 1 (the number of {what}), got {size}; e.g. size=5")
    return int(size)


def check_weight_decay(weight_decay, *, auto: bool = False) -> WeightDecay:
    """``"prior"``, a number ``>= 0``, or (where the method can choose, ``auto=True``) ``"auto"``."""
    if isinstance(weight_decay, str):
        if weight_decay == "prior" or (auto and weight_decay == "auto"):
            return weight_decay
        choices = "'prior' (derived from the model's prior)" + (", 'auto' (chosen on held-out data)" if auto else "")
        raise ValueError(f"weight_decay must be {choices} or a number >= 0, got {weight_decay!r}")
    return check_positive_float(weight_decay, "weight_decay", allow_zero=True)


class PointInference(Inference):
    """Base of the methods that train point estimates of the weights by gradient descent
    (maximum likelihood or MAP; see the module docs): their common settings.

    Training runs ``num_steps`` minibatch steps, or ``epochs`` passes over the data when
    ``epochs`` is given (it wins over ``num_steps``); with neither, the class's
    ``default_num_steps`` or ``default_epochs``."""

    #: steps when neither ``num_steps`` nor ``epochs`` is given (``None``: ``default_epochs``)
    default_num_steps: ClassVar[Optional[int]] = 3000
    #: epochs when neither ``num_steps`` nor ``epochs`` is given
    default_epochs: ClassVar[Optional[int]] = None
    #: the weight decays ``weight_decay="auto"`` chooses from (empty: the method has no "auto")
    weight_decay_candidates: ClassVar[Tuple[WeightDecay, ...]] = ()
    #: whether ``epochs="auto"`` (chosen on held-out rows, :class:`EpochSelector`) is accepted
    auto_epochs: ClassVar[bool] = False

    def __init__(
        self,
        *,
        num_steps: Optional[int],
        epochs: Union[None, int, str],
        batch_size: Optional[int],
        lr: float,
        weight_decay: WeightDecay,
        progress: bool,
        seed: Optional[int],
        callback=None,
    ):
        super().__init__(seed=seed, progress=progress)
        self.callback = check_callback(callback)
        if num_steps is None and epochs is None:
            num_steps, epochs = self.default_num_steps, self.default_epochs
        self.num_steps = None if num_steps is None else check_positive_int(num_steps, "num_steps")
        if isinstance(epochs, str):
            if not (self.auto_epochs and epochs == "auto"):
                choices = "a positive integer" + (" or 'auto' (chosen on held-out rows)" if self.auto_epochs else "")
                raise ValueError(f"epochs must be {choices}, got {epochs!r}")
            self.epochs: Union[None, int, str] = "auto"
        else:
            self.epochs = None if epochs is None else check_positive_int(epochs, "epochs")
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.lr = check_positive_float(lr, "lr")
        self.weight_decay = check_weight_decay(weight_decay, auto=bool(self.weight_decay_candidates))

    def settings(self) -> Dict[str, Any]:
        """The settings, as saved with the posterior."""
        return {
            "num_steps": self.num_steps, "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
            "weight_decay": self.weight_decay, "seed": self.seed,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"


def saved_fit_info(fit_info: Dict[str, Any]) -> Dict[str, Any]:
    """The part of a posterior's ``fit_info`` that is saved with it (no loss curves; the
    weight decay that ``weight_decay="auto"`` chose and its held-out scores when present)."""
    out: Dict[str, Any] = {
        "seconds": float(fit_info.get("seconds", 0.0)), "num_steps": int(fit_info.get("num_steps", 0)),
    }
    if "weight_decay" in fit_info:
        wd = fit_info["weight_decay"]
        out["weight_decay"] = wd if isinstance(wd, str) else float(wd)
        scores = fit_info.get("weight_decay_scores")
        out["weight_decay_scores"] = None if scores is None else {str(k): float(v) for k, v in scores.items()}
    if "epochs" in fit_info:
        out["epochs"] = int(fit_info["epochs"])
    return out


# ============================================================================ inner validation
def holdout(data: Data) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A random split of the training rows for a method's ``"auto"`` settings:
    ``(x_fit, y_fit, x_val, y_val)`` with ``AUTO_VALIDATION_FRACTION`` of the rows held out,
    drawn from torch's global generator (seeded by the fit's ``seed``); ``None`` with a
    DataLoader or fewer than ``AUTO_MIN_DATA`` rows."""
    n = data.num_data
    if data.loader is not None or n < AUTO_MIN_DATA:
        return None
    perm = torch.randperm(n).to(data.device)
    n_val = max(1, int(round(AUTO_VALIDATION_FRACTION * n)))
    val, rest = perm[:n_val], perm[n_val:]
    return data.x[rest], data.y[rest], data.x[val], data.y[val]


def held_out_score(posterior, x_val: torch.Tensor, y_val: torch.Tensor, num_samples: Optional[int] = None) -> float:
    """Mean log predictive density of ``posterior`` on held-out rows (``-inf`` when not finite)."""
    with torch.no_grad():
        ll = posterior.predict(x_val, num_samples=num_samples).log_prob(y_val).mean()
    return float(ll) if bool(torch.isfinite(ll)) else float("-inf")


class EpochSelector:
    r"""A training callback that chooses the number of epochs on held-out rows
    (``epochs="auto"``). After every epoch :math:`e` it scores the posterior trained so far by
    its mean log predictive density :math:`\ell_e` on ``(x_val, y_val)``; minibatch training
    is noisy, so the choice uses the trailing mean :math:`\bar\ell_e` of the last
    ``smoothing`` scores. The best epoch :math:`e^* = \arg\max_e \bar\ell_e`; the run stops
    once :math:`e \ge \max(2e^*, \text{min\_epochs})`, i.e. when the best epoch lies in the
    first half of the run. The geometric patience scales with the problem: a small noisy
    dataset that overfits after 20 epochs stops at 50, a smooth one still improving at 500
    runs on (to the trial's budget).

    Attributes:
        best_epoch: :math:`e^*` (0 before the first call).
        scores: ``{epoch: held-out LL}`` (unsmoothed).

    Example::

        sel = EpochSelector(x_val, y_val)
        DeepEnsemble(epochs=1000, callback=sel).fit(model, x_fit, y_fit)
        sel.best_epoch
    """

    def __init__(self, x_val: torch.Tensor, y_val: torch.Tensor, *, min_epochs: int = AUTO_MIN_EPOCHS,
                 smoothing: int = AUTO_SMOOTHING, num_samples: Optional[int] = None):
        self.x_val, self.y_val = x_val, y_val
        self.min_epochs = int(min_epochs)
        self.smoothing = check_positive_int(smoothing, "smoothing")
        self.num_samples = num_samples
        self.scores: Dict[int, float] = {}
        self._recent: List[float] = []
        self.best_epoch, self.best = 0, float("-inf")

    def __call__(self, progress) -> bool:
        epoch = max(1, int(round(progress.epoch)))
        score = held_out_score(progress.posterior, self.x_val, self.y_val, self.num_samples)
        self.scores[epoch] = score
        self._recent = (self._recent + [score])[-self.smoothing:]
        smoothed = sum(self._recent) / len(self._recent)
        if smoothed > self.best:
            self.best_epoch, self.best = epoch, smoothed
        return epoch >= max(2 * self.best_epoch, self.min_epochs)


def auto_epoch_budget(steps_per_epoch: int) -> int:
    """The most epochs an ``epochs="auto"`` trial runs: ``AUTO_MAX_EPOCHS`` or
    ``AUTO_MAX_STEPS`` steps, whichever is fewer, and at least ``AUTO_MIN_EPOCHS``."""
    return max(AUTO_MIN_EPOCHS, min(AUTO_MAX_EPOCHS, AUTO_MAX_STEPS // max(1, steps_per_epoch)))


# ============================================================================ likelihood
def check_likelihood(model: BayesianNetwork, method: str, out: torch.Tensor, y: torch.Tensor, lats) -> None:
    """Fail early, with the fix, when the likelihood cannot be used by a point-estimate
    method (no ``log_prob`` / ``prediction``, a task other than regression or classification,
    ``log_prob`` not one value per data point)."""
    lik = model.likelihood
    name = type(lik).__name__
    known = ", ".join(available_likelihoods())
    if getattr(lik, "task", None) not in ("regression", "classification"):
        raise ValueError(
            f"{method} cannot use likelihood {name}: its task is {getattr(lik, 'task', None)!r}, expected "
            f"'regression' or 'classification'; use one of {known}"
        )
    try:
        lp = lik.log_prob(out, y, lats)
        lik.prediction(out.unsqueeze(0), {k: v.unsqueeze(0) for k, v in lats.items()})
    except NotImplementedError:
        raise ValueError(
            f"{method} cannot use likelihood {name}: it does not implement log_prob()/dist() and prediction(); "
            f"implement them or use one of {known}"
        ) from None
    if lp.shape != out.shape[:-1]:
        raise ValueError(
            f"{method} cannot use likelihood {name}: log_prob returned shape {tuple(lp.shape)} for outputs "
            f"{tuple(out.shape)}; it must return one value per data point, shape {tuple(out.shape[:-1])}"
        )


def latent_site_names(model: BayesianNetwork) -> Dict[str, str]:
    """The likelihood's latents: short name (``"sigma"``) -> site name."""
    return {s.latent: name for name, s in model.latent_sites().items() if s.latent is not None}


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


def init_latents(
    model: BayesianNetwork, method: str, y: Optional[torch.Tensor], lead: Tuple[int, ...] = ()
) -> Dict[str, torch.Tensor]:
    """Unconstrained point estimates of the likelihood's latents (e.g. the noise scale of
    ``Gaussian()``), leaf tensors with leading shape ``lead`` (one per ensemble member),
    started at the likelihood's ``latent_init(y)`` (``y``: the training targets) or, for a
    latent it does not list, at the prior median.

    Example:
        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, likelihoods
        >>> model = BayesianNetwork(nn.Linear(1, 1), likelihood=likelihoods.Gaussian(init=0.1))
        >>> raw = init_latents(model, "doc", torch.tensor([0.0, 2.0, 4.0]), (3,))
        >>> constrainer(model)(raw)["sigma"].detach()     # 0.1 * std(y) = 0.2 for each member
        tensor([0.2000, 0.2000, 0.2000])
    """
    sites = model.latent_sites()
    start = model.likelihood.latent_init(y)
    raw = {}
    for short, site in latent_site_names(model).items():
        s = sites[site]
        try:
            t = biject_to(s.support)
        except NotImplementedError:
            raise ValueError(
                f"{method} cannot use likelihood {type(model.likelihood).__name__}: its latent {short!r} has "
                f"support {s.support}, which has no point estimate by gradient descent; use a likelihood with "
                f"continuous latents (one of {', '.join(available_likelihoods())})"
            ) from None
        median = _prior_median(s.prior)
        value = median.new_tensor(start[short]).expand_as(median) if short in start else median
        u = t.inv(value)
        raw[short] = u.expand(tuple(lead) + tuple(u.shape)).clone().requires_grad_(True)
    return raw


def constrainer(model: BayesianNetwork) -> Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]:
    """Unconstrained latents -> the values the likelihood takes (``{"sigma": ...}``), with the
    transforms looked up once (no per-step rebuilding of the model's latent sites)."""
    sites = model.latent_sites()
    transforms = {short: biject_to(sites[site].support) for short, site in latent_site_names(model).items()}
    return lambda raw: {k: transforms[k](u) for k, u in raw.items()}


def latent_lr_scale(lr: float) -> float:
    r"""How the likelihood's latents get the learning rate ``max(lr, LIKELIHOOD_LR)`` (see
    :mod:`pyrobdl.inference.optim`) inside the network's own Adam parameter group: a latent :math:`u` is trained as :math:`u' = u / c` with
    :math:`c = \max(\text{lr}, \text{LIKELIHOOD\_LR}) / \text{lr}` and used as
    :math:`u = c\,u'`. Adam's step does not depend on the scale of the gradient (up to its
    :math:`\epsilon`, which shrinks to :math:`\epsilon / c`), so Adam at ``lr`` on
    :math:`u'` moves :math:`u` exactly as Adam at :math:`c\cdot\text{lr}` would, the
    schedule included -- with one fused Adam kernel per step and no extra work but one
    multiplication (measured: a second parameter group, or rescaling the step after each
    update, cost 5-10% of a deep-ensemble step on the benchmark network).

    Example:
        >>> latent_lr_scale(1e-3), latent_lr_scale(0.05)
        (20.0, 1.0)
    """
    return max(float(lr), LIKELIHOOD_LR) / float(lr)


# ============================================================================ weight penalty
def weight_penalty(
    model: BayesianNetwork, weight_decay: WeightDecay, num_data: int, keep: Dict[str, float]
) -> Optional[Callable[[Dict[str, torch.Tensor]], torch.Tensor]]:
    r"""The weight penalty :math:`\sum_j\lambda_j\lVert\theta_j-\mu_j\rVert^2` of the module
    docs as a function of ``{param name: value}`` (values may carry leading member dims; the
    penalty sums over them); ``None`` when it is zero.

    ``weight_decay="prior"``: :math:`\lambda_j = c_j / (2 s_j^2 N)` and :math:`\mu_j` from the
    model's Gaussian prior :math:`\mathcal N(\mu_j, s_j^2)` (``keep[name]`` is :math:`c_j`,
    default 1; ``num_data`` is :math:`N`), :math:`-\log p(\theta_j)/N` for other priors; a
    float: :math:`\lambda_j = \lambda`, :math:`\mu_j = 0`.

    Example:
        >>> import torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors
        >>> model = BayesianNetwork(nn.Linear(2, 1), prior=priors.Normal(0.0, 2.0))
        >>> pen = weight_penalty(model, "prior", 100, {"weight": 0.9})
        >>> round(float(pen({"weight": torch.ones(1, 2), "bias": torch.ones(1)})), 6)  # (0.9 * 2 + 1) / 800
        0.0035
    """
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


# ============================================================================ layer discovery
def param_name(module_name: str, leaf: str) -> str:
    """``"2" + "weight"`` -> ``"2.weight"`` (``"weight"`` for the root module)."""
    return f"{module_name}.{leaf}" if module_name else leaf


def call_order(net: nn.Module, x0: torch.Tensor) -> List[str]:
    """Names of the Linear/Conv and dropout modules in the order a forward pass (in eval
    mode, on inputs ``x0``) first calls them."""
    order: Dict[str, None] = {}
    handles = []
    for name, m in net.named_modules():
        if isinstance(m, WEIGHT_LAYERS + DROPOUT_TYPES):
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


def select_layers(net: nn.Module, model: BayesianNetwork, order: List[str], layers) -> List[str]:
    """Names of the weight layers a method acts on.

    ``"hidden"``: every Linear/Conv whose weight is a Bayesian parameter of the model, except
    the first Linear/Conv the forward pass calls (the one that sees the raw input); ``"all"``:
    including that one; a list: those modules.
    """
    modules = dict(net.named_modules())
    weight_layers = [n for n in order if isinstance(modules[n], WEIGHT_LAYERS)]
    if isinstance(layers, list):
        valid = [n for n, m in modules.items() if isinstance(m, WEIGHT_LAYERS)]
        bad = [n for n in layers if n not in valid]
        if bad:
            raise ValueError(
                f"layers={layers!r}: {bad} are not Linear/Conv modules of the network; choose among {valid}"
            )
        return list(dict.fromkeys(layers))
    bayes = set(model.bayesian_parameters)
    eligible = [n for n in weight_layers if param_name(n, "weight") in bayes]
    if layers == "hidden":
        eligible = [n for n in eligible if not weight_layers or n != weight_layers[0]]
    return eligible


def training_targets(data: Data, first_batch_y: torch.Tensor) -> torch.Tensor:
    """The targets the likelihood's latents start from: all training targets, or the first
    batch of a DataLoader."""
    return data.y if data.y is not None else first_batch_y
