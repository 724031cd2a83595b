"""A new inference method is one new file: this test defines a (toy) method and its
posterior here, registers it through the public registry, and uses it in ``pyrobdl.fit``,
``pyrobdl compare``, ``save``/``load`` and ``to_arviz`` without touching any other module."""
import json

import pytest
import torch
import torch.nn as nn

import pyrobdl
from pyrobdl import BayesianNetwork, likelihoods, priors
from pyrobdl.inference import Inference, Posterior, register_method
from pyrobdl.inference import registry


@pytest.fixture
def jitter_method(monkeypatch):
    """Register the toy method for one test only (the registry is restored after)."""
    monkeypatch.setattr(registry, "_ORDER", list(registry._ORDER))
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))

    class JitterPosterior(Posterior):
        """Independent Gaussians around the network's weights; the likelihood's latents
        from their priors."""

        method = "test-jitter"

        def __init__(self, model, scale):
            super().__init__(model)
            self.scale = float(scale)

        def sample_latents(self, num_samples):
            named = dict(self.model.net.named_parameters())
            out = {}
            for name, site in self.model.latent_sites().items():
                if site.param is not None:
                    w = named[site.param].detach()
                    out[name] = w + self.scale * torch.randn((num_samples,) + tuple(w.shape), dtype=w.dtype, device=w.device)
                else:
                    out[name] = site.prior.sample((num_samples,))
            return out

        def get_state(self):
            return {"scale": self.scale}

        @classmethod
        def from_state(cls, model, state):
            return cls(model, state["scale"])

    @register_method
    class Jitter(Inference):
        name = "test-jitter"
        aliases = ("jitter",)
        family = "test"

        def __init__(self, *, scale: float = 0.05, **kwargs):
            super().__init__(**kwargs)
            self.scale = scale

        def _fit(self, model, data):
            return JitterPosterior(model, self.scale)

    return Jitter, JitterPosterior


def _model():
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    return BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian(scale=0.5))


def test_new_method_in_fit_save_load_arviz(jitter_method, tmp_path):
    _, JitterPosterior = jitter_method
    assert "test-jitter" in pyrobdl.available_methods()
    x = torch.linspace(-1, 1, 20).unsqueeze(-1)
    y = x[:, 0] ** 2
    post = pyrobdl.fit(_model(), x, y, method="jitter", scale=0.1, seed=0)
    assert isinstance(post, JitterPosterior) and post.fit_info["method"] == "test-jitter"
    pred = post.predict(x, num_samples=50)
    assert pred.mean.shape == (20,) and float(pred.epistemic_variance.min()) > 0

    path = tmp_path / "jitter.pt"
    post.save(path)
    loaded = pyrobdl.load(path)
    assert isinstance(loaded, JitterPosterior) and loaded.scale == 0.1
    torch.manual_seed(1)
    a = post.predict(x, num_samples=5).mean
    torch.manual_seed(1)
    b = loaded.predict(x, num_samples=5).mean
    assert torch.allclose(a, b)

    idata = post.to_arviz(x, y, num_samples=30)
    assert idata.posterior["0.weight"].shape[:2] == (1, 30)
    assert idata.log_likelihood["obs"].shape == (1, 30, 20)


def test_new_method_in_compare(jitter_method, tmp_path):
    from pyrobdl.compare import compare

    results = compare("toy-regression", methods=["test-jitter", "ensemble"], out=tmp_path / "rep", quick=True, seed=0)
    rec = results["methods"]["test-jitter"]
    assert rec["summary"]["rmse"]["mean"] > 0
    saved = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert "test-jitter" in saved["methods"]
    assert "test-jitter" in (tmp_path / "rep" / "report.md").read_text()
