"""``pathosam train``'s data options: --dataset-weights and the class count of --semantic."""

from __future__ import annotations

import pytest

from pathosam.cli import main
from pathosam.cli.common import UsageError
from pathosam.cli.train import _Concat, _num_classes

from .test_class_tables import _labels, _write_tile


class _Part(list):
    def __init__(self, n, class_names=None):
        super().__init__(range(n))
        self.class_names = class_names
        self.name = "d"
        self.names = [f"s{i}" for i in range(n)]


def test_dataset_weights_give_each_folder_its_share():
    c = _Concat([_Part(2), _Part(4)])
    w = c.image_weights([1.0, 1.0])
    assert w == (0.5, 0.5, 0.25, 0.25, 0.25, 0.25)  # each folder half of the patches
    assert sum(c.image_weights([3.0, 1.0])[:2]) == pytest.approx(3 * sum(c.image_weights([3.0, 1.0])[2:]))


def test_class_count_comes_from_the_data():
    consep = ("background", "other", "inflammatory", "epithelial", "spindle-shaped")
    assert _num_classes(_Concat([_Part(2, consep), _Part(1, consep)])) == 5
    assert _num_classes(_Concat([_Part(2)])) == 6  # class maps without names: PanNuke's 6
    with pytest.raises(UsageError, match="different class schemes"):
        _num_classes(_Concat([_Part(2, consep), _Part(1, ("background", "a", "b"))]))


def test_bad_dataset_weights_are_a_usage_error(tmp_path, capsys):
    for d in ("a", "b"):
        _write_tile(tmp_path / d, "x", _labels(), {3: 1, 7: 2})
    base = ["train", "--data", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "run")]
    assert main(base + ["--dataset-weights", "1"]) == 2
    assert "one non-negative weight per --data folder (2)" in capsys.readouterr().err
    assert main(base + ["--dataset-weights", "1", "-1"]) == 2
    assert main(base + ["--semantic", "--dataset-weights", "1", "1"]) == 2
    assert "--dataset-weights is for the joint training" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written
