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
    maps = np.asarray(semantic_maps, dtype=np.float32)
    if labels.shape != maps.shape[1:]:
        raise ValueError(f"labels {labels.shape} and semantic maps {maps.shape} differ in size")
    per_pixel = class_map(maps).ravel().astype(np.int64)
    ids = labels.ravel().astype(np.int64)
    n = int(ids.max()) if ids.size else 0
    votes = np.bincount(ids * 6 + per_pixel, minlength=(n + 1) * 6).reshape(n + 1, 6)
    votes[:, 0] = 0  # background pixels do not vote
    classes = np.where(votes[:, 1:].max(axis=1) > 0, votes[:, 1:].argmax(axis=1) + 1, 0).astype(np.uint8)
    classes[0] = 0
    scores = maps[1:].reshape(5, -1)
    share = scores / np.maximum(scores.sum(axis=0), 1e-12)
    chosen = classes[ids]
    prob_pixel = np.where(chosen > 0, share[np.maximum(chosen.astype(np.int64) - 1, 0), np.arange(ids.size)], 0)
    sums = np.bincount(ids, weights=prob_pixel, minlength=n + 1)
    counts = np.bincount(ids, minlength=n + 1)
    probabilities = (sums / np.maximum(counts, 1)).astype(np.float32)
    probabilities[0] = 0
    return classes, probabilities
