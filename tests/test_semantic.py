"""Per-nucleus classes from semantic maps (hand-computed cases)."""

from __future__ import annotations

import numpy as np
import pytest

from pathosam.semantic import CLASS_NAMES, class_map, nucleus_classes


def _maps(classes: np.ndarray) -> np.ndarray:
    """One-hot-ish scores: 0.9 for the given class, 0.02 elsewhere."""
    m = np.full((6, *classes.shape), 0.02, np.float32)
    for c in range(6):
        m[c][classes == c] = 0.9
    return m


def test_majority_vote_ignores_background():
    labels = np.array([[1, 1, 1, 1, 2, 2], [1, 1, 1, 1, 2, 2]], np.uint32)
    pix = np.array([[0, 0, 0, 3, 0, 0], [0, 0, 2, 3, 0, 0]])  # nucleus 1 (8 px): 5 bg, 1 x class 2, 2 x class 3
    classes, probs = nucleus_classes(labels, _maps(pix))
    assert classes.tolist() == [0, 3, 0]  # nucleus 2 is all background -> 0
    # class-3 share: on class-3 pixels 0.9/(0.9+4*0.02); elsewhere 0.02/(sum of 5 nucleus scores)
    s_hit, s_bg, s_other = 0.9 / 0.98, 0.02 / 0.10, 0.02 / 0.98
    assert probs[1] == pytest.approx((2 * s_hit + 5 * s_bg + 1 * s_other) / 8, rel=1e-5)
    assert probs[2] == 0


def test_ties_and_class_map():
    labels = np.array([[1, 1]], np.uint32)
    classes, _ = nucleus_classes(labels, _maps(np.array([[5, 1]])))
    assert classes[1] == 1
    assert class_map(_maps(np.array([[4, 0]]))).tolist() == [[4, 0]]
    assert CLASS_NAMES[4] == "dead"


def test_shape_errors():
    with pytest.raises(ValueError, match="differ in size"):
        nucleus_classes(np.zeros((3, 3), np.uint32), np.zeros((6, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        class_map(np.zeros((1, 4, 4)))
