"""The flat latent layout shared by SVI and MCMC: pack/unpack and log|det J| against Pyro's
own transforms and a naive per-site computation, and the closed-form Gaussian terms against
torch's Normal log-densities."""
import math

import pyro.distributions as dist
import pytest
import torch
from pyro.infer import autoguide
from torch import nn
from torch.distributions import biject_to

from pyrobdl import BayesianNetwork, likelihoods, priors
from pyrobdl.inference.flat import FlatLayout
from pyrobdl.inference.mcmc import FlatPotential


class MixedPrior(priors.Prior):
    """A log-normal (positive) first-layer bias, a Laplace first-layer weight, Gaussians elsewhere:
    a transformed site between Gaussian ones, so the Gaussian coordinates are not one slice."""

    def loc_scale(self, name, param, module):
        return None if name.startswith("0.") else (0.1, 0.5)

    def distribution(self, name, param, module):
        if name == "0.bias":
            return dist.LogNormal(torch.zeros((), dtype=param.dtype), 1.0).expand(param.shape).to_event(param.dim())
        if name == "0.weight":
            return dist.Laplace(torch.zeros((), dtype=param.dtype), 1.0).expand(param.shape).to_event(param.dim())
        return super().distribution(name, param, module)

    def to_config(self):
        return {"type": "MixedPrior"}


def mixed_model():
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    return BayesianNetwork(net, prior=MixedPrior(), likelihood=likelihoods.Gaussian())


def test_layout_entries_and_gaussian_index():
    layout = FlatLayout(mixed_model())
    assert [(s.name, s.offset, s.size) for s in layout.sites] == [
        ("0.weight", 0, 6), ("0.bias", 6, 3), ("2.weight", 9, 3), ("2.bias", 12, 1), ("sigma", 13, 1)
    ]
    assert [s.transform is None for s in layout.sites] == [True, False, True, True, False]
    assert layout.gaussian_names == ["2.weight", "2.bias"] and layout.num_gaussian == 4
    assert layout.gaussian_slice == slice(9, 13)
    assert layout.likelihood_index == slice(13, 14) and layout.dim == 14
    assert layout.group.tolist() == [0, 0, 0, 1] and layout.group_sizes.tolist() == [3.0, 1.0]
    # a transformed site between Gaussian ones: the Gaussian coordinates are gathered by index
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()

    class Middle(MixedPrior):
        def loc_scale(self, name, param, module):
            return None if name == "0.bias" else (0.0, 1.0)

        def distribution(self, name, param, module):
            return super().distribution(name, param, module) if name == "0.bias" else priors.Prior.distribution(self, name, param, module)

    lay2 = FlatLayout(BayesianNetwork(net, prior=Middle(), likelihood=likelihoods.Gaussian(scale=1.0)))
    assert lay2.gaussian_slice is None
    assert lay2.gaussian_index.tolist() == [0, 1, 2, 3, 4, 5, 9, 10, 11, 12]
    z = torch.randn(4, lay2.dim, dtype=torch.double)
    assert torch.equal(lay2.gather(z), z[:, lay2.gaussian_index])


def test_unpack_pack_and_logdet_against_pyro_and_per_site():
    model = mixed_model()
    layout = FlatLayout(model)
    x, y = model.check_data(torch.randn(5, 2, dtype=torch.double), torch.randn(5, dtype=torch.double))
    guide = autoguide.AutoDiagonalNormal(model)
    guide(x, y)
    assert layout.names == [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
    assert layout.dim == guide.latent_dim
    torch.manual_seed(0)
    z = torch.randn(7, layout.dim, dtype=torch.double)
    values, raw, logdet = layout.unpack(z)
    # Pyro's own unpacking of an AutoContinuous latent and its transforms, one point at a time
    sites = model.latent_sites()
    for p in range(z.shape[0]):
        ref_ld = 0.0
        for site, u in guide._unpack_latent(z[p]):
            name = site["name"]
            t = biject_to(site["fn"].support)
            v = t(u)
            torch.testing.assert_close(raw[name][p], u)
            torch.testing.assert_close(values[name][p], v)
            ref_ld = ref_ld + t.log_abs_det_jacobian(u, v).sum()
        torch.testing.assert_close(logdet[p], ref_ld)
    # naive per-site computation: sigma = exp(u), bias = exp(u), log|J| = sum of u over both
    naive = z[:, 6:9].sum(-1) + z[:, 13]
    torch.testing.assert_close(logdet, naive)
    torch.testing.assert_close(values["0.bias"], z[:, 6:9].exp())
    torch.testing.assert_close(values["2.weight"], z[:, 9:12].reshape(7, 1, 3))
    # pack inverts unpack, also for one point and for a value shared by every point
    torch.testing.assert_close(layout.pack(values), z)
    torch.testing.assert_close(layout.pack({k: v[0] for k, v in values.items()}), z[0])
    shared = {**{k: v for k, v in values.items()}, "sigma": values["sigma"][0]}
    assert layout.pack(shared)[:, 13].eq(z[0, 13]).all()
    with pytest.raises(ValueError, match="sigma"):
        layout.pack({k: v for k, v in values.items() if k != "sigma"})
    # the log prior: closed-form Gaussians + the other sites' priors + log|J| = the per-site sum
    lp = layout.log_prior(z, values, logdet)
    ref = sum(sites[k].prior.log_prob(values[k]) for k in sites) + logdet
    torch.testing.assert_close(lp, ref)


def test_closed_form_gaussian_terms_against_normal_log_prob():
    model = mixed_model()
    layout = FlatLayout(model)
    torch.manual_seed(1)
    z = torch.randn(5, layout.dim, dtype=torch.double)
    normal = dist.Normal(torch.tensor(0.1, dtype=torch.double), 0.5)
    torch.testing.assert_close(layout.gaussian_log_prior(z), normal.log_prob(z[:, 9:13]).sum(-1))
    # E_q[log N(z; m, s^2)] for q = N(mean, var): log N(mean; m, s^2) - var / (2 s^2)
    mean = torch.randn(layout.dim, dtype=torch.double)
    var = torch.rand(layout.dim, dtype=torch.double) + 0.1
    exp = layout.expected_gaussian_log_prior(mean, var)
    torch.testing.assert_close(exp, normal.log_prob(mean[9:13]).sum() - (var[9:13] / (2 * 0.25)).sum())
    # ... which a Monte Carlo average of the log-density approaches
    draws = mean[9:13] + var[9:13].sqrt() * torch.randn(200_000, 4, dtype=torch.double)
    assert abs(float(normal.log_prob(draws).sum(-1).mean() - exp)) < 0.02
    # with one variance per weight tensor, and the empirical-Bayes variances maximise it
    pv = layout.empirical_bayes_variances(mean, var)
    m = mean[9:13] - 0.1
    torch.testing.assert_close(pv, torch.stack([(m[:3] ** 2 + var[9:12]).mean(), m[3] ** 2 + var[12]]))
    per_coord = torch.cat([pv[0].expand(3), pv[1:]])
    ref = dist.Normal(torch.full((4,), 0.1, dtype=torch.double), per_coord.sqrt()).log_prob(mean[9:13]).sum() - (var[9:13] / (2 * per_coord)).sum()
    eb = layout.expected_gaussian_log_prior(mean, var, prior_var=pv)
    torch.testing.assert_close(eb, ref)
    for k in range(2):
        for f in (0.9, 1.1):
            other = pv.clone()
            other[k] *= f
            assert float(layout.expected_gaussian_log_prior(mean, var, prior_var=other)) < float(eb)
    # closed form at the optimum: -1/2 sum_l n_l (log(2 pi s_l^2) + 1)
    torch.testing.assert_close(eb, -0.5 * (layout.group_sizes * ((2 * math.pi * pv).log() + 1)).sum())


def test_potential_is_the_negative_log_joint_on_the_layout():
    model = mixed_model()
    x, y = model.check_data(torch.randn(6, 2, dtype=torch.double), torch.randn(6, dtype=torch.double))
    pot = FlatPotential(model, x, y)
    assert pot.layout.names == pot.site_names and pot.dim == 14
    z = pot.sample_prior(3)
    values, _, logdet = pot.layout.unpack(z)
    ref = model.log_prior(values) + model.log_likelihood(values, x, y) + logdet
    torch.testing.assert_close(pot(z), -ref)
