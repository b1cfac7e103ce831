"""Evaluation: metrics (:mod:`.metrics`), automatic segmentation with the reference's grid search
(:mod:`.grid_search`), the iterative-prompting protocol (:mod:`.iterative_prompting`) and reports
(:mod:`.report`); ``pathosam evaluate`` is :mod:`pathosam.cli.evaluate`.

Names are resolved on first use, so importing this package stays cheap (no scipy until a
metric is called). Submodules for the evaluation protocols live next to ``metrics``.
"""

from __future__ import annotations

_METRICS = (
    "DEFAULT_THRESHOLDS", "PANNUKE_CLASS_IDS", "SA50_INDEX", "SA75_INDEX", "Contingency",
    "aggregated_jaccard_index", "bpq", "class_weights_from_counts", "contingency_table", "dice_score",
    "instance_class_counts", "instance_classes", "matching", "mean_segmentation_accuracy", "mpq", "mpq_plus",
    "panoptic_quality", "panoptic_quality_per_class", "sa50", "sa75", "semantic_dice", "weighted_dice",
)
_PROTOCOLS = {
    **dict.fromkeys(("evaluate_automatic", "score_labels", "prepare_groundtruth", "AIS_GRID", "AIS_SHAPE_GRID",
                     "AMG_GRID", "default_grid", "AutomaticEvaluation"), "grid_search"),
    **dict.fromkeys(("run_interactive", "evaluate_interactive", "object_prompts", "InteractiveResult",
                     "write_interactive_report"), "iterative_prompting"),
    "write_automatic_report": "report",
}
_LAZY = {**{name: "metrics" for name in _METRICS}, **_PROTOCOLS}

__all__ = [*_METRICS, *_PROTOCOLS]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
