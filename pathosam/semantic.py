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


class ClassVotes:
    """Accumulates, per nucleus id, the votes of its pixels' classes and their class shares.

    Feed label blocks and the matching semantic maps with :meth:`add` (blocks may come in any
    order, ids may be provisional); :meth:`result` gives the class and probability per id.
    """

    def __init__(self) -> None:
        self.votes = np.zeros((1, 6), dtype=np.int64)  # [id, class] pixel counts
        self.shares = np.zeros((1, 5), dtype=np.float64)  # [id, class-1] sums of class shares

    def add(self, labels: np.ndarray, semantic_maps: np.ndarray) -> None:
        """Count the pixels of ``labels`` (h, w) with the (6, h, w) ``semantic_maps``."""
        labels = np.asarray(labels)
        maps = np.asarray(semantic_maps, dtype=np.float32)
        if labels.shape != maps.shape[1:]:
            raise ValueError(f"labels {labels.shape} and semantic maps {maps.shape} differ in size")
        ids = labels.ravel().astype(np.int64)
        n = max(int(ids.max()) + 1 if ids.size else 1, self.votes.shape[0])
        if n > self.votes.shape[0]:
            self.votes = np.concatenate([self.votes, np.zeros((n - self.votes.shape[0], 6), np.int64)])
            self.shares = np.concatenate([self.shares, np.zeros((n - self.shares.shape[0], 5), np.float64)])
        per_pixel = class_map(maps).ravel().astype(np.int64)
        self.votes += np.bincount(ids * 6 + per_pixel, minlength=n * 6).reshape(n, 6)
        scores = maps[1:].reshape(5, -1)
        share = scores / np.maximum(scores.sum(axis=0), 1e-12)
        for k in range(5):
            self.shares[:, k] += np.bincount(ids, weights=share[k], minlength=n)

    def result(self, lut: np.ndarray | None = None, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(classes, probabilities)`` as :func:`nucleus_classes`; with ``lut`` (provisional id ->
        final id, 0 = dropped) for ``n`` final ids."""
        votes, shares = self.votes, self.shares
        if lut is not None:
            m = min(lut.size, votes.shape[0])
            final = lut[:m].astype(np.int64)
            n = int(final.max()) if n is None else n
            v = np.zeros((n + 1, 6), np.int64)
            s = np.zeros((n + 1, 5), np.float64)
            np.add.at(v, final, votes[:m])
            np.add.at(s, final, shares[:m])
            votes, shares = v, s
        elif n is not None and votes.shape[0] < n + 1:
            votes = np.concatenate([votes, np.zeros((n + 1 - votes.shape[0], 6), np.int64)])
            shares = np.concatenate([shares, np.zeros((n + 1 - shares.shape[0], 5), np.float64)])
        nucleus_votes = votes[:, 1:]  # background pixels do not vote
        classes = np.where(nucleus_votes.max(axis=1) > 0, nucleus_votes.argmax(axis=1) + 1, 0).astype(np.uint8)
        classes[0] = 0
        counts = votes.sum(axis=1)
        chosen = np.maximum(classes.astype(np.int64) - 1, 0)
        probabilities = np.where(classes > 0, shares[np.arange(len(classes)), chosen] / np.maximum(counts, 1), 0)
        probabilities = probabilities.astype(np.float32)
        probabilities[0] = 0
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
    acc = ClassVotes()
    acc.add(labels, semantic_maps)
    return acc.result(n=int(labels.max()) if labels.size else 0)
