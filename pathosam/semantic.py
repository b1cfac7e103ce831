"""Nucleus classes from semantic maps: class schemes, per-pixel classes, per-nucleus classes.

A semantic decoder gives C maps (channel 0 = background, 1..C-1 = nucleus classes). Which
classes those are is the decoder's :class:`ClassScheme`: PanNuke's 5 classes (the published
PathoSAM decoder) or CoNSeP's 4 (``pathosam_small``'s class head). The two are not the same
classes (CoNSeP's "epithelial" includes malignant epithelium, which PanNuke calls "neoplastic"),
so CoNSeP's class names say their scheme.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def n_class_features(n_classes: int) -> int:
    """Number of per-pixel class features for ``n_classes`` maps: ``2 * n_classes - 1``."""
    return 2 * int(n_classes) - 1


@dataclass(frozen=True)
class ClassScheme:
    """The classes of a semantic decoder: ``names[k]`` is class id ``k`` (``names[0]`` is
    ``"background"``); ``name`` identifies the scheme (``"pannuke"``, ``"consep"``, ``"custom"``)."""

    name: str
    names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        """Channels of the semantic maps (background included)."""
        return len(self.names)

    @property
    def id_names(self) -> dict[int, str]:
        """``{class id: name}`` of the nucleus classes (background left out)."""
        return {k: n for k, n in enumerate(self.names) if k}

    @property
    def n_features(self) -> int:
        """Per-pixel class features (:func:`class_features`): C one-hot votes + C - 1 shares."""
        return n_class_features(self.n_classes)


#: PanNuke (patho-sam ``CLASS_DICT['pannuke']``): the published PathoSAM semantic decoder.
PANNUKE = ClassScheme("pannuke", ("background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"))
#: CoNSeP as HoVer-Net merges it (1 other, 2 inflammatory, 3 epithelial = healthy + malignant,
#: 4 spindle-shaped = fibroblast + muscle + endothelial): ``pathosam_small``'s class head.
CONSEP = ClassScheme("consep", ("background", "other (CoNSeP)", "inflammatory (CoNSeP)", "epithelial (CoNSeP)",
                                "spindle-shaped (CoNSeP)"))
SCHEMES = {s.name: s for s in (PANNUKE, CONSEP)}

#: PanNuke class ids; 0 is background (kept for the PanNuke default of the writers).
CLASS_NAMES = PANNUKE.id_names


def class_scheme(n_classes: int, name: str | None = None) -> ClassScheme:
    """The scheme called ``name`` (checked against ``n_classes``), else the one of the maps'
    size: PanNuke for 6, else ``"custom"`` with names ``class1``, ``class2``, ..."""
    if name is not None:
        if name not in SCHEMES:
            raise ValueError(f"unknown class scheme {name!r}; known: {', '.join(SCHEMES)}")
        scheme = SCHEMES[name]
        if scheme.n_classes != n_classes:
            raise ValueError(f"class scheme {name!r} has {scheme.n_classes} classes (background included), "
                             f"the semantic decoder {n_classes}")
        return scheme
    if n_classes == PANNUKE.n_classes:
        return PANNUKE
    if n_classes < 2:
        raise ValueError(f"semantic maps need at least 2 channels, got {n_classes}")
    return ClassScheme("custom", ("background", *(f"class{c}" for c in range(1, n_classes))))


def _checked(semantic_maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(semantic_maps)
    if maps.ndim != 3 or maps.shape[0] < 2:
        raise ValueError(f"semantic maps must have shape (C, H, W) with C >= 2, got {maps.shape}")
    return maps


def class_map(semantic_maps: np.ndarray) -> np.ndarray:
    """Per-pixel class: argmax over the (C, H, W) maps -> uint8 (H, W), 0 = background."""
    return _checked(semantic_maps).argmax(axis=0).astype(np.uint8)


def class_features(semantic_maps: np.ndarray) -> np.ndarray:
    """Per-pixel features whose per-nucleus sums decide the class: float32 (2C - 1, H, W) =
    one-hot of the argmax class (channels 0..C-1, 0 = background) and the share of each nucleus
    class among the C - 1 nucleus-class scores (channels C..2C-2 for classes 1..C-1)."""
    maps = _checked(semantic_maps).astype(np.float32, copy=False)
    c = maps.shape[0]
    per_pixel = class_map(maps)
    onehot = (per_pixel[None] == np.arange(c, dtype=np.uint8)[:, None, None]).astype(np.float32)
    scores = maps[1:]
    share = scores / np.maximum(scores.sum(axis=0, keepdims=True), 1e-12)
    return np.concatenate([onehot, share])


def classes_from_sums(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class and probability per nucleus from summed :func:`class_features` (N, 2C - 1), one row
    per nucleus id 1..N. Returns uint8 / float32 arrays of length N + 1 (index 0 unused = 0)."""
    sums = np.asarray(sums, dtype=np.float64)
    if sums.ndim != 2 or sums.shape[1] % 2 == 0 or sums.shape[1] < 3:
        raise ValueError(f"class feature sums must have shape (N, 2C - 1), got {sums.shape}")
    c = (sums.shape[1] + 1) // 2
    votes, shares = sums[:, 1:c], sums[:, c:]  # background pixels do not vote
    counts = sums[:, :c].sum(axis=1)
    has = votes.max(axis=1, initial=0) > 0
    chosen = votes.argmax(axis=1) if len(sums) else np.zeros(0, np.int64)
    classes = np.zeros(len(sums) + 1, np.uint8)
    classes[1:] = np.where(has, chosen + 1, 0)
    probabilities = np.zeros(len(sums) + 1, np.float32)
    probabilities[1:] = np.where(has, shares[np.arange(len(sums)), chosen] / np.maximum(counts, 1), 0)
    return classes, probabilities


def nucleus_classes(labels: np.ndarray, semantic_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class and class probability of every nucleus of a label image.

    Parameters
    ----------
    labels : np.ndarray
        (H, W) integer label image, 0 = background, ids 1..N.
    semantic_maps : np.ndarray
        (C, H, W) per-class scores (channel 0 = background), as ``PathoSAM.semantic_maps``.

    Returns
    -------
    classes : np.ndarray
        uint8 (N + 1,): ``classes[i]`` is the class of nucleus ``i`` (index 0 unused = 0): the
        majority of the per-pixel classes inside the nucleus, background pixels excluded (ties:
        the lower class id); 0 when every pixel of the nucleus is background.
    probabilities : np.ndarray
        float32 (N + 1,): mean over the nucleus' pixels of that class's share of the C - 1
        nucleus-class scores (scores normalised to sum to 1 over classes 1..C-1 per pixel).
    """
    labels = np.asarray(labels)
    maps = _checked(semantic_maps)
    if labels.shape != maps.shape[1:]:
        raise ValueError(f"labels {labels.shape} and semantic maps {maps.shape} differ in size")
    ids = labels.ravel().astype(np.int64)
    n = int(ids.max()) if ids.size else 0
    feats = class_features(maps)
    feats = feats.reshape(feats.shape[0], -1)
    sums = np.stack([np.bincount(ids, f, minlength=n + 1)[1:] for f in feats], axis=1)
    return classes_from_sums(sums)
