"""Inference algorithms. Each ``Algorithm(**settings).fit(model, x, y)`` returns a
:class:`~pyrobdl.inference.base.Posterior` with one predictive interface."""
from .base import Inference, Posterior, available_methods, fit, get_method, register_method
from .svi import FullRank, LowRank, MeanField, SVIPosterior
from .baselines import (
    DeepEnsemble,
    DropConnectPosterior,
    DropoutPosterior,
    EnsemblePosterior,
    MCDropConnect,
    MCDropout,
)
from .mcmc import HMC, NUTS, MCMCPosterior

__all__ = [
    "Inference",
    "Posterior",
    "SVIPosterior",
    "MeanField",
    "LowRank",
    "FullRank",
    "available_methods",
    "get_method",
    "register_method",
    "fit",
    "MCDropout",
    "MCDropConnect",
    "DeepEnsemble",
    "DropoutPosterior",
    "DropConnectPosterior",
    "EnsemblePosterior",
    "NUTS",
    "HMC",
    "MCMCPosterior",
]
