"""Dataset names, :func:`load`, :func:`list_datasets` and split checks."""
from __future__ import annotations

import difflib
import functools
import os
from typing import Any, Iterable, Optional, Union

import torch

from ._base import RANDOM_SPLITS, Dataset, DatasetInfo, _check_split, _check_unused
from .csvfile import load_csv
from .digits import load_digits, parse_digits_name
from .toy import sinusoid, toy_regression
from .uci import UCI_DATASETS, _Folder, load_uci, uci_num_splits

__all__ = ["load", "list_datasets", "num_splits", "check_splits", "resolve_name", "known_names", "format_table"]

PathLike = Union[str, os.PathLike]

_TOYS = {
    "toy-regression": (toy_regression, ("toy", "toyregression", "toy-1d")),
    "sinusoid": (sinusoid, ("sine", "sin", "sinusoidal")),
}
_DIGITS_LISTED = ("digits", "digits-0-4", "digits-rotated", "digits-noisy")
_TOY_KWARGS = ("n_train", "n_test", "n_ood")
_DIGITS_KWARGS = ("in_classes", "ood_classes", "test_fraction", "rotation", "corruption_std")


def known_names() -> list[str]:
    """Canonical names :func:`load` accepts (digits also takes ``digits-A-B`` and
    ``digits-ood-A-B`` for any class range).

    Example:
        >>> known_names()[:5]
        ['toy-regression', 'sinusoid', 'boston', 'concrete', 'energy']
    """
    return [*_TOYS, *UCI_DATASETS, *_DIGITS_LISTED]


def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for canon, (_, aliases) in _TOYS.items():
        for a in (canon, *aliases):
            table[a] = canon
    for canon, spec in UCI_DATASETS.items():
        for a in (canon, spec.folder.lower(), *spec.aliases):
            table[a] = canon
    return table


def resolve_name(name: str) -> str:
    """The canonical name for ``name`` (case-insensitive; ``_`` and ``-`` are
    the same), e.g. ``"bostonHousing"`` -> ``"boston"``.

    Raises:
        ValueError: unknown dataset; the message lists the known ones.

    Example:
        >>> resolve_name("bostonHousing"), resolve_name("Toy_Regression")
        ('boston', 'toy-regression')
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    key = name.strip().lower().replace("_", "-")
    table = _alias_table()
    if key in table:
        return table[key]
    if key == "digits-corrupted":
        return "digits-noisy"
    if parse_digits_name(key) is not None:
        return key
    close = difflib.get_close_matches(key, [*table, *_DIGITS_LISTED], n=1, cutoff=0.75)
    hint = f" (did you mean {table.get(close[0], close[0])!r}?)" if close else ""
    raise ValueError(
        f"unknown dataset {name!r}{hint}; known datasets: {', '.join(known_names())}, "
        f"digits-A-B / digits-ood-A-B, or a CSV file via load_csv (--csv/--target)"
    )


def num_splits(name: str, data_dir: Optional[PathLike] = None) -> int:
    """How many train/test splits ``name`` has: the UCI split files' count
    (20; protein 5), or 20 random splits for toys, digits and CSV files.

    Example:
        >>> num_splits("boston"), num_splits("digits")
        (20, 20)
    """
    canon = resolve_name(name)
    if canon in UCI_DATASETS:
        return uci_num_splits(canon, data_dir)
    return RANDOM_SPLITS


def check_splits(name: str, splits: Union[int, Iterable[int]], data_dir: Optional[PathLike] = None) -> list[int]:
    """Validate a ``--splits`` request and return the split indices.

    ``splits`` is a count (the first ``splits`` splits) or explicit indices.

    Raises:
        ValueError: more splits than the dataset has, or an index out of range.

    Example:
        >>> check_splits("boston", 3), check_splits("boston", [0, 5])
        ([0, 1, 2], [0, 5])
    """
    canon = resolve_name(name)
    total = num_splits(canon, data_dir)
    if isinstance(splits, bool):
        raise ValueError(f"splits must be a count or a list of indices, got {splits!r}")
    if isinstance(splits, int):
        if not 1 <= splits <= total:
            raise ValueError(f"--splits {splits} is out of range for {canon}: it has {total} splits (1..{total})")
        return list(range(splits))
    out = [int(s) for s in splits]
    if not out:
        raise ValueError("no splits requested")
    for s in out:
        _check_split(canon, s, total)
    return out


def load(
    name: str,
    *,
    split: int = 0,
    data_dir: Optional[PathLike] = None,
    normalize: Optional[bool] = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> Dataset:
    """Load a dataset by name, on CPU.

    Args:
        name: ``toy-regression``, ``sinusoid``, ``boston`` (``bostonHousing``),
            ``concrete``, ``energy``, ``kin8nm``, ``naval``, ``power``,
            ``protein``, ``digits``, ``digits-A-B`` (in-distribution classes
            A..B, the rest OOD), ``digits-ood-A-B`` (classes A..B held out as
            OOD), ``digits-rotated``, ``digits-noisy``; or ``"csv"`` with
            ``path=`` and ``target=`` (see :func:`load_csv`).
        split: which train/test split (UCI: the standard split files; others:
            a random split drawn from ``(seed, split)``).
        data_dir: directory holding the UCI folders (needed for kin8nm, naval,
            power and protein; optional for the packaged ones).
        normalize: standardise with the training split. ``None`` means the
            dataset's default: True for UCI and CSV data, False for the toys
            and digits (already on unit scale).
        seed: seed of the random split / synthetic data (ignored by UCI, whose
            splits are fixed).
        dtype: float dtype of the tensors.
        **kwargs: dataset options -- toys: ``n_train``, ``n_test``, ``n_ood``;
            digits: ``in_classes``, ``ood_classes``, ``test_fraction``,
            ``rotation``, ``corruption_std``; csv: the :func:`load_csv` options.

    Raises:
        ValueError: unknown name (lists the known ones), data not available,
            split out of range, bad option.

    Example:
        >>> ds = load("toy-regression")
        >>> ds.x_train.shape, ds.y_train.shape, ds.x_ood.shape, ds.train_range
        (torch.Size([500, 1]), torch.Size([500]), torch.Size([200, 1]), (-7.0, 7.0))
        >>> ds = load("digits-5-9")                # train on 5..9; 0..4 are OOD
        >>> ds.num_classes, ds.class_labels, ds.x_ood.shape[1]
        (5, [5, 6, 7, 8, 9], 64)
    """
    if isinstance(name, str) and (name.strip().lower() == "csv" or name.strip().lower().endswith(".csv")):
        if name.strip().lower() != "csv":
            kwargs.setdefault("path", name)
        if "path" not in kwargs or "target" not in kwargs:
            raise ValueError("loading a CSV needs path= and target= (--csv FILE --target COLUMN)")
        path = kwargs.pop("path")
        return load_csv(path, split=split, seed=seed, dtype=dtype,
                        normalize=True if normalize is None else normalize, **kwargs)

    canon = resolve_name(name)
    if canon in UCI_DATASETS:
        _check_unused(canon, kwargs)
        return load_uci(canon, split=split, data_dir=data_dir,
                        normalize=True if normalize is None else normalize, dtype=dtype)
    _check_split(canon, split, RANDOM_SPLITS)
    norm = False if normalize is None else normalize
    if canon in _TOYS:
        _check_unused(canon, kwargs, _TOY_KWARGS)
        return _TOYS[canon][0](split=split, seed=seed, normalize=norm, dtype=dtype, **kwargs)
    options = parse_digits_name(canon)
    assert options is not None
    _check_unused(canon, kwargs, _DIGITS_KWARGS)
    if options and ("in_classes" in kwargs or "ood_classes" in kwargs):
        raise ValueError(f"{canon} already fixes the classes; use plain 'digits' with in_classes=/ood_classes=")
    return load_digits(name=canon, split=split, seed=seed, normalize=norm, dtype=dtype, **options, **kwargs)


@functools.lru_cache(maxsize=1)
def _static_infos() -> tuple[DatasetInfo, ...]:
    infos: list[DatasetInfo] = []
    for canon, (fn, aliases) in _TOYS.items():
        ds = fn()
        infos.append(DatasetInfo(
            name=canon, task="regression", n=ds.n_train + ds.n_test, d=1, num_splits=RANDOM_SPLITS,
            description=ds.description, source=ds.source, n_train=ds.n_train, n_test=ds.n_test,
            n_ood=int(ds.x_ood.shape[0]), aliases=aliases,
        ))
    return tuple(infos)


def _digits_info(name: str) -> DatasetInfo:
    ds = load(name)
    n_ood = 0 if ds.x_ood is None else int(ds.x_ood.shape[0])
    # class-split variants hold distinct images out; rotated/noisy OOD are copies of test images
    n = ds.n_train + ds.n_test + (n_ood if ds.y_ood is None else 0)
    return DatasetInfo(
        name=name, task="classification", n=n, d=ds.input_dim, num_splits=RANDOM_SPLITS,
        description=ds.description, source=ds.source, n_train=ds.n_train, n_test=ds.n_test,
        num_classes=ds.num_classes, n_ood=n_ood, aliases=("digits-corrupted",) if name == "digits-noisy" else (),
    )


def list_datasets(data_dir: Optional[PathLike] = None) -> list[DatasetInfo]:
    """Every named dataset with its task, size and number of splits.

    With ``data_dir``, ``needs_data_dir`` is False for the UCI sets found there
    (and ``num_splits`` is read from their ``n_splits.txt``).

    Example:
        >>> [(i.name, i.task, i.n) for i in list_datasets()][:3]
        [('toy-regression', 'regression', 1000), ('sinusoid', 'regression', 1000), ('boston', 'regression', 506)]
    """
    infos = list(_static_infos())
    for canon, spec in UCI_DATASETS.items():
        available = spec.packaged
        if not available and data_dir is not None:
            try:
                _Folder(spec, data_dir)
                available = True
            except ValueError:
                available = False
        infos.append(DatasetInfo(
            name=canon, task="regression", n=spec.n, d=spec.d,
            num_splits=uci_num_splits(canon, data_dir) if available else spec.num_splits,
            description=spec.description,
            source="UCI; splits of Hernández-Lobato & Adams (2015)"
            + ("" if spec.packaged else " (not shipped: --data-dir)"),
            n_train=spec.n_train, n_test=spec.n_test, aliases=(spec.folder, *spec.aliases) if spec.folder != canon
            else spec.aliases, needs_data_dir=not available,
        ))
    infos.extend(_digits_info(name) for name in _DIGITS_LISTED)
    return infos


def format_table(data_dir: Optional[PathLike] = None) -> str:
    """A plain-text table of :func:`list_datasets`, for ``pyrobdl datasets``.

    Example:
        >>> print(format_table().splitlines()[0])
        name            task                 n      d   train/test  ood  splits  description
    """
    rows = [("name", "task", "n", "d", "train/test", "ood", "splits", "description")]
    for i in list_datasets(data_dir):
        desc = i.description + ("  [needs --data-dir]" if i.needs_data_dir else "")
        rows.append((i.name, i.task if i.num_classes is None else f"{i.task} ({i.num_classes})", str(i.n),
                     str(i.d), f"{i.n_train}/{i.n_test}", str(i.n_ood or "-"), str(i.num_splits), desc))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.append("digits-A-B: train/test on digits A..B, the others are OOD; digits-ood-A-B: digits A..B held out "
                 "as OOD. Any CSV: --csv FILE --target COLUMN.")
    return "\n".join(line.rstrip() for line in lines)
