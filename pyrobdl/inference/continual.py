r"""Continual (sequential) learning: the posterior of one task as the prior of the next.

Variational continual learning (Nguyen, Li, Bui & Turner, ICLR 2018) fits task :math:`t`
with the previous posterior as its prior,

.. math:: q_t(\theta) \approx \arg\max_q\ \mathbb E_q[\log p(\mathcal D_t\mid\theta)]
          - \mathrm{KL}(q \,\|\, q_{t-1}),

which for a conjugate model and exact posteriors is Bayes' rule applied task by task:
:math:`p(\theta\mid\mathcal D_{1:t}) \propto p(\mathcal D_t\mid\theta)\,p(\theta\mid\mathcal D_{1:t-1})`.

:func:`posterior_as_prior` turns any fitted posterior into a per-weight Gaussian prior
:class:`pyrobdl.priors.Normal` (the mean-field guide's own means and standard deviations;
for other posteriors the marginal means and standard deviations of their draws, i.e. the
moment-matched diagonal Gaussian), and :func:`next_task_model` returns a copy of the
posterior's model with that prior and its weights set to the posterior mean, ready for the
next ``pyrobdl.fit``.

Example::

    post = pyrobdl.fit(model, x1, y1, method="mean-field")
    post = pyrobdl.fit(next_task_model(post), x2, y2, method="mean-field")   # task 2
    post = pyrobdl.fit(next_task_model(post), x3, y3, method="mean-field")   # task 3

Do not pass ``seed`` to the later fits if they should start from the previous posterior
mean: a seeded fit re-draws the weights first (the seed rule of
:class:`~pyrobdl.inference.base.Inference`); the prior is the previous posterior either way.

References:
    C. V. Nguyen, Y. Li, T. D. Bui and R. E. Turner, *Variational Continual Learning* (ICLR 2018);
    H. Ritter and T. Karaletsos, *TyXe: Pyro-based Bayesian neural nets for PyTorch* (2022).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from .. import priors as _priors
from .._util import check_positive_float, check_positive_int
from ..network import BayesianNetwork
from .base import Posterior

__all__ = ["posterior_as_prior", "next_task_model"]

#: draws used for the moments of posteriors that are not a mean-field guide
DEFAULT_MOMENT_DRAWS = 1000


def _marginals(posterior: Posterior, num_samples: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Per-parameter (mean, std) of the Bayesian weights, by network-parameter name."""
    model = posterior.model
    site_of = {model.parameter_site(p): p for p in model.bayesian_parameters}
    adapter = getattr(posterior, "adapter", None)
    layout = getattr(posterior, "layout", None)
    if adapter is not None and layout is not None:  # a Gaussian guide: its own marginals, no sampling
        with torch.no_grad():
            _, _, mean, var = adapter.moments(None, sample=False)
        means, stds = {}, {}
        for site, pname in site_of.items():
            s = layout.site(site)
            if s.transform is not None:
                break
            means[pname] = layout.view(mean, site).reshape(s.shape).detach().clone()
            stds[pname] = layout.view(var, site).reshape(s.shape).sqrt().detach().clone()
        else:
            return means, stds
    with torch.no_grad():  # a fixed set (members, MCMC draws): all of it, once
        draws = posterior.sample_latents(None if posterior.num_fixed_draws is not None else num_samples)
    if any(draws[s].shape[0] < 2 for s in site_of):
        raise ValueError(
            "the posterior has a single draw, so its spread is unknown; a posterior with several draws "
            "(an ensemble of at least 2 members, MCMC, variational, dropout) is needed"
        )
    means = {p: draws[s].mean(0).detach().clone() for s, p in site_of.items()}
    stds = {p: draws[s].std(0).detach().clone() for s, p in site_of.items()}
    return means, stds


def posterior_as_prior(
    posterior: Posterior, *, min_scale: float = 1e-4, num_samples: int = DEFAULT_MOMENT_DRAWS
) -> _priors.Normal:
    r"""The per-weight Gaussian prior :math:`w_i \sim \mathcal N(\mu_i, \max(\sigma_i, s_{\min})^2)`
    from ``posterior``'s marginals: exact for a mean-field guide, the moment-matched diagonal
    Gaussian otherwise (means and standard deviations of ``num_samples`` draws; for an
    ensemble or MCMC posterior, of its fixed set).

    Args:
        posterior: a fitted posterior of a :class:`~pyrobdl.BayesianNetwork`.
        min_scale: floor :math:`s_{\min}` on the prior scales (a weight the posterior pinned
            down exactly must not get a zero-width prior).
        num_samples: draws for the moments when the posterior is not a Gaussian guide.

    Example:
        >>> import torch, torch.nn as nn, pyrobdl
        >>> from pyrobdl import BayesianNetwork, likelihoods
        >>> x = torch.randn(30, 2); y = x @ torch.tensor([1.0, -1.0])
        >>> model = BayesianNetwork(nn.Linear(2, 1), likelihood=likelihoods.Gaussian(scale=0.5))
        >>> post = pyrobdl.fit(model, x, y, method="mean-field", num_steps=200, progress=False)
        >>> prior = posterior_as_prior(post)
        >>> sorted(prior.loc), tuple(prior.scale["weight"].shape)
        (['bias', 'weight'], (1, 2))
    """
    if not isinstance(posterior, Posterior) or not isinstance(getattr(posterior, "model", None), BayesianNetwork):
        raise TypeError(
            f"posterior must be a fitted pyrobdl posterior of a BayesianNetwork, got {type(posterior).__name__}"
        )
    min_scale = check_positive_float(min_scale, "min_scale")
    num_samples = check_positive_int(num_samples, "num_samples", minimum=2)
    means, stds = _marginals(posterior, num_samples)
    return _priors.Normal(loc=means, scale={k: v.clamp_min(min_scale) for k, v in stds.items()})


def next_task_model(
    posterior: Posterior, *, min_scale: float = 1e-4, num_samples: int = DEFAULT_MOMENT_DRAWS
) -> BayesianNetwork:
    """A copy of ``posterior.model`` whose prior is :func:`posterior_as_prior` and whose
    Bayesian weights start at the posterior means: the model to fit on the next task.
    The likelihood (and its latents' priors) are kept.

    Example: see the module docs.
    """
    prior = posterior_as_prior(posterior, min_scale=min_scale, num_samples=num_samples)
    model = posterior.model.fresh_copy()
    model.prior = prior
    model._prior_cache = {}
    params = dict(model.net.named_parameters())
    with torch.no_grad():
        for pname, mean in prior.loc.items():
            params[pname].copy_(mean.to(params[pname].device, params[pname].dtype))
    return model
