"""Datasets for pyrobdl: toys, the UCI regression benchmarks, digits, any CSV.

Nothing downloads at run time.

- ``toy-regression`` (train x in [-7, 7], test x in [-10, 10], heteroscedastic
  noise) and ``sinusoid`` (train x in [-8, 8]): see :mod:`pyrobdl.datasets.toy`.
- UCI regression benchmarks with the standard 20 train/test splits of
  Hernández-Lobato & Adams (2015), as used by Gal & Ghahramani (2016) and
  Lakshminarayanan et al. (2017): ``boston``, ``concrete`` and ``energy`` ship
  with pyrobdl; ``kin8nm``, ``naval``, ``power`` and ``protein`` load from
  ``data_dir=`` (``--data-dir``). Features and target are standardised with the
  training split; report metrics in original units with
  :meth:`Dataset.unnormalize_mean`, :meth:`Dataset.unnormalize_std` and
  :attr:`Dataset.log_likelihood_offset`. Published results: :data:`PUBLISHED`.
  See :mod:`pyrobdl.datasets.uci`.
- ``digits`` (scikit-learn's 8x8 digits) and OOD variants ``digits-A-B``
  (train on digits A..B, the rest OOD), ``digits-ood-A-B`` (digits A..B held
  out as OOD), ``digits-rotated``, ``digits-noisy``: :mod:`pyrobdl.datasets.digits`.
- Any CSV with a header row: :func:`load_csv`.

Example::

    from pyrobdl import datasets
    ds = datasets.load("boston", split=3)
    mean, std = model_predict(ds.x_test)                 # normalised units
    rmse = ((ds.unnormalize_mean(mean) - ds.y_test_original) ** 2).mean().sqrt()
    ll = normal_logpdf(ds.y_test, mean, std).mean() + ds.log_likelihood_offset
"""
from ._base import Dataset, DatasetInfo
from .csvfile import load_csv
from .digits import load_digits
from .registry import check_splits, format_table, known_names, list_datasets, load, num_splits, resolve_name
from .toy import sinusoid, toy_regression
from .uci import PUBLISHED, PUBLISHED_SOURCES, load_uci, uci_protocol

__all__ = [
    "Dataset",
    "DatasetInfo",
    "PUBLISHED",
    "PUBLISHED_SOURCES",
    "check_splits",
    "format_table",
    "known_names",
    "list_datasets",
    "load",
    "load_csv",
    "load_digits",
    "load_uci",
    "num_splits",
    "resolve_name",
    "sinusoid",
    "toy_regression",
    "uci_protocol",
]
