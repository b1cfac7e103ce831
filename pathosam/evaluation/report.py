"""Evaluation reports: CSV tables, a JSON summary and PNG plots (matplotlib, no display needed).

Files written by :func:`write_automatic_report` into ``OUT``:

- ``per_image.csv``: one row per test image (name, seconds, mSA, SA50, SA75, precision / recall /
  F1 at IoU 0.50..0.95, PQ, SQ, DQ, AJI, dice, object counts);
- ``summary.csv`` / ``summary.json``: the mean of every column over the images, the parameters
  used, model and data;
- ``grid_search.csv``: mean validation mSA of every grid setting (when a grid search ran);
- ``thresholds.png``: mean precision, recall and F1 over the IoU matching thresholds;
- ``overlays/NAME.png``: the image with ground-truth (green) and predicted (magenta) outlines.

:func:`write_iteration_report` writes micro-sam's ``iterative_prompts_start_{point|box}.csv``
(iteration, mSA, SA50, SA75) and a PNG of the scores per correction iteration.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write
from .metrics import DEFAULT_THRESHOLDS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_thresholds(per_image, path: str | os.PathLike, title: str = "") -> Path:
    """Mean precision / recall / F1 / SA of the images over the IoU matching threshold."""
    plt = _pyplot()
    ts = [f"{t:.2f}" for t in DEFAULT_THRESHOLDS]
    x = [float(t) for t in ts]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("precision", "precision"), ("recall", "recall"), ("f1", "F1")):
        ax.plot(x, [per_image[f"{key}@{t}"].mean() for t in ts], marker="o", label=label)
    ax.set(xlabel="IoU threshold", ylabel="mean over images", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


def plot_iterations(rows, path: str | os.PathLike, title: str = "") -> Path:
    """mSA, SA50 and SA75 per iteration (0 = initial prompt, k = after k corrections)."""
    plt = _pyplot()
    it = [int(r["iteration"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("mSA", "SA50", "SA75"):
        ax.plot(it, [float(r[key]) for r in rows], marker="o", label=key)
    ax.set(xlabel="iteration (0 = initial prompt, k = after k corrections)", ylabel="score", ylim=(0, 1.02),
           title=title)
    ax.set_xticks(it)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


def _outline(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="inner")


def plot_overlay(image: np.ndarray, gt: np.ndarray, seg: np.ndarray, path: str | os.PathLike,
                 title: str = "") -> Path:
    """The image with ground-truth outlines (green) and predicted outlines (magenta)."""
    plt = _pyplot()
    rgb = np.array(image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2))
    if rgb.dtype != np.uint8:
        lo, hi = float(rgb.min()), float(rgb.max())
        rgb = ((rgb - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    rgb = rgb.copy()
    rgb[_outline(gt)] = (0, 200, 0)
    rgb[_outline(seg)] = (230, 0, 230)
    h, w = rgb.shape[:2]
    fig, ax = plt.subplots(figsize=(min(10, 2 + w / 100), min(10, 2 + h / 100)))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or "ground truth (green), prediction (magenta)", fontsize=9)
    return _save(fig, Path(path))


def _csv(df, path: Path) -> Path:
    from ..io.table import write_table

    return write_table(df, csv_path=path)[0]


def write_automatic_report(evaluation, out_dir: str | os.PathLike, info: Mapping | None = None) -> dict[str, Path]:
    """Write the tables, summary and plots of an :class:`~pathosam.evaluation.grid_search.AutomaticEvaluation`."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"per_image": _csv(evaluation.per_image, out / "per_image.csv")}
    summary = {**(info or {}), **evaluation.summary(), "params": evaluation.params}
    files["summary"] = _csv(pd.DataFrame([{k: v for k, v in summary.items() if k != "params"}
                                          | {f"param_{k}": v for k, v in evaluation.params.items()}]),
                            out / "summary.csv")
    with atomic_write(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=str))
    files["summary_json"] = out / "summary.json"
    if len(evaluation.grid):
        files["grid"] = _csv(evaluation.grid.reset_index(), out / "grid_search.csv")
    if len(evaluation.per_image):
        files["thresholds"] = plot_thresholds(evaluation.per_image, out / "thresholds.png",
                                              f"{evaluation.mode.upper()}: {len(evaluation.per_image)} images")
    for name, seg in evaluation.predictions.items():
        image, gt = evaluation.images[name]
        files[f"overlay:{name}"] = plot_overlay(image, gt, seg, out / "overlays" / f"{name}.png", name)
    return files


def write_iteration_report(rows, out_dir: str | os.PathLike, start: str, use_masks: bool = False,
                             title: str = "") -> dict[str, Path]:
    """Write the per-iteration scores (dicts with ``iteration, mSA, SA50, SA75``) as micro-sam's
    ``iterative_prompts_start_<start>.csv`` and a PNG plot of them."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"iterative_prompts_start_{start}"
    df = pd.DataFrame(list(rows))[["iteration", "mSA", "SA50", "SA75"]]
    csv_path = _csv(df, out / f"{stem}.csv")
    title = title or f"iterative prompting, {start} start{', with mask input' if use_masks else ''}"
    return {"csv": csv_path, "plot": plot_iterations(df.to_dict("records"), out / f"{stem}.png", title)}
