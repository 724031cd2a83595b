"""Everything follows the device of the inputs: each method fits and predicts on CUDA.

Skipped where CUDA is not available (``pytest -m cuda`` selects them). Each test
checks that the fitted parameters, the predictive samples and every summary live
on the GPU, that the numbers are finite, and, where the computation is
deterministic given the weights, that the GPU agrees with the CPU on the same
weights (float32 tolerances: 1e-4 relative).
"""
import math

import pytest
import torch
import torch.nn as nn

import pyrobdl
from pyrobdl import BayesianNetwork, inference, likelihoods, metrics, priors

pytestmark = pytest.mark.cuda


def _toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-3, 3, n).unsqueeze(-1)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(n, generator=g)
    return x, y


def _mlp(d_in=1, h=16, d_out=1):
    return nn.Sequential(nn.Linear(d_in, h), nn.Tanh(), nn.Linear(h, d_out))


def _all_cuda(pred):
    for name in ("mean", "variance", "epistemic_variance", "aleatoric_variance"):
        t = getattr(pred, name)
        assert t.is_cuda, name
        assert torch.isfinite(t).all(), name


@pytest.mark.parametrize(
    "method, options",
    [
        ("mean-field", {"num_steps": 60}),
        ("mean-field", {"num_steps": 60, "estimator": "local"}),
        ("mean-field", {"num_steps": 60, "estimator": "flipout"}),
        ("low-rank", {"num_steps": 60}),
        ("full-rank", {"num_steps": 60}),
        ("mc-dropout", {"num_steps": 60}),
        ("mc-dropconnect", {"num_steps": 60}),
        ("ensemble", {"num_steps": 60, "size": 3}),
    ],
)
def test_every_method_fits_and_predicts_on_cuda(method, options, tmp_path):
    x, y = _toy()
    x, y = x.cuda(), y.cuda()
    model = BayesianNetwork(_mlp(), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    post = pyrobdl.fit(model, x, y, method=method, progress=False, **options)
    pred = post.predict(x, num_samples=20)
    _all_cuda(pred)
    assert all(v.is_cuda for v in pred.samples.values())
    lp = pred.log_prob(y)
    assert lp.is_cuda and lp.shape == (64,) and torch.isfinite(lp).all()
    lo, hi = pred.interval(0.9)
    assert lo.is_cuda and bool((lo <= hi).all())
    # save on CUDA, load onto the CPU: the same predictions from the same weights
    path = tmp_path / "post.pt"
    post.save(path)
    loaded = pyrobdl.load(path)
    torch.manual_seed(1)
    a = post.to("cpu").predict(x.cpu(), num_samples=10)
    torch.manual_seed(1)
    b = loaded.predict(x.cpu(), num_samples=10)
    assert a.mean.device.type == "cpu"
    torch.testing.assert_close(a.mean, b.mean)


def test_cuda_and_cpu_predict_agree_on_the_same_weights():
    """The vectorised predictive is the same computation on both devices."""
    x, y = _toy()
    model = BayesianNetwork(_mlp(), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian(scale=0.1))
    post = inference.FullRank(num_steps=100, progress=False).fit(model, x, y)
    gpu_post = post.to("cuda")
    torch.manual_seed(0)
    pred_gpu = gpu_post.predict(x.cuda(), num_samples=200)
    torch.manual_seed(0)
    pred_cpu = post.to("cpu").predict(x, num_samples=200)
    # different RNG streams per device: compare the Monte Carlo estimates within their error
    se = (pred_cpu.variance / 200).sqrt() + (pred_gpu.variance.cpu() / 200).sqrt()
    assert bool(((pred_gpu.mean.cpu() - pred_cpu.mean).abs() <= 5 * se + 1e-4).all())


def test_heteroscedastic_and_classification_on_cuda():
    x, y = _toy()
    x, y = x.cuda(), y.cuda()
    het = BayesianNetwork(_mlp(d_out=2), likelihood=likelihoods.HeteroscedasticGaussian())
    pred = pyrobdl.fit(het, x, y, method="mean-field", num_steps=60, progress=False).predict(x, num_samples=10)
    _all_cuda(pred)
    xc = torch.randn(80, 2, device="cuda")
    yc = (xc[:, 0] > 0).long() + (xc[:, 1] > 0).long()
    for lik in (likelihoods.Categorical(), likelihoods.CategoricalLogitNoise()):
        d_out = 3 if isinstance(lik, likelihoods.Categorical) else 6
        model = BayesianNetwork(_mlp(2, 16, d_out), prior=priors.Normal(0.0, 1.0), likelihood=lik)
        for method in ("mean-field", "ensemble", "mc-dropout"):
            opts = {"num_steps": 60}
            if method == "ensemble":
                opts["size"] = 2
            p = pyrobdl.fit(model, xc, yc, method=method, progress=False, **opts).predict(xc, num_samples=10)
            for name in ("probs", "predictive_entropy", "expected_entropy", "mutual_information"):
                t = getattr(p, name)
                assert t.is_cuda and torch.isfinite(t).all(), (method, name)
            assert math.isfinite(float(metrics.accuracy(p, yc)))
            assert math.isfinite(float(metrics.expected_calibration_error(p, yc)))


def test_nuts_on_cuda():
    x, y = _toy(32)
    x, y = x.cuda(), y.cuda()
    model = BayesianNetwork(_mlp(h=4), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian(scale=0.1))
    post = inference.NUTS(num_samples=30, warmup_steps=30, num_chains=2, progress=False, diagnose=False, seed=0).fit(model, x, y)
    pred = post.predict(x, num_samples=20)
    _all_cuda(pred)
    idata = post.to_arviz()
    assert idata is not None


def test_regression_metrics_on_cuda():
    x, y = _toy()
    x, y = x.cuda(), y.cuda()
    model = BayesianNetwork(_mlp(), likelihood=likelihoods.Gaussian())
    pred = pyrobdl.fit(model, x, y, method="mean-field", num_steps=60, progress=False).predict(x, num_samples=20)
    for fn in (metrics.rmse, metrics.nll, metrics.crps):
        v = fn(pred, y)
        assert math.isfinite(float(v)), fn.__name__


def test_compare_cli_on_cuda(tmp_path):
    from pyrobdl.cli import main

    code = main(["compare", "--quick", "--device", "cuda", "--methods", "mean-field,ensemble,mc-dropout",
                 "--out", str(tmp_path)])
    assert code == 0
    assert (tmp_path / "results.json").exists()
