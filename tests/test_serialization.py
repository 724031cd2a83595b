"""save/load round trips and refuses files that would run code."""
import os
import pickle

import pytest
import torch
from torch import nn

import pyrobdl
from pyrobdl import BayesianNetwork, inference, likelihoods, priors


def _fit(method="mean-field", net=None, **kw):
    torch.manual_seed(0)
    x = torch.randn(40, 2)
    y = x[:, 0] - x[:, 1] + 0.1 * torch.randn(40)
    net = net or nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    model = BayesianNetwork(net, prior=priors.FanInNormal(), likelihood=likelihoods.Gaussian())
    return pyrobdl.fit(model, x, y, method=method, num_steps=30, progress=False, **kw), x


@pytest.mark.parametrize("method", ["mean-field", "low-rank", "full-rank"])
def test_round_trip_identical_predictions(tmp_path, method):
    post, x = _fit(method)
    path = tmp_path / "post.pt"
    post.save(path)
    loaded = pyrobdl.load(path)
    assert type(loaded) is type(post)
    torch.manual_seed(3)
    a = post.predict(x, num_samples=20)
    torch.manual_seed(3)
    b = loaded.predict(x, num_samples=20)
    assert torch.equal(a.samples["loc"], b.samples["loc"])
    assert torch.equal(a.samples["scale"], b.samples["scale"])


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_custom_net_needs_model(tmp_path):
    post, x = _fit(net=Custom())
    post.save(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="pass the model"):
        pyrobdl.load(tmp_path / "c.pt")
    model = BayesianNetwork(Custom(), prior=priors.FanInNormal(), likelihood=likelihoods.Gaussian())
    loaded = pyrobdl.load(tmp_path / "c.pt", model=model)
    torch.manual_seed(1)
    a = post.predict(x, num_samples=5).mean
    torch.manual_seed(1)
    assert torch.equal(a, loaded.predict(x, num_samples=5).mean)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pyrobdl_pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    if os.path.exists("/tmp/pyrobdl_pwned"):
        os.remove("/tmp/pyrobdl_pwned")
    path = tmp_path / "evil.pt"
    torch.save({"format": "pyrobdl-posterior", "payload": _Evil()}, path)
    with pytest.raises(ValueError, match="refused"):
        pyrobdl.load(path)
    assert not os.path.exists("/tmp/pyrobdl_pwned")


def test_corrupt_and_wrong_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="could not read"):
        pyrobdl.load(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a pyrobdl posterior"):
        pyrobdl.load(other)
    with pytest.raises(FileNotFoundError):
        pyrobdl.load(tmp_path / "missing.pt")
    post, _ = _fit()
    post.save(tmp_path / "p.pt")
    wrong = BayesianNetwork(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)))
    with pytest.raises(ValueError, match="do not fit"):
        pyrobdl.load(tmp_path / "p.pt", model=wrong)


def _tampered(tmp_path, name, change):
    post, _ = _fit()
    good = tmp_path / "good.pt"
    post.save(good)
    state = torch.load(good, weights_only=True)
    change(state)
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("name, change, match", [
    ("no-model", lambda s: s.pop("model"), r"'model' is missing or not a dict"),
    ("empty-posterior", lambda s: s.__setitem__("posterior", {}), r"corrupt svi posterior state \(KeyError: 'family'\)"),
    ("string-version", lambda s: s.__setitem__("format_version", "1"), "format_version must be an integer"),
    ("nan-weights", lambda s: s["net_state"].__setitem__("0.weight", torch.full_like(s["net_state"]["0.weight"], float("nan"))),
     r"net_state\['0.weight'\] holds NaN"),
    ("huge-spec", lambda s: s["model"]["net_spec"]["children"][0]["args"].__setitem__("in_features", 10**12),
     r"spec does not match its saved weights \(0.weight: spec \(\d+, 1000000000000\)"),
    ("bad-spec", lambda s: s["model"]["net_spec"]["children"][0]["args"].__setitem__("in_features", "ten"),
     "corrupt network spec"),
])
def test_tampered_files_are_clear_errors_before_any_allocation(tmp_path, name, change, match):
    """A file from elsewhere decides nothing: every malformed part is a ValueError naming it, and
    a spec asking for a 10^12-wide layer is refused by comparing shapes on the meta device."""
    path = _tampered(tmp_path, name, change)
    with pytest.raises(ValueError, match=match):
        pyrobdl.load(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_map_location_without_cuda_says_so(tmp_path):
    post, _ = _fit()
    post.save(tmp_path / "p.pt")
    with pytest.raises(ValueError, match="CUDA is not available"):
        pyrobdl.load(tmp_path / "p.pt", map_location="cuda")
