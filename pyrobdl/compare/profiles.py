"""What the comparison protocol fixes, as data, and the per-method settings
:func:`pyrobdl.compare.compare` passes to each method.

The library defaults of a method are its class's own (``MeanField()``, ``NUTS()``,
...). A *profile* changes only what a benchmark protocol needs changed:

* the toy profile (:data:`TOY_OPTIONS`, for :data:`TOY_DATASETS`): 500 training
  points, fewer steps, so that the default ``pyrobdl compare`` with every method
  finishes in under two minutes on two CPU cores;
* the quick profile (:data:`QUICK_OPTIONS`, ``quick=True``): tiny settings for
  smoke tests (seconds, not quality).

A method that a profile does not name simply runs with its class defaults, so a
newly registered method needs no entry here. The user's ``config`` (a mapping
``method -> options``, from a dict or a YAML/JSON file) is applied last.

The measurements behind the defaults are on the docs page "How the defaults were
chosen" (``docs/defaults.rst``).

Example::

    from pyrobdl.compare.profiles import method_options
    method_options("nuts", toy=True)["max_tree_depth"]      # 6
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from ..inference.registry import get_method

__all__ = [
    "TOY_DATASETS",
    "REFERENCE_METHOD",
    "TOY_PRIOR",
    "HIDDEN",
    "QUICK_HIDDEN",
    "NUM_SAMPLES",
    "QUICK_NUM_SAMPLES",
    "TOY_OPTIONS",
    "QUICK_OPTIONS",
    "accepted_options",
    "option_defaults",
    "load_config",
    "method_options",
    "effective_options",
    "profile_name",
]

PathLike = Union[str, os.PathLike]

#: The 1-D toy datasets, which get the toy profile.
TOY_DATASETS = ("toy-regression", "sinusoid")

#: The prior on the toys: i.i.d. ``Normal(0, 1)`` (a :func:`pyrobdl.priors.prior_from_config`
#: config). Other data use :class:`~pyrobdl.network.BayesianNetwork`'s default prior.
TOY_PRIOR: Dict[str, Any] = {"type": "Normal", "loc": 0.0, "scale": 1.0}

#: The reference posterior of a comparison: when it is among the methods, it runs first and
#: every other method's report gains its distance to this method's predictive on the test
#: inputs (:func:`pyrobdl.compare.evaluation.reference_distances`). ChEES-HMC is the sampler
#: that converges on the toy and UCI networks in the comparison's time (many chains, pooled
#: adaptation); ``pyrobdl.fit(model, x, y, method=REFERENCE_METHOD)`` runs it with the same
#: defaults.
REFERENCE_METHOD = "chees-hmc"

#: Hidden units (the UCI protocol's width; a UCI dataset's own ``n_hidden`` wins).
HIDDEN = 50
#: Hidden units with ``quick=True``.
QUICK_HIDDEN = 20
#: Predictive samples per prediction.
NUM_SAMPLES = 100
#: Predictive samples per prediction with ``quick=True``.
QUICK_NUM_SAMPLES = 20

#: Settings for the 1-D toys (500 training points): fewer steps, so the default
#: ``pyrobdl compare`` (every method) finishes in under two minutes on two CPU cores.
TOY_OPTIONS: Dict[str, Dict[str, Any]] = {
    "mean-field": {"num_steps": 2500, "lr": 3e-2, "lr_decay": 0.1, "kl_warmup": 0, "estimator": "reparam"},
    "low-rank": {"num_steps": 2500, "lr": 3e-2, "lr_decay": 0.1},
    "full-rank": {"num_steps": 2500, "lr": 3e-2, "lr_decay": 0.1},
    "mc-dropout": {"num_steps": 3000, "lr": 1e-2, "p": 0.05, "layers": None, "weight_decay": "prior"},
    "mc-dropconnect": {"num_steps": 3000, "lr": 1e-2, "p": 0.05},
    "ensemble": {"size": 5, "num_steps": 2000, "lr": 1e-2, "epochs": None, "batch_size": None},
    "nuts": {"num_samples": 200, "warmup_steps": 200, "num_chains": 2, "max_tree_depth": 6},
    "hmc": {"num_samples": 200, "warmup_steps": 200, "num_chains": 2, "num_steps": 20},
    "chees-hmc": {"num_samples": 100, "warmup_steps": 300},
}

#: Tiny settings for ``quick=True`` (smoke tests: seconds, not quality).
QUICK_OPTIONS: Dict[str, Dict[str, Any]] = {
    "mean-field": {"num_steps": 200, "lr": 3e-2, "kl_warmup": 0, "estimator": "reparam"},
    "low-rank": {"num_steps": 200, "lr": 3e-2},
    "full-rank": {"num_steps": 200, "lr": 3e-2},
    "mc-dropout": {"num_steps": 200, "lr": 1e-2},
    "mc-dropconnect": {"num_steps": 200, "lr": 1e-2},
    "ensemble": {"size": 3, "num_steps": 200, "lr": 1e-2, "epochs": None, "batch_size": None},
    "nuts": {"num_samples": 30, "warmup_steps": 30, "num_chains": 2, "max_tree_depth": 4, "diagnose": False},
    "hmc": {"num_samples": 30, "warmup_steps": 30, "num_chains": 2, "num_steps": 8, "diagnose": False},
    "chees-hmc": {"num_samples": 30, "warmup_steps": 30, "num_chains": 8, "init_steps": 20, "compile": False,
                  "diagnose": False},
    "swag": {"epochs": 5, "swag_epochs": 5},
    "multi-swag": {"epochs": 5, "swag_epochs": 5, "size": 2},
    "sgld": {"num_samples": 10, "warmup_steps": 50, "init_steps": 50, "num_chains": 2},
    "sghmc": {"num_samples": 10, "warmup_steps": 50, "init_steps": 50, "num_chains": 2},
    "cyclical-sgmcmc": {"num_cycles": 2, "samples_per_cycle": 5, "init_steps": 50, "num_chains": 2},
    "laplace": {"num_steps": 200, "batch_size": None},
    "sub-ensemble": {"size": 3, "num_steps": 100, "head_steps": 30},
}


def profile_name(*, toy: bool, quick: bool) -> str:
    """The name of the profile in force: ``"quick"``, ``"toy"`` or ``"default"``.

    Example:
        >>> profile_name(toy=True, quick=False), profile_name(toy=True, quick=True)
        ('toy', 'quick')
    """
    return "quick" if quick else ("toy" if toy else "default")


def option_defaults(cls: type) -> Optional[Dict[str, Any]]:
    """The keyword options ``cls(**options)`` accepts with their defaults, following
    ``**kwargs`` up the MRO; ``None`` when that cannot be told. Options without a
    default map to :data:`inspect.Parameter.empty`.

    Example:
        >>> from pyrobdl.inference import NUTS
        >>> "max_tree_depth" in option_defaults(NUTS)
        True
    """
    found: Dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            return found
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        var_kw = False
        for p in params:
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self":
                found.setdefault(p.name, p.default)
            elif p.kind == p.VAR_KEYWORD:
                var_kw = True
        if not var_kw:
            return found
    return None


def accepted_options(cls: type) -> Optional[set]:
    """Keyword names ``cls(**options)`` accepts (see :func:`option_defaults`);
    ``None`` when that cannot be told (then nothing is filtered).

    Example:
        >>> from pyrobdl.inference import DeepEnsemble
        >>> {"size", "lr", "seed"} <= accepted_options(DeepEnsemble)
        True
    """
    defaults = option_defaults(cls)
    return None if defaults is None else set(defaults)


def _read_config_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"could not read config file {path}: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if path.suffix.lower() == ".json":
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    try:
        import yaml
    except ImportError:
        raise ValueError(
            f"config file {path} is not JSON and PyYAML is not installed; "
            "pip install pyyaml or write the config as JSON"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None


def load_config(config: Union[None, PathLike, Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per-method settings from a mapping or a YAML/JSON file, keyed by the
    methods' canonical names.

    The file (or mapping) is ``{method: {option: value}}``, e.g. in YAML::

        mean-field: {num_steps: 8000, lr: 0.005}
        ensemble:
          size: 10

    ``.json`` files are read as JSON; ``.yaml``/``.yml`` (and anything else
    that is not valid JSON) with PyYAML when it is installed.

    Raises:
        ValueError: unreadable file, not a mapping of mappings, unknown method.

    Example:
        >>> load_config({"mean-field": {"num_steps": 8000}, "ensemble": {"size": 10}})
        {'mean-field': {'num_steps': 8000}, 'ensemble': {'size': 10}}
    """
    if config is None:
        return {}
    if isinstance(config, (str, os.PathLike)):
        data, where = _read_config_file(Path(config)), f"config file {Path(config)}"
    elif isinstance(config, Mapping):
        data, where = config, "config"
    else:
        raise TypeError(f"config must be a file path or a mapping {{method: options}}, got {type(config).__name__}")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must map method names to option mappings, got {type(data).__name__}")
    out: Dict[str, Dict[str, Any]] = {}
    for key, opts in data.items():
        name = get_method(str(key)).name  # ValueError listing the known methods
        if opts is None:
            opts = {}
        if not isinstance(opts, Mapping):
            raise ValueError(f"{where}: the options of {key!r} must be a mapping, got {type(opts).__name__}")
        out.setdefault(name, {}).update({str(k): v for k, v in opts.items()})
    return out


def method_options(
    method: str,
    *,
    toy: bool = False,
    quick: bool = False,
    config: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """The settings :func:`~pyrobdl.compare.compare` passes to
    ``pyrobdl.fit(..., method=method)`` on top of the method's class defaults.

    Merges :data:`TOY_OPTIONS` (``toy``), :data:`QUICK_OPTIONS` (``quick``) and
    ``config[method]``, later winning; without a profile that is the user's
    config alone. Profile settings the method does not accept are dropped (so a
    method may be registered without a profile entry, or with a different
    signature); an unknown option in ``config`` is a ``ValueError``.

    Example:
        >>> method_options("ensemble", quick=True)["size"]
        3
        >>> method_options("ensemble", config={"ensemble": {"size": 10}})
        {'size': 10}
    """
    cls = get_method(method)
    name = cls.name
    opts: Dict[str, Any] = {}
    if toy:
        opts.update(TOY_OPTIONS.get(name, {}))
    if quick:
        opts.update(QUICK_OPTIONS.get(name, {}))
    accepted = accepted_options(cls)
    if accepted is not None:
        opts = {k: v for k, v in opts.items() if k in accepted}
    user = dict((config or {}).get(name, {}))
    if accepted is not None:
        unknown = sorted(set(user) - accepted)
        if unknown:
            raise ValueError(
                f"config: unknown option(s) {', '.join(unknown)} for method {name!r}; "
                f"it accepts: {', '.join(sorted(accepted))}"
            )
    opts.update(user)
    return opts


def effective_options(method: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    """Every setting ``method`` runs with: its class defaults (:func:`option_defaults`,
    less ``progress`` and ``seed``, which :func:`~pyrobdl.compare.compare` sets per run)
    overridden by ``options``; what ``results.json`` records per method.

    Example:
        >>> opts = effective_options("ensemble", {"size": 10})
        >>> opts["size"], "lr" in opts, "seed" in opts
        (10, True, False)
    """
    defaults = option_defaults(get_method(method)) or {}
    out = {
        k: v for k, v in defaults.items()
        if k not in ("progress", "seed") and v is not inspect.Parameter.empty
    }
    out.update(options)
    return out
