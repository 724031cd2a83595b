"""Any CSV file with a header row, split at random (``--csv``, ``--target``).

Read with the standard library :mod:`csv` module (no pandas). The delimiter is
sniffed (comma, semicolon, tab or ``|``) unless given. Every *used* column --
the target and the features -- must hold a number in every row: an empty cell
or ``NA``/``NaN``/``null``/``?`` is a missing value, and both missing and
non-numeric cells raise a :class:`ValueError` naming the column and the row
(1-based data row, not counting the header, plus the file line). Columns that
are not used may hold anything. For ``task="classification"`` the target may be
any text; its sorted distinct values become the labels ``0..K-1``.

The train/test split is a random permutation drawn from ``(seed, split)``;
regression features and target are standardised with the training split (as
in the UCI protocol) unless ``normalize=False``.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ._base import RANDOM_SPLITS, Dataset, _check_split, _finish_regression, _rng, _standardize_stats

__all__ = ["load_csv"]

PathLike = Union[str, os.PathLike]
_MISSING = {"", "na", "nan", "n/a", "null", "none", "?", "-"}


def _read(path: Path, delimiter: Optional[str]) -> tuple[list[str], list[tuple[int, int, list[str]]]]:
    """Header and rows as (data_row, file_line, cells)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(65536)
            fh.seek(0)
            if delimiter is None:
                try:
                    delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
                except csv.Error:
                    delimiter = ","
            reader = csv.reader(fh, delimiter=delimiter)
            header: Optional[list[str]] = None
            rows: list[tuple[int, int, list[str]]] = []
            for cells in reader:
                if not cells or all(not c.strip() for c in cells):
                    continue  # blank line
                if header is None:
                    header = [c.strip() for c in cells]
                    continue
                rows.append((len(rows) + 1, reader.line_num, cells))
    except FileNotFoundError:
        raise ValueError(f"CSV file not found: {path}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"could not read CSV file {path}: {e}") from None
    if header is None:
        raise ValueError(f"CSV file {path} is empty (expected a header row)")
    return header, rows


def _column(header: list[str], spec: Union[str, int], path: Path, role: str) -> int:
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if not 0 <= int(spec) < len(header):
            raise ValueError(f"{role} column index {spec} out of range: {path.name} has {len(header)} columns")
        return int(spec)
    name = str(spec).strip()
    if name in header:
        if header.count(name) > 1:
            raise ValueError(f"{role} column {name!r} appears {header.count(name)} times in the header of {path.name}")
        return header.index(name)
    lowered = [h.lower() for h in header]
    if lowered.count(name.lower()) == 1:
        return lowered.index(name.lower())
    raise ValueError(f"{role} column {name!r} not found in {path.name}; columns: {', '.join(header)}")


def _number(cell: str, column: str, row: int, line: int, path: Path) -> float:
    text = cell.strip()
    where = f"in column {column!r} at row {row} (line {line} of {path.name})"
    if text.lower() in _MISSING:
        raise ValueError(f"missing value {where}")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"non-numeric value {text!r} {where}") from None
    if not math.isfinite(value):
        raise ValueError(f"non-finite value {text!r} {where}")
    return value


def load_csv(
    path: PathLike,
    *,
    target: Union[str, int],
    features: Optional[Sequence[Union[str, int]]] = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    normalize: bool = True,
    split: int = 0,
    task: str = "regression",
    delimiter: Optional[str] = None,
    dtype: torch.dtype = torch.float32,
    name: Optional[str] = None,
) -> Dataset:
    r"""Load a CSV file with a header row and split it at random.

    Args:
        path: the file.
        target: the target column (header name, or 0-based index).
        features: input columns (names or indices); default: every column
            except the target.
        test_fraction: share of rows in the test split (at least one row each).
        seed, split: the permutation is drawn from ``(seed, split)``; splits
            ``0..19`` give different random splits.
        normalize: standardise features (and a regression target) with the
            training split.
        task: ``"regression"`` or ``"classification"``.
        delimiter: field delimiter; sniffed when None.
        dtype: float dtype of the inputs (and regression targets).
        name: dataset name to record (default: the file name without suffix).

    Raises:
        ValueError: unreadable file, unknown column, missing or non-numeric
            value in a used column (naming column and row), bad fraction.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "houses.csv")
        >>> with open(path, "w") as f:
        ...     _ = f.write("size,rooms,price\n" + "".join(f"{50 + i},{1 + i % 4},{100 + 3 * i}\n" for i in range(20)))
        >>> ds = load_csv(path, target="price", test_fraction=0.25)
        >>> ds.x_train.shape, ds.x_test.shape, ds.feature_names, ds.target_name
        (torch.Size([15, 2]), torch.Size([5, 2]), ['size', 'rooms'], 'price')
    """
    path = Path(path)
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    split = _check_split(f"CSV file {path.name}", split, RANDOM_SPLITS)
    header, rows = _read(path, delimiter)

    t = _column(header, target, path, "target")
    if features is None:
        f_idx = [j for j in range(len(header)) if j != t]
    else:
        if isinstance(features, (str, int)):
            features = [features]
        f_idx = [_column(header, f, path, "feature") for f in features]
        if t in f_idx:
            raise ValueError(f"target column {header[t]!r} is also listed as a feature")
        if len(set(f_idx)) != len(f_idx):
            raise ValueError("a feature column is listed twice")
    if not f_idx:
        raise ValueError(f"{path.name} has no feature columns besides the target {header[t]!r}")
    if len(rows) < 2:
        raise ValueError(f"{path.name} has {len(rows)} data row(s); need at least 2 to split")

    x = np.empty((len(rows), len(f_idx)), dtype=np.float64)
    y_raw: list = []
    for i, (row, line, cells) in enumerate(rows):
        if len(cells) != len(header):
            raise ValueError(
                f"row {row} (line {line} of {path.name}) has {len(cells)} fields, the header has {len(header)}"
            )
        for k, j in enumerate(f_idx):
            x[i, k] = _number(cells[j], header[j], row, line, path)
        if task == "regression":
            y_raw.append(_number(cells[t], header[t], row, line, path))
        else:
            text = cells[t].strip()
            if text.lower() in _MISSING:
                raise ValueError(f"missing value in column {header[t]!r} at row {row} (line {line} of {path.name})")
            y_raw.append(text)

    n = len(rows)
    n_test = min(max(int(round(float(test_fraction) * n)), 1), n - 1)
    perm = _rng(seed, split).permutation(n)
    te, tr = perm[:n_test], perm[n_test:]
    feature_names = [header[j] for j in f_idx]
    name = name or path.stem
    meta = {"path": str(path), "seed": int(seed), "test_fraction": float(test_fraction), "n_rows": n}
    description = f"CSV {path.name}: target {header[t]!r}, {len(f_idx)} features, {n} rows, random split"

    if task == "regression":
        y = np.asarray(y_raw, dtype=np.float64)
        return _finish_regression(
            name, x[tr], y[tr], x[te], y[te],
            normalize=normalize, dtype=dtype, split=split, feature_names=feature_names,
            target_name=header[t], description=description, source=str(path), meta=meta,
        )

    labels_raw = np.asarray(y_raw, dtype=object)
    fractional = next((v for v in y_raw if _is_fractional(v)), None)
    if fractional is not None:
        raise ValueError(
            f"column {header[t]!r} holds non-integer numbers (e.g. {fractional}): classification needs class "
            "labels (integers or names); for a continuous target use task='regression' (--task regression), "
            "or bin it into classes first"
        )
    try:  # numeric labels sort numerically
        keys = sorted(set(y_raw), key=float)
    except ValueError:
        keys = sorted(set(y_raw))
    lookup = {k: i for i, k in enumerate(keys)}
    y = np.asarray([lookup[v] for v in labels_raw], dtype=np.int64)
    if normalize:
        x_mean, x_std = _standardize_stats(x[tr])
    else:
        x_mean, x_std = np.zeros(len(f_idx)), np.ones(len(f_idx))
    meta["class_names"] = list(keys)
    return Dataset(
        name=name,
        task="classification",
        x_train=torch.as_tensor((x[tr] - x_mean) / x_std, dtype=dtype),
        y_train=torch.as_tensor(y[tr]),
        x_test=torch.as_tensor((x[te] - x_mean) / x_std, dtype=dtype),
        y_test=torch.as_tensor(y[te]),
        num_classes=len(keys),
        split=split,
        x_mean=torch.as_tensor(x_mean, dtype=dtype),
        x_std=torch.as_tensor(x_std, dtype=dtype),
        normalized=bool(normalize),
        feature_names=feature_names,
        target_name=header[t],
        class_labels=list(range(len(keys))),
        description=description,
        source=str(path),
        meta=meta,
    )


def _is_fractional(text: str) -> bool:
    """Whether a label cell is a number that is not an integer (``"3.7"``; not ``"3"``, ``"3.0"``, ``"cat"``)."""
    try:
        v = float(text)
    except ValueError:
        return False
    return math.isfinite(v) and v != round(v)
