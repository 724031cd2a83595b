"""Handwritten digits (scikit-learn's bundled 8x8 ``load_digits``) and OOD variants.

The 1,797 8x8 images (Alpaydin & Kaynak, 1998, UCI "Optical Recognition of
Handwritten Digits") are flattened to 64 features and scaled to ``[0, 1]``
(pixel / 16). The train/test split is stratified by class, 80/20, drawn with a
numpy Generator from ``(seed, split)``. Nothing is downloaded: the data ships
with scikit-learn.

Names (all classification):

``digits``
    all ten classes, no OOD set.
``digits-A-B`` (e.g. ``digits-0-4``)
    **in-distribution** classes ``A..B``: train and test on those images only
    (labels renumbered ``0..K-1``, originals in :attr:`Dataset.class_labels`);
    ``x_ood`` = the test-split images of every other class.
``digits-ood-A-B`` (e.g. ``digits-ood-5-9``)
    the same, named by the **held-out** classes ``A..B``:
    ``digits-ood-5-9`` is the same dataset as ``digits-0-4``.
``digits-rotated``
    all ten classes; ``x_ood`` = the test images rotated by 90 degrees
    (``rotation=`` 90, 180 or 270), ``y_ood`` their true labels.
``digits-noisy`` (alias ``digits-corrupted``)
    all ten classes; ``x_ood`` = the test images plus Gaussian pixel noise of
    std ``corruption_std`` (0.5), clipped to ``[0, 1]``; ``y_ood`` their labels.

Pixels are not standardised by default (they already lie in ``[0, 1]``);
``normalize=True`` standardises them with the training split.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ._base import Dataset, _rng, _standardize_stats

__all__ = ["load_digits", "parse_digits_name"]

_SOURCE = "scikit-learn load_digits (UCI Optical Recognition of Handwritten Digits; Alpaydin & Kaynak 1998)"
_RANGE = re.compile(r"^digits-(ood-)?(\d)-(\d)$")


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def parse_digits_name(name: str) -> Optional[dict[str, Any]]:
    """Options for a digits variant name, or None if ``name`` is not one.

    >>> parse_digits_name("digits-0-4")
    {'in_classes': [0, 1, 2, 3, 4]}
    >>> parse_digits_name("digits-ood-5-9")
    {'ood_classes': [5, 6, 7, 8, 9]}
    """
    if name == "digits":
        return {}
    if name == "digits-rotated":
        return {"ood": "rotated"}
    if name in ("digits-noisy", "digits-corrupted"):
        return {"ood": "noisy"}
    m = _RANGE.match(name)
    if not m:
        return None
    a, b = int(m.group(2)), int(m.group(3))
    if a > b:
        raise ValueError(f"bad digits class range in {name!r}: {a} > {b} (write digits-{b}-{a})")
    classes = list(range(a, b + 1))
    return {"ood_classes": classes} if m.group(1) else {"in_classes": classes}


def _stratified_split(y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * idx.size))
        k = min(max(k, 1), idx.size - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _fmt(classes: Sequence[int]) -> str:
    c = list(classes)
    if len(c) > 1 and c == list(range(c[0], c[-1] + 1)):
        return f"{c[0]}-{c[-1]}"
    return ",".join(str(v) for v in c)


def _check_classes(label: str, classes: Sequence[int]) -> list[int]:
    out = sorted({int(c) for c in classes})
    bad = [c for c in out if not 0 <= c <= 9]
    if bad:
        raise ValueError(f"{label} must be digits 0..9, got {bad}")
    return out


def load_digits(
    *,
    name: str = "digits",
    split: int = 0,
    seed: int = 0,
    normalize: bool = False,
    dtype: torch.dtype = torch.float32,
    in_classes: Optional[Sequence[int]] = None,
    ood_classes: Optional[Sequence[int]] = None,
    ood: Optional[str] = None,
    test_fraction: float = 0.2,
    rotation: int = 90,
    corruption_std: float = 0.5,
) -> Dataset:
    """Load the 8x8 digits, optionally with an OOD set (see the module docstring).

    Args:
        name: name to record on the dataset.
        split, seed: the random stratified split is drawn from ``(seed, split)``.
        normalize: standardise pixels with the training split.
        in_classes: train/test only on these digits; the others are OOD.
        ood_classes: hold these digits out as OOD (the complement of
            ``in_classes``; give one or the other).
        ood: ``"rotated"`` or ``"noisy"`` for a covariate-shift OOD set built
            from the test images.
        test_fraction: share of each class in the test split.
        rotation: degrees (90, 180, 270) for ``ood="rotated"``.
        corruption_std: pixel noise std for ``ood="noisy"``.

    Example:
        >>> ds = load_digits(in_classes=[0, 1, 2, 3, 4])    # digits 5..9 become OOD
        >>> ds.x_train.shape, ds.num_classes, ds.x_ood.shape
        (torch.Size([721, 64]), 5, torch.Size([179, 64]))
        >>> load_digits(ood="rotated", rotation=90).y_ood.shape   # rotated test images keep their labels
        torch.Size([359])
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if in_classes is not None and ood_classes is not None:
        raise ValueError("give in_classes or ood_classes, not both")
    if ood_classes is not None:
        held = _check_classes("ood_classes", ood_classes)
        in_classes = [c for c in range(10) if c not in held]
    in_cls = list(range(10)) if in_classes is None else _check_classes("in_classes", in_classes)
    if len(in_cls) < 2:
        raise ValueError(f"need at least two in-distribution classes, got {in_cls}")
    if ood is not None and len(in_cls) < 10:
        raise ValueError("combine a class split with rotated/noisy OOD in two loads, not one")

    x, y = _raw()
    rng = _rng(seed, split)
    tr, te = _stratified_split(y, float(test_fraction), rng)
    in_mask_tr = np.isin(y[tr], in_cls)
    in_mask_te = np.isin(y[te], in_cls)
    x_train, y_train = x[tr[in_mask_tr]], y[tr[in_mask_tr]]
    x_test, y_test = x[te[in_mask_te]], y[te[in_mask_te]]

    x_ood = y_ood = None
    held = [c for c in range(10) if c not in in_cls]
    if held:
        x_ood = x[te[~in_mask_te]]
        ood_desc = f"OOD = test images of classes {_fmt(held)}"
    elif ood == "rotated":
        if int(rotation) % 90 or int(rotation) % 360 == 0:
            raise ValueError(f"rotation must be 90, 180 or 270 degrees, got {rotation}")
        imgs = x_test.reshape(-1, 8, 8)
        x_ood = np.rot90(imgs, k=(int(rotation) // 90) % 4, axes=(1, 2)).reshape(-1, 64)
        y_ood = y_test
        ood_desc = f"OOD = test images rotated by {int(rotation)} degrees"
    elif ood == "noisy":
        if not float(corruption_std) > 0:
            raise ValueError(f"corruption_std must be positive, got {corruption_std}")
        noise_rng = _rng(seed, split, 1)
        x_ood = np.clip(x_test + float(corruption_std) * noise_rng.standard_normal(x_test.shape), 0.0, 1.0)
        y_ood = y_test
        ood_desc = f"OOD = test images with Gaussian pixel noise (std {float(corruption_std):g})"
    elif ood is not None:
        raise ValueError(f"unknown digits OOD kind {ood!r} (use 'rotated' or 'noisy')")
    else:
        ood_desc = "no OOD set"

    remap = np.full(10, -1, dtype=np.int64)
    remap[in_cls] = np.arange(len(in_cls))
    d = x.shape[1]
    if normalize:
        x_mean, x_std = _standardize_stats(x_train)
    else:
        x_mean, x_std = np.zeros(d), np.ones(d)

    def tx(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((a - x_mean) / x_std, dtype=dtype)

    return Dataset(
        name=name,
        task="classification",
        x_train=tx(x_train),
        y_train=torch.as_tensor(remap[y_train], dtype=torch.int64),
        x_test=tx(x_test),
        y_test=torch.as_tensor(remap[y_test], dtype=torch.int64),
        x_ood=None if x_ood is None else tx(x_ood),
        y_ood=None if y_ood is None else torch.as_tensor(remap[y_ood], dtype=torch.int64),
        num_classes=len(in_cls),
        split=int(split),
        x_mean=torch.as_tensor(x_mean, dtype=dtype),
        x_std=torch.as_tensor(x_std, dtype=dtype),
        normalized=bool(normalize),
        feature_names=[f"pixel_{r}_{c}" for r in range(8) for c in range(8)],
        target_name="digit",
        class_labels=in_cls,
        description=f"8x8 handwritten digits, classes {_fmt(in_cls)}; {ood_desc}",
        source=_SOURCE,
        meta={"ood": ood_desc, "image_shape": (8, 8), "seed": int(seed), "test_fraction": float(test_fraction)},
    )
