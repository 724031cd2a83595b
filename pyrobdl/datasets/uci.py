r"""UCI regression benchmarks with the standard 20 train/test splits.

The data and the 90/10 splits are the ones used across the Bayesian deep
learning literature -- Hernández-Lobato & Adams (2015), "Probabilistic
backpropagation for scalable learning of Bayesian neural networks", ICML;
Gal & Ghahramani (2016), "Dropout as a Bayesian approximation", ICML;
Lakshminarayanan, Pritzel & Blundell (2017), "Simple and scalable predictive
uncertainty estimation using deep ensembles", NeurIPS -- in the layout the
MC-dropout experiments published: one folder per dataset with

- ``data.txt``: whitespace-separated numbers, one row per example;
- ``index_features.txt``, ``index_target.txt``: 0-based column numbers;
- ``index_train_K.txt``, ``index_test_K.txt``: 0-based rows of split ``K``;
- ``n_splits.txt`` (20; protein 5), ``n_hidden.txt``, ``n_epochs.txt``,
  ``dropout_rates.txt``, ``tau_values.txt``: the protocol's settings.

Boston housing, concrete and energy ship inside pyrobdl (package data, read
with :mod:`importlib.resources`); kin8nm, naval, power and protein are read
from a directory the user names (``data_dir=`` / ``--data-dir``) that holds
the folders in that layout. Nothing is downloaded.

Protocol: features and target are standardised with the training split's mean
and standard deviation; test RMSE and test log-likelihood are reported in the
target's original units (the log-likelihood adds :math:`-\log \sigma_y`, see
:attr:`Dataset.log_likelihood_offset`), as mean ± standard error over splits.
Energy uses column 8 (heating load) as the target and naval column 16 (the
compressor decay coefficient), as their ``index_target.txt`` files say.
"""
from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ._base import Dataset, _check_split, _finish_regression

__all__ = ["UCI_DATASETS", "PUBLISHED", "PUBLISHED_SOURCES", "load_uci", "uci_num_splits", "uci_protocol"]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class _UCISpec:
    name: str
    folder: str
    n: int
    d: int
    num_splits: int
    n_train: int
    n_test: int
    packaged: bool
    description: str
    feature_names: tuple[str, ...] = ()
    target_name: str = "y"
    aliases: tuple[str, ...] = ()


UCI_DATASETS: dict[str, _UCISpec] = {
    s.name: s
    for s in [
        _UCISpec(
            "boston", "bostonHousing", 506, 13, 20, 455, 51, True,
            "Boston housing: median home value (k$) from 13 neighbourhood features",
            ("CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT"),
            "MEDV", ("bostonhousing", "boston-housing"),
        ),
        _UCISpec(
            "concrete", "concrete", 1030, 8, 20, 927, 103, True,
            "Concrete compressive strength (MPa) from mixture and age",
            ("cement", "slag", "fly_ash", "water", "superplasticizer", "coarse_aggregate", "fine_aggregate", "age"),
            "strength",
        ),
        _UCISpec(
            "energy", "energy", 768, 8, 20, 691, 77, True,
            "Energy efficiency: heating load of buildings from 8 shape features",
            ("relative_compactness", "surface_area", "wall_area", "roof_area", "overall_height",
             "orientation", "glazing_area", "glazing_area_distribution"),
            "heating_load", ("energy-efficiency",),
        ),
        _UCISpec(
            "kin8nm", "kin8nm", 8192, 8, 20, 7373, 819, False,
            "Kinematics of an 8-link robot arm (kin8nm)",
        ),
        _UCISpec(
            "naval", "naval-propulsion-plant", 11934, 16, 20, 10741, 1193, False,
            "Naval propulsion plant: compressor decay coefficient",
            target_name="compressor_decay", aliases=("naval-propulsion-plant", "naval-propulsion"),
        ),
        _UCISpec(
            "power", "power-plant", 9568, 4, 20, 8611, 957, False,
            "Combined cycle power plant: net electrical output (MW)",
            ("AT", "V", "AP", "RH"), "PE", ("power-plant", "ccpp"),
        ),
        _UCISpec(
            "protein", "protein-tertiary-structure", 45730, 9, 5, 41157, 4573, False,
            "Protein tertiary structure: RMSD from 9 physico-chemical features",
            tuple(f"F{i}" for i in range(1, 10)), "RMSD", ("protein-tertiary-structure",),
        ),
    ]
}


def _read_published() -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """Parse the packaged table ``data/published_uci.csv`` (one row a dataset and method)."""
    text = resources.files("pyrobdl.datasets").joinpath("data", "published_uci.csv").read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]  # header first
    out: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for line in lines[1:]:
        dataset, method, rmse, rmse_se, ll, ll_se = line.split(",")
        out.setdefault(dataset, {})[method] = {
            "rmse": (float(rmse), float(rmse_se)),
            "ll": (float(ll), float(ll_se)),
        }
    return out


#: Published test RMSE and log-likelihood on these splits, as (mean, standard
#: error) in the target's original units; LL is the test log-likelihood
#: (higher is better). Keys: dataset, then method: ``"vi"`` (Graves 2011, as
#: reported by Hernández-Lobato & Adams 2015), ``"pbp"`` (Hernández-Lobato &
#: Adams 2015), ``"mc-dropout"`` (Gal & Ghahramani 2016, Table 1),
#: ``"mc-dropout-10x"`` (Gal & Ghahramani 2016, Table 2: 10x the epochs) and
#: ``"ensemble"`` (Lakshminarayanan et al. 2017, 5 nets; they report NLL, stored
#: here as LL = -NLL; their ± is larger than the others' -- read it as the
#: spread they published, not necessarily a standard error).
PUBLISHED: dict[str, dict[str, dict[str, tuple[float, float]]]] = _read_published()

#: Where each method's numbers in :data:`PUBLISHED` come from.
PUBLISHED_SOURCES: dict[str, str] = {
    "vi": "Graves (2011) as reported by Hernández-Lobato & Adams (2015), Table 1",
    "pbp": "Hernández-Lobato & Adams (2015), Table 1",
    "mc-dropout": "Gal & Ghahramani (2016), Table 1",
    "mc-dropout-10x": "Gal & Ghahramani (2016), Table 2 (10x epochs)",
    "ensemble": "Lakshminarayanan et al. (2017), Table 1 (NLL reported; LL = -NLL)",
}

_SOURCE = "UCI; standard splits of Hernández-Lobato & Adams (2015), as used by Gal & Ghahramani (2016)"


# ------------------------------------------------------------------ reading


class _Folder:
    """A dataset folder: on disk (``data_dir``) or inside the package."""

    def __init__(self, spec: _UCISpec, data_dir: Optional[PathLike]):
        self.spec = spec
        self.path: Optional[Path] = None
        if data_dir is not None:
            self.path = _find_on_disk(spec, Path(data_dir))
            if self.path is None and not spec.packaged:
                raise ValueError(
                    f"no '{spec.folder}' folder with data.txt under data_dir={str(data_dir)!r} "
                    f"(expected <data_dir>/{spec.folder}/data.txt and index_*.txt files)"
                )
        elif not spec.packaged:
            raise ValueError(
                f"dataset {spec.name} is not shipped with pyrobdl: pass data_dir= (--data-dir) "
                f"naming a directory that holds the '{spec.folder}' folder in the UCI split layout"
            )

    @property
    def location(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"pyrobdl.datasets/data/uci/{self.spec.folder}"

    def read_text(self, filename: str) -> str:
        if self.path is not None:
            try:
                return (self.path / filename).read_text()
            except FileNotFoundError:
                raise ValueError(f"{self.spec.name}: missing file {filename} in {self.path}") from None
        res = resources.files("pyrobdl.datasets").joinpath("data", "uci", self.spec.folder, filename)
        try:
            return res.read_text()
        except FileNotFoundError:  # pragma: no cover - broken install
            raise ValueError(f"{self.spec.name}: missing package data file {filename}") from None

    def exists(self, filename: str) -> bool:
        if self.path is not None:
            return (self.path / filename).is_file()
        return resources.files("pyrobdl.datasets").joinpath("data", "uci", self.spec.folder, filename).is_file()

    def array(self, filename: str, dtype: Any = np.float64) -> np.ndarray:
        return _parse(self.location, filename, self.read_text(filename), dtype)

    def ints(self, filename: str) -> np.ndarray:
        a = self.array(filename, np.float64).reshape(-1)
        return a.astype(np.int64)


def _find_on_disk(spec: _UCISpec, data_dir: Path) -> Optional[Path]:
    if (data_dir / "data.txt").is_file() and data_dir.name.lower() in {spec.folder.lower(), spec.name, *spec.aliases}:
        return data_dir  # data_dir is the dataset folder itself
    for candidate in (spec.folder, spec.name, *spec.aliases):
        p = data_dir / candidate
        if (p / "data.txt").is_file():
            return p
    return None


@functools.lru_cache(maxsize=64)
def _parse(location: str, filename: str, text: str, dtype: Any) -> np.ndarray:
    # cached on (location, filename, text): re-loading another split of the same
    # dataset does not re-parse data.txt.
    try:
        a = np.loadtxt(io.StringIO(text), dtype=dtype, ndmin=1)
    except ValueError as e:
        raise ValueError(f"could not parse {location}/{filename}: {e}".splitlines()[0]) from None
    a.setflags(write=False)
    return a


def uci_num_splits(name: str, data_dir: Optional[PathLike] = None) -> int:
    """Number of splits of a UCI dataset (from ``n_splits.txt`` when readable).

    Example:
        >>> uci_num_splits("concrete")
        20
    """
    spec = UCI_DATASETS[name]
    try:
        folder = _Folder(spec, data_dir)
    except ValueError:
        return spec.num_splits
    if folder.exists("n_splits.txt"):
        return int(folder.ints("n_splits.txt")[0])
    return spec.num_splits


def uci_protocol(name: str, data_dir: Optional[PathLike] = None) -> dict[str, Any]:
    """The protocol settings shipped with a UCI dataset: ``n_hidden``,
    ``n_epochs``, ``n_splits``, ``dropout_rates`` and ``tau_values`` (the grids
    Gal & Ghahramani (2016) searched).

    Example:
        >>> uci_protocol("boston")
        {'n_hidden': 50, 'n_epochs': 40, 'n_splits': 20, 'dropout_rates': [0.005, 0.01, 0.05, 0.1], 'tau_values': [0.1, 0.15, 0.2]}
    """
    folder = _Folder(UCI_DATASETS[name], data_dir)
    out: dict[str, Any] = {}
    for key, fname in [("n_hidden", "n_hidden.txt"), ("n_epochs", "n_epochs.txt"), ("n_splits", "n_splits.txt")]:
        if folder.exists(fname):
            out[key] = int(folder.ints(fname)[0])
    for key, fname in [("dropout_rates", "dropout_rates.txt"), ("tau_values", "tau_values.txt")]:
        if folder.exists(fname):
            out[key] = [float(v) for v in folder.array(fname)]
    return out


def load_uci(
    name: str,
    *,
    split: int = 0,
    data_dir: Optional[PathLike] = None,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load split ``split`` of a UCI regression benchmark.

    Args:
        name: canonical name (``boston``, ``concrete``, ``energy``, ``kin8nm``,
            ``naval``, ``power``, ``protein``).
        split: which of the standard splits (0-based).
        data_dir: directory holding the dataset folders in the shared layout
            (e.g. ``<data_dir>/kin8nm/data.txt``), or a dataset folder itself.
            Needed for the datasets not shipped with pyrobdl.
        normalize: standardise features and target with the training split.
        dtype: float dtype of the returned tensors.

    Raises:
        ValueError: the data is not available, the split is out of range, or
            the split files are inconsistent.

    Example:
        >>> ds = load_uci("concrete", split=0)
        >>> ds.x_train.shape, ds.x_test.shape, round(ds.y_std, 3)
        (torch.Size([927, 8]), torch.Size([103, 8]), 16.601)

    References:
        J. M. Hernández-Lobato and R. P. Adams, *Probabilistic Backpropagation
        for Scalable Learning of Bayesian Neural Networks* (ICML 2015);
        Y. Gal and Z. Ghahramani, *Dropout as a Bayesian Approximation* (ICML 2016).
    """
    spec = UCI_DATASETS[name]
    folder = _Folder(spec, data_dir)
    n_splits = int(folder.ints("n_splits.txt")[0]) if folder.exists("n_splits.txt") else spec.num_splits
    split = _check_split(name, split, n_splits)

    data = folder.array("data.txt")
    if data.ndim != 2:
        raise ValueError(f"{name}: data.txt in {folder.location} is not a table")
    features = folder.ints("index_features.txt")
    target = int(folder.ints("index_target.txt")[0])
    train = folder.ints(f"index_train_{split}.txt")
    test = folder.ints(f"index_test_{split}.txt")

    n, cols = data.shape
    if features.max(initial=-1) >= cols or target >= cols:
        raise ValueError(f"{name}: column indices out of range for data.txt with {cols} columns")
    for label, idx in (("train", train), ("test", test)):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{name}: index_{label}_{split}.txt has rows outside 0..{n - 1}")
    if np.intersect1d(train, test).size:
        raise ValueError(f"{name}: split {split} has rows in both train and test")

    names = list(spec.feature_names) if len(spec.feature_names) == len(features) else [f"x{j}" for j in features]
    meta = uci_protocol(name, data_dir)
    meta.update({"location": folder.location, "index_target": target})
    return _finish_regression(
        name,
        data[np.ix_(train, features)],
        data[train, target],
        data[np.ix_(test, features)],
        data[test, target],
        normalize=normalize,
        dtype=dtype,
        split=split,
        feature_names=names,
        target_name=spec.target_name,
        description=spec.description,
        source=_SOURCE,
        meta=meta,
    )
