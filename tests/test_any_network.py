"""Any network: recurrent, embedding and attention nets in every method (the vmap fallback),
integer inputs kept integer where the network takes them, the data plate's name, and one
meaning of ``num_samples``."""
import warnings

import pyro
import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

import pyrobdl
from pyrobdl import BayesianNetwork
from pyrobdl._fast.batched import loop_path, uses_loop
from pyrobdl.inference.base import finite_draw_index


class RNNReg(nn.Module):
    def __init__(self, cell=nn.LSTM, hidden=6):
        super().__init__()
        self.rnn = cell(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x.unsqueeze(-1))
        return self.head(out[:, -1])


class EmbReg(nn.Module):
    def __init__(self, vocab=10):
        super().__init__()
        self.emb = nn.Embedding(vocab, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.emb(x)).squeeze(-2)


class AttnReg(nn.Module):
    def __init__(self, encoder=False):
        super().__init__()
        self.inp = nn.Linear(1, 8)
        self.body = (
            nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.1, batch_first=True)
            if encoder else nn.MultiheadAttention(8, 2, batch_first=True)
        )
        self.encoder = encoder
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        h = self.inp(x.unsqueeze(-1))
        h = self.body(h) if self.encoder else self.body(h, h, h)[0]
        return self.head(h.mean(1))


def _seq_data(n=48, t=5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, t, generator=g)
    return x, 0.5 * x.sum(-1) / t ** 0.5 + 0.1 * torch.randn(n, generator=g)


def _quiet_fit(model, x, y, method, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pyrobdl.fit(model, x, y, method=method, progress=False, seed=0, **kw)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_recurrent_apply_falls_back_to_the_loop_with_one_note(cell):
    torch.manual_seed(0)
    model = BayesianNetwork(RNNReg(cell))
    x, _ = _seq_data(8)
    params = {k: v.detach() + 0.1 * torch.randn((4,) + v.shape) for k, v in model.net.named_parameters()}
    with pytest.warns(UserWarning, match="cannot batch") as rec:
        out = model.apply(params, x)
    assert sum("cannot batch" in str(w.message) for w in rec) == 1
    assert uses_loop(model.net) and out.shape == (4, 8, 1)
    # the loop is the same function: each sample by hand
    for s in range(4):
        one = functional_call(model.net, {k: v[s] for k, v in params.items()}, (x,))
        torch.testing.assert_close(out[s], one)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the note is given once per network
        model.apply(params, x)


def test_loop_and_vmap_paths_agree_where_both_apply():
    """A convolutional net (not a Linear chain, so not the chain fast path) batches under vmap;
    the loop gives the same outputs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Unflatten(1, (1, 6)), nn.Conv1d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 1))
    model = BayesianNetwork(net)
    x = torch.randn(5, 6)
    params = {k: v.detach() + 0.1 * torch.randn((7,) + v.shape) for k, v in net.named_parameters()}
    fast = model.apply(params, x)
    with loop_path():
        slow = model.apply(params, x)
    assert not uses_loop(net)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["mean-field", "ensemble", "mc-dropout"])
def test_lstm_fits_and_predicts_in_every_family(method):
    x, y = _seq_data()
    post = _quiet_fit(BayesianNetwork(RNNReg(nn.LSTM)), x, y, method, epochs=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = post.predict(x, num_samples=16)
    assert pred.mean.shape == (48,) and bool(torch.isfinite(pred.variance).all())
    # it learned something: better than predicting the mean of y (R^2 > 0.3 on the training set)
    r2 = 1 - float(((pred.mean - y) ** 2).mean() / y.var(unbiased=False))
    assert r2 > 0.3, r2
    if method != "mc-dropout":  # the LSTM net has no dropout module, so MC dropout has no spread
        assert float(pred.epistemic_std.mean()) > 0


def test_gru_with_nuts_tiny():
    x, y = _seq_data(24, 3)
    post = _quiet_fit(BayesianNetwork(RNNReg(nn.GRU, hidden=3)), x, y, "nuts", num_samples=8, warmup_steps=8, num_chains=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = post.predict(x)
        idata = post.to_arviz(x, y)
    assert pred.num_samples == 8 and float(pred.epistemic_std.mean()) > 0
    assert "log_likelihood" in idata.groups()


def test_transformer_encoder_mc_dropout_has_spread_and_mha_fits():
    """MC dropout on a TransformerEncoderLayer: torch's fused eval-mode fast path skips the
    layer's dropout modules, so pyrobdl switches it off while sampling; the spread is > 0."""
    x, y = _seq_data(32, 4)
    post = _quiet_fit(BayesianNetwork(AttnReg(encoder=True)), x, y, "mc-dropout", epochs=30)
    pred = post.predict(x, num_samples=16)
    assert float(pred.epistemic_std.min()) > 0
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    post = _quiet_fit(BayesianNetwork(AttnReg()), x, y, "mean-field", epochs=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert post.predict(x, num_samples=8).mean.shape == (32,)


# ------------------------------------------------------------------ integer inputs
def test_embedding_keeps_integer_inputs_and_saves(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 10, (80, 1), generator=g)
    y = 0.3 * x[:, 0].float() - 1.35 + 0.05 * torch.randn(80, generator=g)
    model = BayesianNetwork(EmbReg())
    post = _quiet_fit(model, x, y, "mean-field", num_steps=1500)
    assert post.model.integer_inputs is True
    pred = post.predict(x, num_samples=50)
    rmse = float(((pred.mean - y) ** 2).mean().sqrt())
    assert rmse < 0.25, rmse  # targets std ~0.9: the embedding learned the per-token means
    post.save(tmp_path / "emb.pt")
    back = pyrobdl.load(tmp_path / "emb.pt", model=BayesianNetwork(EmbReg()))
    assert back.model.integer_inputs is True
    torch.manual_seed(0)
    a = back.predict(x[:5], num_samples=20).mean
    assert bool(torch.isfinite(a).all())
    for method in ("ensemble", "mc-dropconnect"):
        p = _quiet_fit(BayesianNetwork(EmbReg()), x, y, method, epochs=50)
        assert p.predict(x[:3]).mean.shape == (3,)


def test_integer_features_into_linear_are_cast():
    x = torch.arange(12).reshape(6, 2)
    model = BayesianNetwork(nn.Linear(2, 1))
    xi, _ = model.check_data(x)
    assert xi.dtype == torch.float32 and model.integer_inputs is False
    torch.testing.assert_close(xi, x.float())


# ------------------------------------------------------------------ plates
def test_plate_and_obs_names_are_configurable_and_saved(tmp_path):
    x = torch.randn(30, 1)
    y = 2 * x[:, 0]
    m = BayesianNetwork(nn.Linear(1, 1), plate_name="rows", obs_name="target")

    def model(x, y=None):  # the user's own plate named "data" next to the network's
        with pyro.plate("data", 30):
            pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
        return m(x, y)

    tr = pyro.poutine.trace(model).get_trace(x, y)
    assert {"data", "rows", "target", "z"} <= set(tr.nodes)
    assert tr.nodes["target"]["cond_indep_stack"][0].name == "rows"
    post = _quiet_fit(m, x, y, "mean-field", num_steps=50)
    post.save(tmp_path / "p.pt")
    back = pyrobdl.load(tmp_path / "p.pt")
    assert back.model.plate_name == "rows" and back.model.obs_name == "target"
    with pytest.raises(ValueError, match="plate_name"):
        BayesianNetwork(nn.Linear(1, 1), plate_name="x", obs_name="x")


def test_the_model_wrapped_in_your_own_data_plate_works():
    """The standard Pyro subsampling idiom: the whole model call inside the user's data plate.
    The weights and the noise stay global (no plate, scale 1), the observations are scored in
    the user's plate with its N / batch scaling, and no second data plate is opened."""
    N, B = 200, 25
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-2, 2, N).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(N, generator=g)
    m = BayesianNetwork(nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)))

    def wrapped(x, y=None):
        with pyro.plate("data", N, subsample_size=B) as idx:
            return m(x[idx], None if y is None else y[idx])

    tr = pyro.poutine.trace(wrapped).get_trace(x, y)
    tr.compute_log_prob()
    for site in m.site_names:
        assert tr.nodes[site]["cond_indep_stack"] == () and tr.nodes[site]["value"].shape == m.latent_sites()[site].shape
    assert [f.name for f in tr.nodes["obs"]["cond_indep_stack"]] == ["data"]
    assert float(tr.nodes["obs"]["scale"]) == pytest.approx(N / B)
    assert tr.nodes["obs"]["value"].shape == (B,)
    # the same log joint as the network's own subsampled plate on the same rows
    idx = tr.nodes["data"]["value"]
    own = pyro.poutine.trace(pyro.poutine.condition(m, data={k: tr.nodes[k]["value"] for k in m.site_names})).get_trace(
        x[idx], y[idx], num_data=N)
    torch.testing.assert_close(own.log_prob_sum(), tr.log_prob_sum() - tr.nodes["data"].get("log_prob_sum", 0.0))
    # an autoguide treats the weights as global and SVI trains through the idiom
    guide = pyro.infer.autoguide.AutoNormal(wrapped)
    svi = pyro.infer.SVI(wrapped, guide, pyro.optim.Adam({"lr": 3e-2}), pyro.infer.Trace_ELBO())
    for _ in range(1500):
        svi.step(x, y)
    assert dict(guide.named_parameters())["locs.0.weight_unconstrained"].shape == (16, 1)  # one global set
    post = pyrobdl.from_pyro(m, guide=guide)
    rmse = float((post.predict(x).mean - torch.sin(2 * x[:, 0])).pow(2).mean().sqrt())
    assert rmse < 0.2, rmse
    # a plate that does not select the rows given, or num_data beside it, is a clear error
    with pytest.raises(ValueError, match="pass the rows it selects"):
        with pyro.plate("data", N, subsample_size=B):
            m(x, y)
    with pytest.raises(ValueError, match="leave num_data out"):
        with pyro.plate("data", N, subsample_size=B) as idx:
            m(x[idx], y[idx], num_data=N)
    # without a plate of the user's, the network opens its own subsampled one
    tr = pyro.poutine.trace(m).get_trace(x[:B], y[:B], num_data=N)
    tr.compute_log_prob()
    assert float(tr.nodes["obs"]["scale"]) == pytest.approx(N / B)


# ------------------------------------------------------------------ num_samples
def test_one_meaning_of_num_samples_for_a_fixed_set():
    assert finite_draw_index(5, None) is None and finite_draw_index(5, 5) is None
    assert finite_draw_index(10, 3).tolist() == [0, 4, 9]
    with pytest.warns(UserWarning, match="each is used 3 or 4 times"):
        idx = finite_draw_index(3, 10)
    assert torch.bincount(idx).tolist() == [4, 3, 3]
    with pytest.raises(ValueError):
        finite_draw_index(3, 0)


class EmbSeq(nn.Module):
    """Token ids (N, T) -> embedding -> mean over T -> Linear."""

    def __init__(self, vocab=10):
        super().__init__()
        self.emb = nn.Embedding(vocab, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.emb(x).mean(1))


_NETS = {
    "lstm": (lambda: RNNReg(nn.LSTM, hidden=4), "float"),
    "gru": (lambda: RNNReg(nn.GRU, hidden=4), "float"),
    "embedding": (EmbSeq, "tokens"),
    "attention": (lambda: AttnReg(), "float"),
}
_METHODS = {
    "mean-field": dict(num_steps=20),
    "nuts": dict(num_samples=6, warmup_steps=6, num_chains=1, max_tree_depth=3),
    "mc-dropout": dict(num_steps=20, weight_decay=0.0),
    "ensemble": dict(size=2, num_steps=20),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(_METHODS))
@pytest.mark.parametrize("net", list(_NETS))
def test_every_method_fits_and_predicts_every_kind_of_net(net, method):
    """The matrix of the issue: LSTM / GRU / Embedding / attention nets with mean-field, a tiny
    NUTS, MC dropout and the ensemble (tiny runs: the numbers checked are the shapes, finite
    values and a non-negative split; the fits above check quality)."""
    make, kind = _NETS[net]
    g = torch.Generator().manual_seed(0)
    if kind == "tokens":
        x = torch.randint(0, 10, (24, 3), generator=g)
        y = 0.2 * x.float().mean(1) + 0.05 * torch.randn(24, generator=g)
    else:
        x, y = _seq_data(24, 3)
    post = _quiet_fit(BayesianNetwork(make()), x, y, method, **_METHODS[method])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = post.predict(x[:5], num_samples=4 if method != "nuts" else None)
    assert pred.mean.shape == (5,) and bool(torch.isfinite(pred.mean).all())
    assert bool((pred.epistemic_variance >= 0).all()) and bool((pred.aleatoric_variance > 0).all())
    if method in ("mean-field", "nuts", "ensemble"):  # draws of the weights differ: a spread
        assert float(pred.epistemic_std.max()) > 0
