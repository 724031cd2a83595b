"""Inference algorithms. Each ``Algorithm(**settings).fit(model, x, y)`` returns a
:class:`~pyrobdl.inference.base.Posterior` with one predictive interface."""
from .base import Draws, Inference, Posterior, fit
from .registry import available_methods, get_method, methods, register_method
from .svi import FullRank, LowRank, MeanField, SVIPosterior
from .mcmc import HMC, NUTS, ChEESHMC, ChEESPosterior, MCMCPosterior
from .dropout import DropConnectPosterior, DropoutPosterior, MCDropConnect, MCDropout
from .ensemble import DeepEnsemble, EnsemblePosterior
from .swag import MultiSWAG, MultiSWAGPosterior, SWAG, SWAGMoments, SWAGPosterior
from .sgmcmc import SGHMC, SGLD, CyclicalSGMCMC, SGMCMCPosterior
from .laplace import Laplace, LaplacePosterior
from .subensemble import HeadSplit, SubEnsemble, SubEnsemblePosterior
from .pyro_bridge import PyroMCMCPosterior, PyroPosterior, from_pyro
from .local import flipout, local_reparameterization
from .optim import FitProgress
from .continual import next_task_model, posterior_as_prior

__all__ = [
    "Inference",
    "Posterior",
    "Draws",
    "methods",
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
    "SWAG",
    "MultiSWAG",
    "SWAGPosterior",
    "MultiSWAGPosterior",
    "SWAGMoments",
    "SGLD",
    "SGHMC",
    "CyclicalSGMCMC",
    "SGMCMCPosterior",
    "Laplace",
    "LaplacePosterior",
    "SubEnsemble",
    "SubEnsemblePosterior",
    "HeadSplit",
    "NUTS",
    "HMC",
    "ChEESHMC",
    "ChEESPosterior",
    "MCMCPosterior",
    "from_pyro",
    "PyroPosterior",
    "PyroMCMCPosterior",
    "local_reparameterization",
    "flipout",
    "FitProgress",
    "posterior_as_prior",
    "next_task_model",
]
