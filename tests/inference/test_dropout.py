"""MC dropout and MC DropConnect: where the masks go, one mask per predictive sample shared by
all inputs (and by every chunk of inputs), masked weights, and the fast path equal to the
general path."""
import pytest
import torch
from torch import nn

from point_helpers import FAST, mlp, regression_model
from pyrobdl import BayesianNetwork
from pyrobdl._fast import chain, general_path
from pyrobdl.inference import MCDropConnect, MCDropout
from pyrobdl.inference.dropout import _input_mask

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:the fitted .*:UserWarning")]


def test_dropout_goes_before_hidden_layers_and_respects_existing_dropout(small_data):
    x, y = small_data
    post = MCDropout(p=0.1, layers="hidden", **FAST).fit(regression_model(), x, y)
    assert [(e["module"], e["where"], e["p"]) for e in post.plan] == [("2", "input", 0.1), ("4", "input", 0.1)]
    assert MCDropout(layers="all", **FAST).fit(regression_model(), x, y).plan[0]["module"] == "0"
    # the default: every layer, the first included (Gal's UCI setup), p = 0.015
    post = MCDropout(**FAST).fit(regression_model(), x, y)
    assert [(e["module"], e["p"]) for e in post.plan] == [("0", 0.015), ("2", 0.015), ("4", 0.015)]
    # a network with its own dropout keeps it (and its rate) and gets nothing inserted
    net = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    post = MCDropout(**FAST).fit(BayesianNetwork(net), x, y)
    assert [(e["module"], e["where"], e["p"], e["fold"]) for e in post.plan] == [("2", "replace", 0.3, "3")]
    assert MCDropout(p=0.2, **FAST).fit(BayesianNetwork(net), x, y).plan[0]["p"] == 0.2
    # with a Bayesian head only, dropout goes into the head
    head_net = nn.Sequential(mlp(1, 8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    post = MCDropout(**FAST).fit(BayesianNetwork(head_net, bayesian=["2.*", "4.*"]), x, y)
    assert [e["module"] for e in post.plan] == ["2", "4"]


def test_defaults_are_the_measured_ones():
    d, c = MCDropout(), MCDropConnect()
    assert (d.num_steps, d.lr, d.p, d.layers, d.default_p, d.default_layers, d.weight_decay) == (
        5000, 1e-2, None, None, 0.015, "all", "auto")
    assert MCDropout.weight_decay_candidates == (0.0, "prior") and c.weight_decay == 0.0
    assert (c.num_steps, c.lr, c.p, c.layers) == (5000, 1e-2, 0.01, "all")
    assert MCDropout(epochs=3).num_steps is None  # epochs replace the default steps
    assert MCDropout.variance_head and not MCDropConnect.variance_head
    assert MCDropout.family == MCDropConnect.family == "dropout"
    assert "weight_decay" in MCDropout.collapse_hint and "p" in MCDropout.collapse_hint


@pytest.mark.parametrize("cls", [MCDropout, MCDropConnect])
@pytest.mark.parametrize("seed, error", [("a", TypeError), (-1, ValueError)])
def test_seed_errors_are_the_template_rule(cls, seed, error):
    with pytest.raises(error, match="seed must be"):
        cls(seed=seed)


def test_dropout_on_at_prediction_off_in_eval_path(small_data):
    x, y = small_data
    post = MCDropout(p=0.3, **FAST).fit(regression_model(), x, y)
    pred = post.predict(x, num_samples=50)
    assert (pred.epistemic_variance > 0).all()  # samples differ: dropout is on
    net = post.net
    net.eval()
    torch.testing.assert_close(net(x), net(x))  # eval path: deterministic ...
    torch.testing.assert_close(net(x), post.model.net(x))  # ... and equal to the plain trained net
    net.train()
    assert not torch.equal(net(x), net(x))  # training path: dropout on
    net.eval()
    # each sample is one mask shared by all inputs: splitting the inputs into row chunks
    # (tiny max_memory) gives the same samples under the same seed
    torch.manual_seed(5)
    a = post.predict(x, num_samples=8)
    torch.manual_seed(5)
    b = post.predict(x, num_samples=8, chunk_size=8, max_memory=4096)
    torch.testing.assert_close(a.loc_samples, b.loc_samples)


@pytest.mark.parametrize("kind", ["dropout", "dropconnect", "activations"])
def test_masks_are_shared_by_every_chunk_of_inputs(small_data, kind):
    """One mask per sample, whatever the inputs are split into: one pass over all inputs and
    passes of a few rows give the same samples (masked weights are drawn once per chunk of
    samples; masks on activations replay the random state for every chunk of rows)."""
    x, y = small_data
    if kind == "activations":
        net = nn.Sequential(nn.Linear(1, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 1))
        post = MCDropout(**FAST).fit(BayesianNetwork(net), x, y)
        assert not post.in_weight_space
    else:
        post = (MCDropout if kind == "dropout" else MCDropConnect)(p=0.3, **FAST).fit(regression_model(), x, y)
    row_bytes = post.model.row_bytes(x)
    torch.manual_seed(2)
    a = post.predict(x, num_samples=6, chunk_size=6)
    torch.manual_seed(2)
    b = post.predict(x, num_samples=6, chunk_size=6, max_memory=6 * 7 * row_bytes + 100_000 * (kind == "dropconnect"))
    assert torch.unique(a.loc_samples, dim=0).shape[0] == 6  # six different masks ...
    torch.testing.assert_close(a.loc_samples, b.loc_samples)  # ... the same for every chunk of rows


@pytest.mark.parametrize("cls", [MCDropout, MCDropConnect])
def test_p_zero_gives_identical_samples(small_data, cls):
    x, y = small_data
    post = cls(p=0.0, **FAST).fit(regression_model(), x, y)
    pred = post.predict(x, num_samples=10)
    assert torch.equal(pred.loc_samples, pred.loc_samples[:1].expand_as(pred.loc_samples))
    torch.testing.assert_close(pred.loc_samples[0], post.net.eval()(x)[:, 0])


def test_dropout_activation_path_when_masks_are_not_on_weights(small_data):
    """A Dropout that is not right before a Linear masks activations: still one vmap pass, no weight samples."""
    x, y = small_data
    net = nn.Sequential(nn.Linear(1, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 1))
    post = MCDropout(**FAST).fit(BayesianNetwork(net), x, y)
    assert not post.in_weight_space
    assert (post.predict(x, num_samples=20).epistemic_variance > 0).all()
    with pytest.raises(TypeError, match="no weight-space samples"):
        post.sample_latents(3)


@pytest.mark.parametrize("cls", [MCDropout, MCDropConnect])
def test_masked_weight_samples(small_data, cls):
    x, y = small_data
    post = cls(p=0.25, **FAST).fit(regression_model(), x, y)
    draws = post.sample_latents(400)
    w = post.model.net[2].weight
    zero = draws["2.weight"] == 0
    if cls is MCDropout:  # whole input columns dropped, the others scaled by 1/(1-p)
        assert (zero.all(1) | ~zero.any(1)).all()
        frac = zero[:, 0, :].float().mean()
    else:
        frac = zero.float().mean()
    # 400*32 (dropout) or 400*1024 Bernoulli(0.25) draws: 5 standard errors ~ 0.017
    assert abs(float(frac) - 0.25) < 0.02
    kept = draws["2.weight"][~zero]
    torch.testing.assert_close(kept, (w.detach().expand_as(zero)[~zero] / 0.75))
    assert draws["0.weight"].shape == (400, 32, 1)


def test_input_masks_fold_into_weights():
    """Dropping inputs = masking weight columns / the kernel slices reading a channel (grouped, transposed)."""
    torch.manual_seed(0)
    cases = [(nn.Linear(6, 3), torch.randn(5, 6)), (nn.Conv2d(4, 6, 3, groups=2), torch.randn(5, 4, 7, 7)),
             (nn.ConvTranspose1d(4, 2, 3), torch.randn(5, 4, 9))]
    for layer, x in cases:
        n_in = x.shape[1]
        z = torch.bernoulli(torch.full((1, n_in), 0.5)) / 0.5
        masked_input = x * z.reshape((1, n_in) + (1,) * (x.dim() - 2))
        w = layer.weight * _input_mask(layer, z)[0]
        out = torch.func.functional_call(layer, {"weight": w}, (x,))
        torch.testing.assert_close(out, layer(masked_input), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [MCDropout, MCDropConnect])
def test_masked_prediction_chain_path_equals_vmap_path(small_data, cls):
    """Same seed -> same masks -> the same samples on both paths, chunked or not."""
    x, y = small_data
    post = cls(p=0.3, **FAST).fit(regression_model(), x, y)
    assert post.model._chain() is not None
    for kw in [{}, dict(chunk_size=7, max_memory=4096)]:
        torch.manual_seed(11)
        fast = post.predict(x, num_samples=20, **kw)
        with general_path():
            torch.manual_seed(11)
            slow = post.predict(x, num_samples=20, **kw)
        torch.testing.assert_close(fast.loc_samples, slow.loc_samples, rtol=1e-5, atol=1e-6)
    # and each sample is the network run with that sample's masked weights (a loop, for reference)
    torch.manual_seed(11)
    draws = post.sample_latents(20)
    torch.manual_seed(11)
    fast = post.predict(x, num_samples=20)
    names = {post.model.parameter_site(n): n for n in post.model.bayesian_parameters}
    for s in (0, 7, 19):
        w = {names[site]: v[s] for site, v in draws.items() if site in names}
        ref = torch.func.functional_call(post.model.net, w, (x,))[:, 0]
        torch.testing.assert_close(fast.loc_samples[s], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [MCDropout, MCDropConnect])
def test_switch_forces_the_general_path_float64(small_data, cls, monkeypatch):
    """With the one switch off no chain pass runs, in training (DropConnect's masked weights go
    through model.apply) or prediction; in float64 both paths give the same fit and samples.
    A network with its own nn.Dropout takes the chain path at prediction (eval mode)."""
    x, y = (t.double() for t in small_data)
    calls = []
    real = chain.forward
    monkeypatch.setattr(chain, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    results = []
    for general in (False, True):
        calls.clear()
        with general_path() if general else _nothing():
            post = cls(p=0.2, num_steps=4, progress=False, seed=1).fit(BayesianNetwork(net).double(), x, y)
            torch.manual_seed(4)
            pred = post.predict(x, num_samples=9, chunk_size=4, max_memory=3000)
        assert bool(calls) != general
        results.append((post, pred))
    (a, pa), (b, pb) = results
    for (n, p), q in zip(a.model.net.named_parameters(), b.model.net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=n)
    torch.testing.assert_close(pa.loc_samples, pb.loc_samples, rtol=1e-10, atol=1e-12)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_dropout_masks_are_independent_across_samples(small_data):
    """p = 0.5: each sample's column mask is Bernoulli(0.5), independent of the other samples'."""
    x, y = small_data
    post = MCDropout(p=0.5, **FAST).fit(regression_model(), x, y)
    torch.manual_seed(0)
    z = (post._masked_weights(2000)["2.weight"][:, 0, :] != 0).float()  # (S, 32) kept columns
    # 2000*32 draws: 5 standard errors of the keep rate ~ 0.0063
    assert abs(float(z.mean()) - 0.5) < 0.01
    # agreement of two different samples' masks: 1/2 when independent; 1999*32 pairs, 5 s.e. ~ 0.014
    agree = (z[1:] == z[:-1]).float().mean()
    assert abs(float(agree) - 0.5) < 0.02
    # sample correlation between samples (32 columns each): the mean over 2000 pairs is ~0
    zc = z - z.mean(1, keepdim=True)
    corr = (zc[1:] * zc[:-1]).sum(1) / (zc[1:].norm(dim=1) * zc[:-1].norm(dim=1)).clamp_min(1e-9)
    assert abs(float(corr.mean())) < 0.03  # s.e. of the mean ~ 0.18 / sqrt(2000) = 0.004
    # and the predictive samples differ from one another (no repeated masks)
    out = post.predict(x, num_samples=50).loc_samples
    assert torch.unique(out, dim=0).shape[0] == 50


def _sine(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 4 - 2
    return x, torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(n, generator=g)


def test_auto_weight_decay_keeps_the_best_held_out_candidate(monkeypatch):
    """``weight_decay="auto"`` trains one copy per candidate on 80% of the rows and keeps the one
    with the best held-out log predictive density, whatever its position: a decay of 30 erases
    the 0.1-noise sine fit (held-out LL about -1 against about +0.5), so 0 must win from second
    place; the final fit then uses it on all the rows."""
    monkeypatch.setattr(MCDropout, "weight_decay_candidates", (30.0, 0.0))
    x, y = _sine(120)
    post = MCDropout(num_steps=300, progress=False, seed=0).fit(regression_model(), x, y)
    scores = post.fit_info["weight_decay_scores"]
    assert set(scores) == {"30.0", "0.0"} and scores["0.0"] > scores["30.0"] + 0.5
    assert post.fit_info["weight_decay"] == 0.0
    assert post.settings["weight_decay"] == "auto"
    # the final fit is the plain fit with the chosen decay on all rows (same seed -> same weights
    # up to the random numbers the candidate fits drew): as good a fit as weight_decay=0
    plain = MCDropout(num_steps=300, progress=False, seed=0, weight_decay=0.0).fit(regression_model(), x, y)
    rmse = lambda p: float((p.predict(x, num_samples=20).mean - y).pow(2).mean().sqrt())
    assert rmse(post) < 0.3 and rmse(plain) < 0.3


def test_auto_weight_decay_falls_back_on_small_data_and_loaders(small_data):
    x, y = small_data  # 40 rows < AUTO_MIN_DATA: no held-out split
    post = MCDropout(**FAST).fit(regression_model(), x, y)
    assert post.fit_info["weight_decay"] == 0.0 and post.fit_info["weight_decay_scores"] is None
    x, y = _sine(80)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=40)
    post = MCDropout(**FAST).fit(regression_model(), loader)
    assert post.fit_info["weight_decay"] == 0.0 and post.fit_info["weight_decay_scores"] is None


def test_auto_weight_decay_is_only_for_methods_that_choose():
    from pyrobdl.inference import DeepEnsemble

    assert MCDropConnect(weight_decay="auto").weight_decay == "auto"
    with pytest.raises(ValueError, match="weight_decay must be 'prior' .* or a number >= 0, got 'auto'"):
        DeepEnsemble(weight_decay="auto")
    with pytest.raises(ValueError, match="'auto' \\(chosen on held-out data\\)"):
        MCDropout(weight_decay="best")


def test_auto_weight_decay_choice_is_saved(tmp_path):
    import pyrobdl

    x, y = _sine(60)
    post = MCDropout(num_steps=20, progress=False, seed=0).fit(regression_model(), x, y)
    post.save(tmp_path / "post.pt")
    back = pyrobdl.load(tmp_path / "post.pt")
    assert back.fit_info["weight_decay"] == post.fit_info["weight_decay"] in (0.0, "prior")
    assert back.fit_info["weight_decay_scores"] == pytest.approx(post.fit_info["weight_decay_scores"])


def test_lr_decay_default_and_effect(small_data):
    """MC dropout decays the learning rate to a tenth by default, DropConnect keeps it; with the
    rate decayed to ~0 the last steps of a mask-free (p=0) fit no longer move the loss, with a
    constant rate they do (a test that fails when the option is not passed to the optimiser)."""
    from pyrobdl.inference import MCDropConnect, MCDropout

    assert MCDropout().lr_decay == 0.1 and MCDropConnect().lr_decay == 1.0
    assert MCDropout(lr_decay=0.5).settings()["lr_decay"] == 0.5
    with pytest.raises(ValueError, match="lr_decay"):
        MCDropout(lr_decay=-1.0)
    x, y = small_data
    tail = {}
    for decay in (1.0, 1e-12):
        post = MCDropout(p=0.0, num_steps=60, lr_decay=decay, weight_decay=0.0, progress=False, seed=0).fit(
            regression_model(), x, y)
        tail[decay] = post.fit_info["losses"][-5:]
    assert float(tail[1e-12].max() - tail[1e-12].min()) < 1e-6
    assert float(tail[1.0].max() - tail[1.0].min()) > 1e-4
