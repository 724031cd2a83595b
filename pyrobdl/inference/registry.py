"""The one registry of inference methods and their posterior classes.

A method is an :class:`~pyrobdl.inference.base.Inference` subclass registered with
:func:`register_method` under its ``name`` (and ``aliases``); :func:`pyrobdl.fit`,
``pyrobdl compare`` and the CLI find it here. A posterior class registers itself under
its ``method`` class attribute when it is defined (see
:class:`~pyrobdl.inference.base.Posterior`), which is how :func:`pyrobdl.load` finds
the class that rebuilds a saved posterior. Adding a method is one new module: define
the two classes, decorate the algorithm with :func:`register_method`, import the module.

Example::

    from pyrobdl.inference import Inference, Posterior, register_method

    class PriorPosterior(Posterior):
        method = "prior-only"            # registered for pyrobdl.load
        ...

    @register_method
    class PriorOnly(Inference):
        name = "prior-only"              # pyrobdl.fit(..., method="prior-only")
        ...
"""
from __future__ import annotations

from typing import Dict, List

# Annotations name the classes of :mod:`pyrobdl.inference.base` as ``type``: this module
# imports nothing from the package, so every module may import it.

__all__ = [
    "register_method",
    "register_posterior",
    "get_method",
    "get_posterior",
    "available_methods",
    "methods",
    "normalise_name",
]

_METHODS: Dict[str, type] = {}
_ORDER: List[type] = []
_POSTERIORS: Dict[str, type] = {}


def normalise_name(name: str) -> str:
    """A method name as the registry keys it: lower case, ``_`` read as ``-``.

    Example:
        >>> normalise_name(" Mean_Field ")
        'mean-field'
    """
    return name.strip().lower().replace("_", "-")


def register_method(cls: type) -> type:
    """Class decorator: make an :class:`~pyrobdl.inference.base.Inference` subclass
    available to :func:`pyrobdl.fit` and ``pyrobdl compare`` under its ``name`` (and
    ``aliases``). Registering a class again under the same name replaces the old one
    (so a module can be reloaded).

    Raises:
        TypeError: ``cls`` is not a class with a non-empty string ``name`` and a ``fit``.
    """
    name = getattr(cls, "name", None)
    if not isinstance(cls, type) or not isinstance(name, str) or not name or not callable(getattr(cls, "fit", None)):
        raise TypeError(
            "register_method decorates an Inference subclass with a non-empty class attribute "
            f"`name` and a fit method; got {cls!r}"
        )
    for old in [c for c in _ORDER if c.name == name]:
        _ORDER.remove(old)
    _ORDER.append(cls)
    for key in (name,) + tuple(getattr(cls, "aliases", ())):
        _METHODS[normalise_name(key)] = cls
    return cls


def register_posterior(cls: type) -> type:
    """Register a posterior class under its ``method`` attribute for :func:`pyrobdl.load`
    (done automatically for every :class:`~pyrobdl.inference.base.Posterior` subclass that
    sets ``method``)."""
    key = getattr(cls, "method", "")
    if not isinstance(key, str) or not key:
        raise TypeError(f"a posterior class needs a non-empty string class attribute `method`; got {cls!r}")
    _POSTERIORS[key] = cls
    return cls


def methods() -> List[type]:
    """The registered method classes in registration order (variational inference, MCMC,
    dropout and ensembles, then methods registered by users).

    Example:
        >>> [m.name for m in methods()][:3]
        ['mean-field', 'low-rank', 'full-rank']
    """
    return list(_ORDER)


def available_methods() -> List[str]:
    """Names accepted by ``pyrobdl.fit(..., method=...)``, sorted (aliases such as
    ``"mfvi"`` are accepted too, but not listed).

    Example:
        >>> import pyrobdl
        >>> {"mean-field", "low-rank", "full-rank", "ensemble"} <= set(pyrobdl.available_methods())
        True
    """
    return sorted(c.name for c in _ORDER)


def get_method(name: str) -> type:
    """The :class:`~pyrobdl.inference.base.Inference` class registered under ``name`` or
    one of its aliases (case-insensitive; ``_`` and ``-`` are the same).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: an unknown name (the message lists the known ones).

    Example:
        >>> get_method("mean_field").__name__, get_method("MFVI").__name__
        ('MeanField', 'MeanField')
    """
    if not isinstance(name, str):
        raise TypeError(f"method must be a string, got {type(name).__name__}")
    key = normalise_name(name)
    if key not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(available_methods())}")
    return _METHODS[key]


def get_posterior(method: str) -> type:
    """The posterior class registered under ``method`` (the ``method`` attribute a saved
    posterior records).

    Raises:
        ValueError: no posterior class is registered under that name (the module that
            defines it has not been imported).
    """
    if method not in _POSTERIORS:
        raise ValueError(
            f"no posterior class is registered for method {method!r}; import the module that defines it "
            f"before loading (known: {', '.join(sorted(_POSTERIORS))})"
        )
    return _POSTERIORS[method]
