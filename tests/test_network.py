"""BayesianNetwork is a real Pyro model, and its fast paths agree with naive ones."""
import pyro
import pyro.infer
import pyro.infer.autoguide as ag
import pytest
import torch
from pyro import poutine
from torch import nn
from torch.func import functional_call

import pyrobdl
from pyrobdl import BayesianNetwork, inference, likelihoods, priors


def mlp(d_in=1, h=8, d_out=1):
    return nn.Sequential(nn.Linear(d_in, h), nn.Tanh(), nn.Linear(h, d_out))


def toy(n=50):
    x = torch.linspace(-2, 2, n).unsqueeze(-1)
    return x, torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(n)


def test_sites_and_shapes():
    model = BayesianNetwork(mlp(), prior=priors.Normal(0.0, 1.0))
    x, y = toy()
    tr = poutine.trace(model).get_trace(x, y)
    assert [n for n, s in tr.nodes.items() if s["type"] == "sample" and not s["is_observed"] and n != "data"] == [
        "0.weight", "0.bias", "2.weight", "2.bias", "sigma"]
    assert tr.nodes["obs"]["value"].shape == (50,)
    assert tr.nodes["0.weight"]["fn"].event_shape == (8, 1)
    # the log joint is prior + likelihood, as the trace-free helpers compute it
    tr.compute_log_prob()
    values = {n: tr.nodes[n]["value"] for n in model.site_names}
    lp = sum(tr.nodes[n]["log_prob_sum"] for n in model.site_names)
    assert torch.allclose(model.log_prior(values), lp)
    _, yc = model.check_data(x, y)
    assert torch.allclose(model.log_likelihood(values, x, yc), tr.nodes["obs"]["log_prob_sum"], rtol=1e-5)


def test_selection():
    net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    assert BayesianNetwork(net).bayesian_parameters == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert len(BayesianNetwork(net, bayesian="all").bayesian_parameters) == 6
    assert BayesianNetwork(net, bayesian="last").bayesian_parameters == ["3.weight", "3.bias"]
    assert BayesianNetwork(net, bayesian="3.*").bayesian_parameters == ["3.weight", "3.bias"]
    assert BayesianNetwork(net, bayesian=net[0]).bayesian_parameters == ["0.weight", "0.bias"]
    assert BayesianNetwork(net, bayesian=[nn.BatchNorm1d]).bayesian_parameters == ["1.weight", "1.bias"]
    assert BayesianNetwork(net, bayesian=lambda n, p, m: n.endswith("weight")).bayesian_parameters == [
        "0.weight", "1.weight", "3.weight"]
    with pytest.raises(ValueError, match="selects none"):
        BayesianNetwork(net, bayesian="nothing*")
    with pytest.raises(TypeError, match="bayesian must be"):
        BayesianNetwork(net, bayesian=3.5)


def test_fan_in_prior_and_per_site_override():
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    prior = priors.PerSite(priors.FanInNormal(gain=2.0, bias_scale=0.5), {"2.weight": priors.Normal(0.0, 0.1)})
    sites = BayesianNetwork(net, prior=prior).latent_sites()
    assert sites["0.weight"].gaussian == (0.0, 1.0)  # 2 / sqrt(4)
    assert sites["0.bias"].gaussian == (0.0, 0.5)
    assert sites["2.weight"].gaussian == (0.0, 0.1)
    conv = nn.Conv2d(3, 8, kernel_size=3)
    assert priors.fan_in(conv, conv.weight) == 27


def test_vectorised_predictive_equals_loop():
    torch.manual_seed(0)
    x, y = toy(30)
    model = BayesianNetwork(mlp(h=6))
    post = inference.MeanField(num_steps=50, progress=False).fit(model, x, y)
    S = 13
    samples = post.sample_latents(S)
    params, lats = model.split_values(samples)
    loop = torch.stack([
        functional_call(model.net, {k: v[s] for k, v in params.items()}, (x,)) for s in range(S)
    ]).squeeze(-1)
    for kw in [{}, {"chunk_size": 4}, {"max_memory": 2000}]:  # 2000 bytes forces input chunking too
        pred = model.predict_from_samples(x, samples, **kw)
        assert torch.allclose(pred.samples["loc"], loop, atol=1e-6)
        assert torch.allclose(pred.samples["scale"], lats["sigma"].unsqueeze(-1).expand(S, 30))


def test_works_with_pyro_svi_autoguides_mcmc_predictive():
    torch.manual_seed(0)
    x, y = toy(40)
    model = BayesianNetwork(mlp(h=4))
    for guide_cls in (ag.AutoNormal, ag.AutoDiagonalNormal, ag.AutoLowRankMultivariateNormal, ag.AutoDelta):
        pyro.clear_param_store()
        guide = guide_cls(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), pyro.infer.Trace_ELBO())
        losses = [svi.step(x, y) for _ in range(150)]
        assert sum(losses[-10:]) < sum(losses[:10])
    # vectorised particles and parallel Predictive run the net in one batched pass
    elbo = pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    assert torch.isfinite(torch.tensor(elbo.loss(model, guide, x, y)))
    pred = pyro.infer.Predictive(model, guide=guide, num_samples=7, parallel=True)(x)
    assert pred["obs"].shape == (7, 40)
    pred = pyro.infer.Predictive(model, num_samples=5)(x)  # prior predictive
    assert pred["obs"].shape == (5, 40) and pred["0.weight"].shape[-2:] == (4, 1)
    mcmc = pyro.infer.MCMC(pyro.infer.NUTS(model), num_samples=5, warmup_steps=5, disable_progbar=True)
    mcmc.run(x, y)
    assert mcmc.get_samples()["2.weight"].shape == (5, 1, 4)
    # poutine: conditioning a weight fixes it
    w = torch.zeros(4, 1)
    tr = poutine.trace(poutine.condition(model, data={"0.weight": w})).get_trace(x)
    assert torch.equal(tr.nodes["0.weight"]["value"], w)


def test_pyrobdl_guide_works_with_pyro_predictive():
    x, y = toy(40)
    model = BayesianNetwork(mlp(h=4))
    post = inference.LowRank(num_steps=100, progress=False).fit(model, x, y)
    out = pyro.infer.Predictive(model, guide=post.guide, num_samples=20)(x)
    assert out["obs"].shape == (20, 40)


def test_two_models_do_not_clash_in_param_store():
    torch.manual_seed(0)
    x, y = toy(40)
    # deterministic BatchNorm params go through pyro.param: they must get distinct names
    nets = [nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)) for _ in range(2)]
    m1, m2 = BayesianNetwork(nets[0]), BayesianNetwork(nets[1])
    p1 = inference.MeanField(num_steps=50, progress=False).fit(m1, x, y)
    torch.manual_seed(5)
    before = p1.predict(x, num_samples=10).mean
    p2 = inference.MeanField(num_steps=50, progress=False).fit(m2, x, 2 * y)
    p1b = inference.MeanField(num_steps=50, progress=False).fit(m1, x, y)  # fitting the same model again
    torch.manual_seed(5)
    assert torch.equal(p1.predict(x, num_samples=10).mean, before)
    assert p1.guide is not p1b.guide
    names = list(pyro.get_param_store().keys())
    assert len(names) == len(set(names))
    for post in (p1, p2):  # each posterior's guide runs with its own (copied) model
        assert torch.isfinite(torch.tensor(pyro.infer.Trace_ELBO().loss(post.model, post.guide, x, y)))
    assert p1.model is not m1 and p1.model._uid != m1._uid  # fit trains a copy; the user's model is untouched
    # pyro.module-style registration of deterministic params is per-model
    pyro.clear_param_store()
    poutine.trace(m1).get_trace(x, y)
    poutine.trace(m2).get_trace(x, y)
    assert len([n for n in pyro.get_param_store().keys() if n.endswith("1.weight")]) == 2


def test_classification_and_cnn():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 3, (32,))
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    model = BayesianNetwork(net, likelihood=likelihoods.Categorical())
    post = inference.MeanField(num_steps=30, progress=False).fit(model, x, y)
    pred = post.predict(x, num_samples=8)
    assert pred.probs.shape == (32, 3)
    assert torch.allclose(pred.probs.sum(-1), torch.ones(32))
    assert torch.all(pred.mutual_information >= 0)
    assert torch.allclose(pred.predictive_entropy, pred.expected_entropy + pred.mutual_information, atol=1e-5)
    lp = pred.log_prob(y)
    assert lp.shape == (32,) and torch.all(lp <= 0)


def test_bernoulli_and_heteroscedastic():
    torch.manual_seed(0)
    x = torch.randn(40, 2)
    yb = (x[:, 0] > 0).long()
    post = pyrobdl.fit(BayesianNetwork(mlp(2, 8, 1), likelihood=likelihoods.Bernoulli()), x, yb, num_steps=200, progress=False)
    pred = post.predict(x)
    assert pred.probs.shape == (40, 2) and float((pred.predicted == yb).float().mean()) > 0.8
    yr = x[:, 0] + 0.1 * torch.randn(40)
    post = pyrobdl.fit(BayesianNetwork(mlp(2, 8, 2), likelihood=likelihoods.HeteroscedasticGaussian()), x, yr, num_steps=100, progress=False)
    pred = post.predict(x, num_samples=10)
    assert pred.mean.shape == (40,) and torch.all(pred.aleatoric_variance > 0)


@pytest.mark.cuda
def test_cuda_fit_and_predict():
    x, y = toy(64)
    x, y = x.cuda(), y.cuda()
    model = BayesianNetwork(mlp())
    post = inference.MeanField(num_steps=50, progress=False).fit(model, x, y)
    pred = post.predict(x, num_samples=10)
    assert pred.mean.is_cuda
    assert post.predict(x.cpu(), num_samples=5).mean.device.type == "cpu"


# ----------------------------------------------------------------------------- plain-chain fast path
def _reference_apply(net, params, x, S=None):
    """The general path: functional_call, looped over samples."""
    if S is None:
        return functional_call(net, params, (x,), strict=False)
    return torch.stack([functional_call(net, {k: v[s] for k, v in params.items()}, (x,), strict=False) for s in range(S)])


@pytest.mark.parametrize(
    "make_net, bayesian",
    [
        (lambda: nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 9), nn.Tanh(), nn.Linear(9, 2)), None),
        (lambda: nn.Sequential(nn.Linear(3, 9), nn.ReLU(), nn.Sequential(nn.Linear(9, 7, bias=False), nn.GELU()), nn.Linear(7, 2)), None),
        (lambda: nn.Sequential(nn.Linear(3, 9), nn.Sigmoid(), nn.Tanh(), nn.Linear(9, 2)), "last"),  # two activations in a row
        (lambda: nn.Sequential(nn.Linear(3, 9), nn.SiLU(), nn.Linear(9, 2)), "0.weight"),  # deterministic bias and later layer
        # activations after the last layer (written into prediction's preallocated output), identities
        (lambda: nn.Sequential(nn.Linear(3, 9), nn.Identity(), nn.Tanh(), nn.Linear(9, 2), nn.Softplus()), None),
        (lambda: nn.Sequential(nn.Linear(3, 9), nn.ELU(), nn.Linear(9, 2), nn.ReLU(inplace=True), nn.Identity()), None),
    ],
)
def test_chain_fast_path_equals_general_path(make_net, bayesian):
    """The baddbmm chain path (values, and gradients w.r.t. the sampled weights) equals
    functional_call on the same weights, for batched and unbatched values."""
    torch.manual_seed(0)
    net = make_net().double()
    model = BayesianNetwork(net, bayesian=bayesian)
    assert model._chain() is not None
    x = torch.randn(11, 3, dtype=torch.double)
    S = 5
    named = dict(net.named_parameters())
    params = {k: torch.randn((S,) + named[k].shape, dtype=torch.double, requires_grad=True) for k in model._bayes_names}
    out = model.apply(params, x)
    ref = _reference_apply(net, params, x, S)
    assert out.shape == ref.shape == (S, 11, 2)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)  # float64: only reassociation error
    g_out = torch.autograd.grad(out.sin().sum(), list(params.values()))
    g_ref = torch.autograd.grad(ref.sin().sum(), list(params.values()))
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    single = {k: v[2] for k, v in params.items()}
    torch.testing.assert_close(model.apply(single, x), ref[2], rtol=1e-12, atol=1e-12)
    # extra batch dims are flattened and restored
    two = {k: v[:4].reshape((2, 2) + v.shape[1:]) for k, v in params.items()}
    torch.testing.assert_close(model.apply(two, x), ref[:4].reshape(2, 2, 11, 2), rtol=1e-12, atol=1e-12)
    # prediction: every chunking equals the loop (input chunking forced by max_memory)
    samples = {model.parameter_site(k): v.detach() for k, v in params.items()}
    samples["sigma"] = torch.rand(S, dtype=torch.double) + 0.5
    for kw in [{}, {"chunk_size": 2}, {"max_memory": 300}, {"chunk_size": 3, "max_memory": 700}]:
        pred = model.predict_from_samples(x, samples, **kw)
        torch.testing.assert_close(pred.samples["loc"], ref.detach(), rtol=1e-12, atol=1e-12)


def test_chain_path_only_for_plain_chains():
    """Anything the chain path could get wrong falls back to the general path: other module
    types, subclasses, random modules, hooks and patched forwards."""

    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    with_dropout = BayesianNetwork(nn.Sequential(nn.Linear(1, 4), nn.Dropout(0.1), nn.Linear(4, 1)))
    assert with_dropout._chain() is None  # random in train mode ...
    with_dropout.net.eval()
    assert with_dropout._chain() is not None  # ... the identity in eval mode
    with_dropout.net.train()
    assert BayesianNetwork(nn.Sequential(nn.Linear(1, 4), nn.LayerNorm(4), nn.Linear(4, 1)))._chain() is None
    assert BayesianNetwork(nn.Sequential(MyLinear(1, 4), nn.Tanh(), nn.Linear(4, 1)))._chain() is None
    assert BayesianNetwork(nn.Linear(2, 1))._chain() is None  # not a Sequential: general path
    assert BayesianNetwork(nn.Sequential(nn.ReLU(inplace=True), nn.Linear(1, 1)))._chain() is None  # would modify x
    with_buffer = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))
    with_buffer[0].register_buffer("scale", torch.ones(1))
    assert BayesianNetwork(with_buffer)._chain() is None
    backward_hooked = mlp(h=4)
    backward_hooked[0].register_full_backward_hook(lambda m, gi, go: None)
    assert BayesianNetwork(backward_hooked)._chain() is None
    net = mlp(h=4)
    model = BayesianNetwork(net)
    assert model._chain() is not None
    x = torch.randn(6, 1)
    params = {k: v.detach() + 1.0 for k, v in net.named_parameters()}
    plain = model.apply(params, x)
    handle = net[1].register_forward_hook(lambda m, i, o: o + 10.0)
    try:
        assert model._chain() is None
        hooked = model.apply(params, x)
        torch.testing.assert_close(hooked, _reference_apply(net, params, x))
        assert not torch.allclose(hooked, plain)
    finally:
        handle.remove()
    assert model._chain() is not None
    net[2].forward = lambda h: torch.zeros(h.shape[0], 1)  # a monkeypatched forward (as LRT does)
    try:
        assert model._chain() is None
        assert torch.all(model.apply(params, x) == 0)
    finally:
        del net[2].forward
    assert model._chain() is not None


def test_chain_path_does_not_modify_inputs():
    """In-place activations are applied only to fresh linear outputs, never to the user's x."""
    model = BayesianNetwork(nn.Sequential(nn.Tanh(), nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))
    x = torch.randn(5, 3) * 3
    x0 = x.clone()
    model.apply({k: v.detach().unsqueeze(0).expand(3, *v.shape) for k, v in model.net.named_parameters()}, x)
    assert torch.equal(x, x0)


def test_predict_from_samples_takes_predictive_draws_and_checks_them():
    """Draws laid out by pyro.infer.Predictive, (S, 1, *shape), give the same prediction as the
    same draws squeezed; a missing site or a wrong shape is a ValueError naming the site."""
    model = BayesianNetwork(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)))
    x = torch.randn(6, 2)
    draws = pyro.infer.Predictive(model, num_samples=5, return_sites=model.site_names)(x)
    assert draws["0.weight"].shape == (5, 1, 4, 2)
    flat = {k: v.squeeze(1) for k, v in draws.items()}
    a = model.predict_from_samples(x, draws)
    b = model.predict_from_samples(x, flat)
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.variance, b.variance)
    with pytest.raises(ValueError, match=r"no draws of the latent site\(s\) \['sigma'\]"):
        model.predict_from_samples(x, {k: v for k, v in flat.items() if k != "sigma"})
    with pytest.raises(ValueError, match=r"samples\['0.weight'\] has shape \(5, 2, 4\)"):
        model.predict_from_samples(x, dict(flat, **{"0.weight": flat["0.weight"].transpose(1, 2)}))
    with pytest.raises(ValueError, match="has 3 draws but other sites have 5"):
        model.predict_from_samples(x, dict(flat, sigma=flat["sigma"][:3]))


def test_a_custom_posterior_without_get_state_says_how_to_save_it(tmp_path):
    from pyrobdl.inference import Posterior

    class Mine(Posterior):
        def sample_latents(self, num_samples):
            return {k: s.prior.sample((num_samples,)) for k, s in self.model.latent_sites().items()}

    post = Mine(BayesianNetwork(nn.Linear(1, 1)))
    with pytest.raises(NotImplementedError, match=r"implement get_state\(\) .* from_state"):
        post.save(tmp_path / "p.pt")
