r"""Stochastic variational inference with Pyro's ``AutoContinuous`` Gaussian guides.

Three Gaussian families over the flat vector :math:`z` of the (unconstrained) latent
variables (laid out by :class:`~pyrobdl.inference.flat.FlatLayout`):

==================  ===================================================  =================================
class               :math:`q(z)`                                         Pyro guide
==================  ===================================================  =================================
:class:`MeanField`  :math:`\prod_i \mathcal N(z_i;\mu_i,\sigma_i^2)`     ``AutoDiagonalNormal``
:class:`LowRank`    :math:`\mathcal N(\mu, WW^\top + D)`, rank r         ``AutoLowRankMultivariateNormal``
:class:`FullRank`   :math:`\mathcal N(\mu, LL^\top)`                     ``AutoMultivariateNormal``
==================  ===================================================  =================================

All maximise the evidence lower bound

.. math::

    \mathcal L(q) = \frac{N}{B}\sum_{n\in\mathcal B}\mathbb E_q\big[\log p(y_n\mid x_n,z)\big]
    + \mathbb E_q[\log p(z)] + \mathbb H[q],

an unbiased estimate of the full-data ELBO for a minibatch :math:`\mathcal B` of
size :math:`B` out of :math:`N`. The guide *is* the Pyro autoguide (``posterior.guide``
works with :class:`pyro.infer.Predictive`, ``SVI`` and ``poutine``), and its own leaf
tensors (the flat ``loc`` and ``scale`` vectors, plus ``cov_factor`` or ``scale_tril``)
are what Adam trains; but pyrobdl evaluates the ELBO without Pyro's per-step tracing:
the leaves are read directly (not through the param store), all particles go through
the network in one batched pass, and for Gaussian priors the terms
:math:`\mathbb E_q[\log p(z)]` and :math:`\mathbb H[q]` are computed in closed form
(``kl="analytic"``, the default; ``kl="mc"`` uses the single-sample estimate of
:math:`\mathbb E_q[\log p(z)]` instead). The estimator is checked against Pyro's
``Trace_ELBO`` in the tests.

Mean-field also offers lower-variance gradient estimators for
:class:`~torch.nn.Linear` and convolution layers (``estimator=``), on the layers' slices
of the flat ``loc`` and ``scale``:

- ``"local"`` — local reparameterisation (Kingma, Salimans & Welling, 2015):
  sample pre-activations :math:`\mathcal N(x\mu_W^\top, x^2\sigma_W^{2\top})`
  instead of weights, independently for every example (the default where the
  network allows it, ``estimator="auto"``).
- ``"flipout"`` (Wen et al., 2018): one weight perturbation
  :math:`\Delta W` shared by the batch, decorrelated per example by random
  sign flips, :math:`x\mu_W^\top + ((x\circ s)\Delta W^\top)\circ r`.

The likelihood's latents (a learned noise scale) train with the learning rate
:math:`\max(\text{lr}, \text{LIKELIHOOD\_LR})` (see :mod:`pyrobdl.inference.optim`), so
the noise reaches the residual scale at any ``lr``.

References:
    * Blundell, Cornebise, Kavukcuoglu & Wierstra (2015). *Weight Uncertainty
      in Neural Networks*. ICML.
    * Kingma, Salimans & Welling (2015). *Variational Dropout and the Local
      Reparameterization Trick*. NeurIPS.
    * Wen, Vicol, Ba, Tran & Grosse (2018). *Flipout: Efficient
      Pseudo-Independent Weight Perturbations on Mini-Batches*. ICLR.
    * Hoffman, Blei, Wang & Paisley (2013). *Stochastic Variational
      Inference*. JMLR.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import autoguide
from pyro.infer.autoguide.initialization import init_to_median
from torch import nn
from torch.distributions import transform_to

from .._util import check_positive_float, check_positive_int
from ..network import BayesianNetwork
from .base import Data, Inference, Posterior
from .flat import FlatLayout
from .optim import check_callback, slice_learning_rates, train
from .registry import register_method

__all__ = ["MeanField", "LowRank", "FullRank", "SVIPosterior", "GaussianGuide", "init_to_network"]

_guide_counter = itertools.count()
_LOG_2PI = math.log(2 * math.pi)


def init_to_network(model: BayesianNetwork, y: Optional[torch.Tensor] = None):
    """Autoguide ``init_loc_fn``: weight sites start at the network's own
    initialisation; the likelihood's latents at its ``latent_init(y)`` (e.g. a noise
    scale relative to the spread of the training targets ``y``), others at their prior
    median."""
    sites = model.latent_sites()
    named = dict(model.net.named_parameters())
    lat_init = model.likelihood.latent_init(y)

    def init_fn(site):
        s = sites.get(site["name"])
        if s is not None and s.param is not None:
            return named[s.param].detach().clone()
        if s is not None and s.latent in lat_init:
            ref = site["fn"].sample()
            return torch.as_tensor(lat_init[s.latent], dtype=ref.dtype, device=ref.device).expand(ref.shape).clone()
        return init_to_median(site)

    return init_fn


# ----------------------------------------------------------------------------- the guide's leaves
class GaussianGuide:
    r"""A fitted (or set-up) Pyro ``AutoContinuous`` Gaussian guide read as tensors.

    ``AutoDiagonalNormal`` (``"mean-field"``), ``AutoLowRankMultivariateNormal``
    (``"low-rank"``) and ``AutoMultivariateNormal`` (``"full-rank"``) keep one flat
    ``loc`` over the latent vector and a flat scale (plus ``cov_factor`` or
    ``scale_tril``). This adapter reads those leaf tensors through the module's own
    parameters -- ``guide.loc`` on a :class:`~pyro.nn.PyroModule` costs a trip through
    its attribute machinery and, inside a Pyro context, the param store -- and gives the
    moments of :math:`q` and reparameterised draws.

    Raises:
        TypeError: any other guide.
        ValueError: a guide that has not been set up (call it once on data first).
    """

    KINDS = (
        (autoguide.AutoDiagonalNormal, "mean-field"),
        (autoguide.AutoLowRankMultivariateNormal, "low-rank"),
        (autoguide.AutoMultivariateNormal, "full-rank"),
    )

    def __init__(self, guide):
        kind = next((k for cls, k in self.KINDS if isinstance(guide, cls)), None)
        if kind is None:
            raise TypeError(
                "SVIPosterior needs a Pyro AutoDiagonalNormal, AutoLowRankMultivariateNormal or "
                f"AutoMultivariateNormal guide, got {type(guide).__name__}"
            )
        if guide.prototype_trace is None:
            raise ValueError("the guide has not been set up: call it once on data first, e.g. guide(x, y)")
        self.guide, self.kind = guide, kind
        self._scale = transform_to(type(guide).scale_constraint)
        self._tril = transform_to(type(guide).scale_tril_constraint) if kind == "full-rank" else None

    @property
    def order(self) -> List[str]:
        """The latent sites in the order of the guide's flat vector."""
        return [name for name, _ in self.guide.prototype_trace.iter_stochastic_nodes()]

    def leaves(self) -> Dict[str, nn.Parameter]:
        """The guide's leaf tensors by name (``loc``, ``scale_unconstrained``, and
        ``cov_factor`` or ``scale_tril_unconstrained``): what an optimiser trains."""
        return dict(self.guide.named_parameters())

    def likelihood_leaves(self, leaves: Dict[str, nn.Parameter]) -> List[torch.Tensor]:
        """The leaves whose rows ``layout.likelihood_index`` parameterise the likelihood's
        latents (their learning rate is raised, see :func:`~pyrobdl.inference.optim.slice_learning_rates`)."""
        return [leaves[k] for k in ("loc", "scale_unconstrained", "cov_factor", "scale_tril_unconstrained") if k in leaves]

    def loc_scale(self, leaves: Optional[Dict[str, torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Flat ``(loc, scale)`` of a mean-field guide."""
        p = self.leaves() if leaves is None else leaves
        return p["loc"], self._scale(p["scale_unconstrained"])

    def moments(self, P: Optional[int], *, sample: bool = True, leaves: Optional[Dict[str, torch.Tensor]] = None):
        r"""``(z, entropy, mean, var)``: ``P`` reparameterised draws ``(P, D)`` (``None``
        without ``sample``), :math:`\mathbb H[q]`, and the flat means and variances."""
        p = self.leaves() if leaves is None else leaves
        loc = p["loc"]
        scale = self._scale(p["scale_unconstrained"])
        if self.kind == "mean-field":
            z = loc + scale * torch.randn((P,) + loc.shape, dtype=loc.dtype, device=loc.device) if sample else None
            entropy = scale.log().sum() + 0.5 * loc.numel() * (1 + _LOG_2PI)
            return z, entropy, loc, scale.pow(2)
        if self.kind == "low-rank":
            d = dist.LowRankMultivariateNormal(loc, p["cov_factor"] * scale.unsqueeze(-1), scale * scale)
            var = d.variance
        else:
            L = scale.unsqueeze(-1) * self._tril(p["scale_tril_unconstrained"])
            d = dist.MultivariateNormal(loc, scale_tril=L)
            var = L.pow(2).sum(-1)
        z = d.rsample((P,)) if sample else None
        return z, d.entropy(), loc, var


# ----------------------------------------------------------------------------- LRT / flipout
def _lin(module, x, w, b):
    if isinstance(module, nn.Linear):
        return F.linear(x, w, b)
    return module._conv_forward(x, w, b)


def _make_forward(module, estimator, w_ls, b_ls):
    def fwd(x):
        wm, ws = w_ls
        bm, bs = b_ls if b_ls is not None else (None, None)
        if estimator == "local":
            mean = _lin(module, x, wm, bm)
            var = _lin(module, x * x, ws * ws, None if bs is None else bs * bs)
            return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)
        # flipout
        b = None if bm is None else bm + bs * torch.randn_like(bs)
        mean = _lin(module, x, wm, b)
        dw = ws * torch.randn_like(ws)
        extra = (1,) * (x.dim() - 2)
        s_in = torch.empty(x.shape[:2] + extra, device=x.device, dtype=x.dtype).bernoulli_(0.5).mul_(2).sub_(1)
        pert = _lin(module, x * s_in, dw, None)
        s_out = torch.empty(pert.shape[:2] + extra, device=x.device, dtype=x.dtype).bernoulli_(0.5).mul_(2).sub_(1)
        return mean + pert * s_out

    return fwd


@contextlib.contextmanager
def _patched(forwards: Dict[nn.Module, Callable]):
    try:
        for m, f in forwards.items():
            m.forward = f
        yield
    finally:
        for m in forwards:
            if "forward" in m.__dict__:
                del m.forward


def local_layers(model: BayesianNetwork, layout: FlatLayout) -> List[Tuple[nn.Module, str, Optional[str], Tuple[str, ...]]]:
    """The layers local reparameterisation and flipout can sample: Linear and Conv
    layers whose parameters are all Bayesian with real support, as
    ``(module, weight site, bias site or None, parameter names)``."""
    bayes = set(model.bayesian_parameters)
    out = []
    for mname, m in model.net.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        own = [(n, f"{mname}.{n}" if mname else n) for n, _ in m.named_parameters(recurse=False)]
        if not own or not all(full in bayes for _, full in own):
            continue
        sites = {n: model.parameter_site(full) for n, full in own}
        if "weight" not in sites or any(layout.site(s).transform is not None for s in sites.values()):
            continue
        out.append((m, sites["weight"], sites.get("bias"), tuple(full for _, full in own)))
    return out


class _Objective:
    """The ELBO terms of one posterior's guide, with what can be prepared once (the
    layout, the guide's leaves, the layers of local reparameterisation) prepared."""

    def __init__(self, post: "SVIPosterior", *, kl: str, prior_scale: str, estimator: str, leaves=None):
        self.post, self.model, self.layout, self.guide = post, post.model, post.layout, post.adapter
        self.leaves = self.guide.leaves() if leaves is None else leaves
        self.kl, self.prior_scale, self.estimator = kl, prior_scale, estimator
        self.layers = local_layers(self.model, self.layout) if estimator in ("local", "flipout") else []
        self.skip = {p for *_, names in self.layers for p in names}

    def terms(self, x: torch.Tensor, y: torch.Tensor, num_data: int, P: int):
        model, layout = self.model, self.layout
        z, entropy, mean, var = self.guide.moments(P, leaves=self.leaves)
        values, _, logdet = layout.unpack(z)
        params, lats = model.split_values(values)
        forwards = {}
        if self.layers:
            if P != 1:
                raise ValueError(f"estimator={self.estimator!r} draws per-example noise already; use num_particles=1")
            loc, scale = self.guide.loc_scale(self.leaves)
            for m, w, b, _ in self.layers:
                w_ls = (layout.view(loc, w), layout.view(scale, w))
                b_ls = None if b is None else (layout.view(loc, b), layout.view(scale, b))
                forwards[m] = _make_forward(m, self.estimator, w_ls, b_ls)
        with _patched(forwards):
            if P == 1:  # one sample: plain (unbatched) passes
                out = model.apply({k: v[0] for k, v in params.items() if k not in self.skip}, x)
            else:
                out = model.apply(params, x)
        ll = model.likelihood.log_prob(out, y, lats).sum(-1) * (num_data / x.shape[0])
        ll = ll.expand(P) if ll.dim() == 0 else ll.reshape(P)
        if self.kl == "analytic":
            lp = layout.log_prior(z, values, logdet, gaussian=False).mean()
            pv = layout.empirical_bayes_variances(mean, var) if self.prior_scale == "empirical-bayes" and layout.num_gaussian else None
            lp = lp + layout.expected_gaussian_log_prior(mean, var, prior_var=pv)
        else:
            lp = layout.log_prior(z, values, logdet).mean()
        return ll.mean(), lp, entropy


# ----------------------------------------------------------------------------- posterior
class SVIPosterior(Posterior):
    """A variational posterior: a fitted Pyro ``AutoContinuous`` Gaussian guide over a
    :class:`~pyrobdl.BayesianNetwork`.

    Also wraps a guide you fitted yourself (``AutoDiagonalNormal``,
    ``AutoLowRankMultivariateNormal`` or ``AutoMultivariateNormal`` of the model, called
    at least once): ``SVIPosterior(model, guide)``.

    Attributes:
        guide: the fitted Pyro autoguide (usable with :class:`pyro.infer.Predictive`).
        family: ``"mean-field"``, ``"low-rank"`` or ``"full-rank"``.
        adapter: the :class:`GaussianGuide` that reads the guide's leaves.
        layout: the :class:`~pyrobdl.inference.flat.FlatLayout` of the guide's vector.
        fit_info: ``losses`` (the negative ELBO estimate of every step, a tensor),
            ``seconds``, ``num_steps``, ``estimator``, ``kl_warmup``.

    Example:
        Returned by :class:`MeanField`, :class:`LowRank` and :class:`FullRank`;
        the guide is Pyro's and works with :class:`pyro.infer.Predictive`:

        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods, inference
        >>> x = torch.linspace(-1, 1, 20).unsqueeze(-1); y = x[:, 0] ** 2
        >>> net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> model = BayesianNetwork(net, prior=priors.Normal(), likelihood=likelihoods.Gaussian(scale=0.1))
        >>> posterior = inference.MeanField(num_steps=20, progress=False).fit(model, x, y)
        >>> posterior.fit_info["losses"].shape, type(posterior.guide).__name__
        (torch.Size([20]), 'AutoDiagonalNormal')
        >>> import pyro
        >>> samples = pyro.infer.Predictive(posterior.model, guide=posterior.guide, num_samples=10)(x)
        >>> samples["obs"].shape
        torch.Size([10, 20])
    """

    method = "svi"

    def __init__(
        self,
        model: BayesianNetwork,
        guide,
        *,
        family: Optional[str] = None,
        guide_options: Optional[Dict[str, Any]] = None,
        input_shape=None,
        target_info: Optional[Dict[str, Any]] = None,
    ):
        super().__init__(model)
        self.guide = guide
        self.adapter = GaussianGuide(guide)
        if family is not None and family != self.adapter.kind:
            raise ValueError(f"family {family!r} does not match the guide {type(guide).__name__} ({self.adapter.kind})")
        self.family = self.adapter.kind
        if guide_options is None:
            guide_options = {"init_scale": 0.01}  # rebuilding for load: the saved state overrides it
            if self.family == "low-rank":
                guide_options["rank"] = int(guide.rank)
        self.guide_options = dict(guide_options)
        if input_shape is None or target_info is None:
            args = guide.prototype_trace.nodes.get("_INPUT", {}).get("args", ())
            if input_shape is None and args:
                input_shape = tuple(args[0].shape[1:])
            if target_info is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
                yy = args[1]
                target_info = {"shape": list(yy.shape[1:]), "dtype": "float" if yy.is_floating_point() else "long"}
        self.input_shape = tuple(input_shape or ())
        self.target_info = None if target_info is None else dict(target_info)
        self._layout = self._make_layout()

    def _make_layout(self) -> FlatLayout:
        layout = FlatLayout(self.model, order=self.adapter.order)
        if layout.dim != self.guide.latent_dim:
            raise ValueError(f"the guide's latent vector has {self.guide.latent_dim} entries, the model's latents {layout.dim}")
        return layout

    @property
    def layout(self) -> FlatLayout:
        """The flat layout of the guide's vector, rebuilt when the model's priors (or its
        device) changed since it was built."""
        if self.model.latent_sites() is not self._layout.source:
            self._layout = self._make_layout()
        return self._layout

    def to(self, device) -> "SVIPosterior":
        self.model.to(device)
        self.guide.to(device)
        self._layout = self._make_layout()
        return self

    def sample_latents(self, num_samples: Optional[int]) -> Dict[str, torch.Tensor]:
        if num_samples is None:
            num_samples = self.default_num_samples
        with torch.no_grad():
            z, *_ = self.adapter.moments(num_samples)
            values, _, _ = self.layout.unpack(z)
        return values

    def mean_latents(self) -> Dict[str, torch.Tensor]:
        """Posterior means of the unconstrained latents, mapped to constrained space."""
        with torch.no_grad():
            _, _, loc, _ = self.adapter.moments(None, sample=False)
            values, _, _ = self.layout.unpack(loc.unsqueeze(0))
        return {k: v[0] for k, v in values.items()}

    def site_loc_scale(self, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and (marginal) standard deviation of site ``name``'s unconstrained value."""
        with torch.no_grad():
            _, _, loc, var = self.adapter.moments(None, sample=False)
            return self.layout.view(loc, name), self.layout.view(var.sqrt(), name)

    def get_state(self):
        return {
            "family": self.family,
            "guide_options": self.guide_options,
            "guide_state": {k: v.detach().cpu() for k, v in self.guide.state_dict().items()},
            "input_shape": list(self.input_shape),
            "target_info": self.target_info,
            "fit_info": {"seconds": float(self.fit_info.get("seconds", 0.0)), "num_steps": int(self.fit_info.get("num_steps", 0))},
        }

    @classmethod
    def from_state(cls, model, state):
        family = state["family"]
        algo_cls = {"mean-field": MeanField, "low-rank": LowRank, "full-rank": FullRank}[family]
        guide = algo_cls._make_guide(model, **state["guide_options"])
        x0, y0 = _dummy_data(model, state["input_shape"], state.get("target_info"))
        guide(x0, y0)
        guide_state = dict(state["guide_state"])
        if family == "mean-field" and "loc" not in guide_state:
            guide_state = _from_autonormal_state(guide, guide_state)
        guide.load_state_dict(guide_state)
        post = cls(model, guide, family=family, guide_options=state["guide_options"], input_shape=state["input_shape"], target_info=state.get("target_info"))
        post.fit_info = dict(state.get("fit_info", {}))
        return post


def _from_autonormal_state(guide, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The state of an ``AutoNormal`` guide (how mean-field posteriors were saved before
    they moved onto ``AutoDiagonalNormal``) as the flat ``loc`` and ``scale`` of ``guide``:
    both keep the scale as a softplus-positive parameter, so the vectors are the per-site
    ones concatenated in trace order."""
    locs, scales = [], []
    for name, _ in guide.prototype_trace.iter_stochastic_nodes():
        locs.append(state[f"locs.{name}_unconstrained"].reshape(-1))
        scales.append(state[f"scales.{name}_unconstrained"].reshape(-1))
    return {"loc": torch.cat(locs), "scale_unconstrained": torch.cat(scales)}


def _dummy_data(model: BayesianNetwork, input_shape, target_info):
    x_dtype = torch.long if model.integer_inputs else model.dtype  # token ids stay integer
    x0 = torch.zeros((1,) + tuple(input_shape), dtype=x_dtype, device=model.device)
    if target_info is None:
        return x0, None
    tshape = (1,) + tuple(target_info["shape"])
    if target_info["dtype"] == "long":
        y0 = torch.zeros(tshape, dtype=torch.long, device=model.device)
    else:
        y0 = torch.zeros(tshape, dtype=model.dtype, device=model.device)
    return x0, y0


# ----------------------------------------------------------------------------- inference
class _SVI(Inference):
    family = "svi"
    #: the guide family of the posterior (``SVIPosterior.family``)
    guide_family: str = ""

    def __init__(
        self,
        *,
        num_steps: int = 5000,
        lr: float = 1e-2,
        lr_decay: float = 0.1,
        num_particles: int = 1,
        batch_size: Optional[int] = None,
        epochs: Optional[int] = None,
        init_scale: float = 1e-2,
        kl: str = "analytic",
        kl_warmup: Optional[int] = 0,
        prior_scale: str = "fixed",
        callback=None,
        estimator: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.callback = check_callback(callback)
        if estimator not in ("auto", "reparam"):
            if estimator in ("local", "flipout"):
                raise ValueError(
                    f"estimator={estimator!r} needs independent weights (a mean-field guide): under a {self.name} "
                    "Gaussian the weights of a layer are correlated, which local reparameterisation and flipout "
                    "ignore (they would give a biased gradient); use method='mean-field' for them, or "
                    "estimator='reparam' (the default here)"
                )
            raise ValueError(f"estimator must be 'auto' or 'reparam' for {self.name}, got {estimator!r}")
        self.num_steps = check_positive_int(num_steps, "num_steps")
        self.lr = check_positive_float(lr, "lr")
        self.lr_decay = check_positive_float(lr_decay, "lr_decay")
        self.num_particles = check_positive_int(num_particles, "num_particles")
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.epochs = None if epochs is None else check_positive_int(epochs, "epochs")
        self.init_scale = check_positive_float(init_scale, "init_scale")
        if kl not in ("analytic", "mc"):
            raise ValueError(f"kl must be 'analytic' or 'mc', got {kl!r}")
        self.kl = kl
        self.kl_warmup = None if kl_warmup is None else check_positive_int(kl_warmup, "kl_warmup", minimum=0)
        if prior_scale not in ("fixed", "empirical-bayes"):
            raise ValueError(f"prior_scale must be 'fixed' or 'empirical-bayes', got {prior_scale!r}")
        if prior_scale == "empirical-bayes" and kl != "analytic":
            raise ValueError("prior_scale='empirical-bayes' needs kl='analytic'")
        self.prior_scale = prior_scale
        self._active: Optional[Tuple[SVIPosterior, _Objective]] = None

    # hooks ---------------------------------------------------------------
    def _guide_options(self) -> Dict[str, Any]:
        return {"init_scale": self.init_scale}

    @classmethod
    def _make_guide(cls, model: BayesianNetwork, *, y: Optional[torch.Tensor] = None, **options):
        raise NotImplementedError

    @classmethod
    def _named(cls, guide, model: BayesianNetwork):
        guide._pyro_name = f"{model._uid}.{type(guide).__name__}{next(_guide_counter)}"
        return guide

    def resolve_estimator(self, model: BayesianNetwork, layout: FlatLayout, num_particles: int) -> str:
        """The gradient estimator a fit uses (``"reparam"`` for VI other than mean-field)."""
        return "reparam"

    # the estimator --------------------------------------------------------
    def elbo_terms(self, post: SVIPosterior, x: torch.Tensor, y: torch.Tensor, num_data: int, num_particles: Optional[int] = None):
        """Return (expected log-likelihood, E_q log p(z) + log|J|, entropy), each a
        scalar estimate, for the minibatch ``(x, y)`` of a data set of ``num_data`` rows."""
        P = num_particles or self.num_particles
        active = self._active
        if active is not None and active[0] is post and post._layout is active[1].layout:
            objective = active[1]
        else:
            estimator = self.resolve_estimator(post.model, post.layout, P)
            objective = _Objective(post, kl=self.kl, prior_scale=self.prior_scale, estimator=estimator)
        return objective.terms(x, y, num_data, P)

    def _finalize_prior(self, post: SVIPosterior) -> None:
        """With empirical Bayes, write the fitted prior scales into the posterior's model, so the
        Pyro model, MCMC initialisation and ArviZ log-priors use the prior that was fitted."""
        layout = post.layout
        if self.prior_scale != "empirical-bayes" or not layout.num_gaussian:
            return
        from .. import priors as _priors

        model = post.model
        with torch.no_grad():
            _, _, mean, var = post.adapter.moments(None, sample=False)
            s2 = layout.empirical_bayes_variances(mean, var)
        sites = model.latent_sites()
        overrides = {sites[name].param: _priors.Normal(layout.site(name).gaussian[0], float(s2[k].sqrt())) for k, name in enumerate(layout.gaussian_names)}
        model.prior = _priors.PerSite(model.prior, overrides)
        model._prior_cache = {}  # the model caches its priors; they changed
        post.fit_info["prior_scales"] = {p: o.scale for p, o in overrides.items()}

    def _fit(self, model: BayesianNetwork, data: Data) -> SVIPosterior:
        """Fit the guide to ``(x, y)`` tensors or a DataLoader of ``(x, y)`` batches."""
        batches = data.batches(model, self.batch_size)
        x0, y0 = next(batches)
        _, y_all = data.sample(data.num_data)  # all targets, or the first batch of a DataLoader
        options = self._guide_options()
        guide = self._make_guide(model, y=y_all, **options)
        guide(x0[:2], y0[:2], num_data=data.num_data)
        post = SVIPosterior(
            model, guide, family=self.guide_family, guide_options=options, input_shape=x0.shape[1:],
            target_info={"shape": list(y0.shape[1:]), "dtype": "long" if not y0.is_floating_point() else "float"},
        )
        layout = post.layout
        estimator = self.resolve_estimator(model, layout, self.num_particles)
        num_steps = data.num_steps(self.num_steps, self.epochs, self.batch_size)
        # KL warm-up ends by half the run at the latest, so the last half always optimises the true ELBO
        warmup = num_steps // 2 if self.kl_warmup is None else min(self.kl_warmup, num_steps // 2)
        leaves = post.adapter.leaves()
        det_names = set(model.deterministic_parameters)
        det = [p for n, p in model.net.named_parameters() if n in det_names]
        slice_lr = [e for t in post.adapter.likelihood_leaves(leaves) for e in slice_learning_rates(t, layout.likelihood_index, self.lr)]
        self._active = (post, _Objective(post, kl=self.kl, prior_scale=self.prior_scale, estimator=estimator, leaves=leaves))
        N = data.num_data

        def loss_fn(step: int, xb: torch.Tensor, yb: torch.Tensor):
            ll, lp, ent = self.elbo_terms(post, xb, yb, N)
            if warmup and step + 1 < warmup:
                loss = -(ll + ((step + 1) / warmup) * (lp + ent))
            else:
                loss = -(ll + lp + ent)
            return loss, loss.detach()

        model.net.train()
        try:
            losses, seconds = train(
                loss_fn, itertools.chain([(x0, y0)], batches), list(leaves.values()) + det,
                num_steps=num_steps, lr=self.lr, lr_decay=self.lr_decay, progress=self.progress, desc=self.name,
                what="negative ELBO", hint="init_scale, or standardise x and y", slice_lr=slice_lr,
                callback=self.callback, callback_every=data.steps_per_epoch(self.batch_size), posterior_fn=lambda: post,
            )
        finally:
            self._active = None
            model.net.eval()
        post.fit_info = {"losses": losses, "seconds": seconds, "num_steps": num_steps, "estimator": estimator, "kl_warmup": warmup}
        if len(losses) < num_steps:
            post.fit_info["stopped_at"] = len(losses)
        self._finalize_prior(post)
        return post

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_steps={self.num_steps}, lr={self.lr}, seed={self.seed!r})"


#: the set-up lines of the doctest examples of LowRank and FullRank
_EXAMPLE_SETUP = """>>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods, inference
        >>> x = torch.linspace(-1, 1, 20).unsqueeze(-1); y = x[:, 0] ** 2
        >>> net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> model = BayesianNetwork(net, prior=priors.Normal(), likelihood=likelihoods.Gaussian(scale=0.1))"""

_SVI_ARGS = """num_steps: optimisation steps (default 5000; ignored when ``epochs`` is given).
        lr: Adam learning rate (default ``1e-2``); the likelihood's latents (a learned
            noise) use ``max(lr, LIKELIHOOD_LR)`` (:mod:`pyrobdl.inference.optim`).
        lr_decay: final/initial learning-rate ratio of an exponential schedule (default
            0.1; 1 = constant). The decay lets the variational scales settle.
        num_particles: Monte Carlo samples per step (one batched pass).
        batch_size: minibatch size (default: full batch); the likelihood is
            scaled by ``N / batch_size``.
        epochs: passes over the data instead of ``num_steps``.
        init_scale: initial posterior std of every unconstrained latent; the
            means start at the network's own initialisation, a learned noise at
            the likelihood's ``latent_init`` of the training targets.
        kl: ``"analytic"`` (closed-form Gaussian cross-entropy and entropy)
            or ``"mc"``.
        prior_scale: ``"fixed"`` (the model's prior) or ``"empirical-bayes"``:
            one prior variance per weight tensor (Gaussian priors) is fitted
            jointly by maximising the ELBO, in closed form
            :math:`s_l^2 = \\frac1{n_l}\\sum_{i\\in l}((\\mu_i-m_0)^2+\\sigma_i^2)`
            (Wu et al., *Deterministic Variational Inference for Robust Bayesian
            Neural Networks*, ICLR 2019); the fitted scales are written into the
            posterior's model prior (``posterior.model.prior``) and
            ``fit_info["prior_scales"]``.
        progress: show a progress bar with the running loss.
        callback: ``callback(progress)`` called after every epoch (every step with full-batch
            data) with a :class:`~pyrobdl.inference.optim.FitProgress` (``step``, ``epoch``,
            ``loss``, ``posterior`` so far); return ``True`` to stop (early stopping).
        seed: seed Pyro's and torch's RNGs first (see :class:`~pyrobdl.inference.Inference`)."""


@register_method
class MeanField(_SVI):
    r"""Mean-field Gaussian variational inference (Bayes by Backprop; Pyro's
    :class:`~pyro.infer.autoguide.AutoDiagonalNormal`).

    .. math:: q(z) = \prod_i \mathcal N(z_i;\ \mu_i, \sigma_i^2)

    The defaults are the measured ones (see the docs page "How the defaults were
    chosen"): 5000 steps, ``lr=1e-2``, ``lr_decay=0.1``, KL warm-up over the first half
    of the steps, and local reparameterisation where the network allows it.

    Args:
        kl_warmup: steps over which the prior/entropy term is annealed in from 0 to 1;
            ``None`` (default): the first half of the steps; 0 = off; at most half of
            the steps, so the second half of the run always maximises the true ELBO.
        estimator: ``"reparam"`` (sample weights), ``"local"`` (local
            reparameterisation) or ``"flipout"`` for Bayesian Linear/Conv layers, or
            ``"auto"`` (default): ``"local"`` when the network has such layers and
            ``num_particles == 1``, else ``"reparam"`` (the choice is recorded in
            ``fit_info["estimator"]``).
        {args}

    Example::

        posterior = inference.MeanField(num_steps=3000, lr=1e-2).fit(model, x, y)
        pred = posterior.predict(x_test, num_samples=100)
    """

    name = "mean-field"
    aliases = ("meanfield", "mean_field", "mfvi", "bbb")
    guide_family = "mean-field"
    variance_head = True

    def __init__(self, *, estimator: str = "auto", kl_warmup: Optional[int] = None, **kwargs):
        super().__init__(kl_warmup=kl_warmup, **kwargs)
        if estimator not in ("auto", "reparam", "local", "flipout"):
            raise ValueError(f"estimator must be 'auto', 'reparam', 'local' or 'flipout', got {estimator!r}")
        if estimator in ("local", "flipout") and self.num_particles != 1:
            raise ValueError(f"estimator={estimator!r} works with num_particles=1 (it draws per-example noise already)")
        self.estimator = estimator

    @classmethod
    def _make_guide(cls, model, *, init_scale: float, y: Optional[torch.Tensor] = None):
        g = autoguide.AutoDiagonalNormal(model, init_loc_fn=init_to_network(model, y), init_scale=float(init_scale))
        return cls._named(g, model)

    def resolve_estimator(self, model: BayesianNetwork, layout: FlatLayout, num_particles: int) -> str:
        """``estimator``, with ``"auto"`` resolved for ``model``; ``ValueError`` for
        ``"local"``/``"flipout"`` on a network without Bayesian Linear/Conv layers."""
        if self.estimator == "reparam":
            return "reparam"
        has_layers = bool(local_layers(model, layout))
        if self.estimator == "auto":
            return "local" if has_layers and num_particles == 1 else "reparam"
        if not has_layers:
            raise ValueError(
                f"estimator={self.estimator!r} needs Bayesian Linear/Conv layers (weight and bias both "
                "Bayesian); this network has none; use estimator='reparam' (or 'auto')"
            )
        return self.estimator


@register_method
class LowRank(_SVI):
    r"""Gaussian variational inference with a low-rank-plus-diagonal covariance
    (Pyro's :class:`~pyro.infer.autoguide.AutoLowRankMultivariateNormal`).

    .. math:: q(z) = \mathcal N(z;\ \mu,\ WW^\top + \mathrm{diag}(d^2)),\quad W\in\mathbb R^{D\times r}

    Defaults (see the docs page "How the defaults were chosen"): 5000 steps,
    ``lr=1e-2``, ``lr_decay=0.1``, no KL warm-up.

    Args:
        rank: :math:`r` (default :math:`\lceil\sqrt D\rceil`).
        kl_warmup: steps of KL warm-up (default 0 = off; at most half of the steps).
        {args}

    Example:
        {example_setup}
        >>> posterior = inference.LowRank(rank=2, num_steps=20, progress=False).fit(model, x, y)
        >>> posterior.guide.rank
        2
        >>> posterior.predict(x, num_samples=20).mean.shape
        torch.Size([20])

    References:
        Ong, Nott & Smith (2018). *Gaussian Variational Approximation with a
        Factor Covariance Structure*. Journal of Computational and Graphical
        Statistics 27(3).
    """

    name = "low-rank"
    aliases = ("lowrank", "low_rank")
    guide_family = "low-rank"
    variance_head = True

    def __init__(self, *, rank: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.rank = None if rank is None else check_positive_int(rank, "rank")

    def _guide_options(self):
        return {"init_scale": self.init_scale, "rank": self.rank}

    @classmethod
    def _make_guide(cls, model, *, init_scale: float, rank: Optional[int], y: Optional[torch.Tensor] = None):
        g = autoguide.AutoLowRankMultivariateNormal(
            model, init_loc_fn=init_to_network(model, y), init_scale=float(init_scale), rank=rank
        )
        return cls._named(g, model)


@register_method
class FullRank(_SVI):
    r"""Full-covariance Gaussian variational inference (Pyro's
    :class:`~pyro.infer.autoguide.AutoMultivariateNormal`), for small networks
    (:math:`O(D^2)` parameters).

    .. math:: q(z) = \mathcal N(z;\ \mu,\ LL^\top)

    with :math:`L` lower-triangular, :math:`D(D+3)/2` variational parameters
    for :math:`D` latents. Defaults (see the docs page "How the defaults were chosen"):
    5000 steps, ``lr=1e-2``, ``lr_decay=0.1``, no KL warm-up.

    Args:
        kl_warmup: steps of KL warm-up (default 0 = off; at most half of the steps).
        {args}

    Example:
        {example_setup}
        >>> posterior = inference.FullRank(num_steps=20, progress=False).fit(model, x, y)
        >>> posterior.guide.get_posterior().covariance_matrix.shape   # D = 25 weights
        torch.Size([25, 25])

    References:
        Kucukelbir, Tran, Ranganath, Gelman & Blei (2017). *Automatic
        Differentiation Variational Inference*. JMLR 18.
    """

    name = "full-rank"
    aliases = ("fullrank", "full_rank")
    guide_family = "full-rank"
    max_weights = 5000

    @classmethod
    def _make_guide(cls, model, *, init_scale: float, y: Optional[torch.Tensor] = None):
        D = sum(s.numel for s in model.latent_sites().values())
        if D > 20000:
            raise ValueError(
                f"FullRank needs a {D}x{D} covariance; use LowRank(rank=...) or MeanField for this network"
            )
        g = autoguide.AutoMultivariateNormal(model, init_loc_fn=init_to_network(model, y), init_scale=float(init_scale))
        return cls._named(g, model)


for _cls in (MeanField, LowRank, FullRank):
    _cls.__doc__ = _cls.__doc__.replace("{args}", _SVI_ARGS).replace("{example_setup}", _EXAMPLE_SETUP)
