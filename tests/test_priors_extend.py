"""Extending the priors: custom priors without to_config (print, save, load with model=),
registered/unregistered custom priors on load, per-weight (MOPED) Gaussian priors, the
scale-mixture, Laplace and Student-t priors with mean-field SVI and NUTS, and the checks on
what a weight prior may be."""
import math
import warnings

import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.distributions import kl_divergence

import pyrobdl
from pyrobdl import BayesianNetwork, inference, likelihoods, priors


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the prior registry, so classes registered by a test do not leak."""
    monkeypatch.setattr(priors, "_PRIORS", dict(priors._PRIORS))


def _data(n=24):
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, n).unsqueeze(-1)
    return x, torch.sin(x[:, 0]) + 0.1 * torch.randn(n)


def _net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1))


def _mf(model, x, y, steps=20):
    return pyrobdl.fit(model, x, y, method="mean-field", num_steps=steps, progress=False, seed=0)


def _nuts(model, x, y):
    return pyrobdl.fit(model, x, y, method="nuts", num_samples=20, warmup_steps=20, num_chains=1,
                       compile=False, diagnose=False, progress=False, seed=0)


def _same_predictions(a, b, x):
    torch.manual_seed(3)
    pa = a.predict(x, num_samples=10).mean
    torch.manual_seed(3)
    pb = b.predict(x, num_samples=10).mean
    torch.testing.assert_close(pa, pb)


class NoConfig(priors.Prior):
    """A custom Gaussian prior without to_config."""

    def __init__(self, scale=0.7):
        self.scale = scale

    def loc_scale(self, name, param, module):
        return 0.0, self.scale


# ----------------------------------------------------------------------------- 1. custom priors
def test_prior_without_to_config_prints_saves_and_loads_with_model(tmp_path):
    prior = NoConfig(0.7)
    assert repr(prior) == "NoConfig(scale=0.7)"
    x, y = _data()
    model = BayesianNetwork(_net(), prior=prior, likelihood=likelihoods.Gaussian())
    assert "prior=NoConfig(scale=0.7)" in str(model)
    with pytest.raises(NotImplementedError, match="to_config.*register_prior.*model="):
        prior.to_config()
    post = _mf(model, x, y)
    path = tmp_path / "p.pt"
    post.save(path)  # saving works
    with pytest.raises(ValueError, match=r"NoConfig prior that cannot be rebuilt.*model=BayesianNetwork\(net, prior=NoConfig"):
        pyrobdl.load(path)
    loaded = pyrobdl.load(path, model=BayesianNetwork(_net(), prior=NoConfig(0.7), likelihood=likelihoods.Gaussian()))
    _same_predictions(post, loaded, x)


def test_not_implemented_errors_have_messages():
    class Nothing(priors.Prior):
        pass

    lin = nn.Linear(2, 1)
    assert Nothing().loc_scale("weight", lin.weight, lin) is None
    with pytest.raises(NotImplementedError, match="must implement loc_scale.*or distribution"):
        Nothing().distribution("weight", lin.weight, lin)
    with pytest.raises(NotImplementedError, match="Nothing does not implement to_config"):
        Nothing().to_config()
    assert repr(Nothing()) == "Nothing()"


def test_registered_custom_prior_loads_without_model(tmp_path, registry):
    @priors.register_prior
    class WideBias(priors.Prior):
        def __init__(self, bias_scale=5.0):
            self.bias_scale = bias_scale

        def loc_scale(self, name, param, module):
            return 0.0, (self.bias_scale if name.endswith("bias") else 1.0)

        def to_config(self):
            return {"type": "WideBias", "bias_scale": self.bias_scale}

    x, y = _data()
    post = _mf(BayesianNetwork(_net(), prior=WideBias(4.0), likelihood=likelihoods.Gaussian()), x, y)
    post.save(tmp_path / "p.pt")
    loaded = pyrobdl.load(tmp_path / "p.pt")
    assert isinstance(loaded.model.prior, WideBias) and loaded.model.prior.bias_scale == 4.0
    _same_predictions(post, loaded, x)


def test_unregistered_custom_prior_names_class_and_both_fixes(tmp_path):
    class Unregistered(NoConfig):
        def to_config(self):
            return {"type": "Unregistered", "scale": self.scale}

    x, y = _data()
    post = _mf(BayesianNetwork(_net(), prior=Unregistered(), likelihood=likelihoods.Gaussian()), x, y)
    post.save(tmp_path / "p.pt")
    with pytest.raises(ValueError) as err:
        pyrobdl.load(tmp_path / "p.pt")
    msg = str(err.value)
    assert "'Unregistered'" in msg and "@pyrobdl.priors.register_prior" in msg
    assert "model=BayesianNetwork(net, prior=Unregistered(" in msg
    loaded = pyrobdl.load(tmp_path / "p.pt", model=BayesianNetwork(_net(), prior=Unregistered(), likelihood=likelihoods.Gaussian()))
    _same_predictions(post, loaded, x)
    # nested in a (registered) PerSite
    nested = priors.PerSite(priors.Normal(), {"2.*": Unregistered()})
    post = _mf(BayesianNetwork(_net(), prior=nested, likelihood=likelihoods.Gaussian()), x, y, steps=2)
    post.save(tmp_path / "n.pt")
    with pytest.raises(ValueError, match="'Unregistered'.*register_prior.*model=BayesianNetwork"):
        pyrobdl.load(tmp_path / "n.pt")


def test_persite_keyed_by_module_type_prints_and_saves(tmp_path):
    prior = priors.PerSite(priors.Normal(0.0, 1.0), {nn.Linear: priors.Normal(0.0, 0.5)})
    assert repr(prior) == "PerSite(default=Normal(loc=0.0, scale=1.0), overrides={Linear: Normal(loc=0.0, scale=0.5)})"
    x, y = _data()
    post = _mf(BayesianNetwork(_net(), prior=prior, likelihood=likelihoods.Gaussian()), x, y)
    post.save(tmp_path / "p.pt")
    with pytest.raises(ValueError, match="PerSite prior that cannot be rebuilt.*name pattern"):
        pyrobdl.load(tmp_path / "p.pt")
    loaded = pyrobdl.load(tmp_path / "p.pt", model=BayesianNetwork(_net(), prior=prior, likelihood=likelihoods.Gaussian()))
    _same_predictions(post, loaded, x)


# ----------------------------------------------------------------------------- 2. per-weight Gaussians
def test_tensor_valued_normal_shapes_and_forms():
    net = _net()
    w = dict(net.named_parameters())
    model = BayesianNetwork(net, prior=priors.Normal(loc={"0.weight": torch.zeros(3, 1)}), likelihood=likelihoods.Gaussian())
    with pytest.raises(ValueError, match=r"loc for parameter '0.weight' has shape \(3, 1\).*\(5, 1\)"):
        model.latent_sites()
    model = BayesianNetwork(net, prior=priors.Normal(loc={"0.weight": torch.zeros(5, 1)}), likelihood=likelihoods.Gaussian())
    with pytest.raises(ValueError, match="no entry for parameter '0.bias'"):
        model.latent_sites()
    with pytest.raises(ValueError, match=r"scale\['0.weight'\] must be > 0"):
        priors.Normal(scale={"0.weight": torch.zeros(5, 1)})
    # a mapping of numbers stays i.i.d. (closed form); a broadcastable tensor is per weight
    prior = priors.Normal(loc=0.0, scale={n: (0.5 if n.endswith("bias") else torch.full((5, 1), 0.2)) for n in w})
    assert prior.loc_scale("0.bias", w["0.bias"], net[0]) == (0.0, 0.5)
    assert prior.loc_scale("0.weight", w["0.weight"], net[0]) is None
    assert torch.equal(prior.distribution("0.weight", w["0.weight"], net[0]).stddev, torch.full((5, 1), 0.2))
    # a callable (name, param, module): param is a placeholder, values come from the module
    around = priors.Normal(loc=lambda name, p, m: getattr(m, name.rsplit(".", 1)[-1]).detach(), scale=0.1)
    sites = BayesianNetwork(net, prior=around, likelihood=likelihoods.Gaussian()).latent_sites()
    assert torch.equal(sites["2.weight"].prior.mean, w["2.weight"].detach())
    with pytest.raises(NotImplementedError, match="callable loc cannot be stored"):
        around.to_config()
    assert repr(around).startswith("Normal(loc=")


def test_moped_scales_floor_and_network_argument():
    net = _net()
    with torch.no_grad():
        net[2].bias.zero_()
    prior = priors.moped(net, delta=0.1)
    w = dict(net.named_parameters())
    torch.testing.assert_close(prior.loc["0.weight"], w["0.weight"].detach())
    torch.testing.assert_close(prior.scale["0.weight"], (0.1 * w["0.weight"].abs()).clamp_min(1e-3))
    assert prior.scale["2.bias"].tolist() == pytest.approx([1e-3])  # the floor: a zero weight keeps a positive scale
    again = priors.Normal.around(BayesianNetwork(net), delta=0.1)  # a BayesianNetwork works too
    assert sorted(again.loc) == sorted(prior.loc)
    with torch.no_grad():
        net[0].weight.add_(1.0)  # the prior holds copies
    assert not torch.equal(prior.loc["0.weight"], net[0].weight)


def test_moped_kl_in_svi_matches_torch_kl_divergence():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    model = BayesianNetwork(net, prior=priors.moped(net, delta=0.5), likelihood=likelihoods.Gaussian(scale=0.1))
    x = torch.randn(10, 1, dtype=torch.double)
    y = x[:, 0].clone()
    post = inference.MeanField(num_steps=2, estimator="reparam", progress=False).fit(model, x, y)
    with torch.no_grad():
        post.guide.loc.add_(0.2 * torch.randn_like(post.guide.loc))
    layout, sites = post.layout, post.model.latent_sites()
    loc, scale = (t.detach() for t in post.adapter.loc_scale())

    def kl_to(prior_of):
        return sum(
            float(kl_divergence(dist.Normal(layout.view(loc, n), layout.view(scale, n)), prior_of(n)).sum())
            for n in layout.names
        )

    kl = kl_to(lambda n: sites[n].prior.base_dist)  # torch's closed form against the MOPED prior
    wrong = kl_to(lambda n: dist.Normal(torch.zeros((), dtype=torch.double), sites[n].prior.base_dist.scale))
    P = 20000
    algo = inference.MeanField(num_particles=P, estimator="reparam", progress=False)
    torch.manual_seed(1)
    with torch.no_grad():
        _, lp, ent = algo.elbo_terms(post, x, y, 10)
    est = -float(lp + ent)
    if set(layout.names) <= set(layout.gaussian_names):  # the per-weight loc/scale scored in closed form
        assert est == pytest.approx(kl, rel=1e-9, abs=1e-9)
    else:  # Monte Carlo prior term (exact entropy): within a few standard errors of torch's KL
        z = loc + scale * torch.randn(P, loc.numel(), dtype=torch.double)
        values, _, _ = layout.unpack(z)
        lps = sum(sites[n].prior.log_prob(values[n]) for n in layout.names)
        se = float(lps.std()) / math.sqrt(P)
        assert abs(est - kl) < 5 * se
        assert abs(wrong - kl) > 50 * se  # the test tells the MOPED centre from a zero-mean prior
    assert kl > 0


def test_moped_mean_field_nuts_and_save_load(tmp_path):
    x, y = _data()
    pretrained = _net()
    model = BayesianNetwork(pretrained, prior=priors.moped(pretrained, delta=0.2), likelihood=likelihoods.Gaussian())
    post = _mf(model, x, y)
    post.save(tmp_path / "m.pt")
    loaded = pyrobdl.load(tmp_path / "m.pt")
    for what in ("loc", "scale"):
        for name, t in getattr(model.prior, what).items():
            assert torch.equal(getattr(loaded.model.prior, what)[name], t)
    _same_predictions(post, loaded, x)
    post = _nuts(model, x, y)
    assert torch.isfinite(post.predict(x, num_samples=10).mean).all()


# ----------------------------------------------------------------------------- 3. scale mixture
def test_scale_mixture_log_prob_matches_hand_formula():
    prior = priors.ScaleMixture()
    assert (prior.pi, prior.sigma1, prior.sigma2) == (0.5, 1.0, 0.0025)
    lin = nn.Linear(3, 2)
    d = priors.ScaleMixture(pi=0.3, sigma1=1.5, sigma2=0.1).distribution("weight", lin.weight, lin)
    assert d.event_shape == (2, 3) and d.support.base_constraint is torch.distributions.constraints.real
    w = torch.randn(4, 2, 3)

    def normal_pdf(v, s):
        return torch.exp(-0.5 * (v / s) ** 2) / (s * math.sqrt(2 * math.pi))

    ref = torch.log(0.3 * normal_pdf(w, 1.5) + 0.7 * normal_pdf(w, 0.1)).sum((-1, -2))
    torch.testing.assert_close(d.log_prob(w), ref)
    # stable far in the tails, where the narrow component underflows
    far = priors.ScaleMixtureNormal(torch.tensor(0.5), torch.tensor(1.0), torch.tensor(0.0025))
    assert torch.isfinite(far.log_prob(torch.tensor(50.0)))
    torch.manual_seed(0)
    s = d.sample((20000,))
    assert s.shape == (20000, 2, 3)
    assert float(s.var()) == pytest.approx(0.3 * 1.5 ** 2 + 0.7 * 0.1 ** 2, rel=0.05)
    with pytest.raises(ValueError, match="pi must be a number in"):
        priors.ScaleMixture(pi=1.0)


def test_scale_mixture_mean_field_and_nuts(tmp_path):
    x, y = _data()
    model = BayesianNetwork(_net(), prior=priors.ScaleMixture(), likelihood=likelihoods.Gaussian())
    post = _mf(model, x, y)
    assert torch.isfinite(post.fit_info["losses"]).all()
    post.save(tmp_path / "s.pt")
    loaded = pyrobdl.load(tmp_path / "s.pt")
    assert repr(loaded.model.prior) == "ScaleMixture(pi=0.5, sigma1=1.0, sigma2=0.0025)"
    _same_predictions(post, loaded, x)
    # NUTS (a milder narrow component: sigma2 = 0.0025 makes every trajectory hit the maximal tree depth)
    model = BayesianNetwork(_net(), prior=priors.ScaleMixture(sigma2=0.1), likelihood=likelihoods.Gaussian())
    post = _nuts(model, x, y)
    assert torch.isfinite(post.predict(x, num_samples=10).mean).all()


# ----------------------------------------------------------------------------- 4. Laplace, Student-t
@pytest.mark.parametrize(
    "prior, ref",
    [
        (priors.Laplace(0.5, 2.0), lambda fan: torch.distributions.Laplace(0.5, 2.0 / fan)),
        (priors.StudentT(df=3.0, loc=0.1, scale=0.5), lambda fan: torch.distributions.StudentT(3.0, 0.1, 0.5 / fan)),
    ],
)
@pytest.mark.parametrize("use_fan_in", [False, True])
def test_laplace_and_student_t_log_prob_and_config(prior, ref, use_fan_in, registry):
    prior = priors.prior_from_config({**prior.to_config(), "fan_in": use_fan_in})
    lin = nn.Linear(4, 3)
    w = torch.randn(7, 3, 4)
    fan = 2.0 if use_fan_in else 1.0  # sqrt(fan_in = 4) on weights; biases keep the scale
    torch.testing.assert_close(prior.distribution("weight", lin.weight, lin).log_prob(w), ref(fan).log_prob(w).sum((-1, -2)))
    b = torch.randn(7, 3)
    torch.testing.assert_close(prior.distribution("bias", lin.bias, lin).log_prob(b), ref(1.0).log_prob(b).sum(-1))
    assert prior.loc_scale("weight", lin.weight, lin) is None
    assert type(priors.prior_from_config(prior.to_config())) is type(prior)
    assert priors.prior_from_config(prior.to_config()).to_config() == prior.to_config()
    assert {"Laplace", "StudentT", "ScaleMixture"} <= set(priors.available_priors())


@pytest.mark.parametrize("prior", [priors.Laplace(0.0, 0.5, fan_in=True), priors.StudentT(df=3.0)])
def test_laplace_and_student_t_fit_and_round_trip(prior, tmp_path):
    x, y = _data()
    model = BayesianNetwork(_net(), prior=prior, likelihood=likelihoods.Gaussian())
    post = _mf(model, x, y)
    post.save(tmp_path / "l.pt")
    loaded = pyrobdl.load(tmp_path / "l.pt")
    assert loaded.model.prior.to_config() == prior.to_config()
    _same_predictions(post, loaded, x)
    post = _nuts(model, x, y)
    assert torch.isfinite(post.predict(x, num_samples=10).mean).all()


# ----------------------------------------------------------------------------- 5. what a weight prior may be
class Returns(priors.Prior):
    def __init__(self, make):
        self.make = make

    def distribution(self, name, param, module):
        return self.make(param)


def test_mixture_same_family_prior_refused_naming_the_parameter():
    def mixture(p):
        mix = dist.MixtureSameFamily(dist.Categorical(torch.tensor([0.5, 0.5])), dist.Normal(torch.zeros(2), torch.tensor([1.0, 0.01])))
        return mix.expand(p.shape).to_event(p.dim())

    x, y = _data()
    model = BayesianNetwork(_net(), prior=Returns(mixture), likelihood=likelihoods.Gaussian())
    with pytest.raises(ValueError, match="parameter '0.weight'.*real line.*priors.ScaleMixture"):
        model.latent_sites()
    with pytest.raises(ValueError, match="parameter '0.weight'.*weights need a prior on the real line"):
        _mf(model, x, y)


def test_prior_of_the_wrong_shape_refused_naming_the_parameter():
    model = BayesianNetwork(_net(), prior=Returns(lambda p: dist.Normal(torch.zeros(p.shape), 1.0)), likelihood=likelihoods.Gaussian())
    with pytest.raises(ValueError, match=r"parameter '0.weight'.*event shape \(\).*to_event\(2\)"):
        model.latent_sites()


@pytest.mark.parametrize("family", [lambda p: dist.HalfNormal(torch.ones(())), lambda p: dist.Gamma(torch.ones(()), 1.0)])
def test_positive_support_weight_prior(family):
    lin = nn.Linear(2, 1)
    d = family(lin.weight).expand(lin.weight.shape).to_event(2)
    with pytest.raises(ValueError, match="parameter 'weight'.*not on the real line; weights need a prior on the real line"):
        priors.check_weight_prior("weight", lin.weight, d, real_only=True)
    assert priors.check_weight_prior("weight", lin.weight, d) is d  # mappable onto the reals: MCMC can use it


def test_positive_support_weight_prior_refused_when_fit_starts():
    x, y = _data()
    model = BayesianNetwork(_net(), prior=Returns(lambda p: dist.HalfNormal(torch.ones(())).expand(p.shape).to_event(p.dim())))
    with pytest.raises(ValueError, match="parameter '0.weight'.*weights need a prior on the real line"):
        _mf(model, x, y)


_TINY = {
    "mean-field": dict(num_steps=100), "low-rank": dict(num_steps=100), "full-rank": dict(num_steps=100),
    "nuts": dict(num_samples=10, warmup_steps=10, num_chains=1), "hmc": dict(num_samples=10, warmup_steps=10, num_chains=1),
    "chees-hmc": dict(num_samples=10, warmup_steps=20, num_chains=4),
    "mc-dropout": dict(num_steps=100), "mc-dropconnect": dict(num_steps=100), "ensemble": dict(num_steps=100),
    "swag": dict(epochs=5, swag_epochs=5), "multi-swag": dict(epochs=5, swag_epochs=5, size=2),
    "sgld": dict(num_samples=5, warmup_steps=20, init_steps=20, num_chains=2),
    "sghmc": dict(num_samples=5, warmup_steps=20, init_steps=20, num_chains=2),
    "cyclical-sgmcmc": dict(num_cycles=2, samples_per_cycle=3, init_steps=20, num_chains=2),
    "laplace": dict(num_steps=100), "sub-ensemble": dict(num_steps=100, head_steps=20),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(pyrobdl.available_methods()))
def test_the_scale_mixture_prior_works_with_every_method(method):
    """Blundell et al.'s scale mixture (a non-Gaussian prior) with every registered method (tiny
    runs): the fit finishes and predicts finite values."""
    import warnings

    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-2, 2, 64).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(64, generator=g)
    model = BayesianNetwork(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), prior=priors.ScaleMixture())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = pyrobdl.fit(model, x, y, method=method, progress=False, seed=0, **_TINY.get(method, {}))
        pred = post.predict(x[:4])
    assert bool(torch.isfinite(pred.mean).all()) and bool((pred.variance > 0).all())
