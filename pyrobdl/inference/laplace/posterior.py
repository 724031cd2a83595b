"""The Laplace posterior: the Gaussian around the MAP network, its marginal likelihood and the
linearised (GLM) predictive. See :mod:`pyrobdl.inference.laplace`."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from ... import likelihoods as _lik
from ..._util import check_positive_float, check_positive_int
from ...network import BayesianNetwork
from ...prediction import ClassificationPrediction, Prediction
from ..base import Posterior
from ..point import constrainer, latent_site_names, saved_fit_info
from .curvature import (
    DENSE_MAX, _Curvature, _Jacobians, _Layout, _curvature_from_state, _out_width, _row_chunks,
)


# ============================================================================ the posterior
class LaplacePosterior(Posterior):
    r"""A Laplace approximation :math:`\mathcal N(\theta^*, \Sigma)` over a subset of the
    network's weights (see the module docs); the other Bayesian weights stay at their MAP
    values and the likelihood's latents (a noise scale) at their tuned values.

    Attributes:
        subset: names of the network parameters the Gaussian covers, in the flat order of
            :attr:`posterior_precision` and :attr:`posterior_covariance`.
        hessian: the curvature structure (``"full"``, ``"diag"``, ``"kron"``, ``"low-rank"``).
        predictive: ``"glm"`` or ``"mc"``; ``link_approx``: ``"mc"`` or ``"probit"``.
        prior_precision: parameter name -> its prior precision :math:`\delta` (tuned by the
            marginal likelihood when ``prior_precision="marglik"``).
        latents: the likelihood's latents (e.g. ``{"sigma": tensor(0.31)}``).
        fit_info: ``losses`` (MAP training), ``marglik`` (the objective per tuning step),
            ``seconds``, ``num_steps``.

    Example:
        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, likelihoods, priors
        >>> from pyrobdl.inference import Laplace
        >>> x = torch.linspace(-1, 1, 30).unsqueeze(-1)
        >>> model = BayesianNetwork(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)),
        ...                         prior=priors.Normal(0.0, 1.0))
        >>> post = Laplace(hessian="full", num_steps=200, progress=False, seed=0).fit(model, x, torch.sin(3 * x[:, 0]))
        >>> post.posterior_covariance.shape, post.predict(x).mean.shape
        (torch.Size([25, 25]), torch.Size([30]))
        >>> bool(post.log_marginal_likelihood() < 0)
        True
    """

    method = "laplace"

    def __init__(
        self,
        model: BayesianNetwork,
        *,
        subset: List[str],
        curvature: _Curvature,
        prior_mean: torch.Tensor,
        groups: torch.Tensor,
        log_prior_precision: torch.Tensor,
        latents: Dict[str, torch.Tensor],
        loglik: Dict[str, Any],
        settings: Dict[str, Any],
    ):
        super().__init__(model)
        shapes = dict(model.net.named_parameters())
        self.layout = _Layout(subset, [shapes[n].shape for n in subset])
        self.curvature = curvature
        self.prior_mean = prior_mean
        self.groups = groups
        self.log_prior_precision = log_prior_precision
        self._raw = latents
        self.loglik = dict(loglik)
        self.settings = dict(settings)
        self._constrain = constrainer(model)
        self._jac: Optional[_Jacobians] = None

    # -- properties ----------------------------------------------------------
    @property
    def subset(self) -> List[str]:
        return list(self.layout.names)

    @property
    def hessian(self) -> str:
        return self.curvature.kind

    @property
    def predictive(self) -> str:
        return self.settings["predictive"]

    @property
    def link_approx(self) -> str:
        return self.settings["link_approx"]

    @property
    def latents(self) -> Dict[str, torch.Tensor]:
        """The likelihood's latents at their tuned values (``{"sigma": ...}``)."""
        return {k: v.detach() for k, v in self._constrain(self._raw).items()}

    @property
    def theta_map(self) -> torch.Tensor:
        """:math:`\\theta^*`, the subset's MAP weights as one flat vector ``(P,)``."""
        params = dict(self.model.net.named_parameters())
        return self.layout.flatten({n: params[n].detach() for n in self.layout.names})

    def _delta(self, log_prior_precision: Optional[torch.Tensor] = None) -> torch.Tensor:
        lp = self.log_prior_precision if log_prior_precision is None else log_prior_precision
        return lp.exp()[self.groups]

    def _scale(self, log_sigma: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:math:`s = 1/\\sigma^2` for a tuned Gaussian noise, else 1."""
        ref = self.log_prior_precision
        if not self.loglik.get("tunable"):
            return torch.ones((), dtype=ref.dtype, device=ref.device)
        if log_sigma is None:
            log_sigma = self.latents["sigma"].to(ref.dtype).log()
        return (-2.0 * log_sigma).exp()

    @property
    def prior_precision(self) -> Dict[str, torch.Tensor]:
        """Parameter name -> prior precision :math:`\\delta` (a scalar tensor: one value per
        parameter group)."""
        d = self._delta().detach()
        return {n: d[self.layout.slice(n)][0] for n in self.layout.names}

    @property
    def posterior_precision(self) -> torch.Tensor:
        r""":math:`\Sigma^{-1} = sH + \operatorname{diag}(\delta)` as a dense ``(P, P)`` matrix
        (the structure's own approximation of :math:`H`; at most :data:`DENSE_MAX` weights)."""
        P = self.layout.P
        if P > DENSE_MAX:
            raise ValueError(
                f"the posterior precision has {P} x {P} entries (more than DENSE_MAX={DENSE_MAX} weights); "
                "use sample_latents() or glm_moments(), which never form it"
            )
        H = self.curvature.dense()
        return (self._scale() * H + torch.diag(self._delta().to(H.dtype))).detach()

    @property
    def posterior_covariance(self) -> torch.Tensor:
        """:math:`\\Sigma`, the inverse of :attr:`posterior_precision` (small subsets only)."""
        return torch.cholesky_inverse(torch.linalg.cholesky(self.posterior_precision))

    def likelihood_hessian(self) -> torch.Tensor:
        """The structure's approximation of the likelihood's curvature :math:`sH` (the GGN at
        the tuned noise), dense ``(P, P)`` (at most :data:`DENSE_MAX` weights)."""
        return self.posterior_precision - torch.diag(self._delta().detach().to(self.curvature.dense().dtype))

    # -- marginal likelihood ---------------------------------------------------
    def _log_lik(self, log_sigma: Optional[torch.Tensor]) -> torch.Tensor:
        ref = self.log_prior_precision
        if not self.loglik.get("tunable"):
            return torch.as_tensor(self.loglik["value"], dtype=ref.dtype, device=ref.device)
        if log_sigma is None:
            log_sigma = self.latents["sigma"].to(ref.dtype).log()
        sse, m = self.loglik["sse"], self.loglik["count"]
        return -0.5 * sse * (-2.0 * log_sigma).exp() - m * log_sigma - 0.5 * m * math.log(2 * math.pi)

    def _lml(self, log_prior_precision: Optional[torch.Tensor] = None, log_sigma: Optional[torch.Tensor] = None) -> torch.Tensor:
        delta = self._delta(log_prior_precision)
        theta = self.theta_map.to(delta.dtype)
        sq = (theta - self.prior_mean.to(delta.dtype)).pow(2)
        s = self._scale(log_sigma)
        return (
            self._log_lik(log_sigma) - 0.5 * (delta * sq).sum() + 0.5 * delta.log().sum()
            - 0.5 * self.curvature.logdet(delta, s)
        )

    def log_marginal_likelihood(self, *, prior_precision=None, sigma=None) -> torch.Tensor:
        r"""The Laplace estimate of :math:`\log p(\mathcal D)` (module docs) at the fitted prior
        precision and noise, or at the given ones (``prior_precision``: a number or one value per
        group; ``sigma``: the Gaussian noise scale).

        Example::

            posterior.log_marginal_likelihood()                       # at the tuned values
            posterior.log_marginal_likelihood(prior_precision=10.0)   # another prior
        """
        lp = None
        if prior_precision is not None:
            pp = torch.as_tensor(prior_precision, dtype=self.log_prior_precision.dtype, device=self.log_prior_precision.device)
            if not bool((pp > 0).all()) or pp.numel() not in (1, self.log_prior_precision.numel()):
                raise ValueError(
                    f"prior_precision must be positive: a number or {self.log_prior_precision.numel()} values "
                    "(one per parameter group)"
                )
            lp = pp.log().expand_as(self.log_prior_precision)
        ls = None
        if sigma is not None:
            if not self.loglik.get("tunable"):
                raise ValueError("sigma= applies to likelihoods.Gaussian() with a learned noise only")
            ls = torch.as_tensor(check_positive_float(sigma, "sigma"), dtype=self.log_prior_precision.dtype,
                                 device=self.log_prior_precision.device).log()
        with torch.no_grad():
            return self._lml(lp, ls).detach()

    # -- sampling and prediction -----------------------------------------------
    def sample_latents(self, num_samples: Optional[int]) -> Dict[str, torch.Tensor]:
        r"""``num_samples`` draws :math:`\theta_s\sim\mathcal N(\theta^*,\Sigma)` of the subset's
        weights (the other Bayesian weights at their MAP values, the likelihood's latents at
        their tuned values), by site name: ``(S, *shape)``."""
        S = check_positive_int(100 if num_samples is None else num_samples, "num_samples")
        delta = self._delta()
        with torch.no_grad():
            draw = self.theta_map.to(delta.dtype) + self.curvature.sample(S, delta, self._scale())
        dtype = self.model.dtype
        vals = self.layout.unflatten(draw.to(dtype))
        params = dict(self.model.net.named_parameters())
        out: Dict[str, torch.Tensor] = {}
        for pname in self.model.bayesian_parameters:
            v = vals[pname] if pname in vals else params[pname].detach().expand((S,) + params[pname].shape)
            out[self.model.parameter_site(pname)] = v
        sites = latent_site_names(self.model)
        for short, v in self.latents.items():
            out[sites[short]] = v.expand((S,) + v.shape)
        return out

    def _jacobians(self) -> _Jacobians:
        if self._jac is None:
            self._jac = _Jacobians(self.model, self.layout)
        return self._jac

    def glm_moments(self, x) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""The linearised (GLM) predictive in closed form at inputs ``x``: the network's
        outputs :math:`f_{\theta^*}(x)` ``(N, k)`` and their covariance
        :math:`J(x)\Sigma J(x)^\top` ``(N, k, k)`` (the epistemic part; add the likelihood's
        noise for the predictive of ``y``).

        Example::

            mean, cov = posterior.glm_moments(x_test)
            std = (cov.diagonal(dim1=-2, dim2=-1) + posterior.latents["sigma"] ** 2).sqrt()
        """
        x = self.prepare_inputs(x)
        return self._glm(x, None)[:2]

    def probit_probs(self, x) -> torch.Tensor:
        r"""Class probabilities of the probit approximation of the GLM predictive, ``(N, C)``.

        Bernoulli: :math:`\sigma(f^*/\sqrt{1+\frac\pi8 v})` with :math:`v` the logit's
        variance (MacKay 1992b), returned as ``[p(0), p(1)]``. Categorical: the pairwise
        (mean-field) form of Lu, Ie & Sha (2020), which applies MacKay's scaling to every logit
        difference and so respects the softmax's invariance to a common shift of the logits,

        .. math::

            p_k \propto \Big(\sum_j \exp\Big(-\frac{f^*_k - f^*_j}{\sqrt{1 + \frac\pi8 v_{kj}}}\Big)\Big)^{-1},
            \qquad v_{kj} = \Sigma_{kk} + \Sigma_{jj} - 2\Sigma_{kj},

        with :math:`\Sigma = J\Sigma_\theta J^\top` (normalised to sum to 1; for two classes it
        is MacKay's probit of the logit difference)."""
        mean, cov = self.glm_moments(x)
        return self._probit(mean, cov)

    def _probit(self, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model.likelihood, _lik.Bernoulli):
            z = mean / (1.0 + math.pi / 8.0 * cov.diagonal(dim1=-2, dim2=-1)).sqrt()
            p1 = torch.sigmoid(z[..., 0])
            return torch.stack([1 - p1, p1], -1)
        # pairwise (mean-field) probit: each logit difference scaled by its own variance
        var = cov.diagonal(dim1=-2, dim2=-1)
        diff = mean.unsqueeze(-1) - mean.unsqueeze(-2)  # f_k - f_j
        vdiff = (var.unsqueeze(-1) + var.unsqueeze(-2) - 2 * cov).clamp_min(0)
        p = torch.logsumexp(-diff / (1.0 + math.pi / 8.0 * vdiff).sqrt(), -1).neg().exp()
        return p / p.sum(-1, keepdim=True)

    def _glm(self, x: torch.Tensor, num_samples: Optional[int]):
        """(f*, J Sigma J^T, moment-matched linearised draws (S, N, k) or None), in chunks of rows."""
        jac = self._jacobians()
        delta = self._delta()
        s = self._scale()
        draws = None
        if num_samples is not None:
            with torch.no_grad():
                half = self.curvature.sample((num_samples + 1) // 2, delta, s)
                draws = torch.cat([half, -half])[:num_samples]  # antithetic: mean exactly 0 for even S
        means, covs, outs = [], [], []
        for xb in _row_chunks(x, jac.rows(_out_width(self.model, x))):
            J, f = jac(xb)
            Jd = J.to(delta.dtype)
            cov = self.curvature.jsj(Jd, delta, s)
            means.append(f)
            covs.append(cov.to(f.dtype))
            if draws is not None:
                g = torch.einsum("nkp,sp->snk", Jd, draws)
                g = g - g.mean(0)  # exact mean, then exact per-output variance diag(J Sigma J^T)
                var = g.pow(2).mean(0)
                target = cov.diagonal(dim1=-2, dim2=-1).clamp_min(0)
                g = torch.where(var > 0, g * (target / var.clamp_min(1e-300)).sqrt(), g)
                outs.append((f + g).to(f.dtype))
        return torch.cat(means), torch.cat(covs), (torch.cat(outs, 1) if draws is not None else None)

    def sample_outputs(self, x, num_samples, *, chunk_size=None, max_memory=None):
        r"""Network outputs ``(S, N, k)`` for ``S`` predictive samples and the likelihood's
        latents: draws of the linearised network (``predictive="glm"``, moment-matched so the
        mean and the epistemic variance are exact), the probit probabilities' logits as one
        sample (``link_approx="probit"``, classification), or the network at weight draws
        (``predictive="mc"``)."""
        S = 100 if num_samples is None else num_samples
        if self.predictive == "mc":
            return super().sample_outputs(x, S, chunk_size=chunk_size, max_memory=max_memory)
        lats = self.latents
        if self.link_approx == "probit" and self.model.likelihood.task == "classification":
            mean, cov, _ = self._glm(x, None)
            probs = self._probit(mean, cov)
            logits = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
            if isinstance(self.model.likelihood, _lik.Bernoulli):
                logits = (logits[..., 1] - logits[..., 0]).unsqueeze(-1)
            return logits.unsqueeze(0), {k: v.expand((1,) + v.shape) for k, v in lats.items()}
        _, _, out = self._glm(x, S)
        return out, {k: v.expand((S,) + v.shape) for k, v in lats.items()}

    def predict(self, x, *, num_samples: Optional[int] = None, chunk_size: Optional[int] = None,
                max_memory: Optional[int] = None) -> Prediction:
        """Posterior predictive at ``x`` (see :meth:`sample_outputs`; ``num_samples`` default 100)."""
        if self.link_approx == "probit" and self.model.likelihood.task == "classification" and self.predictive == "glm":
            x = self.prepare_inputs(x)
            return ClassificationPrediction(probs=self._probit_full(x).unsqueeze(0))
        return super().predict(x, num_samples=num_samples, chunk_size=chunk_size, max_memory=max_memory)

    def _probit_full(self, x: torch.Tensor) -> torch.Tensor:
        mean, cov, _ = self._glm(x, None)
        p = self._probit(mean, cov)
        return p / p.sum(-1, keepdim=True)

    # -- device and saving -------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.log_prior_precision.device

    def to(self, device) -> "LaplacePosterior":
        self.model.to(device)
        self.curvature.to(device)
        self.prior_mean = self.prior_mean.to(device)
        self.groups = self.groups.to(device)
        self.log_prior_precision = self.log_prior_precision.to(device)
        self._raw = {k: v.detach().to(device) for k, v in self._raw.items()}
        self.loglik = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.loglik.items()}
        self._jac = None
        return self

    def get_state(self) -> Dict[str, Any]:
        return {
            "settings": self.settings,
            "subset": self.subset,
            "hessian": self.hessian,
            "curvature": self.curvature.state(),
            "prior_mean": self.prior_mean.detach().cpu(),
            "groups": self.groups.cpu(),
            "log_prior_precision": self.log_prior_precision.detach().cpu(),
            "latents": {k: v.detach().cpu() for k, v in self._raw.items()},
            "loglik": {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in self.loglik.items()},
            "fit_info": saved_fit_info(self.fit_info),
        }

    @classmethod
    def from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "LaplacePosterior":
        params = dict(model.net.named_parameters())
        missing = [n for n in state["subset"] if n not in params]
        if missing:
            raise ValueError(f"the saved Laplace posterior covers parameters {missing} that the given model's network lacks")
        dev = model.device
        post = cls(
            model,
            subset=list(state["subset"]),
            curvature=_curvature_from_state(state["hessian"], state["curvature"], dev),
            prior_mean=state["prior_mean"].to(dev),
            groups=state["groups"].to(dev),
            log_prior_precision=state["log_prior_precision"].to(dev),
            latents={k: v.to(dev) for k, v in state["latents"].items()},
            loglik={k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in state["loglik"].items()},
            settings=state["settings"],
        )
        post.fit_info = dict(state.get("fit_info", {}))
        return post

    def __repr__(self) -> str:
        return (f"LaplacePosterior({self.layout.P} of {self.model.num_bayesian_parameters} weights, "
                f"hessian={self.hessian!r}, predictive={self.predictive!r})")


