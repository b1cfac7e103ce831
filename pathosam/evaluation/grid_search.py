"""Automatic segmentation (AIS, AMG) on a dataset, with the reference's grid search.

The reference (micro-sam's evaluation, used by patho-sam) chooses the post-processing parameters
by a grid search on a validation split, maximising the mean mSA over its images, and then
segments the test split with the best setting (``pathosam-reference.md`` §3.1, §4.1):

- AIS: centre and boundary distance thresholds 0.3..0.7 (step 0.1), distance smoothing 1.0..2.0
  (step 0.2), ``min_size`` in {50, 100, 200}; foreground threshold / smoothing at their defaults
  (450 settings). The model runs once per image; only post-processing is repeated
  (:func:`pathosam.instances.ais.ais_from_maps_settings`: each smoothing once per image, one
  watershed per seed setting, ``min_size`` filtering its result). Parameters outside the grid are
  the model's own (:func:`pathosam.automatic.ais_params`: pathosam_small's shape seeds and size
  filter), and a model with shape seeds is searched over its own seed parameters
  (:data:`AIS_SHAPE_GRID`; the reference has no shape seeds): :func:`default_grid`.
- AMG: predicted-IoU threshold 0.6..0.9 and stability threshold 0.6..0.95 (step 0.025; 195
  settings). The expensive point-grid stage runs once per image with pre-filters at the grid's
  minimum; only the filtering, NMS and merging are repeated.

Ground truth is split into 8-connected components before scoring, as the reference's
``run_evaluation`` does when it reads label files.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..instances.params import AMG_DEFAULTS, AISParams
from .metrics import DEFAULT_THRESHOLDS

#: The reference's AIS grid (micro-sam ``default_grid_search_values_instance_segmentation_with_decoder``).
AIS_GRID: dict[str, tuple] = {
    "center_distance_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "boundary_distance_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "distance_smoothing": (1.0, 1.2, 1.4, 1.6, 1.8, 2.0),
    "min_size": (50, 100, 200),
}
#: The AIS grid of models whose seeds are ``"shape"`` (pathosam_small; not the reference's, which
#: has no shape seeds): the seed parameters around their defaults (dynamic 2 px, centre weight
#: 10 px), the distance smoothing and the size filter around pathosam_small's 100 px (144 settings).
AIS_SHAPE_GRID: dict[str, tuple] = {
    "seeds": ("shape",),
    "distance_smoothing": (1.2, 1.6, 2.0),
    "seed_dynamic": (1.0, 2.0, 3.0, 4.0),
    "seed_center_weight": (0.0, 5.0, 10.0, 20.0),
    "min_size": (50, 100, 200),
}
#: The reference's AMG grid (micro-sam ``default_grid_search_values_amg``).
AMG_GRID: dict[str, tuple] = {
    "pred_iou_thresh": tuple(round(v, 3) for v in np.arange(0.6, 0.9 + 1e-9, 0.025)),
    "stability_score_thresh": tuple(round(v, 3) for v in np.arange(0.6, 0.95 + 1e-9, 0.025)),
}
#: Coarse grids (a few settings) for quick checks; not the reference's.
QUICK_GRIDS: dict[str, dict[str, tuple]] = {
    "ais": {"center_distance_threshold": (0.4, 0.5, 0.6), "boundary_distance_threshold": (0.4, 0.5, 0.6),
            "distance_smoothing": (1.6,), "min_size": (0, 50)},
    "ais_shape": {"seeds": ("shape",), "seed_dynamic": (1.0, 2.0, 3.0), "seed_center_weight": (5.0, 10.0, 20.0),
                  "min_size": (50, 100)},
    "amg": {"pred_iou_thresh": (0.7, AMG_DEFAULTS.pred_iou_thresh),
            "stability_score_thresh": (0.8, AMG_DEFAULTS.stability_score_thresh)},
}


def default_grid(mode: str, seeds: str = "distance", quick: bool = False) -> dict[str, tuple]:
    """The grid searched for ``mode`` ("ais" / "amg") and, for AIS, a model whose seed rule is
    ``seeds`` (its :func:`pathosam.automatic.ais_params`): the reference's grid, or for shape seeds
    :data:`AIS_SHAPE_GRID`; ``quick``: the coarse :data:`QUICK_GRIDS`."""
    if mode == "amg":
        return dict(QUICK_GRIDS["amg"] if quick else AMG_GRID)
    if seeds == "shape":
        return dict(QUICK_GRIDS["ais_shape"] if quick else AIS_SHAPE_GRID)
    return dict(QUICK_GRIDS["ais"] if quick else AIS_GRID)


def prepare_groundtruth(labels: np.ndarray) -> np.ndarray:
    """8-connected components of every label (a label in two pieces becomes two objects), uint32."""
    from skimage.measure import label

    return label(np.asarray(labels), connectivity=2).astype(np.uint32)


def score_labels(seg: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
    """All instance scores of one image: mSA, SA50, SA75, precision / recall / F1 at every IoU
    threshold, PQ (SQ, DQ), AJI, dice, object counts. ``gt`` is used as given."""
    from .metrics import aggregated_jaccard_index, dice_score, matching, mean_segmentation_accuracy, panoptic_quality

    msa, sas = mean_segmentation_accuracy(seg, gt, thresholds=list(thresholds), return_accuracies=True)
    out = {"mSA": msa, "SA50": sas[0], "SA75": sas[5] if len(sas) > 5 else np.nan}
    for t in thresholds:
        m = matching(seg, gt, threshold=float(t))
        key = f"{float(t):.2f}"
        out[f"precision@{key}"], out[f"recall@{key}"], out[f"f1@{key}"] = m["precision"], m["recall"], m["f1"]
    pq = panoptic_quality(seg, gt)
    out.update(PQ=pq["pq"], SQ=pq["sq"], DQ=pq["dq"], AJI=aggregated_jaccard_index(seg, gt),
               dice=dice_score(seg, gt), n_pred=int(len(np.unique(seg)) - (seg == 0).any()),
               n_gt=int(len(np.unique(gt)) - (gt == 0).any()))
    return out


def _grid(grid: Mapping[str, Sequence]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


# ---------------------------------------------------------------------------------------------- AIS
def ais_grid_labels(maps: np.ndarray, grid: Mapping[str, Sequence] = AIS_GRID,
                    base: AISParams | Mapping | None = None):
    """Yield ``(params, labels)`` for every setting of ``grid`` on one image's (3, H, W) maps,
    equal to :func:`pathosam.instances.ais_from_maps` with those parameters (untiled).

    A setting is ``base`` (an :class:`AISParams` or a mapping of its fields; default the
    reference's defaults; in :func:`evaluate_automatic` the model's parameters) with the grid
    point's values; ``params`` is the dict of all its fields. Settings are enumerated with the
    grid's keys in :data:`pathosam.instances.ais.SHARING_ORDER` (smoothing outermost, ``min_size``
    innermost) so that neighbours share smoothing and watershed work."""
    from dataclasses import asdict, replace

    from ..instances.ais import SHARING_ORDER, ais_from_maps_settings

    if not isinstance(base, AISParams):
        base = AISParams(**(base or {}))
    keys = sorted(grid, key=lambda k: SHARING_ORDER.index(k) if k in SHARING_ORDER else -1)
    settings = [replace(base, **point) for point in _grid({k: grid[k] for k in keys})]
    for p, seg in ais_from_maps_settings(maps, settings):
        yield asdict(p), seg


# ---------------------------------------------------------------------------------------------- AMG
def amg_grid_labels(candidates, shape: tuple[int, int], grid: Mapping[str, Sequence] = AMG_GRID):
    """Yield ``(params, labels)`` for every setting of ``grid`` from one image's AMG candidates
    (:func:`pathosam.instances.amg.generate_mask_candidates` with pre-filters at most the grid's
    minima), merged like micro-sam's AMG output (``with_background=True``)."""
    from ..instances.amg import filter_masks, masks_to_labels

    for params in _grid(grid):
        records = filter_masks(candidates, **params)
        yield params, masks_to_labels(records, shape, with_background=True)


# ---------------------------------------------------------------------------------------------- driver
@dataclass
class AutomaticEvaluation:
    """Result of :func:`evaluate_automatic`.

    ``per_image``: one row per test image (name, seconds and :func:`score_labels` columns);
    ``params``: the post-processing parameters used; ``grid``: mean validation mSA per grid
    setting (empty without a grid search); ``predictions``: label images of the first
    ``keep_predictions`` test images by name (for overlays).
    """

    mode: str
    params: dict
    per_image: object  # pandas.DataFrame
    grid: object  # pandas.DataFrame
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def summary(self) -> dict:
        """Mean of every score over the test images (the reference's per-dataset numbers)."""
        df = self.per_image
        cols = [c for c in df.columns if c not in ("name",)]
        out = {"mode": self.mode, "n_images": int(len(df))}
        out.update({c: float(df[c].mean()) for c in cols})
        return out


def _padded(sample, pad_to):
    if pad_to is None:
        return sample.image, None
    from ..datasets.transforms import padding_for

    padding = padding_for(sample.image.shape[:2], tuple(pad_to), "top-left")
    return np.pad(sample.image, (*padding, (0, 0))), padding


def _unpad(seg, padding):
    if padding is None:
        return seg
    from ..datasets.transforms import unpad

    return unpad(seg, padding)


def evaluate_automatic(
    model,
    test: Sequence,
    mode: str = "ais",
    val: Sequence | None = None,
    grid: Mapping[str, Sequence] | None = None,
    params: Mapping | None = None,
    tile_shape="auto",
    halo=None,
    pad_to: tuple[int, int] | None = None,
    points_per_side: int = AMG_DEFAULTS.points_per_side,
    keep_predictions: int = 4,
    progress: bool = True,
    on_image: Callable[[dict], None] | None = None,
    tta: bool = False,
) -> AutomaticEvaluation:
    """Evaluate AIS or AMG on ``test`` (a sequence of samples with ``.name``, ``.image``,
    ``.labels``), optionally with the reference's grid search on ``val``.

    Parameters
    ----------
    model : PathoSAM
        The model (AIS needs its instance decoder).
    test, val : sequence of Sample
        Test images, and validation images for the grid search (None = no grid search: use
        ``params`` or the defaults).
    mode : {"ais", "amg"}
    grid : mapping, optional
        Grid to search (default :func:`default_grid` of the mode and the model's seed rule:
        :data:`AIS_GRID`, :data:`AIS_SHAPE_GRID` or :data:`AMG_GRID`). AIS parameters not in the
        grid are the model's own (:func:`pathosam.automatic.ais_params`) with ``params``.
    params : mapping, optional
        Fixed post-processing parameters (without a grid search; for AIS also the parameters the
        grid leaves fixed).
    tile_shape, halo
        Tiling of the embeddings (as :func:`pathosam.segment_nuclei`: "auto" tiles images larger
        than 512 px with 384 + 64).
    pad_to : (int, int), optional
        Zero-pad smaller images at the bottom / right to this shape before the model (the
        reference's "vit_data" padding of 256 px PanNuke / NuClick / SRSA-Net images to 512);
        predictions are cropped back before scoring.
    points_per_side : int
        AMG point grid per crop / tile.
    tta : bool
        AIS: average the decoder maps over flips (:func:`pathosam.inference.tile_maps`).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .metrics import mean_segmentation_accuracy

    if mode not in ("ais", "amg"):
        raise ValueError(f"mode must be 'ais' or 'amg', got {mode!r}")
    if mode == "ais" and model.decoder is None:
        raise ValueError(f"model {model.name!r} has no instance decoder; AIS needs one (use --mode amg)")
    if tta and mode != "ais":
        raise ValueError("tta needs mode='ais'")
    base = None
    if mode == "ais":
        from ..automatic import ais_params

        base = ais_params(model, dict(params or {}))  # the model's own parameters (registry), then params
    grid = dict(grid or default_grid(mode, base.seeds if base is not None else "distance"))

    def model_stage(sample):
        from ..inference import decoder_maps, input_size, resolve_tiling

        image, padding = _padded(sample, pad_to)
        if mode == "ais":
            return decoder_maps(model, image, tile_shape, halo, tta=tta), padding, image.shape[:2]
        ts, hl = resolve_tiling(image.shape[:2], tile_shape, halo, input_size(model))
        emb = model.embed(image, tile_shape=ts, halo=hl, progress=False)
        from ..instances.amg import generate_mask_candidates

        pre = {k: min(grid.get(k, (getattr(AMG_DEFAULTS, k),))) for k in ("pred_iou_thresh", "stability_score_thresh")}
        if params:
            pre = {k: min(pre[k], params.get(k, pre[k])) for k in pre}
        return (generate_mask_candidates(model, emb, points_per_side=points_per_side, progress=False, **pre),
                padding, image.shape[:2])

    def labels_for(out, settings):
        stage, padding, shape = out
        if mode == "ais":
            gen = ais_grid_labels(stage, settings, base)
        else:
            gen = amg_grid_labels(stage, shape, settings)
        for p, seg in gen:
            yield p, _unpad(seg, padding)

    grid_table = pd.DataFrame()
    if val is not None and len(val):
        rows = []
        for sample in tqdm(val, desc=f"grid search ({mode})", unit="image", disable=not progress):
            gt = prepare_groundtruth(sample.labels)
            out = model_stage(sample)
            for k, (p, seg) in enumerate(labels_for(out, grid)):
                rows.append({"setting": k, **p, "image": sample.name, "mSA": mean_segmentation_accuracy(seg, gt)})
        per_setting = pd.DataFrame(rows)
        keys = [c for c in per_setting.columns if c not in ("setting", "image", "mSA")]
        grid_table = per_setting.groupby("setting", sort=True).agg({**{k: "first" for k in keys}, "mSA": "mean"})
        best = grid_table["mSA"].idxmax()  # first best setting in grid order
        chosen = {k: _plain(grid_table.loc[best, k]) for k in keys}
    else:
        if mode == "ais":
            from dataclasses import asdict

            chosen = asdict(base)
        else:
            defaults = {k: getattr(AMG_DEFAULTS, k) for k in ("pred_iou_thresh", "stability_score_thresh")}
            chosen = {**defaults, **dict(params or {})}

    rows, result = [], AutomaticEvaluation(mode, chosen, None, grid_table)
    for sample in tqdm(test, desc=f"evaluating ({mode})", unit="image", disable=not progress):
        t0 = time.perf_counter()
        gt = prepare_groundtruth(sample.labels)
        stage, padding, shape = model_stage(sample)
        if mode == "ais":
            from ..instances.ais import ais_from_maps

            seg = ais_from_maps(stage, **chosen)
        else:
            from ..instances.amg import filter_masks, masks_to_labels

            seg = masks_to_labels(filter_masks(stage, **chosen), shape, with_background=True)
        seg = _unpad(seg, padding)
        seconds = time.perf_counter() - t0
        row = {"name": sample.name, "seconds": seconds, **score_labels(seg, gt)}
        rows.append(row)
        if on_image is not None:
            on_image(row)
        if len(result.predictions) < keep_predictions:
            result.predictions[sample.name] = seg
            result.images[sample.name] = (sample.image, gt)
    result.per_image = pd.DataFrame(rows)
    return result


def _plain(v):
    """numpy scalar -> Python scalar (for JSON)."""
    return v.item() if hasattr(v, "item") else v
