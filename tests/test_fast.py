"""pyrobdl._fast: the Linear-chain fast path (recognition, forward, the one switch) and the
predictive engine (its chunk policy, max_memory and chunk_size honoured)."""
import math

import pytest
import torch
from torch import nn

from pyrobdl import BayesianNetwork, priors
from pyrobdl._fast import chain, engine, general_path


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return self.s * x


class _MyReLU(nn.ReLU):
    def forward(self, x):
        return super().forward(x) - 0.1


# ----------------------------------------------------------------------------- the chain path
def test_chain_detection_accepts_linear_chains_only():
    plan = chain.plan(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Sequential(nn.Linear(4, 4, bias=False), nn.GELU()), nn.Linear(4, 1)))
    assert [(s[0], s[2], s[3]) if s[0] == "linear" else (s[0], type(s[1]).__name__, None) for s in plan.steps] == [
        ("linear", "0.weight", "0.bias"), ("act", "Tanh", None), ("linear", "2.0.weight", None),
        ("act", "GELU", None), ("linear", "3.weight", "3.bias"),
    ]
    rejected = [
        nn.Linear(2, 1),  # not a Sequential (a plain module: its forward is its own)
        nn.Sequential(nn.Linear(2, 4), _Scale(), nn.Linear(4, 1)),  # custom module
        nn.Sequential(nn.Linear(2, 4), _MyReLU(), nn.Linear(4, 1)),  # subclass overriding forward
        nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)),  # buffers, mode-dependent
        nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.1), nn.Linear(4, 1)),  # random in train mode
        nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 1)),
        nn.Sequential(nn.Tanh()),  # no Linear layer
        nn.Sequential(nn.ReLU(inplace=True), nn.Linear(2, 1)),  # would modify the caller's input
    ]
    for net in rejected:
        assert chain.plan(net) is None, net
    hooked = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    hooked[2].register_forward_hook(lambda m, a, out: out * 2)
    assert chain.usable(chain.plan(hooked)) is None
    # dropout modules are the identity in eval mode: the chain skips them while they are
    with_dropout = rejected[4]
    plan = chain.plan(with_dropout, dropout_is_identity=True)
    assert plan is not None and chain.usable(plan) is None  # train mode: not usable
    with_dropout.eval()
    assert chain.usable(plan) is plan
    # in-place activations after the first layer act on fresh activations, as in the net
    inplace = nn.Sequential(nn.Linear(2, 4), nn.ReLU(inplace=True), nn.Linear(4, 1))
    x = torch.randn(5, 2)
    torch.testing.assert_close(chain.forward(chain.plan(inplace), dict(inplace.named_parameters()), x, 0), inplace(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chain_forward_equals_vmap_functional_call(dtype):
    """Every mix of shared and per-sample weights, shared or per-sample inputs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ELU(), nn.Sequential(nn.Linear(8, 8, bias=False), nn.Tanh()), nn.Linear(8, 2)).to(dtype)
    plan = chain.plan(net)
    named = {k: v.detach() for k, v in net.named_parameters()}
    S, N = 4, 6
    stacked = {k: v + 0.1 * torch.randn((S,) + v.shape, dtype=dtype) for k, v in named.items()}
    x = torch.randn(N, 3, dtype=dtype)
    xs = torch.randn(S, N, 3, dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for batched in [set(), {"2.0.weight"}, {"0.weight", "3.bias"}, set(named)]:
        params = {k: stacked[k] if k in batched else v for k, v in named.items()}
        per = {k: stacked[k] for k in batched}
        for inp, in_dim in [(x, None), (xs, 0)]:
            got = chain.forward(plan, params, inp, S)
            got = got if got.dim() == 3 else got.expand(S, N, 2)
            if per:
                want = torch.func.vmap(lambda w, xi: torch.func.functional_call(net, w, (xi,), strict=False),
                                       in_dims=(0, in_dim))(per, inp)
            else:
                want = net(inp).expand(S, N, 2) if in_dim is None else net(inp)
            assert got.shape == (S, N, 2) and got.dtype == dtype
            torch.testing.assert_close(got, want, **tol)


def _counting(monkeypatch):
    calls = []
    real = chain.forward
    monkeypatch.setattr(chain, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_the_switch_forces_the_general_path_in_apply_and_prediction(monkeypatch):
    """One switch for every caller: inside general_path() no chain pass runs, and apply,
    apply with per-sample inputs and outputs_from_samples give the same float64 results."""
    calls = _counting(monkeypatch)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 2)).double()
    model = BayesianNetwork(net, prior=priors.Normal(0.0, 1.0))
    S = 5
    params = {k: v.detach() + 0.1 * torch.randn((S,) + v.shape, dtype=torch.float64) for k, v in net.named_parameters()}
    x = torch.randn(11, 3, dtype=torch.float64)
    xs = torch.randn(S, 11, 3, dtype=torch.float64)
    samples = {model.parameter_site(k): v for k, v in params.items()}
    samples["sigma"] = torch.rand(S, dtype=torch.float64) + 0.5
    results = []
    for general in (False, True):
        calls.clear()
        with general_path() if general else _nothing():
            res = [model.apply(params, x), model.apply(params, xs, batched_inputs=True),
                   model.apply({k: v[0] for k, v in params.items()}, x),
                   model.outputs_from_samples(x, samples)[0],
                   model.outputs_from_samples(x, samples, chunk_size=2, max_memory=600)[0]]
        assert (len(calls) == 0) == general
        results.append(res)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_apply_checks_and_per_sample_inputs():
    model = BayesianNetwork(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)))
    w = model.net[0].weight.detach()
    with pytest.raises(ValueError, match="expected"):
        model.apply({"0.weight": torch.zeros(3, 2, 4)}, torch.randn(5, 2))
    with pytest.raises(ValueError, match="not a parameter"):
        model.apply({"9.weight": w}, torch.randn(5, 2))
    with pytest.raises(ValueError, match="batched_inputs=True"):
        model.apply({"0.weight": w.expand(3, 4, 2)}, torch.randn(5, 2), batched_inputs=True)
    # per-sample inputs = one pass per sample
    xs = torch.randn(3, 5, 2)
    ws = w + 0.1 * torch.randn(3, 4, 2)
    out = model.apply({"0.weight": ws}, xs, batched_inputs=True)
    for s in range(3):
        torch.testing.assert_close(out[s], model.apply({"0.weight": ws[s]}, xs[s]), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- the engine
def test_engine_policy():
    cpu = torch.device("cpu")
    # cache-sized passes on the CPU (8 MiB), equal chunks; rows split only when one sample is too big
    assert engine.plan(1000, 100, row_bytes=800, device=cpu) == (100, 100)
    assert engine.plan(100, 10_000, row_bytes=800, device=cpu) == (1, 10_000)
    assert engine.plan(10, 100_000, row_bytes=800, device=cpu) == (1, engine.CPU_PASS_BYTES // 800)
    # elsewhere: everything max_memory allows
    assert engine.plan(100, 10_000, row_bytes=800, device=torch.device("meta")) == (50, 10_000)  # 67 fit: 2 equal chunks
    # a given chunk_size is kept; rows are split only for max_memory
    assert engine.plan(100, 10_000, row_bytes=800, chunk_size=50, device=cpu) == (50, 10_000)
    assert engine.plan(100, 10_000, row_bytes=800, chunk_size=50, max_memory=2**20, device=cpu) == (50, 26)
    # per-sample bytes (sampled weights) count against the pass
    assert engine.plan(100, 10, row_bytes=800, sample_bytes=2**20, device=cpu) == (7, 10)


@pytest.mark.parametrize("chain_net", [True, False])
def test_engine_honours_max_memory_and_chunk_size(chain_net, monkeypatch):
    """Count the passes: chunk_size samples per pass, and no pass over max_memory bytes."""
    torch.manual_seed(0)
    mid = nn.Tanh() if chain_net else nn.LayerNorm(16)
    model = BayesianNetwork(nn.Sequential(nn.Linear(2, 16), mid, nn.Linear(16, 1)))
    assert (model._chain() is not None) == chain_net
    S, N = 12, 50
    samples = {n: s.prior.sample((S,)) for n, s in model.latent_sites().items()}
    x = torch.randn(N, 2)
    passes = []
    real = engine.run

    def spy(fn, S_, x_, **kw):
        def counted(s0, s1, xr, dest):
            passes.append((s1 - s0, xr.shape[0]))
            return fn(s0, s1, xr, dest)
        return real(counted, S_, x_, **kw)

    monkeypatch.setattr(engine, "run", spy)
    ref, _ = model.outputs_from_samples(x, samples)
    assert passes == [(S, N)]  # small: one pass
    row = model.row_bytes(x)
    for chunk_size, max_memory in [(5, None), (None, 7 * 10 * row), (4, 4 * 9 * row)]:
        passes.clear()
        out, _ = model.outputs_from_samples(x, samples, chunk_size=chunk_size, max_memory=max_memory)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        assert sum(s * r for s, r in passes) == S * N  # every (sample, row) once
        if chunk_size is not None:
            assert max(s for s, _ in passes) == chunk_size
        if max_memory is not None:
            assert max(s * r for s, r in passes) * row <= max_memory
            assert len(passes) == math.ceil(S / passes[0][0]) * math.ceil(N / passes[0][1])


def test_engine_replays_the_random_state_for_every_row_chunk():
    x = torch.zeros(10, 3)

    def noisy(s0, s1, xr, dest):  # a mask whose shape does not depend on the rows
        return xr + torch.randn(s1 - s0, 1, 3)

    torch.manual_seed(0)
    one = engine.run(noisy, 4, x, chunk=4, rows=10)
    torch.manual_seed(0)
    split = engine.run(noisy, 4, x, chunk=4, rows=3, replay_rng=True)
    torch.testing.assert_close(one, split)
