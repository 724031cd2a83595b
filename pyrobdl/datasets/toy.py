r"""1-D synthetic regression problems for tutorials and tests.

``toy-regression``
    The 1-D problem of the DeepFindr "Uncertainty in Deep Learning" videos:
    training inputs in :math:`[-7, 7]`, test inputs in :math:`[-10, 10]`, with
    input-dependent (heteroscedastic) noise:

    .. math::

        y = x \sin x + \varepsilon,\qquad
        \varepsilon \sim \mathcal N\big(0, \sigma(x)^2\big),\qquad
        \sigma(x) = 0.3 + 0.3\,|x| / 7 .

    ``n_train`` (500) training inputs are uniform on :math:`[-7, 7]`; the
    ``n_test`` (500) test inputs are an evenly spaced grid on
    :math:`[-10, 10]` (so they plot as a curve and 30% of them lie outside the
    training range); ``x_ood`` holds ``n_ood`` (200) further inputs uniform on
    :math:`[-10, -7] \cup [7, 10]`. Epistemic uncertainty should grow outside
    :math:`[-7, 7]`; the aleatoric part should follow :math:`\sigma(x)`.

``sinusoid``
    :math:`y = \sin x + \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, 0.1^2)`
    (homoscedastic), training inputs uniform on :math:`[-8, 8]`, test grid on
    :math:`[-12, 12]`, ``x_ood`` uniform on :math:`[-12, -8] \cup [8, 12]` --
    the ensemble example of Valdenegro-Toro's uncertainty talk.

Both are deterministic for a given ``(seed, split)`` (a numpy Generator; the
global RNGs are never touched). They are *not* normalised by default (inputs
and targets are already of order one to ten); pass ``normalize=True`` to
standardise with the training split like the UCI protocol. The true noise is
exposed as :attr:`Dataset.noise_std` (a function of the original input) and
:attr:`Dataset.test_noise_std` (at the test points, in the units of
``y_test``), and the training interval as :attr:`Dataset.train_range`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ._base import Dataset, _finish_regression, _rng

__all__ = ["toy_regression", "sinusoid", "toy_regression_noise_std", "sinusoid_noise_std"]


def toy_regression_noise_std(x: torch.Tensor) -> torch.Tensor:
    r"""True noise std of ``toy-regression``: :math:`\sigma(x) = 0.3 + 0.3\,|x|/7`.

    Example:
        >>> import torch
        >>> toy_regression_noise_std(torch.tensor([0.0, 7.0]))
        tensor([0.3000, 0.6000])
    """
    x = torch.as_tensor(x)
    return 0.3 + 0.3 * x.abs() / 7.0


def sinusoid_noise_std(x: torch.Tensor) -> torch.Tensor:
    """True noise std of ``sinusoid``: constant 0.1.

    Example:
        >>> import torch
        >>> sinusoid_noise_std(torch.tensor([0.0, 7.0]))
        tensor([0.1000, 0.1000])
    """
    x = torch.as_tensor(x)
    return torch.full_like(x if x.is_floating_point() else x.double(), 0.1)


def _make_1d(
    name: str,
    f: Callable[[np.ndarray], np.ndarray],
    noise: Callable[[torch.Tensor], torch.Tensor],
    train_range: tuple[float, float],
    test_range: tuple[float, float],
    *,
    n_train: int,
    n_test: int,
    n_ood: int,
    split: int,
    seed: int,
    normalize: bool,
    dtype: torch.dtype,
    description: str,
    source: str,
) -> Dataset:
    for label, v in (("n_train", n_train), ("n_test", n_test)):
        if int(v) < 1:
            raise ValueError(f"{label} must be at least 1, got {v}")
    if int(n_ood) < 0:
        raise ValueError(f"n_ood must be non-negative, got {n_ood}")
    rng = _rng(seed, split)
    lo, hi = train_range
    tlo, thi = test_range

    def sigma(x: np.ndarray) -> np.ndarray:
        return noise(torch.as_tensor(x, dtype=torch.float64)).numpy()

    x_train = rng.uniform(lo, hi, size=n_train)
    y_train = f(x_train) + sigma(x_train) * rng.standard_normal(n_train)
    x_test = np.linspace(tlo, thi, n_test)
    y_test = f(x_test) + sigma(x_test) * rng.standard_normal(n_test)
    # OOD: uniform on the two outer intervals, in proportion to their length.
    left, right = lo - tlo, thi - hi
    u = rng.uniform(0.0, left + right, size=n_ood)
    x_ood = np.where(u < left, tlo + u, hi + (u - left))
    y_ood = f(x_ood) + sigma(x_ood) * rng.standard_normal(n_ood)

    ds = _finish_regression(
        name,
        x_train[:, None],
        y_train,
        x_test[:, None],
        y_test,
        x_ood=x_ood[:, None] if n_ood else None,
        y_ood=y_ood if n_ood else None,
        normalize=normalize,
        dtype=dtype,
        split=split,
        feature_names=["x"],
        target_name="y",
        train_range=(float(lo), float(hi)),
        noise_std=noise,
        description=description,
        source=source,
        meta={"test_range": (float(tlo), float(thi)), "seed": int(seed)},
    )
    ds.test_noise_std = torch.as_tensor(sigma(x_test) / ds.y_std, dtype=dtype)
    return ds


# the two synthetic problems: function, noise, ranges and provenance
_TOY_REGRESSION = dict(
    name="toy-regression",
    f=lambda x: x * np.sin(x),
    noise=toy_regression_noise_std,
    train_range=(-7.0, 7.0),
    test_range=(-10.0, 10.0),
    description="1-D y = x sin x with noise std 0.3 + 0.3|x|/7; train x in [-7, 7], test x in [-10, 10]",
    source="synthetic (after DeepFindr, 'Uncertainty in Deep Learning' #2)",
)
_SINUSOID = dict(
    name="sinusoid",
    f=np.sin,
    noise=sinusoid_noise_std,
    train_range=(-8.0, 8.0),
    test_range=(-12.0, 12.0),
    description="1-D y = sin x with noise std 0.1; train x in [-8, 8], test x in [-12, 12]",
    source="synthetic (after Valdenegro-Toro, uncertainty estimation talk, 2020)",
)


def toy_regression(*, split: int = 0, seed: int = 0, normalize: bool = False, dtype: torch.dtype = torch.float32,
                   n_train: int = 500, n_test: int = 500, n_ood: int = 200) -> Dataset:
    """The heteroscedastic 1-D problem ``y = x sin x + N(0, (0.3 + 0.3|x|/7)^2)``,
    train on [-7, 7], test on [-10, 10] (see the module docstring).

    Example:
        >>> ds = toy_regression()
        >>> ds.x_train.shape, ds.x_test.shape, ds.train_range
        (torch.Size([500, 1]), torch.Size([500, 1]), (-7.0, 7.0))
        >>> bool(ds.x_train.abs().max() <= 7.0), bool(ds.x_test.abs().max() > 7.0)
        (True, True)
    """
    return _make_1d(**_TOY_REGRESSION, n_train=n_train, n_test=n_test, n_ood=n_ood, split=split, seed=seed,
                    normalize=normalize, dtype=dtype)


def sinusoid(*, split: int = 0, seed: int = 0, normalize: bool = False, dtype: torch.dtype = torch.float32,
             n_train: int = 500, n_test: int = 500, n_ood: int = 200) -> Dataset:
    r"""``y = sin x + N(0, 0.1^2)``, train on [-8, 8], test on [-12, 12].

    Example:
        >>> ds = sinusoid(n_train=100)
        >>> ds.x_train.shape, ds.train_range
        (torch.Size([100, 1]), (-8.0, 8.0))
    """
    return _make_1d(**_SINUSOID, n_train=n_train, n_test=n_test, n_ood=n_ood, split=split, seed=seed,
                    normalize=normalize, dtype=dtype)
