"""The :class:`Dataset` and :class:`DatasetInfo` containers and shared helpers."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["Dataset", "DatasetInfo"]

ArrayLike = Union[torch.Tensor, np.ndarray, float]

#: Number of random splits offered by the datasets whose splits are drawn at
#: load time (toys, digits, CSV): the same count as the UCI protocol, so a
#: ``--splits`` option means the same thing everywhere.
RANDOM_SPLITS = 20


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`pyrobdl.datasets.list_datasets` reports about one dataset.

    Attributes:
        name: canonical name, as accepted by :func:`pyrobdl.datasets.load`.
        task: ``"regression"`` or ``"classification"``.
        n: number of rows (examples) in the whole dataset.
        d: number of input features.
        num_splits: number of train/test splits available.
        description: one line about what it is.
        source: where it comes from (reference or origin).
        n_train: training rows of split 0.
        n_test: test rows of split 0.
        num_classes: classes seen in training (classification only).
        n_ood: out-of-distribution rows of split 0 (0 if there are none).
        aliases: other names :func:`load` accepts.
        needs_data_dir: True when the data is not shipped with pyrobdl and
            must be read from ``data_dir=`` (``--data-dir``).

    Example:
        >>> from pyrobdl import datasets
        >>> info = {i.name: i for i in datasets.list_datasets()}["boston"]
        >>> info.task, info.n, info.d, info.num_splits, info.n_train, info.n_test
        ('regression', 506, 13, 20, 455, 51)
    """

    name: str
    task: str
    n: int
    d: int
    num_splits: int
    description: str
    source: str
    n_train: int = 0
    n_test: int = 0
    num_classes: Optional[int] = None
    n_ood: int = 0
    aliases: tuple[str, ...] = ()
    needs_data_dir: bool = False


def _as_float(value: float | torch.Tensor) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


@dataclass
class Dataset:
    """A train/test split ready for a model, on CPU unless moved with :meth:`to`.

    Regression targets are 1-D float tensors of shape ``(N,)``; classification
    targets are ``int64`` labels ``0..num_classes-1``. Inputs are float tensors
    of shape ``(N, d)``.

    When ``normalized`` is true, inputs and targets were standardised with the
    *training* split's mean and standard deviation (Hernández-Lobato & Adams,
    2015): ``x = (x_raw - x_mean) / x_std`` and ``y = (y_raw - y_mean) / y_std``
    (test and OOD inputs use the same training statistics). Report metrics in
    the target's original units with :meth:`unnormalize_mean`,
    :meth:`unnormalize_std` and :attr:`log_likelihood_offset`. When not
    normalised, ``y_mean = 0``, ``y_std = 1``, ``x_mean = 0`` and ``x_std = 1``.

    Attributes:
        name: canonical dataset name.
        task: ``"regression"`` or ``"classification"``.
        x_train, y_train, x_test, y_test: the split.
        x_ood: out-of-distribution inputs (same units as ``x_test``), or None.
        y_ood: targets for ``x_ood`` where they are meaningful (toy regression
            outside the training range; corrupted or rotated digits, whose
            labels are the true digit), else None.
        num_classes: number of classes (classification), else None.
        split: index of the split.
        y_mean, y_std: training target statistics (floats).
        x_mean, x_std: training input statistics (tensors of shape ``(d,)``).
        normalized: whether the statistics above were applied.
        feature_names: names of the input columns.
        target_name: name of the target column (regression).
        class_labels: for classification, the original label of each class
            index (e.g. ``[5, 6, 7, 8, 9]`` for ``digits-5-9``).
        train_range: for 1-D toys, the interval the training inputs were drawn
            from, in original input units, e.g. ``(-7.0, 7.0)``.
        noise_std: for toys, the true noise standard deviation as a function of
            the *original* input ``x`` (tensor in, tensor out, original target
            units).
        test_noise_std: for toys, the true noise standard deviation at each
            test point, in the units of ``y_test`` (divided by ``y_std`` when
            normalised) -- compare a model's aleatoric std with it.
        description: one line about the dataset.
        source: reference or origin.
        meta: extra information (e.g. the UCI protocol's ``n_hidden``,
            ``n_epochs``, ``tau_values``, ``dropout_rates``).

    Example:
        >>> from pyrobdl import datasets
        >>> ds = datasets.load("boston", split=3)       # standardised with the training split
        >>> ds.x_train.shape, ds.x_test.shape, ds.normalized
        (torch.Size([455, 13]), torch.Size([51, 13]), True)
        >>> rmse_original_units = ((ds.unnormalize_mean(ds.y_test) - ds.y_test_original) ** 2).mean().sqrt()
        >>> float(rmse_original_units) < 1e-4
        True

    References:
        J. M. Hernández-Lobato and R. P. Adams, *Probabilistic Backpropagation
        for Scalable Learning of Bayesian Neural Networks* (ICML 2015).
    """

    name: str
    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_ood: Optional[torch.Tensor] = None
    y_ood: Optional[torch.Tensor] = None
    num_classes: Optional[int] = None
    split: int = 0
    y_mean: float = 0.0
    y_std: float = 1.0
    x_mean: Optional[torch.Tensor] = None
    x_std: Optional[torch.Tensor] = None
    normalized: bool = False
    feature_names: list[str] = field(default_factory=list)
    target_name: Optional[str] = None
    class_labels: Optional[list[int]] = None
    train_range: Optional[tuple[float, float]] = None
    noise_std: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    test_noise_std: Optional[torch.Tensor] = None
    description: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = self.x_train.shape[-1]
        if self.x_mean is None:
            self.x_mean = torch.zeros(d, dtype=self.x_train.dtype)
        if self.x_std is None:
            self.x_std = torch.ones(d, dtype=self.x_train.dtype)
        self.y_mean = _as_float(self.y_mean)
        self.y_std = _as_float(self.y_std)

    # ------------------------------------------------------------------ sizes
    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def input_dim(self) -> int:
        """Number of input features ``d``."""
        return int(self.x_train.shape[-1])

    @property
    def output_dim(self) -> int:
        """1 for regression, ``num_classes`` for classification."""
        return int(self.num_classes) if self.task == "classification" else 1

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    # ------------------------------------------------------ units conversions
    @property
    def log_likelihood_offset(self) -> float:
        """``-log(y_std)``: add it to a per-point log-likelihood computed in
        normalised target units to get the log-likelihood in original units."""
        return -math.log(self.y_std)

    def unnormalize_mean(self, mean: ArrayLike) -> ArrayLike:
        """Predictive mean (or any target value) back to original units."""
        return mean * self.y_std + self.y_mean

    def unnormalize_std(self, std: ArrayLike) -> ArrayLike:
        """Predictive standard deviation back to original units."""
        return std * self.y_std

    def unnormalize_var(self, var: ArrayLike) -> ArrayLike:
        """Predictive variance back to original units."""
        return var * self.y_std**2

    def normalize_y(self, y: ArrayLike) -> ArrayLike:
        """Targets in original units to the dataset's units."""
        return (y - self.y_mean) / self.y_std

    def normalize_x(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in original units (e.g. a plotting grid) to the dataset's units."""
        x = torch.as_tensor(x, dtype=self.x_train.dtype, device=self.x_mean.device)
        return (x - self.x_mean) / self.x_std

    def unnormalize_x(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in the dataset's units back to original units."""
        return x * self.x_std.to(x.device) + self.x_mean.to(x.device)

    @property
    def y_train_original(self) -> torch.Tensor:
        """Training targets in original units."""
        return self.y_train if self.task == "classification" else self.unnormalize_mean(self.y_train)

    @property
    def y_test_original(self) -> torch.Tensor:
        """Test targets in original units (use these for RMSE)."""
        return self.y_test if self.task == "classification" else self.unnormalize_mean(self.y_test)

    def in_train_range(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask: which rows of ``x`` (in the dataset's units) fall inside
        :attr:`train_range` (all True when the dataset has no training range)."""
        if self.train_range is None:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        raw = self.unnormalize_x(x)[..., 0]
        lo, hi = self.train_range
        return (raw >= lo) & (raw <= hi)

    # ------------------------------------------------------------------ misc
    def to(self, device: Union[str, torch.device]) -> "Dataset":
        """A copy with every tensor on ``device`` (the original is untouched)."""
        changes = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """One line: name, task, split, sizes."""
        parts = [
            f"{self.name} ({self.task}, split {self.split})",
            f"train {self.n_train}",
            f"test {self.n_test}",
        ]
        if self.x_ood is not None:
            parts.append(f"ood {int(self.x_ood.shape[0])}")
        parts.append(f"d={self.input_dim}")
        if self.num_classes is not None:
            parts.append(f"classes={self.num_classes}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"Dataset({self.summary()})"


# ---------------------------------------------------------------- helpers


def _rng(seed: int, split: int, stream: int = 0) -> np.random.Generator:
    """A numpy Generator that depends only on (seed, split, stream)."""
    return np.random.default_rng([int(seed), int(split), int(stream)])


def _standardize_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std (ddof=0) of ``a``; a constant column gets its value
    as mean and std 1 (tested with max == min, since the std of a constant
    column can come out as round-off, not zero)."""
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    constant = a.max(axis=0) == a.min(axis=0)
    std = np.where(constant | ~(std > 0), 1.0, std)
    if a.shape[0]:
        mean = np.where(constant, a[0], mean)  # exact, so the column becomes exactly 0
    return mean, std


def _check_split(name: str, split: int, n_splits: int) -> int:
    if isinstance(split, bool) or not isinstance(split, (int, np.integer)):
        raise ValueError(f"split must be an integer, got {split!r}")
    split = int(split)
    if not 0 <= split < n_splits:
        raise ValueError(
            f"split {split} is out of range for {name}: it has {n_splits} "
            f"split{'s' if n_splits != 1 else ''} (0..{n_splits - 1})"
        )
    return split


def _finish_regression(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    normalize: bool,
    dtype: torch.dtype,
    x_ood: Optional[np.ndarray] = None,
    y_ood: Optional[np.ndarray] = None,
    **fields: Any,
) -> Dataset:
    """Standardise with the training split (if asked) and build a Dataset."""
    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    y_train = np.asarray(y_train, dtype=np.float64).reshape(-1)
    y_test = np.asarray(y_test, dtype=np.float64).reshape(-1)
    d = x_train.shape[1]
    if normalize:
        x_mean, x_std = _standardize_stats(x_train)
        y_m, y_s = _standardize_stats(y_train[:, None])
        y_mean, y_std = float(y_m[0]), float(y_s[0])
    else:
        x_mean, x_std = np.zeros(d), np.ones(d)
        y_mean, y_std = 0.0, 1.0

    def tx(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((a - x_mean) / x_std, dtype=dtype)

    def ty(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((np.asarray(a, dtype=np.float64).reshape(-1) - y_mean) / y_std, dtype=dtype)

    return Dataset(
        name=name,
        task="regression",
        x_train=tx(x_train),
        y_train=ty(y_train),
        x_test=tx(x_test),
        y_test=ty(y_test),
        x_ood=None if x_ood is None else tx(np.asarray(x_ood, dtype=np.float64)),
        y_ood=None if y_ood is None else ty(y_ood),
        y_mean=y_mean,
        y_std=y_std,
        x_mean=torch.as_tensor(x_mean, dtype=dtype),
        x_std=torch.as_tensor(x_std, dtype=dtype),
        normalized=bool(normalize),
        **fields,
    )


def _check_unused(name: str, kwargs: dict[str, Any], allowed: Sequence[str] = ()) -> None:
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        ok = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"unexpected option(s) for dataset {name}: {', '.join(extra)} (accepted: {ok})")
