"""Nucleus classes from the 6-channel semantic maps (background + 5 PanNuke classes)."""

from __future__ import annotations

import numpy as np

#: PanNuke class ids (patho-sam ``CLASS_DICT['pannuke']``); 0 is background.
CLASS_NAMES = {1: "neoplastic", 2: "inflammatory", 3: "connective", 4: "dead", 5: "epithelial"}


def class_map(semantic_maps: np.ndarray) -> np.ndarray:
    """Per-pixel class: argmax over the (6, H, W) maps -> uint8 (H, W), 0 = background."""
    maps = np.asarray(semantic_maps)
    if maps.ndim != 3 or maps.shape[0] != 6:
        raise ValueError(f"semantic maps must have shape (6, H, W), got {maps.shape}")
    return maps.argmax(axis=0).astype(np.uint8)


#: Number of per-pixel class features (:func:`class_features`): 6 one-hot votes + 5 class shares.
N_CLASS_FEATURES = 11


def class_features(semantic_maps: np.ndarray) -> np.ndarray:
    """Per-pixel features whose per-nucleus sums decide the class: float32 (11, H, W) =
    one-hot of the argmax class (channels 0..5, 0 = background) and the share of each nucleus
    class among the five nucleus-class scores (channels 6..10 for classes 1..5)."""
    maps = np.asarray(semantic_maps, dtype=np.float32)
    per_pixel = class_map(maps)
    onehot = (per_pixel[None] == np.arange(6, dtype=np.uint8)[:, None, None]).astype(np.float32)
    scores = maps[1:]
    share = scores / np.maximum(scores.sum(axis=0, keepdims=True), 1e-12)
    return np.concatenate([onehot, share])


def classes_from_sums(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class and probability per nucleus from summed :func:`class_features` (N, 11), one row per
    nucleus id 1..N. Returns uint8 / float32 arrays of length N + 1 (index 0 unused = 0)."""
    sums = np.asarray(sums, dtype=np.float64).reshape(-1, N_CLASS_FEATURES)
    votes, shares = sums[:, 1:6], sums[:, 6:]  # background pixels do not vote
    counts = sums[:, :6].sum(axis=1)
    has = votes.max(axis=1) > 0
    chosen = votes.argmax(axis=1)
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
        (6, H, W) per-class scores (channel 0 = background), as ``PathoSAM.semantic_maps``.

    Returns
    -------
    classes : np.ndarray
        uint8 (N + 1,): ``classes[i]`` is the class of nucleus ``i`` (index 0 unused = 0): the
        majority of the per-pixel classes inside the nucleus, background pixels excluded (ties:
        the lower class id); 0 when every pixel of the nucleus is background.
    probabilities : np.ndarray
        float32 (N + 1,): mean over the nucleus' pixels of that class's share of the five
        nucleus-class scores (scores normalised to sum to 1 over classes 1..5 per pixel).
    """
    labels = np.asarray(labels)
    maps = np.asarray(semantic_maps)
    if labels.shape != maps.shape[1:]:
        raise ValueError(f"labels {labels.shape} and semantic maps {maps.shape} differ in size")
    ids = labels.ravel().astype(np.int64)
    n = int(ids.max()) if ids.size else 0
    feats = class_features(maps).reshape(N_CLASS_FEATURES, -1)
    sums = np.stack([np.bincount(ids, feats[j], minlength=n + 1)[1:] for j in range(N_CLASS_FEATURES)], axis=1)
    return classes_from_sums(sums)
