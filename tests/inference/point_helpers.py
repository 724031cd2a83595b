"""Shared pieces of the tests of the point-estimate methods (MC dropout, MC DropConnect, deep
ensembles): small networks (their fixtures are in conftest.py)."""
import torch
from torch import nn

from pyrobdl import BayesianNetwork, likelihoods, priors

METHODS = ["mc-dropout", "mc-dropconnect", "ensemble"]
FAST = dict(num_steps=5, progress=False)


def mlp(d_in=1, d_out=1, h=32):
    return nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d_out))


def regression_model(likelihood=None, d_out=1, prior=None):
    return BayesianNetwork(mlp(d_out=d_out), prior=prior or priors.Normal(0.0, 1.0), likelihood=likelihood or likelihoods.Gaussian())


class Scale(nn.Module):
    """A custom module: the chain path cannot know what it does."""

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(1.5))

    def reset_parameters(self):
        nn.init.uniform_(self.s, 1.0, 2.0)

    def forward(self, x):
        return self.s * x
