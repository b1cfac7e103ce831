"""Zero padding of small images (as the reference evaluates 256-px data) and seeded splits."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Literal

import numpy as np

from .base import Sample

PadMode = Literal["top-left", "center"]


def padding_for(shape: tuple[int, int], target: tuple[int, int], mode: PadMode = "top-left"
                ) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) zero padding that brings ``shape`` up to ``target``.

    Axes already at least as long as the target are not padded (never cropped). ``"center"``
    puts ``floor(extra / 2)`` before and the rest after.
    """
    if mode not in ("top-left", "center"):
        raise ValueError(f"padding mode must be 'top-left' or 'center', got {mode!r}")
    pads = []
    for size, want in zip(shape, target):
        extra = max(int(want) - int(size), 0)
        before = extra // 2 if mode == "center" else 0
        pads.append((before, extra - before))
    return pads[0], pads[1]


def pad_sample(sample: Sample, shape: tuple[int, int] = (512, 512), mode: PadMode = "top-left") -> Sample:
    """Zero-pad a sample's image, labels and classes up to ``shape`` (H, W).

    This is how the reference feeds images smaller than the model's 512-px input:

    * ``mode="top-left"`` (pad at the bottom/right): the reference's "vit_data" for the AIS/AMG
      evaluation of the 256-px PanNuke, SRSA-Net and NuClick images
      (patho-sam experiments/data/load_padded_data.py), and, identically, torch_em's
      ``ensure_patch_shape`` padding of training/interactive-evaluation patches (PanNuke
      256 -> 512 at the end of each axis).
    * ``mode="center"``: patho-sam scripts/test_pannuke.py pads PanNuke fold-3 images centrally
      (noting results are slightly worse otherwise); here ``floor(extra / 2)`` goes before.

    Axes already as long as ``shape`` are left alone (nothing is cropped). The padding applied
    is recorded in ``meta["padding"] = ((top, bottom), (left, right))``; :func:`unpad` removes it
    from a prediction.
    """
    (t, b), (l, r) = padding_for(sample.shape, shape, mode)
    pad2 = ((t, b), (l, r))
    image = np.pad(sample.image, pad2 + ((0, 0),))
    labels = np.pad(sample.labels, pad2)
    classes = None if sample.classes is None else np.pad(sample.classes, pad2)
    meta = dict(sample.meta)
    prev = meta.get("padding")
    if prev is not None:  # padding twice: accumulate
        pad2 = ((prev[0][0] + t, prev[0][1] + b), (prev[1][0] + l, prev[1][1] + r))
    meta["padding"] = pad2
    meta["padding_mode"] = mode
    return replace(sample, image=image, labels=labels, classes=classes, meta=meta)


def unpad(array: np.ndarray, padding: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Crop the ``padding`` recorded by :func:`pad_sample` off the first two axes of ``array``."""
    (t, b), (l, r) = padding
    h, w = array.shape[:2]
    return array[t:h - b, l:w - r]


def split_names(names: Iterable[str], fractions: tuple[float, float] = (0.12, 0.2), seed: int = 42,
                groups: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Deterministic seeded train/val/test split of sample names.

    Parameters
    ----------
    names : iterable of str
        Unique sample names (e.g. ``dataset.names``); their order does not matter.
    fractions : (val, test)
        Fractions of all names for validation and test; ``round(fraction * n)`` names each
        (half rounds up), the rest is train. The default (0.12, 0.2) gives the proportions of the
        reference's split CSVs (20 % test, then 15 % of the rest = 12 % val).
    seed : int
        Same names + same seed -> same split, on every platform (numpy ``default_rng``).
    groups : mapping of str to str, optional
        ``{name: group}`` (e.g. ``dataset.sources``: the source image of each tile): whole groups
        are drawn, and the fractions count groups, so tiles of one image never straddle the
        split. Names missing from the mapping are their own group; with every name its own group
        the split equals the ungrouped one.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``, each list sorted.

    Notes
    -----
    The reference (torch_em) makes its CPM15/CryoNuSeg/TNBC/LyNSeC/PUMA-0.7.6 split CSVs with
    sklearn ``train_test_split`` **without** ``random_state`` on first use and caches them in the
    data folder, so its splits are not reproducible from the code; use this function (and keep
    the result) for a reproducible split.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError("split_names: names are not unique")
    val_f, test_f = (float(f) for f in fractions)
    if val_f < 0 or test_f < 0 or val_f + test_f > 1:
        raise ValueError(f"split_names: fractions (val, test) must be >= 0 and sum to <= 1, got {fractions}")
    group_of = {n: (n if groups is None else str(groups.get(n, n))) for n in names}
    units = sorted(set(group_of.values()))
    n = len(units)
    n_test = math.floor(test_f * n + 0.5)
    n_val = min(math.floor(val_f * n + 0.5), n - n_test)
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = [units[i] for i in perm]
    parts = {"test": set(shuffled[:n_test]), "val": set(shuffled[n_test:n_test + n_val])}
    side = {u: k for k, us in parts.items() for u in us}
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name in names:
        out[side.get(group_of[name], "train")].append(name)
    return {k: sorted(v) for k, v in out.items()}
