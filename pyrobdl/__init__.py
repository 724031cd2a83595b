"""pyrobdl: Bayesian deep learning on Pyro.

Make any torch network Bayesian, fit it with mean-field / low-rank / full-rank
SVI, HMC/NUTS, MC dropout, MC DropConnect or a deep ensemble, and get one
predictive interface that splits uncertainty into epistemic and aleatoric parts.

Example::

    import torch.nn as nn, pyrobdl
    from pyrobdl import BayesianNetwork, priors, likelihoods, inference

    net = nn.Sequential(nn.Linear(1, 50), nn.Tanh(), nn.Linear(50, 1))
    model = BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    posterior = inference.MeanField(num_steps=3000, lr=1e-2).fit(model, x, y)
    pred = posterior.predict(x_test, num_samples=100)
    pred.mean, pred.epistemic_variance, pred.aleatoric_variance
    pyrobdl.calibration.recalibrate(posterior, x_val, y_val, method="conformal")  # intervals with a guarantee
"""
__version__ = "0.1.0"

from . import likelihoods, priors  # noqa: E402
from .network import BayesianNetwork  # noqa: E402
from .prediction import ClassificationPrediction, Prediction, RegressionPrediction  # noqa: E402
from . import inference  # noqa: E402
from .inference.base import fit  # noqa: E402
from .inference.pyro_bridge import from_pyro  # noqa: E402
from .inference.registry import available_methods  # noqa: E402
from .serialization import load  # noqa: E402
from . import datasets, metrics  # noqa: E402


def __getattr__(name):
    # pyrobdl.plots (and matplotlib.pyplot with it) and pyrobdl.calibration (and scikit-learn)
    # are imported on first use, not by `import pyrobdl`
    if name in ("plots", "calibration"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "__version__",
    "BayesianNetwork",
    "priors",
    "likelihoods",
    "inference",
    "fit",
    "from_pyro",
    "load",
    "available_methods",
    "Prediction",
    "RegressionPrediction",
    "ClassificationPrediction",
    "datasets",
    "metrics",
    "plots",
    "calibration",
]
