"""fit(..., callback=): evaluate as you go and stop early, in every optimisation-based method."""
import warnings

import pytest
import torch
import torch.nn as nn

import pyrobdl
from pyrobdl import BayesianNetwork
from pyrobdl.inference.optim import FitProgress


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-2, 2, 64).unsqueeze(-1)
    return x, torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(64, generator=g)


@pytest.mark.parametrize(
    "method,opts,per_epoch",
    [
        ("mean-field", dict(num_steps=120), 1),
        ("low-rank", dict(epochs=30, batch_size=16), 4),
        ("mc-dropout", dict(num_steps=120), 1),
        ("mc-dropconnect", dict(num_steps=120), 1),
        ("ensemble", dict(epochs=40, size=2), 2),  # default batch_size 32 on 64 rows: 2 steps per epoch
    ],
)
def test_callback_sees_each_epoch_and_stops_early(method, opts, per_epoch):
    x, y = _data()
    seen = []

    def callback(progress):
        assert isinstance(progress, FitProgress)
        seen.append((progress.step, progress.epoch, progress.loss))
        if len(seen) == 3:  # the posterior so far predicts at held-out inputs
            pred = progress.posterior.predict(x[:5])
            assert pred.mean.shape == (5,) and bool(torch.isfinite(pred.mean).all())
        return progress.epoch >= 10

    net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = pyrobdl.fit(BayesianNetwork(net), x, y, method=method, progress=False, seed=0, callback=callback, **opts)
    assert [s for s, _, _ in seen] == [per_epoch * k for k in range(1, 11)]
    assert [e for _, e, _ in seen] == list(range(1, 11))
    assert post.fit_info["stopped_at"] == 10 * per_epoch
    assert len(post.fit_info["losses"]) == 10 * per_epoch
    # the reported loss is the mean of the recorded losses since the previous call
    rec = post.fit_info["losses"].reshape(10 * per_epoch, -1).float().mean(-1)
    torch.testing.assert_close(torch.tensor(seen[-1][2]), rec[-per_epoch:].mean(), rtol=1e-4, atol=1e-4)


def test_callback_that_never_stops_runs_every_step_and_bad_callback_errors():
    x, y = _data()
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = pyrobdl.fit(
            BayesianNetwork(nn.Linear(1, 1)), x, y, method="mean-field", num_steps=25, progress=False,
            callback=lambda p: calls.append(p.step),
        )
    assert calls == list(range(1, 26)) and "stopped_at" not in post.fit_info
    with pytest.raises(TypeError, match="callback must be a function"):
        pyrobdl.fit(BayesianNetwork(nn.Linear(1, 1)), x, y, method="ensemble", callback="stop")
