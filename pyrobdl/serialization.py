"""Saving and loading posteriors as plain state dicts.

A saved file holds only tensors and plain Python data (dicts, lists, strings,
numbers), written with :func:`torch.save` and read with
``torch.load(weights_only=True)``, so a crafted file cannot run code on load.

The network's architecture is stored as a spec when it is built from standard
``torch.nn`` layers (``nn.Sequential`` of Linear, Conv, activations, Dropout,
Flatten, normalisation and pooling layers). For any other network, pass the
model to :func:`load`: ``pyrobdl.load(path, model=BayesianNetwork(MyNet(), ...))``.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict, Optional

import torch
from torch import nn

from . import __version__
from . import likelihoods as _lik
from . import priors as _priors
from ._util import parse_device
from .network import BayesianNetwork

__all__ = ["save", "load"]

FORMAT = "pyrobdl-posterior"
FORMAT_VERSION = 1

# layer type -> constructor argument names read back from attributes
_LAYERS: Dict[str, tuple] = {
    "Linear": ("in_features", "out_features", "bias"),
    "Conv1d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode"),
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode"),
    "Conv3d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode"),
    "BatchNorm1d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "BatchNorm2d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "LayerNorm": ("normalized_shape", "eps", "elementwise_affine"),
    "Dropout": ("p",),
    "Dropout2d": ("p",),
    "Flatten": ("start_dim", "end_dim"),
    "MaxPool2d": ("kernel_size", "stride", "padding"),
    "AvgPool2d": ("kernel_size", "stride", "padding"),
    "AdaptiveAvgPool2d": ("output_size",),
    "LeakyReLU": ("negative_slope",),
    "ELU": ("alpha",),
    "Softplus": ("beta", "threshold"),
    "ReLU": (),
    "Tanh": (),
    "Sigmoid": (),
    "GELU": (),
    "SiLU": (),
    "Identity": (),
}


def _plain(v):
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, torch.Tensor):  # bias attribute of Linear is a Parameter
        return True
    return v


def net_to_spec(net: nn.Module) -> Optional[dict]:
    """Plain-data architecture of a network of standard layers, or ``None``."""
    t = type(net).__name__
    if type(net) is nn.Sequential:
        children = [net_to_spec(m) for m in net]
        if any(c is None for c in children):
            return None
        return {"type": "Sequential", "children": children}
    if t in _LAYERS and type(net).__module__.startswith("torch.nn"):
        args = {}
        for a in _LAYERS[t]:
            v = getattr(net, a)
            if a == "bias":
                v = v is not None and v is not False
            args[a] = _plain(v)
        return {"type": t, "args": args}
    return None


def spec_to_net(spec: dict) -> nn.Module:
    t = spec["type"]
    if t == "Sequential":
        return nn.Sequential(*[spec_to_net(c) for c in spec["children"]])
    if t not in _LAYERS:
        raise ValueError(f"unknown layer type {t!r} in saved file")
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec["args"].items()}
    return getattr(nn, t)(**args)


def _plain_data(obj) -> bool:
    """Whether ``obj`` is what ``torch.load(weights_only=True)`` reads back: tensors, numbers,
    strings, ``None`` and lists/dicts of them."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(obj, (list, tuple)):
        return all(_plain_data(v) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain_data(v) for k, v in obj.items())
    return False


def prior_config(prior) -> dict:
    """The prior's :meth:`~pyrobdl.priors.Prior.to_config`, or, for a prior that cannot be
    stored as data (no ``to_config``, a callable argument, a ``PerSite`` keyed by module type),
    a placeholder ``{"type": class name, "unsaved": why}``: the posterior still saves, and
    :func:`load` then asks for ``model=``."""
    name = type(prior).__name__
    try:
        cfg = prior.to_config()
    except (NotImplementedError, ValueError, TypeError) as e:
        return {"type": name, "unsaved": " ".join(str(e).split()) or f"{name}.to_config() failed"}
    if not isinstance(cfg, dict) or not _plain_data(cfg):
        return {"type": name, "unsaved": f"{name}.to_config() returned something other than plain data (numbers, "
                "strings, lists, dicts, tensors)"}
    return cfg


def _prior_from_saved(cfg, path):
    """The saved prior, or a ``ValueError`` that names its class and the two ways to load it."""
    name = cfg.get("type") if isinstance(cfg, dict) else None
    with_model = (f"pass the model: pyrobdl.load(path, model=BayesianNetwork(net, prior={name or 'MyPrior'}(...), "
                  "likelihood=...))")
    if isinstance(cfg, dict) and "unsaved" in cfg:
        raise ValueError(
            f"{str(path)!r} was saved with a {name} prior that cannot be rebuilt from the file ({cfg['unsaved']}); "
            f"{with_model}, or give {name} to_config() (and from_config()) returning plain data, register it with "
            "@pyrobdl.priors.register_prior, and save again"
        )
    if isinstance(name, str) and name not in _priors.available_priors():
        raise ValueError(
            f"{str(path)!r} was saved with the prior class {name!r}, which is not registered in this process; "
            f"either register it before loading (decorate {name} with @pyrobdl.priors.register_prior and import "
            f"it), or {with_model}"
        )
    _check_finite(cfg, "model['prior']", path)
    try:
        return _priors.prior_from_config(cfg)
    except ValueError as e:
        if "register_prior" in str(e):  # an unregistered prior nested in a PerSite
            raise ValueError(f"{str(path)!r} holds a prior that cannot be rebuilt: {e}") from None
        raise ValueError(f"{str(path)!r} has a corrupt prior description: {e}") from None
    except (KeyError, TypeError) as e:
        raise ValueError(f"{str(path)!r} has a corrupt prior description: {type(e).__name__}: {e}") from None


def model_config(model: BayesianNetwork) -> dict:
    return {
        "prior": prior_config(model.prior),
        "likelihood": model.likelihood.to_config(),
        "bayesian": list(model.bayesian_parameters),
        "name": model.name,
        **dict(getattr(model, "_names", {})),
        "net_spec": net_to_spec(model.net),
        "input_shape": None if model.input_shape is None else [int(d) for d in model.input_shape],
        "integer_inputs": model.integer_inputs,
    }


def save(posterior, path) -> None:
    """Save a fitted posterior to ``path`` (the same as ``posterior.save(path)``).

    The file holds state dicts, tensors and plain Python values only, so
    :func:`load` reads it with ``torch.load(weights_only=True)``: no code runs
    when it is loaded.

    Example::

        pyrobdl.serialization.save(posterior, "post.pt")
        posterior = pyrobdl.load("post.pt")
    """
    recalibrator = getattr(posterior, "recalibrator", None)  # a pyrobdl.calibration.RecalibratedPosterior
    if recalibrator is not None:
        posterior = posterior.posterior
    # a posterior of a plain Pyro model (pyrobdl.from_pyro) describes its own file: there is no network to describe
    file_state = getattr(posterior, "file_state", None)
    state = file_state() if callable(file_state) else None
    if state is None:
        model = posterior.model
        state = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "pyrobdl_version": __version__,
            "method": posterior.method,
            "posterior_class": type(posterior).__name__,
            "model": model_config(model),
            "net_state": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
            "posterior": posterior.get_state(),
        }
    if recalibrator is not None:
        state["recalibration"] = {
            "method": recalibrator.name,
            "level": recalibrator.level,
            "num_calibration": recalibrator.num_calibration,
            "state": recalibrator.get_state(),
        }
    torch.save(state, path)


save_posterior = save  # the name pyrobdl.inference.base uses


def load(path, *, model: Optional[BayesianNetwork] = None, map_location=None):
    """Load a posterior saved with ``posterior.save(path)``.

    Args:
        path: the file.
        model: a :class:`~pyrobdl.BayesianNetwork` with the same architecture,
            required when the network is not a plain stack of standard layers.
            Its weights are overwritten by the saved ones.
        map_location: device to load onto (default CPU).

    Returns:
        the posterior, predicting exactly as it did when saved.

    Raises:
        ValueError: the file is not a pyrobdl posterior, is corrupt, or holds
            objects that would run code when unpickled (refused).

    Example:
        >>> import os, tempfile, torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods, inference
        >>> x = torch.linspace(-1, 1, 20).unsqueeze(-1); y = x[:, 0] ** 2
        >>> model = BayesianNetwork(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)),
        ...                         prior=priors.Normal(), likelihood=likelihoods.Gaussian(scale=0.1))
        >>> posterior = inference.MeanField(num_steps=20, progress=False).fit(model, x, y)
        >>> path = os.path.join(tempfile.mkdtemp(), "posterior.pt")
        >>> posterior.save(path)
        >>> loaded = load(path)            # the architecture is stored as data: no model needed
        >>> type(loaded).__name__, loaded.model.site_names == model.site_names
        ('SVIPosterior', True)
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    _check_map_location(map_location)
    try:
        state = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "global" in msg.lower():
            culprit = next((ln.strip() for ln in msg.splitlines() if "global" in ln.lower()), "")
            raise ValueError(
                f"refused to load {str(path)!r}: it holds objects that would run code when unpickled "
                f"({culprit}); pyrobdl only loads plain state files with torch.load(weights_only=True)"
            ) from None
        raise ValueError(f"could not read {str(path)!r} as a pyrobdl posterior file (corrupt or not a torch file)") from None
    except Exception as e:  # zip/pickle corruption of all kinds
        raise ValueError(
            f"could not read {str(path)!r} as a pyrobdl posterior file (corrupt or not a torch file): "
            f"{type(e).__name__}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a pyrobdl posterior file (saved with posterior.save)")
    version = state.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{path!r} is corrupt: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} was written by a newer pyrobdl (format {version}); upgrade pyrobdl to load it"
        )
    for key, kind in (("method", str), ("model", dict), ("net_state", dict), ("posterior", dict)):
        if not isinstance(state.get(key), kind):
            raise ValueError(
                f"{path!r} is corrupt: {key!r} is missing or not a {kind.__name__} "
                f"(got {type(state.get(key)).__name__}); save the posterior again with posterior.save(path)"
            )
    _check_finite(state["net_state"], "net_state", path)
    _check_finite(state["posterior"], "posterior", path)
    from .inference.registry import get_posterior

    cfg = state["model"]
    if cfg.get("kind") == "pyro":  # a posterior of a plain Pyro model (pyrobdl.from_pyro): the model is passed back
        try:
            loader = get_posterior(state["method"]).load_file
        except (ValueError, AttributeError) as e:
            raise ValueError(f"{path!r} holds a posterior of a plain Pyro model of an unknown kind: {e}") from None
        posterior = loader(state, model, path)
        if map_location is not None:
            posterior.to(map_location)
        if "recalibration" in state:
            posterior = _recalibrated(posterior, state["recalibration"], path)
        return posterior
    if model is None:
        if cfg.get("net_spec") is None:
            raise ValueError(
                f"{path!r} holds a custom network whose architecture cannot be stored as data; "
                "pass the model: pyrobdl.load(path, model=BayesianNetwork(MyNet(), prior=..., likelihood=...))"
            )
        net = _net_from_spec(cfg["net_spec"], state["net_state"], path)
        prior = _prior_from_saved(cfg.get("prior"), path)
        try:
            model = BayesianNetwork(
                net,
                prior=prior,
                likelihood=_lik.get_likelihood(cfg["likelihood"]),
                bayesian=cfg["bayesian"],
                name=cfg["name"],
                **{k: cfg[k] for k in ("plate_name", "obs_name") if isinstance(cfg.get(k), str)},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path!r} has a corrupt model description: {type(e).__name__}: {e}") from None
    elif not isinstance(model, BayesianNetwork):
        raise TypeError(f"model must be a pyrobdl.BayesianNetwork, got {type(model).__name__}")
    try:
        model.net.load_state_dict(state["net_state"])
    except RuntimeError as e:
        raise ValueError(f"the saved weights do not fit the given model's network: {e}") from None
    if map_location is not None:
        model.to(map_location)
    shape = cfg.get("input_shape")
    if shape is not None:
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"{path!r} has a malformed input_shape {shape!r}; it must be a list of sizes")
        model.input_shape = tuple(shape)
    if isinstance(cfg.get("integer_inputs"), bool):
        model.integer_inputs = cfg["integer_inputs"]
    try:
        cls = get_posterior(state["method"])
    except ValueError as e:
        raise ValueError(f"{path!r} holds a posterior of method {state['method']!r}: {e}") from None
    try:
        posterior = cls.from_state(model, state["posterior"])
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError) as e:
        raise ValueError(
            f"{path!r} holds a corrupt {state['method']} posterior state ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}); save the posterior again with posterior.save(path)"
        ) from None
    if "recalibration" in state:
        posterior = _recalibrated(posterior, state["recalibration"], path)
    return posterior


def _recalibrated(posterior, rec, path):
    """The loaded posterior wrapped in the saved recalibrator (see :mod:`pyrobdl.calibration`)."""
    from .calibration import RecalibratedPosterior, get_recalibrator

    if not isinstance(rec, dict) or not isinstance(rec.get("method"), str) or not isinstance(rec.get("state"), dict):
        raise ValueError(f"{path!r} has a corrupt recalibration entry; save the recalibrated posterior again")
    _check_finite(rec["state"], "recalibration", path)
    try:
        cls = get_recalibrator(rec["method"])
        recal = cls(level=rec["level"])
        recal.set_state(rec["state"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise ValueError(
            f"{path!r} holds a corrupt {rec.get('method')!r} recalibration ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}); save the recalibrated posterior again"
        ) from None
    num = rec.get("num_calibration")
    recal.num_calibration = int(num) if isinstance(num, int) and not isinstance(num, bool) else None
    return RecalibratedPosterior(posterior, recal)


def _check_map_location(map_location) -> None:
    """A CUDA ``map_location`` on a machine without CUDA is an error that says so."""
    if map_location is None or callable(map_location) or isinstance(map_location, dict):
        return
    parse_device(map_location, "map_location", "load with the default map_location (CPU) instead")


def _check_finite(obj, where: str, path) -> None:
    """Every floating tensor in ``obj`` (nested dicts/lists) is finite."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            raise ValueError(f"{path!r} is corrupt: {where} holds NaN or infinite values")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}[{k!r}]", path)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]", path)


def _net_from_spec(spec, net_state: Dict[str, Any], path) -> nn.Module:
    """The network a spec describes, built on the meta device first so that nothing is
    allocated before its parameter and buffer shapes are checked against the saved tensors
    (a file cannot make ``load`` allocate more than the tensors it holds)."""
    try:
        with torch.device("meta"):
            meta = spec_to_net(spec)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise ValueError(f"{path!r} has a corrupt network spec: {type(e).__name__}: {e}") from None
    want = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in net_state.items() if isinstance(v, torch.Tensor)}
    if want != have:
        bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))[:5]
        raise ValueError(
            f"{path!r} is corrupt: its network spec does not match its saved weights "
            f"({', '.join(f'{k}: spec {want.get(k)}, saved {have.get(k)}' for k in bad)})"
        )
    return spec_to_net(spec)
