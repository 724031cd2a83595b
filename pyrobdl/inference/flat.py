r"""One flat, unconstrained layout of a :class:`~pyrobdl.BayesianNetwork`'s latent
variables, shared by variational inference (the vector of Pyro's ``AutoContinuous``
guides) and HMC/NUTS (the sampler's state).

Every latent site :math:`k` (a weight tensor, or a likelihood latent such as a noise
scale :math:`\sigma`) owns the slice ``offset : offset + size`` of one vector
:math:`z\in\mathbb R^D`, in the model's trace order (the weights, then the likelihood's
latents). A site with a constrained support is mapped by
:math:`T_k = ` :func:`torch.distributions.biject_to` of its support (``exp`` for
:math:`\sigma>0`), and the layout returns :math:`\sum_k\log|\det J_{T_k}(z_k)|`.

Weights with an i.i.d. Gaussian prior :math:`\mathcal N(m_i, s_i^2)` (real support) are
scored in closed form on the flat vector instead of through their distributions:

* the log-prior (MCMC), :meth:`FlatLayout.gaussian_log_prior`:
  :math:`\sum_i \log\mathcal N(z_i; m_i, s_i^2)`;
* the expected log-prior under a Gaussian :math:`q` with means :math:`\mu_i` and
  variances :math:`v_i` (SVI's analytic cross term),
  :meth:`FlatLayout.expected_gaussian_log_prior`:
  :math:`\mathbb E_q\big[\sum_i\log\mathcal N(z_i; m_i, s_i^2)\big]
  = -\sum_i\Big[\log s_i + \tfrac12\log 2\pi + \frac{(\mu_i-m_i)^2+v_i}{2s_i^2}\Big]`;
* the empirical-Bayes prior variance of each weight tensor :math:`l` (one *group*),
  :meth:`FlatLayout.empirical_bayes_variances`:
  :math:`s_l^2 = \frac1{n_l}\sum_{i\in l}\big((\mu_i-m_i)^2+v_i\big)`.

Example:
    >>> import torch, torch.nn as nn
    >>> from pyrobdl import BayesianNetwork, priors, likelihoods
    >>> model = BayesianNetwork(nn.Linear(2, 1), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    >>> layout = FlatLayout(model)
    >>> [(s.name, s.offset, s.size, s.transform is None) for s in layout.sites]
    [('weight', 0, 2, True), ('bias', 2, 1, True), ('sigma', 3, 1, False)]
    >>> z = torch.zeros(5, layout.dim)                  # 5 points
    >>> values, raw, logdet = layout.unpack(z)
    >>> values["weight"].shape, float(values["sigma"][0]), logdet.shape   # sigma = exp(0)
    (torch.Size([5, 1, 2]), 1.0, torch.Size([5]))
    >>> torch.equal(layout.pack(values), z)
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pyro.distributions as pyro_dist
import torch
from torch.distributions import Distribution, Transform, biject_to, constraints

from .._util import unvalidated
from ..network import BayesianNetwork

__all__ = ["FlatSite", "FlatLayout", "is_real"]

_LOG_2PI = math.log(2 * math.pi)


def is_real(support: constraints.Constraint) -> bool:
    """Whether a support is (an ``independent`` wrapper of) the real line, i.e. the site
    needs no transform.

    Example:
        >>> from torch.distributions import constraints
        >>> is_real(constraints.real_vector), is_real(constraints.positive)
        (True, False)
    """
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return isinstance(support, type(constraints.real))


def _independent_normal(prior: Distribution, shape: torch.Size):
    """``(loc, scale)`` tensors of a Gaussian prior with per-weight parameters (a plain
    ``Normal(loc, scale).to_event(...)``, e.g. :func:`pyrobdl.priors.moped`), else ``None``."""
    base = prior
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if type(base) not in (torch.distributions.Normal, pyro_dist.Normal) or tuple(prior.event_shape) != tuple(shape):
        return None
    return base.loc.detach(), base.scale.detach()


def _loc_scale(g):
    """Scalars as floats, per-weight tensors as they are."""
    return tuple(float(v) if not isinstance(v, torch.Tensor) or v.dim() == 0 else v for v in g)


def _per_coordinate(v, s: "FlatSite") -> torch.Tensor:
    """A loc or scale (a float or a tensor broadcastable to the site) as ``(size,)`` float64 on the CPU."""
    if isinstance(v, torch.Tensor):
        return v.detach().to("cpu", torch.float64).expand(s.shape).reshape(-1)
    return torch.full((s.size,), float(v), dtype=torch.float64)


@dataclass(frozen=True)
class FlatSite:
    """One latent site's place in the flat vector.

    Attributes:
        name: the Pyro sample-site name.
        shape: the (constrained) value's shape.
        unconstrained_shape: the shape of its unconstrained value.
        offset, size: the site owns ``z[..., offset : offset + size]``.
        transform: the bijection from the real numbers onto the support, ``None`` for
            a real support.
        prior: the prior distribution, with argument validation off (the values it
            scores are on the support by construction).
        gaussian: ``(loc, scale)`` of a Gaussian prior scored in closed form (real support
            only): floats for an i.i.d. one, tensors broadcastable to ``shape`` for one with
            per-weight parameters (e.g. :func:`pyrobdl.priors.moped`); else ``None``.
        likelihood: whether the site is a latent of the likelihood (e.g. ``sigma``).
    """

    name: str
    shape: torch.Size
    unconstrained_shape: torch.Size
    offset: int
    size: int
    transform: Optional[Transform]
    prior: Distribution
    gaussian: Optional[Tuple]
    likelihood: bool

    @property
    def index(self) -> slice:
        """The site's slice of the flat vector."""
        return slice(self.offset, self.offset + self.size)


class FlatLayout:
    r"""The flat layout of ``model``'s latent sites (see the module docs).

    Args:
        model: the network.
        device, dtype: of the prior tensors (default: the network's).
        order: site names in the order of the flat vector (e.g. a Pyro guide's
            prototype trace); default, and required to agree with, the model's
            :meth:`~pyrobdl.BayesianNetwork.latent_sites` order.

    Attributes:
        sites: the :class:`FlatSite` entries in order; ``names``: their names;
            ``dim``: :math:`D`.
        gaussian_names: the sites scored in closed form, in order (the empirical-Bayes
            groups); ``num_gaussian``: their number of coordinates.
        prior_loc, prior_scale: :math:`m` and :math:`s` over those coordinates.
        group: the group (index into ``gaussian_names``) of each of those coordinates;
            ``group_sizes``: :math:`n_l` per group.
        likelihood_index: the slice of the likelihood's latents (empty if none).
    """

    def __init__(self, model: BayesianNetwork, *, device=None, dtype=None, order: Optional[Sequence[str]] = None):
        device = torch.device(device) if device is not None else model.device
        dtype = dtype or model.dtype
        latent = model.latent_sites(device=device, dtype=dtype)
        self.source = latent  # the model's cached site dict this layout was built from
        names = list(latent) if order is None else list(order)
        if sorted(names) != sorted(latent):
            raise ValueError(
                f"the flat order {names} does not name the model's latent sites {list(latent)}; "
                "build the guide (or potential) on this model"
            )
        self.device, self.dtype = device, dtype
        sites: List[FlatSite] = []
        off = 0
        for name in names:
            s = latent[name]
            t = None if is_real(s.support) else biject_to(s.support)
            gauss = s.gaussian if s.gaussian is not None else _independent_normal(s.prior, s.shape)
            ushape = torch.Size(s.shape) if t is None else torch.Size(t.inv.forward_shape(s.shape))
            n = int(math.prod(ushape))
            sites.append(
                FlatSite(
                    name=name, shape=torch.Size(s.shape), unconstrained_shape=ushape, offset=off, size=n,
                    transform=t, prior=unvalidated(s.prior),
                    gaussian=None if t is not None or gauss is None else _loc_scale(gauss),
                    likelihood=s.latent is not None,
                )
            )
            off += n
        self.sites = sites
        self.names = [s.name for s in sites]
        self.dim = off
        self._by_name = {s.name: s for s in sites}
        self._transformed = [s for s in sites if s.transform is not None]
        self._open_priors = [s for s in sites if s.gaussian is None]
        lik = [s for s in sites if s.likelihood]
        self.likelihood_index = slice(lik[0].offset, lik[-1].offset + lik[-1].size) if lik else slice(off, off)
        self._gaussian_terms(device, dtype)

    def _gaussian_terms(self, device, dtype) -> None:
        gauss = [s for s in self.sites if s.gaussian is not None]
        self.gaussian_names = [s.name for s in gauss]
        self.num_gaussian = sum(s.size for s in gauss)
        self.gaussian_slice: Optional[slice] = None
        self.gaussian_index: Optional[torch.Tensor] = None
        if not gauss:
            return
        idx = torch.cat([torch.arange(s.offset, s.offset + s.size) for s in gauss])
        start = int(idx[0])
        if bool((idx == torch.arange(start, start + len(idx))).all()):
            self.gaussian_slice = slice(start, start + len(idx))
        self.gaussian_index = idx.to(device)
        loc = torch.cat([_per_coordinate(s.gaussian[0], s) for s in gauss])
        scale = torch.cat([_per_coordinate(s.gaussian[1], s) for s in gauss])
        self.prior_loc = loc.to(device, dtype)
        self.prior_scale = scale.to(device, dtype)
        self._inv_scale = scale.reciprocal().to(device, dtype)
        self._inv_var = scale.pow(-2).to(device, dtype)
        #: sum_i (-log s_i - log(2 pi) / 2), in double precision
        self._log_norm = float(-scale.log().sum() - 0.5 * len(idx) * _LOG_2PI)
        self.group = torch.cat([torch.full((s.size,), k, dtype=torch.long) for k, s in enumerate(gauss)]).to(device)
        self.group_sizes = torch.tensor([float(s.size) for s in gauss], dtype=dtype, device=device)

    # ------------------------------------------------------------------ access
    def site(self, name: str) -> FlatSite:
        """The :class:`FlatSite` of site ``name``."""
        return self._by_name[name]

    def view(self, v: torch.Tensor, name: str) -> torch.Tensor:
        """Site ``name``'s part of a flat ``(..., D)`` tensor, shaped ``(..., *unconstrained_shape)``."""
        s = self._by_name[name]
        return v[..., s.offset : s.offset + s.size].reshape(v.shape[:-1] + s.unconstrained_shape)

    def gather(self, v: torch.Tensor) -> torch.Tensor:
        """The closed-form Gaussian coordinates of a flat ``(..., D)`` tensor, ``(..., num_gaussian)``."""
        return v[..., self.gaussian_slice] if self.gaussian_slice is not None else v[..., self.gaussian_index]

    # ------------------------------------------------------------------ pack / unpack
    def unpack(self, z: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor]:
        r"""Flat unconstrained ``z`` of shape ``(..., D)`` -> (site -> constrained value
        ``(..., *shape)``, site -> unconstrained value, :math:`\log|\det J|` of shape ``(...)``)."""
        batch = z.shape[:-1]
        values: Dict[str, torch.Tensor] = {}
        raw: Dict[str, torch.Tensor] = {}
        logdet = z.new_zeros(batch)
        for s in self.sites:
            u = z[..., s.offset : s.offset + s.size].reshape(batch + s.unconstrained_shape)
            raw[s.name] = u
            if s.transform is None:
                values[s.name] = u
            else:
                c = s.transform(u)
                values[s.name] = c
                logdet = logdet + s.transform.log_abs_det_jacobian(u, c).reshape(batch + (-1,)).sum(-1)
        return values, raw, logdet

    def pack(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Site -> constrained values ``(..., *shape)`` (a shared leading batch shape, or
        none) -> flat unconstrained ``(..., D)``."""
        parts = []
        batch = torch.Size(())
        for s in self.sites:
            if s.name not in values:
                raise ValueError(f"the values miss the site {s.name!r}; give every site of {self.names}")
            v = torch.as_tensor(values[s.name], dtype=self.dtype, device=self.device)
            b = v.shape[: v.dim() - len(s.shape)]
            if tuple(v.shape[len(b):]) != tuple(s.shape):
                raise ValueError(
                    f"value of site {s.name!r} has shape {tuple(v.shape)}, expected (..., {', '.join(map(str, s.shape))})"
                )
            batch = torch.broadcast_shapes(batch, b)
            parts.append((v if s.transform is None else s.transform.inv(v), s))
        return torch.cat(
            [u.expand(batch + u.shape[u.dim() - len(s.unconstrained_shape):]).reshape(batch + (-1,)) for u, s in parts], -1
        )

    # ------------------------------------------------------------------ densities
    def gaussian_log_prior(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_i\log\mathcal N(z_i; m_i, s_i^2)` over the closed-form Gaussian
        coordinates of ``z`` ``(..., D)``; shape ``(...)`` (zeros when there are none)."""
        if not self.num_gaussian:
            return z.new_zeros(z.shape[:-1])
        return self._log_norm - 0.5 * ((self.gather(z) - self.prior_loc) * self._inv_scale).pow(2).sum(-1)

    def log_prior(self, z: torch.Tensor, values: Mapping[str, torch.Tensor], logdet: torch.Tensor, *, gaussian: bool = True) -> torch.Tensor:
        r""":math:`\log p(\theta(z)) + \log|\det J|` from :meth:`unpack`'s ``values`` and
        ``logdet``: the Gaussian weights in closed form (left out with ``gaussian=False``,
        for SVI's analytic cross term), the other sites through their priors."""
        lp = logdet
        if gaussian and self.num_gaussian:
            lp = lp + self.gaussian_log_prior(z)
        for s in self._open_priors:
            lp = lp + s.prior.log_prob(values[s.name])
        return lp

    def negative_log_joint(
        self, model: BayesianNetwork, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, likelihood_scale: float = 1.0
    ) -> torch.Tensor:
        r"""The potential :math:`U(z) = -\log p(\theta(z)) - \log|\det J| - c\,\log p(y\mid x, \theta(z))`
        of the network at flat ``z`` ``(..., D)``, shape ``z.shape[:-1]``: what HMC/NUTS
        (:class:`~pyrobdl.inference.mcmc.potential.FlatPotential`, :math:`c = 1`) and SG-MCMC
        (:class:`~pyrobdl.inference.sgmcmc.MinibatchPotential`, :math:`c = N/|\mathcal B|` on a
        minibatch) sample from."""
        values, _, logdet = self.unpack(z)
        lp = self.log_prior(z, values, logdet)
        params, lats = model.split_values(values)
        ll = model.likelihood.log_prob(model.apply(params, x), y, lats).sum(-1)
        return -(lp + ll) if likelihood_scale == 1.0 else -(lp + likelihood_scale * ll)

    def expected_gaussian_log_prior(
        self, mean: torch.Tensor, var: torch.Tensor, *, prior_var: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        r""":math:`\mathbb E_q[\sum_i\log\mathcal N(z_i; m_i, s_i^2)]` for a Gaussian
        :math:`q` with flat means ``mean`` and variances ``var`` (``(D,)``); with
        ``prior_var`` (one variance per group, e.g. :meth:`empirical_bayes_variances`)
        in place of the prior's :math:`s_i^2`. A scalar (0 when there are no such weights)."""
        if not self.num_gaussian:
            return mean.new_zeros(())
        sq = (self.gather(mean) - self.prior_loc).pow(2) + self.gather(var)
        if prior_var is None:
            return self._log_norm - 0.5 * (sq * self._inv_var).sum()
        pv = prior_var[self.group]
        return -0.5 * ((2 * math.pi * pv).log() + sq / pv).sum()

    def empirical_bayes_variances(self, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        r"""The prior variance per group (weight tensor) that maximises
        :meth:`expected_gaussian_log_prior`:
        :math:`s_l^2 = \frac1{n_l}\sum_{i\in l}\big((\mu_i-m_i)^2+v_i\big)`, shape
        ``(len(gaussian_names),)``."""
        sq = (self.gather(mean) - self.prior_loc).pow(2) + self.gather(var)
        tot = torch.zeros(len(self.gaussian_names), dtype=sq.dtype, device=sq.device).index_add_(0, self.group, sq)
        return (tot / self.group_sizes).clamp_min(1e-8)

    def __repr__(self) -> str:
        return f"FlatLayout({len(self.sites)} sites, D={self.dim}, {self.num_gaussian} closed-form Gaussian)"
