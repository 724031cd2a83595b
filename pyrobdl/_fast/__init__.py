"""pyrobdl's fast paths, in one place.

* :mod:`pyrobdl._fast.chain` -- networks that are plain chains of ``nn.Linear`` layers and
  elementwise activations run batched over weight samples with one ``baddbmm`` per layer
  instead of ``vmap(functional_call)``. Entered through
  :meth:`pyrobdl.BayesianNetwork.apply` (and the predictive engine; deep ensembles train
  through :func:`~pyrobdl._fast.chain.member_layout`); one switch,
  :func:`~pyrobdl._fast.chain.general_path` (or ``chain.USE_CHAIN_PATH = False``), sends
  every caller to the general path, which computes the same function.
* :mod:`pyrobdl._fast.engine` -- the one chunked predictive engine: ``S`` predictive
  samples times ``N`` inputs in passes whose activations stay cache-sized on the CPU and
  under ``max_memory`` bytes everywhere.

Example:
    >>> import torch, torch.nn as nn
    >>> from pyrobdl import BayesianNetwork
    >>> from pyrobdl._fast import general_path
    >>> model = BayesianNetwork(nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)))
    >>> params = {k: v.detach().expand((5,) + v.shape) for k, v in model.net.named_parameters()}
    >>> x = torch.randn(3, 2)
    >>> fast = model.apply(params, x)
    >>> with general_path():
    ...     slow = model.apply(params, x)
    >>> fast.shape, bool(torch.allclose(fast, slow, atol=1e-6))
    (torch.Size([5, 3, 1]), True)
"""
from .chain import chain_path_enabled, general_path

__all__ = ["general_path", "chain_path_enabled"]
